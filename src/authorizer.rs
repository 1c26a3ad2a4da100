//! The Check decision: canonical path → credential → key → cache/store → status and expiry →
//! model → subscription and auth policy → limits. Pure domain: it knows nothing of gRPC or Envoy types.
//!
//! The model is decided fail-closed: the route's model (set by the operator in Envoy's
//! per-route `context_extensions`) wins; else the canonical path's; else `x-gateway-model-name`;
//! else the body's `model`. Every other source that names a model must name the same one (else
//! 400), and a request that names none is refused unless its path is on the operator's
//! model-free list. So the model a request reaches is the model that was authorized.

use std::sync::Arc;

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};

use crate::bearer::{BearerError, bearer_token};
use crate::cache::{CacheOutcome, CachedKey, KeyCache, Lookup, LookupError};
use crate::ids::{BoundSubscription, ModelRef, SubscriptionKey};
use crate::key::ApiKey;
use crate::last_used::LastUsedTracker;
use crate::ledger::{Booking, CheckOutcome, Ledger};
use crate::limits::{LimitError, LimitKind, LimitStatus, Limiter, RequestVerdict};
use crate::lookup_budget::Throttled;
use crate::policy::{Model, ModelLookupError, Policy};
use crate::request_path::{CanonicalPath, ModelFreePaths};
use crate::store::{KeyStatus, KeyStore, StoreError};

/// The parts of an HTTP request that the decision reads, borrowed from the adapter's message.
#[derive(Debug, Default, Clone, Copy)]
pub struct CheckInput<'a> {
    /// The `authorization` header as received (Envoy joins repeated headers with ",").
    pub authorization: Option<&'a str>,
    pub x_api_key: Option<&'a str>,
    /// Path with any query string, as Envoy reports it.
    pub path: &'a str,
    /// The route's model, from the ext_authz `context_extensions` key `model` (`ns/name` or
    /// `name`), set by the operator per route: it wins over anything the client sends.
    pub route_model: Option<&'a str>,
    /// The route runs no token meter (ext_authz `context_extensions` `meter: "off"`): the allow
    /// answer carries no identity assertion, which only the meter reads.
    pub route_unmetered: bool,
    /// `x-gateway-model-name`, set by a body-to-header filter ahead of us.
    pub model_header: Option<&'a str>,
    /// The request body, when Envoy is configured to send it.
    pub body: Option<&'a [u8]>,
    /// The downstream client's IP address as Envoy reports it; names the per-peer budget of
    /// lookups for unknown keys.
    pub source_address: Option<&'a str>,
}

/// Which request headers carried credentials, so the adapter strips them before the model sees them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct CredentialHeaders {
    pub authorization: bool,
    pub x_api_key: bool,
}

/// Everything an allow answer is made of, and nothing else. The adapter builds the answer from
/// this alone and memoises answers keyed by it whole, so what the answer reads and what the memo
/// compares cannot drift apart.
#[derive(Debug, Clone)]
pub struct AllowAnswerKey {
    /// The key's record, compared by identity: the key cache replaces the `Arc` whenever the row
    /// is reloaded, so a reloaded key is a new answer.
    pub key: Arc<CachedKey>,
    pub subscription: BoundSubscription,
    pub tier: String,
    pub model: Option<ModelRef>,
    pub credentials: CredentialHeaders,
    /// Whether the answer carries the signed identity assertion for the token meter (not on a
    /// route marked `meter: "off"`).
    pub metered: bool,
}

impl PartialEq for AllowAnswerKey {
    fn eq(&self, other: &Self) -> bool {
        // Destructured so that a new field cannot be left out of the comparison.
        let Self {
            key,
            subscription,
            tier,
            model,
            credentials,
            metered,
        } = self;
        Arc::ptr_eq(key, &other.key)
            && *subscription == other.subscription
            && *tier == other.tier
            && *model == other.model
            && *credentials == other.credentials
            && *metered == other.metered
    }
}

impl Eq for AllowAnswerKey {}

impl std::hash::Hash for AllowAnswerKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // A subset of what `eq` compares (equal keys still hash equal): the record's address
        // already tells nearly every answer apart, and hashing the strings would cost every Check.
        let Self {
            key,
            subscription: _,
            tier: _,
            model,
            credentials,
            metered,
        } = self;
        std::ptr::hash(Arc::as_ptr(key), state);
        model.hash(state);
        credentials.hash(state);
        metered.hash(state);
    }
}

impl AllowAnswerKey {
    /// What the token meter may charge for this request: Check's signed word on it.
    pub fn identity_assertion(&self, issued_at: i64) -> crate::assertion::IdentityAssertion {
        crate::assertion::IdentityAssertion {
            user: self.key.username.to_string(),
            subscription_key: self
                .selected_subscription_key()
                .map(SubscriptionKey::into_string)
                .unwrap_or_default(),
            model: self
                .model
                .as_ref()
                .map(ModelRef::to_string)
                .unwrap_or_default(),
            key_id: self.key.id.to_string(),
            issued_at,
        }
    }

    /// Upstream's rate-limit key of the bound subscription and the model; `None` without a
    /// model or when the policy does not know the subscription.
    pub fn selected_subscription_key(&self) -> Option<SubscriptionKey> {
        Some(SubscriptionKey::new(
            self.subscription.known()?,
            self.model.as_ref()?,
        ))
    }
}

/// Everything the adapter stamps on an allowed request.
#[derive(Debug, Clone)]
pub struct Allowed {
    /// The part of the answer that repeats for the same key, model and policy.
    pub answer: AllowAnswerKey,
    /// Where the request stands against its limits (this one counted), when limits apply and
    /// the counter store answered.
    pub limits: Option<LimitStatus>,
}

/// The route-model key of ext_authz `context_extensions` (e.g. `model: llm/qwen3`).
pub const CONTEXT_EXTENSION_MODEL: &str = "model";

/// The key of ext_authz `context_extensions` that marks a route without the token meter
/// (`meter: "off"`); any other value, or none, means the meter may run.
pub const CONTEXT_EXTENSION_METER: &str = "meter";

/// How a denial is answered; each maps to one HTTP status and OpenAI error shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenialKind {
    /// 400 `invalid_request_error`, with the reason as the code.
    BadRequest,
    /// 401 `invalid_request_error` / `invalid_api_key`.
    Unauthenticated,
    /// 403 `permission_error` / `access_denied`.
    Forbidden,
    /// 404 `model_not_found`.
    ModelNotFound,
    /// 429 `rate_limit_error` / `rate_limit_exceeded`, with `retry-after`.
    RateLimited,
}

/// Why a request was denied; the `as_str` form goes in `x-ext-auth-reason` and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyReason {
    MissingCredentials,
    MalformedAuthorization,
    ConflictingCredentials,
    InvalidKeyFormat,
    KeyNotFound,
    KeyRevoked,
    KeyExpired,
    NoSubscriptionBound,
    SubscriptionNotFound,
    SubscriptionAccessDenied,
    ModelNotInSubscription,
    AuthPolicyDenied,
    ModelNotFound,
    ModelAmbiguous,
    RequestRateLimited,
    TokenRateLimited,
    NonCanonicalPath,
    ModelMismatch,
    ModelNotSpecified,
    UnknownKeyRateLimited,
    /// The client sent an identity header only the gateway sets (`x-maas-username`, ...).
    ForgedIdentityHeader,
    SpendLimitExceeded,
}

impl DenyReason {
    pub const COUNT: usize = 22;

    /// Every reason, in [`DenyReason::index`] order.
    pub const ALL: [DenyReason; Self::COUNT] = [
        DenyReason::MissingCredentials,
        DenyReason::MalformedAuthorization,
        DenyReason::ConflictingCredentials,
        DenyReason::InvalidKeyFormat,
        DenyReason::KeyNotFound,
        DenyReason::KeyRevoked,
        DenyReason::KeyExpired,
        DenyReason::NoSubscriptionBound,
        DenyReason::SubscriptionNotFound,
        DenyReason::SubscriptionAccessDenied,
        DenyReason::ModelNotInSubscription,
        DenyReason::AuthPolicyDenied,
        DenyReason::ModelNotFound,
        DenyReason::ModelAmbiguous,
        DenyReason::RequestRateLimited,
        DenyReason::TokenRateLimited,
        DenyReason::NonCanonicalPath,
        DenyReason::ModelMismatch,
        DenyReason::ModelNotSpecified,
        DenyReason::UnknownKeyRateLimited,
        DenyReason::ForgedIdentityHeader,
        DenyReason::SpendLimitExceeded,
    ];

    /// The reason's own slot in `0..COUNT`, by an exhaustive match (never the declaration
    /// order), so a new reason must be given one.
    pub fn index(self) -> usize {
        match self {
            DenyReason::MissingCredentials => 0,
            DenyReason::MalformedAuthorization => 1,
            DenyReason::ConflictingCredentials => 2,
            DenyReason::InvalidKeyFormat => 3,
            DenyReason::KeyNotFound => 4,
            DenyReason::KeyRevoked => 5,
            DenyReason::KeyExpired => 6,
            DenyReason::NoSubscriptionBound => 7,
            DenyReason::SubscriptionNotFound => 8,
            DenyReason::SubscriptionAccessDenied => 9,
            DenyReason::ModelNotInSubscription => 10,
            DenyReason::AuthPolicyDenied => 11,
            DenyReason::ModelNotFound => 12,
            DenyReason::ModelAmbiguous => 13,
            DenyReason::RequestRateLimited => 14,
            DenyReason::TokenRateLimited => 15,
            DenyReason::NonCanonicalPath => 16,
            DenyReason::ModelMismatch => 17,
            DenyReason::ModelNotSpecified => 18,
            DenyReason::UnknownKeyRateLimited => 19,
            DenyReason::ForgedIdentityHeader => 20,
            DenyReason::SpendLimitExceeded => 21,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::MissingCredentials => "missing_credentials",
            DenyReason::MalformedAuthorization => "malformed_authorization",
            DenyReason::ConflictingCredentials => "conflicting_credentials",
            DenyReason::InvalidKeyFormat => "invalid_key_format",
            DenyReason::KeyNotFound => "key_not_found",
            DenyReason::KeyRevoked => "key_revoked",
            DenyReason::KeyExpired => "key_expired",
            DenyReason::NoSubscriptionBound => "no_subscription_bound",
            DenyReason::SubscriptionNotFound => "subscription_not_found",
            DenyReason::SubscriptionAccessDenied => "subscription_access_denied",
            DenyReason::ModelNotInSubscription => "model_not_in_subscription",
            DenyReason::AuthPolicyDenied => "auth_policy_denied",
            DenyReason::ModelNotFound => "model_not_found",
            DenyReason::ModelAmbiguous => "model_ambiguous",
            DenyReason::RequestRateLimited => "request_rate_limited",
            DenyReason::TokenRateLimited => "token_rate_limited",
            DenyReason::NonCanonicalPath => "non_canonical_path",
            DenyReason::ModelMismatch => "model_mismatch",
            DenyReason::ModelNotSpecified => "model_not_specified",
            DenyReason::UnknownKeyRateLimited => "unknown_key_rate_limited",
            DenyReason::ForgedIdentityHeader => "forged_identity_header",
            DenyReason::SpendLimitExceeded => "spend_limit_exceeded",
        }
    }

    pub fn kind(self) -> DenialKind {
        match self {
            DenyReason::MissingCredentials
            | DenyReason::MalformedAuthorization
            | DenyReason::ConflictingCredentials
            | DenyReason::InvalidKeyFormat
            | DenyReason::KeyNotFound
            | DenyReason::KeyRevoked
            | DenyReason::KeyExpired
            | DenyReason::NoSubscriptionBound => DenialKind::Unauthenticated,
            DenyReason::SubscriptionNotFound
            | DenyReason::SubscriptionAccessDenied
            | DenyReason::ModelNotInSubscription
            | DenyReason::AuthPolicyDenied
            | DenyReason::ForgedIdentityHeader => DenialKind::Forbidden,
            DenyReason::ModelNotFound
            | DenyReason::ModelAmbiguous
            | DenyReason::ModelNotSpecified => DenialKind::ModelNotFound,
            DenyReason::NonCanonicalPath | DenyReason::ModelMismatch => DenialKind::BadRequest,
            DenyReason::RequestRateLimited
            | DenyReason::TokenRateLimited
            | DenyReason::UnknownKeyRateLimited
            | DenyReason::SpendLimitExceeded => DenialKind::RateLimited,
        }
    }

    /// The message shown to the client. Never contains the key.
    pub fn message(self) -> &'static str {
        match self {
            DenyReason::MissingCredentials => {
                "Missing API key: send it as 'Authorization: Bearer sk-oai-...'"
            }
            DenyReason::MalformedAuthorization => {
                "Invalid authentication token: the Authorization header must be 'Bearer <key>'"
            }
            DenyReason::ConflictingCredentials => {
                "Invalid authentication token: Authorization and x-api-key carry different keys"
            }
            DenyReason::InvalidKeyFormat | DenyReason::KeyNotFound => {
                "Invalid authentication token"
            }
            DenyReason::KeyRevoked => "Invalid authentication token: the API key has been revoked",
            DenyReason::KeyExpired => "Invalid authentication token: the API key has expired",
            DenyReason::NoSubscriptionBound => {
                "Invalid authentication token: the API key has no subscription bound; create a new key"
            }
            DenyReason::SubscriptionNotFound
            | DenyReason::SubscriptionAccessDenied
            | DenyReason::ModelNotInSubscription
            | DenyReason::AuthPolicyDenied => "Insufficient permissions for this model",
            DenyReason::ModelNotFound => "The requested model does not exist",
            DenyReason::ModelAmbiguous => {
                "The model name exists in several namespaces: address it as /<namespace>/<name>/v1/..."
            }
            // The seed's exact message.
            DenyReason::RequestRateLimited | DenyReason::TokenRateLimited => "Rate limit exceeded",
            DenyReason::NonCanonicalPath => {
                "The request path is not canonical (send /<model>/v1/... as is, without \
                 percent-encodings a server would decode, dot segments or '//')"
            }
            DenyReason::ModelMismatch => {
                "The request names two different models: the route or path, the \
                 x-gateway-model-name header and the body's 'model' must name the same model"
            }
            DenyReason::ModelNotSpecified => {
                "This request names no model: call /<model>/v1/... or /<namespace>/<model>/v1/..."
            }
            // Says nothing of whether the key exists: it was not looked up.
            DenyReason::UnknownKeyRateLimited => {
                "Rate limit exceeded: too many requests with API keys this gateway has not seen \
                 recently; retry after the number of seconds in retry-after"
            }
            DenyReason::ForgedIdentityHeader => {
                "Identity headers (x-maas-username, x-maas-group, ...) are set by the gateway; \
                 remove them from the request"
            }
            DenyReason::SpendLimitExceeded => {
                "Spend limit exceeded: this subscription's spending cap for the model is reached; \
                 retry after the number of seconds in retry-after"
            }
        }
    }
}

/// A denial with what the adapter needs to answer it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denied {
    pub reason: DenyReason,
    /// A more precise message than the reason's own (e.g. which rule a path breaks).
    pub detail: Option<&'static str>,
    /// For rate limits: until the full window resets.
    pub retry_after: Option<std::time::Duration>,
    /// For rate limits: where the request stands (nothing was counted).
    pub limits: Option<LimitStatus>,
}

impl Denied {
    pub fn new(reason: DenyReason) -> Self {
        Self {
            reason,
            detail: None,
            retry_after: None,
            limits: None,
        }
    }

    /// The client's message: the reason's, followed by the detail when there is one.
    pub fn message(&self) -> std::borrow::Cow<'static, str> {
        match self.detail {
            Some(detail) => format!("{}: {detail}", self.reason.message()).into(),
            None => self.reason.message().into(),
        }
    }
}

/// One value per [`DenyReason`], found by the reason itself.
#[derive(Debug, Clone)]
pub struct PerDenyReason<T>([T; DenyReason::COUNT]);

impl<T> PerDenyReason<T> {
    pub fn new(mut value: impl FnMut(DenyReason) -> T) -> Self {
        // `ALL` is in `index` order (a test holds the two together).
        Self(std::array::from_fn(|slot| value(DenyReason::ALL[slot])))
    }

    pub fn get(&self, reason: DenyReason) -> &T {
        &self.0[reason.index()]
    }
}

/// The outcome of Check when the service could decide.
#[derive(Debug, Clone)]
pub enum Decision {
    Allow(Box<Allowed>),
    Deny(Denied),
}

/// The service could not decide: Envoy's failure mode must apply, never an allow.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("key store unavailable: {0}")]
    StoreUnavailable(#[source] StoreError),
    /// The counter store failed and the limits are configured to refuse rather than guess.
    #[error("limits unavailable: {0}")]
    LimitsUnavailable(#[source] LimitError),
    /// The key is cached nowhere and the budget of lookups for unknown keys is spent: it was
    /// not looked up. Check answers it as a 429 denial; `validate_key` returns it.
    #[error("key not looked up: {0}")]
    UnknownKeyThrottled(#[source] Throttled),
}

impl From<LookupError> for CheckError {
    fn from(error: LookupError) -> Self {
        match error {
            LookupError::Store(error) => CheckError::StoreUnavailable(error),
            LookupError::Throttled(throttled) => CheckError::UnknownKeyThrottled(throttled),
        }
    }
}

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

/// Observes each decision's cache path (implemented by the metrics module).
pub trait CheckObserver: Send + Sync + 'static {
    fn observe_cache(&self, outcome: CacheOutcome);
}

impl CheckObserver for () {
    fn observe_cache(&self, _: CacheOutcome) {}
}

/// Decides Check requests from the key store, its cache and the current policy.
pub struct Authorizer<S> {
    store: Arc<S>,
    cache: KeyCache,
    policy: Arc<ArcSwap<Policy>>,
    observer: Arc<dyn CheckObserver>,
    last_used: Option<Arc<LastUsedTracker>>,
    limiter: Option<Arc<Limiter>>,
    model_free: ModelFreePaths,
    ledger: Option<Arc<Ledger>>,
}

impl<S> std::fmt::Debug for Authorizer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer")
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

impl<S: KeyStore> Authorizer<S> {
    pub fn new(
        store: Arc<S>,
        cache: KeyCache,
        policy: Arc<ArcSwap<Policy>>,
        observer: Arc<dyn CheckObserver>,
    ) -> Self {
        Self {
            store,
            cache,
            policy,
            observer,
            last_used: None,
            limiter: None,
            model_free: ModelFreePaths::default(),
            ledger: None,
        }
    }

    /// Books every counted request (allowed, or refused for a limit) in the usage ledger: one
    /// in-memory map update, written behind by a background task.
    pub fn with_ledger(mut self, ledger: Arc<Ledger>) -> Self {
        self.ledger = Some(ledger);
        self
    }

    fn book(
        &self,
        now: DateTime<Utc>,
        record: &CachedKey,
        counted: Counted<'_>,
        outcome: CheckOutcome,
    ) {
        if let Some(ledger) = &self.ledger {
            let booking = Booking {
                user: &record.username,
                key_id: &record.id.to_string(),
                subscription: &counted.subscription.qualified_name(),
                attributes: Some(counted.subscription),
                model: &counted.model.qualified_name(),
                key_labels: record.labels(),
            };
            ledger.record_check(now, &booking, outcome);
        }
    }

    /// Paths a valid key may call without naming a model (`MAAS_AUTHZ_MODEL_FREE_PATHS`).
    pub fn with_model_free_paths(mut self, paths: ModelFreePaths) -> Self {
        self.model_free = paths;
        self
    }

    /// Enforces the policy's request and token limits after every allow decision.
    pub fn with_limiter(mut self, limiter: Arc<Limiter>) -> Self {
        self.limiter = Some(limiter);
        self
    }

    /// Notes every accepted key use in `tracker`, for the `last_used_at` write-behind.
    pub fn with_last_used(mut self, tracker: Arc<LastUsedTracker>) -> Self {
        self.last_used = Some(tracker);
        self
    }

    fn note_use(&self, record: &CachedKey, now: DateTime<Utc>) {
        if let Some(tracker) = &self.last_used {
            tracker.record(record.id, now);
        }
    }

    pub fn cache(&self) -> &KeyCache {
        &self.cache
    }

    /// Decides one request at `now`.
    pub async fn check(
        &self,
        input: &CheckInput<'_>,
        now: DateTime<Utc>,
    ) -> Result<Decision, CheckError> {
        let deny = |reason| Ok(Decision::Deny(Denied::new(reason)));
        // Before any key work: a path a backend could read differently is never authorized.
        let path = match CanonicalPath::parse(input.path) {
            Ok(path) => path,
            Err(why) => {
                return Ok(Decision::Deny(Denied {
                    detail: Some(why.message()),
                    ..Denied::new(DenyReason::NonCanonicalPath)
                }));
            }
        };
        let (token, credentials) = match extract_credential(input) {
            Ok(found) => found,
            Err(reason) => return deny(reason),
        };
        // Format first: junk costs no hashing, cache or database work.
        let key = match ApiKey::parse(token) {
            Ok(key) => key,
            Err(_) => return deny(DenyReason::InvalidKeyFormat),
        };
        let record = match self.lookup(&key, input.source_address).await {
            Ok(Some(record)) => record,
            Ok(None) => return deny(DenyReason::KeyNotFound),
            Err(CheckError::UnknownKeyThrottled(throttled)) => {
                return Ok(Decision::Deny(Denied {
                    retry_after: Some(throttled.retry_after),
                    ..Denied::new(DenyReason::UnknownKeyRateLimited)
                }));
            }
            Err(error) => return Err(error),
        };
        match record.effective_status(now) {
            KeyStatus::Active => {}
            KeyStatus::Revoked => return deny(DenyReason::KeyRevoked),
            KeyStatus::Expired => return deny(DenyReason::KeyExpired),
        }
        if record.subscription.trim().is_empty() {
            return deny(DenyReason::NoSubscriptionBound);
        }
        let policy = self.policy.load();
        match authorize_model(&policy, &record, input, &path, &self.model_free) {
            Ok((model, subscription, limits)) => {
                self.note_use(&record, now);
                let (subscription, tier) = match subscription {
                    Some(sub) => (BoundSubscription::Known(sub.reference()), sub.tier.clone()),
                    None => (
                        BoundSubscription::Unresolved(record.subscription.to_string()),
                        record.subscription.to_string(),
                    ),
                };
                let mut allowed = Allowed {
                    answer: AllowAnswerKey {
                        key: record,
                        subscription,
                        tier,
                        model,
                        credentials,
                        metered: !input.route_unmetered,
                    },
                    limits: None,
                };
                // Model discovery under a model route is free, as `/v1/models` is.
                let counted = limits.filter(|_| !path.is_model_listing());
                if let Some(counted) = counted {
                    if let Some(limiter) = &self.limiter
                        && let Some(denied) = apply_limits(limiter, &mut allowed, counted).await?
                    {
                        self.book(now, &allowed.answer.key, counted, CheckOutcome::RateLimited);
                        return Ok(Decision::Deny(denied));
                    }
                    self.book(now, &allowed.answer.key, counted, CheckOutcome::Allowed);
                }
                Ok(Decision::Allow(Box::new(allowed)))
            }
            Err(reason) => deny(reason),
        }
    }

    /// Upstream's validate contract: the key alone, no model. Shares the cache with Check.
    pub async fn validate_key(
        &self,
        text: &str,
        now: DateTime<Utc>,
    ) -> Result<KeyValidity, CheckError> {
        let Ok(key) = ApiKey::parse(text) else {
            return Ok(KeyValidity::Invalid(InvalidKey::Format));
        };
        let Some(record) = self.lookup(&key, None).await? else {
            return Ok(KeyValidity::Invalid(InvalidKey::NotFound));
        };
        if record.effective_status(now) != KeyStatus::Active {
            return Ok(KeyValidity::Invalid(InvalidKey::RevokedOrExpired));
        }
        if record.subscription.trim().is_empty() {
            return Ok(KeyValidity::Invalid(InvalidKey::NoSubscription));
        }
        self.note_use(&record, now);
        Ok(KeyValidity::Valid(record))
    }

    async fn lookup(
        &self,
        key: &ApiKey,
        peer: Option<&str>,
    ) -> Result<Option<Arc<CachedKey>>, CheckError> {
        let hash = key.hash();
        let (lookup, outcome) = self.cache.lookup(&hash, self.store.as_ref(), peer).await?;
        self.observer.observe_cache(outcome);
        Ok(match lookup {
            Lookup::Found(record) if record.key_hash.ct_eq(&hash) => Some(record),
            Lookup::Found(_) | Lookup::NotFound => None,
        })
    }
}

/// Counts the allowed request against its limits (only requests that name a model get here:
/// `/v1/models` and the key API never do). `Some` is the 429 to answer instead.
async fn apply_limits(
    limiter: &Limiter,
    allowed: &mut Allowed,
    counted: Counted<'_>,
) -> Result<Option<Denied>, CheckError> {
    let selected = counted.subscription.selected_key(counted.model);
    let verdict = limiter
        .check_request(&allowed.answer.key.username, &selected, counted.limits)
        .await
        .map_err(CheckError::LimitsUnavailable)?;
    Ok(match verdict {
        RequestVerdict::Within(status) => {
            allowed.limits = Some(status);
            None
        }
        RequestVerdict::Uncounted => None,
        RequestVerdict::Limited {
            kind,
            retry_after,
            status,
        } => Some(Denied {
            detail: None,
            reason: match kind {
                LimitKind::Requests => DenyReason::RequestRateLimited,
                LimitKind::Tokens => DenyReason::TokenRateLimited,
                LimitKind::Spend => DenyReason::SpendLimitExceeded,
            },
            retry_after: Some(retry_after),
            limits: Some(status),
        }),
    })
}

/// The answer of [`Authorizer::validate_key`].
#[derive(Debug, Clone)]
pub enum KeyValidity {
    Valid(Arc<CachedKey>),
    Invalid(InvalidKey),
}

/// Why a key is not valid, with upstream's exact reason strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidKey {
    Format,
    NotFound,
    RevokedOrExpired,
    NoSubscription,
}

impl InvalidKey {
    pub fn upstream_reason(self) -> &'static str {
        match self {
            InvalidKey::Format => "invalid key format",
            InvalidKey::NotFound => "key not found",
            InvalidKey::RevokedOrExpired => "key revoked or expired",
            InvalidKey::NoSubscription => "key has no subscription bound",
        }
    }
}

/// Picks the key from `Authorization: Bearer …`, else `x-api-key`.
fn extract_credential<'a>(
    input: &CheckInput<'a>,
) -> Result<(&'a str, CredentialHeaders), DenyReason> {
    let x_api_key = input.x_api_key.map(str::trim).filter(|v| !v.is_empty());
    let credentials = CredentialHeaders {
        authorization: input.authorization.is_some(),
        x_api_key: input.x_api_key.is_some(),
    };
    match input.authorization {
        Some(header) => {
            let token = match bearer_token(header) {
                Ok(token) => token,
                // No credential this service issues has a blank inside: the key parser refuses
                // it below (`invalid_key_format`), after the conflict check, as it always has.
                Err(BearerError::BlankInToken { token }) => token,
                Err(BearerError::Blank | BearerError::NotBearer | BearerError::BlankToken) => {
                    return Err(DenyReason::MalformedAuthorization);
                }
            };
            match x_api_key {
                Some(other) if !same_secret(other, token) => {
                    Err(DenyReason::ConflictingCredentials)
                }
                _ => Ok((token, credentials)),
            }
        }
        None => x_api_key
            .map(|token| (token, credentials))
            .ok_or(DenyReason::MissingCredentials),
    }
}

/// Compares two client-sent keys in constant time (for equal lengths), as for any secret.
fn same_secret(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The body's top-level `model` string, if the body is a JSON object that has one. A body Check
/// cannot read (partial, not JSON) names nothing here: the token meter reads the whole body and
/// refuses one whose model disagrees.
fn model_from_body(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct ModelField {
        model: Option<String>,
    }
    serde_json::from_slice::<ModelField>(body)
        .ok()
        .and_then(|field| field.model)
}

/// What an authorized request resolved to: the model (none on a model-free path), the key's
/// subscription, and what its limits count when it names a model.
type Authorized<'p> = (
    Option<ModelRef>,
    Option<&'p crate::policy::Subscription>,
    Option<Counted<'p>>,
);

/// The subscription and model a request is counted under, with that pair's limits.
#[derive(Debug, Clone, Copy)]
struct Counted<'p> {
    subscription: &'p crate::policy::Subscription,
    model: &'p Model,
    limits: &'p crate::policy::SubscriptionModel,
}

/// The subscription must contain the model, be accessible to the key's snapshot, and an auth
/// policy must grant it.
fn authorize_model<'p>(
    policy: &'p Policy,
    record: &CachedKey,
    input: &CheckInput<'_>,
    path: &CanonicalPath<'_>,
    model_free: &ModelFreePaths,
) -> Result<Authorized<'p>, DenyReason> {
    let subscription = policy.find_subscription(&record.subscription);
    let Some(model) = requested_model(policy, input, path)? else {
        return if model_free.contains(path) {
            Ok((None, subscription, None))
        } else {
            Err(DenyReason::ModelNotSpecified)
        };
    };
    let subscription = subscription.ok_or(DenyReason::SubscriptionNotFound)?;
    let Some(entry) = policy.subscription_model(subscription, model) else {
        return Err(DenyReason::ModelNotInSubscription);
    };
    if !policy.subscription_accessible(subscription, &record.username, &record.groups) {
        return Err(DenyReason::SubscriptionAccessDenied);
    }
    if !policy.auth_policy_allows(model, &record.username, &record.groups) {
        return Err(DenyReason::AuthPolicyDenied);
    }
    let counted = Counted {
        subscription,
        model,
        limits: entry,
    };
    Ok((Some(model.reference()), Some(subscription), Some(counted)))
}

fn non_empty(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
}

/// How a source names a model. The operator's route and the path may qualify it
/// (`<namespace>/<name>`, the namespace of the MaaSModelRef or of its backend); a header or a
/// body `model` is read by model servers as a served-model name, so only that exact name counts:
/// `llm/qwen3` in a body would be an unknown model to vLLM, or another one to a lax server.
#[derive(Debug, Clone, Copy)]
enum ModelName<'a> {
    Qualified(Option<&'a str>, &'a str),
    Served(&'a str),
}

impl ModelName<'_> {
    fn find(self, policy: &Policy) -> Result<&Model, ModelLookupError> {
        match self {
            ModelName::Qualified(namespace, name) => policy.find_model(namespace, name),
            ModelName::Served(name) if name.contains('/') => Err(ModelLookupError::NotFound),
            ModelName::Served(name) => policy.find_model(None, name),
        }
    }

    fn names(self, model: &Model) -> bool {
        match self {
            ModelName::Qualified(namespace, name) => model.answers_to(namespace, name),
            ModelName::Served(name) => model.is_served_as(name),
        }
    }
}

/// The one model the request names, from its first source in order of trust (route, path,
/// header, body); every later source must name the same model. `None` when no source names one.
fn requested_model<'p>(
    policy: &'p Policy,
    input: &CheckInput<'_>,
    path: &CanonicalPath<'_>,
) -> Result<Option<&'p Model>, DenyReason> {
    let body_model = input.body.and_then(model_from_body);
    let sources = [
        non_empty(input.route_model).map(|name| ModelName::Qualified(None, name)),
        path.model()
            .map(|m| ModelName::Qualified(m.namespace, m.name)),
        non_empty(input.model_header).map(ModelName::Served),
        body_model.as_deref().map(ModelName::Served),
    ];
    let mut chosen: Option<&Model> = None;
    for named in sources.into_iter().flatten() {
        match chosen {
            None => {
                chosen = Some(named.find(policy).map_err(|error| match error {
                    ModelLookupError::NotFound => DenyReason::ModelNotFound,
                    ModelLookupError::Ambiguous => DenyReason::ModelAmbiguous,
                })?);
            }
            Some(model) if named.names(model) => {}
            Some(_) => return Err(DenyReason::ModelMismatch),
        }
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credential_of(authorization: &str) -> Result<&str, DenyReason> {
        let input = CheckInput {
            authorization: Some(authorization),
            ..Default::default()
        };
        extract_credential(&input).map(|(token, _)| token)
    }

    #[test]
    fn check_reads_the_authorization_header_by_the_one_bearer_rule() {
        assert_eq!(credential_of("Bearer abc"), Ok("abc"));
        assert_eq!(credential_of("bearer   abc  "), Ok("abc"));
        assert_eq!(
            credential_of("Bearer "),
            Err(DenyReason::MalformedAuthorization)
        );
        assert_eq!(
            credential_of("Bearer"),
            Err(DenyReason::MalformedAuthorization)
        );
        assert_eq!(
            credential_of("Basic abc"),
            Err(DenyReason::MalformedAuthorization)
        );
        assert_eq!(
            credential_of("abc"),
            Err(DenyReason::MalformedAuthorization)
        );
        assert_eq!(credential_of(""), Err(DenyReason::MalformedAuthorization));
    }

    #[test]
    fn a_bearer_token_with_a_blank_inside_goes_on_to_the_key_parser() {
        // Envoy joins repeated headers with ",": the key parser refuses the joined text.
        assert_eq!(
            credential_of("Bearer sk-oai-a_b,Bearer sk-oai-c_d"),
            Ok("sk-oai-a_b,Bearer sk-oai-c_d")
        );
        let conflicting = CheckInput {
            authorization: Some("Bearer a b"),
            x_api_key: Some("c"),
            ..Default::default()
        };
        assert_eq!(
            extract_credential(&conflicting).err(),
            Some(DenyReason::ConflictingCredentials)
        );
    }

    #[test]
    fn credentials_prefer_authorization_and_refuse_conflicts() {
        let both_same = CheckInput {
            authorization: Some("Bearer k"),
            x_api_key: Some("k"),
            ..Default::default()
        };
        assert_eq!(extract_credential(&both_same).map(|c| c.0), Ok("k"));
        let conflict = CheckInput {
            authorization: Some("Bearer k"),
            x_api_key: Some("j"),
            ..Default::default()
        };
        assert_eq!(
            extract_credential(&conflict).err(),
            Some(DenyReason::ConflictingCredentials)
        );
        let only_header = CheckInput {
            x_api_key: Some(" k "),
            ..Default::default()
        };
        assert_eq!(extract_credential(&only_header).map(|c| c.0), Ok("k"));
        let none = CheckInput::default();
        assert_eq!(
            extract_credential(&none).err(),
            Some(DenyReason::MissingCredentials)
        );
        let empty_bearer = CheckInput {
            authorization: Some("Bearer "),
            ..Default::default()
        };
        assert_eq!(
            extract_credential(&empty_bearer).err(),
            Some(DenyReason::MalformedAuthorization)
        );
    }

    #[test]
    fn model_from_body_reads_only_a_top_level_string() {
        assert_eq!(
            model_from_body(br#"{"model":"qwen3","messages":[]}"#),
            Some("qwen3".into())
        );
        assert_eq!(model_from_body(br#"{"model":3}"#), None);
        assert_eq!(model_from_body(b"not json"), None);
        assert_eq!(model_from_body(br#"{"messages":[{"model":"x"}]}"#), None);
    }

    #[test]
    fn every_reason_is_listed_once_at_its_own_index() {
        for (slot, reason) in DenyReason::ALL.into_iter().enumerate() {
            assert_eq!(reason.index(), slot, "{reason:?} is out of place in ALL");
        }
        let per_reason = PerDenyReason::new(DenyReason::as_str);
        for reason in DenyReason::ALL {
            assert_eq!(*per_reason.get(reason), reason.as_str());
        }
    }

    #[test]
    fn every_reason_has_a_distinct_label() {
        let labels: std::collections::HashSet<_> =
            DenyReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), DenyReason::ALL.len());
    }
}
