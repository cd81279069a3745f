//! The dashboard in a real headless Chromium (Debian's `chromium` and `chromium-driver`,
//! driven over WebDriver), against a real `keel up`: the page loads without a script
//! error and names the primary; a button is refused without the token, and with a wrong
//! one, and says so; with the token, killing the primary shows the failover in the
//! timeline and the new primary; the old primary restarted and the switchover button give
//! it the primary back. The test saves a screenshot of the page.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use support::*;

/// chromedriver on a free port, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start() -> Driver {
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian's chromium-driver; scripts/test installs it)");
        let url = format!("http://127.0.0.1:{port}");
        let up = wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "chromedriver did not listen on {port}");
        Driver { child, url }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A headless Chromium with a profile of its own, no network but this machine's.
async fn browser(driver: &str, profile: &std::path::Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-quic", "--window-size=1280,1100",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(driver)
        .await
        .expect("a Chromium session")
}

/// The text of the element with `id`, or "" while it is missing.
async fn text_of(page: &Client, id: &str) -> String {
    match page.find(Locator::Id(id)).await {
        Ok(element) => element.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Waits up to `timeout` for the element `id` to contain `wanted`; its last text.
async fn wait_text(page: &Client, id: &str, wanted: &str, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = text_of(page, id).await;
        if text.contains(wanted) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(text);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn click(page: &Client, label: &str) {
    page.find(Locator::Css(&format!("button[aria-label='{label}']")))
        .await
        .unwrap_or_else(|e| panic!("no button {label:?}: {e}"))
        .click()
        .await
        .expect("click");
}

async fn use_token(page: &Client, token: &str) {
    let field = page
        .find(Locator::Id("token"))
        .await
        .expect("the token field");
    field.clear().await.expect("clear");
    field.send_keys(token).await.expect("type");
    page.find(Locator::Css("#token-form button"))
        .await
        .expect("the token button")
        .click()
        .await
        .expect("click");
}

#[test]
fn the_dashboard_shows_the_primary_refuses_without_the_token_and_shows_a_failover() {
    let dir = tempdir();
    let tier = KeelUp::start(&dir.path().join("keel-data"), 2, &[]);
    let token = std::fs::read_to_string(&tier.token_file).expect("the admin token");
    let profile = dir.path().join("chromium");
    let driver = Driver::start();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let page = rt.block_on(browser(&driver.url, &profile));
    let outcome = rt.block_on(async {
        page.goto(&format!("{}/", tier.control_url))
            .await
            .expect("the page");
        if let Err(seen) =
            wait_text(&page, "summary", "primary: app1", Duration::from_secs(10)).await
        {
            return Err(format!("the page never named app1 primary: {seen:?}"));
        }
        let errors = page
            .execute("return document.body.dataset.errors || '0'", vec![])
            .await
            .expect("script");
        if errors != "0" {
            return Err(format!(
                "script errors on the page: {errors} ({})",
                text_of(&page, "outcome").await
            ));
        }

        // Traffic through the front door: the chart shows its rate and its p99.
        let front = format!("{}/", tier.proxy_url);
        let traffic = tokio::spawn(async move {
            let http = reqwest::Client::new();
            let until = Instant::now() + Duration::from_secs(5);
            while Instant::now() < until {
                let _ = http.get(&front).send().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let seen = wait_text(&page, "chart-now", "p99 ≤ ", Duration::from_secs(4)).await;
        traffic.abort();
        seen.map_err(|seen| format!("no p99 under traffic: {seen:?}"))?;

        // No token: refused by the page, which says what is needed.
        click(&page, "kill app1").await;
        wait_text(
            &page,
            "outcome",
            "give the admin token first",
            Duration::from_secs(5),
        )
        .await
        .map_err(|seen| format!("no refusal without a token: {seen:?}"))?;
        // A wrong one: refused by keel up, and the page says so.
        use_token(&page, "not-the-token").await;
        click(&page, "kill app1").await;
        wait_text(&page, "outcome", "refused (401)", Duration::from_secs(5))
            .await
            .map_err(|seen| format!("a wrong token was not refused: {seen:?}"))?;

        // The token: the primary killed, the failover in the timeline, the new primary
        // named, within 3 s of the click.
        use_token(&page, token.trim()).await;
        click(&page, "kill app1").await;
        let clicked = Instant::now();
        wait_text(
            &page,
            "timeline",
            "failover done: app2 is primary",
            Duration::from_secs(3),
        )
        .await
        .map_err(|seen| format!("no failover in the timeline within 3 s: {seen}"))?;
        wait_text(
            &page,
            "summary",
            "primary: app2",
            Duration::from_secs(3).saturating_sub(clicked.elapsed()) + Duration::from_millis(1100),
        )
        .await
        .map_err(|seen| format!("the new primary was not named: {seen:?}"))?;
        for step in ["killed app1", "suspected: primary app1", "promoted: app2"] {
            let timeline = text_of(&page, "timeline").await;
            if !timeline.contains(step) {
                return Err(format!("{step:?} is not in the timeline:\n{timeline}"));
            }
        }
        // The screenshot once the failover has settled, for the docs; whatever it shows.
        let _ = wait_text(
            &page,
            "summary",
            "primary: app2 (epoch 2)",
            Duration::from_secs(1),
        )
        .await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while text_of(&page, "summary")
            .await
            .contains("failover in progress")
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let png = page.screenshot().await.expect("a screenshot");
        let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
        std::fs::write(&path, png).expect("save the screenshot");

        // app1 restarted from its button rejoins as a standby; once promotable, the
        // switchover button gives it the primary back.
        click(&page, "restart app1").await;
        wait_text(&page, "outcome", "restarted app1", Duration::from_secs(15))
            .await
            .map_err(|seen| format!("app1 was not restarted: {seen:?}"))?;
        wait_text(&page, "processes", ", promotable", Duration::from_secs(20))
            .await
            .map_err(|seen| format!("app1 never became promotable: {seen}"))?;
        click(&page, "switchover to app1").await;
        if let Err(seen) =
            wait_text(&page, "summary", "primary: app1", Duration::from_secs(10)).await
        {
            let outcome = text_of(&page, "outcome").await;
            return Err(format!(
                "the switchover did not happen: {seen:?} ({outcome})"
            ));
        }
        Ok(())
    });
    let _ = rt.block_on(page.close());
    if let Err(why) = outcome {
        panic!("{why}\n{}", tier.proc.log_report());
    }
}

/// `keel dashboard` for a stack it did not start: the page and the snapshot from the
/// monitor and the proxy; process buttons answer that they need keel up; the switchover
/// is refused without the token and carried out by the monitor with it.
#[test]
fn keel_dashboard_serves_a_stack_started_elsewhere_and_switches_over() {
    let dir = tempdir();
    let tier = KeelUp::start(&dir.path().join("keel-data"), 2, &[]);
    let port = free_port();
    let url = url_for(port);
    let listen = format!("127.0.0.1:{port}");
    let token_file = tier.token_file.display().to_string();
    let mut dashboard = KeelProcess::spawn(
        "dashboard",
        &[
            "dashboard",
            "--listen",
            &listen,
            "--monitor",
            &tier.monitor_url,
            "--proxy-admin",
            &tier.proxy_admin_url,
            "--token-file",
            &token_file,
        ],
    );
    wait_for_health(&mut dashboard, &url);
    let (status, page) = get_text(&format!("{url}/"));
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("<title>keel dashboard</title>"), "{page}");
    let (_, state) = get_json(&format!("{url}/v1/state"));
    assert_eq!(state["cluster"]["primary"]["node"], "app1", "{state}");
    let names: Vec<&str> = state["processes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, ["app1", "app2"], "{state}");
    assert_eq!(
        state["backends"]["backends"].as_array().map(Vec::len),
        Some(2),
        "{state}"
    );

    let token = std::fs::read_to_string(&tier.token_file).expect("token");
    let client = http_client();
    let r = client
        .post(format!("{url}/v1/processes/app1/kill"))
        .bearer_auth(token.trim())
        .send()
        .expect("POST");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let body: serde_json::Value = r.json().expect("JSON");
    assert_eq!(body["error"], "not_supervised", "{body}");
    let r = client
        .post(format!("{url}/v1/switchover"))
        .json(&serde_json::json!({"to": "app2"}))
        .send()
        .expect("POST");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    assert!(wait_until(Duration::from_secs(20), || tier.promotable("app2")));
    let r = client
        .post(format!("{url}/v1/switchover"))
        .bearer_auth(token.trim())
        .json(&serde_json::json!({"to": "app2"}))
        .send()
        .expect("POST");
    let status = r.status();
    let body: serde_json::Value = r.json().expect("JSON");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        wait_until(Duration::from_secs(10), || tier.primary().as_deref()
            == Some("app2")),
        "the switchover did not happen\n{}",
        dashboard.log_report()
    );
    // The event reaches the dashboard's stream a moment after the monitor answers.
    assert!(
        wait_until(Duration::from_secs(5), || dashboard
            .log_text()
            .contains("failover done: app2 is primary")),
        "the monitor's events are printed\n{}",
        dashboard.log_report()
    );
}

/// Under `keel up --shards 2` the page names each group's primary and the slot table's
/// version, shows each node's group and slots, and follows a slot move and one group's
/// failover.
#[test]
fn the_dashboard_knows_groups_slot_moves_and_one_groups_failover() {
    let dir = tempdir();
    let data = dir.path().join("keel-data");
    let base = free_port_range(4);
    let monitor_port = loop {
        let p = free_port();
        if !(base..base + 4).contains(&p) {
            break p;
        }
    };
    let tier = KeelUp::start_on(&data, 2, base, monitor_port, &["--shards", "2"]);
    let token = tier.token_file.display().to_string();
    let profile = dir.path().join("chromium");
    let driver = Driver::start();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let page = rt.block_on(browser(&driver.url, &profile));
    let outcome = rt.block_on(async {
        page.goto(&format!("{}/", tier.control_url))
            .await
            .expect("the page");
        for wanted in [
            "g1 primary: app1 (epoch 1)",
            "g2 primary: app3 (epoch 1)",
            "slot table version 1",
        ] {
            wait_text(&page, "summary", wanted, Duration::from_secs(10))
                .await
                .map_err(|seen| format!("{wanted:?} not in the summary: {seen:?}"))?;
        }
        wait_text(
            &page,
            "processes",
            "g2 (slots 8192-16383 (8192 slots))",
            Duration::from_secs(5),
        )
        .await
        .map_err(|seen| format!("no group in the processes table: {seen}"))?;

        // A move of 100 slots: the page shows the table's new version.
        let out = run_keel(&[
            "client",
            "--monitor",
            &tier.monitor_url,
            "--token-file",
            &token,
            "slots",
            "move",
            "0-99",
            "--to",
            "g2",
        ]);
        if !out.success() {
            return Err(format!("the move failed: {out}"));
        }
        wait_text(
            &page,
            "summary",
            "slot table version 3",
            Duration::from_secs(5),
        )
        .await
        .map_err(|seen| format!("the move is not shown: {seen:?}"))?;
        wait_text(
            &page,
            "processes",
            "g2 (slots 0-99,8192-16383 (8292 slots))",
            Duration::from_secs(5),
        )
        .await
        .map_err(|seen| format!("g2's new slots are not shown: {seen}"))?;

        // g2's primary killed: g2 fails over, g1 stays.
        let data_arg = data.display().to_string();
        let out = run_keel(&["chaos", "--data-dir", &data_arg, "kill", "app3"]);
        if !out.success() {
            return Err(format!("the kill failed: {out}"));
        }
        wait_text(
            &page,
            "summary",
            "g2 primary: app4 (epoch 2)",
            Duration::from_secs(10),
        )
        .await
        .map_err(|seen| format!("g2's failover is not shown: {seen:?}"))?;
        let summary = text_of(&page, "summary").await;
        if !summary.contains("g1 primary: app1 (epoch 1)") {
            return Err(format!("g1 changed: {summary:?}"));
        }
        let errors = page
            .execute("return document.body.dataset.errors || '0'", vec![])
            .await
            .expect("script");
        if errors != "0" {
            return Err(format!("script errors on the page: {errors}"));
        }
        Ok(())
    });
    let _ = rt.block_on(page.close());
    if let Err(why) = outcome {
        panic!("{why}\n{}", tier.proc.log_report());
    }
}
