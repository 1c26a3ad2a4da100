//! Upstream maas-api's current contract, tried as an upstream client would: `/v1/models`,
//! `/v1/subscriptions`, `/v1/model/{id}/subscriptions`, the selection callback, minting against a
//! subscription's phase, bulk revoke's scope and forged identity headers.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::rest_support::*;

/// Models: simulator and qwen3 (as in the example), `opt` and `opt-copy` serving one id,
/// `pending` not ready. Subscriptions for bob (premium-users): premium (all of them), degraded
/// (simulator and a missing model), failed (only a missing model). For everyone: free
/// (simulator) and locked (qwen3, which no auth policy grants them).
const CONTRACT_POLICY: &str = r#"
apiVersion: maas.opendatahub.io/v1alpha1
kind: MaaSModelRef
metadata:
  name: simulator
  namespace: llm
  annotations: {openshift.io/display-name: Simulator Model, openshift.io/description: A test model}
spec: {modelRef: {kind: LLMInferenceService, name: simulator, namespace: llm}}
---
apiVersion: maas.opendatahub.io/v1alpha1
kind: MaaSModelRef
metadata: {name: qwen3, namespace: llm}
spec: {modelRef: {kind: LLMInferenceService, name: qwen3, namespace: llm}}
---
apiVersion: maas.opendatahub.io/v1alpha1
kind: MaaSModelRef
metadata: {name: opt, namespace: llm, creationTimestamp: "2026-01-31T12:00:00Z"}
spec: {modelRef: {kind: LLMInferenceService, name: opt, namespace: llm}}
status: {phase: Ready, resolvedModelAlias: publishers/llm/models/test/x}
---
apiVersion: maas.opendatahub.io/v1alpha1
kind: MaaSModelRef
metadata: {name: opt-copy, namespace: llm}
spec: {modelRef: {kind: LLMInferenceService, name: opt, namespace: llm}}
status: {phase: Ready, resolvedModelAlias: publishers/llm/models/test/x}
---
apiVersion: maas.opendatahub.io/v1alpha1
kind: MaaSModelRef
metadata: {name: pending, namespace: llm}
spec: {modelRef: {kind: LLMInferenceService, name: pending, namespace: llm}}
status: {phase: Pending}
---
apiVersion: maas.opendatahub.io/v1alpha1
kind: MaaSSubscription
metadata: {name: premium, annotations: {openshift.io/display-name: Premium}}
spec:
  owner: {groups: [{name: premium-users}]}
  priority: 20
  tokenMetadata: {organizationId: org-7, costCenter: cc-42, labels: {team: research}}
  modelRefs:
    - {name: simulator, namespace: llm, tokenRateLimits: [{limit: 1000, window: 1m}], billingRate: {perToken: "0.000002"}}
    - {name: qwen3, namespace: llm, tokenRateLimits: [{limit: 1000, window: 1m}]}
    - {name: opt, namespace: llm, tokenRateLimits: [{limit: 1000, window: 1m}]}
    - {name: opt-copy, namespace: llm, tokenRateLimits: [{limit: 1000, window: 1m}]}
    - {name: pending, namespace: llm, tokenRateLimits: [{limit: 1000, window: 1m}]}
---
apiVersion: maas.opendatahub.io/v1alpha1
kind: MaaSSubscription
metadata: {name: degraded}
spec:
  owner: {groups: [{name: premium-users}]}
  priority: 15
  modelRefs:
    - {name: simulator, namespace: llm, tokenRateLimits: [{limit: 500, window: 1m}]}
    - {name: gone, namespace: llm, tokenRateLimits: [{limit: 500, window: 1m}]}
---
apiVersion: maas.opendatahub.io/v1alpha1
kind: MaaSSubscription
metadata: {name: failed}
spec:
  owner: {groups: [{name: premium-users}]}
  priority: 30
  modelRefs:
    - {name: gone, namespace: llm, tokenRateLimits: [{limit: 500, window: 1m}]}
---
apiVersion: maas.opendatahub.io/v1alpha1
kind: MaaSSubscription
metadata: {name: free, annotations: {openshift.io/display-name: Free}}
spec:
  owner: {groups: [{name: system:authenticated}]}
  priority: 10
  modelRefs:
    - {name: simulator, namespace: llm, tokenRateLimits: [{limit: 100, window: 1m}]}
---
apiVersion: maas.opendatahub.io/v1alpha1
kind: MaaSSubscription
metadata: {name: locked}
spec:
  owner: {groups: [{name: system:authenticated}]}
  priority: 5
  modelRefs:
    - {name: qwen3, namespace: llm, tokenRateLimits: [{limit: 100, window: 1m}]}
---
apiVersion: maas.opendatahub.io/v1alpha1
kind: MaaSAuthPolicy
metadata: {name: everyone}
spec:
  modelRefs: [{name: simulator, namespace: llm}]
  subjects: {groups: [{name: system:authenticated}]}
---
apiVersion: maas.opendatahub.io/v1alpha1
kind: MaaSAuthPolicy
metadata: {name: premium-access}
spec:
  modelRefs:
    - {name: qwen3, namespace: llm}
    - {name: opt, namespace: llm}
    - {name: opt-copy, namespace: llm}
    - {name: pending, namespace: llm}
  subjects: {groups: [{name: premium-users}]}
"#;

/// A server on [`CONTRACT_POLICY`], reloading it every 50 ms; the directory lives as long as it.
async fn contract_server() -> (RestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policy.yaml"), CONTRACT_POLICY).unwrap();
    let path = dir.path().to_owned();
    let server = RestServer::start_with(move |config| {
        config.policy_path = Some(path);
        config.policy_reload_interval = Duration::from_millis(50);
    })
    .await;
    (server, dir)
}

fn ids(list: &Value) -> Vec<String> {
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect()
}

async fn eventually(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    for _ in 0..100 {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("gave up waiting for: {what}");
}

#[tokio::test]
async fn models_list_served_ids_once_with_their_subscriptions_readiness_and_creation_time() {
    let (server, _policy) = contract_server().await;

    let reply = server
        .call(Method::GET, "/v1/models")
        .token(BOB)
        .send()
        .await;

    let list = reply.assert_status(200);
    assert_eq!(
        ids(list),
        [
            "simulator",
            "qwen3",
            "publishers/llm/models/test/x",
            "pending"
        ]
    );
    let model = |id: &str| {
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(
        model("simulator")["subscriptions"],
        json!([
            {"name": "premium", "displayName": "Premium"},
            {"name": "degraded", "displayName": "degraded"},
            {"name": "free", "displayName": "Free"},
        ])
    );
    let opt = model("publishers/llm/models/test/x");
    assert_eq!(opt["created"], 1_769_860_800);
    assert_eq!(opt["ready"], true);
    assert_eq!(opt["object"], "model");
    assert_eq!(
        opt["subscriptions"],
        json!([{"name": "premium", "displayName": "Premium"}])
    );
    assert_eq!(model("pending")["ready"], false);
    assert!(model("simulator")["created"].as_i64().unwrap() > 1_700_000_000);
}

#[tokio::test]
async fn a_token_caller_is_narrowed_by_x_maas_subscription_and_a_key_ignores_it() {
    let (server, _policy) = contract_server().await;
    let key = server
        .create_key(BOB, json!({"name": "k", "subscription": "degraded"}))
        .await;
    let key = key["key"].as_str().unwrap();

    let narrowed = server
        .call(Method::GET, "/v1/models")
        .token(BOB)
        .header("x-maas-subscription", "free")
        .send()
        .await;
    let with_key = server
        .call(Method::GET, "/v1/models")
        .token(key)
        .header("x-maas-subscription", "premium")
        .send()
        .await;

    assert_eq!(ids(narrowed.assert_status(200)), ["simulator"]);
    // The degraded subscription's healthy model, not premium's.
    let list = with_key.assert_status(200);
    assert_eq!(ids(list), ["simulator"]);
    assert_eq!(
        list["data"][0]["subscriptions"],
        json!([{"name": "degraded", "displayName": "degraded"}])
    );
}

#[tokio::test]
async fn a_key_whose_subscription_was_deleted_gets_403_and_new_subscriptions_appear_at_once() {
    let (server, policy) = contract_server().await;
    let key = server
        .create_key(BOB, json!({"name": "k", "subscription": "degraded"}))
        .await;
    let key = key["key"].as_str().unwrap().to_owned();
    let without_degraded = CONTRACT_POLICY.replacen("name: degraded}", "name: renamed}", 1);

    std::fs::write(policy.path().join("policy.yaml"), &without_degraded).unwrap();
    eventually("the renamed subscription to be listed", async || {
        let reply = server
            .call(Method::GET, "/v1/subscriptions")
            .token(BOB)
            .send()
            .await;
        names(&reply.json).contains(&"renamed".to_owned())
    })
    .await;
    let reply = server
        .call(Method::GET, "/v1/models")
        .token(&key)
        .send()
        .await;

    assert_eq!(reply.status, 403);
    assert_eq!(reply.json["error"]["type"], "permission_error");
}

#[tokio::test]
async fn discovery_without_credentials_is_401_authentication_error() {
    let (server, _policy) = contract_server().await;

    for path in [
        "/v1/models",
        "/v1/subscriptions",
        "/v1/model/simulator/subscriptions",
    ] {
        let reply = server.call(Method::GET, path).send().await;

        assert_eq!(reply.status, 401, "{path}");
        assert_eq!(
            reply.json["error"]["type"], "authentication_error",
            "{path}"
        );
    }
}

#[tokio::test]
async fn subscriptions_with_a_key_list_every_subscription_of_its_user_with_authorized_models_only()
{
    let (server, _policy) = contract_server().await;
    let key = server
        .create_key(BOB, json!({"name": "k", "subscription": "free"}))
        .await;
    let key = key["key"].as_str().unwrap();

    let bob = server
        .call(Method::GET, "/v1/subscriptions")
        .token(key)
        .send()
        .await;
    let alice = server
        .call(Method::GET, "/v1/subscriptions")
        .token(ALICE)
        .send()
        .await;

    // Not only the key's free: every subscription of bob's except failed, which has no model.
    let bob = bob.assert_status(200);
    assert_eq!(names(bob), ["premium", "degraded", "free", "locked"]);
    assert_eq!(
        bob[2]["model_refs"],
        json!([{
            "name": "simulator",
            "display_name": "Simulator Model",
            "description": "A test model",
            "token_rate_limits": [{"limit": 100, "window": "1m"}],
        }])
    );
    // Alice can access locked, but no auth policy grants her qwen3: it is omitted.
    assert_eq!(names(alice.assert_status(200)), ["free"]);
}

#[tokio::test]
async fn subscriptions_for_one_model_list_those_serving_it_and_nothing_for_an_unknown_model() {
    let (server, _policy) = contract_server().await;

    let qwen3 = server
        .call(Method::GET, "/v1/model/qwen3/subscriptions")
        .token(BOB)
        .send()
        .await;
    let unknown = server
        .call(Method::GET, "/v1/model/nope/subscriptions")
        .token(BOB)
        .send()
        .await;
    let for_alice = server
        .call(Method::GET, "/maas-api/v1/model/qwen3/subscriptions")
        .token(ALICE)
        .send()
        .await;

    assert_eq!(names(qwen3.assert_status(200)), ["premium", "locked"]);
    unknown.assert_exactly(200, json!([]));
    for_alice.assert_exactly(200, json!([]));
}

#[tokio::test]
async fn a_degraded_subscription_mints_and_a_failed_one_is_403_subscription_not_ready() {
    let (server, _policy) = contract_server().await;

    let degraded = server
        .call(Method::POST, "/v1/api-keys")
        .token(BOB)
        .json(json!({"name": "d", "subscription": "degraded"}))
        .send()
        .await;
    let failed = server
        .call(Method::POST, "/v1/api-keys")
        .token(BOB)
        .json(json!({"name": "f", "subscription": "failed"}))
        .send()
        .await;
    let implicit = server
        .call(Method::POST, "/v1/api-keys")
        .token(BOB)
        .json(json!({"name": "i"}))
        .send()
        .await;

    assert_eq!(degraded.assert_status(201)["subscription"], "degraded");
    failed.assert_exactly(
        403,
        json!({
            "error": "subscription \"failed\" is not ready: none of its models is available",
            "code": "subscription_not_ready",
        }),
    );
    // The highest-priority subscription is Failed: the next usable one is chosen.
    assert_eq!(implicit.assert_status(201)["subscription"], "premium");
    let key = degraded.json["key"].as_str().unwrap();
    assert_eq!(server.check("simulator", key).await, None);
}

#[tokio::test]
async fn selection_picks_the_one_accessible_subscription_holding_the_model() {
    let (server, _policy) = contract_server().await;
    let select = async |body: Value| {
        server
            .internal(Method::POST, "/internal/v1/subscriptions/select")
            .json(body)
            .send()
            .await
    };

    let by_alias = select(json!({
        "username": "bob", "groups": ["premium-users"],
        "requestedSubscription": "premium",
        "requestedModel": "publishers/llm/models/test/x",
    }))
    .await;
    let only_one = select(json!({
        "username": "alice", "groups": ["system:authenticated"],
        "requestedModel": "llm/simulator",
    }))
    .await;
    let several = select(json!({
        "username": "bob", "groups": ["system:authenticated", "premium-users"],
        "requestedModel": "simulator",
    }))
    .await;
    let not_theirs = select(json!({
        "username": "alice", "groups": ["system:authenticated"],
        "requestedSubscription": "premium", "requestedModel": "simulator",
    }))
    .await;
    let not_in_it = select(json!({
        "username": "alice", "groups": ["system:authenticated"],
        "requestedSubscription": "free", "requestedModel": "qwen3",
    }))
    .await;
    let failed = select(json!({
        "username": "bob", "groups": ["premium-users"],
        "requestedSubscription": "failed",
    }))
    .await;
    let no_user = select(json!({"requestedModel": "simulator"})).await;

    let chosen = by_alias.assert_status(200);
    assert_eq!(chosen["name"], "premium");
    assert_eq!(chosen["namespace"], "models-as-a-service");
    assert_eq!(chosen["resolvedModel"], "llm/opt");
    assert_eq!(chosen["accessAllowed"], true);
    assert_eq!(chosen["phase"], "Active");
    assert_eq!(
        chosen["modelRefs"][2]["model_name"],
        "publishers/llm/models/test/x"
    );
    assert_eq!(
        chosen["modelRefs"][0]["token_rate_limits"],
        json!([{"limit": 1000, "window": "1m"}])
    );
    assert_eq!(
        chosen["modelRefs"][0]["billing_rate"],
        json!({"per_token": "0.000002"})
    );
    assert_eq!(chosen["modelRefs"][1]["billing_rate"], Value::Null);
    assert_eq!(chosen["labels"], json!({"team": "research"}));
    assert_eq!(chosen["costCenter"], "cc-42");
    assert_eq!(chosen["organizationId"], "org-7");
    let alice = only_one.assert_status(200);
    assert_eq!(
        (alice["name"].clone(), alice["accessAllowed"].clone()),
        (json!("free"), json!(true))
    );
    for (reply, error) in [
        (&several, "multiple_subscriptions"),
        (&not_theirs, "access_denied"),
        (&not_in_it, "model_not_in_subscription"),
        (&failed, "model_unhealthy"),
        (&no_user, "bad_request"),
    ] {
        assert_eq!(reply.assert_status(200)["error"], error, "{}", reply.text);
        assert!(
            reply.json["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
        assert_eq!(reply.json["accessAllowed"], false);
    }
    assert_eq!(failed.json["phase"], "Failed");
    // The public listener does not serve it.
    let public = server
        .call(Method::POST, "/internal/v1/subscriptions/select")
        .token(BOB)
        .json(json!({"username": "bob"}))
        .send()
        .await;
    assert_eq!(public.status, 404);
}

#[tokio::test]
async fn bulk_revoke_with_an_empty_scope_is_400_and_no_body_revokes_the_callers_own_keys() {
    let server = RestServer::start().await;
    server.create_key(ALICE, json!({"name": "one"})).await;
    server.create_key(ALICE, json!({"name": "two"})).await;

    let empty = server
        .call(Method::POST, "/v1/api-keys/bulk-revoke")
        .token(ALICE)
        .json(json!({}))
        .send()
        .await;
    let blank = server
        .call(Method::POST, "/v1/api-keys/bulk-revoke")
        .token(ALICE)
        .json(json!({"username": " ", "dryRun": true}))
        .send()
        .await;
    let no_body = server
        .call(Method::POST, "/v1/api-keys/bulk-revoke")
        .token(ALICE)
        .send()
        .await;

    let refusal = json!({"error": "at least one of username or subscription is required (send {\"username\": \"<your name>\"} or no body at all to revoke all your own active keys)"});
    empty.assert_exactly(400, refusal.clone());
    blank.assert_exactly(400, refusal);
    assert_eq!(no_body.assert_status(200)["revokedCount"], 2);
}

#[tokio::test]
async fn forged_identity_headers_are_refused_on_every_authenticated_route() {
    let server = RestServer::start().await;

    for header in [
        "x-maas-username",
        "X-MaaS-Group",
        "x-maas-groups",
        "x-maas-tier",
        "x-maas-key-id",
    ] {
        let mint = server
            .call(Method::POST, "/v1/api-keys")
            .token(ALICE)
            .header(header, "root-admin")
            .json(json!({"name": "forged"}))
            .send()
            .await;
        let models = server
            .call(Method::GET, "/v1/models")
            .token(ALICE)
            .header(header, "root-admin")
            .send()
            .await;
        let search = server
            .call(Method::POST, "/v1/api-keys/search")
            .header(header, "root-admin")
            .json(json!({}))
            .send()
            .await;

        mint.assert_exactly(
            403,
            json!({"error": "identity headers (x-maas-username, x-maas-group, ...) are set by the gateway; remove them from the request"}),
        );
        assert_eq!(models.status, 403, "{header}");
        assert_eq!(models.json["error"]["code"], "forged_identity_header");
        assert_eq!(search.status, 403, "{header}");
    }
    // X-MaaS-Subscription is a client's legitimate choice.
    let chosen = server
        .call(Method::GET, "/v1/models")
        .token(ALICE)
        .header("x-maas-subscription", "free")
        .send()
        .await;
    assert_eq!(chosen.status, 200);
}

#[tokio::test]
async fn through_envoy_model_listings_answer_even_with_the_quota_spent_and_are_never_counted() {
    use crate::e2e::{FREE_TOKEN, Gateway, hello};
    // 10 s into a minute: the free tier's 5 requests per minute stay spent for the test.
    let clock = std::sync::Arc::new(maas_authz::clock::ManualClock::at_millis(
        1_800_000_000_000 + 10_000,
    ));
    let gateway = Gateway::start_with_clock(clock).await;
    let (free, _) = gateway.mint(FREE_TOKEN).await;
    let chat = "/simulator/v1/chat/completions";
    for _ in 0..5 {
        let response = gateway
            .chat(chat, Some(&free), &hello("simulator", 1))
            .await;
        assert_eq!(response.status(), reqwest::StatusCode::OK);
    }
    let spent = gateway
        .chat(chat, Some(&free), &hello("simulator", 1))
        .await;
    assert_eq!(spent.status(), reqwest::StatusCode::TOO_MANY_REQUESTS);

    for path in [
        "/v1/models",
        "/maas-api/v1/models",
        "/simulator/v1/models",
        "/llm/simulator/v1/models",
    ] {
        for _ in 0..3 {
            let response = gateway
                .http
                .get(format!("{}{path}", gateway.url))
                .bearer_auth(&free)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), reqwest::StatusCode::OK, "{path}");
            assert!(
                response
                    .headers()
                    .get("x-ratelimit-remaining-requests")
                    .is_none(),
                "{path} was counted"
            );
        }
    }
    let still_spent = gateway
        .chat(chat, Some(&free), &hello("simulator", 1))
        .await;
    assert_eq!(
        still_spent.headers()["retry-after"],
        spent.headers()["retry-after"]
    );
}
