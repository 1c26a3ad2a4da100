//! The operator CLI (`maas-authz keys …`, `migrate`, bad configuration), as the real binary.

use std::process::{Command, Output};

use crate::support::*;

fn maas_authz(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_maas-authz"));
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("run maas-authz")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn keys_create_prints_the_key_once_and_check_accepts_it() {
    let server = TestServer::start().await;
    let policy = example_policy_path();
    let env = [
        ("DATABASE_URL", server.db.url.as_str()),
        ("MAAS_AUTHZ_POLICY_PATH", policy.to_str().unwrap()),
    ];

    let output = maas_authz(
        &[
            "keys",
            "create",
            "--user",
            "ops",
            "--group",
            "premium-users",
            "--expires-in",
            "1h",
        ],
        &env,
    );

    assert!(output.status.success(), "{}", stderr(&output));
    let key = String::from_utf8(output.stdout.clone())
        .unwrap()
        .trim()
        .to_owned();
    assert!(key.starts_with("sk-oai-"), "{key}");
    assert!(
        !stderr(&output).contains(&key),
        "the key must not be logged"
    );
    let mut client = server.check_client().await;
    let response = client
        .check(check_request(
            "/qwen3/v1/chat/completions",
            &[("authorization", &bearer(&key))],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        response.status.unwrap().code,
        0,
        "premium is the highest-priority subscription for premium-users"
    );
}

#[tokio::test]
async fn keys_list_and_revoke_manage_a_users_keys() {
    let db = TestDb::migrated().await;
    let (_, record) = mint(&db.store(), &FREE_USER).await;
    let env = [("DATABASE_URL", db.url.as_str())];

    let listed = maas_authz(&["keys", "list", "--user", "alice"], &env);
    let revoked = maas_authz(&["keys", "revoke", &record.id.to_string()], &env);
    let revoked_again = maas_authz(&["keys", "revoke", &record.id.to_string()], &env);
    let listed_after = maas_authz(&["keys", "list", "--user", "alice"], &env);

    let listing = String::from_utf8(listed.stdout).unwrap();
    assert!(
        listing.contains(&record.id.to_string()) && listing.contains("\tactive\t"),
        "{listing}"
    );
    assert!(revoked.status.success(), "{}", stderr(&revoked));
    assert!(!revoked_again.status.success());
    assert!(
        stderr(&revoked_again).contains("no active key with id"),
        "{}",
        stderr(&revoked_again)
    );
    assert!(
        String::from_utf8(listed_after.stdout)
            .unwrap()
            .contains("\trevoked\t")
    );
}

#[tokio::test]
async fn keys_create_refuses_a_subscription_the_user_cannot_access() {
    let db = TestDb::migrated().await;
    let policy = example_policy_path();
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("MAAS_AUTHZ_POLICY_PATH", policy.to_str().unwrap()),
    ];

    let output = maas_authz(
        &[
            "keys",
            "create",
            "--user",
            "eve",
            "--subscription",
            "enterprise",
        ],
        &env,
    );

    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("subscription \"enterprise\" is not accessible to user \"eve\""),
        "{}",
        stderr(&output)
    );
    assert!(output.stdout.is_empty());
}

#[tokio::test]
async fn keys_create_refuses_bad_group_names_and_lifetimes() {
    let db = TestDb::migrated().await;
    let env = [("DATABASE_URL", db.url.as_str())];

    let bad_group = maas_authz(
        &[
            "keys",
            "create",
            "--user",
            "u",
            "--subscription",
            "free",
            "--group",
            "a b",
        ],
        &env,
    );
    let bad_lifetime = maas_authz(
        &[
            "keys",
            "create",
            "--user",
            "u",
            "--subscription",
            "free",
            "--expires-in",
            "soon",
        ],
        &env,
    );

    assert!(
        stderr(&bad_group).contains("group name \"a b\" is not allowed"),
        "{}",
        stderr(&bad_group)
    );
    assert!(
        stderr(&bad_lifetime).contains("invalid duration \"soon\""),
        "{}",
        stderr(&bad_lifetime)
    );
}

#[test]
fn serve_without_database_url_names_the_variable() {
    let output = maas_authz(&["serve"], &[("MAAS_AUTHZ_POLICY_PATH", "examples/policy")]);

    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("DATABASE_URL"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn serve_with_a_bad_setting_names_the_variable() {
    let cases = [
        (
            "MAAS_AUTHZ_CACHE_TTL",
            "forever",
            "invalid duration \"forever\"",
        ),
        (
            "MAAS_AUTHZ_GRPC_ADDR",
            "localhost",
            "invalid socket address",
        ),
        ("MAAS_AUTHZ_DB_POOL_SIZE", "0", "0 is not in 1..=1000"),
        ("MAAS_AUTHZ_CACHE_CAPACITY", "-5", "invalid value"),
        ("MAAS_AUTHZ_LOG_FORMAT", "xml", "invalid value 'xml'"),
        (
            "MAAS_AUTHZ_FORCE_STREAM_USAGE",
            "maybe",
            "invalid value 'maybe'",
        ),
        (
            "MAAS_AUTHZ_REDIS_URL",
            "localhost:6379",
            "must be a Redis URL like redis://host:6379",
        ),
        (
            "MAAS_AUTHZ_REDIS_TIMEOUT",
            "0s",
            "must be greater than zero",
        ),
        (
            "MAAS_AUTHZ_LIMITS_ENABLED",
            "sometimes",
            "invalid value 'sometimes'",
        ),
        (
            "MAAS_AUTHZ_LIMITS_ON_REDIS_ERROR",
            "maybe",
            "invalid value 'maybe'",
        ),
        (
            "MAAS_AUTHZ_DYNAMIC_METADATA",
            "perhaps",
            "invalid value 'perhaps'",
        ),
        (
            "MAAS_AUTHZ_KNOWN_KEY_FILTER",
            "mostly",
            "invalid value 'mostly'",
        ),
        (
            "MAAS_AUTHZ_CACHE_MAX_STALENESS",
            "0s",
            "must be greater than zero",
        ),
        (
            "MAAS_AUTHZ_DB_CHECK_TIMEOUT",
            "fast",
            "invalid duration \"fast\"",
        ),
        (
            "MAAS_AUTHZ_DB_BREAKER_THRESHOLD",
            "0",
            "0 is not in 1..=10000",
        ),
        ("MAAS_AUTHZ_DB_BREAKER_COOL_DOWN", "-1s", "invalid"),
        (
            "MAAS_AUTHZ_HOUSEKEEPING_INTERVAL",
            "hourly",
            "(or 0/off to disable)",
        ),
    ];

    for (variable, value, message) in cases {
        let output = maas_authz(
            &["serve"],
            &[
                ("DATABASE_URL", "postgres://x@127.0.0.1:9/x"),
                ("MAAS_AUTHZ_POLICY_PATH", "examples/policy"),
                (variable, value),
            ],
        );
        let text = stderr(&output);
        assert!(!output.status.success(), "{variable}");
        assert!(text.contains(variable), "{variable}: {text}");
        assert!(text.contains(message), "{variable}: {text}");
    }
}

#[test]
fn serve_refuses_bad_signing_keys_naming_the_variable_without_echoing_the_secret() {
    let output = maas_authz(
        &["serve"],
        &[
            ("DATABASE_URL", "postgres://x@127.0.0.1:9/x"),
            ("MAAS_AUTHZ_POLICY_PATH", "examples/policy"),
            ("MAAS_AUTHZ_IDENTITY_SIGNING_KEYS", "k1=too-short-secret"),
        ],
    );

    let text = stderr(&output);
    assert!(!output.status.success());
    assert!(
        text.contains(
            "MAAS_AUTHZ_IDENTITY_SIGNING_KEYS: entry 1 (key id \"k1\"): the secret must be at least 32 bytes"
        ),
        "{text}"
    );
    assert!(!text.contains("too-short-secret"), "{text}");
}

#[test]
fn serve_refuses_a_model_free_path_that_is_not_canonical() {
    let output = maas_authz(
        &["serve"],
        &[
            ("DATABASE_URL", "postgres://x@127.0.0.1:9/x"),
            ("MAAS_AUTHZ_POLICY_PATH", "examples/policy"),
            ("MAAS_AUTHZ_MODEL_FREE_PATHS", "/v1/tokenize,/tools/%2e%2e"),
        ],
    );

    let text = stderr(&output);
    assert!(!output.status.success());
    assert!(text.contains("MAAS_AUTHZ_MODEL_FREE_PATHS"), "{text}");
    assert!(
        text.contains("\"/tools/%2e%2e\" is not a canonical path"),
        "{text}"
    );
}

#[tokio::test]
async fn serve_refuses_to_start_with_an_unparsable_policy_and_says_where() {
    let db = TestDb::migrated().await;
    let dir = tempfile::tempdir().unwrap();
    // Not YAML at all (an invalid object alone would only be left out of the policy).
    std::fs::write(
        dir.path().join("bad.yaml"),
        "apiVersion: maas.opendatahub.io/v1alpha1\nkind: [MaaSSubscription\n",
    )
    .unwrap();

    let output = maas_authz(
        &[
            "serve",
            "--skip-migrations",
            "--grpc-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
        ],
        &[
            ("DATABASE_URL", db.url.as_str()),
            ("MAAS_AUTHZ_POLICY_PATH", dir.path().to_str().unwrap()),
        ],
    );

    let text = stderr(&output);
    assert!(!output.status.success());
    assert!(text.contains("MAAS_AUTHZ_POLICY_PATH"), "{text}");
    assert!(text.contains("bad.yaml"), "{text}");
}

#[tokio::test]
async fn migrate_reports_an_unreachable_database() {
    let output = maas_authz(
        &["migrate", "--db-connect-timeout", "1s"],
        &[("DATABASE_URL", "postgres://postgres@127.0.0.1:9/none")],
    );

    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("cannot connect to the database named by DATABASE_URL"),
        "{}",
        stderr(&output)
    );
}

// Multi-threaded so the client's connection task can close its socket while this test blocks
// on the child process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_binary_answers_check_and_stops_cleanly_on_sigterm() {
    use std::io::{BufRead, BufReader};
    let db = TestDb::migrated().await;
    let (key, _) = mint(&db.store(), &FREE_USER).await;
    let policy = example_policy_path();
    let mut child = Command::new(env!("CARGO_BIN_EXE_maas-authz"))
        .args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--internal-addr",
            "127.0.0.1:0",
        ])
        .env("DATABASE_URL", &db.url)
        .env("MAAS_AUTHZ_POLICY_PATH", &policy)
        .env("MAAS_AUTHZ_LOG_FORMAT", "json")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let grpc_addr = loop {
        let line = lines.next().expect("server exited before serving").unwrap();
        let entry: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
        if entry["fields"]["message"] == "maas-authz serving" {
            break entry["fields"]["grpc_addr"].as_str().unwrap().to_owned();
        }
    };
    let mut client = envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::connect(
        format!("http://{grpc_addr}"),
    )
    .await
    .unwrap();
    let response = client
        .check(check_request(
            "/simulator/v1/chat/completions",
            &[("authorization", &bearer(&key))],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.status.unwrap().code, 0);
    drop(client);

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();

    assert!(killed.success());
    assert!(status.success(), "exit status {status:?}; log: {rest:?}");
    assert!(rest.iter().any(|l| l.contains("stopped")), "{rest:?}");
    assert!(
        !rest.iter().any(|l| l.contains("grace period over")),
        "{rest:?}"
    );
    assert!(
        rest.iter().all(|l| !l.contains(&key)),
        "the key must never be logged"
    );
}

#[tokio::test]
async fn cleanup_deletes_ephemeral_keys_long_past_expiry_and_keeps_the_rest() {
    let db = TestDb::migrated().await;
    let store = db.store();
    insert_raw(
        &store,
        &FREE_USER,
        chrono::Utc::now() - chrono::Duration::hours(2),
    )
    .await;
    mint(&store, &FREE_USER).await;
    let client = db.client().await;
    // Two ephemeral rows: one 31 minutes past expiry (deleted), one 29 minutes (kept).
    for minutes in [31, 29] {
        client
            .execute(
                "INSERT INTO api_keys (id, username, name, key_hash, user_groups, subscription, ephemeral, expires_at) \
                 VALUES (gen_random_uuid()::text, 'alice', 'eph', md5(random()::text) || md5(random()::text), '{}', 'free', true, \
                         now() - make_interval(mins => $1))",
                &[&minutes],
            )
            .await
            .unwrap();
    }

    let output = maas_authz(&["cleanup"], &[("DATABASE_URL", db.url.as_str())]);

    assert!(output.status.success(), "{}", stderr(&output));
    let remaining: Vec<(bool, String)> = client
        .query(
            "SELECT ephemeral, id FROM api_keys ORDER BY ephemeral, id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        remaining.iter().filter(|(ephemeral, _)| *ephemeral).count(),
        1,
        "{remaining:?}"
    );
    assert_eq!(
        remaining
            .iter()
            .filter(|(ephemeral, _)| !*ephemeral)
            .count(),
        2,
        "regular keys are never deleted"
    );
    assert!(
        stderr(&output).contains("expired ephemeral keys cleaned up"),
        "{}",
        stderr(&output)
    );
}

/// Every log level on, every path that touches a secret exercised: no key or token may appear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_or_token_appears_in_the_logs_even_at_trace_level() {
    use std::io::Read;
    let db = TestDb::migrated().await;
    let dir = tempfile::tempdir().unwrap();
    let static_token = "static-token-that-must-never-be-logged-0123456789";
    let tokens_file = dir.path().join("tokens.yaml");
    std::fs::write(
        &tokens_file,
        format!("- token: {static_token}\n  username: alice\n  groups: [premium-users]\n"),
    )
    .unwrap();
    let log_path = dir.path().join("serve.log");
    let log_file = std::fs::File::create(&log_path).unwrap();
    let http_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let http_addr = http_listener.local_addr().unwrap();
    drop(http_listener);
    let mut child = Command::new(env!("CARGO_BIN_EXE_maas-authz"))
        .args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--internal-addr",
            "127.0.0.1:0",
        ])
        .arg("--http-addr")
        .arg(http_addr.to_string())
        .env("DATABASE_URL", &db.url)
        .env("MAAS_AUTHZ_POLICY_PATH", example_policy_path())
        .env("MAAS_AUTHZ_STATIC_TOKENS_FILE", &tokens_file)
        .env("RUST_LOG", "trace")
        .stderr(log_file)
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let base = format!("http://{http_addr}");
    let mut ready = false;
    for _ in 0..300 {
        if http
            .get(format!("{base}/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(ready, "server did not become ready");

    // Mint a key and an access token, use both, list, then revoke.
    let minted: serde_json::Value = http
        .post(format!("{base}/v1/api-keys"))
        .bearer_auth(static_token)
        .json(&serde_json::json!({"name": "log test", "expiresIn": "1h"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = minted["key"].as_str().expect("key").to_owned();
    let token: serde_json::Value = http
        .post(format!("{base}/v1/tokens"))
        .bearer_auth(static_token)
        .json(&serde_json::json!({"expiration": "15m"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let access_token = token["token"].as_str().expect("token").to_owned();
    for bearer_value in [&key, &access_token] {
        let _ = http
            .get(format!("{base}/v1/models"))
            .bearer_auth(bearer_value)
            .send()
            .await
            .unwrap();
    }
    let _ = http
        .get(format!("{base}/v1/models"))
        .bearer_auth(format!("{key}x"))
        .send()
        .await
        .unwrap();
    let _ = http
        .delete(format!(
            "{base}/v1/api-keys/{}",
            minted["id"].as_str().unwrap()
        ))
        .bearer_auth(static_token)
        .send()
        .await
        .unwrap();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();

    let mut log = String::new();
    std::fs::File::open(&log_path)
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(
        log.lines().count() > 20,
        "trace logging should have produced output:\n{log}"
    );
    let (_, secret_part) = key.split_once('_').unwrap();
    for secret in [
        key.as_str(),
        secret_part,
        access_token.as_str(),
        static_token,
    ] {
        assert!(!log.contains(secret), "a secret leaked into the logs");
    }
}

#[tokio::test]
async fn keys_create_tells_a_person_the_keys_id_beside_the_key_alone_on_stdout() {
    let db = TestDb::migrated().await;
    let env = [("DATABASE_URL", db.url.as_str())];

    let output = maas_authz(
        &[
            "keys",
            "create",
            "--user",
            "ops",
            "--subscription",
            "free",
            "--expires-in",
            "1h",
        ],
        &env,
    );

    assert!(output.status.success(), "{}", stderr(&output));
    let key = String::from_utf8(output.stdout.clone()).unwrap();
    let listed = maas_authz(&["keys", "list", "--user", "ops"], &env);
    let id = String::from_utf8(listed.stdout)
        .unwrap()
        .lines()
        .nth(1)
        .and_then(|row| row.split('\t').next())
        .unwrap()
        .to_owned();
    let notes = stderr(&output);
    assert!(
        notes.starts_with(&format!(
            "created key {id} for user ops: subscription free, expires 20"
        )),
        "{notes}"
    );
    assert!(!notes.contains("Some("), "{notes}");
    assert!(!notes.contains(key.trim()), "the key must not be on stderr");
}

#[tokio::test]
async fn keys_create_as_json_gives_a_script_the_id_key_subscription_and_expiry() {
    let db = TestDb::migrated().await;
    let env = [("DATABASE_URL", db.url.as_str())];

    let output = maas_authz(
        &[
            "keys",
            "create",
            "--user",
            "ops",
            "--subscription",
            "free",
            "--expires-in",
            "2h",
            "--output",
            "json",
        ],
        &env,
    );

    assert!(output.status.success(), "{}", stderr(&output));
    let created: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let key = created["key"].as_str().unwrap();
    assert!(key.starts_with("sk-oai-"), "{created}");
    assert_eq!(created["subscription"], "free");
    assert_eq!(created["username"], "ops");
    let expires_at: chrono::DateTime<chrono::Utc> =
        created["expiresAt"].as_str().unwrap().parse().unwrap();
    let lifetime = expires_at - chrono::Utc::now();
    assert!(
        lifetime > chrono::Duration::minutes(119) && lifetime <= chrono::Duration::hours(2),
        "{created}"
    );
    let listed = maas_authz(&["keys", "list", "--user", "ops"], &env);
    assert!(
        String::from_utf8(listed.stdout)
            .unwrap()
            .contains(created["id"].as_str().unwrap()),
        "{created}"
    );
    assert!(!stderr(&output).contains(key), "the key must not be logged");
}
