//! Integration tests, one binary: real PostgreSQL (a fresh database per test), the real server on
//! free loopback ports, driven by real gRPC and HTTP clients.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_debug_implementations
)]

mod abuse;
mod check;
mod cli;
mod cli_check;
mod e2e;
mod e2e_attacks;
mod e2e_tokens;
mod ext_proc;
mod fake_kube;
mod helm;
mod housekeeping;
mod identity;
mod kube_policy;
mod last_used;
mod limits;
mod migrations;
mod outage;
mod portal;
mod properties;
mod raw_http;
mod readme;
mod redis_cluster;
mod rest;
mod rest_admin;
mod rest_internal;
mod rest_models;
mod rest_openapi;
mod rest_search;
mod rest_support;
mod rest_tokens;
mod rest_validation;
mod revocation;
mod seeds;
mod server;
mod support;
mod tls;
mod upstream_contract;
mod usage_ledger;
mod usage_report;
mod validate;
mod warm_start;
