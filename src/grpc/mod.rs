//! gRPC adapters: Envoy's ext_authz Check and our KeyValidation API, translating only.

pub mod check_server;
pub mod ext_authz;
pub mod key_validation;
