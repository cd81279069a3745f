//! One client's connection to the system under test, able to send one write at a time.

use bytes::Bytes;

use crate::cli::Target;
use crate::http_writer::{HttpApi, HttpWriter};
use crate::redis_writer::RedisWriter;

/// A client connection. An enum rather than a trait object: there are three fixed
/// targets, and the hot loop should not pay for boxing a future per write.
pub enum Writer {
    Http(HttpWriter),
    Redis(RedisWriter),
}

impl Writer {
    /// Opens the connection, so that connecting is not timed as part of the first write.
    /// `tls` speaks TLS to an `https://` URL.
    pub async fn connect(
        target: Target,
        url: &str,
        tls: Option<&tokio_rustls::TlsConnector>,
    ) -> anyhow::Result<Self> {
        Ok(match target {
            Target::Keel => Self::Http(HttpWriter::connect(HttpApi::Keel, url, tls).await?),
            Target::Etcd => Self::Http(HttpWriter::connect(HttpApi::Etcd, url, tls).await?),
            Target::Redis => Self::Redis(RedisWriter::connect(url).await?),
        })
    }

    /// Writes `value` under `key` and returns once the target acknowledged it as
    /// replicated, or with the reason it did not.
    pub async fn write(&mut self, key: &str, value: &Bytes) -> anyhow::Result<()> {
        match self {
            Self::Http(writer) => writer.write(key, value).await,
            Self::Redis(writer) => writer.write(key, value).await,
        }
    }

    /// Called after a write was abandoned half-way (timed out): an HTTP/1.1 connection
    /// may still owe that answer, so the next write must not reuse it. The redis
    /// connection matches answers to requests and drops the late one by itself.
    pub fn abandon_connection(&mut self) {
        if let Self::Http(writer) = self {
            writer.abandon_connection();
        }
    }
}
