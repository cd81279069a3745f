//! TLS across hosts (docs/security.md): a monitor, two nodes and a proxy on TLS with
//! certificates that `keel certs` made, each checking the others against the cluster CA.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{KeelProcess, TestMonitor, free_port, run_keel, tempdir, wait_until};

/// `keel certs --dir DIR NAME…`, which must succeed.
fn certs(dir: &Path, names: &[&str]) {
    let d = dir.display().to_string();
    let mut args = vec!["certs", "--dir", &d];
    args.extend_from_slice(names);
    let out = run_keel(&args);
    assert!(out.success(), "{out}");
}

/// `--tls-cert/--tls-key/--tls-ca` for `name`, from `dir`, trusting the CA in `ca_dir`.
fn tls_flags(dir: &Path, name: &str, ca_dir: &Path) -> Vec<String> {
    vec![
        "--tls-cert".into(),
        dir.join(format!("{name}.pem")).display().to_string(),
        "--tls-key".into(),
        dir.join(format!("{name}.key")).display().to_string(),
        "--tls-ca".into(),
        ca_dir.join("ca.pem").display().to_string(),
    ]
}

/// A client that trusts only the CA in `dir` and shows no certificate.
fn client(dir: &Path) -> reqwest::blocking::Client {
    let pem = std::fs::read(dir.join("ca.pem")).expect("ca.pem");
    reqwest::blocking::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).expect("a certificate")])
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client")
}

/// Starts `keel ARGS…` and waits until `health` answers 200 to `http`.
fn start(
    name: &str,
    args: &[String],
    health: &str,
    http: &reqwest::blocking::Client,
) -> KeelProcess {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut proc = KeelProcess::spawn(name, &refs);
    let up = wait_until(support::STARTUP_TIMEOUT, || {
        assert!(proc.is_running(), "{name} exited:\n{}", proc.log_report());
        http.get(health)
            .send()
            .is_ok_and(|r| r.status() == StatusCode::OK)
    });
    assert!(up, "{name} did not answer {health}:\n{}", proc.log_report());
    proc
}

fn get_json(http: &reqwest::blocking::Client, url: &str) -> Value {
    http.get(url)
        .send()
        .and_then(|r| r.json())
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

fn node<'a>(view: &'a Value, id: &str) -> &'a Value {
    view["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["node"] == id))
        .unwrap_or(&Value::Null)
}

struct Tier {
    root: tempfile::TempDir,
    tls: PathBuf,
    secret: PathBuf,
    http: reqwest::blocking::Client,
    monitor_url: String,
    _monitor: KeelProcess,
    nodes: Vec<(String, String, KeelProcess)>,
}

impl Tier {
    fn node_args(&self, name: &str, port: u16, cert_dir: &Path) -> Vec<String> {
        let mut args: Vec<String> = [
            "node",
            "--id",
            name,
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
            &self.root.path().join(name).display().to_string(),
            "--monitor",
            &self.monitor_url,
            "--cluster-secret-file",
            &self.secret.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(tls_flags(cert_dir, name, &self.tls));
        args
    }

    fn view(&self) -> Value {
        get_json(&self.http, &format!("{}/v1/cluster", self.monitor_url))
    }
}

fn tier() -> Tier {
    let root = tempdir();
    let tls = root.path().join("tls");
    certs(&tls, &["monitor", "app1", "app2", "proxy"]);
    let secret = root.path().join("cluster.secret");
    std::fs::write(&secret, TestMonitor::SECRET).expect("secret");
    let http = client(&tls);
    let port = free_port();
    let monitor_url = format!("https://127.0.0.1:{port}");
    let mut args: Vec<String> = [
        "monitor",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data-dir",
        &root.path().join("monitor").display().to_string(),
        "--cluster-secret-file",
        &secret.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(tls_flags(&tls, "monitor", &tls));
    let monitor = start("monitor", &args, &format!("{monitor_url}/health"), &http);
    let mut tier = Tier {
        root,
        tls,
        secret,
        http,
        monitor_url,
        _monitor: monitor,
        nodes: Vec::new(),
    };
    for name in ["app1", "app2"] {
        let port = free_port();
        let url = format!("https://127.0.0.1:{port}");
        let args = tier.node_args(name, port, &tier.tls.clone());
        let proc = start(name, &args, &format!("{url}/health"), &tier.http);
        tier.nodes.push((name.to_owned(), url, proc));
        if name == "app1" {
            assert!(
                wait_until(Duration::from_secs(10), || tier.view()["primary"]["node"]
                    == "app1"),
                "no primary: {}",
                tier.view()
            );
        }
    }
    assert!(
        wait_until(
            Duration::from_secs(20),
            || node(&tier.view(), "app2")["promotable"] == true
        ),
        "app2 never became promotable over TLS: {}",
        tier.view()
    );
    tier
}

#[test]
fn a_tier_on_mutual_tls_replicates_fails_over_and_refuses_another_cas_member() {
    let mut tier = tier();
    let (app1, app2) = (tier.nodes[0].1.clone(), tier.nodes[1].1.clone());
    assert!(app1.starts_with("https://"), "{}", tier.view());
    assert_eq!(node(&tier.view(), "app1")["url"], app1);

    // Writes replicate over TLS.
    let resp = tier
        .http
        .put(format!("{app1}/v1/kv/over-tls"))
        .body("yes")
        .send()
        .expect("PUT");
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = tier
        .http
        .get(format!("{app2}/v1/kv/over-tls"))
        .send()
        .expect("GET");
    assert_eq!(resp.text().expect("body"), "yes");

    // A client that speaks plain HTTP to a TLS port gets nothing.
    let plain = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("client");
    let http_url = tier.monitor_url.replace("https://", "http://");
    assert!(plain.get(format!("{http_url}/health")).send().is_err());
    // One with the CA and no certificate may read, but not act as a member.
    let resp = tier
        .http
        .post(format!("{}/v1/register", tier.monitor_url))
        .json(&json!({"node": "app9", "url": "https://127.0.0.1:9", "incarnation": 1, "epoch": 1, "lsn": 0}))
        .send()
        .expect("POST");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // A member whose certificate another CA signed, with the right secret and trusting
    // the right CA: the monitor refuses its certificate, so it never joins.
    let other = tier.root.path().join("other-ca");
    certs(&other, &["app3"]);
    let port = free_port();
    let args = tier.node_args("app3", port, &other);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut app3 = KeelProcess::spawn("app3", &refs);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(app3.is_running(), "{}", app3.log_report());
    assert_eq!(node(&tier.view(), "app3"), &Value::Null, "{}", tier.view());
    let log = app3.log_text();
    assert!(
        log.contains("monitor unreachable") && log.contains("UnknownCA"),
        "{log}"
    );
    drop(app3);

    // A member of the right CA signing as another member: app4 with app2's certificate.
    let port = free_port();
    let mut args = tier.node_args("app4", port, &tier.tls);
    for arg in args.iter_mut() {
        *arg = arg
            .replace("app4.pem", "app2.pem")
            .replace("app4.key", "app2.key");
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut app4 = KeelProcess::spawn("app4", &refs);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(app4.is_running(), "{}", app4.log_report());
    assert_eq!(node(&tier.view(), "app4"), &Value::Null, "{}", tier.view());
    let log = app4.log_text();
    assert!(log.contains("wrong_member"), "{log}");
    drop(app4);

    // The primary dies: probes and promotion go over TLS too.
    tier.nodes[0].2.kill9();
    assert!(
        wait_until(Duration::from_secs(20), || {
            let view = tier.view();
            view["primary"]["node"] == "app2" && view["failover_in_progress"] == false
        }),
        "app2 never took over: {}",
        tier.view()
    );
    let resp = tier
        .http
        .put(format!("{app2}/v1/kv/after-failover"))
        .body("yes")
        .send()
        .expect("PUT");
    assert_eq!(resp.status(), StatusCode::OK);
}
