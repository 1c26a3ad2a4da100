//! Counters in Redis, shared by every replica: one Lua script call (atomic) per operation, windows
//! expiring in Redis itself (`PEXPIRE`). One server, or a Redis Cluster / Valkey cluster: every
//! key of one owner carries the owner as its hash tag (see `Limiter::owner`), so one script call
//! only ever touches one slot.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Client, Cmd, ConnectionAddr, Pipeline, RedisFuture, Script, TlsCertificates, Value};

use super::store::{Acquired, CounterCharge, CounterError, CounterSpec, CounterStore};
use crate::tls::{CaBundle, Trust};

/// KEYS = counters; ARGV = limit, cost, add, ttl_ms per key. Reads every counter, and only if
/// each has room for its cost adds every amount (INCRBY + PEXPIRE). Returns {admitted, values…}.
const ACQUIRE: &str = r"
local admitted = 1
local values = {}
for i, key in ipairs(KEYS) do
  local base = (i - 1) * 4
  local current = tonumber(redis.call('GET', key) or '0')
  values[i] = current
  if current + tonumber(ARGV[base + 2]) > tonumber(ARGV[base + 1]) then
    admitted = 0
  end
end
if admitted == 1 then
  for i, key in ipairs(KEYS) do
    local base = (i - 1) * 4
    local add = tonumber(ARGV[base + 3])
    if add > 0 then
      values[i] = redis.call('INCRBY', key, add)
      redis.call('PEXPIRE', key, ARGV[base + 4])
    end
  end
end
table.insert(values, 1, admitted)
return values
";

/// KEYS = counters; ARGV = amount, ttl_ms per key.
const ADD: &str = r"
for i, key in ipairs(KEYS) do
  redis.call('INCRBY', key, ARGV[(i - 1) * 2 + 1])
  redis.call('PEXPIRE', key, ARGV[(i - 1) * 2 + 2])
end
return 1
";

/// Extra life past the window's end, so that a replica whose clock runs slightly behind still
/// finds the counter it is about to compare (the key names the window, so it is never reused).
const EXPIRY_SLACK_MILLIS: u64 = 1_000;

/// Where the counters live and how to reach them.
#[derive(Debug, Clone, Copy)]
pub struct RedisEndpoint<'a> {
    /// One URL, or (cluster) comma-separated seed nodes of one cluster.
    pub url: &'a str,
    pub ca_file: Option<&'a CaBundle>,
    /// Longest one operation (connecting included) may take.
    pub timeout: Duration,
    /// A Redis Cluster (or Valkey cluster): commands follow the cluster's slot map.
    pub cluster: bool,
}

/// Counters in one Redis (or a Redis-protocol server) or one Redis Cluster, through a
/// reconnecting connection.
pub struct RedisCounterStore {
    connection: Connection,
    /// What the server's certificate is checked against (`rediss://` only).
    trust: Option<Trust>,
    acquire: Script,
    add: Script,
}

impl std::fmt::Debug for RedisCounterStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: never print it.
        f.debug_struct("RedisCounterStore").finish_non_exhaustive()
    }
}

/// The Redis settings cannot be used at all (a configuration error, not an outage). No message
/// repeats the URL, which may hold a password.
#[derive(Debug, thiserror::Error)]
pub enum RedisUrlError {
    #[error(
        "must be a Redis URL like redis://host:6379, redis://:password@host:6379/0 or \
         rediss://host:6380 (TLS)"
    )]
    Malformed,
    #[error(
        "#insecure (TLS without any certificate check) is refused: name the CA that signed the \
         server's certificate in MAAS_AUTHZ_REDIS_CA_FILE instead"
    )]
    Insecure,
    #[error(
        "MAAS_AUTHZ_REDIS_CA_FILE is set but MAAS_AUTHZ_REDIS_URL is not a rediss:// URL: use \
         rediss:// for TLS, or drop MAAS_AUTHZ_REDIS_CA_FILE"
    )]
    CaWithoutTls,
    #[error("cannot set up TLS with MAAS_AUTHZ_REDIS_CA_FILE={0}")]
    Tls(String),
    #[error(
        "lists {0} nodes, which only a cluster has: set MAAS_AUTHZ_REDIS_CLUSTER=true, or give \
         one URL"
    )]
    SeveralNodesWithoutCluster(usize),
    #[error("the cluster's seed nodes must all be redis:// or all rediss://, with one password")]
    MixedClusterNodes,
}

/// The setting that names a CA bundle for Redis, for messages.
pub const REDIS_CA_FILE_SETTING: &str = "MAAS_AUTHZ_REDIS_CA_FILE";

/// Checks a Redis URL's shape without connecting: `redis://`, `rediss://` (TLS, certificate and
/// host name verified) or a Unix socket; `#insecure` is refused. A comma-separated list names a
/// cluster's seed nodes, each checked the same way.
pub fn check_redis_url(url: &str) -> Result<(), RedisUrlError> {
    let mut tls_modes = Vec::new();
    for node in nodes_of(url) {
        tls_modes.push(redis_client(node)?.1);
    }
    if tls_modes.windows(2).any(|pair| pair[0] != pair[1]) {
        return Err(RedisUrlError::MixedClusterNodes);
    }
    Ok(())
}

/// The comma-separated nodes of a setting (one for a single server).
fn nodes_of(url: &str) -> impl Iterator<Item = &str> {
    url.split(',')
        .map(str::trim)
        .filter(|node| !node.is_empty())
}

/// The client for `url`, and whether it speaks TLS.
fn redis_client(url: &str) -> Result<(Client, bool), RedisUrlError> {
    let client = Client::open(url).map_err(|_| RedisUrlError::Malformed)?;
    let tls = match client.get_connection_info().addr() {
        ConnectionAddr::TcpTls { insecure: true, .. } => return Err(RedisUrlError::Insecure),
        ConnectionAddr::TcpTls { .. } => true,
        _ => false,
    };
    Ok((client, tls))
}

/// Whether a Redis error is a TLS certificate that did not verify (a configuration error);
/// the redis crate keeps rustls's error only as text.
fn is_certificate_failure(error: &redis::RedisError) -> bool {
    crate::tls::tls_failure(error).is_some()
        || crate::store::connect::error_chain(error).contains("invalid peer certificate")
}

impl RedisCounterStore {
    /// Connects lazily: the process starts even while Redis is down, and every operation times
    /// out after `timeout` (connecting included) so that Check stays within Envoy's deadline.
    /// A `rediss://` URL verifies the server's certificate and host name against `ca_file`
    /// (`MAAS_AUTHZ_REDIS_CA_FILE`), else the built-in public roots.
    pub fn connect_lazily(endpoint: RedisEndpoint<'_>) -> Result<Self, RedisUrlError> {
        check_redis_url(endpoint.url)?;
        let nodes: Vec<&str> = nodes_of(endpoint.url).collect();
        let (connection, trust) = if endpoint.cluster {
            cluster_connection(&nodes, endpoint)?
        } else {
            match nodes.as_slice() {
                [url] => single_connection(url, endpoint)?,
                _ => return Err(RedisUrlError::SeveralNodesWithoutCluster(nodes.len())),
            }
        };
        Ok(Self {
            connection,
            trust,
            acquire: Script::new(ACQUIRE),
            add: Script::new(ADD),
        })
    }

    /// At start-up: a certificate that does not verify is a configuration error, to be fixed
    /// before serving, unlike a Redis that is down (the limits' outage policy covers that).
    pub async fn check_certificate(&self) -> Result<(), RedisTlsError> {
        let Some(trust) = &self.trust else {
            return Ok(());
        };
        let mut connection = self.connection.clone();
        match redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await
        {
            Err(error) if is_certificate_failure(&error) => {
                Err(RedisTlsError(explain_certificate_failure(&error, trust)))
            }
            _ => Ok(()),
        }
    }
}

/// A connection to one server (reconnecting, connected on first use).
fn single_connection(
    url: &str,
    endpoint: RedisEndpoint<'_>,
) -> Result<(Connection, Option<Trust>), RedisUrlError> {
    let (client, tls) = redis_client(url)?;
    let (client, trust) = match (tls, endpoint.ca_file) {
        (false, Some(_)) => return Err(RedisUrlError::CaWithoutTls),
        (false, None) => (client, None),
        (true, None) => (client, Some(Trust::public_roots())),
        (true, Some(bundle)) => {
            let client = Client::build_with_tls(url, ca_certificates(bundle))
                .map_err(|_| RedisUrlError::Tls(bundle.path().display().to_string()))?;
            (client, Some(Trust::bundle(bundle, REDIS_CA_FILE_SETTING)))
        }
    };
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(endpoint.timeout))
        .set_response_timeout(Some(endpoint.timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(2));
    let connection = ConnectionManager::new_lazy_with_config(client, config)
        .map_err(|_| RedisUrlError::Malformed)?;
    Ok((Connection::Single(connection), trust))
}

/// A connection to a cluster through its seed nodes: it learns the slot map on first use,
/// follows `MOVED`/`ASK` redirections and refreshes the map when the topology changes.
fn cluster_connection(
    nodes: &[&str],
    endpoint: RedisEndpoint<'_>,
) -> Result<(Connection, Option<Trust>), RedisUrlError> {
    let tls = nodes
        .first()
        .map(|node| redis_client(node).map(|(_, tls)| tls))
        .transpose()?
        .unwrap_or(false);
    let mut builder = ClusterClient::builder(nodes.iter().copied())
        .connection_timeout(endpoint.timeout)
        .response_timeout(endpoint.timeout)
        .retries(1);
    let trust = match (tls, endpoint.ca_file) {
        (false, Some(_)) => return Err(RedisUrlError::CaWithoutTls),
        (false, None) => None,
        (true, None) => Some(Trust::public_roots()),
        (true, Some(bundle)) => {
            builder = builder.certs(ca_certificates(bundle));
            Some(Trust::bundle(bundle, REDIS_CA_FILE_SETTING))
        }
    };
    let client = builder
        .build()
        .map_err(|_| RedisUrlError::MixedClusterNodes)?;
    let config = ClusterConfig::new()
        .set_connection_timeout(endpoint.timeout)
        .set_response_timeout(endpoint.timeout);
    let connection = client.get_pending_async_connection_with_config(config);
    Ok((Connection::Cluster(connection), trust))
}

fn ca_certificates(bundle: &CaBundle) -> TlsCertificates {
    TlsCertificates {
        client_tls: None,
        root_cert: Some(bundle.pem().to_vec()),
    }
}

/// One server or one cluster, behind the one interface the scripts and commands use.
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(connection) => connection.req_packed_command(cmd),
            Self::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(connection) => connection.get_db(),
            Self::Cluster(connection) => connection.get_db(),
        }
    }
}

/// The Redis server's certificate did not verify.
#[derive(Debug, thiserror::Error)]
#[error("MAAS_AUTHZ_REDIS_URL (rediss://): {0}")]
pub struct RedisTlsError(String);

/// The redis crate keeps rustls's error only as text: the common case (a certificate from
/// another CA) is recognised by it, anything else is quoted.
fn explain_certificate_failure(error: &redis::RedisError, trust: &Trust) -> String {
    let unknown_issuer = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
    let text = crate::store::connect::error_chain(error);
    match crate::tls::tls_failure(error) {
        Some(tls) => crate::tls::explain_tls_failure(tls, Some(trust)),
        None if text.contains(&unknown_issuer.to_string()) => {
            crate::tls::explain_tls_failure(&unknown_issuer, Some(trust))
        }
        None => format!(
            "the TLS handshake failed: {text} (certificates are checked against {})",
            trust.described_as()
        ),
    }
}

fn ttl_millis(expires_at_millis: u64, now_millis: u64) -> u64 {
    expires_at_millis
        .saturating_sub(now_millis)
        .saturating_add(EXPIRY_SLACK_MILLIS)
}

fn unavailable(error: redis::RedisError) -> CounterError {
    CounterError::Unavailable(error.to_string())
}

fn non_negative(value: i64) -> u64 {
    u64::try_from(value).unwrap_or_default()
}

#[async_trait::async_trait]
impl CounterStore for RedisCounterStore {
    async fn acquire(
        &self,
        counters: &[CounterSpec],
        now_millis: u64,
    ) -> Result<Acquired, CounterError> {
        if counters.is_empty() {
            return Ok(Acquired {
                admitted: true,
                values: Vec::new(),
            });
        }
        let mut invocation = self.acquire.prepare_invoke();
        for counter in counters {
            invocation
                .key(&counter.key)
                .arg(counter.limit)
                .arg(counter.cost)
                .arg(counter.add)
                .arg(ttl_millis(counter.expires_at_millis, now_millis));
        }
        let mut connection = self.connection.clone();
        let reply: Vec<i64> = invocation
            .invoke_async(&mut connection)
            .await
            .map_err(unavailable)?;
        let Some((&admitted, values)) = reply.split_first() else {
            return Err(CounterError::Unavailable("empty script reply".to_owned()));
        };
        Ok(Acquired {
            admitted: admitted == 1,
            values: values.iter().copied().map(non_negative).collect(),
        })
    }

    async fn add(&self, charges: &[CounterCharge], now_millis: u64) -> Result<(), CounterError> {
        if charges.is_empty() {
            return Ok(());
        }
        let mut invocation = self.add.prepare_invoke();
        for charge in charges {
            invocation
                .key(&charge.key)
                .arg(charge.amount)
                .arg(ttl_millis(charge.expires_at_millis, now_millis));
        }
        let mut connection = self.connection.clone();
        let _: i64 = invocation
            .invoke_async(&mut connection)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn read(&self, keys: &[String], _now_millis: u64) -> Result<Vec<u64>, CounterError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut connection = self.connection.clone();
        let values: Vec<Option<i64>> = redis::cmd("MGET")
            .arg(keys)
            .query_async(&mut connection)
            .await
            .map_err(unavailable)?;
        Ok(values
            .into_iter()
            .map(|value| value.map_or(0, non_negative))
            .collect())
    }

    async fn ping(&self) -> Result<(), CounterError> {
        let mut connection = self.connection.clone();
        let _: String = redis::cmd("PING")
            .query_async(&mut connection)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    fn kind(&self) -> &'static str {
        match self.connection {
            Connection::Single(_) => "redis",
            Connection::Cluster(_) => "redis-cluster",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_tls_and_socket_urls_are_accepted() {
        for url in [
            "redis://127.0.0.1:6379",
            "redis://:secret@redis:6379/0",
            "rediss://redis.example:6380",
            "rediss://user:secret@redis.example:6380/2",
            "redis+unix:///run/redis.sock",
        ] {
            assert!(check_redis_url(url).is_ok(), "{url}");
        }
    }

    #[test]
    fn insecure_tls_is_refused_without_repeating_the_url() {
        let error = check_redis_url("rediss://:secret@redis.example:6380/#insecure").unwrap_err();

        assert!(matches!(error, RedisUrlError::Insecure));
        assert!(!error.to_string().contains("secret"), "{error}");
    }

    #[test]
    fn a_malformed_url_is_refused_without_repeating_it() {
        let error = check_redis_url("redis://:secret@redis:port").unwrap_err();

        assert_eq!(
            error.to_string(),
            "must be a Redis URL like redis://host:6379, redis://:password@host:6379/0 or \
             rediss://host:6380 (TLS)"
        );
    }

    #[tokio::test]
    async fn a_ca_file_needs_a_tls_url() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap();
        std::fs::write(&path, ca.pem()).unwrap();
        let bundle = CaBundle::read(&path).unwrap();

        let endpoint = |url, cluster| RedisEndpoint {
            url,
            ca_file: Some(&bundle),
            timeout: Duration::from_millis(100),
            cluster,
        };
        let plain = RedisCounterStore::connect_lazily(endpoint("redis://127.0.0.1:6379", false));
        let tls = RedisCounterStore::connect_lazily(endpoint("rediss://127.0.0.1:6380", false));
        let plain_cluster =
            RedisCounterStore::connect_lazily(endpoint("redis://a:6379,redis://b:6379", true));
        let tls_cluster =
            RedisCounterStore::connect_lazily(endpoint("rediss://a:6380,rediss://b:6380", true));

        assert!(matches!(plain_cluster, Err(RedisUrlError::CaWithoutTls)));
        assert!(tls_cluster.is_ok());
        assert!(matches!(plain, Err(RedisUrlError::CaWithoutTls)));
        assert!(tls.is_ok());
    }

    #[tokio::test]
    async fn several_nodes_need_cluster_mode_and_one_tls_mode() {
        let endpoint = |url, cluster| RedisEndpoint {
            url,
            ca_file: None,
            timeout: Duration::from_millis(100),
            cluster,
        };

        let without_cluster = RedisCounterStore::connect_lazily(endpoint(
            "redis://:secret@a:6379,redis://:secret@b:6379",
            false,
        ))
        .err()
        .unwrap();
        let mixed = check_redis_url("redis://a:6379, rediss://b:6380").unwrap_err();
        let cluster = RedisCounterStore::connect_lazily(endpoint(
            "redis://a:7000, redis://b:7001,redis://c:7002",
            true,
        ));
        let one_node_cluster = RedisCounterStore::connect_lazily(endpoint("redis://a:7000", true));

        assert!(matches!(
            without_cluster,
            RedisUrlError::SeveralNodesWithoutCluster(2)
        ));
        assert!(!without_cluster.to_string().contains("secret"));
        assert!(
            without_cluster
                .to_string()
                .contains("MAAS_AUTHZ_REDIS_CLUSTER=true")
        );
        assert!(matches!(mixed, RedisUrlError::MixedClusterNodes));
        assert_eq!(cluster.unwrap().kind(), "redis-cluster");
        assert_eq!(one_node_cluster.unwrap().kind(), "redis-cluster");
    }
}
