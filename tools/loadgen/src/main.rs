//! maas-authz-loadgen: drives Envoy-style ext_authz Check load at a real maas-authz (and optionally a do-nothing baseline server).
//!
//! Without `--target` it creates a throw-away database from the admin `--database-url`, starts
//! maas-authz in-process on a loopback port (which migrates the database), mints `--keys` keys,
//! runs the load and drops the database. With `--baseline` it first runs the identical load
//! against a do-nothing ext_authz server in the same process, then prints both and the ratio.
//!
//! Client and server share the machine (and, in-process, the tokio runtime): on a small box the
//! client's own CPU use caps the figures, which is why the baseline ratio matters more than the
//! absolute requests per second.

#![allow(clippy::print_stdout)]

mod do_nothing;
mod reliability;

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::Utc;
use clap::{Parser, ValueEnum};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use envoy_types::pb::google::rpc;
use maas_authz::config::{
    AbuseLimitsConfig, DatabaseConfig, HttpConfig, LimitsConfig, OptionalDuration, OptionalRate,
    ServeConfig,
};

use do_nothing::DoNothing;
use maas_authz::app::{Application, RunningServer};
use maas_authz::grpc::socket::copying;
use maas_authz::key::ApiKey;
use maas_authz::minting::{MintRequest, mint_key};
use maas_authz::store::postgres::{NoQueryObserver, PgKeyStore, PgSettings};
use prost::Message as _;
use prost::bytes::{BufMut as _, Bytes};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint};

const DEFAULT_TENANT: &str = "models-as-a-service";

/// Load generator for maas-authz's Envoy ext_authz Check endpoint.
#[derive(Debug, Parser)]
#[command(name = "maas-authz-loadgen", version)]
struct Args {
    /// An already running maas-authz gRPC listener (HOST:PORT). Without it, one is started
    /// in-process against a fresh database created from --database-url.
    #[arg(long, value_name = "HOST:PORT")]
    target: Option<String>,
    /// Without --target: an admin PostgreSQL URL; a database `maas_authz_loadgen_<random>` is
    /// created from it and dropped at the end. With --target: the target's own (migrated)
    /// database, into which the `hit` keys are minted (they expire after one hour).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Tenant of the minted keys (with --target it must be the target's MAAS_AUTHZ_TENANT).
    #[arg(long, default_value = DEFAULT_TENANT)]
    tenant: String,
    /// Keys minted for the `hit` scenario (free-tier user), used round-robin.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    keys: u32,
    /// With --target and no --database-url: existing keys to use for `hit` (repeatable).
    #[arg(long = "key", value_name = "KEY")]
    existing_keys: Vec<String>,
    /// With --target, instead of minting: the first N deterministic keys (`seeded_key(0..N)`)
    /// that scripts/bench-scale.sh writes straight into the target's database (minting a
    /// million keys one by one would take hours).
    #[arg(long, value_name = "N", conflicts_with = "existing_keys", value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    seeded_keys: Option<u32>,
    /// Use every key exactly once, in order, spread over the streams, then end the run (the
    /// measured window still bounds it; no warm-up): e.g. to touch a million keys once each.
    #[arg(long)]
    sweep: bool,
    /// Concurrent in-flight requests (client tasks), spread over the connections.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    streams: u32,
    /// HTTP/2 connections (one tonic Channel each).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    connections: u32,
    /// Measured time per run, e.g. 10s, 1m.
    #[arg(long, default_value = "10s", value_parser = duration_arg)]
    duration: Duration,
    /// Unmeasured load before each run (fills caches, opens streams).
    #[arg(long, default_value = "2s", value_parser = duration_arg)]
    warmup: Duration,
    /// The request path Envoy would report.
    #[arg(long, default_value = "/simulator/v1/chat/completions")]
    path: String,
    /// hit: minted keys round-robin; unknown: well-formed keys that do not exist;
    /// malformed: `Authorization: Bearer nope`.
    #[arg(long, value_enum, default_value = "hit")]
    scenario: Scenario,
    /// For `unknown`: cycle over this many pre-generated keys (repeats hit the negative cache);
    /// 0 sends a fresh random key every time (every request reaches the database).
    #[arg(long, default_value_t = 0)]
    unknown_keys: u32,
    /// First run the identical load against a do-nothing ext_authz server in this process.
    #[arg(long)]
    baseline: bool,
    /// Measured rounds (each with its own warm-up); with --baseline the two servers alternate
    /// round by round, so interference from other work on the machine hits both alike.
    /// Requests per second and the ratio are medians over rounds; latency percentiles are over
    /// every round's requests.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,
    /// Load only the do-nothing server (no database, no maas-authz): what the client and
    /// transport cost on their own, e.g. to profile them.
    #[arg(long, conflicts_with_all = ["baseline", "target"])]
    baseline_only: bool,
    /// How much of each CheckResponse the client decodes: `status` (only the gRPC status
    /// field; prost skips the rest without allocating, so the client stays lean) or `full`
    /// (headers and dynamic metadata too, as Envoy does on its own CPUs).
    #[arg(long, value_enum, default_value = "status")]
    decode: DecodeMode,
    /// Policy for the in-process server (default: the workspace's example policy).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/policy"))]
    policy_path: PathBuf,
    /// Limits in the in-process server: `off`, `in-process` counters or `redis` (at
    /// --redis-url). With limits on, every limit of --policy-path is raised to 10^9 per window
    /// so that the load measures counting, not 429s.
    #[arg(long, value_enum, default_value = "off")]
    limits: LimitsMode,
    /// Redis for `--limits redis` (a random key prefix is used per run).
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Tokio worker threads shared by client and in-process servers (default: CPUs).
    #[arg(long)]
    worker_threads: Option<usize>,
    /// Print one JSON object with every figure instead of text.
    #[arg(long)]
    json: bool,
    /// What to measure: `load` (Check throughput and latency), `revocation` (delay until a key
    /// revoked on one replica is refused by another, over --samples revocations), `outage`
    /// (Check answers while the database is cut for --outage) or `unknown-key-flood` (legitimate
    /// checks, the breaker and database lookups while --streams clients flood Check with random
    /// well-formed keys for --duration, without and with the unknown-key budget). All but
    /// `load` need an admin --database-url and start their own servers.
    #[arg(long, value_enum, default_value = "load")]
    measure: Measure,
    /// For `--measure revocation`: revocations measured.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    samples: u32,
    /// For `--measure outage`: how long the database is cut.
    #[arg(long, default_value = "30s", value_parser = duration_arg)]
    outage: Duration,
    /// For `--measure outage`: the server's cache TTL (short, so the outage outlives it).
    #[arg(long, default_value = "5s", value_parser = duration_arg)]
    outage_cache_ttl: Duration,
    /// For `--measure unknown-key-flood`: distinct client addresses the flood comes from (1: one
    /// abusive client, which the per-peer budget stops; many: a spread-out flood, which only the
    /// global budget bounds).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    flood_peers: u32,
    /// For `--measure unknown-key-flood`: run without the unknown-key budget, with it (the
    /// defaults of MAAS_AUTHZ_UNKNOWN_KEY_LOOKUP*), or both, one after the other.
    #[arg(long, value_enum, default_value = "both")]
    budget: BudgetPhases,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BudgetPhases {
    Off,
    On,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Measure {
    Load,
    Revocation,
    Outage,
    UnknownKeyFlood,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LimitsMode {
    Off,
    InProcess,
    Redis,
}

impl LimitsMode {
    fn as_str(self) -> &'static str {
        match self {
            LimitsMode::Off => "off",
            LimitsMode::InProcess => "in-process",
            LimitsMode::Redis => "redis",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DecodeMode {
    Status,
    Full,
}

impl DecodeMode {
    fn as_str(self) -> &'static str {
        match self {
            DecodeMode::Status => "status",
            DecodeMode::Full => "full",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Hit,
    Unknown,
    Malformed,
}

impl Scenario {
    fn as_str(self) -> &'static str {
        match self {
            Scenario::Hit => "hit",
            Scenario::Unknown => "unknown",
            Scenario::Malformed => "malformed",
        }
    }
}

fn duration_arg(text: &str) -> Result<Duration, String> {
    match maas_authz::duration::parse_duration(text) {
        Ok(duration) => Ok(duration),
        Err(error) => Err(error.to_string()),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(threads) = args.worker_threads {
        builder.worker_threads(threads);
    }
    let runtime = builder.build().context("cannot build the tokio runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    if args.measure != Measure::Load {
        let admin_url = args.database_url.clone().context(
            "--measure revocation|outage|unknown-key-flood needs --database-url (or DATABASE_URL): a PostgreSQL admin URL",
        )?;
        return match args.measure {
            Measure::Revocation => reliability::measure_revocation(&args, &admin_url).await,
            Measure::UnknownKeyFlood => {
                reliability::measure_unknown_key_flood(&args, &admin_url).await
            }
            _ => reliability::measure_outage(&args, &admin_url).await,
        };
    }
    if args.baseline_only {
        return measure_baseline_only(&args).await;
    }
    match &args.target {
        Some(target) => {
            let keys = match (args.scenario, &args.database_url) {
                (Scenario::Hit, _) if args.seeded_keys.is_some() => {
                    (0..args.seeded_keys.unwrap_or(0)).map(seeded_key).collect()
                }
                (Scenario::Hit, Some(url)) => mint_keys(url, &args.tenant, args.keys).await?,
                (Scenario::Hit, None) if !args.existing_keys.is_empty() => {
                    args.existing_keys.clone()
                }
                (Scenario::Hit, None) => bail!(
                    "--scenario hit with --target needs keys: --database-url of the target's database (keys are minted there) or --key"
                ),
                _ => Vec::new(),
            };
            let target = target.clone();
            measure_all(&args, &target, &keys).await
        }
        None => {
            let admin_url = args.database_url.clone().context(
                "without --target, --database-url (or DATABASE_URL) must name a PostgreSQL admin URL",
            )?;
            let database = ScratchDatabase::create(&admin_url).await?;
            let outcome = with_server(&args, &database.url).await;
            let dropped = database.drop_now().await;
            outcome?;
            dropped
        }
    }
}

/// Starts maas-authz on the scratch database, mints keys and runs the load; always stops it.
async fn with_server(args: &Args, database_url: &str) -> anyhow::Result<()> {
    let raised_policy = match args.limits {
        LimitsMode::Off => None,
        LimitsMode::InProcess | LimitsMode::Redis => Some(RaisedPolicy::write(&args.policy_path)?),
    };
    let server = Application::build(serve_config(
        args,
        database_url,
        raised_policy.as_ref().map(|raised| raised.dir.clone()),
    ))
    .await?;
    let outcome = async {
        let keys = match args.scenario {
            Scenario::Hit => mint_keys(database_url, &args.tenant, args.keys).await?,
            _ => Vec::new(),
        };
        measure_all(args, &server.grpc_addr.to_string(), &keys).await
    }
    .await;
    stop(server).await;
    outcome
}

async fn stop(server: RunningServer) {
    if let Err(error) = server.shutdown().await {
        eprintln!("warning: maas-authz did not stop cleanly: {error:#}");
    }
}

/// A copy of the policy with every `- limit:` raised to 10^9, removed when dropped.
struct RaisedPolicy {
    dir: PathBuf,
}

impl RaisedPolicy {
    fn write(from: &std::path::Path) -> anyhow::Result<Self> {
        let dir =
            std::env::temp_dir().join(format!("maas-authz-loadgen-policy-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let raised = Self { dir };
        let files: Vec<PathBuf> = if from.is_dir() {
            std::fs::read_dir(from)?
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .filter(|path| path.extension().is_some_and(|e| e == "yaml" || e == "yml"))
                .collect()
        } else {
            vec![from.to_owned()]
        };
        for file in files {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let lines: Vec<String> = text
                .lines()
                .map(|line| match line.split_once("- limit: ") {
                    Some((indent, _)) => format!("{indent}- limit: 1000000000"),
                    None => line.to_owned(),
                })
                .collect();
            let name = file.file_name().context("policy file name")?;
            std::fs::write(raised.dir.join(name), lines.join("\n"))?;
        }
        Ok(raised)
    }
}

impl Drop for RaisedPolicy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn serve_config(args: &Args, database_url: &str, raised_policy: Option<PathBuf>) -> ServeConfig {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut abuse = AbuseLimitsConfig::default();
    if args.scenario == Scenario::Unknown && args.measure == Measure::Load {
        // This load measures what an unknown key costs when it reaches the database; the
        // unknown-key budget (which would answer most of them 429 first) has its own measure.
        abuse.unknown_key_lookups_per_second = OptionalRate(None);
        abuse.unknown_key_lookups_per_second_per_peer = OptionalRate(None);
    }
    let mut limits = LimitsConfig::default();
    match args.limits {
        LimitsMode::Off => limits.limits_enabled = false,
        LimitsMode::InProcess => {}
        LimitsMode::Redis => {
            limits.redis_url = Some(args.redis_url.clone());
            limits.redis_key_prefix = format!("maas-authz-loadgen-{}:", std::process::id());
        }
    }
    let policy_path = raised_policy.unwrap_or_else(|| args.policy_path.clone());
    ServeConfig {
        database: DatabaseConfig {
            tenant: args.tenant.clone(),
            ..DatabaseConfig::new(database_url)
        },
        grpc_addr: loopback,
        metrics_addr: loopback,
        housekeeping_interval: OptionalDuration(None),
        shutdown_grace: Duration::from_secs(5),
        http: HttpConfig::on_loopback(),
        limits,
        abuse,
        ..ServeConfig::new(database_url, &policy_path)
    }
}

/// The `index`th deterministic benchmark key. scripts/bench-scale.sh stores these keys'
/// hashes with one SQL statement: key id `bs` + the index in 10 digits, secret
/// `benchScaleSecret` + the same 10 digits (both base62, within the format's bounds). Public
/// by construction: benchmark databases only.
fn seeded_key(index: u32) -> String {
    format!("sk-oai-bs{index:010}_benchScaleSecret{index:010}")
}

/// Mints `count` free-tier keys (user `loadgen`, subscription `free`) and returns their plaintext.
async fn mint_keys(database_url: &str, tenant: &str, count: u32) -> anyhow::Result<Vec<String>> {
    let store = PgKeyStore::connect(
        &PgSettings {
            database_url: database_url.to_owned(),
            database_ca_file: None,
            tenant: tenant.to_owned(),
            pool_size: 2,
            query_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
        },
        Arc::new(NoQueryObserver),
    )?;
    let mut keys = Vec::with_capacity(count as usize);
    for i in 0..count {
        let minted = mint_key(
            &store,
            MintRequest {
                username: "loadgen".to_owned(),
                groups: vec!["system:authenticated".to_owned()],
                name: format!("loadgen-{i}"),
                description: Some("maas-authz-loadgen".to_owned()),
                subscription: "free".to_owned(),
                lifetime: Duration::from_secs(3_600),
                ephemeral: false,
            },
            Utc::now(),
        )
        .await
        .context("cannot mint a load-test key")?;
        keys.push(minted.key.expose().to_owned());
    }
    Ok(keys)
}

/// A database that lives for one run.
struct ScratchDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl ScratchDatabase {
    async fn create(admin_url: &str) -> anyhow::Result<Self> {
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).map_err(|e| anyhow::anyhow!("randomness: {e}"))?;
        let name = format!("maas_authz_loadgen_{}", hex::encode(random));
        admin_client(admin_url)
            .await?
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| format!("cannot create database {name}"))?;
        let url = with_database(admin_url, &name);
        Ok(Self {
            admin_url: admin_url.to_owned(),
            name,
            url,
        })
    }

    async fn drop_now(self) -> anyhow::Result<()> {
        admin_client(&self.admin_url)
            .await?
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await
            .with_context(|| format!("cannot drop database {}", self.name))
    }
}

async fn admin_client(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = maas_authz::store::connect::PgEndpoint::new(url, None)?
        .connect()
        .await
        .context("cannot connect to the admin database URL")?;
    tokio::spawn(connection);
    Ok(client)
}

/// `url` with its database name replaced.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{database}", &base[..path_start]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// The baseline (when asked) and the target under identical load, alternating round by round;
/// prints the report.
async fn measure_all(args: &Args, target: &str, keys: &[String]) -> anyhow::Result<()> {
    let baseline = if args.baseline {
        Some(BaselineServer::start().await?)
    } else {
        None
    };
    let outcome = async {
        let (mut baseline_rounds, mut rounds) = (Vec::new(), Vec::new());
        for _ in 0..args.rounds {
            if let Some(server) = &baseline {
                baseline_rounds.push(measure(args, &server.addr.to_string(), keys).await?);
            }
            rounds.push(measure(args, target, keys).await?);
        }
        anyhow::Ok((baseline_rounds, rounds))
    }
    .await;
    if let Some(server) = baseline {
        server.stop().await;
    }
    let (baseline_rounds, rounds) = outcome?;
    let baseline =
        (!baseline_rounds.is_empty()).then(|| Summary::new("baseline", &baseline_rounds));
    let measured = Summary::new(target, &rounds);
    report(args, baseline.as_ref(), &measured);
    Ok(())
}

/// `--baseline-only`: the do-nothing server alone, with random well-formed keys for `hit`.
async fn measure_baseline_only(args: &Args) -> anyhow::Result<()> {
    let mut keys = Vec::new();
    if args.scenario == Scenario::Hit {
        for _ in 0..args.keys {
            keys.push(generate_key()?.expose().to_owned());
        }
    }
    let server = BaselineServer::start().await?;
    let addr = server.addr.to_string();
    let outcome = async {
        let mut rounds = Vec::new();
        for _ in 0..args.rounds {
            rounds.push(measure(args, &addr, &keys).await?);
        }
        anyhow::Ok(rounds)
    }
    .await;
    server.stop().await;
    report(args, None, &Summary::new("baseline", &outcome?));
    Ok(())
}

/// What one stream saw in the measured window.
#[derive(Debug, Default)]
struct StreamTally {
    latencies_us: Vec<u32>,
    allowed: u64,
    denied: u64,
    errors: u64,
}

/// What one measured round saw.
#[derive(Debug)]
struct Round {
    seconds: f64,
    allowed: u64,
    denied: u64,
    errors: u64,
    /// Every counted request's latency in microseconds, sorted.
    latencies_us: Vec<u32>,
    /// Process CPU (user + system: client and in-process servers) in the measured window.
    cpu_seconds: Option<f64>,
    first_error: Option<String>,
}

impl Round {
    fn rps(&self) -> f64 {
        self.latencies_us.len() as f64 / self.seconds
    }
}

/// Figures over every round against one server.
#[derive(Debug)]
struct Summary {
    target: String,
    /// Requests per second of each round, in order.
    round_rps: Vec<f64>,
    /// Median of `round_rps`.
    rps: f64,
    requests: u64,
    seconds: f64,
    allowed: u64,
    denied: u64,
    errors: u64,
    mean_us: f64,
    p50_us: u32,
    p99_us: u32,
    p999_us: u32,
    max_us: u32,
    /// Process CPU per request (client and any in-process servers together).
    cpu_us_per_request: Option<f64>,
    /// Process CPU over wall time (2.0 = two cores busy).
    cpu_utilisation: Option<f64>,
    first_error: Option<String>,
}

impl Summary {
    fn new(target: &str, rounds: &[Round]) -> Self {
        let mut latencies: Vec<u32> = rounds
            .iter()
            .flat_map(|r| r.latencies_us.iter().copied())
            .collect();
        latencies.sort_unstable();
        let percentile = |p: f64| -> u32 {
            if latencies.is_empty() {
                return 0;
            }
            let rank = ((p * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
            latencies[rank - 1]
        };
        let requests = latencies.len() as u64;
        let seconds: f64 = rounds.iter().map(|r| r.seconds).sum();
        let cpu_seconds: Option<f64> = rounds.iter().map(|r| r.cpu_seconds).sum();
        let round_rps: Vec<f64> = rounds.iter().map(Round::rps).collect();
        Self {
            target: target.to_owned(),
            rps: median(&round_rps),
            round_rps,
            requests,
            seconds,
            allowed: rounds.iter().map(|r| r.allowed).sum(),
            denied: rounds.iter().map(|r| r.denied).sum(),
            errors: rounds.iter().map(|r| r.errors).sum(),
            mean_us: if latencies.is_empty() {
                0.0
            } else {
                latencies.iter().map(|&l| f64::from(l)).sum::<f64>() / latencies.len() as f64
            },
            p50_us: percentile(0.50),
            p99_us: percentile(0.99),
            p999_us: percentile(0.999),
            max_us: latencies.last().copied().unwrap_or(0),
            cpu_us_per_request: cpu_seconds
                .filter(|_| requests > 0)
                .map(|cpu| cpu * 1e6 / requests as f64),
            cpu_utilisation: cpu_seconds.map(|cpu| cpu / seconds),
            first_error: rounds.iter().find_map(|r| r.first_error.clone()),
        }
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// Where requests come from: CheckRequests encoded once and cycled per stream, or fresh
/// unknown keys (generated and encoded per request).
#[derive(Clone)]
enum RequestSource {
    Fixed(Arc<Vec<Bytes>>),
    FreshUnknown(Arc<str>),
}

impl RequestSource {
    fn new(args: &Args, keys: &[String]) -> anyhow::Result<Self> {
        let bearer = |key: &str| format!("Bearer {key}");
        let fixed = |headers: Vec<String>| {
            Self::Fixed(Arc::new(
                headers
                    .iter()
                    .map(|h| Bytes::from(check_request(&args.path, h).encode_to_vec()))
                    .collect(),
            ))
        };
        Ok(match args.scenario {
            Scenario::Hit => {
                if keys.is_empty() {
                    bail!("no keys for the hit scenario");
                }
                fixed(keys.iter().map(|k| bearer(k)).collect())
            }
            Scenario::Malformed => fixed(vec!["Bearer nope".to_owned()]),
            Scenario::Unknown if args.unknown_keys == 0 => {
                Self::FreshUnknown(Arc::from(args.path.as_str()))
            }
            Scenario::Unknown => {
                let mut headers = Vec::with_capacity(args.unknown_keys as usize);
                for _ in 0..args.unknown_keys {
                    headers.push(bearer(generate_key()?.expose()));
                }
                fixed(headers)
            }
        })
    }

    /// Distinct requests before they repeat (unbounded for fresh unknown keys).
    fn len(&self) -> usize {
        match self {
            Self::Fixed(requests) => requests.len(),
            Self::FreshUnknown(_) => usize::MAX,
        }
    }

    /// The encoded CheckRequest for the `n`th request (a reference-counted clone, no copy).
    fn request(&self, n: usize) -> anyhow::Result<Bytes> {
        Ok(match self {
            Self::Fixed(requests) => requests[n % requests.len()].clone(),
            Self::FreshUnknown(path) => {
                let request = check_request(path, &format!("Bearer {}", generate_key()?.expose()));
                Bytes::from(request.encode_to_vec())
            }
        })
    }
}

fn generate_key() -> anyhow::Result<ApiKey> {
    ApiKey::generate().map_err(|e| anyhow::anyhow!("randomness: {e}"))
}

/// A CheckRequest as Envoy sends it for a chat call: pseudo-headers and a few client headers.
fn check_request(path: &str, authorization: &str) -> CheckRequest {
    let headers = [
        (":authority", "gateway.local"),
        (":method", "POST"),
        (":path", path),
        (":scheme", "https"),
        ("authorization", authorization),
        ("content-type", "application/json"),
        ("user-agent", "maas-authz-loadgen"),
        ("x-request-id", "5b3c6f8e-5f3a-4e4b-9d8a-7a1e2f0c9b11"),
    ];
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "POST".to_owned(),
                    path: path.to_owned(),
                    host: "gateway.local".to_owned(),
                    scheme: "https".to_owned(),
                    protocol: "HTTP/1.1".to_owned(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// Runs warm-up then the measured window against `target` and collects every stream's tally.
async fn measure(args: &Args, target: &str, keys: &[String]) -> anyhow::Result<Round> {
    let source = RequestSource::new(args, keys)?;
    let uri = format!("http://{target}");
    let mut channels = Vec::with_capacity(args.connections as usize);
    for _ in 0..args.connections {
        // One Channel is one HTTP/2 connection; clones share it.
        let channel = Endpoint::from_shared(uri.clone())
            .context("invalid --target")?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .with_context(|| format!("cannot connect to {target}"))?;
        channels.push(channel);
    }
    let started = Instant::now();
    // A sweep counts every request it sends: no warm-up.
    let window_start = started
        + if args.sweep {
            Duration::ZERO
        } else {
            args.warmup
        };
    let window_end = window_start + args.duration;
    let sweep = args.sweep.then(|| Arc::new(AtomicUsize::new(0)));
    let (first_error_tx, first_error_rx) = watch::channel(None::<String>);
    let mut tasks = Vec::with_capacity(args.streams as usize);
    for stream in 0..args.streams as usize {
        let channel = channels[stream % channels.len()].clone();
        let source = source.clone();
        let first_error = first_error_tx.clone();
        // Each stream starts at a different key so the load spreads over all of them.
        let offset = stream * 7919;
        let window = (window_start, window_end);
        let sweep = sweep.clone();
        tasks.push(match args.decode {
            DecodeMode::Status => tokio::spawn(drive_stream::<StatusOnly>(
                channel,
                source,
                offset,
                sweep,
                window,
                first_error,
            )),
            DecodeMode::Full => tokio::spawn(drive_stream::<CheckResponse>(
                channel,
                source,
                offset,
                sweep,
                window,
                first_error,
            )),
        });
    }
    drop(first_error_tx);
    let cpu_before = wait_until_and_read_cpu(window_start).await;
    let cpu_at_window_end = if args.sweep {
        None
    } else {
        wait_until_and_read_cpu(window_end).await
    };
    let mut latencies = Vec::new();
    let (mut allowed, mut denied, mut errors) = (0, 0, 0);
    for task in tasks {
        let tally = task.await.context("a client stream panicked")??;
        latencies.extend_from_slice(&tally.latencies_us);
        allowed += tally.allowed;
        denied += tally.denied;
        errors += tally.errors;
    }
    // A sweep ends when every key was sent once (or the window closed).
    let seconds = if args.sweep {
        Instant::now()
            .min(window_end)
            .duration_since(window_start)
            .as_secs_f64()
    } else {
        args.duration.as_secs_f64()
    };
    let cpu_after = if args.sweep {
        process_cpu_seconds()
    } else {
        cpu_at_window_end
    };
    latencies.sort_unstable();
    let cpu_seconds = match (cpu_before, cpu_after) {
        (Some(before), Some(after)) => Some(after - before),
        _ => None,
    };
    let first_error = first_error_rx.borrow().clone();
    Ok(Round {
        seconds,
        allowed,
        denied,
        errors,
        latencies_us: latencies,
        cpu_seconds,
        first_error,
    })
}

/// One in-flight request at a time, back to back, until the window closes (or, with a sweep,
/// until every request was taken from its shared counter). Only requests sent and answered
/// inside the window are counted.
async fn drive_stream<M: ResponseStatus>(
    channel: Channel,
    source: RequestSource,
    offset: usize,
    sweep: Option<Arc<AtomicUsize>>,
    (window_start, window_end): (Instant, Instant),
    first_error: watch::Sender<Option<String>>,
) -> anyhow::Result<StreamTally> {
    let mut client = tonic::client::Grpc::new(channel);
    let path = PathAndQuery::from_static(CHECK_PATH);
    let mut tally = StreamTally::default();
    let mut n = offset;
    loop {
        if let Some(next) = &sweep {
            n = next.fetch_add(1, Ordering::Relaxed);
            if n >= source.len() {
                break;
            }
        }
        let request = tonic::Request::new(source.request(n)?);
        n = n.wrapping_add(1);
        let sent = Instant::now();
        if sent >= window_end {
            break;
        }
        let outcome = match client.ready().await {
            Ok(()) => {
                client
                    .unary(request, path.clone(), ClientCodec::<M>(PhantomData))
                    .await
            }
            Err(error) => Err(tonic::Status::unavailable(format!(
                "channel not ready: {error}"
            ))),
        };
        let done = Instant::now();
        if sent < window_start || done > window_end {
            continue;
        }
        let micros = u32::try_from(done.duration_since(sent).as_micros()).unwrap_or(u32::MAX);
        tally.latencies_us.push(micros);
        match outcome {
            Ok(response) => {
                if response.get_ref().rpc_code() == 0 {
                    tally.allowed += 1;
                } else {
                    tally.denied += 1;
                }
            }
            Err(status) => {
                tally.errors += 1;
                first_error.send_if_modified(|first| {
                    if first.is_none() {
                        *first = Some(format!("{}: {}", status.code(), status.message()));
                        true
                    } else {
                        false
                    }
                });
            }
        }
    }
    Ok(tally)
}

/// The gRPC method Envoy calls.
const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// A CheckResponse reduced to its `status` field (tag 1); prost skips every other field
/// without allocating, so the client does not pay for headers and metadata it ignores.
#[derive(Clone, PartialEq, prost::Message)]
struct StatusOnly {
    #[prost(message, optional, tag = "1")]
    status: Option<rpc::Status>,
}

/// A decoded answer's gRPC status code inside the CheckResponse (0 = allow).
trait ResponseStatus: prost::Message + Default + Send + Sync + 'static {
    fn rpc_code(&self) -> i32;
}

impl ResponseStatus for StatusOnly {
    fn rpc_code(&self) -> i32 {
        self.status.as_ref().map_or(0, |s| s.code)
    }
}

impl ResponseStatus for CheckResponse {
    fn rpc_code(&self) -> i32 {
        self.status.as_ref().map_or(0, |s| s.code)
    }
}

/// Client codec: sends pre-encoded CheckRequest bytes, decodes the answer as `M`.
#[derive(Debug)]
struct ClientCodec<M>(PhantomData<M>);

impl<M: ResponseStatus> Codec for ClientCodec<M> {
    type Encode = Bytes;
    type Decode = M;
    type Encoder = PreEncoded;
    type Decoder = MessageDecoder<M>;

    fn encoder(&mut self) -> Self::Encoder {
        PreEncoded
    }

    fn decoder(&mut self) -> Self::Decoder {
        MessageDecoder(PhantomData)
    }
}

/// Writes bytes that already are an encoded CheckRequest.
#[derive(Debug)]
struct PreEncoded;

impl Encoder for PreEncoded {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

#[derive(Debug)]
struct MessageDecoder<M>(PhantomData<M>);

impl<M: ResponseStatus> Decoder for MessageDecoder<M> {
    type Item = M;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<M>, tonic::Status> {
        M::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(format!("cannot decode CheckResponse: {e}")))
    }
}

async fn wait_until_and_read_cpu(when: Instant) -> Option<f64> {
    tokio::time::sleep_until(when.into()).await;
    process_cpu_seconds()
}

/// User + system CPU of this process (all threads), from /proc; `None` off Linux.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    // USER_HZ is 100 on every Linux architecture tokio supports.
    Some((utime + stime) / 100.0)
}

/// The do-nothing server on a free loopback port, served like maas-authz serves (tonic, nodelay,
/// the same [`copying`] sockets).
struct BaselineServer {
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl BaselineServer {
    async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .context("cannot bind the baseline server")?;
        let addr = listener.local_addr()?;
        let (shutdown, mut stop) = watch::channel(false);
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let task = tokio::spawn(
            tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .add_service(AuthorizationServer::new(DoNothing))
                .serve_with_incoming_shutdown(copying(incoming), async move {
                    let _ = stop.wait_for(|stop| *stop).await;
                }),
        );
        Ok(Self {
            addr,
            shutdown,
            task,
        })
    }

    async fn stop(self) {
        let _ = self.shutdown.send(true);
        match tokio::time::timeout(Duration::from_secs(5), self.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => eprintln!("warning: baseline server failed: {error}"),
            Ok(Err(error)) => eprintln!("warning: baseline server panicked: {error}"),
            Err(_) => eprintln!("warning: baseline server did not stop within 5s"),
        }
    }
}

fn caveat(cpus: usize, in_process: bool) -> String {
    let runtime = if in_process {
        " and one tokio runtime"
    } else {
        ""
    };
    format!(
        "client and server(s) share this machine ({cpus} CPUs){runtime} and talk over loopback: \
         figures are a lower bound for the server alone"
    )
}

fn report(args: &Args, baseline: Option<&Summary>, measured: &Summary) {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    // Per round, then the median: each round pairs runs that ran back to back.
    let round_ratios: Vec<f64> = baseline
        .map(|b| {
            b.round_rps
                .iter()
                .zip(&measured.round_rps)
                .map(|(base, ours)| ours / base)
                .collect()
        })
        .unwrap_or_default();
    let ratio = baseline.map(|_| median(&round_ratios));
    if args.json {
        let summary_json = |r: &Summary| {
            serde_json::json!({
                "target": r.target,
                "rps": rounded(r.rps, 1),
                "round_rps": r.round_rps.iter().map(|x| rounded(*x, 1)).collect::<Vec<_>>(),
                "requests": r.requests,
                "seconds": rounded(r.seconds, 3),
                "allowed": r.allowed,
                "denied": r.denied,
                "errors": r.errors,
                "first_error": r.first_error,
                "latency_us": {
                    "mean": rounded(r.mean_us, 1),
                    "p50": r.p50_us,
                    "p99": r.p99_us,
                    "p99_9": r.p999_us,
                    "max": r.max_us,
                },
                "cpu_us_per_request": r.cpu_us_per_request.map(|x| rounded(x, 2)),
                "cpu_utilisation": r.cpu_utilisation.map(|x| rounded(x, 3)),
            })
        };
        let object = serde_json::json!({
            "scenario": args.scenario.as_str(),
            "path": args.path,
            "streams": args.streams,
            "connections": args.connections,
            "client_decode": args.decode.as_str(),
            "rounds": args.rounds,
            "warmup_s": args.warmup.as_secs_f64(),
            "duration_s": args.duration.as_secs_f64(),
            "keys": if args.scenario == Scenario::Hit { Some(args.seeded_keys.unwrap_or(args.keys)) } else { None },
            "sweep": args.sweep,
            "limits": args.limits.as_str(),
            "in_process_server": args.target.is_none() && !args.baseline_only,
            "cpus": cpus,
            "worker_threads": args.worker_threads.unwrap_or(cpus),
            "caveat": caveat(cpus, args.target.is_none()),
            "baseline": if args.baseline_only {
                Some(summary_json(measured))
            } else {
                baseline.map(summary_json)
            },
            "maas_authz": if args.baseline_only {
                None
            } else {
                Some(summary_json(measured))
            },
            "round_ratios": round_ratios.iter().map(|x| rounded(*x, 3)).collect::<Vec<_>>(),
            "ratio_rps_vs_baseline": ratio.map(|x| rounded(x, 3)),
        });
        println!("{object}");
        return;
    }
    println!(
        "scenario={} path={} streams={} connections={} decode={} rounds={} warmup={:?} duration={:?} limits={}{}",
        args.scenario.as_str(),
        args.path,
        args.streams,
        args.connections,
        args.decode.as_str(),
        args.rounds,
        args.warmup,
        args.duration,
        args.limits.as_str(),
        if args.scenario == Scenario::Hit {
            format!(" keys={}", args.keys)
        } else {
            String::new()
        }
    );
    println!("note: {}", caveat(cpus, args.target.is_none()));
    println!(
        "{:<12} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>9} {:>5}",
        "server",
        "req/s",
        "mean",
        "p50",
        "p99",
        "p99.9",
        "max",
        "allowed",
        "denied",
        "errors",
        "cpu/req",
        "cpus"
    );
    let line = |name: &str, r: &Summary| {
        println!(
            "{:<12} {:>10.0} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>9} {:>5}",
            name,
            r.rps,
            micros(r.mean_us),
            micros(f64::from(r.p50_us)),
            micros(f64::from(r.p99_us)),
            micros(f64::from(r.p999_us)),
            micros(f64::from(r.max_us)),
            r.allowed,
            r.denied,
            r.errors,
            r.cpu_us_per_request.map_or_else(|| "-".to_owned(), micros),
            r.cpu_utilisation
                .map_or_else(|| "-".to_owned(), |u| format!("{u:.2}")),
        );
        if r.round_rps.len() > 1 {
            let rounds: Vec<String> = r.round_rps.iter().map(|x| format!("{x:.0}")).collect();
            println!("{:<12} req/s by round: {}", "", rounds.join(" "));
        }
        if let Some(error) = &r.first_error {
            println!("{:<12} first error: {error}", "");
        }
    };
    if let Some(baseline) = baseline {
        line("baseline", baseline);
    }
    line(
        if args.baseline_only {
            "baseline"
        } else {
            "maas-authz"
        },
        measured,
    );
    if let Some(ratio) = ratio {
        let rounds: Vec<String> = round_ratios.iter().map(|x| format!("{x:.3}")).collect();
        println!(
            "throughput ratio maas-authz/baseline: {ratio:.3} (median of rounds: {})",
            rounds.join(" ")
        );
    }
}

/// `x` to `decimals` places, for JSON a person may read too (`0.112`, not `0.11191000000000001`).
fn rounded(x: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (x * scale).round() / scale
}

fn micros(us: f64) -> String {
    if us >= 1_000.0 {
        format!("{:.2}ms", us / 1_000.0)
    } else {
        format!("{us:.0}µs")
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[test]
    fn the_default_policy_is_the_workspace_example_policy_and_loads() {
        let args = super::Args::try_parse_from(["maas-authz-loadgen"]).unwrap();

        let policy = maas_authz::policy::Policy::load(&args.policy_path);

        assert!(
            policy.is_ok(),
            "the default --policy-path {} does not load: {:?}",
            args.policy_path.display(),
            policy.err()
        );
    }

    #[test]
    fn seeded_keys_are_well_formed_and_distinct_per_index() {
        let (first, last) = (super::seeded_key(0), super::seeded_key(999_999));

        let parsed = maas_authz::key::ApiKey::parse(&last).expect("a well-formed key");

        assert_eq!(first, "sk-oai-bs0000000000_benchScaleSecret0000000000");
        assert_eq!(parsed.key_id(), "bs0000999999");
        assert_ne!(
            parsed.hash(),
            maas_authz::key::ApiKey::parse(&first).unwrap().hash()
        );
    }

    #[test]
    fn json_figures_are_rounded_to_what_a_reader_can_use() {
        assert_eq!(
            super::rounded(0.111_910_000_000_000_01, 3).to_string(),
            "0.112"
        );
        assert_eq!(super::rounded(41_234.567_8, 1).to_string(), "41234.6");
    }
}
