//! `maas-authz check` as the real binary against a running server: the decision it prints, its
//! exit codes, and its errors.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use crate::support::*;

/// Runs `maas-authz <args>` off the test's runtime, which keeps serving the in-process server.
async fn maas_authz(args: &[&str]) -> Output {
    maas_authz_with_input(args, String::new()).await
}

/// As [`maas_authz`], with `input` on its standard input.
async fn maas_authz_with_input(args: &[&str], input: String) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_maas-authz"));
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    tokio::task::spawn_blocking(move || {
        let mut child = command.spawn().expect("run maas-authz");
        let mut stdin = child.stdin.take().expect("a piped stdin");
        stdin.write_all(input.as_bytes()).expect("write stdin");
        drop(stdin);
        child.wait_with_output().expect("wait for maas-authz")
    })
    .await
    .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn check_prints_an_allow_with_the_headers_envoy_would_set_and_exits_0() {
    let server = TestServer::start().await;
    let (key, record) = mint(&server.db.store(), &PREMIUM_USER).await;
    let address = server.server.grpc_addr.to_string();

    let output = maas_authz(&[
        "check",
        "/qwen3/v1/chat/completions",
        "--server",
        &address,
        "--key",
        &key,
    ])
    .await;

    let printed = stdout(&output);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{printed}{}",
        stderr(&output)
    );
    assert!(
        printed.starts_with("allowed: Envoy forwards the request\n"),
        "{printed}"
    );
    assert!(printed.contains("  x-maas-username: bob\n"), "{printed}");
    assert!(
        printed.contains("  x-maas-subscription: premium\n"),
        "{printed}"
    );
    assert!(
        printed.contains(&format!("  x-maas-key-id: {}\n", record.id)),
        "{printed}"
    );
    assert!(
        printed.contains("headers removed from the request: authorization\n"),
        "{printed}"
    );
    assert!(
        printed.contains("  x-ratelimit-remaining-requests: 19\n"),
        "the premium limit is 20 a minute: {printed}"
    );
    assert!(
        !printed.contains(&key) && !stderr(&output).contains(&key),
        "the key is never printed"
    );
}

#[tokio::test]
async fn check_reads_the_key_from_standard_input_with_key_file_dash() {
    let server = TestServer::start().await;
    let (key, _) = mint(&server.db.store(), &PREMIUM_USER).await;
    let address = server.server.grpc_addr.to_string();

    let output = maas_authz_with_input(
        &[
            "check",
            "/qwen3/v1/chat/completions",
            "--server",
            &address,
            "--key-file",
            "-",
        ],
        format!("{key}\n"),
    )
    .await;

    let printed = stdout(&output);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{printed}{}",
        stderr(&output)
    );
    assert!(printed.contains("  x-maas-username: bob\n"), "{printed}");
}

#[tokio::test]
async fn check_prints_a_denial_with_its_status_and_reason_and_exits_1() {
    let server = TestServer::start().await;
    let (key, _) = mint(&server.db.store(), &FREE_USER).await;
    let address = server.server.grpc_addr.to_string();

    let text = maas_authz(&[
        "check",
        "/qwen3/v1/chat/completions",
        "--server",
        &address,
        "--key",
        &key,
    ])
    .await;
    let json = maas_authz(&[
        "check",
        "/qwen3/v1/chat/completions",
        "--server",
        &address,
        "--key",
        &key,
        "--output",
        "json",
    ])
    .await;

    assert_eq!(text.status.code(), Some(1), "{}", stderr(&text));
    assert!(
        stdout(&text).starts_with("denied: HTTP 403 Forbidden, reason model_not_in_subscription\n"),
        "{}",
        stdout(&text)
    );
    assert_eq!(json.status.code(), Some(1), "{}", stderr(&json));
    let decision: serde_json::Value = serde_json::from_str(&stdout(&json)).unwrap();
    assert_eq!(decision["allowed"], false);
    assert_eq!(decision["status"], 403);
    assert_eq!(decision["reason"], "model_not_in_subscription");
    assert_eq!(
        decision["headers"]["x-ext-auth-reason"],
        "model_not_in_subscription"
    );
}

#[tokio::test]
async fn check_as_json_gives_a_script_the_decision_and_the_stamped_identity() {
    let server = TestServer::start_with_dynamic_metadata().await;
    let (key, _) = mint(&server.db.store(), &PREMIUM_USER).await;
    let address = server.server.grpc_addr.to_string();

    let output = maas_authz(&[
        "check",
        "/v1/chat/completions",
        "--model",
        "llm/qwen3",
        "--server",
        &address,
        "-H",
        &format!("x-api-key: {key}"),
        "--output",
        "json",
    ])
    .await;

    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let decision: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(decision["allowed"], true);
    assert_eq!(decision["status"], 200);
    assert_eq!(decision["headers"]["x-maas-tier"], "premium");
    assert_eq!(
        decision["headers_removed"],
        serde_json::json!(["x-api-key"])
    );
    assert_eq!(
        decision["dynamic_metadata"]["model"],
        "models-as-a-service/qwen3"
    );
}

#[tokio::test]
async fn check_without_a_server_says_it_cannot_reach_it_and_exits_2() {
    // A port that was free a moment ago: nothing listens there.
    let address = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();

    let output = maas_authz(&[
        "check",
        "/qwen3/v1/chat/completions",
        "--server",
        &address,
        "--timeout",
        "2s",
    ])
    .await;

    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty());
    assert!(
        stderr(&output).starts_with(&format!(
            "maas-authz check: error: cannot reach maas-authz's gRPC listener at http://{address}"
        )),
        "{}",
        stderr(&output)
    );
}

#[tokio::test]
async fn check_with_bad_arguments_says_what_is_wrong_and_exits_2() {
    let no_path = maas_authz(&["check"]).await;
    let bad_header = maas_authz(&["check", "/v1/models", "-H", "sk-oai-not-a-header"]).await;
    let bad_output = maas_authz(&["check", "/v1/models", "--output", "yaml"]).await;

    assert_eq!(no_path.status.code(), Some(2));
    assert!(
        stderr(&no_path).contains("required arguments were not provided")
            && stderr(&no_path).contains("<PATH>"),
        "{}",
        stderr(&no_path)
    );
    assert_eq!(bad_header.status.code(), Some(2));
    assert!(
        stderr(&bad_header).contains("must be `name: value`"),
        "{}",
        stderr(&bad_header)
    );
    assert!(!stderr(&bad_header).contains("sk-oai-not-a-header"));
    assert_eq!(bad_output.status.code(), Some(2));
    assert!(
        stderr(&bad_output).contains("[possible values: text, json]"),
        "{}",
        stderr(&bad_output)
    );
}
