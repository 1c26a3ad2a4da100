//! OIDC JWTs: discovery, a JWKS cache that follows key rotation, claim checks (`iss`, `aud`,
//! `azp`, `exp`/`nbf`, safe groups) and the username and groups claims, mapped as the Kubernetes
//! API server's `--oidc-username-claim`/`--oidc-username-prefix`/`--oidc-groups-*` flags do.

use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;
use tokio::sync::{Mutex, RwLock};

use super::AuthError;
use crate::minting::validate_group_name;

/// How long fetched keys are used before the JWKS is fetched again (upstream's default TTL).
const JWKS_TTL: Duration = Duration::from_secs(300);
/// The least time between two refetches forced by an unknown `kid`, so a flood of made-up
/// `kid`s cannot turn into a flood of requests to the issuer.
const UNKNOWN_KID_REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// While the issuer is unreachable, keys this old are still used rather than failing every token.
const JWKS_STALE_LIMIT: Duration = Duration::from_secs(3_600);
/// After a failed fetch, requests within this time fail at once rather than fetch again.
const FETCH_RETRY_BACKOFF: Duration = Duration::from_secs(2);
/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECONDS: u64 = 30;
/// Only asymmetric algorithms: an HMAC `alg` would let a public key act as a shared secret.
const ALGORITHMS: [Algorithm; 8] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
];

/// Keys as last fetched.
struct CachedKeys {
    jwks: JwkSet,
    fetched_at: Instant,
}

#[derive(Default)]
struct JwksState {
    jwks_uri: Option<String>,
    keys: Option<CachedKeys>,
    last_forced_refetch: Option<Instant>,
    /// When and why the last fetch failed.
    last_failure: Option<(Instant, String)>,
}

/// Which claims name a token's holder, and the prefixes put before them, resolved from
/// `MAAS_AUTHZ_OIDC_USERNAME_CLAIM`/`_PREFIX` and `MAAS_AUTHZ_OIDC_GROUPS_CLAIM`/`_PREFIX`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClaimMapping {
    pub(crate) username_claim: String,
    pub(crate) username_prefix: String,
    pub(crate) groups_claim: String,
    pub(crate) groups_prefix: String,
}

/// The claim Kubernetes treats specially: no default prefix, and `email_verified` must hold.
const EMAIL_CLAIM: &str = "email";

impl ClaimMapping {
    /// Kubernetes' rules: an unset (or empty) username prefix is `<issuer>#` unless the claim is
    /// `email`, so that names from this issuer cannot collide with other sources' names; `-`
    /// means no prefix. Groups get no prefix unless one is given.
    pub(crate) fn resolve(
        issuer: &str,
        username_claim: Option<&str>,
        username_prefix: Option<&str>,
        groups_claim: Option<&str>,
        groups_prefix: Option<&str>,
    ) -> Self {
        let username_claim = username_claim.unwrap_or("sub").to_owned();
        let username_prefix = match username_prefix.filter(|p| !p.is_empty()) {
            Some("-") => String::new(),
            Some(prefix) => prefix.to_owned(),
            None if username_claim == EMAIL_CLAIM => String::new(),
            None => format!("{issuer}#"),
        };
        Self {
            username_claim,
            username_prefix,
            groups_claim: groups_claim.unwrap_or("groups").to_owned(),
            groups_prefix: groups_prefix.unwrap_or_default().to_owned(),
        }
    }

    /// The holder's username: the username claim's string, prefixed. A missing, non-string or
    /// blank claim refuses the token rather than falling back to another claim, since a
    /// fallback (say, to a name the user may edit at the issuer) would let users choose it.
    fn username(&self, claims: &Claims) -> Result<String, AuthError> {
        let claim = &self.username_claim;
        let value = match claims.get(claim) {
            None | Some(serde_json::Value::Null) => {
                return Err(invalid(&format!(
                    "JWT has no {claim:?} claim, which names its user here"
                )));
            }
            Some(serde_json::Value::String(value)) => value,
            Some(_) => {
                return Err(invalid(&format!(
                    "JWT claim {claim:?}, which names its user here, must be a string"
                )));
            }
        };
        if value.trim().is_empty() {
            return Err(invalid(&format!("JWT claim {claim:?} is empty")));
        }
        if value.chars().any(char::is_control) {
            return Err(invalid(&format!(
                "JWT claim {claim:?} contains control characters"
            )));
        }
        if claim == EMAIL_CLAIM {
            // As Kubernetes: an address the issuer says it has not verified may be anyone's.
            match claims.get("email_verified") {
                None => {}
                Some(serde_json::Value::Bool(true)) => {}
                Some(serde_json::Value::Bool(false)) => {
                    return Err(invalid(
                        "JWT email is not verified (email_verified is false)",
                    ));
                }
                Some(_) => return Err(invalid("JWT claim \"email_verified\" must be a boolean")),
            }
        }
        Ok(format!("{}{value}", self.username_prefix))
    }

    /// The holder's groups: the groups claim (a list of strings, or one string, as Kubernetes
    /// reads it), each prefixed; absent means none.
    fn groups(&self, claims: &Claims) -> Result<Vec<String>, AuthError> {
        let claim = &self.groups_claim;
        let not_strings = || {
            invalid(&format!(
                "JWT claim {claim:?}, which lists its groups here, must be a list of strings"
            ))
        };
        let names: Vec<&str> = match claims.get(claim) {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::String(group)) => vec![group.as_str()],
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .map(|item| item.as_str().ok_or_else(not_strings))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(not_strings()),
        };
        let mut groups = Vec::with_capacity(names.len());
        for name in names {
            let group = format!("{}{name}", self.groups_prefix);
            // Upstream's `oidc-groups-safe` rule: one unsafe group rejects the token,
            // since groups end up in stored snapshots and policy matches.
            if validate_group_name(&group).is_err() {
                return Err(invalid(&format!(
                    "JWT group {group:?} is not a valid group name"
                )));
            }
            groups.push(group);
        }
        Ok(groups)
    }
}

/// Verifies JWTs of one issuer for one audience.
pub(crate) struct OidcVerifier {
    issuer: String,
    audience: String,
    claims: ClaimMapping,
    http: reqwest::Client,
    state: RwLock<JwksState>,
    /// Serialises fetches so concurrent requests with a cold cache cause one fetch.
    fetch_lock: Mutex<()>,
}

impl std::fmt::Debug for OidcVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcVerifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("claims", &self.claims)
            .finish_non_exhaustive()
    }
}

/// What a verified token says about its holder.
#[derive(Debug)]
pub(crate) struct OidcUser {
    pub(crate) username: String,
    pub(crate) groups: Vec<String>,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

#[derive(Deserialize)]
struct PeekedClaims {
    iss: Option<serde_json::Value>,
}

/// Every claim of a verified token: which ones name the holder is configuration.
type Claims = serde_json::Map<String, serde_json::Value>;

/// The three dot-separated base64url parts of a compact JWS.
pub(crate) fn looks_like_jwt(token: &str) -> bool {
    let base64url = |part: &str| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let mut parts = token.split('.');
    matches!(
        (parts.next(), parts.next(), parts.next(), parts.next()),
        (Some(a), Some(b), Some(c), None) if base64url(a) && base64url(b) && base64url(c)
    )
}

impl OidcVerifier {
    pub(crate) fn new(
        issuer: String,
        audience: String,
        claims: ClaimMapping,
        http: reqwest::Client,
    ) -> Self {
        Self {
            issuer,
            audience,
            claims,
            http,
            state: RwLock::new(JwksState::default()),
            fetch_lock: Mutex::new(()),
        }
    }

    /// Whether the (unverified) token claims to come from our issuer; other JWTs, e.g. Kubernetes
    /// service-account tokens, are left to the next identity source.
    pub(crate) fn claims_our_issuer(&self, token: &str) -> bool {
        match jsonwebtoken::dangerous::insecure_decode_claims::<PeekedClaims>(token) {
            Ok(PeekedClaims {
                iss: Some(serde_json::Value::String(iss)),
            }) => iss == self.issuer,
            _ => false,
        }
    }

    /// Verifies signature and claims; `Invalid` for a bad token, `Unavailable` when the keys
    /// cannot be fetched.
    pub(crate) async fn verify(&self, token: &str) -> Result<OidcUser, AuthError> {
        let header = decode_header(token).map_err(|_| invalid("malformed JWT header"))?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(invalid(&format!(
                "JWT algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let keys = self
            .candidate_keys(header.kid.as_deref(), header.alg)
            .await?;
        if keys.is_empty() {
            return Err(invalid("no key of the issuer matches the JWT's kid"));
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_nbf = true;
        validation.set_audience(&[&self.audience]);
        validation.set_issuer(&[&self.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let mut last_error = None;
        for key in &keys {
            match decode::<Claims>(token, key, &validation) {
                Ok(data) => return self.user_from_claims(&data.claims),
                Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::Json(_)) => {
                    return Err(self.unreadable_claims(token));
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.map_or_else(|| invalid("bad JWT signature"), |e| jwt_error(&e)))
    }

    /// Why a token whose signature checked out has claims `decode` cannot read: jsonwebtoken
    /// reads `sub` itself and stumbles on a `sub` that is a list or an object, so when `sub`
    /// names users the answer should say so. Reading the payload unverified is sound here
    /// because `decode` verifies the signature before it parses the claims.
    fn unreadable_claims(&self, token: &str) -> AuthError {
        match jsonwebtoken::dangerous::insecure_decode_claims::<Claims>(token) {
            Ok(claims) => match self.claims.username(&claims) {
                Err(why) => why,
                Ok(_) => invalid("malformed JWT"),
            },
            Err(_) => invalid("malformed JWT"),
        }
    }

    fn user_from_claims(&self, claims: &Claims) -> Result<OidcUser, AuthError> {
        match claims.get("azp") {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::String(azp)) if *azp == self.audience => {}
            Some(_) => return Err(invalid("JWT azp is not the configured client")),
        }
        Ok(OidcUser {
            username: self.claims.username(claims)?,
            groups: self.claims.groups(claims)?,
        })
    }

    /// The keys a token with this `kid` and `alg` may be signed with, refetching as needed.
    async fn candidate_keys(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Vec<DecodingKey>, AuthError> {
        let now = Instant::now();
        let fresh = {
            let state = self.state.read().await;
            state
                .keys
                .as_ref()
                .filter(|keys| now.duration_since(keys.fetched_at) < JWKS_TTL)
                .map(|keys| matching_keys(&keys.jwks, kid, alg))
        };
        match fresh {
            Some(keys) if !keys.is_empty() => return Ok(keys),
            Some(_) => {
                // Fresh keys but none matches: the issuer may have rotated; refetch, rate-limited.
                if !self.take_forced_refetch(now).await {
                    return Ok(Vec::new());
                }
                self.refresh(None).await?;
            }
            None => self.refresh(Some(now)).await?,
        }
        let state = self.state.read().await;
        Ok(state
            .keys
            .as_ref()
            .map(|keys| matching_keys(&keys.jwks, kid, alg))
            .unwrap_or_default())
    }

    /// Claims the forced-refetch slot if the last forced refetch was long enough ago.
    async fn take_forced_refetch(&self, now: Instant) -> bool {
        let mut state = self.state.write().await;
        match state.last_forced_refetch {
            Some(last) if now.duration_since(last) < UNKNOWN_KID_REFETCH_INTERVAL => false,
            _ => {
                state.last_forced_refetch = Some(now);
                true
            }
        }
    }

    /// Fetches the JWKS. With `stale_since`, skips the fetch if another task refreshed the keys
    /// while this one waited. On failure, falls back to keys younger than the stale limit.
    async fn refresh(&self, stale_since: Option<Instant>) -> Result<(), AuthError> {
        let _guard = self.fetch_lock.lock().await;
        let recent_failure = {
            let state = self.state.read().await;
            if let Some(since) = stale_since
                && state
                    .keys
                    .as_ref()
                    .is_some_and(|keys| keys.fetched_at >= since)
            {
                return Ok(());
            }
            // Requests queued behind a failed fetch share its outcome instead of each waiting
            // out another timeout against an issuer that is down.
            state
                .last_failure
                .as_ref()
                .filter(|(at, _)| at.elapsed() < FETCH_RETRY_BACKOFF)
                .map(|(_, reason)| reason.clone())
        };
        let reason = match recent_failure {
            Some(reason) => reason,
            None => match self.fetch_jwks().await {
                Ok(jwks) => {
                    let mut state = self.state.write().await;
                    state.keys = Some(CachedKeys {
                        jwks,
                        fetched_at: Instant::now(),
                    });
                    state.last_failure = None;
                    return Ok(());
                }
                Err(reason) => {
                    tracing::warn!(
                        issuer = %self.issuer,
                        %reason,
                        "cannot fetch the OIDC issuer's keys"
                    );
                    self.state.write().await.last_failure = Some((Instant::now(), reason.clone()));
                    reason
                }
            },
        };
        let usable_stale = self
            .state
            .read()
            .await
            .keys
            .as_ref()
            .is_some_and(|keys| keys.fetched_at.elapsed() < JWKS_STALE_LIMIT);
        if usable_stale {
            Ok(())
        } else {
            Err(AuthError::Unavailable(format!("OIDC issuer: {reason}")))
        }
    }

    async fn fetch_jwks(&self) -> Result<JwkSet, String> {
        // Bound first: a guard in the match scrutinee would live through the arms and deadlock
        // with the write below.
        let known_uri = self.state.read().await.jwks_uri.clone();
        let jwks_uri = match known_uri {
            Some(uri) => uri,
            None => {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    self.issuer.trim_end_matches('/')
                );
                let discovery: Discovery = self.get_json(&url).await?;
                if discovery.issuer != self.issuer {
                    return Err(format!(
                        "the discovery document names issuer {:?}, not {:?}",
                        discovery.issuer, self.issuer
                    ));
                }
                self.state.write().await.jwks_uri = Some(discovery.jwks_uri.clone());
                discovery.jwks_uri
            }
        };
        self.get_json(&jwks_uri).await
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, String> {
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {}", e.without_url()))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("GET {url}: HTTP {status}"));
        }
        response
            .json()
            .await
            .map_err(|e| format!("GET {url}: unreadable answer: {}", e.without_url()))
    }
}

/// The JWKS keys that could have signed a token with this `kid` and `alg`.
fn matching_keys(jwks: &JwkSet, kid: Option<&str>, alg: Algorithm) -> Vec<DecodingKey> {
    jwks.keys
        .iter()
        .filter(|jwk| match kid {
            Some(kid) => jwk.common.key_id.as_deref() == Some(kid),
            None => true,
        })
        .filter(|jwk| usable_for(jwk, alg))
        .filter_map(|jwk| DecodingKey::from_jwk(jwk).ok())
        .collect()
}

/// A signing key whose type (and declared `alg`, if any) fits the token's algorithm.
fn usable_for(jwk: &Jwk, alg: Algorithm) -> bool {
    if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
        return false;
    }
    if let Some(declared) = jwk.common.key_algorithm
        && declared.to_string().parse::<Algorithm>().ok() != Some(alg)
    {
        return false;
    }
    match &jwk.algorithm {
        jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => matches!(
            alg,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        ),
        jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => {
            matches!(alg, Algorithm::ES256 | Algorithm::ES384)
        }
        _ => false,
    }
}

fn invalid(reason: &str) -> AuthError {
    AuthError::Invalid(reason.to_owned())
}

fn jwt_error(error: &jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind;
    invalid(match error.kind() {
        ErrorKind::ExpiredSignature => "JWT expired",
        ErrorKind::ImmatureSignature => "JWT not yet valid",
        ErrorKind::InvalidAudience => "JWT audience does not include the configured audience",
        ErrorKind::InvalidIssuer => "JWT issuer is not accepted",
        ErrorKind::InvalidSignature => "bad JWT signature",
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "aud" => "JWT has no aud claim",
            "iss" => "JWT has no iss claim",
            "exp" => "JWT has no exp claim",
            _ => "JWT lacks a required claim",
        },
        ErrorKind::InvalidAlgorithm => "JWT algorithm does not match the key",
        _ => "malformed JWT",
    })
}
