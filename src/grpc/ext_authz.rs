//! Envoy's `envoy.service.auth.v3.Authorization/Check`, translated to and from the [`Authorizer`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, header_value_option::HeaderAppendAction,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization;
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse, check_response::HttpResponse,
};
use envoy_types::pb::envoy::r#type::v3::{HttpStatus, StatusCode as HttpStatusCode};
use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value::Kind};
use envoy_types::pb::google::rpc;
use tonic::{Request, Response, Status};

use crate::authorizer::{
    Allowed, Authorizer, CheckError, CheckInput, CheckObserver, Decision, DenialKind, DenyReason,
};
use crate::limits::{LimitStatus, WindowStatus, retry_after_seconds};
use crate::store::KeyStore;

/// Identity headers we own: always overwritten, so a client's copy never reaches the model.
pub const HEADER_USERNAME: &str = "x-maas-username";
pub const HEADER_GROUP: &str = "x-maas-group";
pub const HEADER_SUBSCRIPTION: &str = "x-maas-subscription";
pub const HEADER_TIER: &str = "x-maas-tier";
pub const HEADER_KEY_ID: &str = "x-maas-key-id";
/// Carries the denial reason to the client (as Authorino does).
pub const HEADER_REASON: &str = "x-ext-auth-reason";
const HEADER_MODEL_NAME: &str = "x-gateway-model-name";

/// Observes each Check's outcome and latency (implemented by the metrics module).
pub trait DecisionObserver: Send + Sync + 'static {
    fn observe_allow(&self, elapsed: std::time::Duration);
    fn observe_deny(&self, reason: DenyReason, elapsed: std::time::Duration);
    fn observe_error(&self, elapsed: std::time::Duration);
}

impl DecisionObserver for () {
    fn observe_allow(&self, _: std::time::Duration) {}
    fn observe_deny(&self, _: DenyReason, _: std::time::Duration) {}
    fn observe_error(&self, _: std::time::Duration) {}
}

/// The tonic service for Envoy's ext_authz filter.
pub struct ExtAuthzService<S, O, D> {
    authorizer: Arc<Authorizer<S, O>>,
    observer: D,
}

impl<S, O, D> std::fmt::Debug for ExtAuthzService<S, O, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExtAuthzService").finish_non_exhaustive()
    }
}

impl<S, O, D> ExtAuthzService<S, O, D> {
    pub fn new(authorizer: Arc<Authorizer<S, O>>, observer: D) -> Self {
        Self {
            authorizer,
            observer,
        }
    }
}

#[tonic::async_trait]
impl<S: KeyStore, O: CheckObserver, D: DecisionObserver> Authorization
    for ExtAuthzService<S, O, D>
{
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let started = Instant::now();
        let request = request.into_inner();
        let http = request
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        let header = |name: &str| http.and_then(|h| request_header(h, name));
        let body = http.and_then(|h| {
            if !h.raw_body.is_empty() {
                Some(h.raw_body.as_slice())
            } else if !h.body.is_empty() {
                Some(h.body.as_bytes())
            } else {
                None
            }
        });
        let input = CheckInput {
            authorization: header("authorization"),
            x_api_key: header("x-api-key"),
            path: http.map(|h| h.path.as_str()).unwrap_or_default(),
            model_header: header(HEADER_MODEL_NAME),
            body,
        };
        let outcome = self.authorizer.check(&input, chrono::Utc::now()).await;
        let elapsed = started.elapsed();
        match &outcome {
            Ok(Decision::Allow(_)) => self.observer.observe_allow(elapsed),
            Ok(Decision::Deny(denied)) => self.observer.observe_deny(denied.reason, elapsed),
            Err(_) => self.observer.observe_error(elapsed),
        }
        check_response(outcome).map(Response::new)
    }
}

/// A request header by lowercase name: from `headers`, or from `header_map` when Envoy is set to
/// `encode_raw_headers` (values that are not UTF-8 count as absent).
fn request_header<'a>(http: &'a HttpRequest, name: &str) -> Option<&'a str> {
    if let Some(value) = http.headers.get(name) {
        return Some(value);
    }
    let raw = http.header_map.as_ref()?;
    raw.headers
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case(name))
        .and_then(|h| {
            if h.raw_value.is_empty() {
                Some(h.value.as_str())
            } else {
                std::str::from_utf8(&h.raw_value).ok()
            }
        })
}

/// Maps a decision to what Envoy does with it:
/// - allow → gRPC OK with `ok_response`: Envoy forwards the request with our identity headers
///   set (overwriting any client copies), the credential headers removed, and `dynamic_metadata`
///   handed to later filters (rate limit, access log) under `envoy.filters.http.ext_authz`;
/// - deny → `denied_response`: Envoy answers the client itself with our status, headers and JSON
///   body, and the request never reaches the model;
/// - error → the RPC fails with `UNAVAILABLE`: Envoy applies its failure mode
///   (`failure_mode_allow`, else `status_on_error`), so we never allow what we could not check.
pub fn check_response(outcome: Result<Decision, CheckError>) -> Result<CheckResponse, Status> {
    match outcome {
        Ok(Decision::Allow(allowed)) => {
            let mut response = allow_response(&allowed);
            // To the client's response (not upstream): where it stands against its limits.
            if let (Some(HttpResponse::OkResponse(ok)), Some(limits)) =
                (response.http_response.as_mut(), allowed.limits.as_ref())
            {
                ok.response_headers_to_add = rate_limit_headers(limits);
            }
            Ok(response)
        }
        Ok(Decision::Deny(denied)) => {
            let mut response = deny_response(denied.reason);
            if let Some(HttpResponse::DeniedResponse(answer)) = response.http_response.as_mut() {
                if let Some(limits) = &denied.limits {
                    answer.headers.extend(rate_limit_headers(limits));
                }
                if let Some(wait) = denied.retry_after {
                    let seconds = retry_after_seconds(wait).to_string();
                    answer.headers.push(overwrite("retry-after", &seconds));
                }
            }
            Ok(response)
        }
        Err(CheckError::StoreUnavailable(error)) => {
            tracing::warn!(%error, "check failed: key store unavailable");
            Err(Status::unavailable("key store unavailable"))
        }
        // MAAS_AUTHZ_LIMITS_ON_REDIS_ERROR=deny: the gateway's failure mode (503), not a 429
        // that would tell the client it is over a limit it may not be over.
        Err(CheckError::LimitsUnavailable(error)) => {
            tracing::warn!(%error, "check failed: counter store unavailable");
            Err(Status::unavailable("counter store unavailable"))
        }
    }
}

/// OpenAI's `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` for the tightest window of
/// each kind. The reset is a Go-style duration rounded up to whole seconds (`45s`, `1m0s`), as
/// OpenAI writes it.
fn rate_limit_headers(limits: &LimitStatus) -> Vec<HeaderValueOption> {
    const REQUESTS: [&str; 3] = [
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
    ];
    const TOKENS: [&str; 3] = [
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
    ];
    let mut headers = Vec::with_capacity(6);
    let mut add = |[limit, remaining, reset]: [&str; 3], window: &WindowStatus| {
        let reset_after = std::time::Duration::from_secs(retry_after_seconds(window.reset_after));
        headers.push(overwrite(limit, &window.limit.to_string()));
        headers.push(overwrite(remaining, &window.remaining().to_string()));
        headers.push(overwrite(
            reset,
            &crate::duration::format_go_duration(reset_after),
        ));
    };
    if let Some(window) = &limits.requests {
        add(REQUESTS, window);
    }
    if let Some(window) = &limits.tokens {
        add(TOKENS, window);
    }
    headers
}

fn allow_response(allowed: &Allowed) -> CheckResponse {
    let key = &allowed.key;
    let groups_json = serde_json::to_string(&key.groups).unwrap_or_else(|_| "[]".to_owned());
    let key_id = key.id.to_string();
    let model = allowed
        .model
        .as_ref()
        .map(|m| format!("{}/{}", m.namespace, m.name))
        .unwrap_or_default();
    let headers = vec![
        overwrite(HEADER_USERNAME, &key.username),
        overwrite(HEADER_GROUP, &groups_json),
        overwrite(HEADER_SUBSCRIPTION, &allowed.subscription),
        overwrite(HEADER_TIER, &allowed.tier),
        overwrite(HEADER_KEY_ID, &key_id),
    ];
    let mut headers_to_remove = Vec::with_capacity(2);
    if allowed.credentials.authorization {
        headers_to_remove.push("authorization".to_owned());
    }
    if allowed.credentials.x_api_key {
        headers_to_remove.push("x-api-key".to_owned());
    }
    let metadata = Struct {
        fields: HashMap::from([
            ("user".to_owned(), string_value(&key.username)),
            ("userid".to_owned(), string_value(&key.username)),
            (
                "groups".to_owned(),
                Value {
                    kind: Some(Kind::ListValue(ListValue {
                        values: key.groups.iter().map(|g| string_value(g)).collect(),
                    })),
                },
            ),
            ("groups_str".to_owned(), string_value(&key.groups.join(","))),
            ("key_id".to_owned(), string_value(&key_id)),
            ("key_name".to_owned(), string_value(&key.name)),
            (
                "subscription".to_owned(),
                string_value(&allowed.subscription),
            ),
            ("tier".to_owned(), string_value(&allowed.tier)),
            ("model".to_owned(), string_value(&model)),
            (
                "selected_subscription_key".to_owned(),
                string_value(&allowed.selected_subscription_key()),
            ),
        ]),
    };
    CheckResponse {
        status: Some(rpc::Status {
            code: tonic::Code::Ok as i32,
            ..Default::default()
        }),
        dynamic_metadata: Some(metadata),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers,
            headers_to_remove,
            ..Default::default()
        })),
    }
}

fn deny_response(reason: DenyReason) -> CheckResponse {
    let (http_status, rpc_code, error_type, code) = match reason.kind() {
        DenialKind::Unauthenticated => (
            HttpStatusCode::Unauthorized,
            tonic::Code::Unauthenticated,
            "invalid_request_error",
            "invalid_api_key",
        ),
        DenialKind::Forbidden => (
            HttpStatusCode::Forbidden,
            tonic::Code::PermissionDenied,
            "permission_error",
            "access_denied",
        ),
        DenialKind::ModelNotFound => (
            HttpStatusCode::NotFound,
            tonic::Code::NotFound,
            "invalid_request_error",
            "model_not_found",
        ),
        DenialKind::RateLimited => (
            HttpStatusCode::TooManyRequests,
            tonic::Code::ResourceExhausted,
            "rate_limit_error",
            "rate_limit_exceeded",
        ),
    };
    let body = serde_json::json!({
        "error": { "message": reason.message(), "type": error_type, "code": code }
    })
    .to_string();
    let mut headers = vec![
        overwrite("content-type", "application/json"),
        overwrite(HEADER_REASON, reason.as_str()),
    ];
    if reason.kind() == DenialKind::Unauthenticated {
        headers.push(overwrite("www-authenticate", "Bearer"));
    }
    CheckResponse {
        status: Some(rpc::Status {
            code: rpc_code as i32,
            message: reason.as_str().to_owned(),
            details: Vec::new(),
        }),
        dynamic_metadata: None,
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: http_status as i32,
            }),
            headers,
            body,
        })),
    }
}

fn overwrite(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value: value.to_owned(),
            ..Default::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

fn string_value(text: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(text.to_owned())),
    }
}
