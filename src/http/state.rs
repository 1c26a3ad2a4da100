//! What each REST listener's handlers share: only the services they use.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::http::{HeaderMap, header};

use crate::authorizer::Authorizer;
use crate::identity::IdentityResolver;
use crate::keys::KeyManager;
use crate::limits::Limiter;
use crate::policy::{Policy, PolicySync};
use crate::store::served::ServedStore;

/// What the public routes need, and nothing else.
pub struct PublicApi {
    pub keys: Arc<KeyManager<ServedStore>>,
    /// Authenticates callers (the [`super::extract`] `Caller` extractor).
    pub identity: Arc<IdentityResolver<ServedStore>>,
    /// The current policy: model and subscription discovery, usage.
    pub policy: Arc<ArcSwap<Policy>>,
    /// Whether the policy source was read in full, its generation and last sync (readiness).
    pub policy_sync: Arc<PolicySync>,
    /// The request and token limits (`None`: limits off), for usage and readiness.
    pub limiter: Option<Arc<Limiter>>,
    /// The key store, for readiness.
    pub store: Arc<ServedStore>,
    /// `MAAS_AUTHZ_PUBLIC_URL`, without a trailing `/`.
    pub public_url: Option<String>,
    /// Longest a request may take.
    pub request_timeout: Duration,
    /// `MAAS_AUTHZ_BILLING_CURRENCY`, named in usage reports.
    pub billing_currency: String,
    /// What the self-service portal's sign-in offers.
    pub portal: PortalSettings,
}

impl std::fmt::Debug for PublicApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicApi")
            .field("keys", &self.keys)
            .field("public_url", &self.public_url)
            .finish_non_exhaustive()
    }
}

/// What the internal routes (validate, clean-up) need, and nothing else.
pub struct InternalApi {
    pub keys: Arc<KeyManager<ServedStore>>,
    /// Validates keys as Check does (same cache).
    pub authorizer: Arc<Authorizer<ServedStore>>,
    /// Tenant reported by the validate endpoint.
    pub tenant: String,
    /// Longest a request may take.
    pub request_timeout: Duration,
}

impl std::fmt::Debug for InternalApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InternalApi")
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

pub(super) type SharedState = Arc<PublicApi>;

/// What the portal's sign-in page offers besides a pasted token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortalSettings {
    /// The OIDC authorization-code flow with PKCE, when an issuer and a client id are configured.
    pub oidc: Option<PortalOidc>,
}

/// A public OIDC client (no secret: the browser cannot keep one) that signs users in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortalOidc {
    /// `MAAS_AUTHZ_OIDC_ISSUER`: discovery is fetched by the browser from here.
    pub issuer: String,
    /// `MAAS_AUTHZ_PORTAL_OIDC_CLIENT_ID`.
    pub client_id: String,
    /// Space-separated scopes asked for (always with `openid`).
    pub scopes: String,
}

/// The scheme and host clients reach us at: `MAAS_AUTHZ_PUBLIC_URL`, else `x-forwarded-proto`
/// (or http) and `Host`. `None` when the request carries no usable host.
pub(super) fn public_base(state: &PublicApi, headers: &HeaderMap) -> Option<String> {
    if let Some(url) = &state.public_url {
        return Some(url.clone());
    }
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| v == "http" || v == "https")
        .unwrap_or_else(|| "http".to_owned());
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|host| {
            !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        })?;
    Some(format!("{scheme}://{host}"))
}
