//! Request and token limits per user, subscription and model: fixed windows counted in a
//! [`CounterStore`] (in-process or Redis). Pure domain: no gRPC, HTTP or Envoy types.
//!
//! Counters are scoped exactly like upstream's Limitador counters: one per user, per
//! subscription, per model (`selected_subscription_key`), shared by all of the user's keys.
//! Check counts a request against `requestRateLimits` and compares (without adding) the token
//! counters against `tokenRateLimits`, in one atomic store operation; the token meter adds the
//! tokens a response reports through [`Limiter::charge_tokens`].

mod redis;
mod store;
mod window;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

pub use self::redis::{
    RedisCounterStore, RedisEndpoint, RedisTlsError, RedisUrlError, check_redis_url,
};
pub use store::{
    Acquired, CounterCharge, CounterError, CounterSpec, CounterStore, DEFAULT_MAX_COUNTERS,
    InProcessCounterStore,
};
pub use window::{FixedWindow, retry_after_seconds};

use crate::clock::{Clock, SystemClock};

use crate::ids::SubscriptionKey;
use crate::policy::{Policy, RateLimit, SubscriptionModel};
use crate::usage::{TokenSink, UsageSubject};

/// What a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    Requests,
    Tokens,
}

impl LimitKind {
    pub const ALL: [LimitKind; 2] = [LimitKind::Requests, LimitKind::Tokens];

    /// `requests` or `tokens`: the suffix of the `x-ratelimit-*` headers and the metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::Requests => "requests",
            LimitKind::Tokens => "tokens",
        }
    }

    fn key_tag(self) -> &'static str {
        match self {
            LimitKind::Requests => "r",
            LimitKind::Tokens => "t",
        }
    }
}

/// What to do with a request when the counter store does not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnStoreError {
    /// Let it through uncounted (the key and the model were already checked): quotas are
    /// protection against overuse, not access control, so an outage of the counter store should
    /// not take inference down with it. Upstream's Limitador defaults to the same.
    #[default]
    Allow,
    /// Refuse it as "service unavailable" (the gateway's failure mode), for operators to whom
    /// an unmetered request costs more than a refused one.
    Deny,
}

/// Where one window of one limit stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowStatus {
    pub limit: u64,
    pub used: u64,
    pub window: Duration,
    /// Until the window ends and `used` starts over at 0.
    pub reset_after: Duration,
}

impl WindowStatus {
    pub fn remaining(&self) -> u64 {
        self.limit.saturating_sub(self.used)
    }
}

/// The tightest window of each kind, for the `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LimitStatus {
    pub requests: Option<WindowStatus>,
    pub tokens: Option<WindowStatus>,
}

/// The limits' answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestVerdict {
    /// Counted and within every limit.
    Within(LimitStatus),
    /// Over a limit: refuse with 429 and `retry-after`. Nothing was counted.
    Limited {
        kind: LimitKind,
        retry_after: Duration,
        status: LimitStatus,
    },
    /// The counter store failed and [`OnStoreError::Allow`] lets the request through uncounted.
    Uncounted,
}

/// The limits could not be applied, and the configuration says to refuse rather than guess.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    /// Transient: the counter store did not answer.
    #[error(transparent)]
    Store(#[from] CounterError),
}

impl LimitError {
    pub fn is_transient(&self) -> bool {
        match self {
            LimitError::Store(error) => error.is_transient(),
        }
    }
}

/// One window of `GET /v1/usage`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageWindow {
    pub kind: LimitKind,
    pub status: WindowStatus,
}

/// Observes limit outcomes (implemented by the metrics module).
pub trait LimitObserver: Send + Sync + 'static {
    fn observe_limited(&self, kind: LimitKind);
    fn observe_store_error(&self);
}

impl LimitObserver for () {
    fn observe_limited(&self, _: LimitKind) {}
    fn observe_store_error(&self) {}
}

/// Applies the policy's limits to counters in a [`CounterStore`].
pub struct Limiter {
    store: Arc<dyn CounterStore>,
    clock: Arc<dyn Clock>,
    policy: Arc<ArcSwap<Policy>>,
    on_store_error: OnStoreError,
    observer: Arc<dyn LimitObserver>,
    key_prefix: String,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("store", &self.store.kind())
            .field("on_store_error", &self.on_store_error)
            .field("key_prefix", &self.key_prefix)
            .finish_non_exhaustive()
    }
}

/// Default prefix of counter keys, so that a shared Redis can tell ours apart.
pub const DEFAULT_KEY_PREFIX: &str = "maas-authz:";

impl Limiter {
    pub fn new(store: Arc<dyn CounterStore>, policy: Arc<ArcSwap<Policy>>) -> Self {
        Self {
            store,
            clock: Arc::new(SystemClock),
            policy,
            on_store_error: OnStoreError::default(),
            observer: Arc::new(()),
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
        }
    }

    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub fn with_on_store_error(mut self, on_store_error: OnStoreError) -> Self {
        self.on_store_error = on_store_error;
        self
    }

    pub fn with_observer(mut self, observer: Arc<dyn LimitObserver>) -> Self {
        self.observer = observer;
        self
    }

    pub fn with_key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    pub fn on_store_error(&self) -> OnStoreError {
        self.on_store_error
    }

    /// `in-process` or `redis`.
    pub fn store_kind(&self) -> &'static str {
        self.store.kind()
    }

    /// Whether the counter store answers.
    pub async fn ping(&self) -> Result<(), CounterError> {
        self.store.ping().await
    }

    /// Counts one request of `user` on `selected_subscription_key` against `limits`' request
    /// windows and compares its token windows, in one atomic store operation.
    pub async fn check_request(
        &self,
        user: &str,
        selected_subscription_key: &SubscriptionKey,
        limits: &SubscriptionModel,
    ) -> Result<RequestVerdict, LimitError> {
        if limits.request_limits.is_empty() && limits.token_limits.is_empty() {
            return Ok(RequestVerdict::Within(LimitStatus::default()));
        }
        let now = self.clock.now_millis();
        let owner = self.owner(user, selected_subscription_key);
        let windows = windows_at(limits, now);
        let specs: Vec<CounterSpec> = windows
            .iter()
            .map(|(kind, limit, window)| CounterSpec {
                key: counter_key(&owner, *kind, window),
                limit: limit.limit,
                // A request needs one request slot, and at least one token left to spend.
                cost: 1,
                add: u64::from(*kind == LimitKind::Requests),
                expires_at_millis: window.end_millis(),
            })
            .collect();
        let acquired = match self.store.acquire(&specs, now).await {
            Ok(acquired) => acquired,
            Err(error) => return self.store_failed(error).map(|()| RequestVerdict::Uncounted),
        };
        let statuses: Vec<(LimitKind, WindowStatus)> = windows
            .iter()
            .zip(&acquired.values)
            .map(|((kind, limit, window), used)| {
                (
                    *kind,
                    WindowStatus {
                        limit: limit.limit,
                        used: *used,
                        window: limit.window,
                        reset_after: window.reset_after(now),
                    },
                )
            })
            .collect();
        let status = tightest(&statuses);
        if acquired.admitted {
            return Ok(RequestVerdict::Within(status));
        }
        // Every full window must reset before a retry can pass: wait for the last of them.
        let full = statuses
            .iter()
            .filter(|(_, window)| window.used.saturating_add(1) > window.limit);
        let kind = if full.clone().any(|(kind, _)| *kind == LimitKind::Requests) {
            LimitKind::Requests
        } else {
            LimitKind::Tokens
        };
        let retry_after = full
            .map(|(_, window)| window.reset_after)
            .max()
            .unwrap_or_default();
        self.observer.observe_limited(kind);
        Ok(RequestVerdict::Limited {
            kind,
            retry_after,
            status,
        })
    }

    /// Adds `tokens` spent by `user` on `selected_subscription_key`
    /// (`<subNs>/<subName>@<modelNs>/<modelName>`, as Check stamps it in dynamic metadata) to
    /// every token window the policy sets there. A key the policy no longer knows (the
    /// subscription or model was removed since Check) has no windows: nothing to charge.
    pub async fn charge_tokens(
        &self,
        user: &str,
        selected_subscription_key: &SubscriptionKey,
        tokens: u64,
    ) -> Result<(), LimitError> {
        if tokens == 0 {
            return Ok(());
        }
        let Some(token_limits) = self.token_limits_of(selected_subscription_key) else {
            tracing::debug!(
                %selected_subscription_key,
                "no token limits for this subscription and model: nothing charged"
            );
            return Ok(());
        };
        let now = self.clock.now_millis();
        let owner = self.owner(user, selected_subscription_key);
        let charges: Vec<CounterCharge> = token_limits
            .iter()
            .map(|limit| {
                let window = FixedWindow::containing(now, limit.window);
                CounterCharge {
                    key: counter_key(&owner, LimitKind::Tokens, &window),
                    amount: tokens,
                    expires_at_millis: window.end_millis(),
                }
            })
            .collect();
        match self.store.add(&charges, now).await {
            Ok(()) => Ok(()),
            Err(error) => {
                self.observer.observe_store_error();
                Err(LimitError::Store(error))
            }
        }
    }

    /// Every window of every entry (selected subscription key and its limits), read in one
    /// store operation without counting anything.
    pub async fn usage(
        &self,
        user: &str,
        entries: &[(SubscriptionKey, &SubscriptionModel)],
    ) -> Result<Vec<Vec<UsageWindow>>, LimitError> {
        let now = self.clock.now_millis();
        let mut keys = Vec::new();
        let mut layout = Vec::with_capacity(entries.len());
        for (selected_subscription_key, limits) in entries {
            let owner = self.owner(user, selected_subscription_key);
            let windows = windows_at(limits, now);
            keys.extend(
                windows
                    .iter()
                    .map(|(kind, _, window)| counter_key(&owner, *kind, window)),
            );
            layout.push(windows);
        }
        let values = match self.store.read(&keys, now).await {
            Ok(values) => values,
            Err(error) => {
                self.observer.observe_store_error();
                return Err(LimitError::Store(error));
            }
        };
        let mut values = values.into_iter();
        Ok(layout
            .into_iter()
            .map(|windows| {
                windows
                    .into_iter()
                    .map(|(kind, limit, window)| UsageWindow {
                        kind,
                        status: WindowStatus {
                            limit: limit.limit,
                            used: values.next().unwrap_or_default(),
                            window: limit.window,
                            reset_after: window.reset_after(now),
                        },
                    })
                    .collect()
            })
            .collect())
    }

    fn store_failed(&self, error: CounterError) -> Result<(), LimitError> {
        self.observer.observe_store_error();
        match self.on_store_error {
            OnStoreError::Allow => {
                // Debug only: an outage would log every request; the metrics and /ready say it.
                tracing::debug!(%error, "counter store unavailable: request allowed uncounted");
                Ok(())
            }
            OnStoreError::Deny => Err(LimitError::Store(error)),
        }
    }

    /// `<prefix>{<len>:<user>|<selected key>}`: the user's length keeps any user name from
    /// running into the subscription key, and the braces make it Redis Cluster's hash tag.
    fn owner(&self, user: &str, selected_subscription_key: &SubscriptionKey) -> String {
        let selected_subscription_key = selected_subscription_key.as_str();
        // Built by hand: this runs on every Check, and `format!` costs more than it looks.
        let mut length = itoa::Buffer::new();
        let length = length.format(user.len());
        let mut owner = String::with_capacity(
            self.key_prefix.len() + length.len() + user.len() + selected_subscription_key.len() + 4,
        );
        owner.push_str(&self.key_prefix);
        owner.push('{');
        owner.push_str(length);
        owner.push(':');
        owner.push_str(user);
        owner.push('|');
        owner.push_str(selected_subscription_key);
        owner.push('}');
        owner
    }

    fn token_limits_of(
        &self,
        selected_subscription_key: &SubscriptionKey,
    ) -> Option<Vec<RateLimit>> {
        let (subscription, model_namespace, model_name) = selected_subscription_key.parts()?;
        let policy = self.policy.load();
        let subscription = policy.find_subscription(subscription)?;
        let model = policy.find_model(Some(model_namespace), model_name).ok()?;
        let limits = policy.subscription_model(subscription, model)?;
        (!limits.token_limits.is_empty()).then(|| limits.token_limits.clone())
    }
}

/// `<owner>:<r|t>:<window ms>:<window index>`: each window has its own key, so a new window starts
/// at 0 without any reset, and the old one simply expires.
fn counter_key(owner: &str, kind: LimitKind, window: &FixedWindow) -> String {
    let mut numbers = itoa::Buffer::new();
    let mut key = String::with_capacity(owner.len() + 32);
    key.push_str(owner);
    key.push(':');
    key.push_str(kind.key_tag());
    key.push(':');
    key.push_str(numbers.format(window.length_millis));
    key.push(':');
    key.push_str(numbers.format(window.index));
    key
}

/// Of each kind, the window with the fewest units left (ties: the one that resets last).
fn tightest(statuses: &[(LimitKind, WindowStatus)]) -> LimitStatus {
    let pick = |wanted: LimitKind| {
        statuses
            .iter()
            .filter(|(kind, _)| *kind == wanted)
            .map(|(_, status)| *status)
            .min_by_key(|status| (status.remaining(), std::cmp::Reverse(status.reset_after)))
    };
    LimitStatus {
        requests: pick(LimitKind::Requests),
        tokens: pick(LimitKind::Tokens),
    }
}

/// Every request and token window of `limits` that contains `now`, requests first.
fn windows_at(limits: &SubscriptionModel, now: u64) -> Vec<(LimitKind, RateLimit, FixedWindow)> {
    let requests = limits
        .request_limits
        .iter()
        .map(|limit| (LimitKind::Requests, *limit));
    let tokens = limits
        .token_limits
        .iter()
        .map(|limit| (LimitKind::Tokens, *limit));
    requests
        .chain(tokens)
        .map(|(kind, limit)| (kind, limit, FixedWindow::containing(now, limit.window)))
        .collect()
}

/// The token meter's sink when limits are on: each metered response is charged to its caller's
/// token windows, then handed to `next` (the metrics' count of charged tokens).
pub struct ChargingTokenSink {
    limiter: Arc<Limiter>,
    next: Arc<dyn TokenSink>,
}

impl ChargingTokenSink {
    pub fn new(limiter: Arc<Limiter>, next: Arc<dyn TokenSink>) -> Self {
        Self { limiter, next }
    }
}

impl std::fmt::Debug for ChargingTokenSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChargingTokenSink").finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl TokenSink for ChargingTokenSink {
    async fn charge(&self, subject: &UsageSubject, tokens: u64) {
        // A counter-store outage loses this charge (counted by the limiter's observer): the
        // response has already gone to the client, so there is nothing else to do with it.
        if let Err(error) = self
            .limiter
            .charge_tokens(&subject.user, &subject.subscription_key, tokens)
            .await
        {
            tracing::warn!(%error, tokens, "metered tokens not charged");
        }
        self.next.charge(subject, tokens).await;
    }
}

#[cfg(test)]
mod tests;
