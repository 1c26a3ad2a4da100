//! Our `maas.authz.v1.KeyValidation/Validate`: upstream's internal validate contract over gRPC.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::authorizer::{Authorizer, CheckError, KeyValidity};
use crate::pb::key_validation_server::KeyValidation;
use crate::pb::{ValidateRequest, ValidateResponse};
use crate::store::KeyStore;

/// The tonic service; shares the authorizer (and so the cache) with Check.
pub struct KeyValidationService<S> {
    authorizer: Arc<Authorizer<S>>,
    tenant: String,
}

impl<S> std::fmt::Debug for KeyValidationService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyValidationService")
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

impl<S> KeyValidationService<S> {
    pub fn new(authorizer: Arc<Authorizer<S>>, tenant: String) -> Self {
        Self { authorizer, tenant }
    }
}

#[async_trait::async_trait]
impl<S: KeyStore> KeyValidation for KeyValidationService<S> {
    /// OK with `valid` and, if invalid, upstream's reason; a store failure is `UNAVAILABLE`
    /// (the caller may retry), an empty key `INVALID_ARGUMENT` (upstream's 400 "key is required").
    async fn validate(
        &self,
        request: Request<ValidateRequest>,
    ) -> Result<Response<ValidateResponse>, Status> {
        let request = request.into_inner();
        if request.key.is_empty() {
            return Err(Status::invalid_argument("key is required"));
        }
        let validity = self
            .authorizer
            .validate_key(&request.key, chrono::Utc::now())
            .await
            .map_err(|error: CheckError| match error {
                // Not looked up: the unknown-key budget is spent; the caller may retry later.
                CheckError::UnknownKeyThrottled(_) => {
                    Status::resource_exhausted("too many lookups of unknown keys; retry later")
                }
                error => {
                    tracing::warn!(%error, "validate failed: key store unavailable");
                    Status::unavailable("key store unavailable")
                }
            })?;
        let response = match validity {
            KeyValidity::Valid(record) => ValidateResponse {
                valid: true,
                user_id: record.id.to_string(),
                username: record.username.to_string(),
                key_id: record.id.to_string(),
                key_name: record.name.to_string(),
                groups: record.groups.to_vec(),
                subscription: record.subscription.to_string(),
                tenant: self.tenant.clone(),
                reason: String::new(),
            },
            KeyValidity::Invalid(invalid) => ValidateResponse {
                valid: false,
                tenant: self.tenant.clone(),
                reason: invalid.upstream_reason().to_owned(),
                ..Default::default()
            },
        };
        Ok(Response::new(response))
    }
}
