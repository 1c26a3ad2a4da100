//! Bad input to the REST API: each rule's exact error JSON, and that nothing was stored.

use reqwest::Method;
use serde_json::{Value, json};

use crate::rest_support::*;

async fn create(server: &RestServer, body: Value) -> Reply {
    server
        .call(Method::POST, "/v1/api-keys")
        .token(ALICE)
        .json(body)
        .send()
        .await
}

async fn stored_keys(server: &RestServer) -> i64 {
    let client = server.test.db.client().await;
    client
        .query_one("SELECT count(*) FROM api_keys", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn key_names_follow_upstream_rules() {
    let server = RestServer::start().await;
    let cases = [
        (json!({}), "name is required for non-ephemeral keys"),
        (
            json!({"name": ""}),
            "name is required for non-ephemeral keys",
        ),
        (json!({"name": "   "}), "key name cannot be whitespace only"),
        (
            json!({"name": "n".repeat(129)}),
            "key name must be at most 128 characters",
        ),
        (
            json!({"name": "bell\u{7}"}),
            "key name must not contain control characters",
        ),
        (
            json!({"ephemeral": true, "name": "\u{7f}"}),
            "key name must not contain control characters",
        ),
        (
            json!({"name": "k", "description": "d".repeat(1025)}),
            "description must be at most 1024 characters",
        ),
        (
            json!({"name": "k", "description": "nul\u{0}"}),
            "description must not contain control characters other than tab and newline",
        ),
    ];
    for (body, message) in cases {
        create(&server, body.clone())
            .await
            .assert_exactly(400, json!({"error": message}));
    }
    // 128 characters (not bytes) is fine.
    server
        .create_key(ALICE, json!({"name": "é".repeat(128)}))
        .await;
    assert_eq!(stored_keys(&server).await, 1);
}

#[tokio::test]
async fn labels_follow_upstream_rules() {
    let server = RestServer::start().await;
    let many: serde_json::Map<String, Value> =
        (0..51).map(|i| (format!("k{i}"), json!("v"))).collect();
    let long_key = "k".repeat(129);
    let cases = [
        (json!(many), "too many labels: at most 50 are allowed".to_owned()),
        (
            json!({ long_key.clone(): "v" }),
            format!("label key \"{long_key}\" is too long: at most 128 characters"),
        ),
        (
            json!({"bad key!": "v"}),
            "label key \"bad key!\" is invalid: use an optional DNS subdomain prefix and '/', then \
             a name of at most 63 characters made of alphanumerics, '-', '_' and '.', starting and \
             ending with an alphanumeric"
                .to_owned(),
        ),
        (
            json!({"Example.com/team": "v"}),
            "label key \"Example.com/team\" is invalid: use an optional DNS subdomain prefix and \
             '/', then a name of at most 63 characters made of alphanumerics, '-', '_' and '.', \
             starting and ending with an alphanumeric"
                .to_owned(),
        ),
        (
            json!({"maas-authz.io/credential": "access-token"}),
            "label key \"maas-authz.io/credential\" uses the reserved prefix maas-authz.io/"
                .to_owned(),
        ),
        (json!({"team": ""}), "label \"team\" has an empty value".to_owned()),
        (
            json!({"team": "v".repeat(1025)}),
            "label \"team\" has a value longer than 1024 characters".to_owned(),
        ),
        (
            json!({"team": "a\nb"}),
            "label \"team\" has a value with control characters".to_owned(),
        ),
    ];
    for (labels, message) in cases {
        create(&server, json!({"name": "k", "labels": labels}))
            .await
            .assert_exactly(400, json!({"error": message}));
    }
    let fifty: serde_json::Map<String, Value> = (0..50)
        .map(|i| (format!("example.com/k{i}"), json!("v".repeat(1024))))
        .collect();
    let created = server
        .create_key(ALICE, json!({"name": "k", "labels": fifty}))
        .await;
    assert_eq!(created["labels"].as_object().unwrap().len(), 50);
    assert_eq!(stored_keys(&server).await, 1);
}

#[tokio::test]
async fn expirations_are_seconds_or_durations_and_bounded() {
    let server = RestServer::start().await;
    let positive = "expiration must be positive";
    let cases = [
        (json!(0), positive.to_owned()),
        (json!(-5), positive.to_owned()),
        (json!(""), positive.to_owned()),
        (json!("0"), positive.to_owned()),
        (json!("-1h"), positive.to_owned()),
        (
            json!("soon"),
            "invalid duration \"soon\": expected a number with a unit, like 30s, 15m, 2h30m, 1.5h or 90d"
                .to_owned(),
        ),
        (
            json!("1d12h"),
            "invalid duration \"1d12h\": expected a number with a unit, like 30s, 15m, 2h30m, 1.5h or 90d"
                .to_owned(),
        ),
        (
            json!(true),
            "expiresIn must be a number of seconds or a duration string like 90d, 2h30m or 30m"
                .to_owned(),
        ),
        (
            json!("91d"),
            "requested expiration (2184h0m0s) exceeds maximum allowed (90 days)".to_owned(),
        ),
        (
            json!(90 * 86_400 + 1),
            "requested expiration (2160h0m1s) exceeds maximum allowed (90 days)".to_owned(),
        ),
    ];
    for (expires_in, message) in cases {
        create(&server, json!({"name": "k", "expiresIn": expires_in}))
            .await
            .assert_exactly(400, json!({"error": message}));
    }
    for (expires_in, seconds) in [
        (json!(3600), 3_600),
        (json!(1.5), 1),
        (json!("2h30m"), 9_000),
        (json!("1.5h"), 5_400),
        (json!("30m"), 1_800),
        (json!("90d"), 7_776_000),
    ] {
        let created = server
            .create_key(ALICE, json!({"name": "k", "expiresIn": expires_in}))
            .await;
        let created_at =
            chrono::DateTime::parse_from_rfc3339(created["createdAt"].as_str().unwrap()).unwrap();
        let expires_at =
            chrono::DateTime::parse_from_rfc3339(created["expiresAt"].as_str().unwrap()).unwrap();
        let lifetime = (expires_at - created_at).num_seconds();
        assert!((lifetime - seconds).abs() <= 1, "{expires_in}: {lifetime}");
    }
}

#[tokio::test]
async fn search_parameters_are_checked() {
    let server = RestServer::start().await;
    let cases = [
        (
            json!({"filters": {"status": ["active", "bogus"]}}),
            "invalid status 'bogus': must be active, revoked, or expired",
        ),
        (
            json!({"status": "gone"}),
            "invalid status 'gone': must be active, revoked, or expired",
        ),
        (
            json!({"sort": {"by": "size"}}),
            "invalid sort.by: must be one of: created_at, expires_at, last_used_at, name",
        ),
        (
            json!({"sort": {"order": "up"}}),
            "invalid sort.order: must be asc or desc",
        ),
        (
            json!({"pagination": {"limit": 0}}),
            "pagination.limit must be at least 1",
        ),
        (json!({"limit": -3}), "pagination.limit must be at least 1"),
        (
            json!({"pagination": {"offset": -1}}),
            "pagination.offset must be non-negative",
        ),
        (
            json!({"filters": {"labelsContain": {"team": ""}}}),
            "label \"team\" has an empty value",
        ),
        (
            json!({"limit": "ten"}),
            "invalid JSON body: invalid type: string \"ten\", expected i64 at line 1 column 14",
        ),
    ];
    for (body, message) in cases {
        server
            .call(Method::POST, "/v1/api-keys/search")
            .token(ALICE)
            .json(body.clone())
            .send()
            .await
            .assert_exactly(400, json!({"error": message}));
    }
}

#[tokio::test]
async fn bodies_must_be_json_of_bounded_size() {
    let server = RestServer::start().await;
    let reply = server
        .call(Method::POST, "/v1/api-keys")
        .token(ALICE)
        .raw("application/json", br#"{"name": "#.to_vec())
        .send()
        .await;
    reply.assert_exactly(
        400,
        json!({"error": "invalid JSON body: EOF while parsing a value at line 1 column 9"}),
    );
    let reply = server
        .call(Method::POST, "/v1/api-keys")
        .token(ALICE)
        .raw("application/json", br#""hello""#.to_vec())
        .send()
        .await;
    reply.assert_exactly(
        400,
        json!({"error": "invalid JSON body: invalid type: string \"hello\", expected struct CreateApiKeyRequest at line 1 column 7"}),
    );
    for content_type in ["text/plain", "application/x-www-form-urlencoded"] {
        let reply = server
            .call(Method::POST, "/v1/api-keys")
            .token(ALICE)
            .raw(content_type, br#"{"name": "k"}"#.to_vec())
            .send()
            .await;
        reply.assert_exactly(
            415,
            json!({"error": "Content-Type must be application/json"}),
        );
    }
    let mut huge = br#"{"name": "k", "description": ""#.to_vec();
    huge.resize(1024 * 1024 + 1, b'x');
    let reply = server
        .call(Method::POST, "/v1/api-keys")
        .token(ALICE)
        .raw("application/json", huge)
        .send()
        .await;
    reply.assert_exactly(
        413,
        json!({"error": "request body is larger than 1048576 bytes"}),
    );
    let charset = server
        .call(Method::POST, "/v1/api-keys")
        .token(ALICE)
        .raw(
            "application/json; charset=utf-8",
            br#"{"name": "k"}"#.to_vec(),
        )
        .send()
        .await;
    charset.assert_status(201);
    assert_eq!(stored_keys(&server).await, 1);
}

#[tokio::test]
async fn bearer_tokens_are_required_and_checked() {
    let server = RestServer::start().await;
    let routes = [
        (Method::POST, "/v1/api-keys"),
        (Method::POST, "/v1/api-keys/search"),
        (Method::POST, "/v1/api-keys/bulk-revoke"),
        (Method::GET, "/v1/api-keys/config"),
        (
            Method::GET,
            "/v1/api-keys/00000000-0000-4000-8000-000000000000",
        ),
        (
            Method::DELETE,
            "/v1/api-keys/00000000-0000-4000-8000-000000000000",
        ),
        (Method::POST, "/v1/tokens"),
        (Method::DELETE, "/v1/tokens"),
    ];
    for (method, path) in routes {
        let reply = server.call(method.clone(), path).send().await;
        reply.assert_exactly(401, json!({"error": "missing bearer token"}));
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"), "{path}");
        let reply = server
            .call(method.clone(), path)
            .header("authorization", "Basic YWxpY2U6c2VjcmV0")
            .send()
            .await;
        reply.assert_exactly(
            401,
            json!({"error": "the Authorization header must be 'Bearer <token>'"}),
        );
        let reply = server
            .call(method, path)
            .token("not-a-known-token")
            .send()
            .await;
        assert_eq!(reply.status, 401, "{path}: {}", reply.text);
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
        let message = reply.json["error"].as_str().unwrap();
        assert!(message.starts_with("invalid token"), "{message}");
        assert!(!message.contains("not-a-known-token"), "{message}");
    }
    // Discovery routes answer in OpenAI's error shape.
    let reply = server.call(Method::GET, "/v1/models").send().await;
    reply.assert_exactly(
        401,
        json!({"error": {"message": "missing bearer token", "type": "authentication_error", "code": "invalid_api_key"}}),
    );
    assert_eq!(stored_keys(&server).await, 0);
}
