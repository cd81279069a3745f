//! What `keel up` says once everything runs: who runs where (with the role the monitor
//! gave, not the one hoped for), where the data and the token are, how partitions are
//! carried out, and commands to try, written for the flags this `keel up` was started
//! with.

use std::path::Path;

use keel_client::wire::ClusterView;

use super::Up;
use crate::Settings;
use crate::plan::{PROXY, Plan};

/// The monitor's port when `--monitor-port` is not given: `keel client` needs no
/// `--monitor` then.
const DEFAULT_MONITOR_PORT: u16 = 8070;

impl Up {
    /// The text to print once [`Up::start`] has succeeded, `view` being the monitor's and
    /// `pg_view` PostgreSQL's monitor's.
    pub fn banner(
        &self,
        view: Option<&ClusterView>,
        pg_view: Option<&ClusterView>,
        group_views: &[ClusterView],
    ) -> String {
        banner(&Facts {
            settings: &self.settings,
            plan: &self.plan,
            pid: &|name| self.supervisor.started(name),
            netns: self.partitions.net().map(|net| net.describe()),
            token: &self.credentials.token,
            token_note: self.token_origin.as_str(),
            view,
            pg_view,
            group_views,
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
    /// PostgreSQL's monitor's view, under `--postgres`.
    pg_view: Option<&'a ClusterView>,
    /// Each group's view, under `--shards`.
    group_views: &'a [ClusterView],
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
    let mut text = if plan.nodes.is_empty() {
        "\nkeel is up: PostgreSQL behind the proxy, no data tier (keel up --postgres has both):\n"
            .to_owned()
    } else if !plan.groups.is_empty() {
        format!(
            "\nkeel data tier is up ({} groups, each a primary with sync replication, the key space split among them):\n",
            plan.groups.len()
        )
    } else {
        format!("\nkeel data tier is up (sync replication{epoch}):\n")
    };
    let width = plan.all().map(|s| s.name.len()).max().unwrap_or(0);
    let leader = view
        .and_then(|v| v.monitors.as_ref())
        .and_then(|g| g.leader.clone());
    for spec in &plan.monitors {
        let role = if leader.as_deref() == Some(spec.name.as_str()) {
            "leader"
        } else {
            ""
        };
        text.push_str(&format!(
            "  {:width$}  {role:7}  {}{}\n",
            spec.name,
            spec.url,
            pid(&spec.name)
        ));
    }
    for (i, spec) in plan.nodes.iter().enumerate() {
        // The role the monitor gave, not the one `keel up` hoped for.
        let role = view
            .iter()
            .copied()
            .chain(facts.group_views)
            .find_map(|v| v.nodes.iter().find(|n| n.node.as_str() == spec.name))
            .map_or("?", |n| n.role.as_str());
        let group = plan
            .groups
            .iter()
            .find(|(_, members)| members.contains(&i))
            .map_or_else(String::new, |(g, _)| format!("  {g}"));
        text.push_str(&format!(
            "  {:width$}  {role:7}  {}{group}{}\n",
            spec.name,
            spec.url,
            pid(&spec.name)
        ));
    }
    if let Some(monitor) = &plan.pg_monitor {
        let epoch = facts
            .pg_view
            .map_or_else(String::new, |v| format!(", epoch {}", v.epoch));
        text.push_str(&format!(
            "PostgreSQL (sync replication{epoch}; a keeper runs each server, {} fails them over):\n",
            monitor.name
        ));
        text.push_str(&format!(
            "  {:width$}  {:7}  {}{}\n",
            monitor.name,
            "",
            monitor.url,
            pid(&monitor.name)
        ));
        for (spec, port) in plan.postgres.iter().zip(&plan.pg_servers) {
            let role = facts
                .pg_view
                .and_then(|v| v.nodes.iter().find(|n| n.node.as_str() == spec.name))
                .map_or("?", |n| n.role.as_str());
            text.push_str(&format!(
                "  {:width$}  {role:7}  postgres 127.0.0.1:{port}, keeper {}{}\n",
                spec.name,
                spec.url,
                pid(&spec.name)
            ));
        }
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
    if let Some((rw, ro)) = plan.tcp_ports {
        text.push_str(&format!(
            "  {:width$}  {:7}  postgres read-write 127.0.0.1:{rw}, read-only 127.0.0.1:{ro}\n",
            "", ""
        ));
    }
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
        _ if plan.nodes.is_empty() => text.push('\n'),
        Some(netns) => text.push_str(&format!(
            "  the monitor and the nodes in {netns}; keel chaos partition: the kernel drops packets between them\n\n"
        )),
        None => text.push_str(
            "  keel chaos partition: a fault filter in keel's own network layer (keel up --netns, as root: network namespaces)\n\n",
        ),
    }
    let monitor = if settings.monitor_port == DEFAULT_MONITOR_PORT
        && settings.monitors <= 1
        && facts.netns.is_none()
        && !settings.tls
    {
        String::new()
    } else {
        format!(" --monitor {}", plan.monitor_urls)
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
    text.push_str(&format!(
        "Dashboard: http://127.0.0.1:{}/ (live, with buttons to break things)\n",
        settings.control_port
    ));
    text.push_str("Try, in another terminal:\n");
    let front = if settings.tls {
        format!("{curl_ca} https://localhost:{}", settings.proxy_port)
    } else {
        format!(" localhost:{}", settings.proxy_port)
    };
    text.push_str(&format!(
        "  curl -s{front}/                     # hello and visits, from a service\n"
    ));
    if plan.nodes.is_empty() {
        return pg_only_tail(text, facts, &front);
    }
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
    if let Some((first, members)) = plan.groups.first() {
        // Several groups: a switchover names its node, and the slots move between them.
        let primary = members
            .first()
            .and_then(|&i| plan.nodes.get(i))
            .map_or("app1", |s| s.name.as_str());
        let data = format!(" --data-dir {}", settings.data_dir.display());
        text.push_str(&format!(
            "  keel chaos{data} kill {primary}   # {first}'s primary: {first} fails over, the other groups never notice\n"
        ));
        text.push_str(&format!(
            "  keel client{monitor}{token} slots move 0-99 --to {}   # 100 slots, moved online\n",
            plan.groups.get(1).map_or("g2", |(g, _)| g.as_str())
        ));
    } else {
        text.push_str(&format!(
            "  keel client{monitor}{token} kill-primary --watch   # a standby takes over\n"
        ));
        text.push_str(&format!(
            "  keel client{monitor}{token} failover               # and back, by hand\n"
        ));
    }
    text.push_str(&homework_steps(facts, &front));
    if plan.monitors.len() > 1 {
        let data = if token.is_empty() {
            String::new()
        } else {
            format!(" --data-dir {}", settings.data_dir.display())
        };
        let leader = leader.as_deref().unwrap_or("m1");
        text.push_str(&format!(
            "  keel chaos{data} kill {leader}   # the monitors' leader: another takes over, writes go on\n"
        ));
    }
    text.push_str(
        "The monitor's events follow. Ctrl-C stops everything (the front door first, then the monitor).\n",
    );
    text
}

/// The PostgreSQL homework's steps as commands to try, under `--postgres` (else nothing).
fn homework_steps(facts: &Facts<'_>, front: &str) -> String {
    let (settings, plan) = (facts.settings, facts.plan);
    let Some((_, ro)) = plan.tcp_ports else {
        return String::new();
    };
    let data = if settings.data_dir == Path::new("./keel-data")
        || settings.data_dir == Path::new("keel-data")
    {
        String::new()
    } else {
        format!(" --data-dir {}", settings.data_dir.display())
    };
    let password = settings.data_dir.join("pg.password");
    let pg_monitor = plan
        .pg_monitor
        .as_ref()
        .map_or_else(String::new, |m| m.url.clone());
    let primary = facts
        .pg_view
        .and_then(|v| v.primary.as_ref())
        .map_or("pg1", |p| p.node.as_str());
    let standby = plan
        .postgres
        .iter()
        .map(|s| s.name.as_str())
        .find(|name| *name != primary)
        .unwrap_or("pg2");
    let other = plan
        .postgres
        .iter()
        .map(|s| s.name.as_str())
        .find(|name| *name != primary && *name != standby)
        .unwrap_or("pg3");
    format!(
        "The PostgreSQL homework's steps (docs/postgres.md):\n\
         \x20 keel load{front_url}/data --spread-by json:backend_id,json:postgres_node --duration 60s --rate 50\n\
         \x20 keel chaos{data} kill {standby}        # a standby: reads go on through {other}\n\
         \x20 keel chaos{data} restart {standby}     # back in the read pool\n\
         \x20 keel chaos{data} kill service1   # a backend: the proxy sends / and /data to service2\n\
         \x20 keel chaos{data} kill {primary}        # the primary: its monitor promotes a standby in about a second\n\
         \x20 keel client --monitor {pg_monitor} cluster   # PostgreSQL's servers as its monitor sees them\n\
         \x20 curl -s -X POST -d '{{\"value\":\"hi\"}}'{front}/data   # a write, through the read-write port\n\
         \x20 PGPASSWORD=$(cat {pw}) psql -h 127.0.0.1 -p {ro} -U keel postgres -c 'SELECT pg_is_in_recovery()'\n\
         \x20 curl -s {admin}/v1/tcp   # each server's role, lag, sessions\n",
        front_url = front.replace(" localhost:", " http://localhost:"),
        pw = password.display(),
        admin = plan.proxy_admin,
    )
}

/// The end of `keel pg`'s banner: PostgreSQL's commands, and how it stops.
fn pg_only_tail(mut text: String, facts: &Facts<'_>, front: &str) -> String {
    text.push_str(&format!(
        "  curl -s{front}/data                  # a service, and the standby that answered\n"
    ));
    text.push_str(&homework_steps(facts, front));
    text.push_str(
        "PostgreSQL's monitor's events follow. Ctrl-C stops everything (the front door first, then the monitor, then the primary).\n",
    );
    text
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::credentials::Credentials;
    use crate::plan::{Placement, plan};

    fn settings(data_dir: &str, monitor_port: u16, tls: bool) -> Settings {
        Settings {
            nodes: 2,
            shards: 1,
            data_dir: PathBuf::from(data_dir),
            base_port: 8081,
            store: None,
            monitors: 1,
            monitor_port,
            services: 1,
            service_port: 5056,
            proxy_port: 8080,
            proxy_admin_port: 8090,
            control_port: 8060,
            verbose: false,
            netns: false,
            tls,
            restart: Default::default(),
            postgres: None,
        }
    }

    /// The banner of `settings`, the monitor naming app2 primary in epoch 4.
    fn text(settings: &Settings) -> String {
        let mut credentials = Credentials::in_dir(&settings.data_dir);
        if settings.tls {
            credentials.tls = Some(settings.data_dir.join("tls"));
        }
        let plan = plan(settings, &credentials, &Placement::loopback()).expect("a plan");
        let view: ClusterView = serde_json::from_value(serde_json::json!({
            "version": 5, "epoch": 4,
            "primary": {"node": "app2", "url": "http://127.0.0.1:8082"},
            "failover_in_progress": false, "failover": null,
            "nodes": [
                {"node": "app1", "url": "http://127.0.0.1:8081", "role": "standby", "sync": true,
                 "promotable": true, "why_not_promotable": null, "lsn": 9, "epoch": 4,
                 "healthy": true, "last_heartbeat_ms_ago": 20},
                {"node": "app2", "url": "http://127.0.0.1:8082", "role": "primary", "sync": false,
                 "promotable": false, "why_not_promotable": null, "lsn": 9, "epoch": 4,
                 "healthy": true, "last_heartbeat_ms_ago": 20}
            ]
        }))
        .expect("a cluster view");
        let pids = ["monitor", "app1", "app2", "service1", "proxy"];
        let pid = |name: &str| {
            pids.iter()
                .position(|p| *p == name)
                .and_then(|i| u32::try_from(100 + i).ok())
        };
        banner(&Facts {
            settings,
            plan: &plan,
            pid: &pid,
            netns: None,
            token: &credentials.token,
            token_note: "kept",
            view: Some(&view),
            pg_view: None,
            group_views: &[],
        })
    }

    #[test]
    fn under_postgres_the_banner_shows_the_keepers_roles_and_the_steps_for_them() {
        let mut settings = settings("./keel-data", 8070, false);
        settings.postgres = Some(crate::settings::PgPorts {
            pg_port: 5433,
            tcp_port: 5000,
            keeper_port: 7000,
        });
        let credentials = Credentials::in_dir(&settings.data_dir);
        let mut plan = plan(&settings, &credentials, &Placement::loopback()).expect("a plan");
        plan.add_postgres(
            settings.postgres.expect("ports"),
            &credentials,
            &settings.data_dir,
            &settings.data_dir.join("pg.password"),
        )
        .expect("postgres");
        let node = |name: &str, role: &str| {
            serde_json::json!({"node": name, "url": "http://127.0.0.1:7001", "role": role,
                "sync": role == "standby", "promotable": role == "standby",
                "why_not_promotable": null, "lsn": 9, "epoch": 3, "healthy": true,
                "last_heartbeat_ms_ago": 20})
        };
        let pg_view: ClusterView = serde_json::from_value(serde_json::json!({
            "version": 7, "epoch": 3,
            "primary": {"node": "pg2", "url": "http://127.0.0.1:7002"},
            "failover_in_progress": false, "failover": null,
            "nodes": [node("pg1", "standby"), node("pg2", "primary"), node("pg3", "standby")]
        }))
        .expect("a cluster view");
        let text = banner(&Facts {
            settings: &settings,
            plan: &plan,
            pid: &|_| None,
            netns: None,
            token: &credentials.token,
            token_note: "kept",
            view: None,
            pg_view: Some(&pg_view),
            group_views: &[],
        });
        for line in [
            "PostgreSQL (sync replication, epoch 3; a keeper runs each server, pgmonitor fails them over):\n",
            "  pgmonitor           http://127.0.0.1:7000\n",
            "  pg2        primary  postgres 127.0.0.1:5434, keeper http://127.0.0.1:7002\n",
            "  pg1        standby  postgres 127.0.0.1:5433, keeper http://127.0.0.1:7001\n",
            "  keel chaos kill pg1        # a standby: reads go on through pg3\n",
            "  keel chaos kill pg2        # the primary: its monitor promotes a standby",
            "  keel client --monitor http://127.0.0.1:7000 cluster ",
        ] {
            assert!(text.contains(line), "{line:?} in:\n{text}");
        }
    }

    #[test]
    fn the_banner_shows_the_roles_the_monitor_gave_with_pids() {
        let text = text(&settings("./keel-data", 8070, false));
        assert!(
            text.starts_with("\nkeel data tier is up (sync replication, epoch 4):\n"),
            "{text}"
        );
        for line in [
            "  monitor            http://127.0.0.1:8070  pid 100\n",
            "  app1      standby  http://127.0.0.1:8081  pid 101\n",
            "  app2      primary  http://127.0.0.1:8082  pid 102\n",
            "  proxy              http://127.0.0.1:8080  (admin http://127.0.0.1:8090)  pid 104\n",
            "  service1           http://127.0.0.1:5056  pid 103\n",
            "  data in ./keel-data, admin token in ./keel-data/admin.token (kept)\n",
        ] {
            assert!(text.contains(line), "{line:?} in:\n{text}");
        }
    }

    #[test]
    fn the_commands_to_try_need_no_flags_at_the_defaults() {
        let text = text(&settings("./keel-data", 8070, false));
        for line in [
            "  curl -s localhost:8080/                     # hello and visits",
            "  keel client cluster\n",
            // The primary the monitor names, not app1.
            "  curl -s localhost:8082/v1/entries\n",
            "  keel client kill-primary --watch   # a standby takes over\n",
        ] {
            assert!(text.contains(line), "{line:?} in:\n{text}");
        }
        assert!(!text.contains("TLS"), "{text}");
    }

    #[test]
    fn the_commands_to_try_name_the_monitor_the_ca_and_the_token_when_they_moved() {
        let text = text(&settings("/srv/k", 9070, true));
        for line in [
            "  TLS between every process, certificates in /srv/k/tls (keel certs adds more)\n",
            "  curl -s --cacert /srv/k/tls/ca.pem https://localhost:8080/ ",
            "  keel client --monitor https://127.0.0.1:9070 --tls-ca /srv/k/tls/ca.pem cluster\n",
            "  curl -s --cacert /srv/k/tls/ca.pem https://localhost:8082/v1/entries\n",
            "  keel client --monitor https://127.0.0.1:9070 --tls-ca /srv/k/tls/ca.pem --token-file /srv/k/admin.token kill-primary --watch",
        ] {
            assert!(text.contains(line), "{line:?} in:\n{text}");
        }
    }
}
