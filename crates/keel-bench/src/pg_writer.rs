//! The PostgreSQL writer: one connection, one row per transaction, a new id per attempt.
//!
//! The connection is opened with a multi-host conninfo (every server of the cluster,
//! `target_session_attrs=read-write`), so libpq's rule finds the primary whichever
//! system runs the servers and whoever is primary: the servers are tried in order, a
//! standby (read-only) is skipped, a dead one fails fast on 127.0.0.1. That is how a
//! PostgreSQL application follows a failover without a proxy, and it is the same for
//! every system measured.
//!
//! Every `--interval` the writer makes one attempt: an `INSERT` of the next id (in
//! autocommit, so one COMMIT), or, with no connection, a connection. An error or an
//! answer later than `--timeout` drops the connection; the next tick connects again. A
//! COMMIT counts as acknowledged only when its `INSERT` returned success.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_postgres::config::TargetSessionAttrs;
use tokio_postgres::{Client, Config, NoTls, Statement};

/// The table every system is written to, made fresh by the driver.
pub const TABLE: &str = "keel_bench_writes";

/// How the servers are reached: the same role, password and database on each.
#[derive(Debug, Clone)]
pub struct Servers {
    pub user: String,
    pub password: Option<String>,
    pub dbname: String,
    pub ports: Vec<u16>,
    /// Per connection attempt to one server.
    pub connect_timeout: Duration,
}

impl Servers {
    fn base(&self) -> Config {
        let mut config = Config::new();
        config
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name("keel-writebench")
            .connect_timeout(self.connect_timeout);
        if let Some(password) = &self.password {
            config.password(password);
        }
        config
    }

    /// Every server, the first that takes writes: the writer's connection.
    pub fn read_write(&self) -> Config {
        let mut config = self.base();
        for &port in &self.ports {
            config.host("127.0.0.1").port(port);
        }
        config.target_session_attrs(TargetSessionAttrs::ReadWrite);
        config
    }

    /// Server `i` alone, whatever its role.
    pub fn one(&self, i: usize) -> Config {
        let mut config = self.base();
        config.host("127.0.0.1").port(self.ports[i]);
        config
    }
}

/// Connects with `config` and drives the connection in a task of its own, which ends
/// when the client is dropped or the server goes.
pub async fn connect(config: &Config) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        // Its error is the client's next error; nothing to add here.
        let _ = connection.await;
    });
    Ok(client)
}

/// What the driver watches while the writer runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    pub acked: u64,
    /// Connections opened so far; the one the last acknowledgement came on is `last_on`.
    pub connections: u64,
    pub last_on: u64,
    /// When the last acknowledgement came, since the start of the run.
    pub last_at: Duration,
}

/// One acknowledged COMMIT.
#[derive(Debug, Clone, Copy)]
pub struct Ack {
    /// Since the start of the run.
    pub at: Duration,
    pub id: i64,
}

/// What the writer did.
#[derive(Debug, Default)]
pub struct WriterLog {
    pub acks: Vec<Ack>,
    pub attempts: u64,
    pub failures: u64,
    pub first_error: Option<String>,
}

impl WriterLog {
    fn failed(&mut self, why: String) {
        self.failures += 1;
        self.first_error.get_or_insert(why);
    }
}

/// Writes until `stop` turns true. `started` is the run's clock, shared with the driver.
pub async fn write(
    servers: Servers,
    interval: Duration,
    timeout: Duration,
    started: Instant,
    progress: watch::Sender<Progress>,
    mut stop: watch::Receiver<bool>,
) -> WriterLog {
    let config = servers.read_write();
    let insert_sql = format!("INSERT INTO {TABLE} (id) VALUES ($1)");
    let mut log = WriterLog::default();
    let mut ticker = tokio::time::interval(interval);
    // After a stall, carry on at the pace rather than in a burst.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut connection: Option<(Client, Statement)> = None;
    let mut next_id: i64 = 1;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => break,
        }
        if *stop.borrow() {
            break;
        }
        log.attempts += 1;
        let Some((client, insert)) = &connection else {
            let opened = tokio::time::timeout(timeout, async {
                let client = connect(&config).await?;
                let insert = client.prepare(&insert_sql).await?;
                Ok::<_, tokio_postgres::Error>((client, insert))
            })
            .await;
            match opened {
                Ok(Ok(opened)) => {
                    connection = Some(opened);
                    progress.send_modify(|p| p.connections += 1);
                }
                Ok(Err(err)) => log.failed(format!("connecting: {err}")),
                Err(_) => log.failed(format!("connecting took over {timeout:?}")),
            }
            continue;
        };
        let id = next_id;
        next_id += 1;
        match tokio::time::timeout(timeout, client.execute(insert, &[&id])).await {
            Ok(Ok(_)) => {
                let at = started.elapsed();
                log.acks.push(Ack { at, id });
                progress.send_modify(|p| {
                    p.acked += 1;
                    p.last_on = p.connections;
                    p.last_at = at;
                });
            }
            Ok(Err(err)) => {
                log.failed(format!("INSERT: {err}"));
                connection = None;
            }
            Err(_) => {
                // The answer may still come on this connection; a new one starts clean.
                log.failed(format!("INSERT: no answer within {timeout:?}"));
                connection = None;
            }
        }
    }
    log
}
