//! The REST API's key routes over real HTTP: mint, get, revoke (and Check refusing at once),
//! bulk revoke, config, ephemeral keys, IDOR protection and admin paths.

use chrono::{DateTime, Utc};
use maas_authz::store::KeyStore;
use reqwest::Method;
use serde_json::json;

use crate::rest_support::*;

fn parse_time(value: &serde_json::Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(value.as_str().expect("a timestamp"))
        .expect("RFC 3339")
        .with_timezone(&Utc)
}

#[tokio::test]
async fn create_returns_the_key_once_bound_to_the_highest_priority_subscription() {
    let server = RestServer::start().await;
    let created = server
        .create_key(
            BOB,
            json!({"name": "my-api-key", "description": "Key for model access", "expiresIn": "90d"}),
        )
        .await;
    let key = created["key"].as_str().unwrap();
    assert!(key.starts_with("sk-oai-"));
    let prefix = created["keyPrefix"].as_str().unwrap();
    assert_eq!(prefix.len(), "sk-oai-".len() + 12 + 3);
    assert!(key.starts_with(prefix.trim_end_matches("...")));
    assert_eq!(created["name"], "my-api-key");
    assert_eq!(created["subscription"], "premium");
    assert_eq!(created["ephemeral"], false);
    assert!(created.get("labels").is_none());
    let lifetime = parse_time(&created["expiresAt"]) - parse_time(&created["createdAt"]);
    assert!(
        (lifetime.num_seconds() - 90 * 86_400).abs() <= 1,
        "{lifetime}"
    );
    assert!(uuid_like(created["id"].as_str().unwrap()));

    // The key works at the gateway for a premium model.
    assert_eq!(server.check("qwen3", key).await, None);
    // Groups were snapshotted onto the key.
    let record = server
        .test
        .db
        .store()
        .list_keys_of_user("bob", 10)
        .await
        .unwrap();
    assert_eq!(record[0].groups, ["system:authenticated", "premium-users"]);

    let alice = server.create_key(ALICE, json!({"name": "free one"})).await;
    assert_eq!(alice["subscription"], "free");
    let lifetime = parse_time(&alice["expiresAt"]) - parse_time(&alice["createdAt"]);
    assert!(
        (lifetime.num_seconds() - 90 * 86_400).abs() <= 1,
        "default is the maximum"
    );
}

fn uuid_like(text: &str) -> bool {
    maas_authz::store::KeyRecordId::parse(text).is_ok()
}

#[tokio::test]
async fn every_route_is_also_served_under_the_maas_api_prefix() {
    let server = RestServer::start().await;
    let reply = server
        .call(Method::POST, "/maas-api/v1/api-keys")
        .token(BOB)
        .json(json!({"name": "prefixed", "subscription": "free", "labels": {"team": "a"}}))
        .send()
        .await;
    let created = reply.assert_status(201);
    assert_eq!(created["subscription"], "free");
    assert_eq!(created["labels"], json!({"team": "a"}));
    let id = created["id"].as_str().unwrap();
    for path in [
        format!("/maas-api/v1/api-keys/{id}"),
        format!("/v1/api-keys/{id}"),
    ] {
        let reply = server.call(Method::GET, &path).token(BOB).send().await;
        let key = reply.assert_status(200);
        assert_eq!(key["labels"], json!({"team": "a"}));
    }
    let health = server.call(Method::GET, "/maas-api/health").send().await;
    health.assert_exactly(200, json!({"status": "healthy"}));
}

#[tokio::test]
async fn get_shows_metadata_with_seed_and_upstream_field_names() {
    let server = RestServer::start().await;
    let created = server
        .create_key(
            BOB,
            json!({"name": "my-api-key", "description": "Key for model access", "expiresIn": "30d"}),
        )
        .await;
    let id = created["id"].as_str().unwrap();
    let reply = server
        .call(Method::GET, &format!("/maas-api/v1/api-keys/{id}"))
        .token(BOB)
        .send()
        .await;
    let key = reply.assert_status(200).clone();
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    assert_eq!(key["id"], id);
    assert_eq!(key["name"], "my-api-key");
    assert_eq!(key["description"], "Key for model access");
    assert_eq!(key["username"], "bob");
    assert_eq!(key["status"], "active");
    assert_eq!(key["subscription"], "premium");
    assert_eq!(key["ephemeral"], false);
    assert_eq!(key["createdAt"], created["createdAt"]);
    assert_eq!(key["creationDate"], created["createdAt"]);
    assert_eq!(key["expiresAt"], created["expiresAt"]);
    assert_eq!(key["expirationDate"], created["expiresAt"]);
    assert!(key.get("key").is_none() && key.get("keyPrefix").is_none());
    assert!(key.get("lastUsedAt").is_none());
}

#[tokio::test]
async fn someone_elses_unknown_or_malformed_ids_are_all_not_found() {
    let server = RestServer::start().await;
    let alices = server.create_key(ALICE, json!({"name": "mine"})).await;
    let id = alices["id"].as_str().unwrap();
    let not_found = json!({"error": "API key not found"});
    for (method, path) in [
        (Method::GET, format!("/v1/api-keys/{id}")),
        (Method::DELETE, format!("/v1/api-keys/{id}")),
        (
            Method::GET,
            "/v1/api-keys/00000000-0000-4000-8000-000000000000".to_owned(),
        ),
        (Method::GET, "/v1/api-keys/not-a-uuid".to_owned()),
        (Method::DELETE, "/v1/api-keys/not-a-uuid".to_owned()),
    ] {
        let reply = server.call(method, &path).token(BOB).send().await;
        reply.assert_exactly(404, not_found.clone());
    }
    // Bob's failed DELETE left Alice's key alone; an admin sees it.
    let reply = server
        .call(Method::GET, &format!("/v1/api-keys/{id}"))
        .token(ADMIN)
        .send()
        .await;
    assert_eq!(reply.assert_status(200)["status"], "active");
}

#[tokio::test]
async fn revoke_keeps_the_row_and_check_refuses_the_key_at_once() {
    let server = RestServer::start().await;
    let created = server.create_key(ALICE, json!({"name": "doomed"})).await;
    let key = created["key"].as_str().unwrap();
    let id = created["id"].as_str().unwrap();
    // Check allows, and now the key sits in the authorizer's cache.
    assert_eq!(server.check("simulator", key).await, None);
    assert_eq!(server.check("simulator", key).await, None);

    let reply = server
        .call(Method::DELETE, &format!("/maas-api/v1/api-keys/{id}"))
        .token(ALICE)
        .send()
        .await;
    let revoked = reply.assert_status(200);
    assert_eq!(revoked["status"], "revoked");
    assert_eq!(revoked["id"], id);

    // Same replica, no waiting for the cache TTL.
    assert_eq!(
        server.check("simulator", key).await,
        Some((401, "key_revoked".to_owned()))
    );
    // Already revoked: not found; the row is still readable.
    let again = server
        .call(Method::DELETE, &format!("/v1/api-keys/{id}"))
        .token(ALICE)
        .send()
        .await;
    again.assert_exactly(404, json!({"error": "API key not found"}));
    let reply = server
        .call(Method::GET, &format!("/v1/api-keys/{id}"))
        .token(ALICE)
        .send()
        .await;
    assert_eq!(reply.assert_status(200)["status"], "revoked");
}

#[tokio::test]
async fn admins_may_revoke_anyones_key() {
    let server = RestServer::start().await;
    let created = server.create_key(BOB, json!({"name": "bobs"})).await;
    let id = created["id"].as_str().unwrap();
    let reply = server
        .call(Method::DELETE, &format!("/v1/api-keys/{id}"))
        .token(ADMIN)
        .send()
        .await;
    assert_eq!(reply.assert_status(200)["status"], "revoked");
    assert_eq!(
        server
            .check("simulator", created["key"].as_str().unwrap())
            .await,
        Some((401, "key_revoked".to_owned()))
    );
}

#[tokio::test]
async fn bulk_revoke_without_a_body_revokes_the_callers_own_active_keys() {
    let server = RestServer::start().await;
    let first = server.create_key(ALICE, json!({"name": "one"})).await;
    let second = server.create_key(ALICE, json!({"name": "two"})).await;
    let bobs = server.create_key(BOB, json!({"name": "bobs"})).await;
    for key in [&first, &second, &bobs] {
        assert_eq!(
            server
                .check("simulator", key["key"].as_str().unwrap())
                .await,
            None
        );
    }

    // A body must name its scope (upstream's rule); a dry run of your own keys names you.
    let dry = server
        .call(Method::POST, "/v1/api-keys/bulk-revoke")
        .token(ALICE)
        .json(json!({"username": "alice", "dryRun": true}))
        .send()
        .await;
    dry.assert_exactly(
        200,
        json!({"revokedCount": 2, "message": "Dry run: 2 API key(s) would be revoked", "dryRun": true}),
    );
    // The seed's curl: a JSON content type and no body at all.
    let reply = server
        .call(Method::POST, "/maas-api/v1/api-keys/bulk-revoke")
        .token(ALICE)
        .raw("application/json", Vec::new())
        .send()
        .await;
    reply.assert_exactly(
        200,
        json!({"revokedCount": 2, "message": "Successfully revoked 2 API key(s)"}),
    );
    for key in [&first, &second] {
        assert_eq!(
            server
                .check("simulator", key["key"].as_str().unwrap())
                .await,
            Some((401, "key_revoked".to_owned()))
        );
    }
    assert_eq!(
        server
            .check("simulator", bobs["key"].as_str().unwrap())
            .await,
        None
    );
    // Naming yourself is the same as no body.
    let reply = server
        .call(Method::POST, "/v1/api-keys/bulk-revoke")
        .token(ALICE)
        .json(json!({"username": "alice"}))
        .send()
        .await;
    assert_eq!(reply.assert_status(200)["revokedCount"], 0);
}

#[tokio::test]
async fn bulk_revoke_of_others_or_by_subscription_needs_an_admin() {
    let server = RestServer::start().await;
    let bobs_premium = server.create_key(BOB, json!({"name": "p"})).await;
    let bobs_free = server
        .create_key(BOB, json!({"name": "f", "subscription": "free"}))
        .await;
    let alices = server.create_key(ALICE, json!({"name": "a"})).await;
    let denied =
        json!({"error": "Access denied: admin privileges required for this bulk revoke operation"});
    for body in [
        json!({"username": "bob"}),
        json!({"subscription": "free"}),
        json!({"username": "alice", "subscription": "free"}),
    ] {
        let reply = server
            .call(Method::POST, "/v1/api-keys/bulk-revoke")
            .token(ALICE)
            .json(body)
            .send()
            .await;
        reply.assert_exactly(403, denied.clone());
    }

    // Admin: every active key bound to `free`, whoever owns it.
    let reply = server
        .call(Method::POST, "/v1/api-keys/bulk-revoke")
        .token(ADMIN)
        .json(json!({"subscription": "free"}))
        .send()
        .await;
    assert_eq!(reply.assert_status(200)["revokedCount"], 2);
    for revoked in [&bobs_free, &alices] {
        assert_eq!(
            server
                .check("simulator", revoked["key"].as_str().unwrap())
                .await,
            Some((401, "key_revoked".to_owned()))
        );
    }
    // Admin: another user's keys.
    let reply = server
        .call(Method::POST, "/v1/api-keys/bulk-revoke")
        .token(ADMIN)
        .json(json!({"username": "bob"}))
        .send()
        .await;
    assert_eq!(reply.assert_status(200)["revokedCount"], 1);
    assert_eq!(
        server
            .check("simulator", bobs_premium["key"].as_str().unwrap())
            .await,
        Some((401, "key_revoked".to_owned()))
    );
}

#[tokio::test]
async fn config_reports_the_lifetime_limits() {
    let server =
        RestServer::start_with(|config| config.http.api_key_max_expiration_days = 30).await;
    let reply = server
        .call(Method::GET, "/maas-api/v1/api-keys/config")
        .token(ALICE)
        .send()
        .await;
    reply.assert_exactly(
        200,
        json!({"max_expiration_days": 30, "ephemeral_max_expiration": "1h0m0s"}),
    );
    let too_long = server
        .call(Method::POST, "/v1/api-keys")
        .token(ALICE)
        .json(json!({"name": "k", "expiresIn": "31d"}))
        .send()
        .await;
    too_long.assert_exactly(
        400,
        json!({"error": "requested expiration (744h0m0s) exceeds maximum allowed (30 days)"}),
    );
    let unauthenticated = server.call(Method::GET, "/v1/api-keys/config").send().await;
    assert_eq!(unauthenticated.status, 401);
}

#[tokio::test]
async fn ephemeral_keys_get_a_name_an_hour_and_stay_out_of_default_searches() {
    let server = RestServer::start().await;
    let created = server
        .create_key(ALICE, json!({"ephemeral": true, "expiresIn": "30m"}))
        .await;
    let name = created["name"].as_str().unwrap();
    let nanos = name.strip_prefix("ephemeral-").expect("generated name");
    assert!(
        nanos.len() >= 18 && nanos.chars().all(|c| c.is_ascii_digit()),
        "{name}"
    );
    assert_eq!(created["ephemeral"], true);
    let lifetime = parse_time(&created["expiresAt"]) - parse_time(&created["createdAt"]);
    assert!((lifetime.num_seconds() - 1_800).abs() <= 1);
    let default = server.create_key(ALICE, json!({"ephemeral": true})).await;
    let lifetime = parse_time(&default["expiresAt"]) - parse_time(&default["createdAt"]);
    assert!((lifetime.num_seconds() - 3_600).abs() <= 1, "default 1h");
    let regular = server.create_key(ALICE, json!({"name": "regular"})).await;

    let hidden = server
        .call(Method::POST, "/v1/api-keys/search")
        .token(ALICE)
        .json(json!({}))
        .send()
        .await;
    let ids: Vec<_> = hidden.assert_status(200)["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].clone())
        .collect();
    assert_eq!(ids, [regular["id"].clone()]);
    for body in [
        json!({"includeEphemeral": true}),
        json!({"filters": {"includeEphemeral": true}}),
    ] {
        let shown = server
            .call(Method::POST, "/v1/api-keys/search")
            .token(ALICE)
            .json(body)
            .send()
            .await;
        assert_eq!(
            shown.assert_status(200)["data"].as_array().unwrap().len(),
            3
        );
    }
    let too_long = server
        .call(Method::POST, "/v1/api-keys")
        .token(ALICE)
        .json(json!({"ephemeral": true, "expiresIn": "2h"}))
        .send()
        .await;
    too_long.assert_exactly(
        400,
        json!({"error": "requested expiration (2h0m0s) exceeds maximum allowed (1h0m0s)"}),
    );
}

#[tokio::test]
async fn an_api_key_cannot_mint_keys_or_tokens() {
    let server = RestServer::start().await;
    let created = server.create_key(BOB, json!({"name": "leaked"})).await;
    let key = created["key"].as_str().unwrap();
    let refused = json!({"error": "API keys cannot create API keys or access tokens: authenticate with your OpenShift or OIDC token instead"});
    for path in ["/v1/api-keys", "/v1/tokens"] {
        let reply = server
            .call(Method::POST, path)
            .token(key)
            .json(json!({"name": "child"}))
            .send()
            .await;
        reply.assert_exactly(403, refused.clone());
    }
    // It can still manage what is its user's: read and revoke itself.
    let id = created["id"].as_str().unwrap();
    let reply = server
        .call(Method::GET, &format!("/v1/api-keys/{id}"))
        .token(key)
        .send()
        .await;
    assert_eq!(reply.assert_status(200)["name"], "leaked");
}

#[tokio::test]
async fn unknown_and_inaccessible_subscriptions_get_one_indistinguishable_answer() {
    let server = RestServer::start().await;
    let expected = json!({"error": "Unable to resolve a subscription for this API key", "code": "invalid_subscription"});
    for subscription in [
        "premium",
        "no-such-subscription",
        "models-as-a-service/premium",
    ] {
        let reply = server
            .call(Method::POST, "/v1/api-keys")
            .token(ALICE)
            .json(json!({"name": "k", "subscription": subscription}))
            .send()
            .await;
        reply.assert_exactly(400, expected.clone());
    }
    let qualified = server
        .create_key(
            ALICE,
            json!({"name": "k", "subscription": "models-as-a-service/free"}),
        )
        .await;
    assert_eq!(qualified["subscription"], "free");
}
