//! Counters on a real three-node Redis Cluster (three `redis-server --cluster-enabled yes`
//! processes of the test's own): two servers count every user's requests exactly, and each
//! user's windows live in one slot while users spread over every node.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::auth::v3::CheckResponse;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use futures::future::join_all;
use maas_authz::app::{Application, RunningServer};
use maas_authz::clock::ManualClock;

use crate::support::*;

const CHAT: &str = "/simulator/v1/chat/completions";
/// 10 s into a minute: the free tier's one-minute window (5 requests) has 50 s left.
const TEN_SECONDS_INTO_A_MINUTE: u64 = 1_800_000_000_000 + 10_000;

/// Three masters of one cluster, each on a free port (and its bus port, +10000), in a temporary
/// directory; stopped when dropped.
struct OwnCluster {
    ports: Vec<u16>,
    nodes: Vec<Child>,
    _dir: tempfile::TempDir,
}

impl OwnCluster {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ports = free_cluster_ports(3);
        let nodes = ports
            .iter()
            .map(|port| {
                Command::new("redis-server")
                    .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                    .args(["--cluster-enabled", "yes"])
                    .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                    .args(["--dir", dir.path().to_str().unwrap()])
                    .args(["--save", "", "--appendonly", "no"])
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("redis-server is installed (scripts/ensure-redis.sh installs it)")
            })
            .collect();
        let cluster = Self {
            ports,
            nodes,
            _dir: dir,
        };
        for port in &cluster.ports {
            wait_until(|| std::net::TcpStream::connect(("127.0.0.1", *port)).is_ok());
        }
        let addresses: Vec<String> = cluster
            .ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli is installed with redis-server");
        assert!(
            created.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        for port in &cluster.ports {
            wait_until(|| {
                cluster
                    .cli(*port, &["CLUSTER", "INFO"])
                    .contains("cluster_state:ok")
            });
        }
        cluster
    }

    fn cli(&self, port: u16, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The seed nodes as the setting takes them (two of three: the client finds the third).
    fn seed_url(&self) -> String {
        format!(
            "redis://127.0.0.1:{}, redis://127.0.0.1:{}",
            self.ports[0], self.ports[1]
        )
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
    }
}

/// Ports whose cluster bus port (+10000) is free too.
fn free_cluster_ports(count: usize) -> Vec<u16> {
    let mut ports = Vec::new();
    while ports.len() < count {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        if port < 55_000
            && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()
            && !ports.contains(&port)
        {
            ports.push(port);
        }
    }
    ports
}

fn wait_until(mut ready: impl FnMut() -> bool) {
    for _ in 0..500 {
        if ready() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the Redis cluster did not come up");
}

async fn check(server: &RunningServer, key: &str) -> CheckResponse {
    let mut client = envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::connect(
        format!("http://{}", server.grpc_addr),
    )
    .await
    .expect("connect gRPC");
    client
        .check(check_request(CHAT, &[("authorization", &bearer(key))]))
        .await
        .expect("Check answers")
        .into_inner()
}

/// `allowed`, `429` or what else Check answered.
fn outcome(response: &CheckResponse) -> String {
    match &response.http_response {
        Some(HttpResponse::OkResponse(_)) => "allowed".to_owned(),
        Some(HttpResponse::DeniedResponse(denied)) => {
            denied.status.as_ref().map_or(0, |s| s.code).to_string()
        }
        other => format!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_a_three_node_cluster_count_each_users_requests_exactly() {
    // Arrange: two servers sharing one cluster; 24 users on the free tier (5 requests a minute).
    let cluster = OwnCluster::start();
    let db = TestDb::migrated().await;
    let clock = Arc::new(ManualClock::at_millis(TEN_SECONDS_INTO_A_MINUTE));
    let prefix = format!("maas-authz-test-{}:", uuid_simple());
    let mut config = serve_config(&db);
    config.limits.redis_url = Some(cluster.seed_url());
    config.limits.redis_cluster = true;
    config.limits.redis_key_prefix = prefix.clone();
    // Exactness is the point: an operation that fails must show, not pass uncounted, and a
    // busy machine must not turn into timeouts.
    config.limits.limits_on_redis_error = maas_authz::config::OnRedisError::Deny;
    config.limits.redis_timeout = Duration::from_secs(5);
    let servers = [
        Application::build_with_clock(config.clone(), clock.clone())
            .await
            .unwrap(),
        Application::build_with_clock(config, clock.clone())
            .await
            .unwrap(),
    ];
    let users: Vec<String> = (0..24).map(|n| format!("user-{n}")).collect();
    let mut keys = Vec::new();
    for user in &users {
        let owner = KeyOwner { user, ..FREE_USER };
        keys.push(mint(&db.store(), &owner).await.0);
    }

    // Act: one request per user on each server (each caches its keys), then 6 more per user
    // at once, alternating between the servers.
    let mut answers = Vec::new();
    for (user, key) in keys.iter().enumerate() {
        for server in &servers {
            answers.push((user, outcome(&check(server, key).await)));
        }
    }
    answers.extend(
        join_all(keys.iter().enumerate().flat_map(|(user, key)| {
            let servers = &servers;
            (0..6).map(move |n| async move { (user, outcome(&check(&servers[n % 2], key).await)) })
        }))
        .await,
    );

    // Assert: exactly 5 allowed and 3 refused per user, whichever server answered.
    let mut per_user: BTreeMap<usize, BTreeMap<String, usize>> = BTreeMap::new();
    for (user, outcome) in answers {
        *per_user
            .entry(user)
            .or_default()
            .entry(outcome)
            .or_default() += 1;
    }
    for (user, outcomes) in &per_user {
        assert_eq!(
            outcomes,
            &BTreeMap::from([("allowed".to_owned(), 5), ("429".to_owned(), 3)]),
            "user-{user}"
        );
    }
    // Each user's counters sit on one node; the users spread over all three.
    let mut nodes_of_user: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
    for port in &cluster.ports {
        for key in cluster
            .cli(*port, &["--scan", "--pattern", &format!("{prefix}*")])
            .lines()
        {
            let owner = key.split('}').next().unwrap().to_owned();
            nodes_of_user.entry(owner).or_default().insert(*port);
        }
    }
    assert_eq!(nodes_of_user.len(), users.len(), "{nodes_of_user:?}");
    assert!(nodes_of_user.values().all(|nodes| nodes.len() == 1));
    let used_nodes: BTreeSet<u16> = nodes_of_user.values().flatten().copied().collect();
    assert_eq!(used_nodes.len(), 3, "24 users land on every node");
    for server in servers {
        server.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_charged_through_one_server_refuse_the_user_on_the_other_through_the_cluster() {
    let cluster = OwnCluster::start();
    let db = TestDb::migrated().await;
    let clock = Arc::new(ManualClock::at_millis(TEN_SECONDS_INTO_A_MINUTE));
    let mut config = serve_config(&db);
    config.limits.redis_url = Some(cluster.seed_url());
    config.limits.redis_cluster = true;
    config.limits.redis_key_prefix = format!("maas-authz-test-{}:", uuid_simple());
    let first = Application::build_with_clock(config.clone(), clock.clone())
        .await
        .unwrap();
    let second = Application::build_with_clock(config, clock.clone())
        .await
        .unwrap();
    let (key, _) = mint(&db.store(), &FREE_USER).await;

    first
        .limiter()
        .unwrap()
        .charge_tokens(
            "alice",
            &maas_authz::ids::SubscriptionKey::from_wire(
                "models-as-a-service/free@models-as-a-service/simulator",
            ),
            100,
        )
        .await
        .unwrap();
    let refused = check(&second, &key).await;

    assert_eq!(outcome(&refused), "429");
    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
}
