//! axum extractors for what every handler used to do by hand: authenticate the caller, read the
//! JSON body. A rejection is the same error response the handler would have returned.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::body::read_json;
use super::error::{ApiError, OpenAiError};
use super::state::SharedState;
use crate::identity::{AuthError, Caller};

/// Who is calling, from the `Authorization` header (every identity source of the
/// [`crate::identity::IdentityResolver`]); a failure is the key API's (flat) error.
impl FromRequestParts<SharedState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &SharedState,
    ) -> Result<Self, Self::Rejection> {
        let authorization = match parts.headers.get(header::AUTHORIZATION) {
            Some(value) => Some(value.to_str().map_err(|_| AuthError::Malformed)?),
            None => None,
        };
        Ok(state.identity.authenticate(authorization).await?)
    }
}

/// The caller of an OpenAI-style route: the same authentication, its failure in the OpenAI
/// error shape (so OpenAI SDKs raise the matching exception).
#[derive(Debug)]
pub struct OpenAiCaller(pub Caller);

impl FromRequestParts<SharedState> for OpenAiCaller {
    type Rejection = OpenAiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &SharedState,
    ) -> Result<Self, Self::Rejection> {
        Ok(OpenAiCaller(
            Caller::from_request_parts(parts, state).await?,
        ))
    }
}

/// A JSON request body read by [`read_json`]'s rules (1 MiB cap, `application/json` or
/// `…+json`, clear errors); no body, or only whitespace, is `T::default()`.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T, S> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned + Default,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let (parts, body) = request.into_parts();
        let value = read_json(&parts.headers, body).await?;
        Ok(JsonBody(value.unwrap_or_default()))
    }
}
