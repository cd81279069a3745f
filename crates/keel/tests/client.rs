//! `keel client` against a real primary/standby pair: the seed's `-get_state`,
//! `-update -file` and `-kill-primary`, plus set/get/incr and the errors a person sees.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::{Output, StatusCode, TestNode};

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

/// A primary `app1` replicating synchronously to a standby `app2`, both with the admin
/// token, in a temp dir that also holds `keel-data/admin.token` (where `keel client`
/// looks by default when run in that dir).
struct Pair {
    dir: tempfile::TempDir,
    primary: TestNode,
    standby: TestNode,
}

impl Pair {
    fn start() -> Pair {
        let dir = support::tempdir();
        let token_dir = dir.path().join("keel-data");
        std::fs::create_dir_all(&token_dir).expect("create keel-data");
        let token_file = token_dir.join("admin.token");
        std::fs::write(&token_file, TOKEN).expect("write token");
        let token_arg = token_file.display().to_string();
        let standby = TestNode::standby(
            "app2",
            dir.path().join("app2"),
            &["--token-file", &token_arg],
        );
        let primary = TestNode::primary(
            "app1",
            dir.path().join("app1"),
            std::slice::from_ref(&standby.url),
            &["--token-file", &token_arg],
        );
        Pair {
            dir,
            primary,
            standby,
        }
    }

    fn token_file(&self) -> PathBuf {
        self.dir.path().join("keel-data").join("admin.token")
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write file");
        path
    }
}

/// `keel client --node <node> <args…>`, run in `cwd` (a dir without `keel-data` unless
/// the test wants one).
fn client_in(cwd: &Path, node: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut all = vec!["client", "--node", node];
    all.extend_from_slice(args);
    support::run_keel_in(&all, env, Some(cwd))
}

fn client(node: &str, args: &[&str]) -> Output {
    let empty = support::tempdir();
    client_in(empty.path(), node, args, &[])
}

fn health_lsn(node: &TestNode) -> u64 {
    node.health()["lsn"].as_u64().expect("lsn in /health")
}

#[test]
fn update_prints_the_map_and_state_shows_it_on_both_nodes() {
    let pair = Pair::start();
    let file = pair.file(
        "update_file",
        "id=999\nname=Paola\n\n# the seed's example\n",
    );

    let out = client(
        &pair.primary.url,
        &["update", "--file", &file.display().to_string()],
    );
    assert!(out.success(), "{out}");
    assert!(out.stdout.starts_with("app1 (primary, epoch "), "{out}");
    assert!(out.stdout.contains("  id   = 999\n"), "{out}");
    assert!(out.stdout.contains("  name = Paola\n"), "{out}");

    // Sync replication: acknowledged means the standby has it.
    let out = client(&pair.primary.url, &["state", "standby"]);
    assert!(out.success(), "{out}");
    assert!(out.stdout.starts_with("app2 (standby, epoch "), "{out}");
    assert!(out.stdout.contains(&pair.standby.url), "{out}");
    assert!(out.stdout.contains("  name = Paola\n"), "{out}");

    // Asked through the standby, `state primary` finds the primary it names.
    let out = client(&pair.standby.url, &["state", "primary"]);
    assert!(out.success(), "{out}");
    assert!(out.stdout.starts_with("app1 (primary, "), "{out}");
    assert!(!out.stdout.contains("app2"), "{out}");

    let out = client(&pair.primary.url, &["--json", "state", "all"]);
    assert!(out.success(), "{out}");
    let nodes: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON output");
    let nodes = nodes.as_array().expect("an array of nodes");
    assert_eq!(nodes.len(), 2, "{out}");
    assert_eq!(nodes[0]["node"], "app1");
    assert_eq!(nodes[1]["node"], "app2");
    for node in nodes {
        assert_eq!(node["entries"]["id"], "999", "{out}");
        assert_eq!(node["entries"]["name"], "Paola", "{out}");
    }
}

#[test]
fn update_with_a_malformed_line_names_it_and_sends_nothing() {
    let pair = Pair::start();
    let file = pair.file(
        "bad_update",
        "id=1\n# fine\nthis line has no equals\nname=x\n",
    );
    let before = health_lsn(&pair.primary);

    let out = client(
        &pair.primary.url,
        &["update", "--file", &file.display().to_string()],
    );
    assert!(!out.success(), "{out}");
    assert!(
        out.stderr.contains(&format!("{}:3:", file.display())),
        "the error names the file and line 3: {out}"
    );
    assert!(out.stderr.contains("nothing was sent"), "{out}");

    assert_eq!(health_lsn(&pair.primary), before, "nothing was written");
    assert_eq!(support::entries(&pair.primary.url), serde_json::json!({}));
}

#[test]
fn set_get_and_incr_round_trip_and_writes_to_a_standby_reach_the_primary() {
    let pair = Pair::start();

    // Sent to the standby: its 421 names the primary, and the client follows it once.
    let out = client(&pair.standby.url, &["set", "greeting=hello", "path=a/b=c"]);
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("greeting = hello (version "), "{out}");
    assert!(out.stdout.contains("path = a/b=c (version "), "{out}");

    let out = client(&pair.primary.url, &["get", "greeting"]);
    assert!(out.success(), "{out}");
    assert_eq!(out.stdout, "hello\n");
    let out = client(&pair.standby.url, &["get", "path"]);
    assert!(out.success(), "{out}");
    assert_eq!(out.stdout, "a/b=c\n");

    let out = client(&pair.primary.url, &["get"]);
    assert!(out.success(), "{out}");
    let keys: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(keys, ["greeting", "path"], "{out}");

    let out = client(&pair.primary.url, &["get", "missing"]);
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("missing"), "{out}");
    assert!(out.stderr.contains("404"), "{out}");

    let out = client(&pair.primary.url, &["incr", "visits", "--by", "5"]);
    assert!(out.success(), "{out}");
    assert_eq!(out.stdout.trim(), "5");
    let out = client(&pair.standby.url, &["incr", "visits"]);
    assert!(out.success(), "{out}");
    assert_eq!(out.stdout.trim(), "6");
    let out = client(&pair.primary.url, &["incr", "visits", "--by", "-2"]);
    assert!(out.success(), "{out}");
    assert_eq!(out.stdout.trim(), "4");
}

#[test]
fn a_bad_pair_is_refused_before_anything_is_sent() {
    let pair = Pair::start();
    let before = health_lsn(&pair.primary);
    let out = client(&pair.primary.url, &["set", "good=1", "no-equals-sign"]);
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("no-equals-sign"), "{out}");
    assert!(out.stderr.contains("nothing was sent"), "{out}");
    assert_eq!(health_lsn(&pair.primary), before, "nothing was written");
}

#[test]
fn nothing_listening_gives_a_message_that_says_what_to_do() {
    let url = support::url_for(support::free_port());
    let out = client(&url, &["state"]);
    assert!(!out.success(), "{out}");
    assert!(
        out.stderr
            .contains(&format!("cannot reach {url}: connection refused")),
        "{out}"
    );
    assert!(out.stderr.contains("keel up"), "{out}");
}

#[test]
fn kill_primary_with_a_wrong_token_is_refused_and_the_primary_lives() {
    let mut pair = Pair::start();
    let empty = support::tempdir();
    let out = client_in(
        empty.path(),
        &pair.standby.url,
        &["kill-primary"],
        &[("KEEL_TOKEN", "not-the-token-but-long-enough")],
    );
    assert!(!out.success(), "{out}");
    assert!(
        out.stderr
            .contains("was refused by app1: check --token-file or KEEL_TOKEN"),
        "{out}"
    );
    assert!(pair.primary.proc.is_running());
    assert_eq!(pair.primary.health()["role"], "primary");
}

#[test]
fn kill_primary_without_a_token_says_where_to_find_one() {
    let pair = Pair::start();
    let empty = support::tempdir();
    let out = client_in(empty.path(), &pair.primary.url, &["kill-primary"], &[]);
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("no admin token"), "{out}");
    assert!(out.stderr.contains("--token-file"), "{out}");
}

#[test]
fn kill_primary_ends_the_primary_process_and_the_standby_keeps_its_data() {
    let mut pair = Pair::start();
    let out = client(&pair.primary.url, &["set", "kept=yes"]);
    assert!(out.success(), "{out}");

    // Through the standby, with the token found in ./keel-data/admin.token.
    let out = client_in(pair.dir.path(), &pair.standby.url, &["kill-primary"], &[]);
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("killed app1"), "{out}");

    let status = pair
        .primary
        .proc
        .wait_timeout(Duration::from_secs(5))
        .expect("the primary process ended");
    assert!(!status.success(), "killed, not a clean exit: {status:?}");
    assert!(pair.standby.proc.is_running());

    // The seed's `-get_state=standby` after the kill: the standby still shows the data.
    let out = client(&pair.standby.url, &["get", "kept"]);
    assert!(out.success(), "{out}");
    assert_eq!(out.stdout, "yes\n");
    let out = client(&pair.standby.url, &["state", "standby"]);
    assert!(out.success(), "{out}");
    assert!(out.stdout.starts_with("app2 (standby"), "{out}");

    // And the token file flag works too: a second kill finds no primary to kill.
    let token = pair.token_file().display().to_string();
    let out = client(&pair.primary.url, &["--token-file", &token, "kill-primary"]);
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("cannot reach"), "{out}");
    let (status, _) = support::get_json(&format!("{}/health", pair.standby.url));
    assert_eq!(status, StatusCode::OK);
}
