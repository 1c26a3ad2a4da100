//! Watches the policy path and swaps in a new `Policy` when its contents change and validate.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::time::MissedTickBehavior;

use super::source::{fingerprint, read_sources};
use super::{InvalidObject, Policy, PolicyCounts, compile};

/// What a poll of the policy path found, when it found anything new.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadEvent {
    /// The files now hold the policy in force: a new one was swapped in, or the files went back
    /// to the contents of the current one after a rejected change.
    Reloaded {
        fingerprint: String,
        counts: PolicyCounts,
        /// Objects the policy in force left out because they are invalid.
        invalid_objects: Vec<InvalidObject>,
    },
    /// The files changed but could not be read or parsed; the last good policy stays.
    Rejected { error: String },
}

/// Polls a policy file or directory and keeps a shared [`Policy`] up to date with it.
///
/// Polling with a content hash rather than file-system notifications catches Kubernetes ConfigMap
/// updates, which swap a symlink instead of writing the files in place.
#[derive(Debug)]
pub struct PolicyReloader {
    path: PathBuf,
    shared: Arc<ArcSwap<Policy>>,
    last_seen: LastSeen,
}

impl PolicyReloader {
    /// Starts from the shared policy as the last good one; if it was loaded from `path`, the
    /// first poll finds nothing new.
    pub fn new(path: PathBuf, shared: Arc<ArcSwap<Policy>>) -> Self {
        let last_seen = LastSeen::Contents(shared.load().fingerprint().to_owned());
        PolicyReloader {
            path,
            shared,
            last_seen,
        }
    }

    /// Polls `path` every `interval` (at least 1 ms) until `shutdown` completes, reporting each
    /// change through `on_event`.
    pub async fn run(
        path: PathBuf,
        interval: Duration,
        shared: Arc<ArcSwap<Policy>>,
        on_event: impl Fn(ReloadEvent) + Send + Sync + 'static,
        shutdown: impl Future<Output = ()> + Send,
    ) {
        let mut reloader = PolicyReloader::new(path, shared);
        // tokio's interval panics on a zero period.
        let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(1)));
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut shutdown = pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                _ = ticker.tick() => {
                    if let Some(event) = reloader.check().await {
                        on_event(event);
                    }
                }
            }
        }
    }

    /// Reads the path once; swaps in and reports a new policy if the contents changed and
    /// parse (invalid objects are left out of it), reports the problem if they do not, and
    /// returns `None` if nothing changed.
    pub async fn check(&mut self) -> Option<ReloadEvent> {
        let path = self.path.clone();
        let last_seen = self.last_seen.clone();
        let active_fingerprint = self.shared.load().fingerprint().to_owned();
        // File reads and YAML parsing block; keep them off the async workers.
        let outcome =
            tokio::task::spawn_blocking(move || poll_files(&path, &last_seen, &active_fingerprint))
                .await
                .unwrap_or_else(|error| {
                    Outcome::ReadFailed(format!("policy reload task failed: {error}"))
                });

        match outcome {
            Outcome::Unchanged => None,
            Outcome::BackToActive(digest) => {
                self.last_seen = LastSeen::Contents(digest);
                let policy = self.shared.load();
                tracing::info!(
                    path = %self.path.display(),
                    fingerprint = policy.fingerprint(),
                    "policy files match the policy in force again"
                );
                Some(ReloadEvent::Reloaded {
                    fingerprint: policy.fingerprint().to_owned(),
                    counts: policy.counts(),
                    invalid_objects: policy.invalid_objects().to_vec(),
                })
            }
            Outcome::Loaded(mut policy) => {
                policy.keep_creation_times_from(&self.shared.load());
                let counts = policy.counts();
                let invalid_objects = policy.invalid_objects().to_vec();
                tracing::info!(
                    path = %self.path.display(),
                    fingerprint = policy.fingerprint(),
                    models = counts.models,
                    subscriptions = counts.subscriptions,
                    auth_policies = counts.auth_policies,
                    invalid_objects = invalid_objects.len(),
                    "policy reloaded"
                );
                let fingerprint = policy.fingerprint().to_owned();
                self.last_seen = LastSeen::Contents(fingerprint.clone());
                self.shared.store(Arc::from(policy));
                Some(ReloadEvent::Reloaded {
                    fingerprint,
                    counts,
                    invalid_objects,
                })
            }
            Outcome::Invalid { digest, error } => {
                self.last_seen = LastSeen::Contents(digest);
                Some(self.reject(error))
            }
            Outcome::ReadFailed(error) => {
                if matches!(&self.last_seen, LastSeen::ReadFailure(seen) if *seen == error) {
                    return None;
                }
                self.last_seen = LastSeen::ReadFailure(error.clone());
                Some(self.reject(error))
            }
        }
    }

    fn reject(&self, error: String) -> ReloadEvent {
        tracing::error!(
            path = %self.path.display(),
            active_fingerprint = self.shared.load().fingerprint(),
            "policy change rejected, keeping the last good policy: {error}"
        );
        ReloadEvent::Rejected { error }
    }
}

/// What the last poll saw, so that an unchanged state is neither reloaded nor reported again.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LastSeen {
    Contents(String),
    ReadFailure(String),
}

enum Outcome {
    Unchanged,
    BackToActive(String),
    Loaded(Box<Policy>),
    Invalid { digest: String, error: String },
    ReadFailed(String),
}

fn poll_files(path: &Path, last_seen: &LastSeen, active_fingerprint: &str) -> Outcome {
    let sources = match read_sources(path) {
        Ok(sources) => sources,
        Err(error) => return Outcome::ReadFailed(error.to_string()),
    };
    let digest = fingerprint(&sources);
    if matches!(last_seen, LastSeen::Contents(seen) if *seen == digest) {
        return Outcome::Unchanged;
    }
    if digest == active_fingerprint {
        return Outcome::BackToActive(digest);
    }
    match compile::compile(&sources) {
        Ok(policy) => Outcome::Loaded(Box::new(policy)),
        Err(error) => Outcome::Invalid {
            digest,
            error: error.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::sync::Mutex;

    use super::*;

    const ONE_MODEL: &str = "\
apiVersion: maas.opendatahub.io/v1alpha1
kind: MaaSModelRef
metadata:
  name: simulator
spec:
  modelRef: {kind: LLMInferenceService, name: simulator, namespace: llm}
";

    const TWO_MODELS: &str = "\
apiVersion: maas.opendatahub.io/v1alpha1
kind: MaaSModelRef
metadata:
  name: simulator
spec:
  modelRef: {kind: LLMInferenceService, name: simulator, namespace: llm}
---
apiVersion: maas.opendatahub.io/v1alpha1
kind: MaaSModelRef
metadata:
  name: qwen3
spec:
  modelRef: {kind: LLMInferenceService, name: qwen3, namespace: llm}
";

    /// Not YAML at all: nothing can be known about what the operator meant.
    const BROKEN: &str = "\
apiVersion: maas.opendatahub.io/v1alpha1
kind: MaaSModelRef
metadata: {name: simulator
";

    /// Valid YAML with one invalid object (no spec) beside a valid one.
    const ONE_INVALID_OF_TWO: &str = "\
apiVersion: maas.opendatahub.io/v1alpha1
kind: MaaSModelRef
metadata:
  name: simulator
---
apiVersion: maas.opendatahub.io/v1alpha1
kind: MaaSModelRef
metadata:
  name: qwen3
spec:
  modelRef: {kind: LLMInferenceService, name: qwen3, namespace: llm}
";

    /// Replaces a file in one step, as a poll may land halfway through a plain write.
    fn replace_file(path: &Path, text: &str) {
        let staging = path.with_file_name(".staging");
        fs::write(&staging, text).unwrap();
        fs::rename(&staging, path).unwrap();
    }

    fn shared_policy_from(dir: &Path) -> Arc<ArcSwap<Policy>> {
        Arc::new(ArcSwap::from_pointee(Policy::load(dir).unwrap()))
    }

    /// Waits, in short steps and for a bounded time, until `condition` holds.
    async fn eventually(what: &str, condition: impl Fn() -> bool) {
        for _ in 0..500 {
            if condition() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("gave up waiting for: {what}");
    }

    struct RunningReloader {
        events: Arc<Mutex<Vec<ReloadEvent>>>,
        stop: tokio::sync::oneshot::Sender<()>,
        task: tokio::task::JoinHandle<()>,
    }

    fn start_reloader(dir: &Path, shared: &Arc<ArcSwap<Policy>>) -> RunningReloader {
        let events = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let recorded = Arc::clone(&events);
        let task = tokio::spawn(PolicyReloader::run(
            dir.to_path_buf(),
            Duration::from_millis(20),
            Arc::clone(shared),
            move |event| recorded.lock().unwrap().push(event),
            async move {
                let _ = stopped.await;
            },
        ));
        RunningReloader { events, stop, task }
    }

    impl RunningReloader {
        fn events(&self) -> Vec<ReloadEvent> {
            self.events.lock().unwrap().clone()
        }

        async fn stop(self) {
            self.stop.send(()).unwrap();
            self.task.await.unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_reloader_picks_up_a_valid_change() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("models.yaml"), ONE_MODEL).unwrap();
        let shared = shared_policy_from(dir.path());
        let reloader = start_reloader(dir.path(), &shared);

        replace_file(&dir.path().join("models.yaml"), TWO_MODELS);
        eventually("the second model to appear", || {
            shared.load().counts().models == 2
        })
        .await;
        reloader.stop().await;

        let policy = shared.load();
        assert_eq!(policy.counts().models, 2);
        assert!(policy.find_model(None, "qwen3").is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_reloader_reports_each_change_through_the_callback() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("models.yaml"), ONE_MODEL).unwrap();
        let shared = shared_policy_from(dir.path());
        let reloader = start_reloader(dir.path(), &shared);

        replace_file(&dir.path().join("models.yaml"), TWO_MODELS);
        eventually("a reload event", || !reloader.events().is_empty()).await;
        let events = reloader.events();
        reloader.stop().await;

        let expected = ReloadEvent::Reloaded {
            fingerprint: shared.load().fingerprint().to_owned(),
            counts: PolicyCounts {
                models: 2,
                subscriptions: 0,
                auth_policies: 0,
            },
            invalid_objects: Vec::new(),
        };
        assert_eq!(events, [expected]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_reloader_keeps_the_last_good_policy_on_an_invalid_change() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("models.yaml"), ONE_MODEL).unwrap();
        let shared = shared_policy_from(dir.path());
        let good_fingerprint = shared.load().fingerprint().to_owned();
        let reloader = start_reloader(dir.path(), &shared);

        replace_file(&dir.path().join("models.yaml"), BROKEN);
        eventually("a rejection", || !reloader.events().is_empty()).await;
        let after_broken = reloader.events();
        let fingerprint_after_broken = shared.load().fingerprint().to_owned();
        replace_file(&dir.path().join("models.yaml"), TWO_MODELS);
        // The swap happens just before the event is reported: wait for the event.
        eventually("the valid change to load", || reloader.events().len() == 2).await;
        let events = reloader.events();
        reloader.stop().await;
        assert_eq!(shared.load().counts().models, 2);

        let file = dir.path().join("models.yaml").display().to_string();
        let [ReloadEvent::Rejected { error }] = after_broken.as_slice() else {
            panic!("expected one rejection, got {after_broken:?}");
        };
        assert!(
            error.starts_with(&format!(
                "invalid policy (1 problem):\n{file}: document 1: invalid YAML"
            )),
            "{error}"
        );
        assert_eq!(fingerprint_after_broken, good_fingerprint);
        assert_eq!(events.len(), 2);
        assert!(matches!(events[1], ReloadEvent::Reloaded { .. }));
    }

    #[tokio::test]
    async fn an_invalid_object_is_left_out_and_the_rest_of_the_change_applies() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("models.yaml"), ONE_MODEL).unwrap();
        let shared = shared_policy_from(dir.path());
        let mut reloader = PolicyReloader::new(dir.path().to_path_buf(), Arc::clone(&shared));

        replace_file(&dir.path().join("models.yaml"), ONE_INVALID_OF_TWO);
        let event = reloader.check().await;

        let Some(ReloadEvent::Reloaded {
            counts,
            invalid_objects,
            ..
        }) = event
        else {
            panic!("expected a reload, got {event:?}");
        };
        assert_eq!(counts.models, 1);
        let policy = shared.load();
        assert!(policy.find_model(None, "qwen3").is_ok());
        assert!(policy.find_model(None, "simulator").is_err());
        let names: Vec<_> = invalid_objects
            .iter()
            .map(|o| (o.kind.as_str(), o.namespace.as_str(), o.name.as_str()))
            .collect();
        assert_eq!(
            names,
            [("MaaSModelRef", "models-as-a-service", "simulator")]
        );
        assert_eq!(
            invalid_objects[0].reason(),
            format!(
                "{}: document 1 (MaaSModelRef simulator): spec: required field is missing",
                dir.path().join("models.yaml").display()
            )
        );
    }

    #[tokio::test]
    async fn a_model_keeps_its_creation_time_across_reloads() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("models.yaml"), ONE_MODEL).unwrap();
        let shared = shared_policy_from(dir.path());
        let first_created = shared.load().find_model(None, "simulator").unwrap().created;
        let mut reloader = PolicyReloader::new(dir.path().to_path_buf(), Arc::clone(&shared));

        tokio::time::sleep(Duration::from_millis(1100)).await;
        replace_file(&dir.path().join("models.yaml"), TWO_MODELS);
        reloader.check().await;

        let policy = shared.load();
        assert!(first_created > 1_700_000_000, "{first_created}");
        assert_eq!(
            policy.find_model(None, "simulator").unwrap().created,
            first_created
        );
    }

    #[tokio::test]
    async fn a_check_without_changes_reports_nothing() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("models.yaml"), ONE_MODEL).unwrap();
        let shared = shared_policy_from(dir.path());
        let mut reloader = PolicyReloader::new(dir.path().to_path_buf(), Arc::clone(&shared));

        let event = reloader.check().await;

        assert_eq!(event, None);
    }

    #[tokio::test]
    async fn a_rejected_change_is_reported_once_and_reverting_it_reports_recovery() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("models.yaml"), ONE_MODEL).unwrap();
        let shared = shared_policy_from(dir.path());
        let good_fingerprint = shared.load().fingerprint().to_owned();
        let mut reloader = PolicyReloader::new(dir.path().to_path_buf(), Arc::clone(&shared));

        replace_file(&dir.path().join("models.yaml"), BROKEN);
        let first = reloader.check().await;
        let second = reloader.check().await;
        fs::write(dir.path().join("models.yaml"), ONE_MODEL).unwrap();
        let reverted = reloader.check().await;

        assert!(matches!(first, Some(ReloadEvent::Rejected { .. })));
        assert_eq!(second, None);
        assert_eq!(
            reverted,
            Some(ReloadEvent::Reloaded {
                fingerprint: good_fingerprint.clone(),
                counts: PolicyCounts {
                    models: 1,
                    subscriptions: 0,
                    auth_policies: 0
                },
                invalid_objects: Vec::new(),
            })
        );
        assert_eq!(shared.load().fingerprint(), good_fingerprint);
    }

    #[tokio::test]
    async fn a_vanished_path_is_rejected_and_the_policy_kept() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("policy.yaml");
        fs::write(&file, ONE_MODEL).unwrap();
        let shared = Arc::new(ArcSwap::from_pointee(Policy::load(&file).unwrap()));
        let mut reloader = PolicyReloader::new(file.clone(), Arc::clone(&shared));

        fs::remove_file(&file).unwrap();
        let event = reloader.check().await;
        let repeated = reloader.check().await;

        let Some(ReloadEvent::Rejected { error }) = event else {
            panic!("expected a rejection, got {event:?}");
        };
        assert!(
            error.starts_with(&format!("cannot read policy at {}: ", file.display())),
            "{error}"
        );
        assert_eq!(repeated, None);
        assert_eq!(shared.load().counts().models, 1);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_configmap_symlink_swap_is_picked_up() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("..2026_01_01_00_00_00.000000001");
        let second = dir.path().join("..2026_01_02_00_00_00.000000002");
        fs::create_dir(&first).unwrap();
        fs::create_dir(&second).unwrap();
        fs::write(first.join("models.yaml"), ONE_MODEL).unwrap();
        fs::write(second.join("models.yaml"), TWO_MODELS).unwrap();
        std::os::unix::fs::symlink(&first, dir.path().join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/models.yaml", dir.path().join("models.yaml")).unwrap();
        let shared = shared_policy_from(dir.path());
        let mut reloader = PolicyReloader::new(dir.path().to_path_buf(), Arc::clone(&shared));

        // Kubernetes swaps the ..data link atomically by renaming a new link over it.
        std::os::unix::fs::symlink(&second, dir.path().join("..data_tmp")).unwrap();
        fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
        let event = reloader.check().await;

        assert!(
            matches!(event, Some(ReloadEvent::Reloaded { .. })),
            "{event:?}"
        );
        assert_eq!(shared.load().counts().models, 2);
    }
}
