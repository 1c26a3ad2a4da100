//! The self-service portal: static pages (HTML, CSS, ES modules) embedded in the binary and served
//! at `/ui/` with a strict Content-Security-Policy; the pages call the public REST API with the
//! user's bearer token, which lives only in the page's memory.

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

use super::error::ApiError;
use super::state::{PortalOidc, SharedState};
use crate::identity::{Caller, CredentialKind};

/// One embedded file: its name under `/ui/`, content type and bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("portal/assets/index.html"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("portal/assets/style.css"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("portal/assets/app.js"),
    },
    Asset {
        name: "api.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("portal/assets/api.js"),
    },
    Asset {
        name: "chart.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("portal/assets/chart.js"),
    },
    Asset {
        name: "pages.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("portal/assets/pages.js"),
    },
    Asset {
        name: "dom.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("portal/assets/dom.js"),
    },
    Asset {
        name: "signin.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("portal/assets/signin.js"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("portal/assets/favicon.svg"),
    },
];

/// The portal's routes (`/ui`, `/ui/`, `/ui/{asset}`, `/ui/config.json`, `/ui/session`), to be
/// served bare and under the gateway prefix; the pages find the API by relative URLs (`../v1/…`).
pub(super) fn router(state: SharedState) -> Router {
    let policy = HeaderValue::from_str(&content_security_policy(state.portal.oidc.as_ref()))
        .unwrap_or(HeaderValue::from_static("default-src 'none'"));
    Router::new()
        .route("/ui", get(redirect_to_ui))
        .route("/ui/", get(index))
        .route("/ui/config.json", get(portal_config))
        .route("/ui/session", get(session))
        .route("/ui/{asset}", get(asset))
        .with_state(state)
        .layer(axum::middleware::map_response(
            move |mut response: Response| {
                let policy = policy.clone();
                async move {
                    response
                        .headers_mut()
                        .insert(header::CONTENT_SECURITY_POLICY, policy);
                    response
                }
            },
        ))
}

/// `GET /` and `GET /ui`: to the portal, by a relative `ui/` (from `/` and from `/ui` alike it
/// means `/ui/`, and it also works behind a path prefix).
pub(super) async fn redirect_to_ui() -> Response {
    secured(
        (
            StatusCode::FOUND,
            [(header::LOCATION, HeaderValue::from_static("ui/"))],
        )
            .into_response(),
    )
}

async fn index() -> Response {
    serve_asset("index.html")
}

async fn asset(Path(name): Path<String>) -> Response {
    serve_asset(&name)
}

fn serve_asset(name: &str) -> Response {
    match ASSETS.iter().find(|asset| asset.name == name) {
        Some(asset) => secured(
            (
                [
                    (header::CONTENT_TYPE, asset.content_type),
                    // Small files; always revalidated so an upgrade shows at once.
                    (header::CACHE_CONTROL, "no-cache"),
                ],
                asset.body,
            )
                .into_response(),
        ),
        None => secured(ApiError::RouteNotFound.into_response()),
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PortalConfigView {
    oidc: Option<OidcView>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct OidcView {
    issuer: String,
    client_id: String,
    scopes: String,
}

/// `GET /ui/config.json`: what the sign-in page offers (no secrets: the OIDC client is public).
async fn portal_config(State(state): State<SharedState>) -> Response {
    let oidc = state.portal.oidc.as_ref().map(|oidc| OidcView {
        issuer: oidc.issuer.clone(),
        client_id: oidc.client_id.clone(),
        scopes: oidc.scopes.clone(),
    });
    let mut response = secured(Json(PortalConfigView { oidc }).into_response());
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct SessionView {
    username: String,
    groups: Vec<String>,
    admin: bool,
    /// `token`, `oidc` or `apiKey`: an API key can look but not mint keys.
    credential: &'static str,
}

/// `GET /ui/session`: who the bearer token is, so the portal can greet the user and show the
/// Admin page only to admins (the API enforces the same rule on every call).
async fn session(caller: Caller) -> Response {
    let credential = match caller.credential {
        CredentialKind::ApiKey { .. } => "apiKey",
        CredentialKind::OidcToken => "oidc",
        _ => "token",
    };
    let view = SessionView {
        username: caller.username.as_str().to_owned(),
        admin: caller.is_admin(),
        groups: caller.groups,
        credential,
    };
    let mut response = secured(Json(view).into_response());
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The portal's Content-Security-Policy: only our own files; no inline script or style, no
/// framing, no plugins. `connect-src` also allows the OIDC issuer (discovery, token endpoint).
pub(super) fn content_security_policy(oidc: Option<&PortalOidc>) -> String {
    let connect = match oidc.and_then(|oidc| origin_of(&oidc.issuer)) {
        Some(origin) => format!("'self' {origin}"),
        None => "'self'".to_owned(),
    };
    format!(
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; \
         connect-src {connect}; font-src 'self'; object-src 'none'; base-uri 'none'; \
         form-action 'self'; frame-ancestors 'none'"
    )
}

/// `scheme://host[:port]` of an http(s) URL; `None` for anything else.
fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme != "https" && scheme != "http" {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next()?;
    let clean = !authority.is_empty()
        && authority
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    clean.then(|| format!("{scheme}://{authority}"))
}

/// The browser-hardening headers every portal response carries (the CSP is set by the router
/// layer, which knows the OIDC issuer).
fn secured(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        HeaderName::from_static("permissions-policy"),
        HeaderValue::from_static("camera=(), microphone=(), geolocation=()"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oidc(issuer: &str) -> PortalOidc {
        PortalOidc {
            issuer: issuer.to_owned(),
            client_id: "portal".to_owned(),
            scopes: "openid".to_owned(),
        }
    }

    #[test]
    fn the_policy_allows_no_inline_script_and_no_framing() {
        let policy = content_security_policy(None);

        assert!(policy.contains("script-src 'self';"), "{policy}");
        assert!(policy.contains("style-src 'self';"), "{policy}");
        assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
        assert!(!policy.contains("unsafe"), "{policy}");
        assert!(policy.contains("connect-src 'self';"), "{policy}");
    }

    #[test]
    fn the_policy_lets_the_browser_reach_the_oidc_issuer_origin_only() {
        let policy =
            content_security_policy(Some(&oidc("https://login.example.com:8443/realms/maas")));

        assert!(
            policy.contains("connect-src 'self' https://login.example.com:8443;"),
            "{policy}"
        );
    }

    #[test]
    fn an_issuer_that_is_not_a_clean_http_url_adds_nothing_to_the_policy() {
        for issuer in [
            "javascript:alert(1)",
            "https://evil.example; script-src *",
            "",
        ] {
            let policy = content_security_policy(Some(&oidc(issuer)));

            assert!(policy.contains("connect-src 'self';"), "{issuer}: {policy}");
        }
    }

    #[test]
    fn every_embedded_asset_is_served_with_its_type_and_unknown_names_are_not_found() {
        for asset in ASSETS {
            let response = serve_asset(asset.name);
            assert_eq!(response.status(), StatusCode::OK, "{}", asset.name);
            assert_eq!(
                response.headers()[header::CONTENT_TYPE],
                asset.content_type,
                "{}",
                asset.name
            );
            assert_eq!(
                response.headers()[header::X_CONTENT_TYPE_OPTIONS],
                "nosniff"
            );
        }

        for name in ["../Cargo.toml", "nope.js", ".env", "index.html/"] {
            assert_eq!(serve_asset(name).status(), StatusCode::NOT_FOUND, "{name}");
        }
    }
}
