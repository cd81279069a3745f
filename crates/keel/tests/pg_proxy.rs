//! `keel proxy --tcp` in front of real PostgreSQL (a primary and two streaming standbys
//! made by keel-pg): the read-write port reaches only the primary, the read-only port
//! spreads over the standbys and never reaches the primary while one is usable; a standby
//! held back beyond max_lag leaves the read pool and returns; a standby killed with kill
//! -9 costs no connection and comes back when restarted; a standby promoted beside the
//! primary has its read sessions closed and leaves the read-write port to no one;
//! garbage on a port, a wrong password in the check and a bad [[tcp]] section are each a
//! clear error.

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use support::pg::PgCluster;
use support::*;

/// Who answers `n` new connections on `port`: counts by server, and the failures.
fn spread(pg: &PgCluster, port: u16, n: usize) -> (BTreeMap<String, usize>, Vec<String>) {
    let mut counts = BTreeMap::new();
    let mut failures = Vec::new();
    for _ in 0..n {
        match pg.who_answers(port) {
            Ok(name) => *counts.entry(name).or_insert(0) += 1,
            Err(e) => failures.push(e),
        }
    }
    (counts, failures)
}

/// The proxy's view of its TCP pool's server `name`.
fn server_state(admin: &str, name: &str) -> serde_json::Value {
    let (_, v) = get_json(&format!("{admin}/v1/tcp"));
    v["pools"][0]["servers"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == name).cloned())
        .unwrap_or_default()
}

#[test]
fn the_tcp_ports_route_by_role_and_lag_and_survive_a_standby_killed() {
    let dir = tempdir();
    let mut pg = PgCluster::start(dir.path());
    let (proxy, admin, rw, ro) = pg.start_proxy(&pg.setup.password_file(), &[]);
    let all_up = wait_until(Duration::from_secs(15), || {
        ["pg1", "pg2", "pg3"]
            .iter()
            .all(|n| server_state(&admin, n)["up"] == true)
    });
    assert!(
        all_up,
        "the checks never found all three\n{}",
        proxy.log_report()
    );
    assert_eq!(server_state(&admin, "pg1")["role"], "primary");
    assert_eq!(server_state(&admin, "pg2")["role"], "standby");

    // Writes: the primary only. Reads: both standbys, evenly, never the primary.
    let (writes, failed) = spread(&pg, rw, 10);
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(writes.get("pg1"), Some(&10), "{writes:?}");
    let (reads, failed) = spread(&pg, ro, 40);
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(
        reads.get("pg1"),
        None,
        "a read reached the primary: {reads:?}"
    );
    for standby in ["pg2", "pg3"] {
        let n = reads.get(standby).copied().unwrap_or(0);
        assert!(n >= 12, "{standby} took {n} of 40 reads: {reads:?}");
    }
    let (_, metrics) = get_text(&format!("{admin}/metrics"));
    assert!(
        metrics.contains(
            "keel_proxy_tcp_sessions_total{pool=\"postgres\",server=\"pg1\",port=\"read_write\"} 10"
        ),
        "{metrics}"
    );

    // Garbage on a port: an HTTP request is closed on (PostgreSQL logs "invalid length
    // of startup packet"); a startup packet of an unknown protocol gets PostgreSQL's own
    // FATAL error. Neither hangs, and the port serves the next client.
    let mut garbage = TcpStream::connect(("127.0.0.1", ro)).expect("connect");
    garbage
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut answer = Vec::new();
    garbage.read_to_end(&mut answer).expect("closed, not hung");
    let mut bogus = TcpStream::connect(("127.0.0.1", rw)).expect("connect");
    bogus
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    bogus
        .write_all(&[0, 0, 0, 8, 0x12, 0x34, 0x56, 0x78])
        .expect("write");
    let mut answer = Vec::new();
    bogus.read_to_end(&mut answer).expect("closed, not hung");
    let text = String::from_utf8_lossy(&answer);
    assert!(
        answer.first() == Some(&b'E') && text.contains("unsupported frontend protocol"),
        "a bogus startup got {text:?}"
    );
    assert_eq!(
        pg.who_answers(ro).map(|_| ()),
        Ok(()),
        "the port serves on after garbage"
    );

    // pg2's replay held back while the primary writes: it leaves the read pool, and
    // comes back once it replays again.
    pg.exec(0, "CREATE TABLE t (v int); INSERT INTO t VALUES (0)");
    assert!(wait_until(Duration::from_secs(10), || pg
        .query_one(ro, "SELECT count(*)::text FROM t")
        .is_ok()));
    pg.exec(1, "SELECT pg_wal_replay_pause()");
    let left = wait_until(Duration::from_secs(20), || {
        pg.exec(0, "INSERT INTO t VALUES (1)");
        server_state(&admin, "pg2")["in_read_only"] == false
    });
    assert!(left, "pg2 never left the read pool\n{}", proxy.log_report());
    assert!(
        server_state(&admin, "pg2")["lag_seconds"]
            .as_f64()
            .unwrap_or(0.0)
            > 1.0
    );
    let (reads, failed) = spread(&pg, ro, 10);
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(
        reads.get("pg3"),
        Some(&10),
        "the lagging standby still read: {reads:?}"
    );
    pg.exec(1, "SELECT pg_wal_replay_resume()");
    assert!(
        wait_until(
            Duration::from_secs(20),
            || server_state(&admin, "pg2")["in_read_only"] == true
        ),
        "pg2 never came back\n{}",
        proxy.log_report()
    );
    assert!(
        proxy.log_text().contains("pg2 caught up"),
        "{}",
        proxy.log_report()
    );

    // pg3 killed with kill -9: not one connection fails, before the checks see it or
    // after; restarted, it is back in the pool.
    pg.kill9(2);
    let (reads, failed) = spread(&pg, ro, 20);
    assert!(
        failed.is_empty(),
        "connections failed after kill -9: {failed:?}"
    );
    assert_eq!(reads.get("pg2"), Some(&20), "{reads:?}");
    assert!(
        wait_until(
            Duration::from_secs(10),
            || server_state(&admin, "pg3")["up"] == false
        ),
        "pg3 never went down"
    );
    pg.start_server(2);
    assert!(
        wait_until(
            Duration::from_secs(15),
            || server_state(&admin, "pg3")["in_read_only"] == true
        ),
        "pg3 never came back\n{}",
        proxy.log_report()
    );
    let (reads, failed) = spread(&pg, ro, 20);
    assert!(failed.is_empty(), "{failed:?}");
    assert!(reads.get("pg3").copied().unwrap_or(0) >= 6, "{reads:?}");

    // pg3 promoted beside pg1 (two primaries, as after a failover nobody finished): its
    // read-only sessions are closed, the read-write port takes no one (a write to
    // either could be lost), and the reads go on through pg2.
    let held = (0..10)
        .map(|_| pg.hold(ro))
        .find(|session| pg.who_answers_on(session).as_deref() == Ok("pg3"))
        .expect("a read-only session on pg3 within ten");
    pg.exec(2, "SELECT pg_promote()");
    assert!(
        wait_until(
            Duration::from_secs(15),
            || server_state(&admin, "pg3")["role"] == "primary"
        ),
        "the proxy never saw pg3 promoted\n{}",
        proxy.log_report()
    );
    assert!(
        pg.who_answers_on(&held).is_err(),
        "a read-only session on the promoted pg3 was left open"
    );
    assert!(
        proxy
            .log_text()
            .contains("pg3 was a standby and is now the primary"),
        "{}",
        proxy.log_report()
    );
    let refused = pg
        .who_answers(rw)
        .expect_err("two primaries take no writes");
    assert!(
        refused.contains("pg1: the primary") && refused.contains("pg3: the primary"),
        "{refused}"
    );
    let (reads, failed) = spread(&pg, ro, 6);
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(reads.get("pg2"), Some(&6), "{reads:?}");
}

#[test]
fn a_wrong_password_in_the_check_and_a_bad_section_are_named() {
    let dir = tempdir();
    let pg = PgCluster::start(dir.path());
    let wrong = dir.path().join("wrong.password");
    std::fs::write(&wrong, "not-the-password\n").expect("write");
    let (proxy, admin, rw, _) = pg.start_proxy(&wrong, &[]);
    let named = wait_until(Duration::from_secs(10), || {
        server_state(&admin, "pg1")["last_check_error"]
            .as_str()
            .is_some_and(|e| e.contains("28P01") && e.contains("password authentication failed"))
    });
    assert!(named, "{}", proxy.log_report());
    // No server passed a check: a client is told so, in PostgreSQL's words, with why.
    let refused = pg.who_answers(rw).expect_err("no server is usable");
    assert!(
        refused.contains("57P03") && refused.contains("pg1: down: 28P01"),
        "{refused}"
    );
    let (status, _) = get_json(&format!("{admin}/health"));
    assert_eq!(status, StatusCode::OK, "the proxy serves on");

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[tcp]]\nmax_lag = \"-1s\"\n[[tcp.server]]\naddr = \"127.0.0.1:5433\"\n",
    )
    .expect("write");
    let out = run_keel(&["proxy", "--config", &bad.display().to_string()]);
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("max_lag"), "{out}");
    let out = run_keel(&["proxy", "--tcp", "pg1=localhost:5433"]);
    assert!(!out.success(), "{out}");
    assert!(
        out.stderr
            .contains("--tcp (server[0].addr): \"localhost:5433\" is not IP:PORT"),
        "{out}"
    );
}
