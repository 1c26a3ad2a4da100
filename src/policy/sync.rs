//! Which policy is in force (its generation) and when its source was last read in full: what
//! `/ready` and the metrics report, for files and the cluster alike.

use std::sync::Mutex;

use chrono::{DateTime, Utc};

/// Where the policy comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicySourceKind {
    Files,
    Kubernetes,
}

impl PolicySourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicySourceKind::Files => "files",
            PolicySourceKind::Kubernetes => "kubernetes",
        }
    }
}

/// A copy of the sync state at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySyncState {
    pub source: PolicySourceKind,
    /// The source was read in full and compiled at least once (for the cluster: every watched
    /// kind was listed). Until then the replica is not ready.
    pub synced: bool,
    /// How many different policies have been in force: 1 for the first, +1 for each change.
    pub generation: u64,
    /// When the source was last read in full and the policy in force confirmed or replaced.
    pub last_sync: Option<DateTime<Utc>>,
}

/// The shared, updatable sync state. Touched once per policy change, never on the hot path.
#[derive(Debug)]
pub struct PolicySync {
    state: Mutex<(PolicySyncState, String)>,
}

impl PolicySync {
    /// Nothing read yet.
    pub fn new(source: PolicySourceKind) -> Self {
        Self {
            state: Mutex::new((
                PolicySyncState {
                    source,
                    synced: false,
                    generation: 0,
                    last_sync: None,
                },
                String::new(),
            )),
        }
    }

    pub fn snapshot(&self) -> PolicySyncState {
        self.lock().0.clone()
    }

    /// The source was read in full at `at` and the policy with `fingerprint` is in force; the
    /// generation moves on only when the fingerprint differs from the last one recorded.
    pub fn record_in_force(&self, fingerprint: &str, at: DateTime<Utc>) -> PolicySyncState {
        let mut guard = self.lock();
        let (state, last_fingerprint) = &mut *guard;
        if !state.synced || last_fingerprint != fingerprint {
            state.generation += 1;
            fingerprint.clone_into(last_fingerprint);
        }
        state.synced = true;
        state.last_sync = Some(at);
        state.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (PolicySyncState, String)> {
        // The state is replaced whole under the lock, so a poisoned one is still consistent.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generation_counts_different_policies_and_the_sync_time_every_confirmation() {
        let sync = PolicySync::new(PolicySourceKind::Kubernetes);
        let start = Utc::now();
        let later = start + chrono::Duration::seconds(5);

        let before = sync.snapshot();
        let first = sync.record_in_force("a", start);
        let confirmed = sync.record_in_force("a", later);
        let changed = sync.record_in_force("b", later);

        assert!(!before.synced && before.generation == 0 && before.last_sync.is_none());
        assert!(first.synced && first.generation == 1);
        assert_eq!(
            (confirmed.generation, confirmed.last_sync),
            (1, Some(later))
        );
        assert_eq!(changed.generation, 2);
        assert_eq!(changed.source.as_str(), "kubernetes");
    }
}
