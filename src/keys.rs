//! Key management for callers of the REST API: mint, search, get, revoke, bulk revoke, access
//! tokens and ephemeral clean-up, with upstream's rules. No HTTP or database types here.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};

use crate::cache::KeyCache;
use crate::duration::{DurationError, format_go_duration, parse_duration};
use crate::identity::{Caller, CredentialKind};
use crate::minting::{
    Labels, LifetimeLimit, MintError, MintRequest, MintedKey, mint_key_with_labels,
    mint_key_within_limit, reject_reserved_labels, too_many_active_keys_message, validate_labels,
    validate_lifetime,
};
use crate::policy::Policy;
use crate::store::{
    KeyAdminStore, KeyPage, KeyRecord, KeyRecordId, KeySearch, KeySortField, KeyStatus,
    RevocationScope, SortOrder, StoreError,
};

/// Ephemeral keys live at most (and by default) this long.
pub const EPHEMERAL_MAX_LIFETIME: Duration = Duration::from_secs(3_600);
/// Access tokens (`POST /v1/tokens`) live this long unless asked otherwise.
pub const TOKEN_DEFAULT_LIFETIME: Duration = Duration::from_secs(4 * 3_600);
pub use crate::minting::TOKEN_MIN_LIFETIME;
/// Expired ephemeral keys (and tokens) are deleted this long after their expiry.
pub const EPHEMERAL_CLEANUP_GRACE: Duration = Duration::from_secs(1_800);
/// Search pages hold this many keys unless asked otherwise, and never more than the maximum.
pub const DEFAULT_PAGE_SIZE: i64 = 50;
pub const MAX_PAGE_SIZE: i64 = 100;
/// The label that marks a key as an access token, and the name tokens get.
pub const CREDENTIAL_LABEL: &str = "maas-authz.io/credential";
pub const ACCESS_TOKEN_LABEL_VALUE: &str = "access-token";
pub const ACCESS_TOKEN_NAME: &str = "access-token";

/// Limits that come from configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyPolicySettings {
    /// `MAAS_AUTHZ_API_KEY_MAX_EXPIRATION_DAYS`: the longest (and default) life of a regular key.
    pub max_expiration_days: u32,
    /// `MAAS_AUTHZ_TOKEN_MAX_EXPIRATION`: the longest life of an access token.
    pub token_max_lifetime: Duration,
    /// `MAAS_AUTHZ_MAX_ACTIVE_KEYS_PER_USER`: the most active keys (ephemeral keys and access
    /// tokens included) a user may hold when minting more; `None`: no cap.
    pub max_active_keys_per_user: Option<u32>,
}

/// A lifetime as the JSON body gives it: a number of seconds or a duration string.
#[derive(Debug, Clone, PartialEq)]
pub enum LifetimeInput {
    Seconds(f64),
    Text(String),
}

/// What a caller asks for when minting a key (`POST /v1/api-keys`), not yet checked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CreateKey {
    pub name: Option<String>,
    pub description: Option<String>,
    pub expires_in: Option<LifetimeInput>,
    pub subscription: Option<String>,
    pub ephemeral: bool,
    pub labels: Labels,
}

/// A key search as the caller wrote it (`POST /v1/api-keys/search`), not yet checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchKeys {
    pub username: Option<String>,
    pub statuses: Vec<String>,
    pub subscription: Option<String>,
    pub labels_contain: Labels,
    pub include_ephemeral: bool,
    pub sort_by: Option<String>,
    pub sort_order: Option<String>,
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

/// A bulk revocation as the caller wrote it (`POST /v1/api-keys/bulk-revoke`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BulkRevoke {
    pub username: Option<String>,
    pub subscription: Option<String>,
    pub dry_run: bool,
}

/// What a bulk revocation did (or, on a dry run, would do).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkRevocation {
    pub count: u64,
    pub dry_run: bool,
}

/// A freshly issued access token: an ephemeral key whose plaintext is shown once.
#[derive(Debug)]
pub struct IssuedToken {
    pub minted: MintedKey,
    pub lifetime: Duration,
    pub issued_at: DateTime<Utc>,
}

/// Why a key operation was refused; each variant is one client-visible outcome.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The request breaks a rule; the message says which.
    #[error("{0}")]
    InvalidRequest(String),
    /// Unknown, inaccessible or no subscription: deliberately one answer for all.
    #[error("Unable to resolve a subscription for this API key")]
    UnresolvableSubscription,
    /// The requested subscription is the caller's but Failed: none of its models is there.
    #[error("subscription {0:?} is not ready: none of its models is available")]
    SubscriptionNotReady(String),
    /// Not there, not the caller's, or no longer active: deliberately one answer for all.
    #[error("API key not found")]
    NotFound,
    #[error("non-admin users can only search their own API keys")]
    SearchOthersDenied,
    #[error("Access denied: admin privileges required for this bulk revoke operation")]
    BulkRevokeDenied,
    /// A leaked key must not be able to extend its own life.
    #[error(
        "API keys cannot create API keys or access tokens: authenticate with your OpenShift or \
         OIDC token instead"
    )]
    KeyCallerCannotMint,
    #[error(
        "token expiration must be at least {}",
        format_go_duration(TOKEN_MIN_LIFETIME)
    )]
    TokenTooShort { provided: String },
    /// The caller holds as many active keys as allowed (or more): revoke one or wait.
    #[error("{}", too_many_active_keys_message(*active, *limit))]
    TooManyActiveKeys { active: u64, limit: u32 },
    #[error("key store failed: {0}")]
    Store(#[from] StoreError),
    #[error("cannot create the key: {0}")]
    Internal(String),
}

impl From<MintError> for KeyError {
    fn from(error: MintError) -> Self {
        match error {
            MintError::Store(error) => KeyError::Store(error),
            MintError::TooManyActiveKeys { active, limit } => {
                KeyError::TooManyActiveKeys { active, limit }
            }
            error if error.is_invalid_request() => KeyError::InvalidRequest(error.to_string()),
            other => KeyError::Internal(other.to_string()),
        }
    }
}

/// The key-management operations, over the key store, the key cache Check reads (revocations
/// evict from it) and the current policy.
pub struct KeyManager<S> {
    store: Arc<S>,
    cache: KeyCache,
    policy: Arc<ArcSwap<Policy>>,
    settings: KeyPolicySettings,
}

impl<S> std::fmt::Debug for KeyManager<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyManager")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl<S: KeyAdminStore> KeyManager<S> {
    pub fn new(
        store: Arc<S>,
        cache: KeyCache,
        policy: Arc<ArcSwap<Policy>>,
        settings: KeyPolicySettings,
    ) -> Self {
        Self {
            store,
            cache,
            policy,
            settings,
        }
    }

    pub fn settings(&self) -> KeyPolicySettings {
        self.settings
    }

    /// Mints a key for the caller, bound to the requested or their highest-priority subscription,
    /// with their groups snapshotted onto it.
    pub async fn create_key(
        &self,
        caller: &Caller,
        request: CreateKey,
        now: DateTime<Utc>,
    ) -> Result<MintedKey, KeyError> {
        refuse_key_callers(caller)?;
        let name = match request.name.filter(|name| !name.is_empty()) {
            Some(name) => name,
            None if request.ephemeral => {
                format!(
                    "ephemeral-{}",
                    now.timestamp_nanos_opt().unwrap_or_default()
                )
            }
            None => {
                return Err(KeyError::InvalidRequest(
                    "name is required for non-ephemeral keys".into(),
                ));
            }
        };
        validate_labels(&request.labels).map_err(MintError::from)?;
        reject_reserved_labels(&request.labels).map_err(MintError::from)?;
        let limit = if request.ephemeral {
            LifetimeLimit::Exactly(EPHEMERAL_MAX_LIFETIME)
        } else {
            LifetimeLimit::Days(self.settings.max_expiration_days)
        };
        let lifetime = match &request.expires_in {
            Some(input) => parse_lifetime(input)?,
            None => limit.duration(),
        };
        validate_lifetime(lifetime, limit)?;
        let subscription = self.bind_subscription(caller, request.subscription.as_deref())?;
        let mint = MintRequest {
            username: caller.username.to_string(),
            groups: caller.groups.clone(),
            name,
            description: request.description.filter(|d| !d.is_empty()),
            subscription,
            lifetime,
            ephemeral: request.ephemeral,
        };
        self.mint(mint, request.labels, now).await
    }

    /// One page of keys the caller may see: their own, or anyone's for admins.
    pub async fn search_keys(
        &self,
        caller: &Caller,
        request: SearchKeys,
    ) -> Result<KeyPage, KeyError> {
        let statuses = request
            .statuses
            .iter()
            .map(|status| {
                KeyStatus::parse(status.trim()).ok_or_else(|| {
                    KeyError::InvalidRequest(format!(
                        "invalid status '{status}': must be active, revoked, or expired"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let requested_user = request.username.filter(|u| !u.trim().is_empty());
        let username = match requested_user {
            Some(user) if user == caller.username || caller.is_admin() => Some(user),
            Some(_) => return Err(KeyError::SearchOthersDenied),
            None if caller.is_admin() => None,
            None => Some(caller.username.to_string()),
        };
        let sort_by = match request.sort_by.as_deref().map(str::trim) {
            None | Some("") | Some("created_at") => KeySortField::CreatedAt,
            Some("expires_at") => KeySortField::ExpiresAt,
            Some("last_used_at") => KeySortField::LastUsedAt,
            Some("name") => KeySortField::Name,
            Some(_) => {
                return Err(KeyError::InvalidRequest(
                    "invalid sort.by: must be one of: created_at, expires_at, last_used_at, name"
                        .into(),
                ));
            }
        };
        let order = match request
            .sort_order
            .as_deref()
            .map(|o| o.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("") | Some("desc") => SortOrder::Descending,
            Some("asc") => SortOrder::Ascending,
            Some(_) => {
                return Err(KeyError::InvalidRequest(
                    "invalid sort.order: must be asc or desc".into(),
                ));
            }
        };
        let limit = request.limit.unwrap_or(DEFAULT_PAGE_SIZE);
        if limit < 1 {
            return Err(KeyError::InvalidRequest(
                "pagination.limit must be at least 1".into(),
            ));
        }
        let offset = request.offset.unwrap_or(0);
        if offset < 0 {
            return Err(KeyError::InvalidRequest(
                "pagination.offset must be non-negative".into(),
            ));
        }
        validate_labels(&request.labels_contain).map_err(MintError::from)?;
        let search = KeySearch {
            username,
            statuses,
            subscription: request
                .subscription
                .filter(|s| !s.trim().is_empty())
                .map(|s| self.stored_subscription_name(&s)),
            labels_contain: request.labels_contain,
            include_ephemeral: request.include_ephemeral,
            sort_by,
            order,
            limit: limit.min(MAX_PAGE_SIZE),
            offset,
        };
        Ok(self.store.search_keys(&search).await?)
    }

    /// One key's metadata, if it is the caller's (or the caller is an admin).
    pub async fn get_key(&self, caller: &Caller, id: &str) -> Result<KeyRecord, KeyError> {
        let id = KeyRecordId::parse(id).map_err(|_| KeyError::NotFound)?;
        let record = self.store.find_by_id(id).await?.ok_or(KeyError::NotFound)?;
        if record.username != caller.username && !caller.is_admin() {
            return Err(KeyError::NotFound);
        }
        Ok(record)
    }

    /// Revokes one active key of the caller's (any key for admins); Check on this replica
    /// refuses it from the next request on.
    pub async fn revoke_key(&self, caller: &Caller, id: &str) -> Result<KeyRecord, KeyError> {
        let record = self.get_key(caller, id).await?;
        let revoked = self
            .store
            .revoke_key(record.id)
            .await?
            .ok_or(KeyError::NotFound)?;
        self.cache.invalidate(&revoked.key_hash).await;
        tracing::info!(key_id = %revoked.id, owner = %revoked.username, revoked_by = %caller.username, "API key revoked");
        Ok(revoked)
    }

    /// Revokes every active key of a user and/or subscription. Without either, the caller's own
    /// keys; another user's keys or a subscription scope need an admin.
    pub async fn bulk_revoke(
        &self,
        caller: &Caller,
        request: BulkRevoke,
    ) -> Result<BulkRevocation, KeyError> {
        let username = request.username.filter(|u| !u.trim().is_empty());
        let subscription = request.subscription.filter(|s| !s.trim().is_empty());
        let needs_admin =
            subscription.is_some() || username.as_ref().is_some_and(|u| *u != caller.username);
        if needs_admin && !caller.is_admin() {
            return Err(KeyError::BulkRevokeDenied);
        }
        let username = match (&username, &subscription) {
            (None, None) => Some(caller.username.to_string()),
            _ => username,
        };
        let scope = RevocationScope {
            username,
            subscription: subscription.map(|s| self.stored_subscription_name(&s)),
            labels_contain: Labels::new(),
        };
        let store = &self.store;
        if request.dry_run {
            let count = store.count_revocable_keys(&scope).await?;
            return Ok(BulkRevocation {
                count,
                dry_run: true,
            });
        }
        let count = self.revoke_and_evict(&scope).await?;
        tracing::info!(
            actor = %caller.username,
            admin = caller.is_admin(),
            target_user = scope.username.as_deref().unwrap_or("*"),
            target_subscription = scope.subscription.as_deref().unwrap_or("*"),
            revoked = count,
            "AUDIT bulk-revoke"
        );
        Ok(BulkRevocation {
            count,
            dry_run: false,
        })
    }

    /// Issues a short-lived access token: an ephemeral key labelled as a token, bound to the
    /// caller's highest-priority subscription, so Check treats it like any key.
    pub async fn issue_token(
        &self,
        caller: &Caller,
        expiration: Option<LifetimeInput>,
        now: DateTime<Utc>,
    ) -> Result<IssuedToken, KeyError> {
        refuse_key_callers(caller)?;
        let lifetime = match &expiration {
            Some(input) => parse_lifetime(input)?,
            None => TOKEN_DEFAULT_LIFETIME,
        };
        if lifetime.is_zero() {
            return Err(MintError::NonPositiveLifetime.into());
        }
        if lifetime < TOKEN_MIN_LIFETIME {
            return Err(KeyError::TokenTooShort {
                provided: format_go_duration(lifetime),
            });
        }
        validate_lifetime(
            lifetime,
            LifetimeLimit::Exactly(self.settings.token_max_lifetime),
        )?;
        let subscription = self.bind_subscription(caller, None)?;
        let request = MintRequest {
            username: caller.username.to_string(),
            groups: caller.groups.clone(),
            name: ACCESS_TOKEN_NAME.to_owned(),
            description: None,
            subscription,
            lifetime,
            ephemeral: true,
        };
        let minted = self.mint(request, access_token_labels(), now).await?;
        Ok(IssuedToken {
            minted,
            lifetime,
            issued_at: now,
        })
    }

    /// Stores a new credential, within the caller's cap on active keys when one is set.
    async fn mint(
        &self,
        request: MintRequest,
        labels: Labels,
        now: DateTime<Utc>,
    ) -> Result<MintedKey, KeyError> {
        let store = self.store.as_ref();
        Ok(match self.settings.max_active_keys_per_user {
            Some(limit) => mint_key_within_limit(store, request, labels, now, limit).await?,
            None => mint_key_with_labels(store, request, labels, now).await?,
        })
    }

    /// Revokes every active access token of the caller; returns how many.
    pub async fn revoke_tokens(&self, caller: &Caller) -> Result<u64, KeyError> {
        let scope = RevocationScope {
            username: Some(caller.username.to_string()),
            subscription: None,
            labels_contain: access_token_labels(),
        };
        let count = self.revoke_and_evict(&scope).await?;
        tracing::info!(actor = %caller.username, revoked = count, "access tokens revoked");
        Ok(count)
    }

    /// Deletes ephemeral keys (and tokens) more than [`EPHEMERAL_CLEANUP_GRACE`] past expiry.
    pub async fn clean_up_ephemeral_keys(&self) -> Result<u64, KeyError> {
        let deleted = self
            .store
            .delete_expired_ephemeral_keys(EPHEMERAL_CLEANUP_GRACE)
            .await?;
        tracing::info!(deleted, "expired ephemeral keys cleaned up");
        Ok(deleted)
    }

    async fn revoke_and_evict(&self, scope: &RevocationScope) -> Result<u64, KeyError> {
        let hashes = self.store.revoke_keys(scope).await?;
        for hash in &hashes {
            self.cache.invalidate(hash).await;
        }
        Ok(hashes.len() as u64)
    }

    /// The subscription a new credential is bound to: the requested one if it exists and the
    /// caller may use it, else the caller's highest-priority one. Every failure is the same
    /// answer, so callers cannot probe which subscriptions exist.
    fn bind_subscription(
        &self,
        caller: &Caller,
        requested: Option<&str>,
    ) -> Result<String, KeyError> {
        let policy = self.policy.load_full();
        let chosen = match requested.map(str::trim).filter(|s| !s.is_empty()) {
            Some(reference) => policy.find_subscription(reference).filter(|subscription| {
                policy.subscription_accessible(
                    subscription,
                    caller.username.as_str(),
                    &caller.groups,
                )
            }),
            // A Failed subscription would bind a key that can reach nothing: pass over it.
            None => policy
                .accessible_subscriptions(caller.username.as_str(), &caller.groups)
                .into_iter()
                .find(|subscription| subscription.phase.is_usable()),
        };
        let subscription = chosen.ok_or(KeyError::UnresolvableSubscription)?;
        // Degraded still mints (it serves its healthy models), as upstream; Failed does not.
        if !subscription.phase.is_usable() {
            return Err(KeyError::SubscriptionNotReady(subscription.name.clone()));
        }
        Ok(subscription.name.clone())
    }

    /// The policy in force (shared with Check).
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// Keys store the subscription's bare name; a `namespace/name` the policy knows is mapped
    /// to it, anything else is compared as given.
    fn stored_subscription_name(&self, reference: &str) -> String {
        let reference = reference.trim();
        self.policy
            .load()
            .find_subscription(reference)
            .map_or_else(|| reference.to_owned(), |s| s.name.clone())
    }
}

/// Whether the caller authenticated with an sk-oai key (or an access token, which is one).
fn refuse_key_callers(caller: &Caller) -> Result<(), KeyError> {
    match caller.credential {
        CredentialKind::ApiKey { .. } => Err(KeyError::KeyCallerCannotMint),
        CredentialKind::KubernetesToken
        | CredentialKind::OidcToken
        | CredentialKind::StaticToken => Ok(()),
    }
}

fn access_token_labels() -> Labels {
    Labels::from([(
        CREDENTIAL_LABEL.to_owned(),
        ACCESS_TOKEN_LABEL_VALUE.to_owned(),
    )])
}

/// Reads a lifetime as upstream does: a number is seconds; a string is a Go duration or a whole
/// `d` value; zero, negative and empty all mean "not positive".
pub fn parse_lifetime(input: &LifetimeInput) -> Result<Duration, KeyError> {
    let not_positive = || KeyError::from(MintError::NonPositiveLifetime);
    match input {
        LifetimeInput::Seconds(seconds) if *seconds <= 0.0 => Err(not_positive()),
        LifetimeInput::Seconds(seconds) => Duration::try_from_secs_f64(*seconds)
            .map_err(|_| KeyError::InvalidRequest("expiration is too large".into())),
        LifetimeInput::Text(text) if text.trim().is_empty() => Err(not_positive()),
        LifetimeInput::Text(text) => match parse_duration(text.trim()) {
            Ok(duration) if duration.is_zero() => Err(not_positive()),
            Ok(duration) => Ok(duration),
            Err(DurationError::Negative(_)) => Err(not_positive()),
            Err(error) => Err(KeyError::InvalidRequest(error.to_string())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::minting::RESERVED_LABEL_PREFIX;

    #[test]
    fn the_token_label_is_one_callers_cannot_set() {
        assert!(CREDENTIAL_LABEL.starts_with(RESERVED_LABEL_PREFIX));
        assert!(reject_reserved_labels(&access_token_labels()).is_err());
        assert_eq!(validate_labels(&access_token_labels()), Ok(()));
    }

    #[test]
    fn lifetimes_read_numbers_as_seconds_and_strings_as_durations() {
        let seconds =
            |s: f64| parse_lifetime(&LifetimeInput::Seconds(s)).map_err(|e| e.to_string());
        let text =
            |t: &str| parse_lifetime(&LifetimeInput::Text(t.to_owned())).map_err(|e| e.to_string());
        assert_eq!(seconds(90.0), Ok(Duration::from_secs(90)));
        assert_eq!(seconds(1.5), Ok(Duration::from_millis(1_500)));
        assert_eq!(text("90d"), Ok(Duration::from_secs(90 * 86_400)));
        assert_eq!(text("2h30m"), Ok(Duration::from_secs(9_000)));
        assert_eq!(text("1.5h"), Ok(Duration::from_secs(5_400)));
        for not_positive in [
            seconds(0.0),
            seconds(-5.0),
            text(""),
            text("0"),
            text("-1h"),
        ] {
            assert_eq!(not_positive, Err("expiration must be positive".to_owned()));
        }
        assert_eq!(
            text("1d12h"),
            Err("invalid duration \"1d12h\": expected a number with a unit, like 30s, 15m, 2h30m, 1.5h or 90d".to_owned())
        );
        assert_eq!(seconds(1e300), Err("expiration is too large".to_owned()));
    }
}
