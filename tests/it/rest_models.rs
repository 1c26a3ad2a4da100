//! `GET /v1/models` and `GET /v1/subscriptions`: what each kind of caller may discover.

use reqwest::Method;
use serde_json::{Value, json};

use crate::rest_support::*;

fn ids_and_tiers(list: &Value) -> Vec<(String, String)> {
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap().to_owned(),
                m["tier"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

#[tokio::test]
async fn user_tokens_see_the_models_of_all_their_subscriptions() {
    let server = RestServer::start().await;
    let reply = server
        .call(Method::GET, "/v1/models")
        .token(BOB)
        .send()
        .await;
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    let list = reply.assert_status(200);
    assert_eq!(list["object"], "list");
    assert_eq!(
        ids_and_tiers(list),
        pairs(&[("simulator", "premium"), ("qwen3", "premium")])
    );
    let base = format!("http://{}", server.test.server.http_addr);
    let created = list["data"][0]["created"].as_i64().unwrap();
    assert!(created > 1_700_000_000, "a real Unix time: {created}");
    assert_eq!(
        list["data"][0],
        json!({
            "id": "simulator",
            "object": "model",
            "created": created,
            "owned_by": "llm",
            "ready": true,
            "subscriptions": [
                {"name": "premium", "displayName": "Premium"},
                {"name": "free", "displayName": "Free"},
            ],
            "name": "Simulator Model",
            "url": format!("{base}/simulator"),
            "tier": "premium",
        })
    );
    let alice = server
        .call(Method::GET, "/maas-api/v1/models")
        .token(ALICE)
        .send()
        .await;
    assert_eq!(
        ids_and_tiers(alice.assert_status(200)),
        pairs(&[("simulator", "free")])
    );
}

#[tokio::test]
async fn the_subscription_header_scopes_token_callers_and_is_checked() {
    let server = RestServer::start().await;
    let scoped = server
        .call(Method::GET, "/v1/models")
        .token(BOB)
        .header("x-maas-subscription", "free")
        .send()
        .await;
    assert_eq!(
        ids_and_tiers(scoped.assert_status(200)),
        pairs(&[("simulator", "free")])
    );
    let denied = json!({"error": {
        "message": "access denied to requested subscription",
        "type": "permission_error",
        "code": "access_denied",
    }});
    for subscription in ["premium", "does-not-exist"] {
        let reply = server
            .call(Method::GET, "/v1/models")
            .token(ALICE)
            .header("x-maas-subscription", subscription)
            .send()
            .await;
        reply.assert_exactly(403, denied.clone());
    }
}

#[tokio::test]
async fn api_keys_see_only_their_subscriptions_models_but_every_subscription_of_their_user() {
    let server = RestServer::start().await;
    let created = server
        .create_key(BOB, json!({"name": "free key", "subscription": "free"}))
        .await;
    let key = created["key"].as_str().unwrap();
    // The key's binding wins over any header.
    let reply = server
        .call(Method::GET, "/v1/models")
        .token(key)
        .header("x-maas-subscription", "premium")
        .send()
        .await;
    assert_eq!(
        ids_and_tiers(reply.assert_status(200)),
        pairs(&[("simulator", "free")])
    );
    let subscriptions = server
        .call(Method::GET, "/v1/subscriptions")
        .token(key)
        .send()
        .await;
    let names: Vec<_> = subscriptions
        .assert_status(200)
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].clone())
        .collect();
    assert_eq!(names, [json!("premium"), json!("free")]);
}

#[tokio::test]
async fn model_urls_follow_the_public_url_or_the_forwarded_request() {
    let server = RestServer::start().await;
    let reply = server
        .call(Method::GET, "/v1/models")
        .token(ALICE)
        .header("host", "gateway.example.com")
        .header("x-forwarded-proto", "https")
        .send()
        .await;
    assert_eq!(
        reply.assert_status(200)["data"][0]["url"],
        "https://gateway.example.com/simulator"
    );
    let configured = RestServer::start_with(|config| {
        config.http.public_url = Some("https://maas.example.org".to_owned());
    })
    .await;
    let reply = configured
        .call(Method::GET, "/v1/models")
        .token(ALICE)
        .header("x-forwarded-proto", "http")
        .send()
        .await;
    assert_eq!(
        reply.assert_status(200)["data"][0]["url"],
        "https://maas.example.org/simulator"
    );
}

#[tokio::test]
async fn subscriptions_list_what_the_caller_can_use_best_first() {
    let server = RestServer::start().await;
    let reply = server
        .call(Method::GET, "/v1/subscriptions")
        .token(BOB)
        .send()
        .await;
    let list = reply.assert_status(200).as_array().unwrap().clone();
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    let names: Vec<_> = list.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["premium", "free"]);
    assert_eq!(
        list[1],
        json!({
            "subscription_id_header": "free",
            "name": "free",
            "namespace": "models-as-a-service",
            "display_name": "Free",
            "subscription_description": "For every authenticated user, to try the simulator.",
            "priority": 10,
            "tier": "free",
            "model_refs": [{
                "name": "simulator",
                "display_name": "Simulator Model",
                "description": "A simulated model that answers instantly, for trying the gateway out.",
                "token_rate_limits": [{"limit": 100, "window": "1m"}],
            }],
            "organization_id": "",
            "cost_center": "",
        })
    );
    let unauthenticated = server.call(Method::GET, "/v1/subscriptions").send().await;
    assert_eq!(unauthenticated.status, 401);
    assert_eq!(unauthenticated.json["error"]["code"], "invalid_api_key");
}
