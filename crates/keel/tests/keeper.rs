//! `keel keeper`: real PostgreSQL servers made nodes of the monitor. The monitor picks
//! the primary, the keeper promotes it, standbys follow it, COMMITs wait for a sync
//! standby, and a primary whose postmaster is killed with `kill -9` is replaced by a
//! standby holding every acknowledged COMMIT; started again, the old primary is rewound
//! with `pg_rewind` and becomes a promotable standby. The keepers start on empty
//! directories: the first makes the cluster, the others copy it.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use support::pg::PgCluster;
use support::{KeelProcess, TestMonitor, free_ports, tempdir, wait_until};

/// `keel keeper` for server `i` of `cluster`, under `monitor`, with the variables `env`.
fn keeper(
    cluster: &PgCluster,
    i: usize,
    port: u16,
    monitor: &TestMonitor,
    env: &[(String, String)],
) -> KeelProcess {
    let args = keeper_args(cluster, i, port, monitor);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    KeelProcess::spawn_env(&format!("keeper-pg{}", i + 1), &refs, env)
}

/// Keepers for the first `count` servers of `cluster` on `ports`, each with its own
/// variables from `env`: pg1's first, which makes the cluster and which the monitor makes
/// primary, then the others, which copy it; returned once every standby is in the sync
/// set and promotable, and the primary's COMMITs wait for one of them.
fn start_group(
    cluster: &PgCluster,
    monitor: &TestMonitor,
    ports: &[u16],
    count: usize,
    env: &dyn Fn(usize) -> Vec<(String, String)>,
) -> Vec<KeelProcess> {
    let mut keepers = vec![keeper(cluster, 0, ports[0], monitor, &env(0))];
    let elected = wait_until(Duration::from_secs(30), || {
        let view = monitor.cluster();
        view["primary"]["node"] == "pg1" && node(&view, "pg1")["healthy"] == true
    });
    assert!(elected, "pg1 never primary: {}", monitor.cluster());
    for (i, port) in ports.iter().enumerate().take(count).skip(1) {
        keepers.push(keeper(cluster, i, *port, monitor, &env(i)));
    }
    let standbys: Vec<String> = (2..=count).map(|k| format!("pg{k}")).collect();
    let ready = wait_until(Duration::from_secs(30), || {
        let view = monitor.cluster();
        standbys
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
    // ANY 1 of every standby, in whatever order.
    let expected: std::collections::BTreeSet<String> =
        standbys.iter().map(|n| format!("\"{n}\"")).collect();
    let synchronous = wait_until(Duration::from_secs(10), || {
        cluster
            .query_one(cluster.servers[0].port, "SHOW synchronous_standby_names")
            .is_ok_and(|s| {
                s.strip_prefix("ANY 1 (")
                    .and_then(|s| s.strip_suffix(')'))
                    .is_some_and(|names| {
                        names
                            .split(", ")
                            .map(str::to_owned)
                            .collect::<std::collections::BTreeSet<_>>()
                            == expected
                    })
            })
    });
    assert!(
        synchronous,
        "synchronous_standby_names: {:?}, not ANY 1 of {expected:?}",
        cluster.query_one(cluster.servers[0].port, "SHOW synchronous_standby_names")
    );
    keepers
}

/// The end of server `i`'s own log.
fn server_log(cluster: &PgCluster, i: usize) -> String {
    let path = cluster.servers[i].dir.with_extension("log");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(30).collect();
    format!(
        "----- {} -----\n{}",
        path.display(),
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    )
}

/// No variables.
fn no_env(_: usize) -> Vec<(String, String)> {
    Vec::new()
}

/// The time at the start of the first line of `log` that contains every one of `words`
/// (tracing's `2026-12-05T10:37:31.268305Z`).
fn logged_at(log: &str, words: &[&str]) -> Option<SystemTime> {
    let line = log.lines().find(|l| words.iter().all(|w| l.contains(w)))?;
    parse_utc(line.split_whitespace().next()?)
}

/// `2026-12-05T10:37:31.268305Z` as a time.
fn parse_utc(stamp: &str) -> Option<SystemTime> {
    let stamp = stamp.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (h, min, sec) = (t.next()??, t.next()??, t.next()??);
    let micros: u64 = format!("{frac:0<6}").get(..6)?.parse().ok()?;
    // Days since 1970-01-01 of a proleptic Gregorian date.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let secs = u64::try_from(days * 86_400 + h * 3_600 + min * 60 + sec).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros))
}

/// Writes `process`'s fault file: the addresses it must not connect to.
fn cut(faults: &std::path::Path, process: &str, blocked: &[String]) {
    let path = faults.join(format!("{process}.json"));
    let tmp = faults.join(format!(".{process}.json.tmp"));
    let body = serde_json::json!({ "blocked": blocked }).to_string();
    std::fs::write(&tmp, body).expect("write a fault file");
    std::fs::rename(&tmp, &path).expect("rename a fault file");
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

/// The ids a writer was told were committed, and when it was told.
#[derive(Clone, Default)]
struct Acked(Arc<Mutex<Vec<(i32, SystemTime)>>>);

impl Acked {
    fn push(&self, id: i32) {
        self.0.lock().expect("acked").push((id, SystemTime::now()));
    }

    fn ids(&self) -> Vec<i32> {
        self.0
            .lock()
            .expect("acked")
            .iter()
            .map(|(id, _)| *id)
            .collect()
    }

    fn len(&self) -> usize {
        self.0.lock().expect("acked").len()
    }

    /// When the last acknowledgement came.
    fn last_at(&self) -> Option<SystemTime> {
        self.0.lock().expect("acked").last().map(|(_, at)| *at)
    }

    /// The longest wait between two acknowledgements.
    fn longest_gap(&self) -> Duration {
        let acked = self.0.lock().expect("acked");
        acked
            .windows(2)
            .filter_map(|w| w[1].1.duration_since(w[0].1).ok())
            .max()
            .unwrap_or_default()
    }
}

/// How many of `ids` server `port` holds in table `w`.
fn present(cluster: &PgCluster, port: u16, ids: &[i32]) -> usize {
    if ids.is_empty() {
        return 0;
    }
    let list = ids.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
    cluster
        .query_one(
            port,
            &format!("SELECT count(*)::text FROM w WHERE id IN ({list})"),
        )
        .expect("count rows")
        .parse()
        .expect("a count")
}

/// Starts a thread that commits rows `first..` one at a time on server `i` until a COMMIT
/// fails or takes 5 s; the ids it was told were committed.
fn write_until_gone(
    cluster: &PgCluster,
    i: usize,
    first: i32,
) -> (std::thread::JoinHandle<()>, Acked) {
    let acked = Acked::default();
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
                        Ok(Ok(_)) => acked.push(id),
                        _ => break,
                    }
                }
            });
        })
    };
    (writer, acked)
}

/// `kill -9` of server `i`'s postmaster.
fn kill_postmaster(cluster: &PgCluster, i: usize) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(postmaster_pid(cluster, i)),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap_or_else(|e| panic!("kill -9 pg{}'s postmaster: {e}", i + 1));
}

/// Starts server `i`'s keeper again, with the flags it was first started with.
fn respawn_keeper(
    keepers: &mut [KeelProcess],
    cluster: &PgCluster,
    i: usize,
    ports: &[u16],
    monitor: &TestMonitor,
) {
    let args = keeper_args(cluster, i, ports[i], monitor);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    keepers[i].respawn(&refs);
}

/// Waits up to 15 s for the monitor to have a primary other than `old`, its failover
/// over; whether it did.
fn promoted_other_than(monitor: &TestMonitor, old: &str) -> bool {
    wait_until(Duration::from_secs(15), || {
        let view = monitor.cluster();
        view["primary"]["node"].is_string()
            && view["primary"]["node"] != old
            && view["failover_in_progress"] == false
    })
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
    let mut keepers = start_group(&cluster, &monitor, &ports, 3, &no_env);

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
        kill_postmaster(&cluster, old);
        let old_name = format!("pg{}", old + 1);
        let promoted = promoted_other_than(&monitor, &old_name);
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
        let acked = acked.ids();
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
        let lost = acked.len() - present(&cluster, port, &acked);
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
        respawn_keeper(&mut keepers, &cluster, old, &ports, &monitor);
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

#[test]
fn a_killed_sync_standby_is_dropped_so_commits_go_on_and_is_not_promoted_until_caught_up() {
    let dir = tempdir();
    let cluster = PgCluster::unmade(dir.path());
    let monitor = TestMonitor::start_closed(&dir.path().join("monitor"), &[]);
    let ports = free_ports(2);
    // A primary and one standby: every COMMIT waits for pg2 while it is in the sync set.
    let mut keepers = start_group(&cluster, &monitor, &ports, 2, &no_env);
    cluster.exec(0, "CREATE TABLE w (id int primary key)");
    let (writer, acked) = write_until_gone(&cluster, 0, 0);
    std::thread::sleep(Duration::from_millis(300));
    let before = acked.len();
    kill_postmaster(&cluster, 1);

    // The monitor drops pg2 from the sync set; pg1 then commits alone.
    let dropped = wait_until(Duration::from_secs(10), || {
        let pg2 = node(&monitor.cluster(), "pg2");
        pg2["sync"] == false && pg2["promotable"] == false
    });
    assert!(dropped, "pg2 never dropped: {}", monitor.cluster());
    let alone = wait_until(Duration::from_secs(10), || {
        cluster.query_one(cluster.servers[0].port, "SHOW synchronous_standby_names")
            == Ok(String::new())
    });
    assert!(alone, "pg1 still waits for a standby");
    let went_on = wait_until(Duration::from_secs(10), || acked.len() > before + 50);
    assert!(
        went_on,
        "commits stopped: {} before the kill, {} since",
        before,
        acked.len() - before
    );
    eprintln!(
        "commits waited at most {:?} while pg2 was dropped",
        acked.longest_gap()
    );

    // pg1 dies too, holding commits pg2 never had.
    kill_postmaster(&cluster, 0);
    writer.join().expect("writer");
    let ids = acked.ids();
    for k in &mut keepers {
        let _ = k.wait_timeout(Duration::from_secs(10));
    }
    // pg2 comes back behind: the monitor does not make it primary, and says why.
    respawn_keeper(&mut keepers, &cluster, 1, &ports, &monitor);
    let back = wait_until(Duration::from_secs(30), || {
        node(&monitor.cluster(), "pg2")["healthy"] == true
    });
    assert!(back, "pg2 never back: {}", keepers[1].log_report());
    let promoted = wait_until(Duration::from_secs(3), || {
        monitor.cluster()["primary"]["node"] == "pg2"
    });
    let view = monitor.cluster();
    assert!(
        !promoted,
        "pg2 was promoted without pg1's last commits: {view}"
    );
    assert_eq!(node(&view, "pg2")["promotable"], false, "{view}");
    assert!(
        node(&view, "pg2")["why_not_promotable"]
            .as_str()
            .is_some_and(|why| !why.is_empty()),
        "{view}"
    );

    // pg1 back: primary again, pg2 catches up from it and is promotable again, and every
    // acknowledged COMMIT is on both.
    respawn_keeper(&mut keepers, &cluster, 0, &ports, &monitor);
    let caught_up = wait_until(Duration::from_secs(30), || {
        let view = monitor.cluster();
        view["primary"]["node"] == "pg1"
            && node(&view, "pg1")["healthy"] == true
            && node(&view, "pg2")["promotable"] == true
    });
    assert!(
        caught_up,
        "pg2 never promotable again: {}\n{}",
        monitor.cluster(),
        keepers[0].log_report()
    );
    assert_eq!(present(&cluster, cluster.servers[0].port, &ids), ids.len());
    let on_pg2 = wait_until(Duration::from_secs(10), || {
        present(&cluster, cluster.servers[1].port, &ids) == ids.len()
    });
    assert!(on_pg2, "pg2 does not hold every acknowledged COMMIT");
}

#[test]
fn a_primary_cut_off_from_monitor_and_standbys_stops_its_server_before_a_standby_is_promoted() {
    let dir = tempdir();
    let cluster = PgCluster::unmade(dir.path());
    let faults = dir.path().join("faults");
    std::fs::create_dir_all(&faults).expect("faults dir");
    let names = ["monitor", "pg1", "pg2", "pg3"];
    for name in names {
        cut(&faults, name, &[]);
    }
    let env_of = |name: &str| {
        vec![(
            "KEEL_FAULTS_FILE".to_owned(),
            faults.join(format!("{name}.json")).display().to_string(),
        )]
    };
    let monitor =
        TestMonitor::start_closed_env(&dir.path().join("monitor"), &[], &env_of("monitor"));
    let ports = free_ports(3);
    let keepers = start_group(&cluster, &monitor, &ports, 3, &|i| {
        env_of(&format!("pg{}", i + 1))
    });
    let mut pg1 = keepers.into_iter();
    let keeper1 = pg1.next().expect("pg1's keeper");
    cluster.exec(0, "CREATE TABLE w (id int primary key)");
    let (writer, acked) = write_until_gone(&cluster, 0, 0);
    std::thread::sleep(Duration::from_millis(300));

    // pg1's keeper cut off from the monitor and the other keepers, both ways. PostgreSQL's
    // own replication is not cut: pg1 could go on committing through its sync standby.
    let addr = |port: u16| format!("127.0.0.1:{port}");
    cut(
        &faults,
        "pg1",
        &[addr(monitor.port), addr(ports[1]), addr(ports[2])],
    );
    for name in ["monitor", "pg2", "pg3"] {
        cut(&faults, name, &[addr(ports[0])]);
    }
    let promoted = promoted_other_than(&monitor, "pg1");
    let view = monitor.cluster();
    assert!(promoted, "no standby promoted: {view}");
    let new = index_of(&view["primary"]["node"]);
    let new_name = format!("pg{}", new + 1);

    // pg1's keeper stopped its server for its lease.
    let fenced = wait_until(Duration::from_secs(10), || {
        keeper1.log_text().contains("lease ran out")
    });
    assert!(fenced, "{}", keeper1.log_report());
    let log = keeper1.log_text();
    writer.join().expect("writer");

    // In that order: pg1 stopped, then the monitor promoted; no COMMIT acknowledged by
    // pg1 after the promotion, and every one of them on the new primary.
    let stopped_at = logged_at(&log, &["stopped PostgreSQL"]).expect("when pg1 was stopped");
    let promoted_at = logged_at(
        &monitor.proc.log_text(),
        &[" promoted ", &format!("node=\"{new_name}\"")],
    )
    .expect("when the monitor promoted");
    assert!(
        stopped_at < promoted_at,
        "pg1 stopped {stopped_at:?}, {new_name} promoted {promoted_at:?}"
    );
    let last_ack = acked.last_at().expect("pg1 acknowledged commits");
    assert!(
        last_ack < promoted_at,
        "a COMMIT acknowledged by pg1 after the promotion"
    );
    eprintln!(
        "pg1 stopped {:?} before {new_name}'s promotion; its last COMMIT acknowledged {:?} before",
        promoted_at.duration_since(stopped_at).unwrap_or_default(),
        promoted_at.duration_since(last_ack).unwrap_or_default()
    );
    let ids = acked.ids();
    assert!(
        ids.len() > 5,
        "the writer committed only {} rows",
        ids.len()
    );
    let port = cluster.servers[new].port;
    let out_of_recovery = wait_until(Duration::from_secs(10), || {
        cluster.query_one(port, "SELECT pg_is_in_recovery()::text") == Ok("false".into())
    });
    assert!(out_of_recovery, "{new_name} still in recovery");
    assert_eq!(
        present(&cluster, port, &ids),
        ids.len(),
        "acknowledged COMMITs lost"
    );

    // Healed: pg1's keeper, which has waited to learn who is primary, rewinds its server
    // to the new primary and follows it.
    for name in names {
        cut(&faults, name, &[]);
    }
    let rejoined = wait_until(Duration::from_secs(60), || {
        let pg1 = node(&monitor.cluster(), "pg1");
        pg1["role"] == "standby" && pg1["healthy"] == true && pg1["promotable"] == true
    });
    assert!(
        rejoined,
        "pg1 never promotable again: {}\n{}",
        monitor.cluster(),
        keeper1.log_report()
    );
    assert!(
        keeper1
            .log_text()
            .contains("rewinding to the primary with pg_rewind")
    );
    drop(keeper1);
}

/// A writer that commits rows `first..` one at a time on whichever server takes writes
/// (libpq's `target_session_attrs=read-write` over every server), connecting again at once
/// after any error, until `stop` is set or a minute has passed.
fn write_anywhere(
    cluster: &PgCluster,
    first: i32,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (std::thread::JoinHandle<()>, Acked) {
    let acked = Acked::default();
    let hosts = vec!["127.0.0.1"; cluster.servers.len()].join(",");
    let ports: Vec<String> = cluster.servers.iter().map(|s| s.port.to_string()).collect();
    let conninfo = format!(
        "host={hosts} port={} user=keel password={} dbname=postgres \
         target_session_attrs=read-write connect_timeout=1",
        ports.join(","),
        cluster.password()
    );
    let writer = {
        let acked = acked.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut id = first;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < deadline {
                    let Ok((client, connection)) =
                        tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await
                    else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    tokio::spawn(connection);
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&id];
                        let insert = client.execute("INSERT INTO w VALUES ($1)", &params);
                        let done = tokio::time::timeout(Duration::from_secs(5), insert).await;
                        id += 1;
                        match done {
                            Ok(Ok(_)) => acked.push(id - 1),
                            _ => break,
                        }
                    }
                }
            });
        })
    };
    (writer, acked)
}

#[test]
fn a_switchover_by_hand_drains_the_primary_loses_no_commit_and_the_old_primary_follows() {
    let dir = tempdir();
    let cluster = PgCluster::unmade(dir.path());
    let monitor = TestMonitor::start_closed(&dir.path().join("monitor"), &[]);
    let ports = free_ports(3);
    let keepers = start_group(&cluster, &monitor, &ports, 3, &no_env);
    cluster.exec(0, "CREATE TABLE w (id int primary key)");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (writer, acked) = write_anywhere(&cluster, 0, stop.clone());
    let flowing = wait_until(Duration::from_secs(10), || acked.len() > 20);
    assert!(flowing, "the writer never committed");

    let token = monitor.token_file.display().to_string();
    let out = support::run_keel(&[
        "client",
        "failover",
        "--to",
        "pg2",
        "--monitor",
        &monitor.url,
        "--token-file",
        &token,
    ]);
    assert!(out.success(), "keel client failover: {out}");
    let switched = wait_until(Duration::from_secs(15), || {
        let view = monitor.cluster();
        view["primary"]["node"] == "pg2" && view["failover_in_progress"] == false
    });
    assert!(switched, "pg2 never primary: {}", monitor.cluster());
    // Writes go on, on pg2.
    let at_switch = acked.len();
    let resumed = wait_until(Duration::from_secs(10), || acked.len() > at_switch + 50);
    assert!(resumed, "no commit after the switchover");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.join().expect("writer");
    eprintln!(
        "switchover: the writer waited at most {:?} for a COMMIT",
        acked.longest_gap()
    );
    let ids = acked.ids();
    let pg2 = cluster.servers[1].port;
    assert_eq!(
        present(&cluster, pg2, &ids),
        ids.len(),
        "acknowledged COMMITs lost"
    );

    // The old primary's keeper stopped its server when pg2 took over, and brought it back
    // as pg2's standby.
    let followed = wait_until(Duration::from_secs(60), || {
        let pg1 = node(&monitor.cluster(), "pg1");
        pg1["role"] == "standby" && pg1["healthy"] == true && pg1["promotable"] == true
    });
    assert!(
        followed,
        "pg1 never pg2's promotable standby: {}\n{}\n{}",
        monitor.cluster(),
        keepers[0].log_report(),
        server_log(&cluster, 0)
    );
    assert!(keepers[0].log_text().contains("drained for the switchover"));
    let on_pg1 = wait_until(Duration::from_secs(10), || {
        present(&cluster, cluster.servers[0].port, &ids) == ids.len()
    });
    assert!(on_pg1, "pg1 does not hold every acknowledged COMMIT");

    // keel client cluster shows the PostgreSQL group as it shows keel's own.
    let out = support::run_keel(&["client", "cluster", "--monitor", &monitor.url]);
    assert!(out.success() && out.stdout.contains("pg2"), "{out}");
}

#[test]
fn through_keel_proxy_a_client_reconnecting_after_a_failover_lands_on_the_new_primary() {
    let dir = tempdir();
    let cluster = PgCluster::unmade(dir.path());
    let monitor = TestMonitor::start_closed(&dir.path().join("monitor"), &[]);
    let ports = free_ports(3);
    let keepers = start_group(&cluster, &monitor, &ports, 3, &no_env);
    // The proxy's read-write port follows the monitor's word, not the servers' own.
    let (proxy, _admin, rw, _ro) = cluster.start_proxy(
        &cluster.setup.password_file(),
        &["--tcp-monitor", &monitor.url],
    );
    let on_pg1 = wait_until(Duration::from_secs(10), || {
        cluster.who_answers(rw) == Ok("pg1".into())
    });
    assert!(on_pg1, "the read-write port: {:?}", cluster.who_answers(rw));
    let held = cluster.hold(rw);
    assert_eq!(cluster.who_answers_on(&held), Ok("pg1".into()));

    kill_postmaster(&cluster, 0);
    let promoted = promoted_other_than(&monitor, "pg1");
    assert!(promoted, "no standby promoted: {}", monitor.cluster());
    let new = monitor.cluster()["primary"]["node"]
        .as_str()
        .map(str::to_owned)
        .expect("a primary");
    // The session held to the old primary is over; a new one lands on the new primary
    // and can write.
    assert!(cluster.who_answers_on(&held).is_err());
    let moved = wait_until(Duration::from_secs(10), || {
        cluster.who_answers(rw) == Ok(new.clone())
    });
    assert!(
        moved,
        "the read-write port: {:?}, not {new}\n{}",
        cluster.who_answers(rw),
        proxy.log_report()
    );
    let writable = wait_until(Duration::from_secs(5), || {
        cluster.query_one(
            rw,
            "SELECT pg_is_in_recovery()::text || ' ' || current_setting('transaction_read_only')",
        ) == Ok("false off".into())
    });
    assert!(writable, "{new} through the proxy is not writable");
    drop(keepers);
}

#[test]
fn a_former_primary_that_pg_rewind_cannot_rewind_is_copied_afresh() {
    let dir = tempdir();
    let cluster = PgCluster::unmade(dir.path());
    let monitor = TestMonitor::start_closed(&dir.path().join("monitor"), &[]);
    let ports = free_ports(2);
    let mut keepers = start_group(&cluster, &monitor, &ports, 2, &no_env);
    cluster.exec(
        0,
        "CREATE TABLE w (id int primary key); INSERT INTO w SELECT generate_series(1, 100)",
    );
    kill_postmaster(&cluster, 0);
    let promoted = wait_until(Duration::from_secs(15), || {
        let view = monitor.cluster();
        view["primary"]["node"] == "pg2" && view["failover_in_progress"] == false
    });
    assert!(promoted, "pg2 never primary: {}", monitor.cluster());
    let ended = keepers[0].wait_timeout(Duration::from_secs(10));
    assert!(ended.is_some(), "pg1's keeper outlived its server");

    // pg1's WAL gone: pg_rewind cannot find where the two parted.
    let wal = cluster.servers[0].dir.join("pg_wal");
    for entry in std::fs::read_dir(&wal).expect("pg_wal").flatten() {
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            std::fs::remove_file(entry.path()).expect("remove a WAL segment");
        }
    }
    respawn_keeper(&mut keepers, &cluster, 0, &ports, &monitor);
    let rejoined = wait_until(Duration::from_secs(60), || {
        let pg1 = node(&monitor.cluster(), "pg1");
        pg1["role"] == "standby" && pg1["healthy"] == true && pg1["promotable"] == true
    });
    assert!(
        rejoined,
        "pg1 never promotable again: {}\n{}",
        monitor.cluster(),
        keepers[0].log_report()
    );
    assert!(
        keepers[0]
            .log_text()
            .contains("pg_rewind failed: copying the primary afresh"),
        "{}",
        keepers[0].log_report()
    );
    assert!(
        cluster.servers[0]
            .dir
            .with_extension("not-rewound")
            .is_dir()
    );
    assert_eq!(
        cluster.query_one(cluster.servers[0].port, "SELECT count(*)::text FROM w"),
        Ok("100".into())
    );
}
