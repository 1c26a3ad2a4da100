//! maas-authz: Envoy ext_authz server and key-management API for an LLM Models-as-a-Service gateway.
//!
//! See `ARCHITECTURE.md` for the map. Domain: [`key`], [`policy`], [`request_path`], [`assertion`], [`authorizer`], [`minting`],
//! [`keys`], [`catalog`], [`identity`], [`cache`], [`lookup_budget`], [`limits`], [`usage`], [`duration`],
//! [`ids`], [`bearer`], [`clock`]. Edges: [`grpc`], [`http`],
//! [`store`], [`tls`], [`cli`], [`serve`], [`metrics`]. Composition root: [`app`].

pub mod app;
#[cfg(test)]
mod architecture;
pub mod assertion;
pub mod authorizer;
pub mod bearer;
pub mod breaker;
pub mod cache;
pub mod catalog;
pub mod cli;
pub mod clock;
pub mod config;
pub mod duration;
#[cfg(test)]
mod edge_tests;
pub mod gateway_headers;
pub mod grpc;
pub mod housekeeping;
pub mod http;
pub mod identity;
pub mod ids;
pub mod key;
pub mod keys;
pub mod known_keys;
pub mod kube_policy;
pub mod last_used;
pub mod ledger;
pub mod limits;
pub mod lookup_budget;
pub mod metrics;
pub mod minting;
pub mod money;
pub mod pb;
pub mod policy;
pub mod request_path;
pub mod serve;
pub mod store;
pub mod tls;
pub mod usage;
