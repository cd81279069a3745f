//! One check of a PostgreSQL server, for real: connect, authenticate (scram-sha-256, md5
//! or trust, as the server asks), and ask what it is and how far behind its replay is.
//!
//! HAProxy's `pgsql-check` only logs in, so it sees neither which server is the primary
//! nor a standby that has fallen behind; this check answers both with one query.
//!
//! The lag is zero on a primary, on a standby that has replayed all it received, and on
//! a standby that streams from no primary (not yet after a restart, or its primary is
//! gone: what it has replayed is then the freshest there is, and its reads go on);
//! otherwise it is the age of the last transaction it replayed (`now() -
//! pg_last_xact_replay_timestamp()`). A standby whose replay is paused while writes go on
//! therefore lags more every second, and catches up the moment it replays again. One
//! that is behind but has replayed no transaction since it started has no such age: its
//! lag is unknown, and counted as endless until it catches up.
//!
//! "All it received" is `pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn()`: after a
//! restart the receive position starts at the beginning of a WAL segment, behind what
//! was replayed before, and stays there while the primary writes nothing.

use std::time::Duration;

use super::pools::{Role, Seen};

/// The query: whether the server is in recovery, and its replay lag in seconds.
const QUERY: &str = "SELECT pg_is_in_recovery(), \
     CASE WHEN NOT pg_is_in_recovery() \
            OR pg_last_wal_receive_lsn() IS NULL \
            OR pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() \
          THEN 0 \
          ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 'Infinity') \
     END::float8";

/// Where and as whom to check.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    /// Host (an address).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Role to log in as.
    pub user: String,
    /// Its password, if the server asks for one.
    pub password: Option<String>,
    /// Database to connect to.
    pub dbname: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        write!(
            f,
            "{}@{}:{}/{}",
            self.user, self.host, self.port, self.dbname
        )
    }
}

/// Checks `target` within `timeout`: what it is, or why the check failed, in words.
pub async fn check(target: &Target, timeout: Duration) -> Result<Seen, String> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&target.host)
        .port(target.port)
        .user(&target.user)
        .dbname(&target.dbname)
        .application_name("keel-proxy-check")
        .connect_timeout(timeout);
    if let Some(password) = &target.password {
        config.password(password);
    }
    let attempt = async {
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(describe)?;
        // The connection ends when the client is dropped, at the end of this block.
        let driver = tokio::spawn(connection);
        let row = client.query_one(QUERY, &[]).await.map_err(describe);
        drop(client);
        let _ = driver.await;
        let row = row?;
        let in_recovery: bool = row.try_get(0).map_err(describe)?;
        let lag: f64 = row.try_get(1).map_err(describe)?;
        Ok(Seen {
            role: if in_recovery {
                Role::Standby
            } else {
                Role::Primary
            },
            lag: Duration::try_from_secs_f64(lag.max(0.0)).unwrap_or(Duration::MAX),
        })
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

/// The server's own words when it sent an error (`28P01 password authentication failed
/// for user "keel"`), else the chain of causes (`connection refused`).
fn describe(e: tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} {}", db.code().code(), db.message());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}
