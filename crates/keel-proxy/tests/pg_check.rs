//! The TCP pools' check against real PostgreSQL (a primary and a streaming standby set up
//! by keel-pg): it tells the primary from the standby, sees a standby whose replay is
//! paused fall behind and catch up, names a wrong password, and fails fast on a closed
//! port. The pools' decisions, fed by these checks, take the lagging standby out of the
//! read pool and put it back.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use keel_pg::{Running, Server, Setup};
use keel_proxy::tcp::check::{Target, check};
use keel_proxy::tcp::pools::{Change, Policy, Pools, Port, Role};

const TIMEOUT: Duration = Duration::from_secs(2);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn target(port: u16, password: &str) -> Target {
    Target {
        host: "127.0.0.1".into(),
        port,
        user: keel_pg::USER.into(),
        password: Some(password.into()),
        dbname: "postgres".into(),
    }
}

async fn sql(setup: &Setup, server: &Server, statements: &str) {
    let (client, connection) =
        tokio_postgres::connect(&setup.conninfo(server), tokio_postgres::NoTls)
            .await
            .expect("connect");
    tokio::spawn(connection);
    client.batch_execute(statements).await.expect(statements);
}

/// Whether table `t` exists on `server` yet.
async fn replayed(setup: &Setup, server: &Server) -> bool {
    let Ok((client, connection)) =
        tokio_postgres::connect(&setup.conninfo(server), tokio_postgres::NoTls).await
    else {
        return false;
    };
    tokio::spawn(connection);
    client
        .query_one("SELECT to_regclass('t') IS NOT NULL", &[])
        .await
        .is_ok_and(|row| row.get::<_, bool>(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_check_tells_roles_apart_sees_a_paused_standby_fall_behind_and_names_failures() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod");
    let setup = Setup::prepare(dir.path()).expect("PostgreSQL is installed");
    let pg1 = Server::new("pg1", dir.path(), free_port());
    let pg2 = Server::new("pg2", dir.path(), free_port());
    setup.init_primary(&pg1).expect("initdb");
    let mut p1 = Running::start(&setup, &pg1).expect("start pg1");
    p1.wait_ready(Duration::from_secs(30)).expect("pg1 up");
    setup.clone_standby(&pg2, &pg1).expect("pg_basebackup");
    let mut p2 = Running::start(&setup, &pg2).expect("start pg2");
    p2.wait_ready(Duration::from_secs(30)).expect("pg2 up");

    let password = setup.password().to_owned();
    let primary = check(&target(pg1.port, &password), TIMEOUT)
        .await
        .expect("pg1");
    assert_eq!(primary.role, Role::Primary);
    assert_eq!(primary.lag, Duration::ZERO);
    // A standby takes connections before it is consistent, and refuses them with
    // "the database system is starting up" until it is; what the check must say of it
    // is asked once it takes queries.
    let mut standby = check(&target(pg2.port, &password), TIMEOUT).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while let Err(e) = &standby
        && e.contains("57P03")
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
        standby = check(&target(pg2.port, &password), TIMEOUT).await;
    }
    let standby = standby.expect("pg2");
    assert_eq!(standby.role, Role::Standby);

    let mut pools = Pools::new(
        2,
        Policy {
            fall: 2,
            rise: 2,
            max_lag: Duration::from_secs(1),
        },
    );
    pools.observe(0, Ok(primary));
    pools.observe(1, Ok(standby));
    assert_eq!(pools.eligible(Port::ReadWrite), vec![0]);
    assert_eq!(pools.eligible(Port::ReadOnly), vec![1]);

    // Replay paused on the standby while the primary takes writes: it falls behind,
    // leaves the read pool, and comes back once it replays again.
    // A transaction replayed first, so that the standby's lag is a time, not unknown.
    sql(&setup, &pg1, "CREATE TABLE t (v int)").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !replayed(&setup, &pg2).await {
        assert!(
            Instant::now() < deadline,
            "the table never reached the standby"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sql(&setup, &pg2, "SELECT pg_wal_replay_pause()").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut lagging = None;
    while lagging.is_none() {
        assert!(Instant::now() < deadline, "the paused standby never lagged");
        sql(&setup, &pg1, "INSERT INTO t VALUES (1)").await;
        let seen = check(&target(pg2.port, &password), TIMEOUT)
            .await
            .expect("pg2");
        lagging = pools
            .observe(1, Ok(seen))
            .into_iter()
            .find(|c| matches!(c, Change::Lagging(_)));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let Some(Change::Lagging(lag)) = lagging else {
        unreachable!()
    };
    assert!(
        lag > Duration::from_secs(1) && lag < Duration::from_secs(30),
        "a lag measured in time: {lag:?}"
    );
    assert_eq!(
        pools.eligible(Port::ReadOnly),
        vec![0],
        "reads fall back to the primary"
    );
    sql(&setup, &pg2, "SELECT pg_wal_replay_resume()").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen = check(&target(pg2.port, &password), TIMEOUT)
            .await
            .expect("pg2");
        if pools.observe(1, Ok(seen)).contains(&Change::CaughtUp) {
            break;
        }
        assert!(Instant::now() < deadline, "the standby never caught up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pools.eligible(Port::ReadOnly), vec![1]);

    // Failures say what failed.
    let wrong = check(&target(pg1.port, "wrong"), TIMEOUT)
        .await
        .expect_err("wrong password");
    assert!(
        wrong.contains("28P01") && wrong.contains("password authentication failed"),
        "{wrong}"
    );
    let closed = check(&target(free_port(), &password), TIMEOUT)
        .await
        .expect_err("no server");
    assert!(closed.to_lowercase().contains("refused"), "{closed}");
}
