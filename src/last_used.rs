//! `last_used_at` write-behind: Check only notes that a key was used; a background flush writes
//! at most one update per key per interval, batched into one statement.

// Probed on every allowed Check: key ids are random UUIDs, so a fast seeded hash is enough.
use foldhash::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::store::KeyRecordId;

/// Remembers which keys were used since the last flush, suppressing repeats within the interval.
#[derive(Debug)]
pub struct LastUsedTracker {
    interval: chrono::Duration,
    state: Mutex<TrackerState>,
}

#[derive(Debug, Default)]
struct TrackerState {
    /// Uses waiting for the next flush: the latest use of each key.
    pending: HashMap<KeyRecordId, DateTime<Utc>>,
    /// When each key's use was last handed to a flush; a key written less than an interval ago
    /// is not written again.
    handed_out: HashMap<KeyRecordId, DateTime<Utc>>,
}

impl LastUsedTracker {
    /// `interval`: the least time between two writes for one key.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval: chrono::Duration::from_std(interval).unwrap_or(chrono::Duration::MAX),
            state: Mutex::new(TrackerState::default()),
        }
    }

    /// Notes a use at `now`. Cheap: one short lock and a map lookup, no I/O.
    pub fn record(&self, id: KeyRecordId, now: DateTime<Utc>) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if let Some(pending) = state.pending.get_mut(&id) {
            *pending = (*pending).max(now);
            return;
        }
        let recently_written = state
            .handed_out
            .get(&id)
            .is_some_and(|written| now < *written + self.interval);
        if !recently_written {
            state.pending.insert(id, now);
        }
    }

    /// Takes the uses to write now, and forgets suppression entries older than the interval so
    /// memory stays bounded by the keys used within one interval.
    pub fn take_batch(&self, now: DateTime<Utc>) -> Vec<(KeyRecordId, DateTime<Utc>)> {
        let Ok(mut state) = self.state.lock() else {
            return Vec::new();
        };
        let interval = self.interval;
        state
            .handed_out
            .retain(|_, written| now < *written + interval);
        let batch: Vec<_> = state.pending.drain().collect();
        for (id, used_at) in &batch {
            state.handed_out.insert(*id, *used_at);
        }
        batch
    }

    /// Puts a batch back after a failed write, so the next flush retries it.
    pub fn restore(&self, batch: Vec<(KeyRecordId, DateTime<Utc>)>) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        for (id, used_at) in batch {
            state.handed_out.remove(&id);
            let entry = state.pending.entry(id).or_insert(used_at);
            *entry = (*entry).max(used_at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    #[test]
    fn many_uses_of_one_key_make_one_write_per_interval() {
        let tracker = LastUsedTracker::new(Duration::from_secs(60));
        let id = KeyRecordId::new_random();
        for second in 0..256 {
            tracker.record(id, at(second % 10));
        }

        let first = tracker.take_batch(at(10));
        tracker.record(id, at(30));
        let within_interval = tracker.take_batch(at(31));
        tracker.record(id, at(71));
        let after_interval = tracker.take_batch(at(72));

        assert_eq!(first, vec![(id, at(9))]);
        assert!(within_interval.is_empty());
        assert_eq!(after_interval, vec![(id, at(71))]);
    }

    #[test]
    fn a_failed_write_is_retried_by_the_next_flush() {
        let tracker = LastUsedTracker::new(Duration::from_secs(60));
        let id = KeyRecordId::new_random();
        tracker.record(id, at(1));
        let batch = tracker.take_batch(at(2));

        tracker.restore(batch);

        assert_eq!(tracker.take_batch(at(3)), vec![(id, at(1))]);
    }

    #[test]
    fn suppression_entries_expire_so_memory_stays_bounded() {
        let tracker = LastUsedTracker::new(Duration::from_secs(60));
        for _ in 0..100 {
            tracker.record(KeyRecordId::new_random(), at(0));
        }
        assert_eq!(tracker.take_batch(at(1)).len(), 100);

        tracker.take_batch(at(120));

        assert!(tracker.state.lock().unwrap().handed_out.is_empty());
    }
}
