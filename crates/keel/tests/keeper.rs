//! `keel keeper`: real PostgreSQL servers made nodes of the monitor. The monitor picks
//! the primary, the keeper promotes it, standbys follow it, COMMITs wait for a sync
//! standby, and a primary whose postmaster is killed with `kill -9` is replaced by a
//! standby holding every acknowledged COMMIT; started again, the old primary is rewound
//! with `pg_rewind` and becomes a promotable standby. The keepers start on empty
//! directories: the first makes the cluster, the others copy it.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::pg::PgCluster;
use support::{KeelProcess, TestMonitor, free_ports, tempdir, wait_until};

/// `keel keeper` for server `i` of `cluster`, under `monitor`.
fn keeper(cluster: &PgCluster, i: usize, port: u16, monitor: &TestMonitor) -> KeelProcess {
    let args = keeper_args(cluster, i, port, monitor);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    KeelProcess::spawn(&format!("keeper-pg{}", i + 1), &refs)
}

/// The command line of [`keeper`].
fn keeper_args(cluster: &PgCluster, i: usize, port: u16, monitor: &TestMonitor) -> Vec<String> {
    let name = format!("pg{}", i + 1);
    let listen = format!("127.0.0.1:{port}");
    let base = cluster.servers[i]
        .dir
        .parent()
        .expect("the servers' base directory")
        .display()
        .to_string();
    let pg_port = cluster.servers[i].port.to_string();
    let mut args = vec![
        "keeper",
        "--id",
        &name,
        "--listen",
        &listen,
        "--monitor",
        &monitor.url,
        "--data-dir",
        &base,
        "--pg-port",
        &pg_port,
    ]
    .into_iter()
    .map(str::to_owned)
    .collect::<Vec<_>>();
    args.extend(monitor.member_flags());
    if i == 0 {
        // Only pg1 may make a new cluster, and only while the monitor never had a primary.
        args.push("--init".to_owned());
    }
    args
}

/// The node `name` in the monitor's view.
fn node(view: &serde_json::Value, name: &str) -> serde_json::Value {
    view["nodes"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["node"] == name).cloned())
        .unwrap_or_default()
}

/// The index of server `name` (`"pg2"` → 1).
fn index_of(name: &serde_json::Value) -> usize {
    name.as_str()
        .and_then(|n| n.strip_prefix("pg"))
        .and_then(|k| k.parse::<usize>().ok())
        .and_then(|k| k.checked_sub(1))
        .unwrap_or_else(|| panic!("not a server's name: {name}"))
}

/// Starts a thread that commits rows `first..` one at a time on server `i` until a COMMIT
/// fails or takes 5 s; the ids it was told were committed.
fn write_until_gone(
    cluster: &PgCluster,
    i: usize,
    first: i32,
) -> (std::thread::JoinHandle<()>, Arc<Mutex<Vec<i32>>>) {
    let acked = Arc::new(Mutex::new(Vec::<i32>::new()));
    let conninfo = cluster.setup.conninfo(&cluster.servers[i]);
    let writer = {
        let acked = acked.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let (client, connection) =
                    tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
                        .await
                        .expect("connect to the primary");
                tokio::spawn(connection);
                for id in first..i32::MAX {
                    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&id];
                    let insert = client.execute("INSERT INTO w VALUES ($1)", &params);
                    match tokio::time::timeout(Duration::from_secs(5), insert).await {
                        Ok(Ok(_)) => acked.lock().expect("acked").push(id),
                        _ => break,
                    }
                }
            });
        })
    };
    (writer, acked)
}

/// The postmaster's pid, from its `postmaster.pid`.
fn postmaster_pid(cluster: &PgCluster, i: usize) -> i32 {
    let text = std::fs::read_to_string(cluster.servers[i].dir.join("postmaster.pid"))
        .expect("postmaster.pid");
    text.lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("a pid on postmaster.pid's first line")
}

#[test]
fn five_kills_of_the_primarys_postmaster_each_promote_a_standby_lose_no_commit_and_rejoin_by_rewind()
 {
    let dir = tempdir();
    // Nothing made: pg1's keeper (--init) makes a new cluster, the others copy it.
    let cluster = PgCluster::unmade(dir.path());
    let monitor = TestMonitor::start_closed(&dir.path().join("monitor"), &[]);
    let ports = free_ports(3);
    let mut keepers: Vec<KeelProcess> = Vec::new();
    keepers.push(keeper(&cluster, 0, ports[0], &monitor));
    // pg1 registers first: the monitor makes it primary and its keeper promotes it.
    let elected = wait_until(Duration::from_secs(30), || {
        let view = monitor.cluster();
        view["primary"]["node"] == "pg1" && node(&view, "pg1")["healthy"] == true
    });
    assert!(elected, "pg1 never primary: {}", monitor.cluster());
    keepers.push(keeper(&cluster, 1, ports[1], &monitor));
    keepers.push(keeper(&cluster, 2, ports[2], &monitor));
    let ready = wait_until(Duration::from_secs(30), || {
        let view = monitor.cluster();
        ["pg2", "pg3"]
            .iter()
            .all(|n| node(&view, n)["promotable"] == true && node(&view, n)["sync"] == true)
    });
    assert!(
        ready,
        "the standbys never promotable: {}",
        monitor.cluster()
    );
    assert_eq!(
        cluster.query_one(cluster.servers[0].port, "SELECT pg_is_in_recovery()::text"),
        Ok("false".into())
    );
    // The primary's COMMITs wait for a standby of the monitor's sync set.
    let synchronous = wait_until(Duration::from_secs(10), || {
        cluster
            .query_one(cluster.servers[0].port, "SHOW synchronous_standby_names")
            .is_ok_and(|s| s == r#"ANY 1 ("pg2", "pg3")"#)
    });
    assert!(
        synchronous,
        "synchronous_standby_names: {:?}",
        cluster.query_one(cluster.servers[0].port, "SHOW synchronous_standby_names")
    );

    cluster.exec(0, "CREATE TABLE w (id int primary key)");
    let mut next_id = 0;
    let mut lost_total = 0;
    for cycle in 1..=5 {
        let view = monitor.cluster();
        let old = index_of(&view["primary"]["node"]);
        // A writer commits rows one at a time on the primary until it is gone.
        let (writer, acked) = write_until_gone(&cluster, old, next_id);
        std::thread::sleep(Duration::from_millis(300));
        let killed = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(postmaster_pid(&cluster, old)),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill -9 the postmaster");
        let old_name = format!("pg{}", old + 1);
        let promoted = wait_until(Duration::from_secs(15), || {
            let view = monitor.cluster();
            view["primary"]["node"].is_string()
                && view["primary"]["node"] != old_name.as_str()
                && view["failover_in_progress"] == false
        });
        let took = killed.elapsed();
        let view = monitor.cluster();
        assert!(promoted, "cycle {cycle}: no standby promoted: {view}");
        let new = index_of(&view["primary"]["node"]);
        eprintln!(
            "cycle {cycle}: pg{} promoted {took:?} after kill -9 of pg{}",
            new + 1,
            old + 1
        );
        writer.join().expect("writer");
        let acked = acked.lock().expect("acked").clone();
        assert!(
            acked.len() > 5,
            "cycle {cycle}: the writer committed only {} rows",
            acked.len()
        );
        next_id = acked.last().copied().unwrap_or(next_id) + 1_000;

        // The keeper of the dead server ended with it.
        let ended = keepers[old].wait_timeout(Duration::from_secs(10));
        assert!(
            ended.is_some_and(|s| !s.success()),
            "cycle {cycle}: pg{}'s keeper outlived its server: {ended:?}",
            old + 1
        );
        // The new primary is out of recovery and holds every acknowledged COMMIT.
        let port = cluster.servers[new].port;
        let out_of_recovery = wait_until(Duration::from_secs(10), || {
            cluster.query_one(port, "SELECT pg_is_in_recovery()::text") == Ok("false".into())
        });
        assert!(out_of_recovery, "cycle {cycle}: {view}");
        let present = cluster
            .query_one(
                port,
                &format!(
                    "SELECT count(*)::text FROM w WHERE id IN ({})",
                    acked
                        .iter()
                        .map(i32::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            )
            .expect("count on the new primary");
        let lost = acked.len() - present.parse::<usize>().expect("a count");
        lost_total += lost;
        assert_eq!(lost, 0, "cycle {cycle}: acknowledged COMMITs lost");
        // The third server follows the new primary.
        let other = 3 - old - new;
        let follows = wait_until(Duration::from_secs(15), || {
            cluster
                .query_one(
                    port,
                    "SELECT string_agg(application_name, ',') FROM pg_stat_replication",
                )
                .is_ok_and(|names| names.contains(&format!("pg{}", other + 1)))
        });
        assert!(
            follows,
            "cycle {cycle}: pg{} does not stream from the new primary",
            other + 1
        );

        // The dead server's keeper started again: the former primary is rewound to the
        // new one, follows it, and becomes promotable again.
        let args = keeper_args(&cluster, old, ports[old], &monitor);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        keepers[old].respawn(&refs);
        let rejoined = wait_until(Duration::from_secs(60), || {
            let view = monitor.cluster();
            let back = node(&view, &old_name);
            back["role"] == "standby" && back["healthy"] == true && back["promotable"] == true
        });
        assert!(
            rejoined,
            "cycle {cycle}: {old_name} never promotable again: {}\n{}",
            monitor.cluster(),
            keepers[old].log_report()
        );
        assert!(
            keepers[old]
                .log_text()
                .contains("rewinding to the primary with pg_rewind"),
            "{}",
            keepers[old].log_report()
        );
        assert_eq!(
            cluster.query_one(
                cluster.servers[old].port,
                "SELECT pg_is_in_recovery()::text || ' ' || current_setting('cluster_name')"
            ),
            Ok(format!("true {old_name}"))
        );
        let on_new = cluster
            .query_one(port, "SELECT count(*)::text FROM w")
            .expect("count on the new primary");
        let caught_up = wait_until(Duration::from_secs(10), || {
            cluster.query_one(cluster.servers[old].port, "SELECT count(*)::text FROM w")
                == Ok(on_new.clone())
        });
        assert!(
            caught_up,
            "cycle {cycle}: {old_name} does not hold the new primary's {on_new} rows"
        );
    }
    assert_eq!(lost_total, 0);
    drop(keepers);
}
