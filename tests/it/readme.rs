//! README.md's shell examples for a new user (*The first hour* and the REST API's), run through
//! bash as printed against the real server, with only what `scripts/run.sh` provides stood in
//! for: its ports and database URL become the test server's, `cargo run -q --release --` the
//! built binary, and `.local/run/developer-token` a token of the test's static token file.

use std::process::Command;

use maas_authz::app::Application;

use crate::support::*;

const DEVELOPER_TOKEN: &str = "dev-0123456789abcdef0123456789abcdef0123456789abcdef";

/// The first ```sh block after `heading` in README.md.
fn shell_block_after(heading: &str) -> String {
    let readme = include_str!("../../README.md");
    let section = readme
        .split(&format!("\n{heading}\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("README.md has no {heading:?}"));
    section
        .split("```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .unwrap_or_else(|| panic!("no sh block under {heading:?}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_examples_for_a_new_user_work_as_printed_after_run_sh() {
    let db = TestDb::migrated().await;
    let home = tempfile::tempdir().unwrap();
    let run_dir = home.path().join(".local/run");
    std::fs::create_dir_all(&run_dir).unwrap();
    std::fs::write(
        run_dir.join("developer-token"),
        format!("{DEVELOPER_TOKEN}\n"),
    )
    .unwrap();
    std::fs::write(
        run_dir.join("static-tokens.yaml"),
        format!("- token: {DEVELOPER_TOKEN}\n  username: developer\n  groups: [premium-users]\n"),
    )
    .unwrap();
    let mut config = serve_config(&db);
    config.identity.static_tokens_file = Some(run_dir.join("static-tokens.yaml"));
    let server = Application::build(config).await.expect("server starts");
    let binary = env!("CARGO_BIN_EXE_maas-authz");
    let script = format!(
        "{}\n{}\n",
        shell_block_after("## The first hour"),
        shell_block_after("## REST API")
    );
    let stood_in = script
        .replace(
            "cargo run -q --release -- check",
            &format!("{binary} check --server {}", server.grpc_addr),
        )
        .replace("cargo run -q --release --", binary)
        .replace("localhost:8080", &server.http_addr.to_string())
        .replace("localhost:9090", &server.metrics_addr.to_string())
        .replace("postgres://postgres@127.0.0.1:5432/maas_authz", &db.url)
        .replace("examples/policy", example_policy_path().to_str().unwrap());

    let output = tokio::task::spawn_blocking({
        let dir = home.path().to_path_buf();
        move || {
            Command::new("bash")
                .arg("-c")
                .arg(&stood_in)
                .current_dir(dir)
                .output()
                .expect("bash and curl are installed")
        }
    })
    .await
    .unwrap();

    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let shown = format!("{script}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    for expected in [
        // GET /v1/models, with the static token and with the access token
        r#""id":"qwen3","object":"model""#,
        // POST /v1/api-keys (twice: the first hour and the REST API)
        r#""name":"my-api-key","subscription":"premium""#,
        // maas-authz check with the key, without it, and as JSON on the route's model
        "allowed: Envoy forwards the request\n",
        "denied: HTTP 401 Unauthorized, reason missing_credentials\n",
        r#""allowed":true"#,
        // keys list, search and the metrics
        "ID\tNAME\tSTATUS",
        r#""status":"active""#,
        "maas_authz_check_decisions_total",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in\n{shown}"
        );
    }
    assert_eq!(
        stdout.matches(r#""id":"qwen3","object":"model""#).count(),
        2,
        "{shown}"
    );
    // The one error is the body of the keyless Check's denial: no REST call failed.
    assert_eq!(stdout.matches(r#""error":"#).count(), 1, "{shown}");
}
