//! `POST/DELETE /v1/tokens`: access tokens are short-lived keys that work like any key.

use reqwest::Method;
use serde_json::{Value, json};

use crate::rest_support::*;

async fn issue(server: &RestServer, token: &str, body: Option<Value>) -> Reply {
    let call = server
        .call(Method::POST, "/maas-api/v1/tokens")
        .token(token);
    match body {
        Some(body) => call.json(body),
        None => call,
    }
    .send()
    .await
}

#[tokio::test]
async fn the_seed_flow_token_then_models_then_inference() {
    let server = RestServer::start().await;
    // Seed 000: POST /maas-api/v1/tokens with {"expiration": "15m"}.
    let reply = issue(&server, BOB, Some(json!({"expiration": "15m"}))).await;
    let issued = reply.assert_status(201).clone();
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    let token = issued["token"].as_str().unwrap();
    assert!(token.starts_with("sk-oai-"));
    assert_eq!(issued["expiration"], "15m0s");
    let lifetime = issued["expiresAt"].as_i64().unwrap() - issued["issuedAt"].as_i64().unwrap();
    assert_eq!(lifetime, 900);
    assert!(maas_authz::store::KeyRecordId::parse(issued["jti"].as_str().unwrap()).is_ok());

    // GET /v1/models with the token; then ${MODEL_URL}/v1/chat/completions.
    let models = server
        .call(Method::GET, "/v1/models")
        .token(token)
        .header("content-type", "application/json")
        .send()
        .await;
    let data = models.assert_status(200)["data"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(data.len(), 2);
    let model_url = data[0]["url"].as_str().unwrap();
    let path = model_url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(_, path)| format!("/{path}/v1/chat/completions"))
        .unwrap();
    assert_eq!(path, "/simulator/v1/chat/completions");
    let model = data[0]["id"].as_str().unwrap();
    assert_eq!(server.check(model, token).await, None);
    assert_eq!(server.check("qwen3", token).await, None);
}

#[tokio::test]
async fn expirations_default_to_four_hours_and_are_bounded() {
    let server = RestServer::start_with(|config| {
        config.http.token_max_expiration = std::time::Duration::from_secs(2 * 3_600);
    })
    .await;
    let default = issue(&server, ALICE, None).await;
    // The configured maximum (2h) is below the 4h default: refused, as any too-long request.
    default.assert_exactly(
        400,
        json!({"error": "requested expiration (4h0m0s) exceeds maximum allowed (2h0m0s)"}),
    );
    let seconds = issue(&server, ALICE, Some(json!({"expiration": 3600}))).await;
    assert_eq!(seconds.assert_status(201)["expiration"], "1h0m0s");
    let short = issue(&server, ALICE, Some(json!({"expiration": "5m"}))).await;
    short.assert_exactly(
        400,
        json!({"error": "token expiration must be at least 10m0s", "provided_expiration": "5m0s"}),
    );
    let zero = issue(&server, ALICE, Some(json!({"expiration": "0"}))).await;
    zero.assert_exactly(400, json!({"error": "expiration must be positive"}));
    let junk = issue(&server, ALICE, Some(json!({"expiration": "later"}))).await;
    junk.assert_exactly(
        400,
        json!({"error": "invalid duration \"later\": expected a number with a unit, like 30s, 15m, 2h30m, 1.5h or 90d"}),
    );

    let server = RestServer::start().await;
    let default = issue(&server, ALICE, None).await;
    let issued = default.assert_status(201);
    assert_eq!(issued["expiration"], "4h0m0s");
    assert_eq!(
        issued["expiresAt"].as_i64().unwrap() - issued["issuedAt"].as_i64().unwrap(),
        4 * 3_600
    );
    let long = issue(&server, ALICE, Some(json!({"expiration": "25h"}))).await;
    long.assert_exactly(
        400,
        json!({"error": "requested expiration (25h0m0s) exceeds maximum allowed (24h0m0s)"}),
    );
}

#[tokio::test]
async fn tokens_cannot_mint_and_delete_revokes_them_all_at_once() {
    let server = RestServer::start().await;
    let first = issue(&server, ALICE, Some(json!({"expiration": "1h"}))).await;
    let first = first.assert_status(201)["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let second = issue(&server, ALICE, Some(json!({"expiration": "1h"}))).await;
    let second = second.assert_status(201)["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let key = server.create_key(ALICE, json!({"name": "kept"})).await;
    let key = key["key"].as_str().unwrap();
    for credential in [first.as_str(), second.as_str(), key] {
        assert_eq!(server.check("simulator", credential).await, None);
    }

    // A token is an API key: it cannot mint more tokens.
    let reply = issue(&server, &first, Some(json!({"expiration": "1h"}))).await;
    assert_eq!(reply.status, 403, "{}", reply.text);

    // Tokens are ephemeral: hidden from the default search, shown with includeEphemeral.
    let search = server
        .call(Method::POST, "/v1/api-keys/search")
        .token(ALICE)
        .json(json!({"includeEphemeral": true}))
        .send()
        .await;
    let data = search.assert_status(200)["data"]
        .as_array()
        .unwrap()
        .clone();
    let tokens: Vec<_> = data
        .iter()
        .filter(|k| k["name"] == "access-token")
        .collect();
    assert_eq!(tokens.len(), 2);
    assert_eq!(
        tokens[0]["labels"],
        json!({"maas-authz.io/credential": "access-token"})
    );
    assert_eq!(tokens[0]["ephemeral"], true);

    let reply = server
        .call(Method::DELETE, "/maas-api/v1/tokens")
        .token(ALICE)
        .send()
        .await;
    reply.assert_exactly(
        200,
        json!({"revokedCount": 2, "message": "Successfully revoked 2 access token(s)"}),
    );
    for token in [&first, &second] {
        assert_eq!(
            server.check("simulator", token).await,
            Some((401, "key_revoked".to_owned()))
        );
    }
    assert_eq!(
        server.check("simulator", key).await,
        None,
        "keys are not tokens"
    );
    // Bob's tokens are his own business.
    let bobs = issue(&server, BOB, None).await;
    let bobs = bobs.assert_status(201)["token"]
        .as_str()
        .unwrap()
        .to_owned();
    server
        .call(Method::DELETE, "/v1/tokens")
        .token(ALICE)
        .send()
        .await
        .assert_status(200);
    assert_eq!(server.check("simulator", &bobs).await, None);
}
