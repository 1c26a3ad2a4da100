//! axum extractors for what every handler used to do by hand: authenticate the caller, read the
//! JSON body. A rejection is the same error response the handler would have returned.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::body::read_json;
use super::error::{ApiError, OpenAiError};
use super::state::SharedState;
use crate::gateway_headers::is_client_forbidden_header;
use crate::identity::{AuthError, Caller};

/// Who is calling, from the `Authorization` header (every identity source of the
/// [`crate::identity::IdentityResolver`]); a failure is the key API's (flat) error. A request
/// carrying an identity header only the gateway sets is refused (403) before anything else.
impl FromRequestParts<SharedState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &SharedState,
    ) -> Result<Self, Self::Rejection> {
        if parts
            .headers
            .keys()
            .any(|name| is_client_forbidden_header(name.as_str().as_bytes()))
        {
            return Err(AuthError::ForgedIdentityHeader.into());
        }
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

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::StatusCode;
    use axum::response::IntoResponse;

    use super::*;
    use crate::http::body::BodyError;

    #[derive(Debug, Default, PartialEq, serde::Deserialize)]
    struct Named {
        name: Option<String>,
    }

    fn request(content_type: Option<&str>, body: &'static str) -> Request {
        let mut builder = Request::builder().method("POST").uri("/");
        if let Some(value) = content_type {
            builder = builder.header(header::CONTENT_TYPE, value);
        }
        builder.body(Body::from(body)).unwrap()
    }

    #[tokio::test]
    async fn a_missing_body_is_the_default_value() {
        let read = JsonBody::<Named>::from_request(request(None, ""), &()).await;

        assert_eq!(
            read.map(|JsonBody(named)| named).ok(),
            Some(Named::default())
        );
    }

    #[tokio::test]
    async fn a_json_body_is_parsed_into_the_handlers_type() {
        let read = JsonBody::<Named>::from_request(
            request(Some("application/json"), r#"{"name":"laptop"}"#),
            &(),
        )
        .await;

        assert_eq!(
            read.map(|JsonBody(named)| named).ok(),
            Some(Named {
                name: Some("laptop".to_owned())
            })
        );
    }

    #[tokio::test]
    async fn a_refused_body_is_the_same_error_response_as_read_json_gives() {
        let read = JsonBody::<Named>::from_request(
            request(Some("application/x-www-form-urlencoded"), "name=laptop"),
            &(),
        )
        .await;

        let rejection = read.expect_err("a form body is refused");
        assert!(matches!(
            rejection,
            ApiError::Body(BodyError::UnsupportedMediaType)
        ));
        assert_eq!(
            rejection.into_response().status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
    }
}
