//! The internal listener (validate, cleanup), its separation from the public one, probes and
//! request ids.

use chrono::{Duration, Utc};
use maas_authz::key::ApiKey;
use maas_authz::store::{KeyRecordId, KeyStore, NewKey};
use reqwest::Method;
use serde_json::json;

use crate::rest_support::*;

#[tokio::test]
async fn validate_answers_every_decision_with_200_in_upstreams_shape() {
    let server = RestServer::start().await;
    let created = server.create_key(ALICE, json!({"name": "v"})).await;
    let (key, id) = (
        created["key"].as_str().unwrap(),
        created["id"].as_str().unwrap(),
    );
    let validate = |body: serde_json::Value| {
        server
            .internal(Method::POST, "/internal/v1/api-keys/validate")
            .json(body)
            .send()
    };
    validate(json!({"key": key})).await.assert_exactly(
        200,
        json!({
            "valid": true,
            "userId": id,
            "username": "alice",
            "keyId": id,
            "keyName": "v",
            "groups": ["system:authenticated"],
            "subscription": "free",
            "tenant": "models-as-a-service",
        }),
    );
    let invalid = |reason: &str| json!({"valid": false, "groups": [], "tenant": "models-as-a-service", "reason": reason});
    validate(json!({"key": "sk-oai-nope"}))
        .await
        .assert_exactly(200, invalid("invalid key format"));
    let unknown = ApiKey::generate().unwrap();
    validate(json!({"key": unknown.expose()}))
        .await
        .assert_exactly(200, invalid("key not found"));
    server
        .call(Method::DELETE, &format!("/v1/api-keys/{id}"))
        .token(ALICE)
        .send()
        .await
        .assert_status(200);
    validate(json!({"key": key}))
        .await
        .assert_exactly(200, invalid("key revoked or expired"));

    for body in [json!({}), json!({"key": ""}), json!({"key": null})] {
        validate(body)
            .await
            .assert_exactly(400, json!({"error": "key is required"}));
    }
    let no_body = server
        .internal(Method::POST, "/internal/v1/api-keys/validate")
        .send()
        .await;
    no_body.assert_exactly(400, json!({"error": "key is required"}));
}

async fn insert_ephemeral(server: &RestServer, ephemeral: bool, expires_in: Duration) {
    let key = ApiKey::generate().unwrap();
    server
        .test
        .db
        .store()
        .insert_key(&NewKey {
            id: KeyRecordId::new_random(),
            username: "alice".into(),
            name: "e".into(),
            description: None,
            key_hash: key.hash(),
            groups: vec!["system:authenticated".into()],
            subscription: "free".into(),
            expires_at: Utc::now() + expires_in,
            ephemeral,
            labels: Default::default(),
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn cleanup_deletes_ephemeral_keys_half_an_hour_past_expiry() {
    let server = RestServer::start().await;
    insert_ephemeral(&server, true, Duration::minutes(-31)).await;
    insert_ephemeral(&server, true, Duration::minutes(-10)).await;
    insert_ephemeral(&server, true, Duration::minutes(10)).await;
    insert_ephemeral(&server, false, Duration::days(-2)).await;
    let reply = server
        .internal(Method::POST, "/internal/v1/api-keys/cleanup")
        .send()
        .await;
    reply.assert_exactly(
        200,
        json!({"deletedCount": 1, "message": "Successfully deleted 1 expired ephemeral key(s)"}),
    );
    let client = server.test.db.client().await;
    let left: i64 = client
        .query_one("SELECT count(*) FROM api_keys", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 3);
}

#[tokio::test]
async fn internal_routes_are_never_served_on_the_public_listener() {
    let server = RestServer::start().await;
    assert_ne!(
        server.test.server.http_addr.port(),
        server.test.server.internal_addr.port()
    );
    assert!(server.test.server.internal_addr.ip().is_loopback());
    for path in [
        "/internal/v1/api-keys/validate",
        "/internal/v1/api-keys/cleanup",
        "/maas-api/internal/v1/api-keys/validate",
        "/maas-api/internal/v1/api-keys/cleanup",
    ] {
        let reply = server
            .call(Method::POST, path)
            .token(ADMIN)
            .json(json!({"key": "sk-oai-x_y"}))
            .send()
            .await;
        reply.assert_exactly(404, json!({"error": "not found"}));
    }
    // And the public API is not on the internal listener.
    let reply = server
        .internal(Method::GET, "/v1/models")
        .token(ALICE)
        .send()
        .await;
    reply.assert_exactly(404, json!({"error": "not found"}));
}

#[tokio::test]
async fn health_and_readiness() {
    let server = RestServer::start().await;
    server
        .call(Method::GET, "/health")
        .send()
        .await
        .assert_exactly(200, json!({"status": "healthy"}));
    server
        .call(Method::GET, "/ready")
        .send()
        .await
        .assert_exactly(200, json!({"status": "ready"}));

    // A database that does not answer: alive, not ready.
    let unreachable = RestServer::start_with(|config| {
        config.skip_migrations = true;
        config.database.database_url = "postgres://postgres@127.0.0.1:1/none".to_owned();
        config.database.db_connect_timeout = std::time::Duration::from_millis(300);
        config.database.db_query_timeout = std::time::Duration::from_millis(500);
    })
    .await;
    unreachable
        .call(Method::GET, "/health")
        .send()
        .await
        .assert_exactly(200, json!({"status": "healthy"}));
    unreachable
        .call(Method::GET, "/maas-api/ready")
        .send()
        .await
        .assert_exactly(
            503,
            json!({"status": "unavailable", "database": "unavailable"}),
        );
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let server = RestServer::start().await;
    let echoed = server
        .call(Method::GET, "/health")
        .header("x-request-id", "trace-42")
        .send()
        .await;
    assert_eq!(echoed.header("x-request-id"), Some("trace-42"));
    let generated = server.call(Method::GET, "/health").send().await;
    let id = generated.header("x-request-id").unwrap();
    assert!(KeyRecordId::parse(id).is_ok(), "{id}");
    let replaced = server
        .call(Method::GET, "/v1/models")
        .header("x-request-id", "has spaces in it")
        .send()
        .await;
    assert_ne!(replaced.header("x-request-id"), Some("has spaces in it"));
    assert!(replaced.header("x-request-id").is_some());
    let internal = server
        .internal(Method::POST, "/internal/v1/api-keys/cleanup")
        .header("x-request-id", "cron-7")
        .send()
        .await;
    assert_eq!(internal.header("x-request-id"), Some("cron-7"));
}
