//! Admin rights over the REST API come only from live identities: an API key is never admin,
//! whatever groups it snapshotted, and a demotion in the static token file applies at once.

use maas_authz::store::KeyStore;
use reqwest::Method;
use serde_json::{Value, json};

use crate::rest_support::*;

/// The test identities with `root-admin` no longer in the admin group.
fn admin_demoted() -> String {
    let demoted = STATIC_TOKENS.replace(
        "[system:authenticated, maas-admins]",
        "[system:authenticated]",
    );
    assert_ne!(demoted, STATIC_TOKENS, "the fixture's admin entry moved");
    demoted
}

/// What a non-admin gets for each attempt on Bob's keys, in the order `attempts_on_bobs_keys`
/// makes them.
pub(crate) fn non_admin_answers() -> Vec<(u16, Value)> {
    let not_found = json!({"error": "API key not found"});
    let bulk_denied =
        json!({"error": "Access denied: admin privileges required for this bulk revoke operation"});
    vec![
        (
            403,
            json!({"error": "non-admin users can only search their own API keys"}),
        ),
        (404, not_found.clone()),
        (404, not_found),
        (403, bulk_denied.clone()),
        (403, bulk_denied),
    ]
}

/// Search, read, revoke and bulk-revoke Bob's keys as `token`; each answer's status and body.
pub(crate) async fn attempts_on_bobs_keys(
    server: &RestServer,
    token: &str,
    bobs_id: &str,
) -> Vec<(u16, Value)> {
    let key_path = format!("/v1/api-keys/{bobs_id}");
    let calls = [
        server
            .call(Method::POST, "/v1/api-keys/search")
            .json(json!({"filters": {"username": "bob"}})),
        server.call(Method::GET, &key_path),
        server.call(Method::DELETE, &key_path),
        server
            .call(Method::POST, "/v1/api-keys/bulk-revoke")
            .json(json!({"username": "bob"})),
        server
            .call(Method::POST, "/v1/api-keys/bulk-revoke")
            .json(json!({"subscription": "premium"})),
    ];
    let mut answers = Vec::with_capacity(calls.len());
    for call in calls {
        let reply = call.token(token).send().await;
        answers.push((reply.status, reply.json));
    }
    answers
}

pub(crate) fn names(page: &Value) -> Vec<&str> {
    page["data"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|key| key["name"].as_str().expect("a name"))
        .collect()
}

#[tokio::test]
async fn an_api_key_minted_by_an_admin_cannot_act_on_other_users_keys() {
    let server = RestServer::start().await;
    let bobs = server.create_key(BOB, json!({"name": "bobs"})).await;
    let bobs_id = bobs["id"].as_str().unwrap();
    let admins = server
        .create_key(ADMIN, json!({"name": "admin's own"}))
        .await;
    let admin_key = admins["key"].as_str().unwrap();
    let snapshot = server
        .test
        .db
        .store()
        .list_keys_of_user("root-admin", 10)
        .await
        .unwrap();

    let with_key = attempts_on_bobs_keys(&server, admin_key, bobs_id).await;
    let as_alice = attempts_on_bobs_keys(&server, ALICE, bobs_id).await;
    let own = server
        .call(Method::POST, "/v1/api-keys/search")
        .token(admin_key)
        .json(json!({}))
        .send()
        .await;

    assert_eq!(snapshot[0].groups, ["system:authenticated", ADMIN_GROUP]);
    assert_eq!(with_key, non_admin_answers());
    assert_eq!(as_alice, non_admin_answers());
    assert_eq!(names(own.assert_status(200)), ["admin's own"]);
    let bobs_now = server
        .call(Method::GET, &format!("/v1/api-keys/{bobs_id}"))
        .token(BOB)
        .send()
        .await;
    assert_eq!(bobs_now.assert_status(200)["status"], "active");
    assert_eq!(
        server
            .check("simulator", bobs["key"].as_str().unwrap())
            .await,
        None
    );
}

#[tokio::test]
async fn a_demoted_admin_loses_admin_at_once_and_their_keys_never_had_it() {
    let server = RestServer::start().await;
    let bobs = server.create_key(BOB, json!({"name": "bobs"})).await;
    let bobs_id = bobs["id"].as_str().unwrap();
    let admins = server
        .create_key(ADMIN, json!({"name": "admin's own"}))
        .await;
    let admin_key = admins["key"].as_str().unwrap();
    let while_admin = server
        .call(Method::POST, "/v1/api-keys/search")
        .token(ADMIN)
        .json(json!({"filters": {"username": "bob"}}))
        .send()
        .await;
    let key_while_admin = attempts_on_bobs_keys(&server, admin_key, bobs_id).await;

    server.rewrite_static_tokens(&admin_demoted());
    let token_after = attempts_on_bobs_keys(&server, ADMIN, bobs_id).await;
    let key_after = attempts_on_bobs_keys(&server, admin_key, bobs_id).await;
    let own_after = server
        .call(Method::POST, "/v1/api-keys/search")
        .token(ADMIN)
        .json(json!({}))
        .send()
        .await;

    assert_eq!(names(while_admin.assert_status(200)), ["bobs"]);
    assert_eq!(key_while_admin, non_admin_answers());
    assert_eq!(token_after, non_admin_answers());
    assert_eq!(key_after, non_admin_answers());
    assert_eq!(names(own_after.assert_status(200)), ["admin's own"]);
    assert_eq!(
        server
            .check("simulator", bobs["key"].as_str().unwrap())
            .await,
        None
    );
}
