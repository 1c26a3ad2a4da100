//! Envoy's Check through the real gRPC server: allows, every denial, and failure modes.

use envoy_types::pb::envoy::config::core::v3::HeaderValueOption;
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::service::auth::v3::CheckResponse;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::google::protobuf::value::Kind;
use maas_authz::store::KeyStore;

use crate::support::*;

const CHAT: &str = "/simulator/v1/chat/completions";

fn header<'a>(options: &'a [HeaderValueOption], name: &str) -> Option<&'a str> {
    options
        .iter()
        .filter_map(|o| o.header.as_ref())
        .find(|h| h.key.eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

/// The HTTP status, headers and parsed JSON body of a denial.
fn denial(response: &CheckResponse) -> (i32, &[HeaderValueOption], serde_json::Value) {
    match response.http_response.as_ref() {
        Some(HttpResponse::DeniedResponse(denied)) => (
            denied.status.as_ref().map_or(0, |s| s.code),
            &denied.headers,
            serde_json::from_str(&denied.body).expect("denial body is JSON"),
        ),
        other => panic!("expected a denial, got {other:?}"),
    }
}

fn assert_denied(
    response: &CheckResponse,
    status: i32,
    reason: &str,
    error_type: &str,
    code: &str,
) {
    let (http_status, headers, body) = denial(response);
    assert_eq!(http_status, status, "status for {reason}");
    assert_eq!(header(headers, "x-ext-auth-reason"), Some(reason));
    assert_eq!(header(headers, "content-type"), Some("application/json"));
    assert_eq!(body["error"]["type"], error_type);
    assert_eq!(body["error"]["code"], code);
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    assert_ne!(response.status.as_ref().map(|s| s.code), Some(0));
}

fn assert_unauthenticated(response: &CheckResponse, reason: &str) {
    assert_denied(
        response,
        401,
        reason,
        "invalid_request_error",
        "invalid_api_key",
    );
    let (_, headers, _) = denial(response);
    assert_eq!(header(headers, "www-authenticate"), Some("Bearer"));
}

#[tokio::test]
async fn check_allows_a_valid_key_and_stamps_identity_headers() {
    let server = TestServer::start_with_dynamic_metadata().await;
    let (key, record) = mint(&server.db.store(), &FREE_USER).await;
    let mut client = server.check_client().await;

    let response = client
        .check(check_request(CHAT, &[("authorization", &bearer(&key))]))
        .await
        .unwrap()
        .into_inner();

    assert_eq!(response.status.as_ref().map(|s| s.code), Some(0));
    let Some(HttpResponse::OkResponse(ok)) = response.http_response.as_ref() else {
        panic!("expected ok_response, got {response:?}");
    };
    assert_eq!(header(&ok.headers, "x-maas-username"), Some("alice"));
    assert_eq!(
        header(&ok.headers, "x-maas-group"),
        Some("[\"system:authenticated\"]")
    );
    assert_eq!(header(&ok.headers, "x-maas-subscription"), Some("free"));
    assert_eq!(header(&ok.headers, "x-maas-tier"), Some("free"));
    assert_eq!(
        header(&ok.headers, "x-maas-key-id"),
        Some(record.id.to_string().as_str())
    );
    // Every stamped header replaces whatever the client sent under that name.
    assert!(
        ok.headers
            .iter()
            .all(|h| h.append_action == HeaderAppendAction::OverwriteIfExistsOrAdd as i32)
    );
    assert_eq!(ok.headers_to_remove, vec!["authorization".to_owned()]);
    let metadata = response.dynamic_metadata.expect("dynamic metadata");
    let field = |name: &str| match metadata.fields.get(name).and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(text)) => text.clone(),
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(field("user"), "alice");
    assert_eq!(field("subscription"), "free");
    assert_eq!(field("tier"), "free");
    assert_eq!(field("model"), "models-as-a-service/simulator");
    assert_eq!(field("key_id"), record.id.to_string());
    assert_eq!(
        field("selected_subscription_key"),
        "models-as-a-service/free@models-as-a-service/simulator"
    );
    assert!(matches!(
        metadata.fields.get("groups").and_then(|v| v.kind.as_ref()),
        Some(Kind::ListValue(list)) if list.values.len() == 1
    ));
}

#[tokio::test]
async fn check_accepts_the_key_from_x_api_key_and_removes_that_header() {
    let server = TestServer::start().await;
    let (key, _) = mint(&server.db.store(), &FREE_USER).await;
    let mut client = server.check_client().await;

    let response = client
        .check(check_request(CHAT, &[("x-api-key", &key)]))
        .await
        .unwrap()
        .into_inner();

    let Some(HttpResponse::OkResponse(ok)) = response.http_response else {
        panic!("expected ok_response");
    };
    assert_eq!(ok.headers_to_remove, vec!["x-api-key".to_owned()]);
}

#[tokio::test]
async fn check_denies_a_revoked_key() {
    let server = TestServer::start().await;
    let store = server.db.store();
    let (key, record) = mint(&store, &FREE_USER).await;
    store.revoke_key(record.id).await.unwrap().expect("revoked");
    let mut client = server.check_client().await;

    let response = client
        .check(check_request(CHAT, &[("authorization", &bearer(&key))]))
        .await
        .unwrap()
        .into_inner();

    assert_unauthenticated(&response, "key_revoked");
}

#[tokio::test]
async fn check_denies_an_expired_key() {
    let server = TestServer::start().await;
    let (key, _) = insert_raw(
        &server.db.store(),
        &FREE_USER,
        chrono::Utc::now() - chrono::Duration::minutes(1),
    )
    .await;
    let mut client = server.check_client().await;

    let response = client
        .check(check_request(CHAT, &[("authorization", &bearer(&key))]))
        .await
        .unwrap()
        .into_inner();

    assert_unauthenticated(&response, "key_expired");
}

#[tokio::test]
async fn check_judges_expiry_at_request_time_even_for_a_cached_key() {
    let server = TestServer::start().await;
    let (key, record) = mint(&server.db.store(), &FREE_USER).await;
    let authorizer = server.server.authorizer();
    let authorization = bearer(&key);
    let input = maas_authz::authorizer::CheckInput {
        authorization: Some(&authorization),
        path: CHAT,
        ..Default::default()
    };
    let first = authorizer.check(&input, chrono::Utc::now()).await.unwrap();
    assert!(matches!(first, maas_authz::authorizer::Decision::Allow(_)));

    let after_expiry = record.expires_at.unwrap() + chrono::Duration::seconds(1);
    let second = authorizer.check(&input, after_expiry).await.unwrap();

    assert!(matches!(
        second,
        maas_authz::authorizer::Decision::Deny(d) if d.reason == maas_authz::authorizer::DenyReason::KeyExpired
    ));
}

#[tokio::test]
async fn check_denies_an_unknown_key_and_remembers_it_briefly() {
    let server = TestServer::start().await;
    let unknown = maas_authz::key::ApiKey::generate().unwrap();
    let mut client = server.check_client().await;
    let request = || check_request(CHAT, &[("authorization", &bearer(unknown.expose()))]);

    let first = client.check(request()).await.unwrap().into_inner();
    let second = client.check(request()).await.unwrap().into_inner();

    assert_unauthenticated(&first, "key_not_found");
    assert_unauthenticated(&second, "key_not_found");
    let metrics = http_get(server.server.metrics_addr, "/metrics").await;
    assert!(
        metrics.contains("maas_authz_cache_lookups_total{result=\"negative_hit\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn check_refuses_malformed_credentials_without_touching_the_database() {
    let server = TestServer::start().await;
    let mut client = server.check_client().await;
    let oversized = format!("sk-oai-abc_{}", "a".repeat(100_000));
    let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
        (vec![], "missing_credentials"),
        (
            vec![("authorization", "Bearer ".into())],
            "malformed_authorization",
        ),
        (
            vec![("authorization", "Bearer".into())],
            "malformed_authorization",
        ),
        (
            vec![("authorization", "sk-oai-abc_def".into())],
            "malformed_authorization",
        ),
        (
            vec![("authorization", "Basic dXNlcjpwYXNz".into())],
            "malformed_authorization",
        ),
        (
            vec![("authorization", "Bearer sk-oai-abc".into())],
            "invalid_key_format",
        ),
        (
            vec![("authorization", "Bearer sk-oai-abc_".into())],
            "invalid_key_format",
        ),
        (
            vec![("authorization", "Bearer sk-oai-ab\u{e9}c_def".into())],
            "invalid_key_format",
        ),
        (
            vec![("authorization", "Bearer not-a-key".into())],
            "invalid_key_format",
        ),
        (
            vec![("authorization", format!("Bearer {oversized}"))],
            "invalid_key_format",
        ),
        (
            vec![(
                "authorization",
                "Bearer sk-oai-a_b,Bearer sk-oai-c_d".into(),
            )],
            "invalid_key_format",
        ),
        (
            vec![
                ("authorization", "Bearer sk-oai-a_b".into()),
                ("x-api-key", "sk-oai-c_d".into()),
            ],
            "conflicting_credentials",
        ),
        (vec![("x-api-key", "   ".into())], "missing_credentials"),
    ];

    for (headers, reason) in cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let response = client
            .check(check_request(CHAT, &headers))
            .await
            .unwrap()
            .into_inner();
        assert_unauthenticated(&response, reason);
    }
    let metrics = http_get(server.server.metrics_addr, "/metrics").await;
    assert!(
        !metrics.contains("statement=\"select_key_by_hash\""),
        "no lookup expected:\n{metrics}"
    );
}

#[tokio::test]
async fn check_forbids_a_model_outside_the_keys_subscription() {
    let server = TestServer::start().await;
    let (key, _) = mint(&server.db.store(), &FREE_USER).await;
    let mut client = server.check_client().await;

    let response = client
        .check(check_request(
            "/qwen3/v1/chat/completions",
            &[("authorization", &bearer(&key))],
        ))
        .await
        .unwrap()
        .into_inner();

    assert_denied(
        &response,
        403,
        "model_not_in_subscription",
        "permission_error",
        "access_denied",
    );
}

#[tokio::test]
async fn check_forbids_a_subscription_the_key_holder_cannot_access() {
    let server = TestServer::start().await;
    // Bound to premium, but the snapshot lacks the premium group.
    let owner = KeyOwner {
        user: "carol",
        groups: &["system:authenticated"],
        subscription: "premium",
    };
    let (key, _) = insert_raw(
        &server.db.store(),
        &owner,
        chrono::Utc::now() + chrono::Duration::hours(1),
    )
    .await;
    let mut client = server.check_client().await;

    let response = client
        .check(check_request(
            "/qwen3/v1/chat/completions",
            &[("authorization", &bearer(&key))],
        ))
        .await
        .unwrap()
        .into_inner();

    assert_denied(
        &response,
        403,
        "subscription_access_denied",
        "permission_error",
        "access_denied",
    );
}

#[tokio::test]
async fn check_forbids_a_key_bound_to_a_subscription_the_policy_no_longer_has() {
    let server = TestServer::start().await;
    let owner = KeyOwner {
        user: "dave",
        groups: &["system:authenticated"],
        subscription: "retired",
    };
    let (key, _) = insert_raw(
        &server.db.store(),
        &owner,
        chrono::Utc::now() + chrono::Duration::hours(1),
    )
    .await;
    let mut client = server.check_client().await;

    let response = client
        .check(check_request(CHAT, &[("authorization", &bearer(&key))]))
        .await
        .unwrap()
        .into_inner();

    assert_denied(
        &response,
        403,
        "subscription_not_found",
        "permission_error",
        "access_denied",
    );
}

#[tokio::test]
async fn check_answers_404_for_an_unknown_model() {
    let server = TestServer::start().await;
    let (key, _) = mint(&server.db.store(), &PREMIUM_USER).await;
    let mut client = server.check_client().await;

    for path in [
        "/gpt-17/v1/chat/completions",
        "/llm/gpt-17/v1/chat/completions",
        "/nope/simulator/v1/x",
    ] {
        let response = client
            .check(check_request(path, &[("authorization", &bearer(&key))]))
            .await
            .unwrap()
            .into_inner();
        assert_denied(
            &response,
            404,
            "model_not_found",
            "invalid_request_error",
            "model_not_found",
        );
    }
}

#[tokio::test]
async fn check_allows_premium_models_for_a_premium_key_by_path_header_and_body() {
    let server = TestServer::start_with_dynamic_metadata().await;
    let (key, _) = mint(&server.db.store(), &PREMIUM_USER).await;
    let mut client = server.check_client().await;
    let auth = bearer(&key);
    let requests = [
        check_request("/qwen3/v1/chat/completions", &[("authorization", &auth)]),
        check_request(
            "/llm/qwen3/v1/chat/completions",
            &[("authorization", &auth)],
        ),
        check_request(
            "/v1/chat/completions",
            &[("authorization", &auth), ("x-gateway-model-name", "qwen3")],
        ),
        check_request_with_body(
            "/v1/chat/completions",
            &[("authorization", &auth)],
            r#"{"model":"qwen3","messages":[{"role":"user","content":"hi"}]}"#,
        ),
    ];

    for request in requests {
        let response = client.check(request).await.unwrap().into_inner();
        let Some(HttpResponse::OkResponse(ok)) = response.http_response else {
            panic!("expected ok_response, got {:?}", response.http_response);
        };
        assert_eq!(header(&ok.headers, "x-maas-tier"), Some("premium"));
        let model = response.dynamic_metadata.unwrap().fields["model"].clone();
        assert_eq!(
            model.kind,
            Some(Kind::StringValue("models-as-a-service/qwen3".into()))
        );
    }
}

#[tokio::test]
async fn check_refuses_a_request_that_names_no_model_with_404_model_not_specified() {
    let server = TestServer::start().await;
    let (key, _) = mint(&server.db.store(), &FREE_USER).await;
    let mut client = server.check_client().await;

    for path in [
        "/v1/models",
        "/v1/chat/completions",
        "/maas-api/v1/api-keys",
        "/",
        "/simulator/invocations",
        "/a/b/c/v1/chat/completions",
    ] {
        let response = client
            .check(check_request(path, &[("authorization", &bearer(&key))]))
            .await
            .unwrap()
            .into_inner();
        assert_denied(
            &response,
            404,
            "model_not_specified",
            "invalid_request_error",
            "model_not_found",
        );
    }
}

#[tokio::test]
async fn check_allows_a_configured_model_free_path_with_a_valid_key_and_counts_nothing() {
    let db = TestDb::migrated().await;
    let mut config = serve_config(&db);
    config.enforcement.model_free_paths =
        maas_authz::request_path::ModelFreePaths::parse("/v1/tokenize").unwrap();
    let server = maas_authz::app::Application::build(config).await.unwrap();
    let (key, _) = mint(&db.store(), &FREE_USER).await;
    let mut client = envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::connect(format!("http://{}", server.grpc_addr))
        .await
        .unwrap();

    let allowed = client
        .check(check_request(
            "/v1/tokenize?x=1",
            &[("authorization", &bearer(&key))],
        ))
        .await
        .unwrap()
        .into_inner();
    let no_key = client
        .check(check_request("/v1/tokenize", &[]))
        .await
        .unwrap()
        .into_inner();
    let elsewhere = client
        .check(check_request(
            "/v1/tokenizer",
            &[("authorization", &bearer(&key))],
        ))
        .await
        .unwrap()
        .into_inner();

    let Some(HttpResponse::OkResponse(ok)) = allowed.http_response else {
        panic!("not allowed: {allowed:?}");
    };
    assert!(
        ok.response_headers_to_add.is_empty(),
        "not counted: no rate-limit headers"
    );
    assert_unauthenticated(&no_key, "missing_credentials");
    assert_denied(
        &elsewhere,
        404,
        "model_not_specified",
        "invalid_request_error",
        "model_not_found",
    );
    server.shutdown().await.unwrap();
}

/// The model Check authorized (`ns/name`) in an allow answer's assertion-bearing metadata.
fn allowed_model(response: &CheckResponse) -> String {
    assert!(
        matches!(response.http_response, Some(HttpResponse::OkResponse(_))),
        "expected an allow: {response:?}"
    );
    match &response.dynamic_metadata.as_ref().unwrap().fields["model"].kind {
        Some(Kind::StringValue(model)) => model.clone(),
        other => panic!("model metadata: {other:?}"),
    }
}

#[tokio::test]
async fn check_authorizes_the_route_model_and_refuses_any_source_that_names_another() {
    let server = TestServer::start_with_dynamic_metadata().await;
    let (key, _) = mint(&server.db.store(), &FREE_USER).await;
    let auth = bearer(&key);
    let mut client = server.check_client().await;
    let mut check = async |request| client.check(request).await.unwrap().into_inner();

    // The route's model wins, whatever the path names (it may have been rewritten).
    let route_only = check(check_request_on_route(
        "llm/simulator",
        "/v1/chat/completions",
        &[("authorization", &auth)],
        "",
    ))
    .await;
    let route_not_granted = check(check_request_on_route(
        "llm/qwen3",
        "/v1/chat/completions",
        &[("authorization", &auth)],
        "",
    ))
    .await;
    // Every other source must name the same model.
    let path_disagrees = check(check_request_on_route(
        "llm/qwen3",
        "/simulator/v1/chat/completions",
        &[("authorization", &auth)],
        "",
    ))
    .await;
    let header_disagrees = check(check_request(
        "/simulator/v1/chat/completions",
        &[("authorization", &auth), ("x-gateway-model-name", "qwen3")],
    ))
    .await;
    let body_disagrees = check(check_request_with_body(
        "/simulator/v1/chat/completions",
        &[("authorization", &auth)],
        r#"{"model":"qwen3","messages":[]}"#,
    ))
    .await;
    // A body or header names the model as model servers read it: by its served name only.
    let body_qualified = check(check_request_with_body(
        "/simulator/v1/chat/completions",
        &[("authorization", &auth)],
        r#"{"model":"llm/simulator","messages":[]}"#,
    ))
    .await;
    let all_agree = check(check_request_on_route(
        "llm/simulator",
        "/llm/simulator/v1/chat/completions",
        &[
            ("authorization", &auth),
            ("x-gateway-model-name", "simulator"),
        ],
        r#"{"model":"simulator"}"#,
    ))
    .await;

    assert_eq!(allowed_model(&route_only), "models-as-a-service/simulator");
    assert_denied(
        &route_not_granted,
        403,
        "model_not_in_subscription",
        "permission_error",
        "access_denied",
    );
    for response in [
        &path_disagrees,
        &header_disagrees,
        &body_disagrees,
        &body_qualified,
    ] {
        assert_denied(
            response,
            400,
            "model_mismatch",
            "invalid_request_error",
            "model_mismatch",
        );
    }
    assert_eq!(allowed_model(&all_agree), "models-as-a-service/simulator");
}

#[tokio::test]
async fn check_refuses_a_non_canonical_path_with_400_before_looking_at_the_key() {
    let server = TestServer::start().await;
    let mut client = server.check_client().await;

    for (path, detail) in [
        ("", "must start with '/'"),
        ("/%%%/../", "invalid percent-encoding"),
        ("/llm/qwen3/%76%31/chat/completions", "percent-encodes"),
        ("/llm/simulator/../qwen3/v1/chat/completions", "dot segment"),
        ("/llm/qwen3/V1/chat/completions", "'v1', in lowercase"),
    ] {
        // No key at all: the path is judged first.
        let response = client
            .check(check_request(path, &[]))
            .await
            .unwrap()
            .into_inner();
        assert_denied(
            &response,
            400,
            "non_canonical_path",
            "invalid_request_error",
            "non_canonical_path",
        );
        let (_, _, body) = denial(&response);
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(detail), "{path:?}: {message}");
    }
}

#[tokio::test]
async fn check_refuses_a_legacy_key_with_no_subscription_bound() {
    let server = TestServer::start().await;
    let owner = KeyOwner {
        user: "erin",
        groups: &["system:authenticated"],
        subscription: "",
    };
    let (key, _) = insert_raw(
        &server.db.store(),
        &owner,
        chrono::Utc::now() + chrono::Duration::hours(1),
    )
    .await;
    let mut client = server.check_client().await;

    let response = client
        .check(check_request(
            "/v1/models",
            &[("authorization", &bearer(&key))],
        ))
        .await
        .unwrap()
        .into_inner();

    assert_unauthenticated(&response, "no_subscription_bound");
}

#[tokio::test]
async fn check_survives_an_empty_or_garbage_request() {
    let server = TestServer::start().await;
    let mut client = server.check_client().await;

    let empty = client
        .check(envoy_types::pb::envoy::service::auth::v3::CheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    let garbage_body = client
        .check(check_request_with_body(
            "/v1/chat/completions",
            &[("authorization", "Bearer sk-oai-a_b")],
            "\u{0}{{{",
        ))
        .await
        .unwrap()
        .into_inner();

    // An empty request has no path: refused before its (missing) credentials are looked at.
    assert_denied(
        &empty,
        400,
        "non_canonical_path",
        "invalid_request_error",
        "non_canonical_path",
    );
    assert_unauthenticated(&garbage_body, "key_not_found");
}

#[tokio::test]
async fn check_answers_unavailable_when_the_database_is_unreachable_for_an_uncached_key() {
    let db = TestDb::migrated().await;
    let mut config = serve_config(&db);
    config.skip_migrations = true;
    // A port nothing listens on: connections are refused at once.
    config.database.database_url = "postgres://postgres@127.0.0.1:9/none".to_owned();
    let server = maas_authz::app::Application::build(config).await.unwrap();
    let mut client = envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::connect(
        format!("http://{}", server.grpc_addr),
    )
    .await
    .unwrap();
    let key = maas_authz::key::ApiKey::generate().unwrap();

    let status = client
        .check(check_request(
            CHAT,
            &[("authorization", &bearer(key.expose()))],
        ))
        .await
        .expect_err("must not decide without the database");

    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(status.message(), "key store unavailable");
    server.shutdown().await.unwrap();
}

/// A bare HTTP/1.1 GET over loopback, returning the body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let response = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
    assert!(
        response.status().is_success(),
        "GET {path}: {}",
        response.status()
    );
    response.text().await.unwrap()
}

#[tokio::test]
async fn check_reads_headers_from_the_raw_header_map_when_envoy_encodes_raw_headers() {
    use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
    let server = TestServer::start().await;
    let (key, _) = mint(&server.db.store(), &FREE_USER).await;
    let mut request = check_request(CHAT, &[]);
    let http = request
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
        .unwrap();
    http.header_map = Some(HeaderMap {
        headers: vec![HeaderValue {
            key: "authorization".to_owned(),
            raw_value: bearer(&key).into_bytes(),
            ..Default::default()
        }],
    });
    let mut client = server.check_client().await;

    let response = client.check(request).await.unwrap().into_inner();

    assert!(
        matches!(response.http_response, Some(HttpResponse::OkResponse(_))),
        "{response:?}"
    );
}

/// Sends `message` as the Check request's bytes, as a broken or hostile peer could.
async fn check_raw(
    server: &TestServer,
    message: &'static [u8],
) -> Result<CheckResponse, tonic::Status> {
    #[derive(Debug, Clone, Copy)]
    struct RawCodec;
    impl tonic::codec::Codec for RawCodec {
        type Encode = &'static [u8];
        type Decode = CheckResponse;
        type Encoder = RawCodec;
        type Decoder = tonic_prost::ProstDecoder<CheckResponse>;
        fn encoder(&mut self) -> Self::Encoder {
            RawCodec
        }
        fn decoder(&mut self) -> Self::Decoder {
            tonic_prost::ProstDecoder::new(tonic::codec::BufferSettings::default())
        }
    }
    impl tonic::codec::Encoder for RawCodec {
        type Item = &'static [u8];
        type Error = tonic::Status;
        fn encode(
            &mut self,
            item: Self::Item,
            dst: &mut tonic::codec::EncodeBuf<'_>,
        ) -> Result<(), Self::Error> {
            prost::bytes::BufMut::put_slice(dst, item);
            Ok(())
        }
    }
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", server.server.grpc_addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    grpc.unary(
        tonic::Request::new(message),
        "/envoy.service.auth.v3.Authorization/Check"
            .parse()
            .unwrap(),
        RawCodec,
    )
    .await
    .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn check_refuses_a_request_that_is_not_protobuf_with_internal_and_keeps_serving() {
    let server = TestServer::start().await;

    // attributes (field 1) claiming five bytes, with one sent.
    let truncated = check_raw(&server, &[0x0a, 0x05, 0x22]).await.unwrap_err();
    // attributes.request.http.headers { "authorization": "\xff" }: our header, not UTF-8.
    let not_utf8 = check_raw(
        &server,
        &[
            0x0a, 0x18, 0x22, 0x16, 0x12, 0x14, 0x1a, 0x12, 0x0a, 0x0d, b'a', b'u', b't', b'h',
            b'o', b'r', b'i', b'z', b'a', b't', b'i', b'o', b'n', 0x12, 0x01, 0xff,
        ],
    )
    .await
    .unwrap_err();
    let afterwards = check_raw(&server, &[]).await.unwrap();

    assert_eq!(truncated.code(), tonic::Code::Internal);
    assert_eq!(
        truncated.message(),
        "failed to decode CheckRequest: length runs past the end of the message"
    );
    assert_eq!(not_utf8.code(), tonic::Code::Internal);
    assert_eq!(
        not_utf8.message(),
        "failed to decode CheckRequest: invalid UTF-8 in a header"
    );
    assert_denied(
        &afterwards,
        400,
        "non_canonical_path",
        "invalid_request_error",
        "non_canonical_path",
    );
}

#[tokio::test]
async fn check_leaves_out_dynamic_metadata_by_default_and_still_stamps_headers() {
    let db = TestDb::migrated().await;
    let mut config = serve_config(&db);
    config.limits.limits_enabled = false;
    let server = maas_authz::app::Application::build(config)
        .await
        .expect("server starts");
    let (key, _) = mint(&db.store(), &FREE_USER).await;
    let mut client =
        envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::connect(
            format!("http://{}", server.grpc_addr),
        )
        .await
        .unwrap();

    let response = client
        .check(check_request(CHAT, &[("authorization", &bearer(&key))]))
        .await
        .unwrap()
        .into_inner();

    let Some(HttpResponse::OkResponse(ok)) = response.http_response.as_ref() else {
        panic!("expected ok_response, got {response:?}");
    };
    assert_eq!(header(&ok.headers, "x-maas-username"), Some("alice"));
    assert_eq!(ok.headers_to_remove, vec!["authorization".to_owned()]);
    assert_eq!(response.dynamic_metadata, None);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn check_denies_a_request_carrying_a_client_sent_identity_header() {
    let server = TestServer::start().await;
    let (key, _) = mint(&server.db.store(), &FREE_USER).await;
    let mut client = server.check_client().await;

    for (name, value) in [
        ("x-maas-username", "mallory"),
        ("x-maas-group", "[\"admins\"]"),
        ("x-maas-groups", "[\"admins\"]"),
        ("x-maas-tier", "enterprise"),
        ("x-maas-key-id", "00000000-0000-0000-0000-000000000000"),
    ] {
        let response = client
            .check(check_request(
                CHAT,
                &[("authorization", &bearer(&key)), (name, value)],
            ))
            .await
            .unwrap()
            .into_inner();

        let (status, headers, _) = denial(&response);
        assert_eq!(status, 403, "{name}");
        assert_eq!(
            header(headers, "x-ext-auth-reason"),
            Some("forged_identity_header"),
            "{name}"
        );
    }
    let with_subscription = client
        .check(check_request(
            CHAT,
            &[
                ("authorization", &bearer(&key)),
                ("x-maas-subscription", "premium"),
            ],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(with_subscription.status.map(|s| s.code), Some(0));
}

#[tokio::test]
async fn check_answers_403_for_a_bad_key_when_configured_as_upstream_and_401_for_no_key() {
    let db = TestDb::migrated().await;
    let mut config = serve_config(&db);
    config.enforcement.invalid_key_status = "403".to_owned();
    let server = TestServer {
        server: maas_authz::app::Application::build(config).await.unwrap(),
        db,
    };
    let (revoked, record) = mint(&server.db.store(), &FREE_USER).await;
    server.db.store().revoke_key(record.id).await.unwrap();
    let mut client = server.check_client().await;
    let unknown = "sk-oai-AAAAAAAAAAAAAAAA_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";

    for key in [unknown, revoked.as_str(), "sk-oai-"] {
        let response = client
            .check(check_request(CHAT, &[("authorization", &bearer(key))]))
            .await
            .unwrap()
            .into_inner();
        let (status, headers, body) = denial(&response);
        assert_eq!(status, 403);
        assert_eq!(body["error"]["type"], "permission_error");
        assert_eq!(header(headers, "www-authenticate"), None);
    }
    let missing = client
        .check(check_request(CHAT, &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(denial(&missing).0, 401);
}

#[tokio::test]
async fn check_signs_no_identity_assertion_on_a_route_marked_meter_off_and_still_stamps_the_identity()
 {
    // Arrange: one key, the same request on a metered route and on one marked `meter: "off"`.
    let server = TestServer::start().await;
    let (key, _) = mint(&server.db.store(), &FREE_USER).await;
    let auth = bearer(&key);
    let mut client = server.check_client().await;
    let metered = check_request_on_route(
        "llm/simulator",
        "/v1/chat/completions",
        &[("authorization", &auth)],
        "",
    );
    let mut unmetered = metered.clone();
    if let Some(attributes) = unmetered.attributes.as_mut() {
        attributes
            .context_extensions
            .insert("meter".to_owned(), "off".to_owned());
    }

    // Act
    let mut headers_of = async |request| {
        let response = client.check(request).await.unwrap().into_inner();
        let Some(HttpResponse::OkResponse(ok)) = response.http_response else {
            panic!("not allowed: {response:?}");
        };
        let names: Vec<String> = ok
            .headers
            .iter()
            .filter_map(|h| h.header.as_ref().map(|h| h.key.clone()))
            .collect();
        (names, ok.headers_to_remove)
    };
    let (with_meter, removed_with_meter) = headers_of(metered).await;
    let (without_meter, removed_without_meter) = headers_of(unmetered).await;

    // Assert: only the assertion differs; the credential is removed either way.
    let assertion = "x-maas-identity-assertion".to_owned();
    assert!(with_meter.contains(&assertion), "{with_meter:?}");
    assert!(!without_meter.contains(&assertion), "{without_meter:?}");
    let mut expected = with_meter.clone();
    expected.retain(|name| *name != assertion);
    assert_eq!(without_meter, expected);
    assert!(without_meter.contains(&"x-maas-username".to_owned()));
    assert_eq!(removed_without_meter, removed_with_meter);
    assert!(removed_without_meter.contains(&"authorization".to_owned()));
}
