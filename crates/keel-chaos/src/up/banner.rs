//! What `keel up` says once everything runs: who runs where (with the role the monitor
//! gave, not the one hoped for), where the data and the token are, how partitions are
//! carried out, and commands to try, written for the flags this `keel up` was started
//! with.

use std::path::Path;

use keel_monitor::wire::ClusterView;

use super::Up;
use crate::Settings;
use crate::plan::{MONITOR, PROXY, Plan};

/// The monitor's port when `--monitor-port` is not given: `keel client` needs no
/// `--monitor` then.
const DEFAULT_MONITOR_PORT: u16 = 8070;

impl Up {
    /// The text to print once [`Up::start`] has succeeded, `view` being the monitor's.
    pub fn banner(&self, view: Option<&ClusterView>) -> String {
        banner(&Facts {
            settings: &self.settings,
            plan: &self.plan,
            pid: &|name| self.supervisor.started(name),
            netns: self.partitions.net().map(|net| net.describe()),
            token: &self.credentials.token,
            token_note: self.token_origin.as_str(),
            view,
        })
    }
}

/// What the banner is made of.
struct Facts<'a> {
    settings: &'a Settings,
    plan: &'a Plan,
    /// The pid each process was started with.
    pid: &'a dyn Fn(&str) -> Option<u32>,
    /// Where the namespaces are, under `--netns`.
    netns: Option<String>,
    token: &'a Path,
    /// `kept` or `new`.
    token_note: &'a str,
    view: Option<&'a ClusterView>,
}

fn banner(facts: &Facts<'_>) -> String {
    let Facts {
        settings,
        plan,
        view,
        ..
    } = facts;
    let pid = |name: &str| (facts.pid)(name).map_or_else(String::new, |pid| format!("  pid {pid}"));
    let epoch = view.map_or_else(String::new, |v| format!(", epoch {}", v.epoch));
    let mut text = format!("\nkeel data tier is up (sync replication{epoch}):\n");
    let width = plan.all().map(|s| s.name.len()).max().unwrap_or(0);
    text.push_str(&format!(
        "  {:width$}  {:7}  {}{}\n",
        MONITOR,
        "",
        plan.monitor.url,
        pid(MONITOR)
    ));
    for spec in &plan.nodes {
        // The role the monitor gave, not the one `keel up` hoped for.
        let role = view
            .and_then(|v| v.nodes.iter().find(|n| n.node.as_str() == spec.name))
            .map_or("?", |n| n.role.as_str());
        text.push_str(&format!(
            "  {:width$}  {role:7}  {}{}\n",
            spec.name,
            spec.url,
            pid(&spec.name)
        ));
    }
    text.push_str("front door and app tier:\n");
    text.push_str(&format!(
        "  {:width$}  {:7}  {}  (admin {}){}\n",
        PROXY,
        "",
        plan.proxy.url,
        plan.proxy_admin,
        pid(PROXY)
    ));
    for spec in &plan.services {
        text.push_str(&format!(
            "  {:width$}  {:7}  {}{}\n",
            spec.name,
            "",
            spec.url,
            pid(&spec.name)
        ));
    }
    text.push_str(&format!(
        "  data in {}, admin token in {} ({})\n",
        settings.data_dir.display(),
        facts.token.display(),
        facts.token_note
    ));
    if settings.tls {
        text.push_str(&format!(
            "  TLS between every process, certificates in {} (keel certs adds more)\n",
            settings.data_dir.join("tls").display()
        ));
    }
    match &facts.netns {
        Some(netns) => text.push_str(&format!(
            "  the monitor and the nodes in {netns}; keel chaos partition: the kernel drops packets between them\n\n"
        )),
        None => text.push_str(
            "  keel chaos partition: a fault filter in keel's own network layer (keel up --netns, as root: network namespaces)\n\n",
        ),
    }
    let monitor = if settings.monitor_port == DEFAULT_MONITOR_PORT
        && facts.netns.is_none()
        && !settings.tls
    {
        String::new()
    } else {
        format!(" --monitor {}", plan.monitor.url)
    };
    // With --tls, the CA that the client checks the tier's certificates against.
    let (monitor, curl_ca) = if settings.tls {
        let ca = settings.data_dir.join("tls").join("ca.pem");
        (
            format!("{monitor} --tls-ca {}", ca.display()),
            format!(" --cacert {}", ca.display()),
        )
    } else {
        (monitor, String::new())
    };
    let token = if settings.data_dir == Path::new("./keel-data")
        || settings.data_dir == Path::new("keel-data")
    {
        String::new()
    } else {
        format!(" --token-file {}", facts.token.display())
    };
    let primary_url = view
        .and_then(|v| v.primary.as_ref())
        .and_then(|p| plan.nodes.iter().find(|s| s.name == p.node.as_str()))
        .or(plan.nodes.first())
        .map_or_else(String::new, |s| s.url.clone());
    text.push_str("Try, in another terminal:\n");
    let front = if settings.tls {
        format!("{curl_ca} https://localhost:{}", settings.proxy_port)
    } else {
        format!(" localhost:{}", settings.proxy_port)
    };
    text.push_str(&format!(
        "  curl -s{front}/                     # hello and visits, from a service\n"
    ));
    text.push_str(&format!(
        "  curl -s{front}/v1/counters/visits   # the data tier, through the proxy\n"
    ));
    text.push_str(&format!("  keel client{monitor} cluster\n"));
    text.push_str(&format!("  keel client{monitor} set greeting=hello\n"));
    text.push_str(&format!("  keel client{monitor} state all\n"));
    // `localhost:PORT` as in the other lines, unless the node has an address of its own.
    let primary_url = primary_url
        .replace("http://127.0.0.1:", "localhost:")
        .replace("https://127.0.0.1:", "https://localhost:");
    text.push_str(&format!("  curl -s{curl_ca} {primary_url}/v1/entries\n"));
    text.push_str(&format!(
        "  keel client{monitor}{token} kill-primary --watch   # a standby takes over\n"
    ));
    text.push_str(&format!(
        "  keel client{monitor}{token} failover               # and back, by hand\n"
    ));
    text.push_str(
        "The monitor's events follow. Ctrl-C stops everything (the front door first, then the monitor).\n",
    );
    text
}
