//! Real PostgreSQL for the tests: a primary and two streaming standbys made by keel-pg in
//! a temporary directory, on free ports, stopped when dropped; and the few queries the
//! tests make, on a runtime of their own so that the blocking HTTP helpers stay usable.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use keel_pg::{Running, Server, Setup};

/// How long a server may take to start.
const READY: Duration = Duration::from_secs(30);

/// pg1 (primary), pg2 and pg3 (standbys), running.
pub struct PgCluster {
    pub setup: Setup,
    pub servers: Vec<Server>,
    pub running: Vec<Option<Running>>,
    rt: tokio::runtime::Runtime,
}

impl PgCluster {
    /// Made in `dir` (which the postgres account must be able to traverse) on free ports.
    pub fn start(dir: &Path) -> PgCluster {
        let mut cluster = PgCluster::unmade(dir);
        keel_pg::cluster::ensure(
            &cluster.setup,
            &cluster.servers[0],
            &cluster.servers[1..],
            &mut |_| {},
        )
        .expect("a primary and two standbys");
        for i in 0..3 {
            cluster.start_server(i);
        }
        cluster
    }

    /// The same three servers' places in `dir`, on free ports, with nothing made or
    /// started: for whatever makes them (keel keeper).
    pub fn unmade(dir: &Path) -> PgCluster {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).expect("chmod");
        let setup =
            Setup::prepare(dir).expect("PostgreSQL is installed (scripts/test installs it)");
        let ports = super::free_ports(3);
        let servers: Vec<Server> = (1..=3)
            .map(|k| Server::new(&format!("pg{k}"), dir, ports[k - 1]))
            .collect();
        PgCluster {
            setup,
            servers,
            running: vec![None, None, None],
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime"),
        }
    }

    /// Starts server `i` (again) and waits until it accepts connections.
    pub fn start_server(&mut self, i: usize) {
        let mut running = Running::start(&self.setup, &self.servers[i]).expect("start postgres");
        running.wait_ready(READY).expect("postgres ready");
        self.running[i] = Some(running);
    }

    /// kill -9 server `i`.
    pub fn kill9(&mut self, i: usize) {
        if let Some(running) = self.running[i].take() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(running.pid()).expect("pid"));
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            // Dropping it now reaps it.
            drop(running);
        }
    }

    /// The password of the keel role.
    pub fn password(&self) -> String {
        self.setup.password().to_owned()
    }

    /// `host:port` of server `i`.
    pub fn addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.servers[i].port)
    }

    /// Runs `statements` on server `i`, directly.
    pub fn exec(&self, i: usize, statements: &str) {
        let conninfo = self.setup.conninfo(&self.servers[i]);
        self.rt.block_on(async {
            let (client, connection) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
                .await
                .expect("connect");
            tokio::spawn(connection);
            client.batch_execute(statements).await.expect(statements);
        });
    }

    /// How to connect to 127.0.0.1:`port` as keel.
    fn config(&self, port: u16) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(port)
            .user(keel_pg::USER)
            .password(self.password())
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(5));
        config
    }

    /// Connects to 127.0.0.1:`port` (a proxy's) as keel and asks which server answered
    /// (its `cluster_name`), or says why it could not.
    pub fn who_answers(&self, port: u16) -> Result<String, String> {
        self.query_one(port, "SELECT current_setting('cluster_name')")
    }

    /// Connects to 127.0.0.1:`port` and runs `query`, whose first column is text.
    pub fn query_one(&self, port: u16, query: &str) -> Result<String, String> {
        let config = self.config(port);
        self.rt.block_on(async move {
            let attempt = async {
                let (client, connection) = config
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map_err(|e| describe(&e))?;
                tokio::spawn(connection);
                let row = client
                    .query_one(query, &[])
                    .await
                    .map_err(|e| describe(&e))?;
                row.try_get::<_, String>(0).map_err(|e| describe(&e))
            };
            tokio::time::timeout(Duration::from_secs(10), attempt)
                .await
                .unwrap_or_else(|_| Err("no answer within 10 s".to_owned()))
        })
    }
}

impl PgCluster {
    /// A session opened on 127.0.0.1:`port` and kept open, for a test that watches what
    /// happens to it.
    pub fn hold(&self, port: u16) -> tokio_postgres::Client {
        let config = self.config(port);
        self.rt.block_on(async move {
            let (client, connection) = config
                .connect(tokio_postgres::NoTls)
                .await
                .expect("connect");
            tokio::spawn(connection);
            client
        })
    }

    /// Which server answers on a held session, or why it did not.
    pub fn who_answers_on(&self, client: &tokio_postgres::Client) -> Result<String, String> {
        self.rt.block_on(async {
            let row = tokio::time::timeout(
                Duration::from_secs(10),
                client.query_one("SELECT current_setting('cluster_name')", &[]),
            )
            .await
            .map_err(|_| "no answer within 10 s".to_owned())?
            .map_err(|e| describe(&e))?;
            row.try_get::<_, String>(0).map_err(|e| describe(&e))
        })
    }
}

/// An error with the server's message when it sent one.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}", db.code().code(), db.message()),
        None => match std::error::Error::source(e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    }
}
