//! The one clock the domain reads: wall time for rate-limit windows, monotonic time for ages.
//!
//! Two readings because they answer different questions: a rate-limit window is named by wall
//! time so that replicas sharing Redis agree on it, while a cache entry's age or a budget's
//! refill must not jump when NTP steps the wall clock. Tests use [`ManualClock`], which moves
//! both together and only when told to, so windows and ages are tested without sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where the domain reads the time.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch, the one time unit counters use.
    fn now_millis(&self) -> u64;
    /// A monotonic instant, for ages and refills.
    fn instant(&self) -> Instant;
}

/// The system's clocks. Replicas sharing Redis must agree on the wall clock (NTP) since it
/// names the window.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_millis(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
            })
    }

    fn instant(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that only moves when told to. Its instant is taken at creation and moves forward
/// with the wall time (never backward: setting the wall time back leaves it where it was).
#[derive(Debug)]
pub struct ManualClock {
    millis: AtomicU64,
    /// The instant reported while the wall time is at or before `origin_millis`.
    origin: Instant,
    origin_millis: u64,
    /// Milliseconds the instant has moved past `origin`.
    elapsed_millis: AtomicU64,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::at_millis(0)
    }
}

impl ManualClock {
    pub fn at_millis(millis: u64) -> Self {
        Self {
            millis: AtomicU64::new(millis),
            origin: Instant::now(),
            origin_millis: millis,
            elapsed_millis: AtomicU64::new(0),
        }
    }

    pub fn set_millis(&self, millis: u64) {
        self.millis.store(millis, Ordering::SeqCst);
        self.elapsed_millis
            .fetch_max(millis.saturating_sub(self.origin_millis), Ordering::SeqCst);
    }

    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.millis.fetch_add(by, Ordering::SeqCst);
        self.elapsed_millis.fetch_add(by, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_millis(&self) -> u64 {
        self.millis.load(Ordering::SeqCst)
    }

    fn instant(&self) -> Instant {
        self.origin + Duration::from_millis(self.elapsed_millis.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told_and_both_readings_move_together() {
        let clock = ManualClock::at_millis(1_000);
        let start = clock.instant();

        clock.advance(Duration::from_millis(250));

        assert_eq!(clock.now_millis(), 1_250);
        assert_eq!(clock.instant() - start, Duration::from_millis(250));
    }

    #[test]
    fn setting_a_manual_clock_back_never_moves_its_instant_back() {
        let clock = ManualClock::at_millis(1_000);
        let start = clock.instant();
        clock.set_millis(3_000);

        clock.set_millis(500);

        assert_eq!(clock.now_millis(), 500);
        assert_eq!(clock.instant() - start, Duration::from_secs(2));
    }

    #[test]
    fn the_system_clock_reads_the_epoch_in_milliseconds() {
        // 2020-01-01: any machine running this is past it.
        assert!(SystemClock.now_millis() > 1_577_836_800_000);
    }
}
