//! `/openapi.json`: generated from the handlers, lists every public route, and is valid OpenAPI
//! 3 according to the Python `openapi-spec-validator` (installed by scripts/test.sh into .venv).

use std::process::Command;

use reqwest::Method;

use crate::rest_support::*;

const PUBLIC_ROUTES: [(&str, &str); 16] = [
    ("/v1/api-keys", "post"),
    ("/v1/api-keys/search", "post"),
    ("/v1/api-keys/bulk-revoke", "post"),
    ("/v1/api-keys/config", "get"),
    ("/v1/api-keys/{id}", "get"),
    ("/v1/api-keys/{id}", "delete"),
    ("/v1/tokens", "post"),
    ("/v1/tokens", "delete"),
    ("/v1/models", "get"),
    ("/v1/subscriptions", "get"),
    ("/v1/model/{id}/subscriptions", "get"),
    ("/v1/usage", "get"),
    ("/v1/usage/report", "get"),
    ("/health", "get"),
    ("/ready", "get"),
    ("/openapi.json", "get"),
];

#[tokio::test]
async fn the_document_describes_every_public_route_and_nothing_internal() {
    let server = RestServer::start().await;
    let reply = server
        .call(Method::GET, "/maas-api/openapi.json")
        .send()
        .await;
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let document = reply.assert_status(200).clone();
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    let paths = document["paths"].as_object().unwrap();
    for (path, method) in PUBLIC_ROUTES {
        assert!(
            paths.get(path).and_then(|item| item.get(method)).is_some(),
            "{method} {path} is missing from /openapi.json"
        );
    }
    let operations: usize = paths
        .values()
        .map(|item| item.as_object().unwrap().len())
        .sum();
    assert_eq!(operations, PUBLIC_ROUTES.len());
    assert!(paths.keys().all(|path| !path.contains("internal")));
    assert_eq!(
        document["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let bare = server.call(Method::GET, "/openapi.json").send().await;
    assert_eq!(bare.json, document);
}

#[tokio::test]
async fn the_document_is_valid_openapi_3() {
    let server = RestServer::start().await;
    let reply = server.call(Method::GET, "/openapi.json").send().await;
    reply.assert_status(200);
    let directory = tempfile::tempdir().unwrap();
    let file = directory.path().join("openapi.json");
    std::fs::write(&file, &reply.text).unwrap();
    let output = Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 ({e}): run the tests through scripts/test.sh, which installs openapi-spec-validator into .venv and puts .venv/bin first on PATH"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("No module named openapi_spec_validator") {
        panic!(
            "the Python package openapi-spec-validator is missing: run `bash scripts/ensure-python-venv.sh scripts/requirements-test.txt` and put .venv/bin first on PATH (scripts/test.sh does both)"
        );
    }
    assert!(
        output.status.success(),
        "openapi-spec-validator rejected /openapi.json:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("OK"), "{stdout}\n{stderr}");
}
