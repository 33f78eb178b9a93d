//! The Redis connection shared by the scale-out implementations: the alert bus
//! ([`RedisBus`](crate::alert::redis_bus::RedisBus)) and the shared call state
//! ([`RedisCallState`](crate::callers::redis::RedisCallState)).
//!
//! Every call goes through [`Link::call`], which bounds it with the configured timeout and
//! drops the connection on any failure so the next call reconnects: a Redis that is down or
//! slow costs a caller one timeout, never a hang. A [`Link`] is one multiplexed connection;
//! callers share it by `&`, and the lock around it is held only to clone or clear the handle,
//! never across the call. The blocking `XREAD` of the bus reader gets a link of its own,
//! because Redis answers one connection's commands in order.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, FromRedisValue, IntoConnectionInfo, RedisError};

/// Key prefix of everything this service stores in Redis.
pub const KEY_PREFIX: &str = "kg";

/// Why a Redis call failed.
#[derive(Debug, thiserror::Error)]
pub enum RedisCallError {
    /// No answer within the timeout.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Connecting or the command failed.
    #[error("redis call failed: {0}")]
    Redis(#[from] RedisError),
}

/// A validated Redis URL and the timeouts to use with it.
#[derive(Debug, Clone)]
pub struct RedisTarget {
    client: Client,
    /// The bound on every call (connect included).
    pub timeout: Duration,
}

/// `url`'s connection settings with `TCP_NODELAY` on: the redis crate leaves Nagle's
/// algorithm on by default, which would hold an `XADD` back while the previous command is
/// unacknowledged, the very hop cross-node alert latency is made of.
fn connection_info(url: &str) -> Result<redis::ConnectionInfo, RedisError> {
    let info = url.into_connection_info()?;
    let tcp = info.tcp_settings().clone().set_nodelay(true);
    Ok(info.set_tcp_settings(tcp))
}

impl RedisTarget {
    /// Parses `url` (`redis://HOST:PORT[/DB]`); does not connect.
    ///
    /// # Errors
    /// A URL the redis crate does not accept.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, RedisError> {
        Ok(Self { client: Client::open(connection_info(url)?)?, timeout })
    }

    /// A link with no connection yet; it connects on first use.
    pub fn link(&self) -> Link {
        Link { target: self.clone(), connection: Arc::new(Mutex::new(None)) }
    }
}

/// A connection to Redis, reconnected on demand; see the module docs.
#[derive(Debug, Clone)]
pub struct Link {
    target: RedisTarget,
    connection: Arc<Mutex<Option<MultiplexedConnection>>>,
}

impl Link {
    fn lock(&self) -> MutexGuard<'_, Option<MultiplexedConnection>> {
        // The slot holds a handle or nothing; either is a consistent state after a panic.
        self.connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The timeout every call is bounded by.
    pub fn timeout(&self) -> Duration {
        self.target.timeout
    }

    /// Runs `cmd` (a command or pipeline), connecting first if needed; `extra` lengthens the
    /// bound for a command that blocks on purpose (`XREAD BLOCK`).
    ///
    /// # Errors
    /// A timeout, a connection failure or an error reply; the connection is dropped so the
    /// next call starts afresh.
    pub async fn call<T: FromRedisValue>(
        &self,
        cmd: &impl Query,
        extra: Duration,
    ) -> Result<T, RedisCallError> {
        let bound = self.target.timeout + extra;
        let result = tokio::time::timeout(bound, async {
            let cached = self.lock().clone();
            let mut connection = match cached {
                Some(connection) => connection,
                None => {
                    let config = AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(self.target.timeout))
                        .set_response_timeout(Some(bound));
                    self.target.client.get_multiplexed_async_connection_with_config(&config).await?
                }
            };
            let reply = cmd.run(&mut connection).await;
            *self.lock() = Some(connection);
            reply
        })
        .await;
        let result = match result {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(error)) => RedisCallError::Redis(error),
            Err(_) => RedisCallError::Timeout(bound),
        };
        *self.lock() = None;
        Err(result)
    }
}

/// A command or a pipeline: what [`Link::call`] runs.
pub trait Query: Sync {
    /// Sends it on `connection` and reads the reply.
    fn run<T: FromRedisValue>(
        &self,
        connection: &mut MultiplexedConnection,
    ) -> impl Future<Output = Result<T, RedisError>> + Send;
}

impl Query for redis::Cmd {
    async fn run<T: FromRedisValue>(
        &self,
        connection: &mut MultiplexedConnection,
    ) -> Result<T, RedisError> {
        self.query_async(connection).await
    }
}

impl Query for redis::Pipeline {
    async fn run<T: FromRedisValue>(
        &self,
        connection: &mut MultiplexedConnection,
    ) -> Result<T, RedisError> {
        self.query_async(connection).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Connections to Redis are made with Nagle's algorithm off, whatever the URL.
    #[test]
    fn connections_have_nodelay() {
        for url in ["redis://127.0.0.1:6390", "redis://127.0.0.1:6390/2"] {
            let info = connection_info(url).expect("valid url");
            assert!(info.tcp_settings().nodelay(), "help: {url}");
        }
        assert!(connection_info("not a url").is_err());
    }
}
