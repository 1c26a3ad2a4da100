//! TLS to PostgreSQL and Redis against real servers of our own: a throwaway PostgreSQL cluster
//! that refuses plain connections, and a `redis-server` on a TLS port, both with certificates
//! from a CA made here (rcgen). The bad settings an operator may give are checked as the
//! binary reports them.
//!
//! PostgreSQL's server binaries come from `MAAS_AUTHZ_TEST_PG_BINDIR` (`scripts/test.sh` sets it
//! and, as root, `MAAS_AUTHZ_TEST_PG_USER`: postgres refuses to run as root), else the newest
//! `/usr/lib/postgresql/<version>/bin`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use maas_authz::app::Application;
use maas_authz::clock::ManualClock;
use maas_authz::config::DatabaseConfig;
use maas_authz::store::connect::PgEndpoint;
use maas_authz::store::postgres::{NoQueryObserver, PgKeyStore, PgSettings};
use maas_authz::tls::CaBundle;

use crate::support::*;

/// The password of the cluster's `postgres` role (SCRAM over TLS); no message may show it.
const PASSWORD: &str = "tls-test-s3cret";

// ---------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------

/// A CA of our own, written to `<dir>/<name>.pem`.
struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    file: PathBuf,
}

/// A server's certificate and key, PEM.
struct ServerCertificate {
    certificate: String,
    key: String,
}

impl TestCa {
    fn new(dir: &Path, name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let issuer =
            rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let file = dir.join(format!("{name}.pem"));
        std::fs::write(&file, issuer.pem()).unwrap();
        Self { issuer, file }
    }

    /// A server certificate for `names` (host names and IP addresses).
    fn issue(&self, names: &[&str]) -> ServerCertificate {
        let mut params = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0]);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate().unwrap();
        let certificate = params.signed_by(&key, &self.issuer).unwrap();
        ServerCertificate {
            certificate: certificate.pem(),
            key: key.serialize_pem(),
        }
    }

    fn bundle(&self) -> CaBundle {
        CaBundle::read(&self.file).unwrap()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---------------------------------------------------------------------------------------------
// A PostgreSQL that accepts only TLS
// ---------------------------------------------------------------------------------------------

/// A throwaway cluster in a temporary directory: `ssl=on`, `hostssl` lines only for TCP (plain
/// connections are rejected), SCRAM passwords. Stopped and removed on drop.
struct TlsPostgres {
    dir: tempfile::TempDir,
    bindir: PathBuf,
    /// The OS user the server runs as (`None`: ourselves, when we are not root).
    user: Option<String>,
    port: u16,
}

impl TlsPostgres {
    fn start(certificate: &ServerCertificate) -> Self {
        let bindir = pg_bindir();
        let user = pg_user();
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let cluster = Self {
            dir,
            bindir,
            user,
            port,
        };
        let root = cluster.dir.path();
        for sub in ["run", "tls"] {
            std::fs::create_dir(root.join(sub)).unwrap();
        }
        let password_file = root.join("password");
        std::fs::write(&password_file, PASSWORD).unwrap();
        std::fs::write(root.join("tls/server.crt"), &certificate.certificate).unwrap();
        std::fs::write(root.join("tls/server.key"), &certificate.key).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            root.join("tls/server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        cluster.hand_over(root);

        let data = root.join("data");
        let init = cluster.run_as_server_user(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--pwfile",
                password_file.to_str().unwrap(),
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        assert!(init.status.success(), "initdb: {}", text(&init.stderr));
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\n\
             hostnossl all all 0.0.0.0/0 reject\n\
             hostnossl all all ::/0 reject\n\
             hostssl all all 127.0.0.1/32 scram-sha-256\n\
             hostssl all all ::1/128 scram-sha-256\n",
        )
        .unwrap();
        cluster.hand_over(&data.join("pg_hba.conf"));

        let options = format!(
            "-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={run} \
             -c ssl=on -c ssl_cert_file={tls}/server.crt -c ssl_key_file={tls}/server.key \
             -c fsync=off -c shared_buffers=16MB -c max_connections=40",
            run = root.join("run").display(),
            tls = root.join("tls").display(),
        );
        let started = cluster.run_as_server_user(
            "pg_ctl",
            &[
                "start",
                "-D",
                data.to_str().unwrap(),
                "-w",
                "-t",
                "60",
                "-l",
                root.join("server.log").to_str().unwrap(),
                "-o",
                &options,
            ],
        );
        let log = std::fs::read_to_string(root.join("server.log")).unwrap_or_default();
        assert!(
            started.status.success(),
            "pg_ctl start: {}\n{log}",
            text(&started.stderr)
        );
        cluster
    }

    /// A URL to the `postgres` database with the password, host `host` and `query`.
    fn url(&self, host: &str, query: &str) -> String {
        format!(
            "postgres://postgres:{PASSWORD}@{host}:{}/postgres?{query}",
            self.port
        )
    }

    /// Gives `path` (and everything under it) to the server's user.
    fn hand_over(&self, path: &Path) {
        let Some(user) = &self.user else {
            return;
        };
        let status = Command::new("chown")
            .args(["-R", &format!("{user}:"), path.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(status.success(), "chown -R {user}: {}", path.display());
    }

    fn run_as_server_user(&self, program: &str, args: &[&str]) -> Output {
        let program = self.bindir.join(program);
        let mut command = match &self.user {
            None => Command::new(&program),
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(&program);
                command
            }
        };
        command
            .args(args)
            .current_dir("/")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = self.run_as_server_user(
            "pg_ctl",
            &[
                "stop",
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
            ],
        );
    }
}

/// `MAAS_AUTHZ_TEST_PG_BINDIR`, else the newest Debian server directory.
fn pg_bindir() -> PathBuf {
    if let Ok(dir) = std::env::var("MAAS_AUTHZ_TEST_PG_BINDIR")
        && !dir.is_empty()
    {
        return PathBuf::from(dir);
    }
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    candidates.sort();
    candidates.pop().map(|(_, bin)| bin).expect(
        "no PostgreSQL server binaries (initdb, pg_ctl): run the tests through scripts/test.sh, \
         which installs them, or set MAAS_AUTHZ_TEST_PG_BINDIR",
    )
}

/// Who runs the server: postgres refuses to run as root.
fn pg_user() -> Option<String> {
    if let Ok(user) = std::env::var("MAAS_AUTHZ_TEST_PG_USER") {
        return (!user.is_empty()).then_some(user);
    }
    let whoami = Command::new("id").arg("-u").output().unwrap();
    if text(&whoami.stdout).trim() != "0" {
        return None;
    }
    ["postgres", "maas-authz-pg"]
        .into_iter()
        .find(|user| {
            Command::new("id")
                .arg(user)
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(str::to_owned)
        .or_else(|| {
            panic!(
                "running as root and no 'postgres' user to run PostgreSQL as: run the tests \
                 through scripts/test.sh, or set MAAS_AUTHZ_TEST_PG_USER"
            )
        })
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn database_config(url: String, ca: Option<CaBundle>) -> DatabaseConfig {
    DatabaseConfig {
        database_url: url,
        tenant: "models-as-a-service".to_owned(),
        db_pool_size: 2,
        db_query_timeout: Duration::from_secs(5),
        db_connect_timeout: Duration::from_secs(5),
        database_ca_file: ca,
    }
}

/// Whether the connection `endpoint` makes is encrypted, as the server sees it.
async fn connects_with_tls(endpoint: &PgEndpoint) -> bool {
    let (client, connection) = endpoint.connect().await.expect("connects");
    tokio::spawn(connection);
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Starts `serve` against `database` (the rest of the test configuration unchanged).
async fn start_error(database: DatabaseConfig) -> String {
    let placeholder = TestDb::empty().await;
    let mut config = serve_config(&placeholder);
    config.database = database;
    config.startup_timeout = Duration::from_secs(30);
    match Application::build(config).await {
        Ok(server) => {
            server.shutdown().await.unwrap();
            panic!("the server started");
        }
        Err(error) => format!("{error:#}"),
    }
}

fn maas_authz(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_maas-authz"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .expect("run maas-authz")
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL cases (one cluster for all of them: starting one takes seconds)
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_check_the_server_as_sslmode_says() {
    let certificates = tempfile::tempdir().unwrap();
    let ca = TestCa::new(certificates.path(), "maas-authz-test-ca");
    let other_ca = TestCa::new(certificates.path(), "another-ca");
    let postgres = TlsPostgres::start(&ca.issue(&["localhost", "127.0.0.1"]));

    verify_full_with_the_right_ca_serves_check_over_tls(&postgres, &ca).await;
    verify_full_with_another_ca_stops_start_up_naming_the_ca_file(&postgres, &other_ca).await;
    verify_full_refuses_a_host_name_the_certificate_does_not_hold(&postgres, &ca).await;
    verify_ca_accepts_that_host_name(&postgres, &ca).await;
    sslrootcert_in_the_url_works_like_the_ca_file_setting(&postgres, &ca).await;
    require_encrypts_without_a_ca(&postgres).await;
    disable_is_refused_by_a_server_that_wants_tls(&postgres).await;
    the_cli_connects_with_the_ca_file_and_explains_a_wrong_one(&postgres, &ca, &other_ca);
}

async fn verify_full_with_the_right_ca_serves_check_over_tls(postgres: &TlsPostgres, ca: &TestCa) {
    let placeholder = TestDb::empty().await;
    let mut config = serve_config(&placeholder);
    config.database = database_config(
        postgres.url("127.0.0.1", "sslmode=verify-full"),
        Some(ca.bundle()),
    );
    let server = Application::build(config.clone())
        .await
        .expect("server starts over TLS");
    let store = PgKeyStore::connect(
        &PgSettings {
            database_url: config.database.database_url.clone(),
            database_ca_file: config.database.database_ca_file.clone(),
            tenant: config.database.tenant.clone(),
            pool_size: 1,
            query_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
        },
        Arc::new(NoQueryObserver),
    )
    .unwrap();
    let (key, _) = mint(&store, &FREE_USER).await;

    let mut client = envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::connect(
        format!("http://{}", server.grpc_addr),
    )
    .await
    .unwrap();
    let answer = client
        .check(check_request(
            "/simulator/v1/chat/completions",
            &[("authorization", &bearer(&key))],
        ))
        .await
        .unwrap()
        .into_inner();
    let endpoint = PgEndpoint::new(
        &config.database.database_url,
        config.database.database_ca_file.as_ref(),
    )
    .unwrap();
    let (admin, connection) = endpoint.connect().await.unwrap();
    tokio::spawn(connection);
    let plain_server_connections: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity JOIN pg_stat_ssl USING (pid) \
             WHERE application_name LIKE 'maas-authz%' AND NOT ssl",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let listener_over_tls: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity JOIN pg_stat_ssl USING (pid) \
             WHERE application_name = 'maas-authz-key-listener' AND ssl",
            &[],
        )
        .await
        .unwrap()
        .get(0);

    assert_eq!(answer.status.unwrap().code, 0, "{:?}", answer.http_response);
    assert!(matches!(
        answer.http_response,
        Some(HttpResponse::OkResponse(_))
    ));
    assert_eq!(plain_server_connections, 0);
    assert_eq!(listener_over_tls, 1, "the key-change listener uses TLS too");
    server.shutdown().await.unwrap();
}

async fn verify_full_with_another_ca_stops_start_up_naming_the_ca_file(
    postgres: &TlsPostgres,
    other_ca: &TestCa,
) {
    let error = start_error(database_config(
        postgres.url("127.0.0.1", "sslmode=verify-full"),
        Some(other_ca.bundle()),
    ))
    .await;

    assert!(
        error.contains(&format!(
            "DATABASE_URL (sslmode=verify-full): the server's certificate is not signed by a CA \
             in MAAS_AUTHZ_DATABASE_CA_FILE={}",
            other_ca.file.display()
        )),
        "{error}"
    );
    assert!(!error.contains(PASSWORD), "{error}");
}

async fn verify_full_refuses_a_host_name_the_certificate_does_not_hold(
    postgres: &TlsPostgres,
    ca: &TestCa,
) {
    // The TCP connection goes to 127.0.0.1; the certificate is checked for the URL's host.
    let url = postgres.url(
        "db.not-in-the-certificate.example",
        "hostaddr=127.0.0.1&sslmode=verify-full",
    );

    let error = start_error(database_config(url, Some(ca.bundle()))).await;

    assert!(
        error.contains(
            "DATABASE_URL (sslmode=verify-full): the server's certificate is not valid for the \
             host name \"db.not-in-the-certificate.example\" (it names localhost, 127.0.0.1); \
             connect by a name the certificate holds, or use sslmode=verify-ca to check the CA \
             only"
        ),
        "{error}"
    );
}

async fn verify_ca_accepts_that_host_name(postgres: &TlsPostgres, ca: &TestCa) {
    let url = postgres.url(
        "db.not-in-the-certificate.example",
        "hostaddr=127.0.0.1&sslmode=verify-ca",
    );
    let endpoint = PgEndpoint::new(&url, Some(&ca.bundle())).unwrap();

    assert!(connects_with_tls(&endpoint).await);
}

async fn sslrootcert_in_the_url_works_like_the_ca_file_setting(
    postgres: &TlsPostgres,
    ca: &TestCa,
) {
    let url = postgres.url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", ca.file.display()),
    );
    let endpoint = PgEndpoint::new(&url, None).unwrap();

    assert!(connects_with_tls(&endpoint).await);
}

async fn require_encrypts_without_a_ca(postgres: &TlsPostgres) {
    let endpoint = PgEndpoint::new(&postgres.url("127.0.0.1", "sslmode=require"), None).unwrap();

    assert!(connects_with_tls(&endpoint).await);
}

async fn disable_is_refused_by_a_server_that_wants_tls(postgres: &TlsPostgres) {
    let error = start_error(database_config(
        postgres.url("127.0.0.1", "sslmode=disable"),
        None,
    ))
    .await;

    assert!(
        error.contains(
            "DATABASE_URL (sslmode=disable): the server refuses connections without TLS \
             (pg_hba.conf rejects connection for host \"127.0.0.1\", user \"postgres\", database \
             \"postgres\", no encryption); set sslmode=verify-full (or verify-ca, or require) in \
             DATABASE_URL"
        ),
        "{error}"
    );
}

fn the_cli_connects_with_the_ca_file_and_explains_a_wrong_one(
    postgres: &TlsPostgres,
    ca: &TestCa,
    other_ca: &TestCa,
) {
    let url = postgres.url("localhost", "sslmode=verify-full");
    let right = ca.file.to_str().unwrap();
    let wrong = other_ca.file.to_str().unwrap();

    let migrated = maas_authz(
        &["migrate"],
        &[
            ("DATABASE_URL", &url),
            ("MAAS_AUTHZ_DATABASE_CA_FILE", right),
        ],
    );
    let listed = maas_authz(
        &["keys", "list", "--user", "alice"],
        &[
            ("DATABASE_URL", &url),
            ("MAAS_AUTHZ_DATABASE_CA_FILE", right),
        ],
    );
    let refused = maas_authz(
        &["keys", "list", "--user", "alice"],
        &[
            ("DATABASE_URL", &url),
            ("MAAS_AUTHZ_DATABASE_CA_FILE", wrong),
        ],
    );

    assert!(migrated.status.success(), "{}", text(&migrated.stderr));
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    assert!(
        text(&listed.stdout).contains("test key"),
        "the key minted over TLS is listed: {}",
        text(&listed.stdout)
    );
    let refusal = text(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        refusal.contains(&format!(
            "the server's certificate is not signed by a CA in MAAS_AUTHZ_DATABASE_CA_FILE={wrong}"
        )),
        "{refusal}"
    );
    assert!(!refusal.contains(PASSWORD), "{refusal}");
}

// ---------------------------------------------------------------------------------------------
// Redis over TLS
// ---------------------------------------------------------------------------------------------

/// A `redis-server` of our own answering only on a TLS port, stopped on drop.
struct TlsRedis {
    port: u16,
    child: std::process::Child,
    _files: tempfile::TempDir,
}

impl TlsRedis {
    fn start(certificate: &ServerCertificate, ca: &TestCa) -> Self {
        let files = tempfile::tempdir().unwrap();
        let (cert, key) = (
            files.path().join("redis.crt"),
            files.path().join("redis.key"),
        );
        std::fs::write(&cert, &certificate.certificate).unwrap();
        std::fs::write(&key, &certificate.key).unwrap();
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
            ])
            .arg("--tls-cert-file")
            .arg(&cert)
            .arg("--tls-key-file")
            .arg(&key)
            .arg("--tls-ca-cert-file")
            .arg(&ca.file)
            .args([
                "--tls-auth-clients",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(files.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/ensure-redis.sh installs it)");
        let redis = Self {
            port,
            child,
            _files: files,
        };
        for _ in 0..300 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return redis;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server did not listen on its TLS port {port} (built without TLS?)");
    }

    fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn check_counts_requests_in_redis_over_tls() {
    let certificates = tempfile::tempdir().unwrap();
    let ca = TestCa::new(certificates.path(), "redis-test-ca");
    let redis = TlsRedis::start(&ca.issue(&["127.0.0.1"]), &ca);
    let db = TestDb::migrated().await;
    let mut config = serve_config(&db);
    config.limits.redis_url = Some(redis.url());
    config.limits.redis_ca_file = Some(ca.bundle());
    config.limits.redis_key_prefix = "tls:".to_owned();
    config.limits.redis_timeout = Duration::from_secs(2);
    let clock = Arc::new(ManualClock::at_millis(1_800_000_000_000 + 10_000));
    let server = Application::build_with_clock(config, clock)
        .await
        .expect("server starts");
    let (key, _) = mint(&db.store(), &FREE_USER).await;

    let mut client = envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::connect(
        format!("http://{}", server.grpc_addr),
    )
    .await
    .unwrap();
    let answer = client
        .check(check_request(
            "/simulator/v1/chat/completions",
            &[("authorization", &bearer(&key))],
        ))
        .await
        .unwrap()
        .into_inner();
    let redis_client = redis::Client::build_with_tls(
        redis.url(),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(std::fs::read(&ca.file).unwrap()),
        },
    )
    .unwrap();
    let mut connection = redis_client
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let counters: Vec<String> = redis::cmd("KEYS")
        .arg("tls:*")
        .query_async(&mut connection)
        .await
        .unwrap();

    let Some(HttpResponse::OkResponse(ok)) = &answer.http_response else {
        panic!("expected an allow, got {answer:?}");
    };
    let remaining = ok
        .response_headers_to_add
        .iter()
        .filter_map(|option| option.header.as_ref())
        .find(|header| header.key == "x-ratelimit-remaining-requests")
        .map(|header| header.value.clone());
    assert_eq!(
        remaining.as_deref(),
        Some("4"),
        "counted: free allows 5 a minute"
    );
    assert!(
        counters
            .iter()
            .any(|key| key.ends_with(":r:60000:30000000")),
        "the request counter lives in the TLS Redis: {counters:?}"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_redis_whose_certificate_does_not_verify_stops_start_up() {
    let certificates = tempfile::tempdir().unwrap();
    let ca = TestCa::new(certificates.path(), "redis-test-ca");
    let other_ca = TestCa::new(certificates.path(), "another-ca");
    let redis = TlsRedis::start(&ca.issue(&["127.0.0.1"]), &ca);
    let db = TestDb::migrated().await;
    let mut config = serve_config(&db);
    config.limits.redis_url = Some(redis.url().replace("rediss://", "rediss://:r3dis-pw@"));
    config.limits.redis_ca_file = Some(other_ca.bundle());
    config.limits.redis_timeout = Duration::from_secs(2);

    let error = match Application::build(config).await {
        Ok(server) => {
            server.shutdown().await.unwrap();
            panic!("the server started");
        }
        Err(error) => format!("{error:#}"),
    };

    assert!(
        error.contains(&format!(
            "MAAS_AUTHZ_REDIS_URL (rediss://): the server's certificate is not signed by a CA in \
             MAAS_AUTHZ_REDIS_CA_FILE={}",
            other_ca.file.display()
        )),
        "{error}"
    );
    assert!(!error.contains("r3dis-pw"), "{error}");
}

// ---------------------------------------------------------------------------------------------
// Bad settings, as the binary reports them
// ---------------------------------------------------------------------------------------------

#[test]
fn bad_ca_file_settings_are_named_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("not-a-ca.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let cases = [
        (
            "MAAS_AUTHZ_DATABASE_CA_FILE",
            "/nonexistent/ca.pem".to_owned(),
            "cannot read /nonexistent/ca.pem: No such file or directory".to_owned(),
        ),
        (
            "MAAS_AUTHZ_REDIS_CA_FILE",
            not_pem.display().to_string(),
            format!(
                "{} holds no certificate (expected PEM blocks that begin with -----BEGIN CERTIFICATE-----)",
                not_pem.display()
            ),
        ),
    ];

    for (variable, value, message) in cases {
        let output = maas_authz(
            &["serve"],
            &[
                ("DATABASE_URL", "postgres://x@127.0.0.1:9/x"),
                ("MAAS_AUTHZ_POLICY_PATH", "examples/policy"),
                (variable, &value),
            ],
        );

        let stderr = text(&output.stderr);
        assert!(!output.status.success(), "{variable}");
        assert!(stderr.contains(variable), "{variable}: {stderr}");
        assert!(stderr.contains(&message), "{variable}: {stderr}");
    }
}

#[test]
fn a_bad_redis_url_is_refused_without_repeating_its_password() {
    let cases = [
        (
            "redis://:hunter2-secret@127.0.0.1:notaport",
            "must be a Redis URL like redis://host:6379",
        ),
        (
            "rediss://:hunter2-secret@redis.example:6380/#insecure",
            "#insecure (TLS without any certificate check) is refused",
        ),
    ];

    for (url, message) in cases {
        let output = maas_authz(
            &["serve"],
            &[
                ("DATABASE_URL", "postgres://x@127.0.0.1:9/x"),
                ("MAAS_AUTHZ_POLICY_PATH", "examples/policy"),
                ("MAAS_AUTHZ_REDIS_URL", url),
            ],
        );

        let stderr = text(&output.stderr);
        assert!(!output.status.success(), "{url}");
        assert!(stderr.contains("MAAS_AUTHZ_REDIS_URL"), "{stderr}");
        assert!(stderr.contains(message), "{stderr}");
        assert!(!stderr.contains("hunter2"), "{stderr}");
    }
}

#[test]
fn a_redis_ca_file_without_a_rediss_url_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "ca");

    let output = maas_authz(
        &["serve"],
        &[
            ("DATABASE_URL", "postgres://x@127.0.0.1:9/x"),
            ("MAAS_AUTHZ_POLICY_PATH", "examples/policy"),
            ("MAAS_AUTHZ_REDIS_URL", "redis://127.0.0.1:9"),
            ("MAAS_AUTHZ_REDIS_CA_FILE", ca.file.to_str().unwrap()),
            ("MAAS_AUTHZ_STARTUP_TIMEOUT", "1s"),
            ("MAAS_AUTHZ_SKIP_MIGRATIONS", "true"),
        ],
    );

    let stderr = text(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(
            "MAAS_AUTHZ_REDIS_CA_FILE is set but MAAS_AUTHZ_REDIS_URL is not a rediss:// URL"
        ),
        "{stderr}"
    );
}

#[test]
fn sslmode_prefer_is_refused_with_the_reason_and_without_the_password() {
    let output = maas_authz(
        &["migrate"],
        &[(
            "DATABASE_URL",
            "postgres://maas:pg-s3cret@db.example:5432/maas?sslmode=prefer",
        )],
    );

    let stderr = text(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(
            "DATABASE_URL: sslmode=prefer is refused: it falls back to an unencrypted connection \
             whenever TLS fails"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("pg-s3cret"), "{stderr}");
}
