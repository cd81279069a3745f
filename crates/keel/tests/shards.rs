//! Several groups under one monitor (docs/shards.md): `keel monitor --groups g1,g2`,
//! real nodes joining each with `keel node --group`, each group electing its own primary
//! and failing over on its own, the state kept across a restart of the monitor; and each
//! node answering only the keys of its group's slots (`421` naming the owner otherwise),
//! and `keel proxy --cluster` sending each key to its group's primary. Under `keel up
//! --shards 2`, `keel load` through the front door: each primary takes 40–60% of the
//! writes, and with one group's primary killed under load the other group's writes see
//! no error, counted per group by `keel load --verify`.

mod support;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use support::{
    KeelProcess, TestMonitor, TestNode, free_ports, get_json, put_kv, tempdir, url_for,
    wait_for_health, wait_until,
};

/// The node that answered a `PUT /v1/kv/{key}` through `front`, if it took the write.
fn written_by(front: &str, key: &str) -> Option<String> {
    let r = put_kv(front, key, "through the proxy");
    if !r.status().is_success() {
        return None;
    }
    r.headers()
        .get("keel-node")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Group `group`'s view.
fn view(monitor: &TestMonitor, group: &str) -> Value {
    let (status, body) = get_json(&format!("{}/v1/cluster?group={group}", monitor.url));
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Whether `group` has `primary` and every other node of it promotable.
fn settled(monitor: &TestMonitor, group: &str, primary: &str) -> bool {
    let v = view(monitor, group);
    v["primary"]["node"] == primary
        && v["failover_in_progress"] == false
        && v["nodes"].as_array().is_some_and(|nodes| {
            nodes.len() == 2
                && nodes
                    .iter()
                    .all(|n| n["node"] == primary || n["promotable"] == true)
        })
}

#[test]
fn two_groups_each_elect_a_primary_and_fail_over_alone() {
    let dir = tempdir();
    let mut monitor = TestMonitor::start(&dir.path().join("monitor"), &["--groups", "g1,g2"]);
    let node = |id: &str, group: &str| {
        TestNode::monitored(
            id,
            dir.path().join(id),
            &monitor.url,
            &[
                "--group",
                group,
                "--token-file",
                &monitor.token_file.display().to_string(),
            ],
        )
    };
    let mut app1 = node("app1", "g1");
    assert!(wait_until(Duration::from_secs(10), || view(&monitor, "g1")
        ["primary"]["node"]
        == "app1"));
    let app2 = node("app2", "g1");
    let app3 = node("app3", "g2");
    assert!(wait_until(Duration::from_secs(10), || view(&monitor, "g2")
        ["primary"]["node"]
        == "app3"));
    let app4 = node("app4", "g2");
    assert!(
        wait_until(Duration::from_secs(20), || settled(&monitor, "g1", "app1")
            && settled(&monitor, "g2", "app3")),
        "g1: {}\ng2: {}",
        view(&monitor, "g1"),
        view(&monitor, "g2")
    );
    // Moves are an operator's: refused without the token, and each bad request says
    // what was wrong; nothing changes.
    let ask_move = |body: &str, token: Option<&str>| {
        let mut r = support::http_client()
            .post(format!("{}/v1/slots/move", monitor.url))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let r = r.send().expect("an answer");
        let status = r.status();
        (status, r.json::<Value>().unwrap_or_default())
    };
    let token = Some(monitor.token.as_str());
    let (status, _) = ask_move(r#"{"slots": "0-9", "to": "g2"}"#, None);
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    for (body, status, says) in [
        (
            r#"{"slots": "0-9,x", "to": "g2"}"#,
            StatusCode::BAD_REQUEST,
            "is not a list of slots",
        ),
        (
            r#"{"slots": "99999", "to": "g2"}"#,
            StatusCode::BAD_REQUEST,
            "does not exist",
        ),
        (
            r#"{"slots": "0-9", "to": "g7"}"#,
            StatusCode::NOT_FOUND,
            "g7",
        ),
        (
            r#"{"slots": "8190-8193", "to": "g2"}"#,
            StatusCode::CONFLICT,
            "slot 8192 is g2's",
        ),
        (r#"{"slots": "0-9"}"#, StatusCode::BAD_REQUEST, "to"),
    ] {
        let (got, answer) = ask_move(body, token);
        assert_eq!(got, status, "{body}: {answer}");
        assert!(
            answer["message"].as_str().is_some_and(|m| m.contains(says)),
            "{body}: {answer}"
        );
    }
    let (status, answer) = support::http_client()
        .post(format!("{}/v1/slots/cancel", monitor.url))
        .bearer_auth(&monitor.token)
        .send()
        .map(|r| (r.status(), r.text().unwrap_or_default()))
        .expect("an answer");
    assert_eq!(status, StatusCode::CONFLICT, "nothing to cancel: {answer}");
    assert_eq!(
        get_json(&format!("{}/v1/slots", monitor.url)).1["version"],
        1
    );

    // Each view names its group and every group; each group has its own epoch.
    let g2 = view(&monitor, "g2");
    assert_eq!(g2["group"], "g2");
    assert_eq!(g2["groups"], serde_json::json!(["g1", "g2"]));
    assert_eq!(g2["epoch"], 1);
    assert_eq!(view(&monitor, "g1")["epoch"], 1);
    // Without ?group, the first group's; an unknown group is named.
    assert_eq!(monitor.cluster()["group"], "g1");
    let (status, body) = get_json(&format!("{}/v1/cluster?group=g9", monitor.url));
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"], "unknown_group", "{body}");

    // Both primaries take writes, each for the keys of its group's slots: with two groups
    // evenly, `bar` (slot 5061) is g1's and `foo` (slot 12182) g2's.
    for (primary, key) in [(&app1, "bar"), (&app3, "foo")] {
        let r = put_kv(&primary.url, key, "v");
        assert!(r.status().is_success(), "{} refused {key}", primary.id);
        let version = r.headers().get("keel-table-version").cloned();
        assert_eq!(version.as_ref().and_then(|v| v.to_str().ok()), Some("1"));
    }
    // A key of the other group's slot is refused, naming its owner, by a primary and a
    // standby alike; so is the entries map (one key, `entries`, slot 4426: g1's).
    for (node, key, owner, slot) in [(&app1, "foo", "g2", 12182), (&app4, "bar", "g1", 5061)] {
        let r = put_kv(&node.url, key, "v");
        assert_eq!(
            r.status(),
            StatusCode::MISDIRECTED_REQUEST,
            "{} took {key}",
            node.id
        );
        let body: Value = r.json().expect("JSON");
        assert_eq!(body["error"], "wrong_group", "{body}");
        assert_eq!(
            (&body["group"], &body["slot"], &body["version"]),
            (&owner.into(), &slot.into(), &1.into()),
            "{body}"
        );
        assert_eq!(
            body["message"],
            format!("slot {slot} (key \"{key}\") is {owner}'s in table version 1")
        );
    }
    let (status, body) = get_json(&format!("{}/v1/kv/foo", app2.url));
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST, "{body}");
    let (status, body) = get_json(&format!("{}/v1/entries", app3.url));
    assert_eq!(
        (status, &body["group"]),
        (StatusCode::MISDIRECTED_REQUEST, &"g1".into()),
        "{body}"
    );
    let (status, _) = get_json(&format!("{}/v1/entries", app1.url));
    assert_eq!(status, StatusCode::OK);

    // `keel client cluster` shows every group with its slots.
    let out = support::run_keel(&["client", "--monitor", &monitor.url, "cluster"]);
    assert!(out.success(), "{out}");
    for line in [
        "2 groups, slot table version 1",
        "group g1: slots 0-8191 (8192 slots), epoch 1, primary app1",
        "group g2: slots 8192-16383 (8192 slots), epoch 1, primary app3",
    ] {
        assert!(out.stdout.contains(line), "{line:?} in:\n{out}");
    }

    // `keel client` sends each key to its group's primary too.
    let out = support::run_keel(&["client", "--monitor", &monitor.url, "set", "foo=1", "bar=2"]);
    assert!(out.success(), "keel client set: {out}");
    for (key, value) in [("foo", "1"), ("bar", "2")] {
        let out = support::run_keel(&["client", "--monitor", &monitor.url, "get", key]);
        assert!(
            out.success() && out.stdout.contains(value),
            "keel client get {key}: {out}"
        );
    }

    // The proxy sends each key to its group's primary, hash tags included.
    let [proxy_port, admin_port]: [u16; 2] = free_ports(2).try_into().expect("two ports");
    let (listen, admin) = (
        format!("127.0.0.1:{proxy_port}"),
        format!("127.0.0.1:{admin_port}"),
    );
    let mut proxy = KeelProcess::spawn(
        "proxy",
        &[
            "proxy",
            "--listen",
            &listen,
            "--admin",
            &admin,
            "--cluster",
            &monitor.url,
        ],
    );
    wait_for_health(&mut proxy, &url_for(admin_port));
    let front = url_for(proxy_port);
    let routed = [
        ("foo", "app3"),
        ("bar", "app1"),
        ("{foo}.x", "app3"),
        ("{bar}.x", "app1"),
    ];
    assert!(
        wait_until(Duration::from_secs(10), || routed.iter().all(
            |(key, node)| written_by(&front, key).as_deref() == Some(*node)
        )),
        "{:?}\n{}",
        routed.map(|(key, _)| (key, written_by(&front, key))),
        proxy.log_report()
    );
    // The list of keys: a node lists its group's keys and says which group; the proxy
    // merges every group's and says who answered for each.
    let listed = |url: &str| {
        let (status, list) = get_json(&format!("{url}/v1/kv"));
        assert_eq!(status, StatusCode::OK, "{list}");
        let keys: Vec<String> = list["keys"]
            .as_array()
            .map(|keys| {
                keys.iter()
                    .filter_map(|k| k["key"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        (list, keys)
    };
    let (list, keys) = listed(&app1.url);
    assert_eq!(list["group"], "g1", "{list}");
    assert!(
        keys.contains(&"bar".to_owned()) && !keys.contains(&"foo".to_owned()),
        "{list}"
    );
    let (list, keys) = listed(&front);
    for key in ["foo", "bar", "{foo}.x", "{bar}.x"] {
        assert!(keys.contains(&key.to_owned()), "{key} missing from {list}");
    }
    let parts: Vec<(&str, &str)> = list["merged"]
        .as_array()
        .map(|parts| {
            parts
                .iter()
                .filter_map(|p| Some((p["group"].as_str()?, p["node"].as_str()?)))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(parts, [("g1", "app1"), ("g2", "app3")], "{list}");

    // g1's primary killed: g1 fails over to app2; g2 keeps app3 in epoch 1.
    let killed = Instant::now();
    app1.kill9();
    let failed_over = wait_until(Duration::from_secs(10), || {
        let v = view(&monitor, "g1");
        v["primary"]["node"] == "app2" && v["failover_in_progress"] == false
    });
    assert!(
        failed_over,
        "g1 did not fail over: {}",
        view(&monitor, "g1")
    );
    eprintln!("g1: app2 primary {:?} after app1's kill", killed.elapsed());
    assert_eq!(view(&monitor, "g1")["epoch"], 2);
    let g2 = view(&monitor, "g2");
    assert_eq!(
        (&g2["primary"]["node"], &g2["epoch"]),
        (&"app3".into(), &1.into()),
        "{g2}"
    );
    // Through the proxy, g1's keys follow its new primary.
    assert!(
        wait_until(Duration::from_secs(10), || written_by(&front, "bar")
            .as_deref()
            == Some("app2")),
        "bar never reached app2 through the proxy\n{}",
        proxy.log_report()
    );
    assert_eq!(written_by(&front, "foo").as_deref(), Some("app3"));
    // Hash tags keep a key with its tag's slot.
    assert!(put_kv(&app2.url, "{bar}.2", "v").status().is_success());
    assert!(put_kv(&app3.url, "{foo}.2", "v").status().is_success());

    // The monitor restarted keeps both groups, their primaries and epochs.
    monitor.restart();
    assert!(
        wait_until(Duration::from_secs(10), || settled(&monitor, "g2", "app3")),
        "{}",
        view(&monitor, "g2")
    );
    assert_eq!(view(&monitor, "g1")["primary"]["node"], "app2");
    assert_eq!(view(&monitor, "g1")["epoch"], 2);
    assert_eq!(view(&monitor, "g2")["epoch"], 1);
    drop((app2, app4));
}

/// `keel up --shards 2`: two groups of two nodes, each with its primary, the front door
/// sending each key to its group's; one group's primary killed, the other's keys go on.
#[test]
fn keel_up_with_two_shards_spreads_keys_over_two_primaries() {
    let dir = tempdir();
    let data = dir.path().join("keel-data");
    let base = support::free_port_range(4);
    let monitor_port = loop {
        let p = support::free_port();
        if !(base..base + 4).contains(&p) {
            break p;
        }
    };
    let up = support::KeelUp::start_on(&data, 2, base, monitor_port, &["--shards", "2"]);
    let banner = up.proc.log_text();
    assert!(
        banner.contains("keel data tier is up (2 groups"),
        "{banner}"
    );
    assert!(
        banner.contains("slots move 0-99 --to g2") && !banner.contains("failover  "),
        "the banner suggests what works under groups:\n{banner}"
    );
    for (node, group) in [
        ("app1", "g1"),
        ("app2", "g1"),
        ("app3", "g2"),
        ("app4", "g2"),
    ] {
        assert!(
            banner
                .lines()
                .any(|l| l.trim_start().starts_with(node) && l.contains(&format!("  {group}"))),
            "{node} in {group}:\n{banner}"
        );
    }
    let front = up.proxy_url.clone();
    let primary_of = |group: &str| {
        get_json(&format!("{}/v1/cluster?group={group}", up.monitor_url)).1["primary"]["node"]
            .as_str()
            .map(str::to_owned)
    };
    let (g1, g2) = (primary_of("g1"), primary_of("g2"));
    assert!(g1.is_some() && g2.is_some() && g1 != g2, "{g1:?} {g2:?}");
    assert!(
        wait_until(Duration::from_secs(10), || written_by(&front, "bar") == g1
            && written_by(&front, "foo") == g2),
        "bar → {:?}, foo → {:?}\n{}",
        written_by(&front, "bar"),
        written_by(&front, "foo"),
        up.proc.log_report()
    );

    // keel load writing many keys through the front door: each primary takes its share.
    let (out, report) = support::load_report(&[
        &format!("{front}/"),
        "--concurrency",
        "8",
        "--requests",
        "400",
        "--write-ratio",
        "1",
        "--verify",
        "--monitor",
        &up.monitor_url,
    ]);
    assert!(out.success(), "{out}");
    assert!(
        out.stdout.contains("lost acknowledged writes: 0\n"),
        "{out}"
    );
    assert_eq!(report["writes"]["acknowledged"], 400, "{out}");
    let spread = support::spread_of(&report);
    let names: Vec<&str> = spread.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), 2, "{out}");
    for (name, count) in &spread {
        assert!(
            [g1.as_deref(), g2.as_deref()].contains(&Some(name.as_str())),
            "{name} is not a primary\n{out}"
        );
        assert!(
            (160..=240).contains(count),
            "{name} took {count} of 400 writes, not 40–60%\n{out}"
        );
    }
    let by_group = groups_of(&report);
    assert_eq!(
        by_group
            .iter()
            .map(|g| g["group"].as_str())
            .collect::<Vec<_>>(),
        [Some("g1"), Some("g2")],
        "{out}"
    );
    assert!(out.stdout.contains("by group"), "{out}");

    // g1's primary killed with kill -9 under load: only g1's writes see the failover
    // window; g2's writers see no error, and no acknowledged write is lost.
    let g1_primary = g1.clone().unwrap_or_default();
    let killer = {
        let (data, node) = (data.display().to_string(), g1_primary.clone());
        let url = up.node_url(node.trim_start_matches("app").parse().unwrap_or(1));
        std::thread::spawn(move || {
            let start = get_json(&format!("{url}/health")).1["lsn"]
                .as_u64()
                .unwrap_or(0);
            let written = wait_until(Duration::from_secs(15), || {
                get_json(&format!("{url}/health")).1["lsn"]
                    .as_u64()
                    .is_some_and(|lsn| lsn >= start + 100)
            });
            (
                written,
                support::run_keel(&["chaos", "--data-dir", &data, "kill", &node]),
            )
        })
    };
    let (out, report) = support::load_report(&[
        &format!("{front}/"),
        "--rate",
        "200",
        "--duration",
        "5s",
        "--write-ratio",
        "1",
        "--verify",
        "--monitor",
        &up.monitor_url,
    ]);
    let (written, killed) = killer.join().expect("killer thread");
    assert!(written && killed.success(), "{killed}");
    assert!(out.success(), "{out}");
    // The report, for `cargo test -p keel --test shards -- --nocapture`.
    eprintln!("{}", out.stdout);
    assert!(
        out.stdout.contains("lost acknowledged writes: 0\n"),
        "{out}"
    );
    let by_group = groups_of(&report);
    let g2_writes = by_group
        .iter()
        .find(|g| g["group"] == "g2")
        .expect("g2's writes");
    assert!(
        g2_writes["acknowledged"].as_u64().unwrap_or(0) > 300,
        "{out}"
    );
    assert_eq!(
        (
            &g2_writes["refused"],
            &g2_writes["unknown"],
            &g2_writes["lost"]
        ),
        (&Value::from(0), &Value::from(0), &Value::from(0)),
        "g2's writers saw errors while g1 failed over\n{out}"
    );
    assert!(
        report["events"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["kind"] == "failover_done")),
        "{out}"
    );
    assert!(
        wait_until(Duration::from_secs(10), || written_by(&front, "bar")
            .is_some_and(|n| Some(&n) != g1.as_ref())),
        "g1's keys never reached its new primary\n{}",
        up.proc.log_report()
    );
}

/// The report's writes per group, from `--verify` under several groups.
fn groups_of(report: &Value) -> Vec<Value> {
    report["verify"]["groups"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Starts `keel up --shards 2` in `data` on free ports.
fn up_with_two_shards(data: &std::path::Path) -> support::KeelUp {
    let base = support::free_port_range(4);
    let monitor_port = loop {
        let p = support::free_port();
        if !(base..base + 4).contains(&p) {
            break p;
        }
    };
    support::KeelUp::start_on(data, 2, base, monitor_port, &["--shards", "2"])
}

/// Starts `keel up --shards 2 --monitors 3` in `data` on free ports; the monitors' URLs.
fn up_with_two_shards_and_three_monitors(data: &std::path::Path) -> (support::KeelUp, String) {
    let base = support::free_port_range(4);
    let monitor_port = loop {
        let p = support::free_port_range(3);
        if !(base..base + 4).any(|b| (p..p + 3).contains(&b)) {
            break p;
        }
    };
    let up = support::KeelUp::start_on(
        data,
        2,
        base,
        monitor_port,
        &["--shards", "2", "--monitors", "3"],
    );
    let urls: Vec<String> = (0..3).map(|k| url_for(monitor_port + k)).collect();
    (up, urls.join(","))
}

/// `GET url` as JSON, `None` when it cannot be read (a monitor that was killed).
fn try_json(url: &str) -> Option<Value> {
    support::http_client()
        .get(url)
        .timeout(Duration::from_millis(500))
        .send()
        .ok()?
        .json()
        .ok()
}

/// The monitor that leads among `urls`, by its own word.
fn monitors_leader(urls: &str) -> Option<String> {
    urls.split(',').find_map(|url| {
        let view = try_json(&format!("{url}/v1/cluster"))?;
        let group = &view["monitors"];
        (group["leader"] == group["answered_by"])
            .then(|| group["leader"].as_str().map(str::to_owned))
            .flatten()
    })
}

/// `count` keys whose slots are in `slots`, named `{prefix}N`.
fn keys_in(slots: std::ops::Range<u16>, prefix: &str, count: usize) -> Vec<String> {
    (0u32..)
        .map(|i| format!("{prefix}{i}"))
        .filter(|k| slots.contains(&keel_core::slots::slot_of(k.as_bytes()).0))
        .take(count)
        .collect()
}

/// `count` keys of `slots` (named `{prefix}N`), each written through `front` as "value of
/// KEY": the keys and their values.
fn write_through(
    front: &str,
    slots: std::ops::Range<u16>,
    prefix: &str,
    count: usize,
) -> Vec<(String, String)> {
    let written: Vec<(String, String)> = keys_in(slots, prefix, count)
        .into_iter()
        .map(|k| {
            let v = format!("value of {k}");
            (k, v)
        })
        .collect();
    for (k, v) in &written {
        assert!(put_kv(front, k, v).status().is_success(), "{k}");
    }
    written
}

/// The node the monitor at `monitor` names group `group`'s primary ("" when none).
fn primary_in(monitor: &str, group: &str) -> String {
    get_json(&format!("{monitor}/v1/cluster?group={group}")).1["primary"]["node"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// `GET /v1/kv/{key}` through `front`: the node that answered, and the body.
fn read_through(front: &str, key: &str) -> (String, String) {
    let got = support::http_client()
        .get(format!("{front}/v1/kv/{key}"))
        .send()
        .expect("a read");
    let node = got
        .headers()
        .get("keel-node")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (node, got.text().unwrap_or_default())
}

/// The group a node of `keel up --shards 2` belongs to.
fn group_of(node: &str) -> &'static str {
    if matches!(node, "app1" | "app2") {
        "g1"
    } else {
        "g2"
    }
}

/// `keel client --monitor … --token-file … ARGS`.
fn client(up: &support::KeelUp, args: &[&str]) -> support::Output {
    let token = up.token_file.display().to_string();
    let mut all = vec![
        "client",
        "--monitor",
        &up.monitor_url,
        "--token-file",
        &token,
    ];
    all.extend_from_slice(args);
    support::run_keel(&all)
}

/// One acknowledged write: its key, value, the node that took it and the table version
/// it used.
#[derive(Debug, Clone)]
struct Ack {
    key: String,
    value: String,
    node: String,
    version: u64,
}

/// 100 slots moved from g1 to g2 and back while 8 writers write keys of them through the
/// front door: no write fails, every acknowledged write is readable at its owner
/// afterwards, and every acknowledgement came from the group the table (at the version
/// the node used) gave the slot to, never during its freeze: no slot ever had two groups
/// acknowledging writes. A node asked with an old table's idea answers 421 naming the
/// owner.
#[test]
fn slots_move_online_under_eight_writers_with_one_owner_at_a_time() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let dir = tempdir();
    let data = dir.path().join("keel-data");
    let up = up_with_two_shards(&data);
    let front = up.proxy_url.clone();
    let keys = keys_in(0..100, "m", 160);
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(Mutex::new(Vec::<Ack>::new()));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let mine: Vec<String> = keys.iter().skip(w).step_by(8).cloned().collect();
            let (front, stop, acks, failures) = (
                front.clone(),
                Arc::clone(&stop),
                Arc::clone(&acks),
                Arc::clone(&failures),
            );
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = &mine[(n as usize) % mine.len()];
                    let value = format!("w{w}-{n}");
                    n += 1;
                    let r = match support::http_client()
                        .put(format!("{front}/v1/kv/{key}"))
                        .body(value.clone())
                        .timeout(Duration::from_secs(10))
                        .send()
                    {
                        Ok(r) => r,
                        Err(e) => {
                            failures
                                .lock()
                                .expect("failures")
                                .push(format!("{key}: {e}"));
                            continue;
                        }
                    };
                    let header = |name: &str| {
                        r.headers()
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned()
                    };
                    if r.status().is_success() {
                        let ack = Ack {
                            key: key.clone(),
                            value,
                            node: header("keel-node"),
                            version: header("keel-table-version").parse().unwrap_or(0),
                        };
                        acks.lock().expect("acks").push(ack);
                    } else {
                        let status = r.status();
                        let body = r.text().unwrap_or_default();
                        failures
                            .lock()
                            .expect("failures")
                            .push(format!("{key}: {status} {body}"));
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));

    // Two moves to g2, 50 slots each, then all 100 back to g1: versions 2-3, 4-5, 6-7.
    for (slots, to) in [("0-49", "g2"), ("50-99", "g2"), ("0-99", "g1")] {
        let out = client(&up, &["slots", "move", slots, "--to", to]);
        assert!(out.success(), "{out}\n{}", up.proc.log_report());
        assert!(
            out.stdout.contains(&format!("moved slots {slots} from")),
            "{out}"
        );
        eprintln!("{}", out.stdout.trim());
        if to == "g2" {
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().expect("a writer");
    }
    let acks = acks.lock().expect("acks").clone();
    let failures = failures.lock().expect("failures").clone();
    eprintln!(
        "{} writes acknowledged, {} failed",
        acks.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "writes failed during the moves: {failures:?}"
    );
    assert!(
        acks.len() > 100,
        "the writers wrote too little: {}",
        acks.len()
    );

    // One owner at a time: the node's group is the slot's owner in the table version it
    // used, and no write was taken while the slot was frozen.
    let owner = |slot: u16, version: u64| match version {
        0..=2 => "g1",
        3..=4 if slot < 50 => "g2",
        3..=4 => "g1",
        5..=6 => "g2",
        _ => "g1",
    };
    let frozen = |slot: u16, version: u64| {
        version == 6 || (version == 2 && slot < 50) || (version == 4 && slot >= 50)
    };
    let mut by_version = std::collections::BTreeMap::<u64, usize>::new();
    for ack in &acks {
        let slot = keel_core::slots::slot_of(ack.key.as_bytes()).0;
        *by_version.entry(ack.version).or_default() += 1;
        assert!(
            !frozen(slot, ack.version) && group_of(&ack.node) == owner(slot, ack.version),
            "{ack:?}: slot {slot} in version {} is {}'s{}",
            ack.version,
            owner(slot, ack.version),
            if frozen(slot, ack.version) {
                ", frozen"
            } else {
                ""
            }
        );
    }
    eprintln!("acknowledgements by table version: {by_version:?}");
    assert!(
        by_version.keys().any(|v| *v >= 5) && by_version.keys().any(|v| *v <= 2),
        "writes were taken before and after the moves: {by_version:?}"
    );

    // Every key holds its last acknowledged value, at its owner (g1 again).
    let mut last = std::collections::HashMap::<&str, &str>::new();
    for ack in &acks {
        last.insert(ack.key.as_str(), ack.value.as_str());
    }
    for (key, value) in &last {
        let (node, got) = read_through(&front, key);
        assert_eq!(group_of(&node), "g1", "{key} read from {node}");
        assert_eq!(got, *value, "{key} lost its last write");
    }

    // A stale idea of the table: g2's primary asked for a key that went back to g1.
    let g2_primary =
        get_json(&format!("{}/v1/cluster?group=g2", up.monitor_url)).1["primary"]["url"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
    let r = put_kv(&g2_primary, &keys[0], "stale");
    assert_eq!(r.status(), StatusCode::MISDIRECTED_REQUEST);
    let body: Value = r.json().expect("json");
    assert_eq!(
        (&body["error"], &body["group"], &body["version"]),
        (&"wrong_group".into(), &"g1".into(), &7.into()),
        "{body}"
    );
    // g2 held those keys while the slots were its own and still has them on disk, but
    // never serves them now: a read is refused, and its list leaves them out.
    let (status, refused) = get_json(&format!("{g2_primary}/v1/kv/{}", keys[0]));
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST, "{refused}");
    let (_, list) = get_json(&format!("{g2_primary}/v1/kv"));
    assert!(
        list["keys"].as_array().is_some_and(|ks| ks
            .iter()
            .all(|k| !keys.iter().any(|m| k["key"] == m.as_str()))),
        "g2 lists keys it no longer owns: {list}"
    );
    let out = client(&up, &["slots", "show"]);
    assert!(
        out.success() && out.stdout.contains("slot table version 7"),
        "{out}"
    );

    // The entries map moves with its slot, and `keel client state` follows it there.
    let update = dir.path().join("update_file");
    std::fs::write(&update, "color=blue\n").expect("the update file");
    let out = client(&up, &["update", "--file", &update.display().to_string()]);
    assert!(out.success(), "{out}");
    let entries_slot = keel_core::slots::slot_of(b"entries").0.to_string();
    let out = client(&up, &["slots", "move", &entries_slot, "--to", "g2"]);
    assert!(out.success(), "{out}");
    let out = client(&up, &["state", "all"]);
    assert!(out.success(), "{out}");
    assert!(
        out.stdout.contains("the entries map is in group g2") && out.stdout.contains("color"),
        "{out}"
    );
    assert!(
        out.stdout.contains("app3") || out.stdout.contains("app4"),
        "read from g2's nodes: {out}"
    );
}

/// The slot table as the monitor has it.
fn table(up: &support::KeelUp) -> Value {
    get_json(&format!("{}/v1/slots", up.monitor_url)).1
}

/// Whether the table has no move under way and gives `slot` to `group`.
fn moved(up: &support::KeelUp, slot: u16, group: &str) -> bool {
    let t = table(up);
    t["moving"].is_null()
        && t["ranges"].as_array().is_some_and(|ranges| {
            ranges.iter().any(|r| {
                r["group"] == group
                    && r["from"].as_u64().is_some_and(|f| f <= u64::from(slot))
                    && r["to"].as_u64().is_some_and(|t| t >= u64::from(slot))
            })
        })
}

/// `keel chaos --data-dir … ARGS`.
fn chaos(data: &std::path::Path, args: &[&str]) {
    let data = data.display().to_string();
    let mut all = vec!["chaos", "--data-dir", &data];
    all.extend_from_slice(args);
    let out = support::run_keel(&all);
    assert!(out.success(), "{out}");
}

/// A move whose target primary, then whose source primary, is killed in the middle: the
/// group fails over, its new primary carries the move on, and the move completes with
/// every key of the slots at the new owner. While the source's primary is gone its
/// standby, promoted, keeps the slots frozen: it takes no write to them.
#[test]
fn a_move_lives_through_the_death_of_either_groups_primary() {
    let dir = tempdir();
    let data = dir.path().join("keel-data");
    let up = up_with_two_shards(&data);
    let front = up.proxy_url.clone();
    let primary_of = |group: &str| primary_in(&up.monitor_url, group);
    let written = write_through(&front, 200..400, "d", 60);

    // A move that cannot finish (the target's primary frozen) is called off: the slots
    // stay g1's and take writes again.
    let target = primary_of("g2");
    chaos(&data, &["pause", &target]);
    let out = client(
        &up,
        &["slots", "move", "600-699", "--to", "g2", "--no-wait"],
    );
    assert!(out.success(), "{out}");
    let cancelled = client(&up, &["slots", "cancel"]);
    assert!(cancelled.success(), "{cancelled}");
    assert!(cancelled.stdout.contains("move cancelled"), "{cancelled}");
    assert!(moved(&up, 600, "g1"), "{}", table(&up));
    let stay = keys_in(600..700, "c", 1).remove(0);
    assert!(
        wait_until(Duration::from_secs(5), || put_kv(&front, &stay, "after")
            .status()
            .is_success()),
        "a write to a slot whose move was cancelled failed"
    );
    assert_eq!(read_through(&front, &stay).1, "after");
    let again = client(&up, &["slots", "cancel"]);
    assert!(!again.success(), "nothing to cancel: {again}");
    chaos(&data, &["resume", &target]);
    assert!(
        wait_until(Duration::from_secs(10), || {
            let v = get_json(&format!("{}/v1/cluster?group=g2", up.monitor_url)).1;
            v["failover_in_progress"] == false && v["primary"]["node"].is_string()
        }),
        "g2 did not settle after the pause"
    );

    // The target's primary freezes (it cannot import), then dies: g2's next primary
    // imports, and the move completes.
    let target = primary_of("g2");
    chaos(&data, &["pause", &target]);
    let out = client(
        &up,
        &["slots", "move", "200-299", "--to", "g2", "--no-wait"],
    );
    assert!(out.success(), "{out}");
    assert!(!table(&up)["moving"].is_null(), "the move is under way");
    // Nothing is copied into the frozen primary: the slots switch only once g2 has
    // another primary to import them. (That may come within the half second: the
    // monitor may already have been missing the frozen node's heartbeats.)
    let watch_until = std::time::Instant::now() + Duration::from_millis(500);
    while std::time::Instant::now() < watch_until {
        if moved(&up, 200, "g2") {
            assert_ne!(
                primary_of("g2"),
                target,
                "the slots switched to g2 while its primary was frozen: {}",
                up.proc.log_report()
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    // The source does not answer a read of a frozen slot: it cannot know the moment the
    // switch commits. The read waits for the move's end (then 421 naming g2) or gives
    // up (503 slot_moving); never a 200 from g1.
    let source = primary_of("g1");
    let source_url = up.node_url(if source == "app1" { 1 } else { 2 });
    let (frozen_key, _) = written
        .iter()
        .find(|(k, _)| keel_core::slots::slot_of(k.as_bytes()).0 < 300)
        .expect("a key of slots 200-299");
    let (status, body) = get_json(&format!("{source_url}/v1/kv/{frozen_key}"));
    assert!(
        (status == StatusCode::MISDIRECTED_REQUEST && body["group"] == "g2")
            || (status == StatusCode::SERVICE_UNAVAILABLE && body["error"] == "slot_moving"),
        "{source} answered a read of frozen {frozen_key}: {status} {body}"
    );
    chaos(&data, &["kill", &target]);
    assert!(
        wait_until(Duration::from_secs(20), || moved(&up, 200, "g2")),
        "the move did not complete after {target}'s death: {}\n{}",
        table(&up),
        up.proc.log_report()
    );
    assert_ne!(primary_of("g2"), target, "g2 failed over");

    // The source's primary freezes (it cannot confirm the freeze), then dies: g1's next
    // primary, promoted with the move in the table, exports.
    let source = primary_of("g1");
    chaos(&data, &["pause", &source]);
    let out = client(
        &up,
        &["slots", "move", "300-399", "--to", "g2", "--no-wait"],
    );
    assert!(out.success(), "{out}");
    chaos(&data, &["kill", &source]);
    assert!(
        wait_until(Duration::from_secs(20), || moved(&up, 300, "g2")),
        "the move did not complete after {source}'s death: {}\n{}",
        table(&up),
        up.proc.log_report()
    );
    assert_ne!(primary_of("g1"), source, "g1 failed over");

    // Every key of both moves is at g2, with its value, read through the front door.
    for (k, v) in &written {
        let (node, value) = read_through(&front, k);
        assert_eq!(group_of(&node), "g2", "{k} read from {node}");
        assert_eq!(value, *v, "{k} lost in the move");
    }
    let events = up.proc.log_text();
    assert_eq!(events.matches("slots moved:").count(), 2, "{events}");
}

/// A value of `len` bytes that names `key`, so that a mix-up shows.
fn big_value(key: &str, len: usize) -> String {
    format!("{key}:").repeat(len / (key.len() + 1) + 1)[..len].to_owned()
}

/// `POST /v1/counters/{name}/incr?by=N` through `front`.
fn incr_through(front: &str, name: &str, by: i64) {
    let resp = support::http_client()
        .post(format!("{front}/v1/counters/{name}/incr?by={by}"))
        .send()
        .expect("an incr");
    assert!(resp.status().is_success(), "incr {name}: {}", resp.status());
}

/// `GET /v1/counters/{name}` through `front`: its value.
fn counter_through(front: &str, name: &str) -> i64 {
    let (status, body) = get_json(&format!("{front}/v1/counters/{name}"));
    assert_eq!(status, StatusCode::OK, "{name}: {body}");
    body["value"].as_i64().unwrap_or(i64::MIN)
}

/// Slots holding more than one request carries (six values near the largest a write
/// takes, among 300 small keys and 20 counters: over 6 MB) move in pieces, each a
/// stretch of the slots' keys; the event says how many. Moved back after some keys were
/// deleted, some written and a counter changed at the new owner, the old owner's
/// left-behind copy is replaced stretch by stretch: the deleted keys are gone there too.
#[test]
fn slots_holding_more_than_one_piece_move_in_pieces_and_replace_what_was_left() {
    let dir = tempdir();
    let data = dir.path().join("keel-data");
    let up = up_with_two_shards(&data);
    let front = up.proxy_url.clone();
    // The largest value a write takes is 1 MiB.
    let sizes = [1_040_000, 1_000_000, 900_000, 800_000, 700_000, 600_000];
    let mut written: std::collections::BTreeMap<String, String> = keys_in(1000..1100, "big", 6)
        .into_iter()
        .zip(sizes)
        .map(|(k, len)| {
            let v = big_value(&k, len);
            (k, v)
        })
        .collect();
    for k in keys_in(1000..1100, "small", 300) {
        let v = big_value(&k, 3000);
        written.insert(k, v);
    }
    for (k, v) in &written {
        let resp = put_kv(&front, k, v);
        assert!(resp.status().is_success(), "{k}: {}", resp.status());
    }
    let counters = keys_in(1000..1100, "count", 20);
    for (i, name) in counters.iter().enumerate() {
        incr_through(&front, name, i as i64 + 1);
    }

    let out = client(&up, &["slots", "move", "1000-1099", "--to", "g2"]);
    assert!(out.success(), "{out}\n{}", up.proc.log_report());
    assert!(
        out.stdout.contains("moved slots 1000-1099 from g1 to g2"),
        "{out}"
    );
    eprintln!("{}", out.stdout.trim());
    let said = up.proc.log_text();
    let pieces: Vec<u64> = said
        .lines()
        .filter(|l| l.contains("slots moved:"))
        .filter_map(|l| {
            let (_, after) = l.split_once("copied in ")?;
            after.split(' ').next()?.parse().ok()
        })
        .collect();
    eprintln!("copied in pieces: {pieces:?}");
    // Over 6 MB, each piece at most about 1.3 MB: at least five pieces.
    assert!(
        pieces.len() == 1 && pieces[0] >= 5,
        "one move, in pieces: {pieces:?}\n{said}"
    );
    for (k, v) in &written {
        let (node, value) = read_through(&front, k);
        assert_eq!(group_of(&node), "g2", "{k} read from {node}");
        assert!(
            value == *v,
            "{k} differs after the move ({} bytes)",
            value.len()
        );
    }
    for (i, name) in counters.iter().enumerate() {
        assert_eq!(counter_through(&front, name), i as i64 + 1, "{name}");
    }

    // At g2: every 37th small key and a big one deleted, a key added, a counter changed.
    let gone: Vec<String> = written
        .keys()
        .filter(|k| k.starts_with("small"))
        .step_by(37)
        .cloned()
        .chain(written.keys().find(|k| k.starts_with("big")).cloned())
        .collect();
    for k in &gone {
        let resp = support::http_client()
            .delete(format!("{front}/v1/kv/{k}"))
            .send()
            .expect("a delete");
        assert!(resp.status().is_success(), "delete {k}: {}", resp.status());
        written.remove(k);
    }
    let added = keys_in(1000..1100, "new", 1).remove(0);
    assert!(put_kv(&front, &added, "added at g2").status().is_success());
    written.insert(added, "added at g2".to_owned());
    incr_through(&front, &counters[0], 100);

    // Back to g1, which still holds the first copy of every key.
    let out = client(&up, &["slots", "move", "1000-1099", "--to", "g1"]);
    assert!(out.success(), "{out}\n{}", up.proc.log_report());
    eprintln!("{}", out.stdout.trim());
    for (k, v) in &written {
        let (node, value) = read_through(&front, k);
        assert_eq!(group_of(&node), "g1", "{k} read from {node}");
        assert!(value == *v, "{k} differs after the move back");
    }
    for k in &gone {
        let resp = support::http_client()
            .get(format!("{front}/v1/kv/{k}"))
            .send()
            .expect("a read");
        assert_eq!(
            resp.status(),
            StatusCode::NOT_FOUND,
            "{k}, deleted at g2, came back with the move"
        );
    }
    assert_eq!(counter_through(&front, &counters[0]), 101);
    assert_eq!(counter_through(&front, &counters[19]), 20);
}

/// The monitors' leader killed in the middle of a move (the target's primary frozen, so
/// the copy cannot run): the next leader finds the move in the replicated state and
/// completes it once the target answers; the slots' keys are all at the new owner.
#[test]
fn a_move_lives_through_the_death_of_the_monitors_leader() {
    let dir = tempdir();
    let data = dir.path().join("keel-data");
    let (up, urls) = up_with_two_shards_and_three_monitors(&data);
    let front = up.proxy_url.clone();
    let written = write_through(&front, 500..600, "l", 30);
    let leader = monitors_leader(&urls).expect("a leader");
    let target = primary_in(&up.monitor_url, "g2");
    chaos(&data, &["pause", &target]);
    let token = up.token_file.display().to_string();
    let out = support::run_keel(&[
        "client",
        "--monitor",
        &urls,
        "--token-file",
        &token,
        "slots",
        "move",
        "500-599",
        "--to",
        "g2",
        "--no-wait",
    ]);
    assert!(out.success(), "{out}");
    chaos(&data, &["kill", &leader]);
    chaos(&data, &["resume", &target]);
    let slots = |url: &str| try_json(&format!("{url}/v1/slots")).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(30), || {
            monitors_leader(&urls).is_some_and(|l| l != leader)
                && urls.split(',').any(|url| {
                    let t = slots(url);
                    t["moving"].is_null()
                        && t["ranges"].as_array().is_some_and(|r| {
                            r.iter().any(|r| r["group"] == "g2" && r["from"] == 500)
                        })
                })
        }),
        "the move did not complete under the next leader\n{}",
        up.proc.log_report()
    );
    for (k, v) in &written {
        let (node, value) = read_through(&front, k);
        assert_eq!(group_of(&node), "g2", "{k} read from {node}");
        assert_eq!(value, *v, "{k} lost in the move");
    }

    // A rebalance to equal shares moves 100 slots back, under the new leader.
    let out = support::run_keel(&[
        "client",
        "--monitor",
        &urls,
        "--token-file",
        &token,
        "slots",
        "rebalance",
    ]);
    assert!(out.success(), "{out}\n{}", up.proc.log_report());
    assert!(out.stdout.contains("from g2 to g1"), "{out}");
    assert!(
        out.stdout.contains("g1  8192 slots") && out.stdout.contains("g2  8192 slots"),
        "{out}"
    );
    let out = support::run_keel(&[
        "client",
        "--monitor",
        &urls,
        "--token-file",
        &token,
        "slots",
        "rebalance",
    ]);
    assert!(
        out.success() && out.stdout.contains("balanced already"),
        "{out}"
    );
}
