//! The REST API (axum): key management, access tokens, model and subscription discovery on the
//! public listener; validate and clean-up on the internal one. Handlers only translate between
//! HTTP and the domain ([`crate::keys`], [`crate::catalog`], [`crate::identity`], [`crate::limits`]).

mod api_keys;
pub mod body;
mod catalog;
pub mod error;
pub mod extract;
mod health;
mod internal;
mod openapi;
mod portal;
mod server;
mod state;
mod tokens;
mod usage;
mod usage_report;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use error::ApiError;

pub use openapi::GATEWAY_PREFIX;
pub use server::serve_http;
pub use state::{InternalApi, PortalOidc, PortalSettings, PublicApi};

use state::SharedState;

/// The public router (every route bare and under [`GATEWAY_PREFIX`]) and its OpenAPI document.
pub fn public_router(state: SharedState) -> (Router, utoipa::openapi::OpenApi) {
    let (routes, document) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(api_keys::create_key))
        .routes(routes!(api_keys::search_keys))
        .routes(routes!(api_keys::bulk_revoke))
        .routes(routes!(api_keys::key_config))
        .routes(routes!(api_keys::get_key, api_keys::revoke_key))
        .routes(routes!(tokens::issue_token, tokens::revoke_tokens))
        .routes(routes!(catalog::list_models))
        .routes(routes!(catalog::list_subscriptions))
        .routes(routes!(catalog::list_model_subscriptions))
        .routes(routes!(usage::usage))
        .routes(routes!(usage_report::usage_report))
        .routes(routes!(health::health))
        .routes(routes!(health::ready))
        .routes(routes!(openapi::openapi_json))
        .with_state(state.clone())
        .split_for_parts();
    let document_json = Arc::new(document.to_pretty_json().unwrap_or_default());
    let routes = routes
        .layer(axum::Extension(openapi::Document(document_json)))
        .merge(portal::router(state.clone()));
    let router = Router::new()
        .route("/", axum::routing::get(portal::redirect_to_ui))
        .merge(routes.clone())
        .nest(GATEWAY_PREFIX, routes)
        .fallback(route_not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.request_timeout,
            request_context,
        ));
    (router, document)
}

/// The internal router: upstream's `/internal/v1/...` callbacks, unauthenticated by design.
pub fn internal_router(state: Arc<InternalApi>) -> Router {
    Router::new()
        .route(
            "/internal/v1/api-keys/validate",
            axum::routing::post(internal::validate_key),
        )
        .route(
            "/internal/v1/api-keys/cleanup",
            axum::routing::post(internal::clean_up),
        )
        .route(
            "/internal/v1/subscriptions/select",
            axum::routing::post(internal::select),
        )
        .route("/health", axum::routing::get(health::health))
        .with_state(state.clone())
        .fallback(route_not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.request_timeout,
            request_context,
        ))
}

async fn route_not_found() -> ApiError {
    ApiError::RouteNotFound
}

const REQUEST_ID: &str = "x-request-id";

/// Per request: echoes a sane `x-request-id` (or makes one), bounds the time taken, and logs
/// one line with method, path (never the query), status and latency. No header values are logged.
async fn request_context(
    State(request_timeout): State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    let request_id = request
        .headers()
        .get(REQUEST_ID)
        .filter(|value| is_sane_request_id(value))
        .cloned()
        .unwrap_or_else(|| {
            HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
                .unwrap_or(HeaderValue::from_static("-"))
        });
    let span = tracing::info_span!(
        "http",
        request_id = request_id.to_str().unwrap_or("-"),
        method = %request.method(),
        path = request.uri().path(),
    );
    let started = Instant::now();
    let mut response =
        match tokio::time::timeout(request_timeout, next.run(request).instrument(span.clone()))
            .await
        {
            Ok(response) => response,
            Err(_) => ApiError::Timeout.into_response(),
        };
    span.in_scope(|| {
        tracing::info!(
            status = response.status().as_u16(),
            elapsed_ms = rounded_millis(started.elapsed()),
            "request"
        );
    });
    response.headers_mut().insert(REQUEST_ID, request_id);
    response
}

/// Milliseconds to two decimals (`8.11`, not `8.110449000000001`): enough for a request log,
/// and readable.
fn rounded_millis(elapsed: Duration) -> f64 {
    (elapsed.as_secs_f64() * 1e5).round() / 1e2
}

/// Visible ASCII, at most 128 characters: anything else is replaced, so logs stay clean.
fn is_sane_request_id(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(|b| b.is_ascii_graphic())
}
#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn the_request_log_gives_milliseconds_to_two_decimals() {
        let shown = super::rounded_millis(Duration::from_nanos(8_110_449)).to_string();

        assert_eq!(shown, "8.11");
    }
}
