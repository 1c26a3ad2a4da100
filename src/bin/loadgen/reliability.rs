//! Reliability measurements (`--measure revocation|outage`): how fast a revocation on one
//! replica is honoured by another, and what a database outage does to Check. Each starts its own
//! servers on a scratch database, and prints its figures.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use maas_authz::key::ApiKey;
use maas_authz::serve::start;
use maas_authz::store::KeyStore;
use maas_authz::store::postgres::{NoQueryObserver, PgKeyStore, PgSettings};
use tonic::transport::Channel;

use super::{Args, ScratchDatabase, mint_keys, serve_config, stop};

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
        NoQueryObserver,
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
        let replica_a = start(config.clone()).await?;
        let replica_b = start(config).await?;
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
                    .authorizer()
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
        maas_authz::serve::migrate(&config.database, Duration::from_secs(10)).await?;
        // Keys before the server, so that no insert notice evicts what it cached.
        let keys = Arc::new(mint_keys(&database.url, &args.tenant, args.keys).await?);
        let server = start(config).await?;
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
