//! The one mapping of a Check decision to Envoy's `CheckResponse`, and that response's wire form.
//!
//! [`check_response`] decides what Envoy sees for every outcome (its comment says what Envoy does
//! with each); the adapter ([`crate::grpc::ext_authz`]) memoises its encoded answers and the server
//! ([`crate::grpc::check_server`]) writes them as they are.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, header_value_option::HeaderAppendAction,
};
use envoy_types::pb::envoy::service::auth::v3::{
    CheckResponse, DeniedHttpResponse, OkHttpResponse, check_response::HttpResponse,
};
use envoy_types::pb::envoy::r#type::v3::{HttpStatus, StatusCode as HttpStatusCode};
use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value::Kind};
use envoy_types::pb::google::rpc;
use prost::Message;
use prost::bytes::{Buf, Bytes};
use tonic::Status;

use crate::assertion::{HEADER_IDENTITY_ASSERTION, SigningKeys};
use crate::authorizer::{AllowAnswerKey, CheckError, Decision, DenialKind, Denied, DenyReason};
use crate::ids::SubscriptionKey;
use crate::limits::{LimitStatus, WindowStatus, retry_after_seconds};
use crate::store::StoreError;

pub use crate::gateway_headers::{
    HEADER_GROUP, HEADER_KEY_ID, HEADER_REASON, HEADER_SUBSCRIPTION, HEADER_TIER, HEADER_USERNAME,
};

/// A `CheckResponse` in its protobuf wire form, cheap to clone and to send: one encoded message,
/// optionally followed by a second one that the receiver merges into it (protobuf's rule for a
/// message that appears twice), so a memoised answer can take per-request parts without a copy.
#[derive(Clone, PartialEq, Eq)]
pub struct EncodedCheckResponse {
    /// Read by [`crate::grpc::check_server`]'s codec, which writes both as they are.
    pub(super) head: Bytes,
    pub(super) tail: Bytes,
}

impl EncodedCheckResponse {
    pub fn encode(message: &CheckResponse) -> Self {
        Self {
            head: Bytes::from(message.encode_to_vec()),
            tail: Bytes::new(),
        }
    }

    /// This answer with `more` merged in after it (replacing any earlier tail).
    pub fn followed_by(self, more: Option<EncodedCheckResponse>) -> Self {
        match more {
            Some(more) => Self {
                head: self.head,
                tail: more.head,
            },
            None => self,
        }
    }

    pub fn len(&self) -> usize {
        self.head.len() + self.tail.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The message these bytes encode, as the receiver reads it (for tests and benchmarks).
    pub fn decode(&self) -> Result<CheckResponse, prost::DecodeError> {
        CheckResponse::decode(self.head.clone().chain(self.tail.clone()))
    }
}

impl std::fmt::Debug for EncodedCheckResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EncodedCheckResponse({} bytes)", self.len())
    }
}

/// Maps a decision to what Envoy does with it:
/// - allow → gRPC OK with `ok_response`: Envoy forwards the request with our identity headers
///   set (overwriting any client copies), the identity assertion for the token meter (signed
///   with `signing` at `now_unix`), the credential headers removed, and `dynamic_metadata`
///   handed to later filters (rate limit, access log) under `envoy.filters.http.ext_authz`
///   (which the service drops unless `MAAS_AUTHZ_DYNAMIC_METADATA` is on);
/// - deny → `denied_response`: Envoy answers the client itself with our status, headers and JSON
///   body, and the request never reaches the model;
/// - error → the RPC fails with `UNAVAILABLE`: Envoy applies its failure mode
///   (`failure_mode_allow`, else `status_on_error`), so we never allow what we could not check.
pub fn check_response(
    outcome: Result<Decision, CheckError>,
    signing: &SigningKeys,
    now_unix: i64,
) -> Result<CheckResponse, Status> {
    match outcome {
        Ok(Decision::Allow(allowed)) => {
            let mut response = allow_response(&allowed.answer, signing, now_unix);
            // To the client's response (not upstream): where it stands against its limits.
            if let (Some(HttpResponse::OkResponse(ok)), Some(limits)) =
                (response.http_response.as_mut(), allowed.limits.as_ref())
            {
                ok.response_headers_to_add = rate_limit_headers(limits);
            }
            Ok(response)
        }
        Ok(Decision::Deny(denied)) => {
            let mut response = deny_answer(&denied);
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
            // While the breaker is open every uncached key fails here, thousands a second: the
            // breaker's own transitions, the metrics and `/ready` already tell the operator.
            if matches!(error, StoreError::CircuitOpen) {
                tracing::debug!(%error, "check failed: key store unavailable");
            } else {
                tracing::warn!(%error, "check failed: key store unavailable");
            }
            Err(Status::unavailable("key store unavailable"))
        }
        // MAAS_AUTHZ_LIMITS_ON_REDIS_ERROR=deny: the gateway's failure mode (503), not a 429
        // that would tell the client it is over a limit it may not be over.
        Err(CheckError::LimitsUnavailable(error)) => {
            tracing::warn!(%error, "check failed: counter store unavailable");
            Err(Status::unavailable("counter store unavailable"))
        }
        // The authorizer answers this as a denial itself; the same 429 should one arrive here.
        // A denial (not UNAVAILABLE) because Envoy's failure mode may be set to allow, and a
        // flood must never be able to buy its way in by exhausting the budget.
        Err(CheckError::UnknownKeyThrottled(throttled)) => check_response(
            Ok(Decision::Deny(Denied {
                retry_after: Some(throttled.retry_after),
                ..Denied::new(DenyReason::UnknownKeyRateLimited)
            })),
            signing,
            now_unix,
        ),
    }
}

/// OpenAI's `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` for the tightest window of
/// each kind. The reset is a Go-style duration rounded up to whole seconds (`45s`, `1m0s`), as
/// OpenAI writes it.
pub(super) fn rate_limit_headers(limits: &LimitStatus) -> Vec<HeaderValueOption> {
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
    if let Some(window) = &limits.spend {
        headers.extend(spend_headers(window));
    }
    headers
}

/// `x-ratelimit-{limit,remaining,reset}-spend` of the tightest spend window: amounts as decimal
/// strings in the billing currency (`50`, `49.9993`), the reset as for the other kinds.
fn spend_headers(window: &WindowStatus) -> [HeaderValueOption; 3] {
    let amount = |pico: u64| crate::money::Amount::from_pico(i128::from(pico)).to_string();
    let reset_after = std::time::Duration::from_secs(retry_after_seconds(window.reset_after));
    [
        overwrite("x-ratelimit-limit-spend", &amount(window.limit)),
        overwrite("x-ratelimit-remaining-spend", &amount(window.remaining())),
        overwrite(
            "x-ratelimit-reset-spend",
            &crate::duration::format_go_duration(reset_after),
        ),
    ]
}

/// The allow answer, built from its key alone (the memo keys on the same value) and the
/// signing time (which the memo tracks itself).
pub(super) fn allow_response(
    answer: &AllowAnswerKey,
    signing: &SigningKeys,
    now_unix: i64,
) -> CheckResponse {
    let key = &answer.key;
    let groups_json = serde_json::to_string(&*key.groups).unwrap_or_else(|_| "[]".to_owned());
    let key_id = key.id.to_string();
    let model = answer
        .model
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    let selected_subscription_key = answer.selected_subscription_key();
    let subscription = answer.subscription.header_value();
    let mut headers = vec![
        overwrite(HEADER_USERNAME, &key.username),
        overwrite(HEADER_GROUP, &groups_json),
        overwrite(HEADER_SUBSCRIPTION, subscription),
        overwrite(HEADER_TIER, &answer.tier),
        overwrite(HEADER_KEY_ID, &key_id),
    ];
    // Only the token meter reads it, and it never reaches the model where the meter runs (the
    // meter strips it); a route marked `meter: "off"` is spared signing it and carrying it.
    if answer.metered {
        headers.push(overwrite(
            HEADER_IDENTITY_ASSERTION,
            &signing.sign(&answer.identity_assertion(now_unix)),
        ));
    }
    let mut headers_to_remove = Vec::with_capacity(2);
    if answer.credentials.authorization {
        headers_to_remove.push("authorization".to_owned());
    }
    if answer.credentials.x_api_key {
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
            ("subscription".to_owned(), string_value(subscription)),
            ("tier".to_owned(), string_value(&answer.tier)),
            ("model".to_owned(), string_value(&model)),
            (
                "selected_subscription_key".to_owned(),
                string_value(
                    selected_subscription_key
                        .as_ref()
                        .map_or("", SubscriptionKey::as_str),
                ),
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

pub(super) fn deny_response(reason: DenyReason) -> CheckResponse {
    deny_answer(&Denied::new(reason))
}

fn deny_answer(denied: &Denied) -> CheckResponse {
    let reason = denied.reason;
    let (http_status, rpc_code, error_type, code) = match reason.kind() {
        DenialKind::BadRequest => (
            HttpStatusCode::BadRequest,
            tonic::Code::InvalidArgument,
            "invalid_request_error",
            reason.as_str(),
        ),
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
            // A client tells a spending cap (wait for the window or raise the budget) from a
            // throughput limit by the code.
            if reason == DenyReason::SpendLimitExceeded {
                "spend_limit_exceeded"
            } else {
                "rate_limit_exceeded"
            },
        ),
    };
    let body = serde_json::json!({
        "error": { "message": denied.message(), "type": error_type, "code": code }
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
