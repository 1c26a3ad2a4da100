//! Fixed windows that place a request's instant (from [`crate::clock`]): pure arithmetic, tested without sleeping.

use std::time::Duration;

/// One fixed window of a limit: `[start, end)` in epoch milliseconds, aligned to the epoch so
/// that every replica computes the same window for the same instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedWindow {
    /// The window's length in milliseconds (never zero).
    pub length_millis: u64,
    /// Which window since the epoch: `start / length`.
    pub index: u64,
}

impl FixedWindow {
    /// The window of length `length` that contains `now_millis`. Windows shorter than one
    /// millisecond count as one millisecond.
    pub fn containing(now_millis: u64, length: Duration) -> Self {
        let length_millis = u64::try_from(length.as_millis()).unwrap_or(u64::MAX).max(1);
        Self {
            length_millis,
            index: now_millis / length_millis,
        }
    }

    pub fn start_millis(&self) -> u64 {
        self.index.saturating_mul(self.length_millis)
    }

    pub fn end_millis(&self) -> u64 {
        self.start_millis().saturating_add(self.length_millis)
    }

    /// Time from `now_millis` until the window ends and its counter starts over.
    pub fn reset_after(&self, now_millis: u64) -> Duration {
        Duration::from_millis(self.end_millis().saturating_sub(now_millis))
    }
}

/// Whole seconds, rounded up and at least 1: what `retry-after` says (waiting less than the
/// window's remainder would be refused again).
pub fn retry_after_seconds(wait: Duration) -> u64 {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    seconds.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn a_window_starts_at_a_multiple_of_its_length() {
        let window = FixedWindow::containing(125_500, MINUTE);

        assert_eq!(window.index, 2);
        assert_eq!(window.start_millis(), 120_000);
        assert_eq!(window.end_millis(), 180_000);
    }

    #[test]
    fn the_last_millisecond_of_a_window_still_belongs_to_it() {
        let last = FixedWindow::containing(179_999, MINUTE);
        let next = FixedWindow::containing(180_000, MINUTE);

        assert_eq!(last.index, 2);
        assert_eq!(next.index, 3);
        assert_eq!(last.reset_after(179_999), Duration::from_millis(1));
        assert_eq!(next.reset_after(180_000), MINUTE);
    }

    #[test]
    fn reset_counts_down_to_the_end_of_the_window() {
        let clock = ManualClock::at_millis(3_600_000 + 10_000);
        let window = FixedWindow::containing(clock.now_millis(), MINUTE);

        let first = window.reset_after(clock.now_millis());
        clock.advance(Duration::from_secs(45));
        let later = window.reset_after(clock.now_millis());

        assert_eq!(first, Duration::from_secs(50));
        assert_eq!(later, Duration::from_secs(5));
    }

    #[test]
    fn hour_windows_are_aligned_to_the_hour() {
        let window = FixedWindow::containing(7_200_000 + 1, Duration::from_secs(3_600));

        assert_eq!(window.start_millis(), 7_200_000);
        assert_eq!(
            window.reset_after(7_200_001),
            Duration::from_millis(3_599_999)
        );
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds_and_is_never_zero() {
        assert_eq!(retry_after_seconds(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(50_000)), 50);
        assert_eq!(retry_after_seconds(Duration::from_millis(50_001)), 51);
    }

    #[test]
    fn a_zero_length_window_is_treated_as_one_millisecond() {
        let window = FixedWindow::containing(42, Duration::ZERO);

        assert_eq!(window.length_millis, 1);
        assert_eq!(window.index, 42);
    }
}
