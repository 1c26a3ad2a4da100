//! A circuit breaker for the database: after repeated transient failures, fail at once for a
//! cool-down instead of letting every request wait for a timeout, then let one probe through.
//!
//! Pure domain: the caller passes the time (`now`), so tests need no sleeps and the type knows
//! nothing of PostgreSQL or tokio.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// When the breaker opens and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Consecutive transient failures that open the breaker.
    pub failure_threshold: u32,
    /// How long an open breaker refuses before letting one probe through; also how long a probe
    /// may stay unanswered before another is allowed (a cancelled probe never reports).
    pub cool_down: Duration,
}

/// The breaker's state as operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are refused until the cool-down ends.
    Open,
    /// The cool-down ended: one probe is (or may be) in flight, everything else is refused.
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// Whether a call may go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: go ahead.
    Pass,
    /// Half-open: this call is the probe; its outcome decides whether the breaker closes.
    Probe,
    /// Open (or a probe is already in flight): fail without calling.
    Refuse,
}

#[derive(Debug, Clone, Copy)]
enum Inner {
    Closed { consecutive_failures: u32 },
    Open { since: Instant },
    HalfOpen { probe_started: Instant },
}

/// Counts consecutive transient failures; thread-safe, cheap enough for every database call.
#[derive(Debug)]
pub struct CircuitBreaker {
    settings: BreakerSettings,
    inner: Mutex<Inner>,
}

impl CircuitBreaker {
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            inner: Mutex::new(Inner::Closed {
                consecutive_failures: 0,
            }),
        }
    }

    pub fn settings(&self) -> BreakerSettings {
        self.settings
    }

    /// Asks to make a call at `now`.
    pub fn admit(&self, now: Instant) -> Admission {
        let mut inner = self.lock();
        match *inner {
            Inner::Closed { .. } => Admission::Pass,
            Inner::Open { since }
            | Inner::HalfOpen {
                probe_started: since,
            } if now.saturating_duration_since(since) >= self.settings.cool_down => {
                *inner = Inner::HalfOpen { probe_started: now };
                Admission::Probe
            }
            Inner::Open { .. } | Inner::HalfOpen { .. } => Admission::Refuse,
        }
    }

    /// The call went through (or failed for a reason that is not the database's availability).
    pub fn record_success(&self) {
        *self.lock() = Inner::Closed {
            consecutive_failures: 0,
        };
    }

    /// The call failed transiently at `now` (unreachable, timed out).
    pub fn record_failure(&self, now: Instant) {
        let mut inner = self.lock();
        *inner = match *inner {
            Inner::Closed {
                consecutive_failures,
            } => {
                let failures = consecutive_failures.saturating_add(1);
                if failures >= self.settings.failure_threshold {
                    Inner::Open { since: now }
                } else {
                    Inner::Closed {
                        consecutive_failures: failures,
                    }
                }
            }
            // A failed probe (or a late failure of a call admitted before opening) re-opens.
            Inner::HalfOpen { .. } | Inner::Open { .. } => Inner::Open { since: now },
        };
    }

    pub fn state(&self) -> BreakerState {
        match *self.lock() {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::Open { .. } => BreakerState::Open,
            Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The state is a plain value: a panic elsewhere cannot leave it half-written.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: BreakerSettings = BreakerSettings {
        failure_threshold: 3,
        cool_down: Duration::from_secs(2),
    };

    fn opened(at: Instant) -> CircuitBreaker {
        let breaker = CircuitBreaker::new(SETTINGS);
        for _ in 0..SETTINGS.failure_threshold {
            breaker.record_failure(at);
        }
        breaker
    }

    #[test]
    fn a_new_breaker_lets_calls_through() {
        let breaker = CircuitBreaker::new(SETTINGS);

        assert_eq!(breaker.admit(Instant::now()), Admission::Pass);
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn failures_below_the_threshold_keep_it_closed() {
        let now = Instant::now();
        let breaker = CircuitBreaker::new(SETTINGS);

        breaker.record_failure(now);
        breaker.record_failure(now);

        assert_eq!(breaker.state(), BreakerState::Closed);
        assert_eq!(breaker.admit(now), Admission::Pass);
    }

    #[test]
    fn a_success_resets_the_count_of_consecutive_failures() {
        let now = Instant::now();
        let breaker = CircuitBreaker::new(SETTINGS);
        breaker.record_failure(now);
        breaker.record_failure(now);

        breaker.record_success();
        breaker.record_failure(now);
        breaker.record_failure(now);

        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn the_threshold_of_consecutive_failures_opens_it_and_calls_are_refused() {
        let now = Instant::now();

        let breaker = opened(now);

        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(
            breaker.admit(now + Duration::from_millis(1_999)),
            Admission::Refuse
        );
    }

    #[test]
    fn after_the_cool_down_one_probe_goes_through_and_the_rest_is_refused() {
        let now = Instant::now();
        let breaker = opened(now);
        let later = now + SETTINGS.cool_down;

        assert_eq!(breaker.admit(later), Admission::Probe);
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert_eq!(breaker.admit(later), Admission::Refuse);
    }

    #[test]
    fn a_successful_probe_closes_it() {
        let now = Instant::now();
        let breaker = opened(now);
        let later = now + SETTINGS.cool_down;
        assert_eq!(breaker.admit(later), Admission::Probe);

        breaker.record_success();

        assert_eq!(breaker.state(), BreakerState::Closed);
        assert_eq!(breaker.admit(later), Admission::Pass);
    }

    #[test]
    fn a_failed_probe_opens_it_for_another_cool_down() {
        let now = Instant::now();
        let breaker = opened(now);
        let later = now + SETTINGS.cool_down;
        assert_eq!(breaker.admit(later), Admission::Probe);

        breaker.record_failure(later);

        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(
            breaker.admit(later + Duration::from_secs(1)),
            Admission::Refuse
        );
        assert_eq!(breaker.admit(later + SETTINGS.cool_down), Admission::Probe);
    }

    #[test]
    fn a_probe_that_never_reports_is_replaced_after_a_cool_down() {
        let now = Instant::now();
        let breaker = opened(now);
        let probe_at = now + SETTINGS.cool_down;
        assert_eq!(breaker.admit(probe_at), Admission::Probe);

        // The probe's caller was cancelled: no outcome is ever recorded.

        assert_eq!(
            breaker.admit(probe_at + SETTINGS.cool_down),
            Admission::Probe
        );
    }
}
