//! Real PostgreSQL, set up by keel-pg: a primary initialised with the keel role and a
//! password, a standby cloned from it, a row written on the primary read back on the
//! standby, the wrong password refused, and a second setup on the same directory finding
//! everything as it was.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use keel_pg::{Running, Server, Setup};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A base directory the postgres account can reach when the tests run as root.
fn base() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod");
    dir
}

async fn connect(conninfo: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Connects, retrying while the server starts (30 s at most).
async fn connect_when_up(conninfo: &str, log: &std::path::Path) -> tokio_postgres::Client {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match connect(conninfo).await {
            Ok(c) => return c,
            Err(e) if Instant::now() > deadline => panic!(
                "no connection: {e}\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            ),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_and_a_standby_replicate_and_only_the_password_lets_in() {
    let dir = base();
    let setup = Setup::prepare(dir.path()).expect("PostgreSQL is installed");
    let pg1 = Server::new("pg1", dir.path(), free_port());
    let pg2 = Server::new("pg2", dir.path(), free_port());
    assert!(!pg1.is_initialised());
    setup.init_primary(&pg1).expect("initdb");
    assert!(pg1.is_initialised() && !pg1.is_standby());
    // Run as root, the servers belong to the postgres account, and only to it.
    if let Some((uid, _)) = setup.owner().ids() {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&pg1.dir).expect("data dir");
        assert_eq!(meta.uid(), uid.as_raw());
        assert_eq!(meta.mode() & 0o777, 0o700);
    }
    let mut p1 = Running::start(&setup, &pg1).expect("start pg1");
    p1.wait_ready(Duration::from_secs(30)).expect("pg1 up");
    let primary = connect_when_up(&setup.conninfo(&pg1), &pg1.dir.with_extension("log")).await;

    setup.clone_standby(&pg2, &pg1).expect("pg_basebackup");
    assert!(pg2.is_standby());
    let mut p2 = Running::start(&setup, &pg2).expect("start pg2");
    p2.wait_ready(Duration::from_secs(30)).expect("pg2 up");
    let standby = connect_when_up(&setup.conninfo(&pg2), &pg2.dir.with_extension("log")).await;

    // Each knows what it is and its name.
    let row = primary
        .query_one(
            "SELECT pg_is_in_recovery(), current_setting('cluster_name')",
            &[],
        )
        .await
        .expect("query");
    assert_eq!(
        (row.get::<_, bool>(0), row.get::<_, String>(1)),
        (false, "pg1".into())
    );
    let row = standby
        .query_one(
            "SELECT pg_is_in_recovery(), current_setting('cluster_name')",
            &[],
        )
        .await
        .expect("query");
    assert_eq!(
        (row.get::<_, bool>(0), row.get::<_, String>(1)),
        (true, "pg2".into())
    );

    // A write on the primary reaches the standby; the standby refuses writes.
    primary
        .batch_execute("CREATE TABLE t (v text); INSERT INTO t VALUES ('hello')")
        .await
        .expect("write on the primary");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = standby.query_opt("SELECT v FROM t", &[]).await;
        if let Ok(Some(row)) = seen {
            assert_eq!(row.get::<_, String>(0), "hello");
            break;
        }
        assert!(Instant::now() < deadline, "never replicated: {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = standby
        .batch_execute("INSERT INTO t VALUES ('no')")
        .await
        .expect_err("a standby is read-only");
    let message = refused.as_db_error().map(|e| e.message().to_owned());
    assert!(
        message
            .as_deref()
            .is_some_and(|m| m.contains("read-only transaction")),
        "{refused:?}"
    );

    // Only the password lets in.
    let wrong = format!(
        "host=127.0.0.1 port={} user=keel password=wrong dbname=postgres",
        pg1.port
    );
    let err = connect(&wrong)
        .await
        .expect_err("the wrong password is refused");
    assert!(
        format!("{err:?}").contains("password authentication failed"),
        "{err:?}"
    );

    // Set up again on the same directory: the same password, both clusters found.
    let again = Setup::prepare(dir.path()).expect("again");
    assert_eq!(again.password(), setup.password());
    assert!(pg1.is_initialised() && pg2.is_initialised() && pg2.is_standby());
}

/// Polls `observe` on `client` until `holds`, at most 10 s.
async fn observe_until(
    client: &tokio_postgres::Client,
    what: &str,
    holds: impl Fn(&keel_pg::observe::Observed) -> bool,
) -> keel_pg::observe::Observed {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = keel_pg::observe::observe(client).await.expect("observe");
        if holds(&seen) {
            return seen;
        }
        assert!(Instant::now() < deadline, "never {what}: {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keeper_sees_role_position_timeline_and_standbys_and_a_promotion_moves_the_timeline() {
    let dir = base();
    let setup = Setup::prepare(dir.path()).expect("PostgreSQL is installed");
    let pg1 = Server::new("pg1", dir.path(), free_port());
    let pg2 = Server::new("pg2", dir.path(), free_port());
    setup.init_primary(&pg1).expect("initdb");
    let mut p1 = Running::start(&setup, &pg1).expect("start pg1");
    p1.wait_ready(Duration::from_secs(30)).expect("pg1 up");
    let primary = connect_when_up(&setup.conninfo(&pg1), &pg1.dir.with_extension("log")).await;
    setup.clone_standby(&pg2, &pg1).expect("pg_basebackup");
    let mut p2 = Running::start(&setup, &pg2).expect("start pg2");
    p2.wait_ready(Duration::from_secs(30)).expect("pg2 up");
    let standby = connect_when_up(&setup.conninfo(&pg2), &pg2.dir.with_extension("log")).await;

    // The primary: not in recovery, on timeline 1, with pg2 streaming from it.
    let seen = observe_until(&primary, "streaming to pg2", |o| {
        o.replicas.iter().any(|r| r.name == "pg2" && r.streaming())
    })
    .await;
    assert!(!seen.in_recovery && seen.timeline == 1, "{seen:?}");
    assert_eq!(seen.replicas.len(), 1, "{seen:?}");

    // A write moves the primary's position; the standby's follows it, and the primary
    // sees the standby's flush reach it.
    primary
        .batch_execute("CREATE TABLE t (v text); INSERT INTO t VALUES ('kept')")
        .await
        .expect("write");
    let after = keel_pg::observe::observe(&primary).await.expect("observe");
    assert!(after.lsn > seen.lsn, "{seen:?} then {after:?}");
    let replayed = observe_until(&standby, "caught up", |o| o.lsn >= after.lsn).await;
    assert!(replayed.in_recovery && replayed.replicas.is_empty() && replayed.timeline == 1);
    observe_until(&primary, "flushed on pg2", |o| {
        o.replicas
            .iter()
            .any(|r| r.name == "pg2" && r.flushed >= after.lsn)
    })
    .await;

    // Promoted, the standby leaves recovery on a new timeline, with the row.
    let promoted: bool = standby
        .query_one("SELECT pg_promote(true, 30)", &[])
        .await
        .expect("pg_promote")
        .get(0);
    assert!(promoted);
    let seen = observe_until(&standby, "on timeline 2", |o| {
        !o.in_recovery && o.timeline == 2
    })
    .await;
    assert!(seen.lsn >= after.lsn, "{seen:?}");
    let row = standby
        .query_one("SELECT v FROM t", &[])
        .await
        .expect("read");
    assert_eq!(row.get::<_, String>(0), "kept");
}
