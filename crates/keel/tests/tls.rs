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

    // The proxy follows the monitor over TLS, as a member, and serves its front door on
    // TLS: a client trusting the CA, with no certificate of its own, reaches the
    // primary through it.
    let (proxy_port, proxy_admin) = (free_port(), free_port());
    let mut args: Vec<String> = [
        "proxy",
        "--listen",
        &format!("127.0.0.1:{proxy_port}"),
        "--admin",
        &format!("127.0.0.1:{proxy_admin}"),
        "--cluster",
        &tier.monitor_url,
        "--cluster-secret-file",
        &tier.secret.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(tls_flags(&tier.tls, "proxy", &tier.tls));
    let admin = format!("https://127.0.0.1:{proxy_admin}");
    let front = format!("https://127.0.0.1:{proxy_port}");
    let _proxy = start("proxy", &args, &format!("{admin}/health"), &tier.http);
    assert!(
        wait_until(Duration::from_secs(10), || {
            get_json(&tier.http, &format!("{admin}/v1/route"))["primary"]["node"] == "app1"
        }),
        "the proxy never learnt the primary: {}",
        get_json(&tier.http, &format!("{admin}/v1/route"))
    );
    let resp = tier
        .http
        .put(format!("{front}/v1/kv/through-proxy"))
        .body("over tls")
        .send()
        .expect("PUT through the proxy");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["keel-node"], "app1");
    let resp = tier
        .http
        .get(format!("{front}/v1/kv/through-proxy"))
        .send()
        .expect("GET through the proxy");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["keel-node"], "app1");
    assert_eq!(resp.text().expect("body"), "over tls");
    // Plain HTTP on the proxy's TLS port gets nothing.
    let plain_front = front.replace("https://", "http://");
    assert!(
        plain
            .get(format!("{plain_front}/v1/kv/through-proxy"))
            .send()
            .is_err()
    );

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
    // The first write may come while app1 is still being dropped from the sync set: a
    // 503 with Retry-After that says nothing was written, as a client is told. It goes
    // through once the drop is recorded.
    let mut refusals = Vec::new();
    let written = wait_until(Duration::from_secs(5), || {
        let resp = tier
            .http
            .put(format!("{app2}/v1/kv/after-failover"))
            .body("yes")
            .send()
            .expect("PUT");
        if resp.status() == StatusCode::OK {
            return true;
        }
        let status = resp.status();
        let retry_after = resp.headers().contains_key("retry-after");
        let body: serde_json::Value = resp.json().unwrap_or_default();
        assert!(
            status == StatusCode::SERVICE_UNAVAILABLE && retry_after && body["written"] == false,
            "a write after the failover got {status} {body}"
        );
        refusals.push(body["error"].to_string());
        std::thread::sleep(Duration::from_millis(50));
        false
    });
    assert!(written, "app2 never took the write: {refusals:?}");

    // Through the proxy, requests now reach app2, over TLS.
    let mut last = String::new();
    let through = wait_until(Duration::from_secs(10), || {
        match tier.http.get(format!("{front}/v1/kv/through-proxy")).send() {
            Ok(resp) => {
                let node = resp.headers().get("keel-node").cloned();
                last = format!("{} {:?}", resp.status(), node);
                resp.status() == StatusCode::OK && node.is_some_and(|n| n == "app2")
            }
            Err(e) => {
                last = e.to_string();
                false
            }
        }
    });
    assert!(through, "the proxy never reached app2: last answer {last}");
    let resp = tier
        .http
        .put(format!("{front}/v1/kv/through-proxy-after"))
        .body("yes")
        .send()
        .expect("PUT through the proxy");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["keel-node"], "app2");
}

/// Starts `keel proxy --config FILE` on TLS as `proxy` (its certificate in `tls`), the
/// file holding `body` after its `listen` and `admin`; returns the front door's URL, the
/// admin API's, and the process.
fn start_proxy(
    root: &Path,
    name: &str,
    tls: &Path,
    body: &str,
    http: &reqwest::blocking::Client,
) -> (String, String, KeelProcess) {
    let (port, admin_port) = (free_port(), free_port());
    let config = root.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!("listen = \"127.0.0.1:{port}\"\nadmin = \"127.0.0.1:{admin_port}\"\n{body}"),
    )
    .expect("write the proxy's configuration");
    let mut args = vec![
        "proxy".to_owned(),
        "--config".to_owned(),
        config.display().to_string(),
    ];
    args.extend(tls_flags(tls, "proxy", tls));
    let admin = format!("https://127.0.0.1:{admin_port}");
    let proc = start(name, &args, &format!("{admin}/health"), http);
    (format!("https://127.0.0.1:{port}"), admin, proc)
}

/// Backend `name` as the proxy's admin API describes it.
fn backend_state(http: &reqwest::blocking::Client, admin: &str, name: &str) -> Value {
    let all = get_json(http, &format!("{admin}/v1/backends"));
    all["backends"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["name"] == name))
        .cloned()
        .unwrap_or(Value::Null)
}

#[test]
fn a_proxy_balances_over_https_backends_and_never_uses_one_another_ca_signed() {
    let root = tempdir();
    let tls = root.path().join("tls");
    certs(&tls, &["b1", "b2", "proxy"]);
    let other = root.path().join("other-ca");
    certs(&other, &["b3"]);
    let http = client(&tls);
    // Three nodes on TLS as the pool's backends; b3's certificate is another CA's.
    let mut backends = Vec::new();
    for (name, dir) in [("b1", &tls), ("b2", &tls), ("b3", &other)] {
        let port = free_port();
        let url = format!("https://127.0.0.1:{port}");
        let mut args: Vec<String> = [
            "node",
            "--id",
            name,
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
            &root.path().join(name).display().to_string(),
            "--role",
            "primary",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(tls_flags(dir, name, dir));
        let proc = start(name, &args, &format!("{url}/health"), &client(dir));
        backends.push((name, url, proc));
    }
    let blocks: String = backends
        .iter()
        .map(|(name, url, _)| format!("[[backend]]\nname = \"{name}\"\nurl = \"{url}\"\n"))
        .collect();

    // Passive health only: the request b3 is picked for fails at its handshake, which
    // ejects b3, and goes to another backend at once.
    let (front, admin, _passive) = start_proxy(
        root.path(),
        "passive",
        &tls,
        &format!("[health]\ninterval = \"0s\"\n{blocks}"),
        &http,
    );
    let mut seen: std::collections::HashMap<String, usize> = Default::default();
    for _ in 0..20 {
        let resp = http
            .get(format!("{front}/health"))
            .send()
            .expect("GET through the proxy");
        assert_eq!(resp.status(), StatusCode::OK);
        let name = resp
            .headers()
            .get("keel-backend")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        *seen.entry(name).or_default() += 1;
    }
    assert_eq!(seen.get("b3"), None, "{seen:?}");
    let (b1, b2) = (seen.get("b1"), seen.get("b2"));
    assert!(
        b1.is_some_and(|&n| n >= 8) && b2.is_some_and(|&n| n >= 8),
        "balanced over b1 and b2: {seen:?}"
    );
    let b3 = backend_state(&http, &admin, "b3");
    assert_eq!(b3["state"], "ejected", "{b3}");
    assert_eq!(b3["connect_failures"], 1, "{b3}");
    assert_eq!(b3["responses"]["2xx"], 0, "{b3}");

    // Active checks go over TLS too: b1 and b2 pass theirs, b3 fails its own and is
    // taken down before any request is sent to it.
    let (_, admin, _checked) = start_proxy(
        root.path(),
        "checked",
        &tls,
        &format!("[health]\ninterval = \"200ms\"\nfast_interval = \"100ms\"\n{blocks}"),
        &http,
    );
    assert!(
        wait_until(Duration::from_secs(10), || backend_state(
            &http, &admin, "b3"
        )["state"]
            == "down"),
        "b3 passed its checks: {}",
        backend_state(&http, &admin, "b3")
    );
    let b3 = backend_state(&http, &admin, "b3");
    assert_eq!(b3["why"], "3 failed checks", "{b3}");
    assert_eq!(b3["connect_failures"], 0, "{b3}");
    for name in ["b1", "b2"] {
        let b = backend_state(&http, &admin, name);
        assert_eq!(b["state"], "up", "{b}");
    }

    // A proxy without TLS of its own refuses an https:// backend, and says what to do.
    let out = run_keel(&[
        "proxy",
        "--backend",
        &backends[0].1,
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
        "--admin",
        &format!("127.0.0.1:{}", free_port()),
    ]);
    assert!(!out.success(), "{out}");
    assert!(
        out.stderr.contains("--backend[0].url") && out.stderr.contains("--tls-cert"),
        "{out}"
    );
}
