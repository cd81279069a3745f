//! `/data` on PostgreSQL (`--postgres-read URL --postgres-write URL`): reads through
//! `keel proxy --tcp`'s read-only port, writes through its read-write port, each with a
//! pool of connections (deadpool-postgres) that recovers from a dead server by itself.
//!
//! Every answer names the PostgreSQL server that gave it — its `cluster_name` and the
//! address it was reached on — which is what the homework's load script counts.
//!
//! - A connection whose server died is found closed when the pool hands it out again,
//!   and replaced. A read that fails on the way (the server was killed under it) is tried
//!   again on another connection, up to [`READ_ATTEMPTS`] times: a read is safe to
//!   repeat. A write is not: it is tried once, and a failure is a 503 that says so.
//! - Every wait is bounded by the timeout: taking a connection, making one, a query.
//!   While PostgreSQL cannot be reached the answer is a 503 with the reason, never a hang.
//! - The read pool holds at least two connections, made together when it has fewer, so
//!   that a read-only port that balances connections spreads even a single client's
//!   reads over two standbys; the pool hands its connections out in turn (first in,
//!   first out).
//! - A read connection older than about [`READ_MAX_AGE`] (drawn at random between half
//!   and one and a half times it) is closed rather than handed out again, and a new one
//!   made: the read-only port balances connections, not queries, so
//!   without this a standby that came back after a restart would get no reads until the
//!   service restarted. Writes go to the one primary and keep their connections.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deadpool_postgres::{
    Hook, HookError, Manager, ManagerConfig, Pool, QueueMode, RecyclingMethod, Runtime,
};
use serde_json::{Value, json};

/// Tries of a read before it fails.
pub const READ_ATTEMPTS: usize = 3;

/// How long a read connection is used before it is replaced, to spread reads again over
/// the standbys that are up now.
pub const READ_MAX_AGE: Duration = Duration::from_secs(5);

/// Connections each pool holds at most.
const POOL_SIZE: usize = 16;

/// The longest value a write may carry, in bytes.
pub const MAX_VALUE: usize = 4096;

/// Which server answered, and the newest row.
const READ: &str = "SELECT current_setting('cluster_name'), \
     host(inet_server_addr()) || ':' || inet_server_port(), \
     pg_is_in_recovery(), \
     to_regclass('public.keel_data') IS NOT NULL";

const NEWEST: &str = "SELECT json_build_object('id', id, 'value', value, \
     'written_by', written_by, 'written_at', written_at)::text \
     FROM keel_data ORDER BY id DESC LIMIT 1";

const CREATE: &str = "CREATE TABLE IF NOT EXISTS keel_data (\
     id bigserial PRIMARY KEY, value text NOT NULL, written_by text NOT NULL, \
     written_at timestamptz NOT NULL DEFAULT now())";

const INSERT: &str = "INSERT INTO keel_data (value, written_by) VALUES ($1, $2) \
     RETURNING json_build_object('id', id, 'value', value, \
     'written_by', written_by, 'written_at', written_at)::text, \
     current_setting('cluster_name'), host(inet_server_addr()) || ':' || inet_server_port()";

/// Why PostgreSQL could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PgDataError {
    /// A URL cannot be used.
    #[error("--postgres-{which} {url:?}: {reason}")]
    Url {
        which: &'static str,
        url: String,
        reason: String,
    },
    /// The password file cannot be read.
    #[error("cannot read the PostgreSQL password from {path}: {reason}")]
    Password { path: String, reason: String },
    /// The pool cannot be built.
    #[error("cannot set up the PostgreSQL pool: {0}")]
    Pool(String),
}

/// The two pools and their settings.
pub struct PgData {
    read: Pool,
    write: Pool,
    read_url: String,
    write_url: String,
    timeout: Duration,
    /// Whether the table is known to exist (made by the first write).
    table: AtomicBool,
}

/// What a read or a write answered: the server's name and address, the row.
#[derive(Debug)]
pub struct PgAnswer {
    pub node: String,
    pub addr: String,
    /// Primary or standby.
    pub role: &'static str,
    /// The newest row (a read) or the row written, as JSON; `null` before any write.
    pub row: Value,
}

impl PgData {
    /// Pools for `read` and `write` (`postgres://user@host:port/dbname`), the password
    /// from `password_file` when given (else from the URLs), every wait bounded by
    /// `timeout`.
    pub fn new(
        read: &str,
        write: &str,
        password_file: Option<&std::path::Path>,
        timeout: Duration,
    ) -> Result<PgData, PgDataError> {
        let password = match password_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map(|p| p.trim().to_owned())
                    .map_err(|e| PgDataError::Password {
                        path: path.display().to_string(),
                        reason: e.to_string(),
                    })?,
            ),
            None => None,
        };
        Ok(PgData {
            read: pool("read", read, password.as_deref(), timeout)?,
            write: pool("write", write, password.as_deref(), timeout)?,
            read_url: redacted(read),
            write_url: redacted(write),
            timeout,
            table: AtomicBool::new(false),
        })
    }

    /// Where reads go, without a password.
    pub fn read_url(&self) -> &str {
        &self.read_url
    }

    /// Where writes go, without a password.
    pub fn write_url(&self) -> &str {
        &self.write_url
    }

    /// The server that answers a read, and the newest row.
    pub async fn read(&self) -> Result<PgAnswer, String> {
        let mut last = String::new();
        for _ in 0..READ_ATTEMPTS {
            match self.read_once().await {
                Ok(answer) => return Ok(answer),
                Err(e) => last = e,
            }
        }
        Err(format!(
            "PostgreSQL did not answer a read through {} ({READ_ATTEMPTS} tries): {last}",
            self.read_url
        ))
    }

    async fn read_once(&self) -> Result<PgAnswer, String> {
        let work = async {
            let client = self.read.get().await.map_err(|e| pool_error(&e))?;
            let row = client
                .query_one(READ, &[])
                .await
                .map_err(|e| pg_error(&e))?;
            let node: String = row.try_get(0).map_err(|e| pg_error(&e))?;
            let addr: Option<String> = row.try_get(1).map_err(|e| pg_error(&e))?;
            let standby: bool = row.try_get(2).map_err(|e| pg_error(&e))?;
            let has_table: bool = row.try_get(3).map_err(|e| pg_error(&e))?;
            let newest = if has_table {
                client
                    .query_opt(NEWEST, &[])
                    .await
                    .map_err(|e| pg_error(&e))?
                    .map(|r| r.try_get::<_, String>(0))
                    .transpose()
                    .map_err(|e| pg_error(&e))?
            } else {
                None
            };
            Ok(PgAnswer {
                node,
                addr: addr.unwrap_or_default(),
                role: if standby { "standby" } else { "primary" },
                row: newest
                    .and_then(|t| serde_json::from_str(&t).ok())
                    .unwrap_or(Value::Null),
            })
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {:?}", self.timeout)))
    }

    /// Writes a row carrying `value`, by `backend`; the server that took it.
    pub async fn write(&self, value: &str, backend: &str) -> Result<PgAnswer, String> {
        let work = async {
            let client = self.write.get().await.map_err(|e| pool_error(&e))?;
            if !self.table.load(Ordering::Relaxed) {
                client
                    .batch_execute(CREATE)
                    .await
                    .map_err(|e| pg_error(&e))?;
                self.table.store(true, Ordering::Relaxed);
            }
            let row = client
                .query_one(INSERT, &[&value, &backend])
                .await
                .map_err(|e| pg_error(&e))?;
            let written: String = row.try_get(0).map_err(|e| pg_error(&e))?;
            Ok(PgAnswer {
                node: row.try_get(1).map_err(|e| pg_error(&e))?,
                addr: row
                    .try_get::<_, Option<String>>(2)
                    .map_err(|e| pg_error(&e))?
                    .unwrap_or_default(),
                role: "primary",
                row: serde_json::from_str(&written).unwrap_or(Value::Null),
            })
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {:?}", self.timeout)))
            .map_err(|e| {
                format!(
                    "PostgreSQL did not take the write through {}: {e}",
                    self.write_url
                )
            })
    }

    /// The pools' figures, for `/health`.
    pub fn status(&self) -> Value {
        let of = |pool: &Pool| {
            let s = pool.status();
            json!({"size": s.size, "available": s.available, "waiting": s.waiting})
        };
        json!({
            "read": self.read_url,
            "write": self.write_url,
            "read_pool": of(&self.read),
            "write_pool": of(&self.write),
        })
    }
}

fn pool(
    which: &'static str,
    url: &str,
    password: Option<&str>,
    timeout: Duration,
) -> Result<Pool, PgDataError> {
    let bad = |reason: String| PgDataError::Url {
        which,
        url: redacted(url),
        reason,
    };
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(bad(
            "not a PostgreSQL URL: give postgres://USER@HOST:PORT/DBNAME".to_owned(),
        ));
    }
    let mut config = tokio_postgres::Config::from_str(url).map_err(|e| bad(e.to_string()))?;
    if config.get_hosts().is_empty() || config.get_user().is_none() {
        return Err(bad(
            "give the user and the host: postgres://USER@HOST:PORT/DBNAME".to_owned(),
        ));
    }
    if let Some(password) = password {
        config.password(password);
    }
    config
        .connect_timeout(timeout)
        .application_name(format!("keel-service ({which})"));
    let manager = Manager::from_config(
        config,
        tokio_postgres::NoTls,
        ManagerConfig {
            // A connection whose server died is closed: found so when handed out again.
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let mut builder = Pool::builder(manager);
    if which == "read" {
        builder = builder.pre_recycle(Hook::sync_fn(|_, metrics| {
            // Drawn between half and one and a half times the age, so that services
            // started together do not replace their connections in step (and, with a
            // round-robin port, each keep to one standby).
            if metrics.age() > READ_MAX_AGE.mul_f64(rand::random_range(0.5..1.5)) {
                Err(HookError::message(
                    "replaced: spread over the standbys again",
                ))
            } else {
                Ok(())
            }
        }));
    }
    builder
        .max_size(POOL_SIZE)
        .queue_mode(QueueMode::Fifo)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(timeout))
        .create_timeout(Some(timeout))
        .recycle_timeout(Some(timeout))
        .build()
        .map_err(|e| PgDataError::Pool(e.to_string()))
}

/// A URL without its password.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

fn pool_error(e: &deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg_error(e),
        deadpool_postgres::PoolError::Timeout(_) => "no connection within the timeout".to_owned(),
        other => other.to_string(),
    }
}

/// The server's own words when it sent an error, else the chain of causes.
fn pg_error(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} {}", db.code().code(), db.message());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_passwords_never_shown() {
        let t = Duration::from_secs(1);
        let e = PgData::new(
            "http://x",
            "postgres://keel@127.0.0.1:5000/postgres",
            None,
            t,
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(
            e.contains("--postgres-read") && e.contains("not a PostgreSQL URL"),
            "{e}"
        );
        let e = PgData::new(
            "postgres://keel@127.0.0.1:5001/postgres",
            "postgres://keel:secret@127.0.0.1:notaport/postgres",
            None,
            t,
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(e.contains("--postgres-write"), "{e}");
        assert!(!e.contains("secret"), "{e}");
        assert_eq!(
            redacted("postgres://keel:secret@127.0.0.1:5000/postgres"),
            "postgres://keel:***@127.0.0.1:5000/postgres"
        );
    }
}
