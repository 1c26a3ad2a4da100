//! Reading JSON request bodies: size cap, content type, parsing, each refused with a clear error.

use axum::body::Body;
use axum::http::{HeaderMap, header};
use futures::StreamExt;
use serde::de::DeserializeOwned;

/// Bodies larger than this are refused with 413, as upstream does.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Why a request body was refused before any handler logic ran.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    #[error("request body is larger than {} bytes", MAX_BODY_BYTES)]
    TooLarge,
    #[error("invalid JSON body: {0}")]
    Malformed(String),
    #[error("cannot read the request body")]
    Unreadable,
}

/// Reads an optional JSON body: `Ok(None)` when there is none (or only whitespace), which every
/// route treats as "all defaults". A body must be sent as `application/json` (or `…+json`):
/// anything else is 415, so a form-encoded `curl -d` fails loudly instead of being misread.
pub async fn read_json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
) -> Result<Option<T>, BodyError> {
    let declared_length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared_length.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut bytes = Vec::new();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| BodyError::Unreadable)?;
        if bytes.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(BodyError::TooLarge);
        }
        bytes.extend_from_slice(&chunk);
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    if !is_json_content_type(headers) {
        return Err(BodyError::UnsupportedMediaType);
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|error| BodyError::Malformed(error.to_string()))
}

/// `application/json` or `application/<anything>+json`, parameters (charset) ignored.
fn is_json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let media_type = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    media_type == "application/json"
        || (media_type.starts_with("application/") && media_type.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(content_type: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(value) = content_type {
            headers.insert(header::CONTENT_TYPE, value.parse().unwrap());
        }
        headers
    }

    #[tokio::test]
    async fn empty_bodies_mean_defaults_whatever_the_content_type() {
        let read = read_json::<serde_json::Value>(&headers(None), Body::from("  \n")).await;
        assert_eq!(read, Ok(None));
    }

    #[tokio::test]
    async fn bodies_must_be_json_and_declared_as_json() {
        let ok = read_json::<serde_json::Value>(
            &headers(Some("application/json; charset=utf-8")),
            Body::from("{\"a\":1}"),
        )
        .await;
        assert_eq!(ok, Ok(Some(serde_json::json!({"a": 1}))));
        let form = read_json::<serde_json::Value>(
            &headers(Some("application/x-www-form-urlencoded")),
            Body::from("{}"),
        )
        .await;
        assert_eq!(form, Err(BodyError::UnsupportedMediaType));
        let broken =
            read_json::<serde_json::Value>(&headers(Some("application/json")), Body::from("{"))
                .await;
        assert_eq!(
            broken,
            Err(BodyError::Malformed(
                "EOF while parsing an object at line 1 column 1".into()
            ))
        );
    }

    #[tokio::test]
    async fn bodies_over_the_cap_are_refused() {
        let big = vec![b' '; MAX_BODY_BYTES + 1];
        let read =
            read_json::<serde_json::Value>(&headers(Some("application/json")), Body::from(big))
                .await;
        assert_eq!(read, Err(BodyError::TooLarge));
    }
}
