//! Writes to a Redis master: `SET` then `WAIT 1 0`, on one connection.

use anyhow::{Context, bail};
use bytes::Bytes;
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;

/// One connection per task. `MultiplexedConnection` is the redis crate's async
/// connection; given to one task only, it carries one exchange at a time like the
/// HTTP connections do. It reconnects by itself after an error.
pub struct RedisWriter {
    connection: MultiplexedConnection,
}

impl RedisWriter {
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)
            .with_context(|| format!("`{url}` is not a URL like redis://127.0.0.1:6379"))?;
        // The driver puts its own timeout around each write; no second one here.
        let connection = client
            .get_multiplexed_async_connection_with_config(&AsyncConnectionConfig::new())
            .await
            .with_context(|| format!("connecting to {url}"))?;
        Ok(Self { connection })
    }

    pub async fn write(&mut self, key: &str, value: &Bytes) -> anyhow::Result<()> {
        // Both commands go out in one pipeline, so a write costs one round trip as with
        // the HTTP targets. WAIT still only returns once the replica has acknowledged
        // the SET before it: it covers every earlier write of this connection.
        let (replicas,): (i64,) = redis::pipe()
            .cmd("SET")
            .arg(key)
            .arg(value.as_ref())
            .ignore()
            .cmd("WAIT")
            .arg(1)
            .arg(0)
            .query_async(&mut self.connection)
            .await?;
        if replicas < 1 {
            bail!("WAIT reported {replicas} replicas, the write is not replicated");
        }
        Ok(())
    }
}
