//! Kubernetes bearer tokens, checked with a TokenReview against the API server and cached briefly.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::AuthError;
use crate::lookup_budget::LookupBudget;
use crate::minting::validate_group_name;

/// How long an accepted token is trusted without asking the API server again.
const POSITIVE_TTL: Duration = Duration::from_secs(60);
/// How long a rejected token stays rejected, so retries of a bad token do not load the API server.
const NEGATIVE_TTL: Duration = Duration::from_secs(10);
/// Bound on cached reviews; each entry is a digest and a small user record.
const CACHE_CAPACITY: u64 = 10_000;
const REVIEW_PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

/// Why the TokenReview source cannot be set up. Never carries a token.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KubeSetupError {
    #[error("cannot read the file: {0}")]
    Read(#[source] std::io::Error),
    #[error("the file holds no token")]
    EmptyToken,
    #[error("not a PEM certificate bundle: {0}")]
    BadCa(#[source] reqwest::Error),
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// The API server's verdict on one token.
#[derive(Debug, Clone)]
enum Review {
    Authenticated {
        username: String,
        groups: Vec<String>,
    },
    Rejected(String),
}

/// Accepted tokens and rejected ones live for different times.
struct ReviewExpiry;

impl Expiry<[u8; 32], Arc<Review>> for ReviewExpiry {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Arc<Review>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(match value.as_ref() {
            Review::Authenticated { .. } => POSITIVE_TTL,
            Review::Rejected(_) => NEGATIVE_TTL,
        })
    }
}

/// Asks the API server who a token belongs to.
pub(crate) struct TokenReviewer {
    review_url: String,
    http: reqwest::Client,
    service_account_token_file: PathBuf,
    /// Keyed by the token's SHA-256 so no token is kept in memory.
    cache: moka::future::Cache<[u8; 32], Arc<Review>>,
    /// Reviews of tokens the cache does not hold take a token from it first (none: unbounded),
    /// so a flood of made-up tokens cannot become a flood of requests to the API server.
    budget: Option<Arc<LookupBudget>>,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("review_url", &self.review_url)
            .field(
                "service_account_token_file",
                &self.service_account_token_file,
            )
            .finish_non_exhaustive()
    }
}

/// What the reviewer was told about the CA of an https API server.
#[derive(Debug)]
pub(crate) enum CaSource<'a> {
    /// Trust only the certificates in this file.
    File(&'a Path),
    /// No cluster CA: the client's built-in roots.
    BuiltIn,
}

/// Reads the service-account token; it is rotated on disk, so it is read for every review.
pub(crate) fn read_service_account_token(path: &Path) -> Result<String, KubeSetupError> {
    let token = std::fs::read_to_string(path).map_err(KubeSetupError::Read)?;
    let token = token.trim();
    if token.is_empty() {
        return Err(KubeSetupError::EmptyToken);
    }
    Ok(token.to_owned())
}

/// A client that trusts `ca` for https and never follows redirects, so the service-account
/// token is only ever sent to the configured server.
pub(crate) fn http_client(
    ca: CaSource<'_>,
    timeout: Duration,
) -> Result<reqwest::Client, KubeSetupError> {
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none());
    if let CaSource::File(path) = ca {
        let pem = std::fs::read(path).map_err(KubeSetupError::Read)?;
        let certificates =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(KubeSetupError::BadCa)?;
        builder = builder.tls_built_in_root_certs(false);
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder.build().map_err(KubeSetupError::Client)
}

#[derive(Deserialize)]
struct TokenReviewAnswer {
    status: Option<TokenReviewStatus>,
}

#[derive(Deserialize)]
struct TokenReviewStatus {
    #[serde(default)]
    authenticated: bool,
    user: Option<UserInfo>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct UserInfo {
    username: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
}

impl TokenReviewer {
    pub(crate) fn new(
        api_url: &str,
        service_account_token_file: PathBuf,
        http: reqwest::Client,
    ) -> Self {
        Self {
            review_url: format!("{}{REVIEW_PATH}", api_url.trim_end_matches('/')),
            http,
            service_account_token_file,
            cache: moka::future::Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .expire_after(ReviewExpiry)
                .build(),
            budget: None,
        }
    }

    /// Bounds the reviews of tokens the cache does not hold by `budget`.
    pub(crate) fn with_budget(mut self, budget: Arc<LookupBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// The username and groups (as the API server reports them) of the token's holder.
    pub(crate) async fn review(&self, token: &str) -> Result<(String, Vec<String>), AuthError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Concurrent misses for one token share one review; failures are not cached.
        let review = self
            .cache
            .try_get_with(digest, async {
                // Only a review that would be sent spends the budget: cached answers are free.
                if let Some(budget) = &self.budget {
                    budget
                        .try_acquire(None, Instant::now())
                        .map_err(|throttled| AuthError::Throttled {
                            retry_after: throttled.retry_after,
                        })?;
                }
                self.ask_api_server(token).await.map(Arc::new)
            })
            .await
            .map_err(|e| e.as_ref().clone())?;
        match review.as_ref() {
            Review::Authenticated { username, groups } => Ok((username.clone(), groups.clone())),
            Review::Rejected(reason) => Err(AuthError::Invalid(reason.clone())),
        }
    }

    async fn ask_api_server(&self, token: &str) -> Result<Review, AuthError> {
        let path = self.service_account_token_file.clone();
        let service_account_token =
            tokio::task::spawn_blocking(move || read_service_account_token(&path))
                .await
                .map_err(|e| {
                    AuthError::Unavailable(format!("reading the service-account token: {e}"))
                })?
                .map_err(|e| {
                    AuthError::Unavailable(format!(
                        "service-account token {}: {e}",
                        self.service_account_token_file.display()
                    ))
                })?;
        let body = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": { "token": token },
        });
        let response = self
            .http
            .post(&self.review_url)
            .bearer_auth(service_account_token)
            .json(&body)
            .send()
            .await
            .map_err(|e| {
                AuthError::Unavailable(format!("Kubernetes API server: {}", e.without_url()))
            })?;
        let status = response.status();
        if !status.is_success() {
            // 401/403 mean our own service account is refused: a deployment problem, not the caller's.
            tracing::warn!(%status, url = %self.review_url, "TokenReview failed");
            return Err(AuthError::Unavailable(format!(
                "Kubernetes API server answered TokenReview with HTTP {status}"
            )));
        }
        let answer: TokenReviewAnswer = response.json().await.map_err(|e| {
            AuthError::Unavailable(format!(
                "unreadable TokenReview answer: {}",
                e.without_url()
            ))
        })?;
        Ok(review_from(answer))
    }
}

fn review_from(answer: TokenReviewAnswer) -> Review {
    let Some(status) = answer.status.filter(|s| s.authenticated) else {
        return Review::Rejected("the Kubernetes API server does not accept the token".to_owned());
    };
    if let Some(error) = status.error.as_deref().filter(|e| !e.is_empty()) {
        tracing::debug!(%error, "TokenReview authenticated with an error note");
    }
    let Some(user) = status.user else {
        return Review::Rejected("TokenReview named no user".to_owned());
    };
    let Some(username) = user.username.filter(|u| !u.trim().is_empty()) else {
        return Review::Rejected("TokenReview named no username".to_owned());
    };
    if username.chars().any(char::is_control) {
        return Review::Rejected("TokenReview username contains control characters".to_owned());
    }
    // Groups end up in stored key snapshots; one unsafe name drops the caller rather than storing it.
    if let Some(bad) = user.groups.iter().find(|g| validate_group_name(g).is_err()) {
        return Review::Rejected(format!(
            "Kubernetes group {bad:?} is not a valid group name"
        ));
    }
    Review::Authenticated {
        username,
        groups: user.groups,
    }
}
