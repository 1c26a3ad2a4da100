//! The header names of the gateway contract, shared by Check, the token meter, the REST API and the CLI.
//!
//! A leaf module: the names are part of what Envoy, model servers and clients see, not of any
//! one edge.

/// Identity headers we own: always overwritten, so a client's copy never reaches the model.
pub const HEADER_USERNAME: &str = "x-maas-username";
pub const HEADER_GROUP: &str = "x-maas-group";
/// Also the header a REST client may send to choose among its subscriptions (as upstream).
pub const HEADER_SUBSCRIPTION: &str = "x-maas-subscription";
pub const HEADER_TIER: &str = "x-maas-tier";
pub const HEADER_KEY_ID: &str = "x-maas-key-id";
/// Identity headers only the gateway may set (Check stamps them on allowed requests): a request
/// that arrives carrying one is refused, at Check and on the REST API, as upstream's
/// `deny-client-identity-headers` rule does. `x-maas-subscription` is not among them: clients
/// legitimately send it.
pub const CLIENT_FORBIDDEN_HEADERS: [&str; 5] = [
    HEADER_USERNAME,
    HEADER_GROUP,
    "x-maas-groups",
    HEADER_TIER,
    HEADER_KEY_ID,
];

/// Whether `name` (any case) is one of [`CLIENT_FORBIDDEN_HEADERS`].
pub fn is_client_forbidden_header(name: &[u8]) -> bool {
    CLIENT_FORBIDDEN_HEADERS
        .iter()
        .any(|forbidden| forbidden.as_bytes().eq_ignore_ascii_case(name))
}

/// Carries the denial reason to the client (as Authorino does).
pub const HEADER_REASON: &str = "x-ext-auth-reason";
