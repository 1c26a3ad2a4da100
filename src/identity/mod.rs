//! Who is calling the REST API: one pluggable identity layer for Kubernetes tokens (TokenReview),
//! OIDC JWTs, sk-oai API keys and a static token file.
//!
//! Sources are tried in upstream's order: an `sk-oai-` bearer is only ever an API key; otherwise
//! the static file, then OIDC (for JWTs of the configured issuer), then TokenReview.

mod kube;
mod oidc;
mod static_tokens;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;

use crate::authorizer::{Authorizer, CheckError, KeyValidity};
use crate::bearer::BearerError;
use crate::config::IdentitySettings;
use crate::ids::Username;
use crate::key::KEY_PREFIX;
use crate::limits::retry_after_seconds;
use crate::lookup_budget::LookupBudget;
use crate::minting::validate_group_name;
use crate::store::{KeyRecordId, KeyStore};

use self::kube::{CaSource, TokenReviewer};
use self::oidc::{ClaimMapping, OidcVerifier};
use self::static_tokens::StaticTokenFile;

/// The group every token-authenticated caller belongs to, as Kubernetes does.
pub const AUTHENTICATED_GROUP: &str = "system:authenticated";
/// Where Kubernetes mounts the pod's service-account token and the cluster CA.
pub const IN_CLUSTER_TOKEN_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
pub const IN_CLUSTER_CA_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
/// Every call to an issuer or API server gives up after this long.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// An authenticated caller of the REST API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub username: Username,
    /// Always includes `system:authenticated` for token callers; the stored snapshot for key callers.
    pub groups: Vec<String>,
    /// Private so that only [`Caller::new`]'s rule can set it; read through [`Caller::is_admin`].
    admin: bool,
    pub credential: CredentialKind,
}

impl Caller {
    /// A caller with the one admin rule: a live identity (static token, OIDC, TokenReview) that
    /// is, as of this request, in one of `admin_groups`. An API key is never admin, whatever
    /// groups it snapshotted at mint time: the snapshot is frozen, so a demoted admin's keys
    /// would otherwise keep rights its owner no longer has.
    pub fn new(
        username: Username,
        groups: Vec<String>,
        credential: CredentialKind,
        admin_groups: &[String],
    ) -> Self {
        let admin =
            credential.is_live_identity() && groups.iter().any(|g| admin_groups.contains(g));
        Self {
            username,
            groups,
            admin,
            credential,
        }
    }

    /// Whether the caller may act on other users' keys. Checks the credential again because
    /// `credential` is public and could be changed after construction.
    pub fn is_admin(&self) -> bool {
        self.admin && self.credential.is_live_identity()
    }
}

/// How the caller proved who they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialKind {
    /// An sk-oai key (also the short-lived access tokens of `POST /v1/tokens`).
    ApiKey {
        id: KeyRecordId,
        subscription: String,
    },
    KubernetesToken,
    OidcToken,
    StaticToken,
}

impl CredentialKind {
    /// Whether the identity was resolved from its source for this request (the static file as
    /// it is now, the issuer's signed claims, a recent TokenReview) rather than from a snapshot
    /// stored with an API key.
    pub fn is_live_identity(&self) -> bool {
        match self {
            CredentialKind::ApiKey { .. } => false,
            CredentialKind::KubernetesToken
            | CredentialKind::OidcToken
            | CredentialKind::StaticToken => true,
        }
    }
}

/// Why a caller could not be authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// 401: no `Authorization: Bearer …` header.
    #[error("missing bearer token")]
    Missing,
    /// 401: the header is not `Bearer <token>`.
    #[error("the Authorization header must be 'Bearer <token>'")]
    Malformed,
    /// 401: no identity source accepts the token; the text says why, without the token.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// 503: an identity source (database, API server, issuer) could not be reached.
    #[error("identity provider unavailable: {0}")]
    Unavailable(String),
    /// 429: the token is not cached and the budget for checking unseen credentials is spent;
    /// it was not checked, so it may well be valid.
    #[error(
        "too many requests with credentials this service has not seen recently; retry in {} s",
        retry_after_seconds(*retry_after)
    )]
    Throttled { retry_after: Duration },
    /// 403: the request carries an identity header only the gateway sets (`x-maas-username`,
    /// `x-maas-group`, ...): a client claiming an identity is refused, not trusted or ignored.
    #[error(
        "identity headers (x-maas-username, x-maas-group, ...) are set by the gateway; remove them from the request"
    )]
    ForgedIdentityHeader,
}

/// Authenticates REST callers against every configured identity source.
pub struct IdentityResolver<S> {
    authorizer: Arc<Authorizer<S>>,
    static_tokens: Option<StaticTokenFile>,
    oidc: Option<OidcVerifier>,
    kube: Option<TokenReviewer>,
    admin_groups: Vec<String>,
}

impl<S> std::fmt::Debug for IdentityResolver<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityResolver")
            .field("static_tokens", &self.static_tokens)
            .field("oidc", &self.oidc)
            .field("kube", &self.kube)
            .field("admin_groups", &self.admin_groups)
            .finish_non_exhaustive()
    }
}

impl<S: KeyStore> IdentityResolver<S> {
    /// Reads the static token file, validates settings and builds HTTP clients; every error
    /// names the variable it comes from.
    pub async fn from_settings(
        args: &IdentitySettings,
        authorizer: Arc<Authorizer<S>>,
    ) -> anyhow::Result<Self> {
        let static_tokens = match &args.static_tokens_file {
            Some(path) => {
                let tokens = StaticTokenFile::open(path)
                    .with_context(|| format!("MAAS_AUTHZ_STATIC_TOKENS_FILE={}", path.display()))?;
                tracing::info!(
                    path = %path.display(),
                    entries = tokens.len(),
                    "static tokens loaded"
                );
                Some(tokens)
            }
            None => None,
        };
        let admin_groups: Vec<String> = args
            .admin_groups
            .iter()
            .map(|g| g.trim().to_owned())
            .filter(|g| !g.is_empty())
            .collect();
        if let Some(bad) = admin_groups
            .iter()
            .find(|g| validate_group_name(g).is_err())
        {
            // No caller can carry such a group, so the setting would silently grant nobody.
            anyhow::bail!("MAAS_AUTHZ_ADMIN_GROUPS: {bad:?} is not a valid group name");
        }
        let oidc = oidc_from_settings(args)?;
        let kube = kube_from_settings(args, in_cluster_api_url())?;
        Ok(Self {
            authorizer,
            static_tokens,
            oidc,
            kube,
            admin_groups,
        })
    }

    /// Bounds the Kubernetes TokenReviews of tokens not reviewed recently by `budget` (no effect
    /// without a TokenReview source).
    pub fn with_token_review_budget(mut self, budget: Arc<LookupBudget>) -> Self {
        self.kube = self.kube.take().map(|kube| kube.with_budget(budget));
        self
    }

    /// Authenticates the raw `Authorization` header value (`None` when absent).
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, AuthError> {
        let token = bearer_token(authorization)?;
        if token.starts_with(KEY_PREFIX) {
            return self.api_key_caller(token).await;
        }
        if let Some(tokens) = &self.static_tokens
            && let Some((username, groups)) = tokens.find(token).await
        {
            return self.caller(
                username,
                with_authenticated(groups),
                CredentialKind::StaticToken,
            );
        }
        if let Some(oidc) = &self.oidc
            && oidc::looks_like_jwt(token)
            && oidc.claims_our_issuer(token)
        {
            let user = oidc.verify(token).await?;
            return self.caller(
                user.username,
                with_authenticated(user.groups),
                CredentialKind::OidcToken,
            );
        }
        if let Some(kube) = &self.kube {
            let (username, groups) = kube.review(token).await?;
            return self.caller(
                username,
                with_authenticated(groups),
                CredentialKind::KubernetesToken,
            );
        }
        Err(AuthError::Invalid("the token is not recognised".to_owned()))
    }

    async fn api_key_caller(&self, token: &str) -> Result<Caller, AuthError> {
        match self.authorizer.validate_key(token, Utc::now()).await {
            Ok(KeyValidity::Valid(record)) => self.caller(
                record.username.to_string(),
                record.groups.to_vec(),
                CredentialKind::ApiKey {
                    id: record.id,
                    subscription: record.subscription.to_string(),
                },
            ),
            Ok(KeyValidity::Invalid(why)) => {
                Err(AuthError::Invalid(why.upstream_reason().to_owned()))
            }
            Err(CheckError::UnknownKeyThrottled(throttled)) => Err(AuthError::Throttled {
                retry_after: throttled.retry_after,
            }),
            Err(error) => Err(AuthError::Unavailable(error.to_string())),
        }
    }

    /// The caller, unless the source named nobody: an empty username is refused, whatever
    /// source asserted it (it would own keys and counters as "nobody").
    fn caller(
        &self,
        username: String,
        groups: Vec<String>,
        credential: CredentialKind,
    ) -> Result<Caller, AuthError> {
        let username = Username::new(username)
            .map_err(|_| AuthError::Invalid("the identity has an empty username".to_owned()))?;
        Ok(Caller::new(
            username,
            groups,
            credential,
            &self.admin_groups,
        ))
    }
}

/// The token of `Bearer <token>` by [`crate::bearer`]'s rule; a blank or absent header is missing.
fn bearer_token(authorization: Option<&str>) -> Result<&str, AuthError> {
    match crate::bearer::bearer_token(authorization.unwrap_or_default()) {
        Ok(token) => Ok(token),
        Err(BearerError::Blank) => Err(AuthError::Missing),
        Err(
            BearerError::NotBearer | BearerError::BlankToken | BearerError::BlankInToken { .. },
        ) => Err(AuthError::Malformed),
    }
}

/// `groups` with `system:authenticated` appended once and duplicates removed, order kept.
fn with_authenticated(groups: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(groups.len() + 1);
    for group in groups.into_iter().chain([AUTHENTICATED_GROUP.to_owned()]) {
        if !out.contains(&group) {
            out.push(group);
        }
    }
    out
}

/// The OIDC verifier, if an issuer is configured; the audience is then required.
fn oidc_from_settings(args: &IdentitySettings) -> anyhow::Result<Option<OidcVerifier>> {
    let Some(issuer) = args
        .oidc_issuer
        .as_deref()
        .map(str::trim)
        .filter(|i| !i.is_empty())
    else {
        return Ok(None);
    };
    check_http_url(issuer).with_context(|| format!("MAAS_AUTHZ_OIDC_ISSUER={issuer}"))?;
    let audience = args
        .oidc_audience
        .as_deref()
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .with_context(|| {
            format!(
                "MAAS_AUTHZ_OIDC_AUDIENCE is required when MAAS_AUTHZ_OIDC_ISSUER={issuer} is set: \
                 tokens minted for other clients of the issuer must not be accepted"
            )
        })?;
    let http = reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .connect_timeout(HTTP_TIMEOUT)
        .build()
        .context("cannot build the HTTP client for MAAS_AUTHZ_OIDC_ISSUER")?;
    let claims = ClaimMapping::resolve(
        issuer,
        args.oidc_username_claim.as_deref(),
        args.oidc_username_prefix.as_deref(),
        args.oidc_groups_claim.as_deref(),
        args.oidc_groups_prefix.as_deref(),
    );
    tracing::info!(
        %issuer,
        %audience,
        username_claim = %claims.username_claim,
        username_prefix = %claims.username_prefix,
        groups_claim = %claims.groups_claim,
        groups_prefix = %claims.groups_prefix,
        "OIDC tokens accepted"
    );
    Ok(Some(OidcVerifier::new(
        issuer.to_owned(),
        audience.to_owned(),
        claims,
        http,
    )))
}

/// `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT` when running in a pod.
fn in_cluster_api_url() -> Option<String> {
    let host = std::env::var("KUBERNETES_SERVICE_HOST").ok()?;
    let port = std::env::var("KUBERNETES_SERVICE_PORT").ok()?;
    let (host, port) = (host.trim(), port.trim());
    if host.is_empty() || port.is_empty() {
        return None;
    }
    Some(if host.contains(':') {
        format!("https://[{host}]:{port}")
    } else {
        format!("https://{host}:{port}")
    })
}

/// The TokenReview source: explicit URL (its token file must be readable), else in-cluster (skipped
/// with a warning when the pod has no service-account token mounted).
fn kube_from_settings(
    args: &IdentitySettings,
    in_cluster: Option<String>,
) -> anyhow::Result<Option<TokenReviewer>> {
    let explicit = args
        .kube_api_url
        .as_deref()
        .map(str::trim)
        .filter(|u| !u.is_empty());
    let url = match (explicit, in_cluster) {
        (Some(url), _) => {
            check_http_url(url).with_context(|| format!("MAAS_AUTHZ_KUBE_API_URL={url}"))?;
            url.to_owned()
        }
        (None, Some(url)) => url,
        (None, None) => return Ok(None),
    };
    let token_file = args
        .kube_token_file
        .clone()
        .unwrap_or_else(|| PathBuf::from(IN_CLUSTER_TOKEN_FILE));
    if let Err(e) = kube::read_service_account_token(&token_file) {
        if explicit.is_some() || args.kube_token_file.is_some() {
            return Err(e)
                .with_context(|| format!("MAAS_AUTHZ_KUBE_TOKEN_FILE={}", token_file.display()));
        }
        tracing::warn!(
            path = %token_file.display(),
            error = %e,
            "in a Kubernetes pod without a service-account token: Kubernetes tokens are not accepted"
        );
        return Ok(None);
    }
    let ca = if url.starts_with("https://") {
        match &args.kube_ca_file {
            Some(path) => CaSource::File(path),
            None if Path::new(IN_CLUSTER_CA_FILE).exists() => {
                CaSource::File(Path::new(IN_CLUSTER_CA_FILE))
            }
            None => CaSource::BuiltIn,
        }
    } else {
        CaSource::BuiltIn
    };
    let ca_description = match &ca {
        CaSource::File(path) => path.display().to_string(),
        CaSource::BuiltIn => "built-in roots".to_owned(),
    };
    let http = kube::http_client(ca, HTTP_TIMEOUT)
        .with_context(|| format!("MAAS_AUTHZ_KUBE_CA_FILE={ca_description}"))?;
    tracing::info!(api_server = %url, ca = %ca_description, "Kubernetes tokens accepted (TokenReview)");
    Ok(Some(TokenReviewer::new(&url, token_file, http)))
}

/// An absolute http(s) URL.
fn check_http_url(url: &str) -> anyhow::Result<()> {
    let parsed = reqwest::Url::parse(url).context("not a URL")?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        anyhow::bail!("not an http(s) URL");
    }
    Ok(())
}
