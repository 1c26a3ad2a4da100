//! Shared test fixtures: a fresh PostgreSQL database per test, the real server on free ports,
//! and clients for it.

use std::path::PathBuf;
use std::time::Duration;

use chrono::Utc;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use maas_authz::app::{Application, RunningServer};
use maas_authz::config::{DatabaseConfig, HttpConfig, OptionalDuration, ServeConfig};
use maas_authz::key::ApiKey;
use maas_authz::minting::{MintRequest, mint_key};
use maas_authz::store::postgres::{NoQueryObserver, PgKeyStore, PgSettings};
use maas_authz::store::{KeyRecord, KeyRecordId, KeyStore, NewKey};
use tonic::transport::Channel;

/// The admin URL the test command exports; a local default for plain `cargo test`.
pub fn admin_url() -> String {
    std::env::var("MAAS_AUTHZ_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// `url` with its database name replaced.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{database}", &base[..path_start]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

async fn admin_client() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&admin_url(), tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot reach PostgreSQL at MAAS_AUTHZ_TEST_DATABASE_URL={}: {e}. Run the tests through scripts/test.sh, which finds or starts one.",
                admin_url()
            )
        });
    tokio::spawn(connection);
    client
}

/// A database that exists for one test and is dropped after it.
#[derive(Debug)]
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    /// An empty database (no migrations applied).
    pub async fn empty() -> Self {
        let name = format!("maas_authz_test_{}", uuid_simple());
        admin_client()
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        let url = with_database(&admin_url(), &name);
        Self { name, url }
    }

    /// A database with every migration applied.
    pub async fn migrated() -> Self {
        let db = Self::empty().await;
        maas_authz::app::migrate(&db.database_config(), Duration::from_secs(10))
            .await
            .expect("migrate test database");
        db
    }

    pub fn database_config(&self) -> DatabaseConfig {
        DatabaseConfig {
            db_pool_size: 4,
            db_query_timeout: Duration::from_secs(2),
            db_connect_timeout: Duration::from_secs(2),
            ..DatabaseConfig::new(&self.url)
        }
    }

    pub fn store(&self) -> PgKeyStore {
        PgKeyStore::connect(
            &PgSettings {
                database_url: self.url.clone(),
                database_ca_file: None,
                tenant: "models-as-a-service".to_owned(),
                pool_size: 2,
                query_timeout: Duration::from_secs(2),
                connect_timeout: Duration::from_secs(2),
            },
            std::sync::Arc::new(NoQueryObserver),
        )
        .expect("pool")
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .expect("connect test database");
        tokio::spawn(connection);
        client
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside async context; a short-lived runtime on its own thread does the work.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                if let Ok((client, connection)) =
                    tokio_postgres::connect(&admin_url(), tokio_postgres::NoTls).await
                {
                    tokio::spawn(connection);
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

pub fn uuid_simple() -> String {
    KeyRecordId::new_random().to_string().replace('-', "")
}

pub fn example_policy_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/policy")
}

/// The example policy with every limit raised to 10^9 per window, in a temporary directory: for
/// tests that send many requests and must not be stopped by a 429.
pub struct RaisedPolicy(tempfile::TempDir);

impl RaisedPolicy {
    pub fn write() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(example_policy_path()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let text = std::fs::read_to_string(&path).unwrap();
                let raised: Vec<String> = text
                    .lines()
                    .map(|line| match line.find("- limit: ") {
                        Some(at) => format!("{}- limit: 1000000000", &line[..at]),
                        None => line.to_owned(),
                    })
                    .collect();
                std::fs::write(
                    dir.path().join(path.file_name().unwrap()),
                    raised.join("\n"),
                )
                .unwrap();
            }
        }
        Self(dir)
    }

    pub fn path(&self) -> &std::path::Path {
        self.0.path()
    }
}

/// Serve configuration on free loopback ports against `db`, with the example policy.
pub fn serve_config(db: &TestDb) -> ServeConfig {
    let loopback = "127.0.0.1:0".parse().unwrap();
    ServeConfig {
        database: db.database_config(),
        grpc_addr: loopback,
        metrics_addr: loopback,
        policy_reload_interval: Duration::from_millis(50),
        cache_capacity: 1_000,
        negative_cache_capacity: 1_000,
        housekeeping_interval: OptionalDuration(None),
        startup_timeout: Duration::from_secs(10),
        shutdown_grace: Duration::from_secs(2),
        last_used_flush_interval: Duration::from_millis(50),
        last_used_batch_size: 5_000,
        // Tests that count queries or misses expect a cold cache; tests/it/warm_start.rs turns it on.
        cache_preload: OptionalDuration(None),
        http: HttpConfig::on_loopback(),
        ..ServeConfig::new(&db.url, &example_policy_path())
    }
}

/// A migrated database and the real server on it.
pub struct TestServer {
    pub db: TestDb,
    pub server: RunningServer,
}

impl TestServer {
    pub async fn start() -> Self {
        let db = TestDb::migrated().await;
        let server = Application::build(serve_config(&db))
            .await
            .expect("server starts");
        Self { db, server }
    }

    /// The server with `MAAS_AUTHZ_DYNAMIC_METADATA=true` (off by default): allow answers carry
    /// the identity as ext_authz dynamic metadata too.
    pub async fn start_with_dynamic_metadata() -> Self {
        let db = TestDb::migrated().await;
        let mut config = serve_config(&db);
        config.dynamic_metadata = true;
        let server = Application::build(config).await.expect("server starts");
        Self { db, server }
    }

    pub async fn check_client(&self) -> AuthorizationClient<Channel> {
        AuthorizationClient::connect(format!("http://{}", self.server.grpc_addr))
            .await
            .expect("connect gRPC")
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.server.grpc_addr))
            .unwrap()
            .connect()
            .await
            .expect("connect gRPC")
    }
}

/// Who a test key belongs to.
pub struct KeyOwner<'a> {
    pub user: &'a str,
    pub groups: &'a [&'a str],
    pub subscription: &'a str,
}

pub const FREE_USER: KeyOwner<'static> = KeyOwner {
    user: "alice",
    groups: &["system:authenticated"],
    subscription: "free",
};

pub const PREMIUM_USER: KeyOwner<'static> = KeyOwner {
    user: "bob",
    groups: &["system:authenticated", "premium-users"],
    subscription: "premium",
};

/// Mints a key the way the API and CLI do; returns its plaintext and record.
pub async fn mint(store: &impl KeyStore, owner: &KeyOwner<'_>) -> (String, KeyRecord) {
    let minted = mint_key(
        store,
        MintRequest {
            username: owner.user.to_owned(),
            groups: owner.groups.iter().map(|g| (*g).to_owned()).collect(),
            name: "test key".to_owned(),
            description: None,
            subscription: owner.subscription.to_owned(),
            lifetime: Duration::from_secs(3_600),
            ephemeral: false,
        },
        Utc::now(),
    )
    .await
    .expect("mint");
    (minted.key.expose().to_owned(), minted.record)
}

/// Inserts a key row directly (e.g. already expired), bypassing the minting rules.
pub async fn insert_raw(
    store: &impl KeyStore,
    owner: &KeyOwner<'_>,
    expires_at: chrono::DateTime<Utc>,
) -> (String, KeyRecord) {
    let key = ApiKey::generate().unwrap();
    let record = store
        .insert_key(&NewKey {
            id: KeyRecordId::new_random(),
            username: owner.user.to_owned(),
            name: "raw".to_owned(),
            description: None,
            key_hash: key.hash(),
            groups: owner.groups.iter().map(|g| (*g).to_owned()).collect(),
            subscription: owner.subscription.to_owned(),
            expires_at,
            ephemeral: false,
            labels: Default::default(),
        })
        .await
        .expect("insert");
    (key.expose().to_owned(), record)
}

/// A CheckRequest as Envoy sends it: lowercase header names, path with query.
pub fn check_request(path: &str, headers: &[(&str, &str)]) -> CheckRequest {
    check_request_with_body(path, headers, "")
}

pub fn check_request_with_body(path: &str, headers: &[(&str, &str)], body: &str) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "POST".to_owned(),
                    path: path.to_owned(),
                    host: "gateway.local".to_owned(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                    body: body.to_owned(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// [`check_request_with_body`] on a route whose operator set its model (`context_extensions`).
pub fn check_request_on_route(
    route_model: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> CheckRequest {
    let mut request = check_request_with_body(path, headers, body);
    if let Some(attributes) = request.attributes.as_mut() {
        attributes
            .context_extensions
            .insert("model".to_owned(), route_model.to_owned());
    }
    request
}

pub fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

/// A TCP proxy on loopback between the service and PostgreSQL that can cut the database off:
/// every open connection is dropped and new ones are closed at once, until restored.
pub struct DbProxy {
    pub addr: std::net::SocketAddr,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cuts: tokio::sync::watch::Sender<u64>,
    accept: tokio::task::JoinHandle<()>,
}

impl DbProxy {
    /// A proxy to the PostgreSQL server of [`admin_url`], passing traffic.
    pub async fn start() -> Self {
        use std::sync::atomic::Ordering;
        let config: tokio_postgres::Config = admin_url().parse().expect("admin URL");
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            _ => "127.0.0.1".to_owned(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let upstream = format!("{host}:{port}");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (cuts, _) = tokio::sync::watch::channel(0_u64);
        let (accept_up, accept_cuts) = (up.clone(), cuts.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !accept_up.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let upstream = upstream.clone();
                let mut cut = accept_cuts.subscribe();
                let connection_up = accept_up.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    if !connection_up.load(Ordering::SeqCst) {
                        return;
                    }
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Self {
            addr,
            up,
            cuts,
            accept,
        }
    }

    /// `url` (a test database's) pointed at this proxy.
    pub fn url_for(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").expect("URL with a scheme");
        let (userinfo, host_and_path) = match rest.split_once('@') {
            Some((userinfo, after)) => (format!("{userinfo}@"), after),
            None => (String::new(), rest),
        };
        let path = host_and_path
            .find('/')
            .map_or("", |slash| &host_and_path[slash..]);
        format!("{scheme}://{userinfo}{}{path}", self.addr)
    }

    /// The database goes away: open connections drop, new ones are closed at once.
    pub fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        self.cuts.send_modify(|generation| *generation += 1);
    }

    /// The database is back.
    pub fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for DbProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Waits until the server's key-change listener has issued its `LISTEN`, so no notice is missed.
pub async fn wait_for_listener(db: &TestDb) {
    let client = db.client().await;
    for _ in 0..500 {
        let listening: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'maas-authz-key-listener' \
                 AND datname = current_database() AND query ILIKE 'LISTEN%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if listening > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the key-change listener never connected");
}
