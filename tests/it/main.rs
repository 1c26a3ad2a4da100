//! Integration tests, one binary: real PostgreSQL (a fresh database per test), the real server on
//! free loopback ports, driven by real gRPC and HTTP clients.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_debug_implementations
)]

mod check;
mod cli;
mod migrations;
mod server;
mod support;
mod validate;
