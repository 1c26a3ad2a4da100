//! gRPC adapters: Envoy's ext_authz Check, Envoy's ext_proc token meter and our KeyValidation API, translating only.

pub mod check_request;
pub mod check_response;
pub mod check_server;
pub mod ext_authz;
pub mod ext_proc;
pub mod key_validation;
pub mod socket;
