//! Reliability measurements (`--measure revocation|outage|unknown-key-flood`): how fast a
//! revocation on one replica is honoured by another, what a database outage does to Check, and
//! what a flood of random well-formed keys does to legitimate checks with and without the
//! unknown-key budget. Each starts its own servers on a scratch database, and prints its figures.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use maas_authz::app::Application;
use maas_authz::config::OptionalRate;
use maas_authz::key::ApiKey;
use maas_authz::store::KeyStore;
use maas_authz::store::postgres::{NoQueryObserver, PgKeyStore, PgSettings};
use tonic::transport::Channel;

use super::{Args, BudgetPhases, ScratchDatabase, mint_keys, serve_config, stop};

/// What one Check came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Allowed,
    Denied,
    /// The service could not decide (gRPC UNAVAILABLE, or any transport error).
    Unavailable,
}

async fn check(client: &mut AuthorizationClient<Channel>, path: &str, key: &str) -> Verdict {
    let request = super::check_request(path, &format!("Bearer {key}"));
    match client.check(request).await {
        Ok(response) => match response.into_inner().status.map_or(0, |s| s.code) {
            0 => Verdict::Allowed,
            _ => Verdict::Denied,
        },
        Err(_) => Verdict::Unavailable,
    }
}

async fn client(addr: std::net::SocketAddr) -> anyhow::Result<AuthorizationClient<Channel>> {
    AuthorizationClient::connect(format!("http://{addr}"))
        .await
        .context("cannot connect to the in-process server")
}

fn store(url: &str, tenant: &str) -> anyhow::Result<PgKeyStore> {
    Ok(PgKeyStore::connect(
        &PgSettings {
            database_url: url.to_owned(),
            database_ca_file: None,
            tenant: tenant.to_owned(),
            pool_size: 2,
            query_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
        },
        Arc::new(NoQueryObserver),
    )?)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn millis(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1_000.0)
}

/// Two replicas on one database, cache TTL one hour (only push invalidation can explain a
/// refusal): per sample, B caches a fresh key, A revokes it, and B is polled in a tight loop
/// until it refuses. The delay runs from just before A's revocation call (its commit included)
/// to B's first refusal.
pub async fn measure_revocation(args: &Args, admin_url: &str) -> anyhow::Result<()> {
    let database = ScratchDatabase::create(admin_url).await?;
    let outcome = async {
        let mut config = serve_config(args, &database.url, None);
        config.cache_ttl = Duration::from_secs(3_600);
        config.cache_max_staleness = Duration::from_secs(3_600);
        let replica_a = Application::build(config.clone()).await?;
        let replica_b = Application::build(config).await?;
        let measured = async {
            let admin = store(&database.url, &args.tenant)?;
            let mut b = client(replica_b.grpc_addr).await?;
            let mut delays = Vec::with_capacity(args.samples as usize);
            for _ in 0..args.samples {
                let key = mint_keys(&database.url, &args.tenant, 1).await?.remove(0);
                let parsed = ApiKey::parse(&key).context("minted key")?;
                let record = admin
                    .find_by_hash(&parsed.hash())
                    .await?
                    .context("minted key is stored")?;
                anyhow::ensure!(
                    check(&mut b, &args.path, &key).await == Verdict::Allowed,
                    "replica B does not allow a fresh key"
                );
                let started = Instant::now();
                replica_a
                    .store()
                    .revoke_key(record.id)
                    .await?
                    .context("revoked")?;
                loop {
                    if check(&mut b, &args.path, &key).await == Verdict::Denied {
                        break;
                    }
                    anyhow::ensure!(
                        started.elapsed() < Duration::from_secs(10),
                        "replica B still allows a key revoked 10 s ago"
                    );
                }
                delays.push(started.elapsed());
            }
            delays.sort();
            println!(
                "revocation delay, replica A revokes -> replica B refuses ({} samples): p50 {}  p90 {}  p99 {}  max {}",
                delays.len(),
                millis(percentile(&delays, 50.0)),
                millis(percentile(&delays, 90.0)),
                millis(percentile(&delays, 99.0)),
                millis(delays.last().copied().unwrap_or_default()),
            );
            anyhow::Ok(())
        }
        .await;
        stop(replica_a).await;
        stop(replica_b).await;
        measured
    }
    .await;
    let dropped = database.drop_now().await;
    outcome?;
    dropped
}

/// One server behind a TCP proxy to PostgreSQL, with `--keys` keys cached; the proxy cuts the
/// database for `--outage` while `--streams` clients alternate cached-key and fresh unknown-key
/// checks; then the database returns and the time to the first allowed unknown-to-cache key is
/// reported.
pub async fn measure_outage(args: &Args, admin_url: &str) -> anyhow::Result<()> {
    let database = ScratchDatabase::create(admin_url).await?;
    let proxy = CuttingProxy::start(&database.url).await?;
    let outcome = async {
        let mut config = serve_config(args, &proxy.url, None);
        config.cache_ttl = args.outage_cache_ttl;
        config.skip_migrations = true;
        // Every unknown key reaches the store (and its breaker): what this measures. The
        // unknown-key budget, which would answer most of them 429 first, has its own measure.
        config.abuse.unknown_key_lookups_per_second = OptionalRate(None);
        config.abuse.unknown_key_lookups_per_second_per_peer = OptionalRate(None);
        maas_authz::app::migrate(&config.database, Duration::from_secs(10)).await?;
        // Keys before the server, so that no insert notice evicts what it cached.
        let keys = Arc::new(mint_keys(&database.url, &args.tenant, args.keys).await?);
        let server = Application::build(config).await?;
        let measured = async {
            let mut warm = client(server.grpc_addr).await?;
            for key in keys.iter() {
                anyhow::ensure!(
                    check(&mut warm, &args.path, key).await == Verdict::Allowed,
                    "a fresh key is not allowed before the outage"
                );
            }
            proxy.cut();
            let cut_at = Instant::now();
            let stop_at = cut_at + args.outage;
            let counts = Arc::new(OutageCounts::default());
            let mut tasks = Vec::new();
            for stream in 0..args.streams {
                let (counts, keys) = (counts.clone(), keys.clone());
                let mut client = client(server.grpc_addr).await?;
                let path = args.path.clone();
                tasks.push(tokio::spawn(async move {
                    let mut turn = stream as usize;
                    while Instant::now() < stop_at {
                        let key = &keys[turn % keys.len()];
                        let verdict = check(&mut client, &path, key).await;
                        counts.cached(verdict);
                        let unknown = ApiKey::generate().expect("randomness");
                        let started = Instant::now();
                        let verdict = check(&mut client, &path, unknown.expose()).await;
                        counts.unknown(verdict, started.elapsed());
                        turn += 1;
                    }
                }));
            }
            for task in tasks {
                task.await.context("a client task panicked")?;
            }
            proxy.restore();
            let restored_at = Instant::now();
            // Recovery: a key minted now (never cached) is allowed once the breaker closed.
            let fresh = mint_keys(&database.url, &args.tenant, 1).await?.remove(0);
            let mut probe = client(server.grpc_addr).await?;
            while check(&mut probe, &args.path, &fresh).await != Verdict::Allowed {
                anyhow::ensure!(
                    restored_at.elapsed() < Duration::from_secs(60),
                    "no recovery within 60 s of the database's return"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let recovered_in = restored_at.elapsed();
            counts.report(args, recovered_in);
            anyhow::Ok(())
        }
        .await;
        stop(server).await;
        measured
    }
    .await;
    drop(proxy);
    let dropped = database.drop_now().await;
    outcome?;
    dropped
}

#[derive(Debug, Default)]
struct OutageCounts {
    cached_total: AtomicU64,
    cached_allowed: AtomicU64,
    unknown_total: AtomicU64,
    unknown_refused: AtomicU64,
    unknown_unavailable: AtomicU64,
    unknown_micros: std::sync::Mutex<Vec<u64>>,
}

impl OutageCounts {
    fn cached(&self, verdict: Verdict) {
        self.cached_total.fetch_add(1, Ordering::Relaxed);
        if verdict == Verdict::Allowed {
            self.cached_allowed.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn unknown(&self, verdict: Verdict, took: Duration) {
        self.unknown_total.fetch_add(1, Ordering::Relaxed);
        if verdict != Verdict::Allowed {
            self.unknown_refused.fetch_add(1, Ordering::Relaxed);
        }
        if verdict == Verdict::Unavailable {
            self.unknown_unavailable.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut micros) = self.unknown_micros.lock() {
            micros.push(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
        }
    }

    fn report(&self, args: &Args, recovered_in: Duration) {
        let share = |part: &AtomicU64, whole: &AtomicU64| {
            let whole = whole.load(Ordering::Relaxed).max(1) as f64;
            100.0 * part.load(Ordering::Relaxed) as f64 / whole
        };
        let mut latencies: Vec<Duration> = self
            .unknown_micros
            .lock()
            .map(|m| m.iter().map(|us| Duration::from_micros(*us)).collect())
            .unwrap_or_default();
        latencies.sort();
        println!(
            "database cut for {:?} (cache TTL {:?}, {} cached keys, {} streams)",
            args.outage, args.outage_cache_ttl, args.keys, args.streams
        );
        println!(
            "cached-key checks allowed: {}/{} = {:.3}%",
            self.cached_allowed.load(Ordering::Relaxed),
            self.cached_total.load(Ordering::Relaxed),
            share(&self.cached_allowed, &self.cached_total)
        );
        println!(
            "unknown-key checks refused: {}/{} = {:.3}% (UNAVAILABLE: {}); latency p50 {}  p99 {}  max {}",
            self.unknown_refused.load(Ordering::Relaxed),
            self.unknown_total.load(Ordering::Relaxed),
            share(&self.unknown_refused, &self.unknown_total),
            self.unknown_unavailable.load(Ordering::Relaxed),
            millis(percentile(&latencies, 50.0)),
            millis(percentile(&latencies, 99.0)),
            millis(latencies.last().copied().unwrap_or_default()),
        );
        println!(
            "after the database returned, a never-cached key was allowed within {}",
            millis(recovered_in)
        );
    }
}

/// A loopback TCP proxy to the database that can drop every connection and refuse new ones.
struct CuttingProxy {
    url: String,
    up: Arc<AtomicBool>,
    cuts: tokio::sync::watch::Sender<u64>,
    accept: tokio::task::JoinHandle<()>,
}

impl CuttingProxy {
    async fn start(database_url: &str) -> anyhow::Result<Self> {
        let config: tokio_postgres::Config = database_url.parse().context("database URL")?;
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            _ => anyhow::bail!("the outage measurement needs a TCP database URL"),
        };
        let upstream = format!(
            "{host}:{}",
            config.get_ports().first().copied().unwrap_or(5432)
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let up = Arc::new(AtomicBool::new(true));
        let (cuts, _) = tokio::sync::watch::channel(0_u64);
        let (accept_up, accept_cuts) = (up.clone(), cuts.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !accept_up.load(Ordering::SeqCst) {
                    continue;
                }
                let (upstream, up) = (upstream.clone(), accept_up.clone());
                let mut cut = accept_cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    if !up.load(Ordering::SeqCst) {
                        return;
                    }
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        let (scheme, rest) = database_url
            .split_once("://")
            .context("database URL scheme")?;
        let (userinfo, host_and_path) = match rest.split_once('@') {
            Some((userinfo, after)) => (format!("{userinfo}@"), after),
            None => (String::new(), rest),
        };
        let path = host_and_path.find('/').map_or("", |i| &host_and_path[i..]);
        Ok(Self {
            url: format!("{scheme}://{userinfo}{addr}{path}"),
            up,
            cuts,
            accept,
        })
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cuts.send_modify(|generation| *generation += 1);
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// How one Check was answered, as the flood measurement tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FloodAnswer {
    Allowed,
    /// 401 (unknown key) or another denial that is not a throttle.
    Refused,
    /// 429 `unknown_key_rate_limited`: not looked up.
    Throttled,
    /// gRPC UNAVAILABLE (store timed out or breaker open) or a transport error.
    Unavailable,
}

/// A Check from `peer` (Envoy's `attributes.source.address`).
async fn check_from(
    client: &mut AuthorizationClient<Channel>,
    path: &str,
    key: &str,
    peer: &str,
) -> FloodAnswer {
    use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address};
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::Peer;
    use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
    let mut request = super::check_request(path, &format!("Bearer {key}"));
    if let Some(attributes) = request.attributes.as_mut() {
        attributes.source = Some(Peer {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: peer.to_owned(),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        });
    }
    match client.check(request).await {
        Ok(response) => match response.into_inner().http_response {
            Some(HttpResponse::OkResponse(_)) => FloodAnswer::Allowed,
            Some(HttpResponse::DeniedResponse(denied))
                if denied.status.is_some_and(|s| s.code == 429) =>
            {
                FloodAnswer::Throttled
            }
            _ => FloodAnswer::Refused,
        },
        Err(_) => FloodAnswer::Unavailable,
    }
}

/// Counts of each answer, and latencies when asked to keep them.
#[derive(Debug, Default)]
struct AnswerCounts {
    allowed: AtomicU64,
    refused: AtomicU64,
    throttled: AtomicU64,
    unavailable: AtomicU64,
    micros: std::sync::Mutex<Vec<u64>>,
}

impl AnswerCounts {
    fn note(&self, answer: FloodAnswer, took: Option<Duration>) {
        let counter = match answer {
            FloodAnswer::Allowed => &self.allowed,
            FloodAnswer::Refused => &self.refused,
            FloodAnswer::Throttled => &self.throttled,
            FloodAnswer::Unavailable => &self.unavailable,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let (Some(took), Ok(mut micros)) = (took, self.micros.lock()) {
            micros.push(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
        }
    }

    fn total(&self) -> u64 {
        [
            &self.allowed,
            &self.refused,
            &self.throttled,
            &self.unavailable,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }

    /// `allowed/total = share%`, the other answers, and latency percentiles when kept.
    fn describe(&self) -> String {
        let total = self.total();
        let allowed = self.allowed.load(Ordering::Relaxed);
        let mut latencies: Vec<Duration> = self
            .micros
            .lock()
            .map(|m| m.iter().map(|us| Duration::from_micros(*us)).collect())
            .unwrap_or_default();
        latencies.sort();
        let latency = if latencies.is_empty() {
            String::new()
        } else {
            format!(
                "; latency p50 {}  p99 {}",
                millis(percentile(&latencies, 50.0)),
                millis(percentile(&latencies, 99.0))
            )
        };
        format!(
            "allowed {allowed}/{total} = {:.3}% (refused {}, 429 {}, UNAVAILABLE {}){latency}",
            100.0 * allowed as f64 / total.max(1) as f64,
            self.refused.load(Ordering::Relaxed),
            self.throttled.load(Ordering::Relaxed),
            self.unavailable.load(Ordering::Relaxed),
        )
    }
}

/// The breaker as sampled every few milliseconds during a phase.
#[derive(Debug, Default)]
struct BreakerSamples {
    samples: u64,
    not_closed: u64,
    openings: u64,
}

/// Runs the flood without and/or with the unknown-key budget (see `--budget`) and prints, for
/// each: the breaker, the legitimate checks answered and the lookups that reached PostgreSQL.
pub async fn measure_unknown_key_flood(args: &Args, admin_url: &str) -> anyhow::Result<()> {
    let database = ScratchDatabase::create(admin_url).await?;
    let outcome = async {
        let mut config = serve_config(args, &database.url, None);
        maas_authz::app::migrate(&config.database, Duration::from_secs(10)).await?;
        config.skip_migrations = true;
        // Keys before the servers, so that no insert notice evicts what they cached.
        let keys = Arc::new(mint_keys(&database.url, &args.tenant, args.keys).await?);
        println!(
            "unknown-key flood for {:?} per phase: {} flood streams over {} connections from {} \
             address(es); legitimate: 8 streams round-robin over {} cached keys, and a newly \
             minted key checked every 50 ms",
            args.duration, args.streams, args.connections, args.flood_peers, args.keys
        );
        let phases: &[bool] = match args.budget {
            BudgetPhases::Off => &[false],
            BudgetPhases::On => &[true],
            BudgetPhases::Both => &[false, true],
        };
        // The budget phase runs with MAAS_AUTHZ_UNKNOWN_KEY_LOOKUP* from the environment where
        // set (to measure other settings), else with the defaults.
        config.abuse = abuse_limits_from_environment()?;
        for &budget_on in phases {
            let mut phase = config.clone();
            if !budget_on {
                phase.abuse.unknown_key_lookups_per_second = OptionalRate(None);
                phase.abuse.unknown_key_lookups_per_second_per_peer = OptionalRate(None);
            }
            flood_phase(args, phase, &database.url, keys.clone(), budget_on).await?;
        }
        anyhow::Ok(())
    }
    .await;
    let dropped = database.drop_now().await;
    outcome?;
    dropped
}

/// The abuse-limit settings as `serve` would read them from the environment.
fn abuse_limits_from_environment() -> anyhow::Result<maas_authz::config::AbuseLimitsConfig> {
    use clap::{Args as _, FromArgMatches as _};
    let command = maas_authz::config::AbuseLimitsConfig::augment_args(clap::Command::new("abuse"));
    let matches = command
        .try_get_matches_from(["abuse"])
        .context("a MAAS_AUTHZ_UNKNOWN_KEY_LOOKUP* variable is invalid")?;
    Ok(maas_authz::config::AbuseLimitsConfig::from_arg_matches(
        &matches,
    )?)
}

async fn flood_phase(
    args: &Args,
    config: maas_authz::config::ServeConfig,
    database_url: &str,
    keys: Arc<Vec<String>>,
    budget_on: bool,
) -> anyhow::Result<()> {
    let budget = config.abuse.unknown_key_budget();
    let server = Application::build(config).await?;
    let measured = async {
        let mut warm = client(server.grpc_addr).await?;
        for key in keys.iter() {
            anyhow::ensure!(
                check_from(&mut warm, &args.path, key, "192.0.2.1").await == FloodAnswer::Allowed,
                "a fresh key is not allowed before the flood"
            );
        }
        let before = server_metrics(server.metrics_addr).await?;
        let started = Instant::now();
        let stop_at = started + args.duration;
        let (flood, cached, fresh) = (
            Arc::new(AnswerCounts::default()),
            Arc::new(AnswerCounts::default()),
            Arc::new(AnswerCounts::default()),
        );
        let mut tasks = Vec::new();
        let mut channels = Vec::new();
        for _ in 0..args.connections {
            channels.push(client(server.grpc_addr).await?);
        }
        for stream in 0..args.streams as usize {
            let mut client = channels[stream % channels.len()].clone();
            let (flood, path) = (flood.clone(), args.path.clone());
            let peer_number = stream as u32 % args.flood_peers;
            let peer = std::net::Ipv4Addr::from(0xc612_0000 + peer_number).to_string();
            tasks.push(tokio::spawn(async move {
                while Instant::now() < stop_at {
                    let unknown = ApiKey::generate().expect("randomness");
                    let answer = check_from(&mut client, &path, unknown.expose(), &peer).await;
                    flood.note(answer, None);
                }
            }));
        }
        for stream in 0..8_usize {
            let mut client = client(server.grpc_addr).await?;
            let (cached, keys, path) = (cached.clone(), keys.clone(), args.path.clone());
            let peer = format!("192.0.2.{}", 10 + stream);
            tasks.push(tokio::spawn(async move {
                let mut turn = stream;
                while Instant::now() < stop_at {
                    let began = Instant::now();
                    let answer = check_from(&mut client, &path, &keys[turn % keys.len()], &peer).await;
                    cached.note(answer, Some(began.elapsed()));
                    turn += 1;
                }
            }));
        }
        let minter = {
            let (fresh, path) = (fresh.clone(), args.path.clone());
            let admin = store(database_url, &args.tenant)?;
            let mut client = client(server.grpc_addr).await?;
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(Duration::from_millis(50));
                while Instant::now() < stop_at {
                    ticker.tick().await;
                    let request = maas_authz::minting::MintRequest {
                        username: "loadgen".to_owned(),
                        groups: vec!["system:authenticated".to_owned()],
                        name: "new during the flood".to_owned(),
                        description: None,
                        subscription: "free".to_owned(),
                        lifetime: Duration::from_secs(3_600),
                        ephemeral: false,
                    };
                    let Ok(minted) =
                        maas_authz::minting::mint_key(&admin, request, chrono::Utc::now()).await
                    else {
                        continue;
                    };
                    let began = Instant::now();
                    let answer =
                        check_from(&mut client, &path, minted.key.expose(), "192.0.2.200").await;
                    fresh.note(answer, Some(began.elapsed()));
                }
            })
        };
        let breaker = server
            .store()
            .breaker()
            .cloned()
            .context("serve runs with a breaker")?;
        let mut samples = BreakerSamples::default();
        let mut was_closed = true;
        while Instant::now() < stop_at {
            let closed = breaker.state() == maas_authz::breaker::BreakerState::Closed;
            samples.samples += 1;
            if !closed {
                samples.not_closed += 1;
                if was_closed {
                    samples.openings += 1;
                }
            }
            was_closed = closed;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for task in tasks {
            task.await.context("a client task panicked")?;
        }
        minter.await.context("the minting task panicked")?;
        let elapsed = started.elapsed().as_secs_f64();
        let after = server_metrics(server.metrics_addr).await?;
        let delta = |name: &str| after.value(name) - before.value(name);
        let sent = delta("maas_authz_db_query_duration_seconds_count{statement=\"select_key_by_hash\"}");
        let failed = delta("maas_authz_db_query_errors_total{statement=\"select_key_by_hash\"}");
        let refused = delta("maas_authz_db_query_refused_total{statement=\"select_key_by_hash\"}");
        println!();
        if budget_on {
            let rate = |rate: Option<maas_authz::lookup_budget::Rate>| {
                rate.map_or_else(
                    || "off".to_owned(),
                    |rate| format!("{}/s, burst {}", rate.per_second, rate.burst),
                )
            };
            println!(
                "WITH the unknown-key budget (global {}; per peer {}):",
                rate(budget.global),
                rate(budget.per_peer)
            );
        } else {
            println!("WITHOUT the unknown-key budget:");
        }
        println!(
            "  breaker: opened {} time(s), not closed {:.1}% of the time",
            samples.openings,
            100.0 * samples.not_closed as f64 / samples.samples.max(1) as f64
        );
        println!(
            "  key lookups sent to PostgreSQL: {:.0}/s ({} failed or timed out; {} refused by the open breaker)",
            sent / elapsed,
            failed,
            refused
        );
        println!("  flood checks ({:.0}/s): {}", flood.total() as f64 / elapsed, flood.describe());
        println!("  legitimate cached-key checks: {}", cached.describe());
        println!("  legitimate newly minted keys, first check: {}", fresh.describe());
        anyhow::Ok(())
    }
    .await;
    stop(server).await;
    measured
}

/// A scrape of the server's `/metrics`.
struct MetricsText(String);

impl MetricsText {
    /// The value of one series (`name{labels}`); 0 when absent.
    fn value(&self, series: &str) -> f64 {
        self.0
            .lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

async fn server_metrics(addr: std::net::SocketAddr) -> anyhow::Result<MetricsText> {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .context("cannot scrape the server's metrics")?
        .text()
        .await?;
    Ok(MetricsText(text))
}
