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
/// Carries the denial reason to the client (as Authorino does).
pub const HEADER_REASON: &str = "x-ext-auth-reason";
