//! `POST /v1/api-keys/search`: scoping, effective status, filters, sorting and pagination.

use chrono::{Duration, Utc};
use maas_authz::minting::{MintRequest, mint_key_with_labels};
use reqwest::Method;
use serde_json::{Value, json};

use crate::rest_support::*;
use crate::support::{FREE_USER, KeyOwner, insert_raw};

async fn search(server: &RestServer, token: &str, body: Value) -> Value {
    let reply = server
        .call(Method::POST, "/v1/api-keys/search")
        .token(token)
        .json(body)
        .send()
        .await;
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    reply.assert_status(200).clone()
}

fn names(page: &Value) -> Vec<String> {
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn callers_see_only_their_own_keys_newest_first() {
    let server = RestServer::start().await;
    for name in ["first", "second", "third"] {
        server.create_key(ALICE, json!({"name": name})).await;
    }
    server.create_key(BOB, json!({"name": "bobs"})).await;
    let page = search(&server, ALICE, json!({})).await;
    assert_eq!(page["object"], "list");
    assert_eq!(page["has_more"], false);
    assert_eq!(names(&page), ["third", "second", "first"]);
    for key in page["data"].as_array().unwrap() {
        assert_eq!(key["username"], "alice");
        assert!(key.get("key").is_none());
    }
    // No body at all: the same defaults.
    let reply = server
        .call(Method::POST, "/maas-api/v1/api-keys/search")
        .token(ALICE)
        .send()
        .await;
    assert_eq!(
        names(reply.assert_status(200)),
        ["third", "second", "first"]
    );
}

#[tokio::test]
async fn status_is_the_effective_one_and_filters_by_it() {
    let server = RestServer::start().await;
    let store = server.test.db.store();
    // An active row whose expiry has passed: reported (and filtered) as expired.
    let (_, lapsed) = insert_raw(&store, &FREE_USER, Utc::now() - Duration::minutes(5)).await;
    let live = server.create_key(ALICE, json!({"name": "live"})).await;
    let gone = server.create_key(ALICE, json!({"name": "gone"})).await;
    server
        .call(
            Method::DELETE,
            &format!("/v1/api-keys/{}", gone["id"].as_str().unwrap()),
        )
        .token(ALICE)
        .send()
        .await
        .assert_status(200);

    let all = search(&server, ALICE, json!({})).await;
    let statuses: Vec<_> = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["name"].as_str().unwrap(), k["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        statuses,
        [("gone", "revoked"), ("live", "active"), ("raw", "expired")]
    );
    let expired = search(&server, ALICE, json!({"filters": {"status": ["expired"]}})).await;
    assert_eq!(names(&expired), ["raw"]);
    // The seed's flat form, with a single status string.
    let active = search(
        &server,
        ALICE,
        json!({"status": "active", "limit": 10, "offset": 0}),
    )
    .await;
    assert_eq!(names(&active), ["live"]);
    let two = search(&server, ALICE, json!({"status": ["active", "revoked"]})).await;
    assert_eq!(names(&two), ["gone", "live"]);
    // GET reports the effective status too, and an expired key cannot be revoked.
    let reply = server
        .call(Method::GET, &format!("/v1/api-keys/{}", lapsed.id))
        .token(ALICE)
        .send()
        .await;
    assert_eq!(reply.assert_status(200)["status"], "expired");
    let reply = server
        .call(Method::DELETE, &format!("/v1/api-keys/{}", lapsed.id))
        .token(ALICE)
        .send()
        .await;
    reply.assert_exactly(404, json!({"error": "API key not found"}));
    let _ = live;
}

#[tokio::test]
async fn pages_are_bounded_and_say_whether_more_exist() {
    let server = RestServer::start().await;
    let store = server.test.db.store();
    let owner = KeyOwner {
        user: "alice",
        groups: &["system:authenticated"],
        subscription: "free",
    };
    for _ in 0..101 {
        insert_raw(&store, &owner, Utc::now() + Duration::days(1)).await;
    }
    let capped = search(&server, ALICE, json!({"pagination": {"limit": 1000}})).await;
    assert_eq!(capped["data"].as_array().unwrap().len(), 100);
    assert_eq!(capped["has_more"], true);
    let default = search(&server, ALICE, json!({})).await;
    assert_eq!(default["data"].as_array().unwrap().len(), 50);
    assert_eq!(default["has_more"], true);
    let tail = search(
        &server,
        ALICE,
        json!({"pagination": {"limit": 50, "offset": 100}}),
    )
    .await;
    assert_eq!(tail["data"].as_array().unwrap().len(), 1);
    assert_eq!(tail["has_more"], false);
    let flat = search(&server, ALICE, json!({"limit": 10, "offset": 95})).await;
    assert_eq!(flat["data"].as_array().unwrap().len(), 6);
    assert_eq!(flat["has_more"], false);
}

#[tokio::test]
async fn sorting_by_each_column_puts_missing_values_last() {
    let server = RestServer::start().await;
    for (name, expires) in [("bravo", "3d"), ("alpha", "1d"), ("charlie", "2d")] {
        server
            .create_key(ALICE, json!({"name": name, "expiresIn": expires}))
            .await;
    }
    let client = server.test.db.client().await;
    client
        .execute(
            "UPDATE api_keys SET last_used_at = now() - interval '1 hour' WHERE name = 'charlie'",
            &[],
        )
        .await
        .unwrap();
    client
        .execute(
            "UPDATE api_keys SET last_used_at = now() WHERE name = 'alpha'",
            &[],
        )
        .await
        .unwrap();
    let by = |by: &str, order: &str| json!({"sort": {"by": by, "order": order}});
    assert_eq!(
        names(&search(&server, ALICE, by("name", "asc")).await),
        ["alpha", "bravo", "charlie"]
    );
    assert_eq!(
        names(&search(&server, ALICE, by("name", "DESC")).await),
        ["charlie", "bravo", "alpha"]
    );
    assert_eq!(
        names(&search(&server, ALICE, by("expires_at", "asc")).await),
        ["alpha", "charlie", "bravo"]
    );
    assert_eq!(
        names(&search(&server, ALICE, by("last_used_at", "desc")).await),
        ["alpha", "charlie", "bravo"]
    );
    assert_eq!(
        names(&search(&server, ALICE, by("last_used_at", "asc")).await),
        ["charlie", "alpha", "bravo"]
    );
    assert_eq!(
        names(&search(&server, ALICE, json!({"sort": {"by": "created_at"}})).await),
        ["charlie", "alpha", "bravo"]
    );
    let with_last_used = search(&server, ALICE, by("name", "asc")).await;
    assert!(with_last_used["data"][0]["lastUsedAt"].is_string());
    assert!(with_last_used["data"][1].get("lastUsedAt").is_none());
}

#[tokio::test]
async fn filters_by_subscription_and_label_containment() {
    let server = RestServer::start().await;
    server
        .create_key(
            BOB,
            json!({"name": "ci", "labels": {"team": "ml", "env": "prod"}}),
        )
        .await;
    server
        .create_key(
            BOB,
            json!({"name": "dev", "subscription": "free", "labels": {"team": "ml", "env": "dev"}}),
        )
        .await;
    server.create_key(BOB, json!({"name": "plain"})).await;
    let ml = search(
        &server,
        BOB,
        json!({"filters": {"labelsContain": {"team": "ml"}}}),
    )
    .await;
    assert_eq!(names(&ml), ["dev", "ci"]);
    let prod = search(
        &server,
        BOB,
        json!({"filters": {"labelsContain": {"team": "ml", "env": "prod"}}}),
    )
    .await;
    assert_eq!(names(&prod), ["ci"]);
    assert_eq!(
        prod["data"][0]["labels"],
        json!({"team": "ml", "env": "prod"})
    );
    let free = search(&server, BOB, json!({"filters": {"subscription": "free"}})).await;
    assert_eq!(names(&free), ["dev"]);
    let qualified = search(
        &server,
        BOB,
        json!({"filters": {"subscription": "models-as-a-service/premium"}}),
    )
    .await;
    assert_eq!(names(&qualified), ["plain", "ci"]);
}

#[tokio::test]
async fn only_admins_search_other_users() {
    let server = RestServer::start().await;
    server.create_key(ALICE, json!({"name": "a"})).await;
    server.create_key(BOB, json!({"name": "b"})).await;
    let reply = server
        .call(Method::POST, "/v1/api-keys/search")
        .token(ALICE)
        .json(json!({"filters": {"username": "bob"}}))
        .send()
        .await;
    reply.assert_exactly(
        403,
        json!({"error": "non-admin users can only search their own API keys"}),
    );
    let own = search(&server, ALICE, json!({"filters": {"username": "alice"}})).await;
    assert_eq!(names(&own), ["a"]);
    let everyone = search(&server, ADMIN, json!({})).await;
    assert_eq!(names(&everyone), ["b", "a"]);
    let bobs = search(&server, ADMIN, json!({"filters": {"username": "bob"}})).await;
    assert_eq!(names(&bobs), ["b"]);
}

#[tokio::test]
async fn labels_are_stored_as_given_and_read_back_by_the_store() {
    let server = RestServer::start().await;
    let store = server.test.db.store();
    let minted = mint_key_with_labels(
        &store,
        MintRequest {
            username: "alice".into(),
            groups: vec!["system:authenticated".into()],
            name: "labelled".into(),
            description: None,
            subscription: "free".into(),
            lifetime: std::time::Duration::from_secs(600),
            ephemeral: false,
        },
        [("app.kubernetes.io/name".to_owned(), "bot".to_owned())].into(),
        Utc::now(),
    )
    .await
    .unwrap();
    assert_eq!(
        minted.record.labels,
        [("app.kubernetes.io/name".to_owned(), "bot".to_owned())].into()
    );
    let page = search(&server, ALICE, json!({})).await;
    assert_eq!(
        page["data"][0]["labels"],
        json!({"app.kubernetes.io/name": "bot"})
    );
}
