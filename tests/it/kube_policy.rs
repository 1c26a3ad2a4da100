//! The Kubernetes policy source against a fake API server (tests/it/fake_kube.rs): readiness on
//! the first complete list, add/change/delete of each MaaS kind, relist after 410 Gone, dropped
//! and broken watches, invalid objects, namespace scoping, and how fast a change reaches Check.

use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use maas_authz::app::{Application, RunningServer};
use maas_authz::config::{PolicySource, ServeConfig};
use serde_json::{Value, json};
use tonic::transport::Channel;

use crate::fake_kube::{FakeKube, example_policy_objects};
use crate::support::*;

const NAMESPACE: &str = "models-as-a-service";
const SIMULATOR: &str = "/simulator/v1/chat/completions";
const QWEN3: &str = "/qwen3/v1/chat/completions";

fn model(name: &str, namespace: &str, backend_namespace: &str) -> Value {
    json!({
        "apiVersion": "maas.opendatahub.io/v1alpha1",
        "kind": "MaaSModelRef",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"modelRef": {"kind": "LLMInferenceService", "name": name, "namespace": backend_namespace}},
    })
}

fn subscription(name: &str, namespace: &str, group: &str, models: &[&str]) -> Value {
    let refs: Vec<Value> = models
        .iter()
        .map(|model| {
            json!({
                "name": model,
                "namespace": NAMESPACE,
                "tokenRateLimits": [{"limit": 1000, "window": "1m"}],
            })
        })
        .collect();
    json!({
        "apiVersion": "maas.opendatahub.io/v1alpha1",
        "kind": "MaaSSubscription",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"owner": {"groups": [{"name": group}]}, "priority": 10, "modelRefs": refs},
    })
}

fn auth_policy(name: &str, namespace: &str, group: &str, models: &[&str]) -> Value {
    let refs: Vec<Value> = models
        .iter()
        .map(|model| json!({"name": model, "namespace": NAMESPACE}))
        .collect();
    json!({
        "apiVersion": "maas.opendatahub.io/v1alpha1",
        "kind": "MaaSAuthPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"modelRefs": refs, "subjects": {"groups": [{"name": group}]}},
    })
}

/// One model, a subscription for every authenticated user and an auth policy granting it.
fn small_cluster() -> Vec<Value> {
    vec![
        model("simulator", NAMESPACE, "llm"),
        subscription("free", NAMESPACE, "system:authenticated", &["simulator"]),
        auth_policy(
            "free-access",
            NAMESPACE,
            "system:authenticated",
            &["simulator"],
        ),
    ]
}

struct KubeServer {
    db: TestDb,
    fake: FakeKube,
    server: RunningServer,
    check: AuthorizationClient<Channel>,
}

fn kubernetes_config(db: &TestDb, fake: &FakeKube) -> ServeConfig {
    let mut config = serve_config(db);
    config.policy_path = None;
    config.policy_source.policy_source = PolicySource::Kubernetes;
    config.identity.kube_api_url = Some(fake.url.clone());
    config.identity.kube_token_file = Some(fake.token_file.path().to_owned());
    // Polling Check many times must not run into the subscriptions' request limits.
    config.limits.limits_enabled = false;
    config
}

impl KubeServer {
    /// The server on a fake cluster holding `objects`, not waiting for readiness.
    async fn start_with(
        objects: &[Value],
        configure: impl FnOnce(&mut ServeConfig, &FakeKube),
    ) -> Self {
        let db = TestDb::migrated().await;
        let fake = FakeKube::start(objects).await;
        let mut config = kubernetes_config(&db, &fake);
        configure(&mut config, &fake);
        let server = Application::build(config).await.expect("server starts");
        let check = AuthorizationClient::connect(format!("http://{}", server.grpc_addr))
            .await
            .unwrap();
        Self {
            db,
            fake,
            server,
            check,
        }
    }

    /// The server on a fake cluster holding `objects`, once ready.
    async fn start(objects: &[Value]) -> Self {
        let server = Self::start_with(objects, |_, _| {}).await;
        eventually("ready", async || server.readiness().await.0 == 200).await;
        server
    }

    async fn readiness(&self) -> (u16, Value) {
        let response = reqwest::get(format!("http://{}/ready", self.server.http_addr))
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    async fn metrics(&self) -> String {
        crate::check::http_get(self.server.metrics_addr, "/metrics").await
    }

    /// The HTTP status Check gives `key` on `path` (200: allowed).
    async fn decision(&mut self, key: &str, path: &str) -> u16 {
        let authorization = bearer(key);
        let response = self
            .check
            .check(check_request(path, &[("authorization", &authorization)]))
            .await
            .unwrap()
            .into_inner();
        match response.http_response {
            Some(HttpResponse::OkResponse(_)) => 200,
            Some(HttpResponse::DeniedResponse(denied)) => {
                denied.status.map_or(0, |status| status.code as u16)
            }
            other => panic!("neither allowed nor denied: {other:?}"),
        }
    }

    /// Polls Check until it gives `status`, for at most `within`; returns how long it took.
    async fn decides_within(
        &mut self,
        key: &str,
        path: &str,
        status: u16,
        within: Duration,
    ) -> Duration {
        let start = Instant::now();
        loop {
            let got = self.decision(key, path).await;
            if got == status {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < within,
                "Check on {path} still says {got}, not {status}, after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// [`Self::decides_within`] with room for a relist's back-off.
    async fn decides(&mut self, key: &str, path: &str, status: u16) {
        self.decides_within(key, path, status, Duration::from_secs(10))
            .await;
    }
}

/// The value of one sample line (`name{labels}`), 0 when absent.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Polls `condition` every 20 ms for at most 10 s.
async fn eventually<F: AsyncFnMut() -> bool>(what: &str, mut condition: F) {
    for _ in 0..500 {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never happened: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_the_first_complete_list_and_then_reports_generation_and_sync() {
    let db = TestDb::migrated().await;
    let fake = FakeKube::start(&small_cluster()).await;
    fake.hold_lists(true);
    let config = kubernetes_config(&db, &fake);
    let server = Application::build(config).await.expect("server starts");
    let check = AuthorizationClient::connect(format!("http://{}", server.grpc_addr))
        .await
        .unwrap();
    let mut cluster = KubeServer {
        db,
        fake,
        server,
        check,
    };
    let (key, _) = mint(&cluster.db.store(), &FREE_USER).await;

    let (before_status, before_body) = cluster.readiness().await;
    let denied_before = cluster.decision(&key, SIMULATOR).await;
    cluster.fake.hold_lists(false);
    eventually("ready", async || cluster.readiness().await.0 == 200).await;
    let (_, after_body) = cluster.readiness().await;
    let allowed_after = cluster.decision(&key, SIMULATOR).await;
    let metrics = cluster.metrics().await;

    assert_eq!(before_status, 503);
    assert_eq!(
        before_body,
        json!({
            "status": "unavailable",
            "policy": {"source": "kubernetes", "synced": false, "generation": 0},
        })
    );
    assert_eq!(
        denied_before, 404,
        "no model is known before the first list"
    );
    assert_eq!(after_body["status"], "ready");
    assert_eq!(after_body["policy"]["synced"], true);
    assert_eq!(after_body["policy"]["generation"], 1);
    let last_sync = after_body["policy"]["lastSync"].as_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(last_sync).is_ok(),
        "{last_sync}"
    );
    assert_eq!(allowed_after, 200);
    assert_eq!(sample(&metrics, "maas_authz_policy_generation"), 1.0);
    assert_eq!(sample(&metrics, "maas_authz_policy_synced"), 1.0);
    assert!(sample(&metrics, "maas_authz_policy_last_sync_timestamp_seconds") > 1.0e9);
    assert_eq!(
        sample(
            &metrics,
            "maas_authz_policy_objects{kind=\"subscriptions\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_policy_decides_alike_from_files_and_from_the_cluster() {
    let mut cluster = KubeServer::start(&example_policy_objects()).await;
    let mut config = serve_config(&cluster.db);
    config.limits.limits_enabled = false;
    let files = Application::build(config)
        .await
        .expect("file-based server starts");
    let mut files_check = AuthorizationClient::connect(format!("http://{}", files.grpc_addr))
        .await
        .unwrap();
    let (free_key, _) = mint(&cluster.db.store(), &FREE_USER).await;
    let (premium_key, _) = mint(&cluster.db.store(), &PREMIUM_USER).await;
    let cases = [
        (&free_key, SIMULATOR),
        (&free_key, QWEN3),
        (&free_key, "/llm/simulator/v1/chat/completions"),
        (&free_key, "/unknown/v1/chat/completions"),
        (&premium_key, SIMULATOR),
        (&premium_key, QWEN3),
    ];

    let mut from_cluster = Vec::new();
    let mut from_files = Vec::new();
    for (key, path) in cases {
        from_cluster.push(cluster.decision(key, path).await);
        let authorization = bearer(key);
        let response = files_check
            .check(check_request(path, &[("authorization", &authorization)]))
            .await
            .unwrap()
            .into_inner();
        from_files.push(match response.http_response {
            Some(HttpResponse::OkResponse(_)) => 200,
            Some(HttpResponse::DeniedResponse(denied)) => {
                denied.status.map_or(0, |status| status.code as u16)
            }
            _ => 0,
        });
    }

    assert_eq!(from_cluster, from_files);
    assert_eq!(from_cluster, [200, 403, 200, 404, 200, 200]);
    files.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_policies_added_changed_and_deleted_through_the_watch_change_decisions() {
    let mut cluster = KubeServer::start(&small_cluster()).await;
    let (key, _) = mint(&cluster.db.store(), &FREE_USER).await;
    cluster.decides(&key, SIMULATOR, 200).await;

    cluster.fake.apply(auth_policy(
        "free-access",
        NAMESPACE,
        "premium-users",
        &["simulator"],
    ));
    cluster.decides(&key, SIMULATOR, 403).await;
    cluster.fake.apply(auth_policy(
        "free-access",
        NAMESPACE,
        "system:authenticated",
        &["simulator"],
    ));
    cluster.decides(&key, SIMULATOR, 200).await;
    cluster
        .fake
        .delete("MaaSAuthPolicy", NAMESPACE, "free-access");
    cluster.decides(&key, SIMULATOR, 403).await;
    cluster.fake.apply(auth_policy(
        "again",
        NAMESPACE,
        "system:authenticated",
        &["simulator"],
    ));
    cluster.decides(&key, SIMULATOR, 200).await;

    let (_, readiness) = cluster.readiness().await;
    assert_eq!(readiness["policy"]["generation"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_added_changed_and_deleted_through_the_watch_change_decisions() {
    let mut cluster = KubeServer::start(&small_cluster()).await;
    let (key, _) = mint(&cluster.db.store(), &FREE_USER).await;
    cluster.decides(&key, SIMULATOR, 200).await;

    cluster.fake.apply(subscription(
        "free",
        NAMESPACE,
        "premium-users",
        &["simulator"],
    ));
    cluster.decides(&key, SIMULATOR, 403).await;
    cluster.fake.delete("MaaSSubscription", NAMESPACE, "free");
    cluster.decides(&key, SIMULATOR, 403).await;
    cluster.fake.apply(subscription(
        "free",
        NAMESPACE,
        "system:authenticated",
        &["simulator"],
    ));
    cluster.decides(&key, SIMULATOR, 200).await;
    let metrics = cluster.metrics().await;

    assert_eq!(
        sample(
            &metrics,
            "maas_authz_policy_objects{kind=\"subscriptions\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_refs_added_changed_and_deleted_through_the_watch_change_decisions() {
    let mut cluster = KubeServer::start(&small_cluster()).await;
    let (key, _) = mint(&cluster.db.store(), &FREE_USER).await;
    let granite = "/granite/v1/chat/completions";
    let granite_on_its_backend = "/llm2/granite/v1/chat/completions";
    cluster.decides(&key, granite, 404).await;

    // Added, with a subscription and a grant that name it.
    cluster.fake.apply(model("granite", NAMESPACE, "llm"));
    cluster.fake.apply(subscription(
        "free",
        NAMESPACE,
        "system:authenticated",
        &["simulator", "granite"],
    ));
    cluster.fake.apply(auth_policy(
        "free-access",
        NAMESPACE,
        "system:authenticated",
        &["simulator", "granite"],
    ));
    cluster.decides(&key, granite, 200).await;
    // Changed: served from another backend namespace.
    cluster.decides(&key, granite_on_its_backend, 404).await;
    cluster.fake.apply(model("granite", NAMESPACE, "llm2"));
    cluster.decides(&key, granite_on_its_backend, 200).await;
    // Deleted (after what refers to it).
    cluster.fake.apply(small_cluster()[1].clone());
    cluster.fake.apply(small_cluster()[2].clone());
    cluster.fake.delete("MaaSModelRef", NAMESPACE, "granite");
    cluster.decides(&key, granite, 404).await;
    cluster.decides(&key, SIMULATOR, 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relist_after_410_gone_keeps_the_policy_in_force_and_catches_up() {
    let mut cluster = KubeServer::start(&small_cluster()).await;
    let (key, _) = mint(&cluster.db.store(), &FREE_USER).await;
    let lists_before = cluster.fake.lists("MaaSAuthPolicy");

    // History compacted while lists are slow: every watch gets 410 and must list again.
    cluster.fake.hold_lists(true);
    cluster.fake.expire_history();
    eventually("a relist", async || {
        cluster.fake.lists("MaaSAuthPolicy") > lists_before
    })
    .await;
    let during_relist = cluster.decision(&key, SIMULATOR).await;
    let readiness_during_relist = cluster.readiness().await.0;
    // A change the old watches never saw; only the relist can bring it.
    cluster.fake.apply(auth_policy(
        "free-access",
        NAMESPACE,
        "premium-users",
        &["simulator"],
    ));
    let still_during_relist = cluster.decision(&key, SIMULATOR).await;
    cluster.fake.hold_lists(false);
    cluster.decides(&key, SIMULATOR, 403).await;
    let metrics = cluster.metrics().await;

    assert_eq!(during_relist, 200, "the policy is not emptied by a relist");
    assert_eq!(readiness_during_relist, 200);
    assert_eq!(still_during_relist, 200);
    assert!(
        sample(
            &metrics,
            "maas_authz_policy_watch_errors_total{kind=\"MaaSAuthPolicy\"}"
        ) >= 1.0
    );
    assert!(
        sample(
            &metrics,
            "maas_authz_policy_watch_lists_total{kind=\"MaaSAuthPolicy\"}"
        ) >= 2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_and_broken_watches_resume_without_a_relist_and_miss_no_change() {
    let mut cluster = KubeServer::start(&small_cluster()).await;
    let (key, _) = mint(&cluster.db.store(), &FREE_USER).await;
    let lists_before = cluster.fake.lists("MaaSSubscription");
    let watches_before = cluster.fake.watches("MaaSSubscription");

    cluster.fake.drop_watches();
    cluster.fake.apply(subscription(
        "free",
        NAMESPACE,
        "premium-users",
        &["simulator"],
    ));
    cluster.decides(&key, SIMULATOR, 403).await;
    cluster.fake.break_watches();
    cluster.fake.apply(subscription(
        "free",
        NAMESPACE,
        "system:authenticated",
        &["simulator"],
    ));
    cluster.decides(&key, SIMULATOR, 200).await;

    assert!(cluster.fake.watches("MaaSSubscription") >= watches_before + 2);
    assert_eq!(
        cluster.fake.lists("MaaSSubscription"),
        lists_before,
        "a dropped watch resumes from its resource version"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_that_fails_keeps_the_policy_in_force_until_it_answers_again() {
    let mut cluster = KubeServer::start(&small_cluster()).await;
    let (key, _) = mint(&cluster.db.store(), &FREE_USER).await;

    cluster.fake.fail_requests(true);
    cluster.fake.break_watches();
    eventually("a failed watch", async || {
        sample(
            &cluster.metrics().await,
            "maas_authz_policy_watch_errors_total{kind=\"MaaSSubscription\"}",
        ) >= 1.0
    })
    .await;
    let during_outage = cluster.decision(&key, SIMULATOR).await;
    let ready_during_outage = cluster.readiness().await.0;
    cluster.fake.fail_requests(false);
    cluster.fake.apply(subscription(
        "free",
        NAMESPACE,
        "premium-users",
        &["simulator"],
    ));
    cluster.decides(&key, SIMULATOR, 403).await;

    assert_eq!(during_outage, 200);
    assert_eq!(ready_during_outage, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_object_is_reported_and_the_policy_in_force_keeps_deciding() {
    let mut cluster = KubeServer::start(&small_cluster()).await;
    let (key, _) = mint(&cluster.db.store(), &FREE_USER).await;
    let mut broken = subscription("free", NAMESPACE, "premium-users", &["simulator"]);
    broken["spec"]["modelRefs"][0]["tokenRateLimits"][0]["window"] = json!("1d");

    cluster.fake.apply(broken);
    eventually("the rejection", async || {
        sample(
            &cluster.metrics().await,
            "maas_authz_policy_reloads_total{result=\"rejected\"}",
        ) >= 1.0
    })
    .await;
    let while_invalid = cluster.decision(&key, SIMULATOR).await;
    let readiness_while_invalid = cluster.readiness().await;
    cluster.fake.apply(subscription(
        "free",
        NAMESPACE,
        "premium-users",
        &["simulator"],
    ));
    cluster.decides(&key, SIMULATOR, 403).await;

    assert_eq!(while_invalid, 200, "the last good policy stays in force");
    assert_eq!(readiness_while_invalid.0, 200);
    assert_eq!(readiness_while_invalid.1["policy"]["generation"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_configured_namespaces_are_watched() {
    let mut objects = small_cluster();
    objects.push(model("qwen3", "team-b", "llm"));
    objects.push(subscription(
        "free",
        "other",
        "system:authenticated",
        &["simulator"],
    ));
    let mut cluster = KubeServer::start_with(&objects, |config, _| {
        config.policy_source.model_namespaces.0 = vec![NAMESPACE.to_owned(), "team-a".to_owned()];
    })
    .await;
    eventually("ready", async || cluster.readiness().await.0 == 200).await;
    let (key, _) = mint(&cluster.db.store(), &FREE_USER).await;

    let unwatched_model = cluster.decision(&key, QWEN3).await;
    cluster.fake.apply(model("qwen3", "team-a", "llm"));
    let metrics_wait = cluster
        .decides_within(&key, QWEN3, 403, Duration::from_secs(10))
        .await;
    let metrics = cluster.metrics().await;

    assert_eq!(unwatched_model, 404, "team-b is not watched");
    assert!(metrics_wait < Duration::from_secs(10));
    assert_eq!(
        sample(
            &metrics,
            "maas_authz_policy_objects{kind=\"subscriptions\"}"
        ),
        1.0,
        "subscriptions outside the subscription namespace are not watched"
    );
    assert_eq!(
        cluster.fake.lists("MaaSModelRef"),
        2,
        "one list per namespace"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_through_the_watch_flips_a_check_decision_within_a_second() {
    let mut cluster = KubeServer::start(&small_cluster()).await;
    let (key, _) = mint(&cluster.db.store(), &FREE_USER).await;
    cluster.decides(&key, SIMULATOR, 200).await;

    let changed_at = cluster.fake.apply(auth_policy(
        "free-access",
        NAMESPACE,
        "premium-users",
        &["simulator"],
    ));
    let waited = cluster
        .decides_within(&key, SIMULATOR, 403, Duration::from_secs(1))
        .await;
    let latency = changed_at.elapsed().min(waited);

    // The measured latency, for the record (`--nocapture`).
    eprintln!("policy change to Check decision: {latency:?}");
    assert!(latency < Duration::from_secs(1), "{latency:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_that_refuses_the_first_list_keeps_the_replica_unready_until_it_answers() {
    let db = TestDb::migrated().await;
    let fake = FakeKube::start(&small_cluster()).await;
    fake.fail_requests(true);
    let server = Application::build(kubernetes_config(&db, &fake))
        .await
        .expect("server starts");
    let check = AuthorizationClient::connect(format!("http://{}", server.grpc_addr))
        .await
        .unwrap();
    let mut cluster = KubeServer {
        db,
        fake,
        server,
        check,
    };
    let (key, _) = mint(&cluster.db.store(), &FREE_USER).await;

    eventually("a failed list", async || {
        sample(
            &cluster.metrics().await,
            "maas_authz_policy_watch_errors_total{kind=\"MaaSModelRef\"}",
        ) >= 1.0
    })
    .await;
    let (status_while_refused, body_while_refused) = cluster.readiness().await;
    let decision_while_refused = cluster.decision(&key, SIMULATOR).await;
    cluster.fake.fail_requests(false);
    eventually("ready", async || cluster.readiness().await.0 == 200).await;

    assert_eq!(status_while_refused, 503);
    assert_eq!(body_while_refused["policy"]["synced"], false);
    assert_eq!(
        decision_while_refused, 404,
        "fails closed: no model is known"
    );
    cluster.decides(&key, SIMULATOR, 200).await;
}

#[tokio::test]
async fn a_kubernetes_ca_file_that_is_not_pem_stops_start_up_naming_the_setting() {
    let db = TestDb::migrated().await;
    let fake = FakeKube::start(&[]).await;
    let junk = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(junk.path(), "not a certificate").unwrap();
    let mut config = kubernetes_config(&db, &fake);
    config.identity.kube_ca_file = Some(junk.path().to_owned());

    let error = Application::build(config).await.unwrap_err();

    let text = format!("{error:#}");
    assert!(text.contains("MAAS_AUTHZ_KUBE_CA_FILE"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_being_deleted_stops_granting_before_its_finalizers_finish() {
    let mut cluster = KubeServer::start(&small_cluster()).await;
    let (key, _) = mint(&cluster.db.store(), &FREE_USER).await;
    cluster.decides(&key, SIMULATOR, 200).await;

    // `kubectl delete` on an object with finalizers: it stays, marked for deletion.
    let mut leaving = subscription("free", NAMESPACE, "system:authenticated", &["simulator"]);
    leaving["metadata"]["deletionTimestamp"] = json!("2026-11-29T08:00:00Z");
    leaving["metadata"]["finalizers"] = json!(["maas.opendatahub.io/cleanup"]);
    cluster.fake.apply(leaving);

    cluster.decides(&key, SIMULATOR, 403).await;
}
