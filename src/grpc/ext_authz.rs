//! Envoy's `envoy.service.auth.v3.Authorization/Check`, translated to and from the [`Authorizer`].

use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use envoy_types::pb::envoy::service::auth::v3::{
    CheckResponse, OkHttpResponse, check_response::HttpResponse,
};
use tonic::Status;

use crate::assertion::SigningKeys;
use crate::authorizer::{
    AllowAnswerKey, Allowed, Authorizer, CheckError, CheckInput, Decision, DecisionObserver,
    Denied, DenyReason, PerDenyReason,
};
use crate::grpc::check_request::CheckAttributes;
use crate::grpc::check_response::{
    EncodedCheckResponse, allow_response, check_response, deny_response, rate_limit_headers,
};
use crate::limits::LimitStatus;
use crate::store::KeyStore;

/// Envoy's ext_authz Check: extracts the request parts, asks the [`Authorizer`], answers encoded.
/// Served by [`crate::grpc::check_server::CheckServer`].
pub struct ExtAuthzService<S> {
    authorizer: Arc<Authorizer<S>>,
    observer: Arc<dyn DecisionObserver>,
    responses: ResponseMemo,
}

/// How long a memoised allow answer keeps its identity assertion before it is signed again: well
/// inside the assertion's validity ([`crate::assertion::MAX_AGE`]).
const ASSERTION_REFRESH_SECONDS: i64 = 30;

impl<S> std::fmt::Debug for ExtAuthzService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExtAuthzService").finish_non_exhaustive()
    }
}

impl<S> ExtAuthzService<S> {
    /// `signing` signs the identity assertion every allow answer carries for the token meter.
    pub fn new(
        authorizer: Arc<Authorizer<S>>,
        observer: Arc<dyn DecisionObserver>,
        signing: Arc<SigningKeys>,
    ) -> Self {
        Self {
            authorizer,
            observer,
            responses: ResponseMemo::new(ALLOW_MEMO_SLOTS, true, signing),
        }
    }

    /// Whether a bad `sk-oai-` key (malformed, unknown, revoked, expired, unbound) is answered
    /// 403 as upstream's gateway does, instead of 401 (`MAAS_AUTHZ_INVALID_KEY_STATUS`).
    pub fn with_invalid_keys_forbidden(mut self, forbidden: bool) -> Self {
        if forbidden {
            self.responses.denials = PerDenyReason::new(|reason| {
                let mut response = deny_response(reason);
                if is_invalid_key(reason) {
                    forbid(&mut response);
                }
                EncodedCheckResponse::encode(&response)
            });
        }
        self
    }

    /// Whether allow answers carry the identity as dynamic metadata (`MAAS_AUTHZ_DYNAMIC_METADATA`;
    /// off by default).
    pub fn with_dynamic_metadata(mut self, on: bool) -> Self {
        // Nothing is memoised yet, so no answer was encoded with the other setting.
        self.responses.dynamic_metadata = on;
        self
    }
}

impl<S: KeyStore> ExtAuthzService<S> {
    /// Decides one Check request and returns the answer's wire form (see [`check_response`]).
    pub async fn check(&self, request: &CheckAttributes) -> Result<EncodedCheckResponse, Status> {
        let started = Instant::now();
        // Refused before anything else, as upstream's `deny-client-identity-headers` rule: a
        // client claiming an identity is an attack, whatever its credential says.
        if request.forged_identity_header() {
            let reason = DenyReason::ForgedIdentityHeader;
            self.observer.observe_deny(reason, started.elapsed());
            return self.responses.encoded(
                Ok(Decision::Deny(Denied::new(reason))),
                chrono::Utc::now().timestamp(),
            );
        }
        let input = CheckInput {
            authorization: request.authorization(),
            x_api_key: request.x_api_key(),
            path: request.path(),
            route_model: request.route_model(),
            route_unmetered: request.route_unmetered(),
            model_header: request.model_header(),
            body: request.body(),
            source_address: request.source_address(),
        };
        let now = chrono::Utc::now();
        let outcome = self.authorizer.check(&input, now).await;
        let elapsed = started.elapsed();
        match &outcome {
            Ok(Decision::Allow(_)) => self.observer.observe_allow(elapsed),
            Ok(Decision::Deny(denied)) => self.observer.observe_deny(denied.reason, elapsed),
            Err(_) => self.observer.observe_error(elapsed),
        }
        self.responses.encoded(outcome, now.timestamp())
    }
}

/// How many (key, model, credential headers) allow answers stay encoded. Direct-mapped: a slot
/// holds one answer and a colliding one replaces it, so memory is bounded (about 1 KiB per
/// slot when full) and a lookup is one hash, one uncontended lock and a few comparisons.
const ALLOW_MEMO_SLOTS: usize = 8192;

/// The encoded answers of [`check_response`]: every denial encoded once, allow answers memoised.
///
/// An allow answer is built from its [`AllowAnswerKey`] alone (and the signing time, which the
/// memo tracks itself), and a slot is reused only when the whole key is equal: the key record
/// by pointer (the key cache replaces the `Arc` whenever the row is reloaded; the slot keeps it
/// alive, so the address cannot be reused by another record), the subscription, tier and model
/// the policy resolved, and which credential headers to strip. A policy reload, a reloaded key
/// or another model simply miss and re-encode. Status and expiry never reach here: the
/// authorizer judges them on every request before an `Allowed` exists.
struct ResponseMemo {
    slot_hasher: foldhash::fast::RandomState,
    signing: Arc<SigningKeys>,
    /// False: allow answers leave out `dynamic_metadata` (`MAAS_AUTHZ_DYNAMIC_METADATA=false`).
    dynamic_metadata: bool,
    denials: PerDenyReason<EncodedCheckResponse>,
    allows: Box<[Mutex<Option<MemoizedAllow>>]>,
}

struct MemoizedAllow {
    answer: AllowAnswerKey,
    encoded: EncodedCheckResponse,
    /// When its identity assertion was signed (Unix seconds).
    signed_at: i64,
}

impl ResponseMemo {
    fn new(slots: usize, dynamic_metadata: bool, signing: Arc<SigningKeys>) -> Self {
        Self {
            slot_hasher: foldhash::fast::RandomState::default(),
            signing,
            dynamic_metadata,
            denials: PerDenyReason::new(|reason| {
                EncodedCheckResponse::encode(&deny_response(reason))
            }),
            allows: (0..slots.next_power_of_two())
                .map(|_| Mutex::new(None))
                .collect(),
        }
    }

    fn encoded(
        &self,
        outcome: Result<Decision, CheckError>,
        now_unix: i64,
    ) -> Result<EncodedCheckResponse, Status> {
        match outcome {
            Ok(Decision::Allow(allowed)) => Ok(self.allow(allowed, now_unix)),
            Ok(Decision::Deny(denied)) if denied == Denied::new(denied.reason) => {
                Ok(self.denials.get(denied.reason).clone())
            }
            other => check_response(other, &self.signing, now_unix)
                .map(|r| EncodedCheckResponse::encode(&r)),
        }
    }

    fn slot_of(&self, answer: &AllowAnswerKey) -> usize {
        self.slot_hasher.hash_one(answer) as usize & (self.allows.len() - 1)
    }

    fn allow(&self, allowed: Box<Allowed>, now_unix: i64) -> EncodedCheckResponse {
        // The rate-limit headers change with every request, so they travel as a second encoded
        // `CheckResponse` after the memoised one: protobuf parsers merge a repeated message field
        // into the first (the repeated `response_headers_to_add` is appended), which gives
        // exactly `check_response`'s message.
        let Allowed { answer, limits } = *allowed;
        let tail = limits
            .as_ref()
            .map(|limits| EncodedCheckResponse::encode(&rate_limit_tail(limits)));
        let slot = &self.allows[self.slot_of(&answer)];
        if let Some(hit) = lock(slot).as_ref()
            && hit.answer == answer
            && (0..ASSERTION_REFRESH_SECONDS).contains(&(now_unix - hit.signed_at))
        {
            return hit.encoded.clone().followed_by(tail);
        }
        let mut response = allow_response(&answer, &self.signing, now_unix);
        if !self.dynamic_metadata {
            response.dynamic_metadata = None;
        }
        let encoded = EncodedCheckResponse::encode(&response);
        *lock(slot) = Some(MemoizedAllow {
            answer,
            encoded: encoded.clone(),
            signed_at: now_unix,
        });
        encoded.followed_by(tail)
    }
}

/// The denials upstream's gateway answers 403 (its `api-keys` identity accepts any `sk-oai-`
/// string; validation failing is an authorization failure there).
fn is_invalid_key(reason: DenyReason) -> bool {
    matches!(
        reason,
        DenyReason::InvalidKeyFormat
            | DenyReason::KeyNotFound
            | DenyReason::KeyRevoked
            | DenyReason::KeyExpired
            | DenyReason::NoSubscriptionBound
    )
}

/// Turns a 401 denial into upstream's 403 for the same reason: status, gRPC code, error type,
/// and no `www-authenticate` challenge.
fn forbid(response: &mut CheckResponse) {
    use envoy_types::pb::envoy::r#type::v3::{HttpStatus, StatusCode as HttpStatusCode};
    if let Some(status) = response.status.as_mut() {
        status.code = tonic::Code::PermissionDenied as i32;
    }
    if let Some(HttpResponse::DeniedResponse(denied)) = response.http_response.as_mut() {
        denied.status = Some(HttpStatus {
            code: HttpStatusCode::Forbidden as i32,
        });
        denied.headers.retain(|option| {
            option
                .header
                .as_ref()
                .is_none_or(|header| !header.key.eq_ignore_ascii_case("www-authenticate"))
        });
        denied.body = denied
            .body
            .replace("\"invalid_request_error\"", "\"permission_error\"");
    }
}

/// The part of an allow answer that carries the client's rate-limit headers.
fn rate_limit_tail(limits: &LimitStatus) -> CheckResponse {
    CheckResponse {
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            response_headers_to_add: rate_limit_headers(limits),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding a slot cannot leave it half-written (it is replaced whole).
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::assertion::HEADER_IDENTITY_ASSERTION;
    use crate::authorizer::{CredentialHeaders, DenyReason};
    use crate::cache::CachedKey;
    use crate::grpc::check_response::*;
    use crate::ids::{BoundSubscription, ModelRef, SubscriptionRef};
    use crate::key::ApiKey;
    use crate::limits::WindowStatus;
    use crate::store::{KeyRecord, KeyRecordId, KeyStatus, StoreError};

    use super::*;

    const NOW: i64 = 1_790_000_000;

    fn signing() -> Arc<SigningKeys> {
        static KEYS: std::sync::OnceLock<Arc<SigningKeys>> = std::sync::OnceLock::new();
        KEYS.get_or_init(|| {
            Arc::new(SigningKeys::parse("test=a-test-secret-of-thirty-two-bytes-or-more").unwrap())
        })
        .clone()
    }

    fn record(username: &str) -> Arc<CachedKey> {
        Arc::new(CachedKey::from(KeyRecord {
            id: KeyRecordId::new_random(),
            username: username.to_owned(),
            name: "laptop".to_owned(),
            description: None,
            key_hash: ApiKey::generate().unwrap().hash(),
            status: KeyStatus::Active,
            groups: vec!["tier-free".to_owned(), "dev\"s".to_owned()],
            subscription: "free".to_owned(),
            created_at: chrono::Utc::now(),
            expires_at: None,
            last_used_at: None,
            ephemeral: false,
            labels: BTreeMap::new(),
        }))
    }

    fn allowed(key: &Arc<CachedKey>) -> Box<Allowed> {
        Box::new(Allowed {
            answer: AllowAnswerKey {
                key: Arc::clone(key),
                subscription: BoundSubscription::Known(SubscriptionRef::new(
                    "models-as-a-service",
                    "free",
                )),
                tier: "free".to_owned(),
                model: Some(ModelRef::new("llm", "simulator")),
                credentials: CredentialHeaders {
                    authorization: true,
                    x_api_key: false,
                },
                metered: true,
            },
            limits: None,
        })
    }

    fn expected(allowed: &Allowed) -> CheckResponse {
        check_response(
            Ok(Decision::Allow(Box::new(allowed.clone()))),
            &signing(),
            NOW,
        )
        .unwrap()
    }

    #[test]
    fn deny_reasons_index_their_own_encoded_answer() {
        let memo = ResponseMemo::new(4, true, signing());
        for (index, reason) in DenyReason::ALL.into_iter().enumerate() {
            assert_eq!(reason.index(), index, "{reason:?} is out of order in ALL");
            let encoded = memo
                .encoded(Ok(Decision::Deny(Denied::new(reason))), NOW)
                .unwrap();
            assert_eq!(
                encoded.decode().unwrap(),
                deny_response(reason),
                "{reason:?}"
            );
        }
    }

    #[test]
    fn a_memoised_allow_is_the_same_answer_as_a_fresh_one() {
        let memo = ResponseMemo::new(4, true, signing());
        let key = record("alice");
        let first = memo.allow(allowed(&key), NOW);
        let second = memo.allow(allowed(&key), NOW);
        assert_eq!(first, second);
        assert_eq!(second.decode().unwrap(), expected(&allowed(&key)));
    }

    #[test]
    fn without_dynamic_metadata_an_allow_is_the_same_answer_minus_the_metadata() {
        let memo = ResponseMemo::new(4, false, signing());
        let key = record("alice");
        let mut wanted = expected(&allowed(&key));
        assert!(wanted.dynamic_metadata.is_some());
        wanted.dynamic_metadata = None;

        let first = memo.allow(allowed(&key), NOW);
        let memoised = memo.allow(allowed(&key), NOW);

        assert_eq!(first.decode().unwrap(), wanted);
        assert_eq!(memoised, first);
    }

    #[test]
    fn an_allow_on_a_route_without_the_meter_carries_no_identity_assertion_and_the_rest_unchanged()
    {
        let memo = ResponseMemo::new(4, false, signing());
        let key = record("alice");
        let mut unmetered = allowed(&key);
        unmetered.answer.metered = false;
        let header_names = |response: &CheckResponse| -> Vec<String> {
            match &response.http_response {
                Some(HttpResponse::OkResponse(ok)) => ok
                    .headers
                    .iter()
                    .filter_map(|h| h.header.as_ref().map(|h| h.key.clone()))
                    .collect(),
                other => panic!("not an allow: {other:?}"),
            }
        };

        let metered = memo.allow(allowed(&key), NOW).decode().unwrap();
        let plain = memo.allow(unmetered, NOW).decode().unwrap();

        let mut without = header_names(&metered);
        assert!(without.contains(&HEADER_IDENTITY_ASSERTION.to_owned()));
        without.retain(|name| name != HEADER_IDENTITY_ASSERTION);
        assert_eq!(header_names(&plain), without);
        let removed = |response: &CheckResponse| match &response.http_response {
            Some(HttpResponse::OkResponse(ok)) => ok.headers_to_remove.clone(),
            _ => Vec::new(),
        };
        assert_eq!(removed(&plain), vec!["authorization".to_owned()]);
    }

    #[test]
    fn every_input_of_the_allow_answer_gets_its_own_memo_entry() {
        // One slot, so every variant lands on the previous one's entry and must not reuse it.
        let memo = ResponseMemo::new(1, true, signing());
        let key = record("alice");
        let base = allowed(&key);
        let other_user = allowed(&record("bob"));
        let same_row_reloaded = allowed(&Arc::new(CachedKey::clone(&key)));
        let mut other_model = allowed(&key);
        other_model.answer.model = None;
        let mut other_credentials = allowed(&key);
        other_credentials.answer.credentials.x_api_key = true;
        let mut other_tier = allowed(&key);
        other_tier.answer.tier = "premium".to_owned();
        let mut other_subscription = allowed(&key);
        other_subscription.answer.subscription =
            BoundSubscription::Known(SubscriptionRef::new("models-as-a-service", "premium"));
        let mut other_namespace = allowed(&key);
        other_namespace.answer.subscription = BoundSubscription::Unresolved("free".to_owned());
        let mut unmetered = allowed(&key);
        unmetered.answer.metered = false;

        for variant in [
            base.clone(),
            other_user,
            base.clone(),
            same_row_reloaded,
            other_model,
            base.clone(),
            other_credentials,
            other_tier,
            base.clone(),
            other_subscription,
            other_namespace,
            base.clone(),
            unmetered,
            base,
        ] {
            let want = expected(&variant);
            assert_eq!(memo.allow(variant, NOW).decode().unwrap(), want);
        }
    }

    fn window(limit: u64, used: u64) -> WindowStatus {
        WindowStatus {
            limit,
            used,
            window: std::time::Duration::from_secs(60),
            reset_after: std::time::Duration::from_millis(12_300),
        }
    }

    #[test]
    fn rate_limit_headers_ride_after_the_memoised_allow_and_merge_into_it() {
        let memo = ResponseMemo::new(4, true, signing());
        let key = record("alice");
        for used in [1, 2] {
            let mut counted = allowed(&key);
            counted.limits = Some(LimitStatus {
                requests: Some(window(5, used)),
                tokens: Some(window(100, 40)),
                spend: None,
            });
            let want = expected(&counted);
            let got = memo.allow(counted, NOW).decode().unwrap();
            assert_eq!(got, want);
            let Some(HttpResponse::OkResponse(ok)) = got.http_response else {
                panic!("not an allow: {got:?}");
            };
            let remaining = ok
                .response_headers_to_add
                .iter()
                .filter_map(|o| o.header.as_ref())
                .find(|h| h.key == "x-ratelimit-remaining-requests")
                .map(|h| h.value.clone());
            assert_eq!(remaining.as_deref(), Some((5 - used).to_string().as_str()));
            assert_eq!(
                ok.headers.len(),
                6,
                "identity headers and the assertion are still there"
            );
        }
    }

    #[test]
    fn a_429_carries_its_own_retry_after_not_a_memoised_denial() {
        let memo = ResponseMemo::new(4, true, signing());
        let denied = Denied {
            reason: DenyReason::RequestRateLimited,
            detail: None,
            retry_after: Some(std::time::Duration::from_millis(12_300)),
            limits: Some(LimitStatus {
                requests: Some(window(5, 5)),
                tokens: None,
                spend: None,
            }),
        };
        let want = check_response(Ok(Decision::Deny(denied)), &signing(), NOW).unwrap();
        let got = memo.encoded(Ok(Decision::Deny(denied)), NOW).unwrap();
        assert_eq!(got.decode().unwrap(), want);
        let Some(HttpResponse::DeniedResponse(answer)) = want.http_response else {
            panic!("not a denial");
        };
        assert!(
            answer
                .headers
                .iter()
                .filter_map(|o| o.header.as_ref())
                .any(|h| h.key == "retry-after" && h.value == "13")
        );
    }

    #[test]
    fn a_store_failure_is_unavailable_not_an_answer() {
        let memo = ResponseMemo::new(4, true, signing());
        let error = memo
            .encoded(
                Err(CheckError::StoreUnavailable(StoreError::Unavailable(
                    "down".to_owned(),
                ))),
                NOW,
            )
            .unwrap_err();
        assert_eq!(error.code(), tonic::Code::Unavailable);
    }

    fn header<'a>(response: &'a CheckResponse, name: &str) -> Option<&'a str> {
        let Some(HttpResponse::OkResponse(ok)) = response.http_response.as_ref() else {
            return None;
        };
        ok.headers
            .iter()
            .filter_map(|o| o.header.as_ref())
            .find(|h| h.key == name)
            .map(|h| h.value.as_str())
    }

    #[test]
    fn an_allow_carries_a_signed_assertion_of_the_identity_and_model_it_authorized() {
        let memo = ResponseMemo::new(4, true, signing());
        let key = record("alice");

        let answer = memo.allow(allowed(&key), NOW).decode().unwrap();

        let token = header(&answer, HEADER_IDENTITY_ASSERTION).expect("assertion header");
        let assertion = signing().verify(token, NOW).expect("verifies");
        assert_eq!(assertion.user, "alice");
        assert_eq!(assertion.model, "llm/simulator");
        assert_eq!(
            assertion.subscription_key,
            "models-as-a-service/free@llm/simulator"
        );
        assert_eq!(assertion.key_id, key.id.to_string());
        assert_eq!(assertion.issued_at, NOW);
    }

    #[test]
    fn a_memoised_allow_is_signed_again_before_its_assertion_gets_old() {
        let memo = ResponseMemo::new(4, true, signing());
        let key = record("alice");
        let first = memo.allow(allowed(&key), NOW);

        let within = memo.allow(allowed(&key), NOW + ASSERTION_REFRESH_SECONDS - 1);
        let after = memo.allow(allowed(&key), NOW + ASSERTION_REFRESH_SECONDS);

        assert_eq!(within, first);
        let resigned = after.decode().unwrap();
        let token = header(&resigned, HEADER_IDENTITY_ASSERTION).unwrap();
        assert_eq!(
            signing().verify(token, NOW + 40).unwrap().issued_at,
            NOW + ASSERTION_REFRESH_SECONDS
        );
    }

    #[test]
    fn a_bad_request_denial_is_a_400_whose_message_says_what_is_wrong() {
        let memo = ResponseMemo::new(4, true, signing());
        let denied = Denied {
            detail: Some("the path has a dot segment ('.' or '..')"),
            ..Denied::new(DenyReason::NonCanonicalPath)
        };

        let answer = memo
            .encoded(Ok(Decision::Deny(denied)), NOW)
            .unwrap()
            .decode()
            .unwrap();

        let Some(HttpResponse::DeniedResponse(denial)) = answer.http_response else {
            panic!("not a denial");
        };
        assert_eq!(denial.status.map(|s| s.code), Some(400));
        let body: serde_json::Value = serde_json::from_str(&denial.body).unwrap();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["code"], "non_canonical_path");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("The request path is not canonical")
                && message.ends_with(": the path has a dot segment ('.' or '..')"),
            "{message}"
        );
    }
}
