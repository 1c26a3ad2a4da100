//! Counters in Redis, shared by every replica: one Lua script call (atomic) per operation, windows
//! expiring in Redis itself (`PEXPIRE`).

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script};

use super::store::{Acquired, CounterCharge, CounterError, CounterSpec, CounterStore};

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

/// Counters in one Redis (or a Redis-protocol server), through a reconnecting connection.
pub struct RedisCounterStore {
    connection: ConnectionManager,
    acquire: Script,
    add: Script,
}

impl std::fmt::Debug for RedisCounterStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: never print it.
        f.debug_struct("RedisCounterStore").finish_non_exhaustive()
    }
}

/// The Redis URL could not be used at all (a configuration error, not an outage).
#[derive(Debug, thiserror::Error)]
#[error("invalid Redis URL: {0}")]
pub struct RedisUrlError(String);

impl RedisCounterStore {
    /// Connects lazily: the process starts even while Redis is down, and every operation times
    /// out after `timeout` (connecting included) so that Check stays within Envoy's deadline.
    pub fn connect_lazily(url: &str, timeout: Duration) -> Result<Self, RedisUrlError> {
        let client = Client::open(url).map_err(|error| RedisUrlError(error.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|error| RedisUrlError(error.to_string()))?;
        Ok(Self {
            connection,
            acquire: Script::new(ACQUIRE),
            add: Script::new(ADD),
        })
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
        "redis"
    }
}
