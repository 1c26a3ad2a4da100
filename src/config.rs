//! Configuration: one typed value per command, read once at start-up from flags or environment
//! variables (flags mirror the variables), failing fast with the variable's name.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, FromArgMatches, Parser, Subcommand, ValueEnum};

use crate::assertion::SigningKeys;
use crate::duration::parse_duration;
use crate::lookup_budget::{BudgetSettings, Rate};
use crate::minting::validate_group_name;
use crate::request_path::ModelFreePaths;
use crate::store::connect::{PgEndpoint, PgEndpointError};
use crate::store::postgres::PgSettings;
use crate::tls::CaBundle;

/// The `--help` heading of the settings most operators never change (README: *Expert tuning*).
pub const EXPERT_TUNING: &str = "Expert tuning";

/// maas-authz: API-key ext_authz server and key tools for an LLM Models-as-a-Service gateway.
#[derive(Debug, Parser)]
#[command(name = "maas-authz", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub logging: LogSettings,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve Envoy's ext_authz Check, KeyValidation and metrics.
    Serve(Box<ServeConfig>),
    /// Apply pending database migrations and exit.
    Migrate(DatabaseConfig),
    /// Operator key tools straight against the database (bootstrap and break-glass).
    Keys(KeysCommand),
    /// Delete ephemeral keys more than 30 minutes past expiry, then exit (for a CronJob).
    Cleanup(DatabaseConfig),
    /// Ask a running server's Check what Envoy would ask, and print its decision (exit code 0
    /// allowed, 1 denied, 2 error).
    Check(CheckCommand),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct LogSettings {
    /// Log line format. Levels come from RUST_LOG (default "info").
    #[arg(
        long,
        global = true,
        env = "MAAS_AUTHZ_LOG_FORMAT",
        value_name = "MAAS_AUTHZ_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

/// Where the keys live.
#[derive(Debug, Clone, Args)]
pub struct DatabaseConfig {
    /// PostgreSQL URL, e.g. postgres://user:pass@host:5432/maas.
    #[arg(
        long,
        env = "DATABASE_URL",
        value_name = "DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: String,
    /// Tenant whose keys this instance serves; every query is filtered by it.
    #[arg(
        long,
        env = "MAAS_AUTHZ_TENANT",
        value_name = "MAAS_AUTHZ_TENANT",
        default_value = "models-as-a-service"
    )]
    pub tenant: String,
    /// Connections in the query pool.
    #[arg(help_heading = EXPERT_TUNING, long, env = "MAAS_AUTHZ_DB_POOL_SIZE", value_name = "MAAS_AUTHZ_DB_POOL_SIZE", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub db_pool_size: u16,
    /// Longest a statement may take, waiting for a connection included.
    #[arg(help_heading = EXPERT_TUNING, long, env = "MAAS_AUTHZ_DB_QUERY_TIMEOUT", value_name = "MAAS_AUTHZ_DB_QUERY_TIMEOUT", default_value = "1s", value_parser = positive_duration)]
    pub db_query_timeout: Duration,
    /// Longest a new connection may take.
    #[arg(help_heading = EXPERT_TUNING, long, env = "MAAS_AUTHZ_DB_CONNECT_TIMEOUT", value_name = "MAAS_AUTHZ_DB_CONNECT_TIMEOUT", default_value = "3s", value_parser = positive_duration)]
    pub db_connect_timeout: Duration,
    /// PEM file of the CA certificates the database server's certificate must lead to, read at
    /// start-up (DATABASE_URL then needs sslmode=verify-full, verify-ca or require; libpq's
    /// sslrootcert= in the URL does the same). Unset: the built-in public CA roots.
    #[arg(long, env = "MAAS_AUTHZ_DATABASE_CA_FILE", value_name = "MAAS_AUTHZ_DATABASE_CA_FILE", value_parser = ca_bundle)]
    pub database_ca_file: Option<CaBundle>,
}

/// Everything `serve` needs.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    #[command(flatten)]
    pub database: DatabaseConfig,
    /// Envoy ext_authz and KeyValidation gRPC listener.
    #[arg(
        long,
        env = "MAAS_AUTHZ_GRPC_ADDR",
        value_name = "MAAS_AUTHZ_GRPC_ADDR",
        default_value = "0.0.0.0:50051"
    )]
    pub grpc_addr: SocketAddr,
    /// Prometheus listener (`/metrics`).
    #[arg(
        long,
        env = "MAAS_AUTHZ_METRICS_ADDR",
        value_name = "MAAS_AUTHZ_METRICS_ADDR",
        default_value = "0.0.0.0:9090"
    )]
    pub metrics_addr: SocketAddr,
    /// A MaaS manifest file or a directory of them (MaaSModelRef, MaaSSubscription, MaaSAuthPolicy);
    /// required with MAAS_AUTHZ_POLICY_SOURCE=files (the default).
    #[arg(
        long,
        env = "MAAS_AUTHZ_POLICY_PATH",
        value_name = "MAAS_AUTHZ_POLICY_PATH"
    )]
    pub policy_path: Option<PathBuf>,
    /// How often the policy files are checked for changes.
    #[arg(help_heading = EXPERT_TUNING, long, env = "MAAS_AUTHZ_POLICY_RELOAD_INTERVAL", value_name = "MAAS_AUTHZ_POLICY_RELOAD_INTERVAL", default_value = "2s", value_parser = positive_duration)]
    pub policy_reload_interval: Duration,
    /// Do not apply pending migrations at start-up (run `maas-authz migrate` yourself).
    #[arg(help_heading = EXPERT_TUNING,
        long,
        env = "MAAS_AUTHZ_SKIP_MIGRATIONS",
        value_name = "MAAS_AUTHZ_SKIP_MIGRATIONS",
        default_value_t = false
    )]
    pub skip_migrations: bool,
    /// Keys held in the cache.
    #[arg(help_heading = EXPERT_TUNING, long, env = "MAAS_AUTHZ_CACHE_CAPACITY", value_name = "MAAS_AUTHZ_CACHE_CAPACITY", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub cache_capacity: u64,
    /// Longest a cached key is trusted without re-reading it (status and expiry are still
    /// judged on every request; revocations on this replica evict at once).
    #[arg(help_heading = EXPERT_TUNING, long, env = "MAAS_AUTHZ_CACHE_TTL", value_name = "MAAS_AUTHZ_CACHE_TTL", default_value = "30s", value_parser = positive_duration)]
    pub cache_ttl: Duration,
    /// Unknown key hashes remembered, to spare the database from repeated junk.
    #[arg(help_heading = EXPERT_TUNING, long, env = "MAAS_AUTHZ_NEGATIVE_CACHE_CAPACITY", value_name = "MAAS_AUTHZ_NEGATIVE_CACHE_CAPACITY", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub negative_cache_capacity: u64,
    #[arg(help_heading = EXPERT_TUNING, long, env = "MAAS_AUTHZ_NEGATIVE_CACHE_TTL", value_name = "MAAS_AUTHZ_NEGATIVE_CACHE_TTL", default_value = "5s", value_parser = positive_duration)]
    pub negative_cache_ttl: Duration,
    /// While the database is unreachable, how old a cached key may get and still be used
    /// (stale-if-error; status and expiry are still judged per request). At or below
    /// MAAS_AUTHZ_CACHE_TTL, cached keys stop working when their TTL is over.
    #[arg(help_heading = EXPERT_TUNING, long, env = "MAAS_AUTHZ_CACHE_MAX_STALENESS", value_name = "MAAS_AUTHZ_CACHE_MAX_STALENESS", default_value = "15m", value_parser = positive_duration)]
    pub cache_max_staleness: Duration,
    /// Longest the Check path waits for a key lookup in the database, connection included
    /// (shorter than MAAS_AUTHZ_DB_QUERY_TIMEOUT: an unknown key should fail fast).
    #[arg(help_heading = EXPERT_TUNING, long, env = "MAAS_AUTHZ_DB_CHECK_TIMEOUT", value_name = "MAAS_AUTHZ_DB_CHECK_TIMEOUT", default_value = "250ms", value_parser = positive_duration)]
    pub db_check_timeout: Duration,
    /// Consecutive database failures (unreachable, timed out) that open the circuit breaker.
    #[arg(help_heading = EXPERT_TUNING, long, env = "MAAS_AUTHZ_DB_BREAKER_THRESHOLD", value_name = "MAAS_AUTHZ_DB_BREAKER_THRESHOLD", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub db_breaker_threshold: u32,
    /// How long an open circuit breaker refuses database calls before one probe goes through;
    /// also how often the database is pinged for health.
    #[arg(help_heading = EXPERT_TUNING, long, env = "MAAS_AUTHZ_DB_BREAKER_COOL_DOWN", value_name = "MAAS_AUTHZ_DB_BREAKER_COOL_DOWN", default_value = "2s", value_parser = positive_duration)]
    pub db_breaker_cool_down: Duration,
    /// How often one replica deletes ephemeral keys more than 30 minutes past expiry
    /// (`0` or `off`: never; run `maas-authz cleanup` from a CronJob instead).
    #[arg(help_heading = EXPERT_TUNING, long, env = "MAAS_AUTHZ_HOUSEKEEPING_INTERVAL", value_name = "MAAS_AUTHZ_HOUSEKEEPING_INTERVAL", default_value = "5m", value_parser = optional_duration)]
    pub housekeeping_interval: OptionalDuration,
    /// How long to wait for the database at start-up before giving up.
    #[arg(help_heading = EXPERT_TUNING, long, env = "MAAS_AUTHZ_STARTUP_TIMEOUT", value_name = "MAAS_AUTHZ_STARTUP_TIMEOUT", default_value = "30s", value_parser = positive_duration)]
    pub startup_timeout: Duration,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[arg(help_heading = EXPERT_TUNING, long, env = "MAAS_AUTHZ_SHUTDOWN_GRACE", value_name = "MAAS_AUTHZ_SHUTDOWN_GRACE", default_value = "10s", value_parser = positive_duration)]
    pub shutdown_grace: Duration,
    /// Warm start: at start-up, read the active keys used within this long (`last_used_at`)
    /// into the cache, in the background, up to `MAAS_AUTHZ_CACHE_CAPACITY` (`0` or `off`:
    /// no preload; every key is read on its first use).
    #[arg(help_heading = EXPERT_TUNING, long, env = "MAAS_AUTHZ_CACHE_PRELOAD", value_name = "MAAS_AUTHZ_CACHE_PRELOAD", default_value = "24h", value_parser = optional_duration)]
    pub cache_preload: OptionalDuration,
    /// Least time between two `last_used_at` writes for one key (Check never writes itself).
    #[arg(help_heading = EXPERT_TUNING, long, env = "MAAS_AUTHZ_LAST_USED_INTERVAL", value_name = "MAAS_AUTHZ_LAST_USED_INTERVAL", default_value = "60s", value_parser = positive_duration)]
    pub last_used_interval: Duration,
    /// How often noted key uses are written (all of them, in statements of at most
    /// `MAAS_AUTHZ_LAST_USED_BATCH_SIZE` keys).
    #[arg(help_heading = EXPERT_TUNING, long, env = "MAAS_AUTHZ_LAST_USED_FLUSH_INTERVAL", value_name = "MAAS_AUTHZ_LAST_USED_FLUSH_INTERVAL", default_value = "5s", value_parser = positive_duration)]
    pub last_used_flush_interval: Duration,
    /// Most keys one `last_used_at` statement writes, so each finishes well inside
    /// `MAAS_AUTHZ_DB_QUERY_TIMEOUT` however many keys were used: each row rewrites the row and
    /// its six index entries, ~0.1 ms under load, so 5 000 rows took up to ~1 s at a million
    /// keys on 2 cores (scripts/bench-scale.sh) and 1 000 stay near 0.1–0.2 s.
    #[arg(help_heading = EXPERT_TUNING, long, env = "MAAS_AUTHZ_LAST_USED_BATCH_SIZE", value_name = "MAAS_AUTHZ_LAST_USED_BATCH_SIZE", default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub last_used_batch_size: u32,
    /// Token meter (Envoy ext_proc): add `stream_options.include_usage` to streaming chat and
    /// completion requests that lack it, so their tokens are metered; the usage chunk the client
    /// did not ask for is then removed from its stream.
    #[arg(help_heading = EXPERT_TUNING, long, env = "MAAS_AUTHZ_FORCE_STREAM_USAGE", value_name = "MAAS_AUTHZ_FORCE_STREAM_USAGE", default_value_t = true, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub force_stream_usage: bool,
    /// Also return Check's identity as ext_authz dynamic metadata (user, groups, key id,
    /// subscription, tier, model, selected_subscription_key), for Envoy filters placed after
    /// ext_authz that read it (rate limit, access log). Off by default: Envoy spends CPU
    /// ingesting it on every request (BENCHMARKS.md), and nothing shipped reads it: the
    /// token meter trusts only the signed identity assertion header.
    #[arg(help_heading = EXPERT_TUNING, long, env = "MAAS_AUTHZ_DYNAMIC_METADATA", value_name = "MAAS_AUTHZ_DYNAMIC_METADATA", default_value_t = false, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub dynamic_metadata: bool,
    #[command(flatten)]
    pub http: HttpConfig,
    #[command(flatten)]
    pub identity: IdentitySettings,
    #[command(flatten)]
    pub limits: LimitsConfig,
    #[command(flatten)]
    pub enforcement: EnforcementConfig,
    #[command(flatten)]
    pub abuse: AbuseLimitsConfig,
    #[command(flatten)]
    pub policy_source: PolicySourceConfig,
    #[command(flatten)]
    pub ledger: LedgerConfig,
}

/// The usage ledger: what is booked, how it is written, how long it is kept.
#[derive(Debug, Clone, Args)]
pub struct LedgerConfig {
    /// Book every counted Check decision and metered response in the usage ledger (PostgreSQL,
    /// written behind in batches) for `GET /v1/usage/report`; `off` books nothing.
    #[arg(long, env = "MAAS_AUTHZ_USAGE_LEDGER", value_name = "MAAS_AUTHZ_USAGE_LEDGER", default_value = "on", action = clap::ArgAction::Set, value_parser = on_off)]
    pub usage_ledger: bool,
    /// How long ledger rows are kept (by the hour they count); housekeeping deletes older ones.
    /// `0` or `off`: kept forever.
    #[arg(long, env = "MAAS_AUTHZ_USAGE_RETENTION", value_name = "MAAS_AUTHZ_USAGE_RETENTION", default_value = "400d", value_parser = optional_duration)]
    pub usage_retention: OptionalDuration,
    /// The currency of `billingRate` and `spendLimits` amounts, shown in reports (ISO 4217 code).
    #[arg(long, env = "MAAS_AUTHZ_BILLING_CURRENCY", value_name = "MAAS_AUTHZ_BILLING_CURRENCY", default_value = crate::ledger::DEFAULT_CURRENCY, value_parser = currency_code)]
    pub billing_currency: String,
    /// How often the ledger's pending rows are written, in batched additive upserts.
    #[arg(help_heading = EXPERT_TUNING, long, env = "MAAS_AUTHZ_USAGE_FLUSH_INTERVAL", value_name = "MAAS_AUTHZ_USAGE_FLUSH_INTERVAL", default_value = "10s", value_parser = positive_duration)]
    pub usage_flush_interval: Duration,
    /// Most ledger rows (distinct hour, user, key, subscription, model) held in memory until
    /// written, e.g. while the database is down; records that would need a row beyond it are
    /// dropped and counted in `maas_authz_usage_ledger_dropped_total`.
    #[arg(help_heading = EXPERT_TUNING, long, env = "MAAS_AUTHZ_USAGE_BUFFER_ROWS", value_name = "MAAS_AUTHZ_USAGE_BUFFER_ROWS", default_value_t = crate::ledger::DEFAULT_BUFFER_ROWS as u64, value_parser = clap::value_parser!(u64).range(16..=10_000_000))]
    pub usage_buffer_rows: u64,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        defaults_of("ledger")
    }
}

/// `on` or `off` (also `true`/`false`, `1`/`0`, `yes`/`no`).
fn on_off(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "1" | "yes" => Ok(true),
        "off" | "false" | "0" | "no" => Ok(false),
        _ => Err(format!("{text:?} is not on or off")),
    }
}

/// An ISO 4217 currency code: three capital letters.
fn currency_code(text: &str) -> Result<String, String> {
    if text.len() == 3 && text.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{text:?} is not an ISO 4217 currency code (three capital letters, e.g. USD or EUR)"
        ))
    }
}

/// Where the policy comes from: files, or upstream's MaaS objects in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PolicySource {
    /// MAAS_AUTHZ_POLICY_PATH, re-read when its contents change.
    Files,
    /// MaaSModelRef, MaaSSubscription and MaaSAuthPolicy objects watched through the API server.
    Kubernetes,
}

/// The policy source and, for Kubernetes, which namespaces are watched (as upstream's maas-api).
#[derive(Debug, Clone, Args)]
pub struct PolicySourceConfig {
    /// `files` (MAAS_AUTHZ_POLICY_PATH) or `kubernetes` (the MaaS CRDs, through the API server
    /// of MAAS_AUTHZ_KUBE_API_URL, else the pod's service account, else the kubeconfig).
    #[arg(
        long,
        env = "MAAS_AUTHZ_POLICY_SOURCE",
        value_name = "MAAS_AUTHZ_POLICY_SOURCE",
        default_value = "files"
    )]
    pub policy_source: PolicySource,
    /// Namespace whose MaaSSubscriptions and MaaSAuthPolicies are watched (upstream's
    /// MAAS_SUBSCRIPTION_NAMESPACE).
    #[arg(
        long,
        env = "MAAS_AUTHZ_SUBSCRIPTION_NAMESPACE",
        value_name = "MAAS_AUTHZ_SUBSCRIPTION_NAMESPACE",
        default_value = crate::policy::DEFAULT_NAMESPACE,
        value_parser = namespace_name
    )]
    pub subscription_namespace: String,
    /// Comma-separated namespaces whose MaaSModelRefs are watched; empty: all namespaces (the
    /// ClusterRole the chart grants then covers the cluster).
    #[arg(
        long,
        env = "MAAS_AUTHZ_MODEL_NAMESPACES",
        value_name = "MAAS_AUTHZ_MODEL_NAMESPACES",
        default_value = "",
        value_parser = namespace_list
    )]
    pub model_namespaces: NamespaceList,
}

impl Default for PolicySourceConfig {
    fn default() -> Self {
        defaults_of("policy source")
    }
}

/// Namespaces named in a comma-separated setting, without duplicates, in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceList(pub Vec<String>);

/// A Kubernetes namespace name (RFC 1123 label): 1–63 lowercase letters, digits and `-`,
/// starting and ending with a letter or digit.
fn namespace_name(text: &str) -> Result<String, String> {
    let valid = (1..=63).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-');
    if valid {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{text:?} is not a Kubernetes namespace name (1-63 lowercase letters, digits and '-', \
             starting and ending with a letter or digit)"
        ))
    }
}

fn namespace_list(text: &str) -> Result<NamespaceList, String> {
    let mut namespaces: Vec<String> = Vec::new();
    for part in text
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
    {
        let namespace = namespace_name(part)?;
        if !namespaces.contains(&namespace) {
            namespaces.push(namespace);
        }
    }
    Ok(NamespaceList(namespaces))
}

impl ServeConfig {
    /// The policy files to read with MAAS_AUTHZ_POLICY_SOURCE=files; an error names the missing
    /// setting.
    pub fn policy_files(&self) -> anyhow::Result<&Path> {
        self.policy_path.as_deref().ok_or_else(|| {
            anyhow::anyhow!(
                "MAAS_AUTHZ_POLICY_PATH is required with MAAS_AUTHZ_POLICY_SOURCE=files (the \
                 default); set it to a manifest file or directory, or set \
                 MAAS_AUTHZ_POLICY_SOURCE=kubernetes"
            )
        })
    }
}

/// What keeps the model check and the token meter from being walked around.
#[derive(Debug, Clone, Args)]
pub struct EnforcementConfig {
    /// Comma-separated `<key id>=<secret>` (secret at least 32 bytes) that sign the identity
    /// assertion Check stamps for the token meter; the first signs, all verify (rotation: add
    /// the new key second everywhere, then first, then drop the old). Every replica needs the
    /// same keys. Unset: a random key for this process only (one replica).
    #[arg(long, env = "MAAS_AUTHZ_IDENTITY_SIGNING_KEYS", value_name = "MAAS_AUTHZ_IDENTITY_SIGNING_KEYS", hide_env_values = true, value_parser = secret_setting)]
    pub identity_signing_keys: Option<SecretSetting>,
    /// Comma-separated canonical paths (each with everything under it) that a valid key may call
    /// without naming a model, e.g. `/v1/tokenize`. Empty: every request must name a model.
    #[arg(help_heading = EXPERT_TUNING, long, env = "MAAS_AUTHZ_MODEL_FREE_PATHS", value_name = "MAAS_AUTHZ_MODEL_FREE_PATHS", default_value = "", value_parser = model_free_paths)]
    pub model_free_paths: ModelFreePaths,
    /// Largest request body on a model route; larger ones are refused with 413 (never passed
    /// unmetered). Envoy's per-connection buffer must be at least this large.
    #[arg(help_heading = EXPERT_TUNING, long, env = "MAAS_AUTHZ_METER_MAX_REQUEST_BYTES", value_name = "MAAS_AUTHZ_METER_MAX_REQUEST_BYTES", default_value_t = crate::usage::DEFAULT_MAX_REQUEST_BYTES as u64, value_parser = clap::value_parser!(u64).range(1024..=(256 * 1024 * 1024)))]
    pub meter_max_request_bytes: u64,
    /// HTTP status Check answers for an `sk-oai-` key that is malformed, unknown, revoked,
    /// expired or bound to no subscription: `401` (the seed's choice, the default) or `403`
    /// (upstream's gateway). A missing or malformed `Authorization` header is 401 either way.
    #[arg(help_heading = EXPERT_TUNING, long, env = "MAAS_AUTHZ_INVALID_KEY_STATUS", value_name = "MAAS_AUTHZ_INVALID_KEY_STATUS", default_value = "401", value_parser = ["401", "403"])]
    pub invalid_key_status: String,
}

impl Default for EnforcementConfig {
    fn default() -> Self {
        defaults_of("enforcement")
    }
}

impl EnforcementConfig {
    /// The assertion keys: the configured ones, else a random key for this process.
    pub fn signing_keys(&self) -> anyhow::Result<SigningKeys> {
        match &self.identity_signing_keys {
            Some(spec) => SigningKeys::parse(spec.expose())
                .map_err(|error| anyhow::anyhow!("MAAS_AUTHZ_IDENTITY_SIGNING_KEYS: {error}")),
            None => SigningKeys::ephemeral().map_err(|error| {
                anyhow::anyhow!("MAAS_AUTHZ_IDENTITY_SIGNING_KEYS unset: {error}")
            }),
        }
    }
}

/// A setting whose value is secret: kept as given, never shown by `Debug` or in a parse error.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretSetting(String);

impl SecretSetting {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretSetting(<redacted>)")
    }
}

/// Accepts any text: checked after parsing, so that clap never echoes a secret in its error.
fn secret_setting(text: &str) -> Result<SecretSetting, String> {
    Ok(SecretSetting(text.to_owned()))
}

fn model_free_paths(text: &str) -> Result<ModelFreePaths, String> {
    ModelFreePaths::parse(text).map_err(|error| error.to_string())
}

/// What a request does when the Redis counter store does not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnRedisError {
    /// Let the request through uncounted (the key and model were checked).
    Allow,
    /// Refuse it with gRPC UNAVAILABLE, i.e. the gateway's failure status (503).
    Deny,
}

/// Whether the policy's limits are enforced, and where their counters live.
#[derive(Debug, Clone, Args)]
pub struct LimitsConfig {
    /// Enforce the subscriptions' `requestRateLimits` and `tokenRateLimits` in Check (`false`:
    /// e.g. when a rate limiter in the gateway does it).
    #[arg(long, env = "MAAS_AUTHZ_LIMITS_ENABLED", value_name = "MAAS_AUTHZ_LIMITS_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub limits_enabled: bool,
    /// Redis URL (redis://[:password@]host:6379[/db], or rediss:// for TLS) for counters shared
    /// by every replica (a cluster: comma-separated seed nodes, with `MAAS_AUTHZ_REDIS_CLUSTER`);
    /// unset: counters in this process (exact for one replica).
    #[arg(long, env = "MAAS_AUTHZ_REDIS_URL", value_name = "MAAS_AUTHZ_REDIS_URL", hide_env_values = true, value_parser = RedisUrlParser)]
    pub redis_url: Option<String>,
    /// `MAAS_AUTHZ_REDIS_URL` is a Redis Cluster (or Valkey cluster): one or more comma-separated
    /// seed nodes; commands follow the cluster's slots. Each user's windows share one hash tag,
    /// so one Check touches one slot.
    #[arg(long, env = "MAAS_AUTHZ_REDIS_CLUSTER", value_name = "MAAS_AUTHZ_REDIS_CLUSTER", default_value_t = false, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub redis_cluster: bool,
    /// PEM file of the CA certificates the Redis server's certificate must lead to (a rediss://
    /// URL), read at start-up. Unset: the built-in public CA roots.
    #[arg(long, env = "MAAS_AUTHZ_REDIS_CA_FILE", value_name = "MAAS_AUTHZ_REDIS_CA_FILE", value_parser = ca_bundle)]
    pub redis_ca_file: Option<CaBundle>,
    /// Longest one Redis operation (connecting included) may take; keep it well under Envoy's
    /// ext_authz timeout.
    #[arg(help_heading = EXPERT_TUNING, long, env = "MAAS_AUTHZ_REDIS_TIMEOUT", value_name = "MAAS_AUTHZ_REDIS_TIMEOUT", default_value = "100ms", value_parser = positive_duration)]
    pub redis_timeout: Duration,
    /// Prefix of every counter key in Redis, to share one Redis between deployments.
    #[arg(help_heading = EXPERT_TUNING,
        long,
        env = "MAAS_AUTHZ_REDIS_KEY_PREFIX",
        value_name = "MAAS_AUTHZ_REDIS_KEY_PREFIX",
        default_value = crate::limits::DEFAULT_KEY_PREFIX
    )]
    pub redis_key_prefix: String,
    /// When Redis does not answer: `allow` the request uncounted (default: limits protect
    /// capacity, not access, so a Redis outage should not stop inference) or `deny` it (503).
    #[arg(help_heading = EXPERT_TUNING,
        long,
        env = "MAAS_AUTHZ_LIMITS_ON_REDIS_ERROR",
        value_name = "MAAS_AUTHZ_LIMITS_ON_REDIS_ERROR",
        default_value = "allow"
    )]
    pub limits_on_redis_error: OnRedisError,
}

impl Default for LimitsConfig {
    /// Limits on, counters in this process.
    fn default() -> Self {
        defaults_of("limits")
    }
}

/// A URL the Redis client accepts (checked without connecting). Unlike clap's own errors, a
/// refusal never repeats the value: a Redis URL may hold a password.
#[derive(Debug, Clone, Copy)]
struct RedisUrlParser;

impl clap::builder::TypedValueParser for RedisUrlParser {
    type Value = String;

    fn parse_ref(
        &self,
        command: &clap::Command,
        _argument: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<String, clap::Error> {
        value
            .to_str()
            .ok_or_else(|| "is not UTF-8".to_owned())
            .and_then(|text| {
                crate::limits::check_redis_url(text)
                    .map(|()| text.to_owned())
                    .map_err(|error| error.to_string())
            })
            .map_err(|reason| {
                clap::Error::raw(
                    clap::error::ErrorKind::ValueValidation,
                    format!("invalid value for MAAS_AUTHZ_REDIS_URL (--redis-url): {reason}\n"),
                )
                .with_cmd(command)
            })
    }
}

/// A CA bundle named by a setting, read and checked at start-up.
fn ca_bundle(text: &str) -> Result<CaBundle, String> {
    CaBundle::read(Path::new(text)).map_err(|error| error.to_string())
}

/// Abuse limits: how many keys one user may hold, and how much work credentials that no cache
/// holds may cause (budgets are per replica).
#[derive(Debug, Clone, Args)]
pub struct AbuseLimitsConfig {
    /// Most active (unrevoked, unexpired) keys one user may hold, ephemeral keys and access
    /// tokens included: minting more through the REST API answers 400. `off`: no cap. The
    /// operator CLI (`maas-authz keys create`) is never capped.
    #[arg(long, env = "MAAS_AUTHZ_MAX_ACTIVE_KEYS_PER_USER", value_name = "MAAS_AUTHZ_MAX_ACTIVE_KEYS_PER_USER", default_value = "100", value_parser = active_key_cap)]
    pub max_active_keys_per_user: ActiveKeyCap,
    /// Database lookups per second (this replica) for well-formed keys that no cache holds;
    /// beyond it (and its burst) Check answers 429 `unknown_key_rate_limited` without a query.
    /// Cached keys never count. `off`: unbounded.
    #[arg(help_heading = EXPERT_TUNING, long, env = "MAAS_AUTHZ_UNKNOWN_KEY_LOOKUPS_PER_SECOND", value_name = "MAAS_AUTHZ_UNKNOWN_KEY_LOOKUPS_PER_SECOND", default_value = "1000", value_parser = optional_rate)]
    pub unknown_key_lookups_per_second: OptionalRate,
    /// How many such lookups may run at once before the rate applies.
    #[arg(help_heading = EXPERT_TUNING, long, env = "MAAS_AUTHZ_UNKNOWN_KEY_LOOKUP_BURST", value_name = "MAAS_AUTHZ_UNKNOWN_KEY_LOOKUP_BURST", default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub unknown_key_lookup_burst: u32,
    /// The same budget per client address (Envoy's `source.address`; IPv6 by /64). `off`
    /// where Envoy sees only a load balancer's address rather than the clients'.
    #[arg(help_heading = EXPERT_TUNING, long, env = "MAAS_AUTHZ_UNKNOWN_KEY_LOOKUPS_PER_SECOND_PER_PEER", value_name = "MAAS_AUTHZ_UNKNOWN_KEY_LOOKUPS_PER_SECOND_PER_PEER", default_value = "100", value_parser = optional_rate)]
    pub unknown_key_lookups_per_second_per_peer: OptionalRate,
    /// How many lookups one client address may cause at once before its rate applies.
    #[arg(help_heading = EXPERT_TUNING, long, env = "MAAS_AUTHZ_UNKNOWN_KEY_LOOKUP_BURST_PER_PEER", value_name = "MAAS_AUTHZ_UNKNOWN_KEY_LOOKUP_BURST_PER_PEER", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub unknown_key_lookup_burst_per_peer: u32,
    /// Read the hashes of all active keys at start-up (in the background; about 18 bytes per
    /// key) and keep them current from key changes, so that lookups of keys known to exist
    /// never wait for the unknown-key budget: a cold replica under load serves its legitimate
    /// keys instead of answering 429. `false`: every uncached key takes a budget token.
    #[arg(help_heading = EXPERT_TUNING, long, env = "MAAS_AUTHZ_KNOWN_KEY_FILTER", value_name = "MAAS_AUTHZ_KNOWN_KEY_FILTER", default_value_t = true, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub known_key_filter: bool,
    /// Kubernetes TokenReviews per second (this replica) for REST bearer tokens not reviewed
    /// recently; beyond it (and its burst) the REST API answers 429. `off`: unbounded.
    #[arg(help_heading = EXPERT_TUNING, long, env = "MAAS_AUTHZ_TOKEN_REVIEWS_PER_SECOND", value_name = "MAAS_AUTHZ_TOKEN_REVIEWS_PER_SECOND", default_value = "100", value_parser = optional_rate)]
    pub token_reviews_per_second: OptionalRate,
    /// How many TokenReviews may run at once before the rate applies.
    #[arg(help_heading = EXPERT_TUNING, long, env = "MAAS_AUTHZ_TOKEN_REVIEW_BURST", value_name = "MAAS_AUTHZ_TOKEN_REVIEW_BURST", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub token_review_burst: u32,
}

impl Default for AbuseLimitsConfig {
    fn default() -> Self {
        defaults_of("abuse")
    }
}

impl AbuseLimitsConfig {
    /// The budget of database lookups for keys that no cache holds.
    pub fn unknown_key_budget(&self) -> BudgetSettings {
        BudgetSettings {
            global: self
                .unknown_key_lookups_per_second
                .with_burst(self.unknown_key_lookup_burst),
            per_peer: self
                .unknown_key_lookups_per_second_per_peer
                .with_burst(self.unknown_key_lookup_burst_per_peer),
        }
    }

    /// The budget of TokenReviews: global only, since the REST API's callers arrive through the
    /// gateway, whose address is the same for all of them.
    pub fn token_review_budget(&self) -> BudgetSettings {
        BudgetSettings {
            global: self
                .token_reviews_per_second
                .with_burst(self.token_review_burst),
            per_peer: None,
        }
    }
}

/// A cap on a user's active keys, or none (`off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActiveKeyCap(pub Option<u32>);

fn active_key_cap(text: &str) -> Result<ActiveKeyCap, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("off") {
        return Ok(ActiveKeyCap(None));
    }
    match text.parse::<u32>() {
        // 0 would forbid every self-service key: almost surely meant as "no cap", so say so.
        Ok(0) => Err("must be at least 1 (use off for no cap)".to_owned()),
        Ok(cap) if cap <= 1_000_000 => Ok(ActiveKeyCap(Some(cap))),
        _ => Err("must be a whole number from 1 to 1000000, or off for no cap".to_owned()),
    }
}

/// A rate per second, or none (`off`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OptionalRate(pub Option<f64>);

impl OptionalRate {
    fn with_burst(self, burst: u32) -> Option<Rate> {
        self.0.map(|per_second| Rate { per_second, burst })
    }
}

fn optional_rate(text: &str) -> Result<OptionalRate, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("off") {
        return Ok(OptionalRate(None));
    }
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && (0.001..=1e9).contains(&rate) => {
            Ok(OptionalRate(Some(rate)))
        }
        Ok(0.0) => Err("must be greater than zero (use off to disable)".to_owned()),
        _ => Err(
            "must be a number per second from 0.001 to 1000000000, like 1000 or 0.5 (or off to \
             disable)"
                .to_owned(),
        ),
    }
}

/// The REST API: its two listeners and the limits of what it mints.
#[derive(Debug, Clone, Args)]
pub struct HttpConfig {
    /// Public REST API (`/v1/...`, also under `/maas-api`).
    #[arg(
        long,
        env = "MAAS_AUTHZ_HTTP_ADDR",
        value_name = "MAAS_AUTHZ_HTTP_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    pub http_addr: SocketAddr,
    /// Internal API (`/internal/v1/...`: validate, cleanup), never served on the public listener.
    /// Keep it on loopback or behind a NetworkPolicy: it has no authentication.
    #[arg(
        long,
        env = "MAAS_AUTHZ_INTERNAL_ADDR",
        value_name = "MAAS_AUTHZ_INTERNAL_ADDR",
        default_value = "127.0.0.1:8081"
    )]
    pub internal_addr: SocketAddr,
    /// Base URL of the gateway for model URLs in `GET /v1/models` (e.g. https://maas.example.com);
    /// default: derived from each request's `x-forwarded-proto` and `Host`.
    #[arg(long, env = "MAAS_AUTHZ_PUBLIC_URL", value_name = "MAAS_AUTHZ_PUBLIC_URL", value_parser = http_url)]
    pub public_url: Option<String>,
    /// Longest (and default) lifetime of a regular API key, in days.
    #[arg(long, env = "MAAS_AUTHZ_API_KEY_MAX_EXPIRATION_DAYS", value_name = "MAAS_AUTHZ_API_KEY_MAX_EXPIRATION_DAYS", default_value_t = 90, value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub api_key_max_expiration_days: u32,
    /// Longest lifetime of an access token from `POST /v1/tokens` (at least 10m).
    #[arg(help_heading = EXPERT_TUNING, long, env = "MAAS_AUTHZ_TOKEN_MAX_EXPIRATION", value_name = "MAAS_AUTHZ_TOKEN_MAX_EXPIRATION", default_value = "24h", value_parser = token_max_expiration)]
    pub token_max_expiration: Duration,
    /// Longest a REST request may take, reading its body included.
    #[arg(help_heading = EXPERT_TUNING, long, env = "MAAS_AUTHZ_HTTP_REQUEST_TIMEOUT", value_name = "MAAS_AUTHZ_HTTP_REQUEST_TIMEOUT", default_value = "30s", value_parser = positive_duration)]
    pub http_request_timeout: Duration,
    /// OIDC client id of the self-service portal (`/ui/`): with `MAAS_AUTHZ_OIDC_ISSUER`, the
    /// portal offers the authorization-code flow with PKCE (a public client: no secret). Register
    /// `<public URL>/ui/` as its redirect URI and allow that origin (CORS) at the issuer.
    #[arg(long, env = "MAAS_AUTHZ_PORTAL_OIDC_CLIENT_ID", value_name = "MAAS_AUTHZ_PORTAL_OIDC_CLIENT_ID", value_parser = portal_client_id)]
    pub portal_oidc_client_id: Option<String>,
    /// Scopes the portal asks the issuer for (space-separated; `openid` is always added).
    #[arg(help_heading = EXPERT_TUNING, long, env = "MAAS_AUTHZ_PORTAL_OIDC_SCOPES", value_name = "MAAS_AUTHZ_PORTAL_OIDC_SCOPES", default_value = "openid profile email", value_parser = portal_scopes)]
    pub portal_oidc_scopes: String,
}

/// A client id the portal can put in a URL: 1 to 255 visible ASCII characters.
fn portal_client_id(text: &str) -> Result<String, String> {
    if !text.is_empty() && text.len() <= 255 && text.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(text.to_owned())
    } else {
        Err("must be 1 to 255 visible ASCII characters (no spaces)".to_owned())
    }
}

/// Scope names (visible ASCII, no `"` or `\\`), `openid` added when missing.
fn portal_scopes(text: &str) -> Result<String, String> {
    let mut scopes: Vec<&str> = text.split_whitespace().collect();
    if let Some(bad) = scopes.iter().find(|scope| {
        scope
            .bytes()
            .any(|b| b == b'"' || b == b'\\' || !b.is_ascii_graphic())
    }) {
        return Err(format!(
            "scope {bad:?} has a character scopes may not contain"
        ));
    }
    if !scopes.contains(&"openid") {
        scopes.insert(0, "openid");
    }
    Ok(scopes.join(" "))
}

/// Who may call the REST API: the identity sources and the admin groups.
#[derive(Debug, Clone, Default, Args)]
pub struct IdentitySettings {
    /// YAML list of `{token, username, groups}` for local runs and demos; read on every lookup
    /// (parsed again when its content changed), so an edit applies to the next request.
    #[arg(
        long,
        env = "MAAS_AUTHZ_STATIC_TOKENS_FILE",
        value_name = "MAAS_AUTHZ_STATIC_TOKENS_FILE"
    )]
    pub static_tokens_file: Option<PathBuf>,
    /// Comma-separated groups whose members are admins.
    #[arg(
        long,
        env = "MAAS_AUTHZ_ADMIN_GROUPS",
        value_name = "MAAS_AUTHZ_ADMIN_GROUPS",
        value_delimiter = ','
    )]
    pub admin_groups: Vec<String>,
    /// OIDC issuer URL (discovery at `<issuer>/.well-known/openid-configuration`).
    #[arg(
        long,
        env = "MAAS_AUTHZ_OIDC_ISSUER",
        value_name = "MAAS_AUTHZ_OIDC_ISSUER"
    )]
    pub oidc_issuer: Option<String>,
    /// Required `aud` (and `azp` when present) of OIDC tokens.
    #[arg(
        long,
        env = "MAAS_AUTHZ_OIDC_AUDIENCE",
        value_name = "MAAS_AUTHZ_OIDC_AUDIENCE"
    )]
    pub oidc_audience: Option<String>,
    /// JWT claim holding the username (default `sub`); as the Kubernetes API server's
    /// `--oidc-username-claim`. Pick a claim users cannot edit at the issuer.
    #[arg(help_heading = EXPERT_TUNING,
        long,
        env = "MAAS_AUTHZ_OIDC_USERNAME_CLAIM",
        value_name = "MAAS_AUTHZ_OIDC_USERNAME_CLAIM",
        value_parser = claim_name
    )]
    pub oidc_username_claim: Option<String>,
    /// Put before every OIDC username; unset or empty: `<issuer>#` unless the claim is `email`;
    /// `-`: no prefix (as `--oidc-username-prefix`).
    #[arg(help_heading = EXPERT_TUNING,
        long,
        env = "MAAS_AUTHZ_OIDC_USERNAME_PREFIX",
        value_name = "MAAS_AUTHZ_OIDC_USERNAME_PREFIX",
        value_parser = username_prefix
    )]
    pub oidc_username_prefix: Option<String>,
    /// JWT claim holding the groups (default `groups`): a list of strings, or one string.
    #[arg(help_heading = EXPERT_TUNING,
        long,
        env = "MAAS_AUTHZ_OIDC_GROUPS_CLAIM",
        value_name = "MAAS_AUTHZ_OIDC_GROUPS_CLAIM",
        value_parser = claim_name
    )]
    pub oidc_groups_claim: Option<String>,
    /// Put before every OIDC group (default: none), e.g. `oidc:`.
    #[arg(help_heading = EXPERT_TUNING,
        long,
        env = "MAAS_AUTHZ_OIDC_GROUPS_PREFIX",
        value_name = "MAAS_AUTHZ_OIDC_GROUPS_PREFIX",
        value_parser = groups_prefix
    )]
    pub oidc_groups_prefix: Option<String>,
    /// Kubernetes API server for TokenReview; default: in-cluster (`KUBERNETES_SERVICE_HOST`).
    #[arg(
        long,
        env = "MAAS_AUTHZ_KUBE_API_URL",
        value_name = "MAAS_AUTHZ_KUBE_API_URL"
    )]
    pub kube_api_url: Option<String>,
    /// Service-account token sent with TokenReviews; default: the in-cluster mount.
    #[arg(
        long,
        env = "MAAS_AUTHZ_KUBE_TOKEN_FILE",
        value_name = "MAAS_AUTHZ_KUBE_TOKEN_FILE"
    )]
    pub kube_token_file: Option<PathBuf>,
    /// CA bundle of an https API server; default: the in-cluster mount when present.
    #[arg(
        long,
        env = "MAAS_AUTHZ_KUBE_CA_FILE",
        value_name = "MAAS_AUTHZ_KUBE_CA_FILE"
    )]
    pub kube_ca_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct KeysCommand {
    #[command(flatten)]
    pub database: DatabaseConfig,
    #[command(subcommand)]
    pub action: KeysAction,
}

#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// Mint a key and print it once on standard output.
    Create(KeysCreate),
    /// Revoke a key by its id (the UUID, not the key).
    Revoke {
        /// The key's id as printed by `keys create` or `keys list`.
        id: String,
    },
    /// List a user's keys, newest first.
    List {
        #[arg(long)]
        user: String,
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..=10_000))]
        limit: i64,
    },
}

#[derive(Debug, Args)]
pub struct KeysCreate {
    #[arg(long)]
    pub user: String,
    /// A group of the user (repeat for several). `system:authenticated` is always included.
    #[arg(long = "group")]
    pub groups: Vec<String>,
    /// Subscription to bind; default: the user's highest-priority accessible one in the policy.
    #[arg(long)]
    pub subscription: Option<String>,
    #[arg(long, default_value = "operator-issued")]
    pub name: String,
    #[arg(long)]
    pub description: Option<String>,
    /// Lifetime, e.g. 90d, 30m, 2h30m.
    #[arg(long, default_value = "90d", value_parser = positive_duration)]
    pub expires_in: Duration,
    /// Policy used to choose and check the subscription.
    #[arg(
        long,
        env = "MAAS_AUTHZ_POLICY_PATH",
        value_name = "MAAS_AUTHZ_POLICY_PATH"
    )]
    pub policy_path: Option<PathBuf>,
    /// `text`: the key alone on standard output, what describes it on standard error; `json`:
    /// one object with `id`, `key`, `subscription` and `expiresAt` on standard output.
    #[arg(long, default_value = "text")]
    pub output: OutputFormat,
}

// ---- `maas-authz check` and the CLI's output formats -------------------------------------

/// How a CLI command prints its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// For people.
    Text,
    /// One JSON object on standard output, for scripts.
    Json,
}

/// `maas-authz check`: one ext_authz Check request, built as Envoy builds it, to a running server.
#[derive(Debug, Clone, Args)]
pub struct CheckCommand {
    /// The request path as the client sent it, e.g. /qwen3/v1/chat/completions.
    pub path: String,
    /// The server's gRPC listener (`serve`'s MAAS_AUTHZ_GRPC_ADDR), as host:port or
    /// http://host:port. The listener speaks plaintext gRPC (no TLS).
    #[arg(long, default_value = "127.0.0.1:50051", value_parser = grpc_server)]
    pub server: GrpcServer,
    /// An API key, sent as `authorization: Bearer <key>` (never printed).
    #[arg(long, value_parser = secret_setting)]
    pub key: Option<SecretSetting>,
    /// A file holding the API key (`-`: standard input), so that the key stays out of the
    /// process list and the shell history; surrounding whitespace is ignored.
    #[arg(long, value_name = "PATH", conflicts_with = "key")]
    pub key_file: Option<PathBuf>,
    /// The request's HTTP method.
    #[arg(long, default_value = "POST")]
    pub method: String,
    /// The request's Host (`:authority`).
    #[arg(long, default_value = "localhost")]
    pub host: String,
    /// A request header `name: value` (repeat for several), e.g. `x-gateway-model-name: qwen3`.
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE", value_parser = RequestHeaderParser)]
    pub headers: Vec<RequestHeader>,
    /// The route's model (`<namespace>/<name>`, e.g. llm/qwen3), sent as the ext_authz context
    /// extension `model` as an operator sets it on Envoy's model routes.
    #[arg(long)]
    pub model: Option<String>,
    /// The request body Envoy forwards to Check (`with_request_body`), e.g. '{"model":"qwen3"}'.
    #[arg(long)]
    pub body: Option<String>,
    /// The client's address, as Envoy reports it (`source.address`; per-address budgets use it).
    #[arg(long, default_value = "127.0.0.1")]
    pub source_address: std::net::IpAddr,
    /// Longest to wait for the server, connecting included.
    #[arg(long, default_value = "5s", value_parser = positive_duration)]
    pub timeout: Duration,
    /// `text` for people, `json` for scripts.
    #[arg(long, default_value = "text")]
    pub output: OutputFormat,
}

/// A gRPC server's `http://host:port` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcServer(String);

impl GrpcServer {
    pub fn url(&self) -> &str {
        &self.0
    }
}

fn grpc_server(text: &str) -> Result<GrpcServer, String> {
    if text.starts_with("https://") {
        return Err("maas-authz serves gRPC without TLS: use http://host:port or host:port".into());
    }
    let authority = text.strip_prefix("http://").unwrap_or(text);
    let authority = authority.strip_suffix('/').unwrap_or(authority);
    let port = authority
        .rsplit_once(':')
        .map(|(host, port)| (host, port.parse::<u16>()));
    match port {
        Some((host, Ok(port))) if !host.is_empty() && port > 0 && !host.contains(['/', '@']) => {
            Ok(GrpcServer(format!("http://{authority}")))
        }
        _ => Err("must be host:port or http://host:port, e.g. 127.0.0.1:50051".to_owned()),
    }
}

/// One request header for `check`: a lowercase name (as Envoy hands headers to Check) and its
/// value. `Debug` hides the value, which may be a credential.
#[derive(Clone, PartialEq, Eq)]
pub struct RequestHeader {
    pub name: String,
    pub value: String,
}

impl std::fmt::Debug for RequestHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RequestHeader({}: <redacted>)", self.name)
    }
}

/// Parses `--header` with [`request_header`]; unlike clap's own errors, a refusal never repeats
/// the value, which may hold a credential.
#[derive(Debug, Clone, Copy)]
struct RequestHeaderParser;

impl clap::builder::TypedValueParser for RequestHeaderParser {
    type Value = RequestHeader;

    fn parse_ref(
        &self,
        command: &clap::Command,
        _argument: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<RequestHeader, clap::Error> {
        value
            .to_str()
            .ok_or_else(|| "is not UTF-8".to_owned())
            .and_then(request_header)
            .map_err(|reason| {
                clap::Error::raw(
                    clap::error::ErrorKind::ValueValidation,
                    format!("invalid value for --header: {reason}\n"),
                )
                .with_cmd(command)
            })
    }
}

/// `name: value`.
fn request_header(text: &str) -> Result<RequestHeader, String> {
    let (name, value) = text
        .split_once(':')
        .ok_or("must be `name: value`, e.g. `x-api-key: sk-oai-…`")?;
    let name = name.trim();
    let valid_name = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !valid_name {
        return Err("the header name must be a non-empty HTTP token, e.g. x-api-key".to_owned());
    }
    let value = value.trim();
    if value.chars().any(char::is_control) {
        return Err("the header value cannot contain control characters".to_owned());
    }
    Ok(RequestHeader {
        name: name.to_ascii_lowercase(),
        value: value.to_owned(),
    })
}

impl Default for HttpConfig {
    fn default() -> Self {
        defaults_of("http")
    }
}

impl HttpConfig {
    /// Both listeners on free loopback ports, every limit at its default: for tools and tests
    /// that run the server in-process.
    pub fn on_loopback() -> Self {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            http_addr: loopback,
            internal_addr: loopback,
            ..Self::default()
        }
    }
}

impl DatabaseConfig {
    /// The database at `database_url`, every other setting at its default (ignoring the
    /// environment), as `maas-authz migrate --database-url <url>` would read it.
    pub fn new(database_url: &str) -> Self {
        parse_without_environment(
            "database",
            [OsStr::new("--database-url"), database_url.as_ref()],
        )
        .unwrap_or_else(|error| unreachable!("a database URL is any string: {error}"))
    }
}

impl ServeConfig {
    /// `serve` against `database_url` with the policy at `policy_path`, every other setting at
    /// its default (ignoring the environment), as the flags alone would give it.
    pub fn new(database_url: &str, policy_path: &Path) -> Self {
        parse_without_environment(
            "serve",
            [
                OsStr::new("--database-url"),
                database_url.as_ref(),
                OsStr::new("--policy-path"),
                policy_path.as_os_str(),
            ],
        )
        .unwrap_or_else(|error| unreachable!("the other serve flags all have defaults: {error}"))
    }
}

/// A settings group with every flag at its default, ignoring the environment: the `Default` of
/// each group, so code, tools and tests start from the defaults `--help` documents.
fn defaults_of<T: Args + FromArgMatches>(group: &'static str) -> T {
    parse_without_environment(group, std::iter::empty::<&OsStr>())
        .unwrap_or_else(|error| unreachable!("the {group} flags all have defaults: {error}"))
}

/// Parses `flags` into a settings group as the command line would, with no variable read.
fn parse_without_environment<'a, T: Args + FromArgMatches>(
    group: &'static str,
    flags: impl IntoIterator<Item = &'a OsStr>,
) -> Result<T, clap::Error> {
    let command = T::augment_args(clap::Command::new(group)).mut_args(|arg| arg.env(None));
    let arguments = std::iter::once(OsStr::new(group)).chain(flags);
    T::from_arg_matches(&command.try_get_matches_from(arguments)?)
}

fn token_max_expiration(text: &str) -> Result<Duration, String> {
    let duration = positive_duration(text)?;
    if duration < crate::minting::TOKEN_MIN_LIFETIME {
        return Err("must be at least 10m (the shortest token lifetime)".to_owned());
    }
    Ok(duration)
}

/// An absolute `http://` or `https://` URL without query or fragment; trailing `/` dropped.
fn http_url(text: &str) -> Result<String, String> {
    let rest = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"))
        .ok_or("must start with http:// or https://")?;
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || text.contains(['?', '#', ' ']) {
        return Err("must be an absolute URL like https://maas.example.com".to_owned());
    }
    Ok(text.trim_end_matches('/').to_owned())
}

/// A period that may be switched off (`0` or `off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionalDuration(pub Option<Duration>);

fn optional_duration(text: &str) -> Result<OptionalDuration, String> {
    if text.trim().eq_ignore_ascii_case("off") || text.trim() == "0" {
        return Ok(OptionalDuration(None));
    }
    match parse_duration(text) {
        Ok(duration) if duration.is_zero() => Ok(OptionalDuration(None)),
        Ok(duration) => Ok(OptionalDuration(Some(duration))),
        Err(error) => Err(format!("{error} (or 0/off to disable)")),
    }
}

fn positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text) {
        Ok(duration) if duration.is_zero() => Err("must be greater than zero".to_owned()),
        Ok(duration) => Ok(duration),
        Err(error) => Err(error.to_string()),
    }
}

/// A JWT claim name for `MAAS_AUTHZ_OIDC_USERNAME_CLAIM` and `MAAS_AUTHZ_OIDC_GROUPS_CLAIM`.
fn claim_name(value: &str) -> Result<String, String> {
    if value.trim().is_empty() {
        return Err(
            "must name a JWT claim, e.g. sub, email or preferred_username; it cannot be empty"
                .to_owned(),
        );
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("a claim name cannot contain whitespace or control characters".to_owned());
    }
    Ok(value.to_owned())
}

/// `MAAS_AUTHZ_OIDC_USERNAME_PREFIX`: any text but control characters (empty: the default).
fn username_prefix(value: &str) -> Result<String, String> {
    if value.chars().any(char::is_control) {
        return Err("a username prefix cannot contain control characters".to_owned());
    }
    Ok(value.to_owned())
}

/// `MAAS_AUTHZ_OIDC_GROUPS_PREFIX`: prefixed groups must still be valid group names (empty: none).
fn groups_prefix(value: &str) -> Result<String, String> {
    if !value.is_empty() && validate_group_name(value).is_err() {
        return Err(
            "prefixed groups must still be valid group names: use only letters, digits and : . _ -"
                .to_owned(),
        );
    }
    Ok(value.to_owned())
}

/// Settings for the pool, from the shared database configuration.
pub fn pg_settings(database: &DatabaseConfig) -> PgSettings {
    PgSettings {
        database_url: database.database_url.clone(),
        database_ca_file: database.database_ca_file.clone(),
        tenant: database.tenant.clone(),
        pool_size: usize::from(database.db_pool_size),
        query_timeout: database.db_query_timeout,
        connect_timeout: database.db_connect_timeout,
    }
}

/// Where the database is and how to reach it (TLS included), from the shared configuration.
pub fn pg_endpoint(database: &DatabaseConfig) -> Result<PgEndpoint, PgEndpointError> {
    PgEndpoint::new(&database.database_url, database.database_ca_file.as_ref())
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use clap::CommandFactory;

    use super::*;

    #[test]
    fn an_optional_period_is_off_for_zero_or_off_and_a_duration_otherwise() {
        assert_eq!(optional_duration("off"), Ok(OptionalDuration(None)));
        assert_eq!(optional_duration("OFF"), Ok(OptionalDuration(None)));
        assert_eq!(optional_duration("0"), Ok(OptionalDuration(None)));
        assert_eq!(optional_duration("0s"), Ok(OptionalDuration(None)));
        assert_eq!(
            optional_duration("5m"),
            Ok(OptionalDuration(Some(Duration::from_secs(300))))
        );
    }

    #[test]
    fn bad_enforcement_settings_name_the_variable_and_never_echo_a_secret() {
        let secret = "a-short-secret";
        let config = EnforcementConfig {
            identity_signing_keys: Some(SecretSetting::new(format!("k1={secret}"))),
            ..EnforcementConfig::default()
        };

        let error = config.signing_keys().unwrap_err().to_string();

        assert_eq!(
            error,
            "MAAS_AUTHZ_IDENTITY_SIGNING_KEYS: entry 1 (key id \"k1\"): the secret must be at \
             least 32 bytes"
        );
        assert!(!format!("{config:?}").contains(secret));
        assert_eq!(
            model_free_paths("/v1/../x").unwrap_err(),
            "\"/v1/../x\" is not a canonical path: the path has a dot segment ('.' or '..')"
        );
    }

    #[test]
    fn bad_portal_oidc_settings_name_the_variable_and_say_what_is_wrong() {
        let serve = |extra: &[&str]| {
            let mut args = vec![
                "maas-authz",
                "serve",
                "--database-url",
                "postgres://x@localhost/db",
                "--policy-path",
                "examples/policy",
            ];
            args.extend_from_slice(extra);
            Cli::try_parse_from(args)
                .map(|_| ())
                .unwrap_err()
                .to_string()
        };

        let error = serve(&["--portal-oidc-client-id", "has space"]);
        assert!(
            error.contains("MAAS_AUTHZ_PORTAL_OIDC_CLIENT_ID")
                && error.contains("visible ASCII characters"),
            "{error}"
        );
        let error = serve(&["--portal-oidc-scopes", "openid \"x"]);
        assert!(
            error.contains("MAAS_AUTHZ_PORTAL_OIDC_SCOPES") && error.contains("may not contain"),
            "{error}"
        );
        assert_eq!(
            portal_scopes("profile  email").unwrap(),
            "openid profile email"
        );
        assert_eq!(portal_scopes("email openid").unwrap(), "email openid");
        assert_eq!(portal_client_id("maas-portal").unwrap(), "maas-portal");
    }

    #[test]
    fn without_signing_keys_a_process_key_is_made_up() {
        let keys = EnforcementConfig::default().signing_keys().unwrap();

        assert!(keys.is_ephemeral());
    }

    #[test]
    fn the_serve_command_reads_the_enforcement_settings_from_flags() {
        let cli = Cli::try_parse_from([
            "maas-authz",
            "serve",
            "--database-url",
            "postgres://x@localhost/db",
            "--policy-path",
            "examples/policy",
            "--model-free-paths",
            "/v1/tokenize",
            "--meter-max-request-bytes",
            "2048",
            "--identity-signing-keys",
            "k=0123456789abcdef0123456789abcdef",
        ])
        .unwrap();
        let Command::Serve(config) = cli.command else {
            panic!("not serve");
        };
        assert_eq!(config.enforcement.meter_max_request_bytes, 2048);
        assert!(!config.enforcement.model_free_paths.is_empty());
        assert_eq!(
            config.enforcement.signing_keys().unwrap().signing_key_id(),
            "k"
        );
        let too_small = Cli::try_parse_from([
            "maas-authz",
            "serve",
            "--database-url",
            "postgres://x@localhost/db",
            "--policy-path",
            "p",
            "--meter-max-request-bytes",
            "10",
        ])
        .unwrap_err()
        .to_string();
        assert!(
            too_small.contains("MAAS_AUTHZ_METER_MAX_REQUEST_BYTES"),
            "{too_small}"
        );
    }

    fn serve_flags(extra: &[&str]) -> Result<Box<ServeConfig>, String> {
        let mut arguments = vec![
            "maas-authz",
            "serve",
            "--database-url",
            "postgres://x@localhost/db",
        ];
        arguments.extend_from_slice(extra);
        match Cli::try_parse_from(arguments) {
            Ok(Cli {
                command: Command::Serve(config),
                ..
            }) => Ok(config),
            Ok(_) => Err("not serve".to_owned()),
            Err(error) => Err(error.to_string()),
        }
    }

    #[test]
    fn the_kubernetes_policy_source_needs_no_policy_path_and_reads_its_namespaces() {
        let config = serve_flags(&[
            "--policy-source",
            "kubernetes",
            "--subscription-namespace",
            "maas-subs",
            "--model-namespaces",
            "llm, team-a,llm",
        ])
        .unwrap();

        assert_eq!(config.policy_source.policy_source, PolicySource::Kubernetes);
        assert_eq!(config.policy_source.subscription_namespace, "maas-subs");
        assert_eq!(
            config.policy_source.model_namespaces,
            NamespaceList(vec!["llm".to_owned(), "team-a".to_owned()])
        );
        assert!(config.policy_path.is_none());
    }

    #[test]
    fn the_files_policy_source_without_a_path_names_the_missing_setting() {
        let config = serve_flags(&[]).unwrap();

        let error = config.policy_files().unwrap_err().to_string();

        assert!(
            error.starts_with(
                "MAAS_AUTHZ_POLICY_PATH is required with MAAS_AUTHZ_POLICY_SOURCE=files"
            ),
            "{error}"
        );
    }

    #[test]
    fn wrong_policy_source_settings_are_refused_with_the_variable_and_the_rule() {
        let unknown = serve_flags(&["--policy-source", "etcd"]).unwrap_err();
        let bad_namespace =
            serve_flags(&["--subscription-namespace", "Models_As_A_Service"]).unwrap_err();
        let bad_list = serve_flags(&["--model-namespaces", "llm,-bad"]).unwrap_err();
        let too_long = serve_flags(&["--model-namespaces", &"a".repeat(64)]).unwrap_err();

        assert!(
            unknown.contains("MAAS_AUTHZ_POLICY_SOURCE") && unknown.contains("kubernetes"),
            "{unknown}"
        );
        assert!(
            bad_namespace.contains("MAAS_AUTHZ_SUBSCRIPTION_NAMESPACE")
                && bad_namespace.contains("is not a Kubernetes namespace name"),
            "{bad_namespace}"
        );
        assert!(
            bad_list.contains("MAAS_AUTHZ_MODEL_NAMESPACES") && bad_list.contains("\"-bad\""),
            "{bad_list}"
        );
        assert!(too_long.contains("1-63"), "{too_long}");
    }

    #[test]
    fn the_ledger_settings_refuse_bad_values_naming_the_variable() {
        let serve = |flag: &str, value: &str| {
            Cli::try_parse_from([
                "maas-authz",
                "serve",
                "--database-url",
                "postgres://x@localhost/db",
                "--policy-path",
                "p",
                flag,
                value,
            ])
        };
        for (flag, value, variable, why) in [
            (
                "--usage-ledger",
                "maybe",
                "MAAS_AUTHZ_USAGE_LEDGER",
                "is not on or off",
            ),
            (
                "--billing-currency",
                "usd",
                "MAAS_AUTHZ_BILLING_CURRENCY",
                "ISO 4217",
            ),
            (
                "--billing-currency",
                "EURO",
                "MAAS_AUTHZ_BILLING_CURRENCY",
                "ISO 4217",
            ),
            (
                "--usage-retention",
                "forever",
                "MAAS_AUTHZ_USAGE_RETENTION",
                "0/off",
            ),
            (
                "--usage-buffer-rows",
                "8",
                "MAAS_AUTHZ_USAGE_BUFFER_ROWS",
                "16",
            ),
            (
                "--usage-flush-interval",
                "0s",
                "MAAS_AUTHZ_USAGE_FLUSH_INTERVAL",
                "greater than zero",
            ),
        ] {
            let error = serve(flag, value).unwrap_err().to_string();
            assert!(
                error.contains(variable) && error.contains(why),
                "{flag} {value}: {error}"
            );
        }
        let Command::Serve(off) = serve("--usage-ledger", "off").unwrap().command else {
            panic!("not serve");
        };
        assert!(!off.ledger.usage_ledger);
        let Command::Serve(kept) = serve("--usage-retention", "off").unwrap().command else {
            panic!("not serve");
        };
        assert_eq!(kept.ledger.usage_retention.0, None);
        assert_eq!(LedgerConfig::default().billing_currency, "USD");
        assert_eq!(
            LedgerConfig::default().usage_retention.0,
            Some(Duration::from_secs(400 * 86_400))
        );
    }

    #[test]
    fn the_active_key_cap_is_a_positive_number_or_off() {
        assert_eq!(active_key_cap("100"), Ok(ActiveKeyCap(Some(100))));
        assert_eq!(active_key_cap("OFF"), Ok(ActiveKeyCap(None)));
        assert_eq!(
            active_key_cap("0"),
            Err("must be at least 1 (use off for no cap)".to_owned())
        );
        assert!(
            active_key_cap("-3")
                .unwrap_err()
                .contains("or off for no cap")
        );
        assert!(
            active_key_cap("lots")
                .unwrap_err()
                .contains("or off for no cap")
        );
    }

    #[test]
    fn a_rate_is_a_positive_number_per_second_or_off() {
        assert_eq!(optional_rate("1000"), Ok(OptionalRate(Some(1000.0))));
        assert_eq!(optional_rate("0.5"), Ok(OptionalRate(Some(0.5))));
        assert_eq!(optional_rate("off"), Ok(OptionalRate(None)));
        assert_eq!(
            optional_rate("0"),
            Err("must be greater than zero (use off to disable)".to_owned())
        );
        for bad in ["-1", "NaN", "inf", "fast", "1e12"] {
            assert!(
                optional_rate(bad)
                    .unwrap_err()
                    .contains("(or off to disable)"),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_default_abuse_limits_are_the_documented_ones() {
        let defaults = AbuseLimitsConfig::default();

        assert_eq!(defaults.max_active_keys_per_user, ActiveKeyCap(Some(100)));
        assert_eq!(
            defaults.unknown_key_budget(),
            BudgetSettings {
                global: Some(Rate {
                    per_second: 1_000.0,
                    burst: 1_000
                }),
                per_peer: Some(Rate {
                    per_second: 100.0,
                    burst: 200
                }),
            }
        );
        assert_eq!(
            defaults.token_review_budget(),
            BudgetSettings {
                global: Some(Rate {
                    per_second: 100.0,
                    burst: 500
                }),
                per_peer: None,
            }
        );
    }

    #[test]
    fn an_optional_period_that_is_neither_says_how_to_disable_it() {
        let error = optional_duration("hourly").unwrap_err();

        assert!(error.contains("(or 0/off to disable)"), "{error}");
    }

    /// A variable as `--help` shows it: its default (if any) and whether it is expert tuning.
    type InCode = (Option<String>, bool);

    /// Every variable the CLI reads, from every subcommand.
    fn variables_in_code() -> BTreeMap<String, InCode> {
        fn walk(command: &clap::Command, found: &mut BTreeMap<String, InCode>) {
            for argument in command.get_arguments() {
                if let Some(variable) = argument.get_env() {
                    let default = argument.get_default_values();
                    let default = (!default.is_empty()).then(|| {
                        let values: Vec<_> = default.iter().map(|v| v.to_string_lossy()).collect();
                        values.join(",")
                    });
                    let expert = argument.get_help_heading() == Some(EXPERT_TUNING);
                    found.insert(variable.to_string_lossy().into_owned(), (default, expert));
                }
            }
            for subcommand in command.get_subcommands() {
                walk(subcommand, found);
            }
        }
        let mut found = BTreeMap::new();
        walk(&Cli::command(), &mut found);
        found
    }

    /// A row of README's configuration tables: its variables (`A` / `B`), the defaults written
    /// in its second cell (`x` / `y`), and whether it is in the *Expert tuning* table.
    type ReadmeRow = (Vec<String>, Vec<String>, bool);

    fn rows_in_readme() -> Vec<ReadmeRow> {
        let readme = include_str!("../README.md");
        let section = readme
            .split("\n## Configuration\n")
            .nth(1)
            .and_then(|rest| rest.split("\n## ").next())
            .unwrap_or_default();
        let backticked = |cell: &str| -> Vec<String> {
            cell.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect()
        };
        let mut expert = false;
        let mut rows = Vec::new();
        for line in section.lines() {
            if line.starts_with("### ") {
                expert = line == "### Expert tuning";
            } else if line.starts_with("| `") {
                let cells: Vec<&str> = line.split(" | ").collect();
                let defaults = backticked(cells.get(1).copied().unwrap_or(""));
                rows.push((backticked(cells[0]), defaults, expert));
            }
        }
        rows
    }

    #[test]
    fn the_readme_configuration_tables_name_every_variable_the_code_reads_and_no_other() {
        let in_code: BTreeSet<String> = variables_in_code().into_keys().collect();
        let in_readme: BTreeSet<String> = rows_in_readme()
            .into_iter()
            .flat_map(|(names, _, _)| names)
            .collect();

        let undocumented: Vec<_> = in_code.difference(&in_readme).collect();
        let unknown: Vec<_> = in_readme.difference(&in_code).collect();
        assert!(
            undocumented.is_empty() && unknown.is_empty(),
            "README.md's configuration tables are out of date: not documented {undocumented:?}, \
             documented but not read by the code {unknown:?}"
        );
    }

    #[test]
    fn the_readme_configuration_tables_state_the_defaults_the_code_has() {
        let in_code = variables_in_code();
        let mut wrong = Vec::new();

        for (names, defaults, _) in rows_in_readme() {
            if names.len() != defaults.len() {
                continue; // a default in words, e.g. "(unset: off)"
            }
            for (name, documented) in names.iter().zip(&defaults) {
                // Without a default in the flag, the default is applied later, in words.
                if let Some((Some(actual), _)) = in_code.get(name)
                    && actual != documented
                {
                    wrong.push(format!(
                        "{name}: README says {documented:?}, code has {actual:?}"
                    ));
                }
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    #[test]
    fn the_readme_puts_exactly_the_expert_knobs_of_help_in_its_expert_table() {
        let in_code = variables_in_code();
        let mut misplaced = Vec::new();

        for (names, _, in_expert_table) in rows_in_readme() {
            for name in names {
                if let Some((_, expert)) = in_code.get(&name)
                    && *expert != in_expert_table
                {
                    misplaced.push(name);
                }
            }
        }
        assert!(
            misplaced.is_empty(),
            "in README's other table than `--help` puts them: {misplaced:?}"
        );
    }

    #[test]
    fn each_settings_group_defaults_to_what_the_flags_alone_give() {
        let serve = ServeConfig::new("postgres://db.example/maas", Path::new("/etc/maas/policy"));

        assert_eq!(serve.database.database_url, "postgres://db.example/maas");
        assert_eq!(
            serve.policy_path.as_deref(),
            Some(Path::new("/etc/maas/policy"))
        );
        assert_eq!(serve.policy_source.policy_source, PolicySource::Files);
        assert_eq!(
            serve.policy_source.subscription_namespace,
            "models-as-a-service"
        );
        assert!(serve.policy_source.model_namespaces.0.is_empty());
        assert_eq!(serve.cache_ttl, Duration::from_secs(30));
        assert_eq!(serve.http.http_addr, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(
            serve.limits.redis_key_prefix,
            crate::limits::DEFAULT_KEY_PREFIX
        );
        assert!(serve.limits.limits_enabled && serve.limits.redis_url.is_none());
        assert_eq!(
            serve.enforcement.meter_max_request_bytes,
            crate::usage::DEFAULT_MAX_REQUEST_BYTES as u64
        );
        assert!(
            serve.identity.static_tokens_file.is_none() && serve.identity.admin_groups.is_empty()
        );
        assert_eq!(
            DatabaseConfig::new("postgres://x/y").db_pool_size,
            serve.database.db_pool_size
        );
        assert_eq!(
            HttpConfig::on_loopback().internal_addr.ip().to_string(),
            "127.0.0.1"
        );
    }
}
