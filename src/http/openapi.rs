//! The OpenAPI document of the public REST API, generated from the handlers' annotations.

use std::sync::Arc;

use axum::Extension;
use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::server::Server;
use utoipa::{Modify, OpenApi, ToSchema};

/// Upstream's error body on the key API: `{"error": "..."}`, plus `code` on some.
/// The prefix under which the gateway also exposes every public route (the document lists it
/// as a second server).
pub const GATEWAY_PREFIX: &str = "/maas-api";

#[derive(Debug, Serialize, ToSchema)]
pub struct FlatError {
    pub error: String,
    /// `invalid_subscription` when no subscription could be bound.
    pub code: Option<String>,
    /// `POST /v1/tokens` only: the expiration that was too short.
    pub provided_expiration: Option<String>,
}

/// OpenAI's error body, used by the discovery routes.
#[derive(Debug, Serialize, ToSchema)]
pub struct OpenAiErrorBody {
    pub error: OpenAiErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OpenAiErrorDetail {
    pub message: String,
    /// `invalid_request_error`, `permission_error` or `server_error`.
    #[serde(rename = "type")]
    pub kind: String,
    pub code: Option<String>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "maas-authz REST API",
        description = "Key management, access tokens and model discovery of the Models-as-a-Service \
            gateway. Every route is also served under the `/maas-api` prefix. Authenticate with \
            `Authorization: Bearer <token>`: an OpenShift/Kubernetes or OIDC token, or an `sk-oai-` \
            API key (which cannot mint keys or tokens). Request bodies must be `application/json` \
            (else 415) and at most 1 MiB (else 413)."
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "api-keys", description = "Create, search, inspect and revoke API keys"),
        (name = "tokens", description = "Short-lived access tokens"),
        (name = "discovery", description = "Models and subscriptions you can use"),
        (name = "health", description = "Probes"),
    ),
    components(schemas(FlatError, OpenAiErrorBody, OpenAiErrorDetail))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        openapi.servers = Some(vec![Server::new("/"), Server::new(GATEWAY_PREFIX)]);
    }
}

/// The rendered document, shared with the handler that serves it.
#[derive(Debug, Clone)]
pub struct Document(pub Arc<String>);

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "health",
    responses((status = 200, description = "OpenAPI 3.1 description of every public route",
        content_type = "application/json"))
)]
pub(super) async fn openapi_json(Extension(document): Extension<Document>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document.0.as_ref().clone(),
    )
}
