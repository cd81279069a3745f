//! What `keel up` starts: the monitor, the nodes, the app services and the proxy in front
//! of them, with their ports and command lines, checked before anything runs.
//!
//! Everything listens on 127.0.0.1, except under `keel up --netns`: then the monitor and
//! the nodes each run in a network namespace of their own and listen on its address
//! ([`Placement`]), on the same ports, while the services and the proxy stay on
//! 127.0.0.1 and reach them through the bridge.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::time::Duration;

use keel_core::slots::GroupId;

use crate::Settings;
use crate::credentials::Credentials;

/// Why the plan cannot run: ports out of range, overlapping, or taken. Each names the
/// flag that moves the ports, since changing it is the way out.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// A range of ports starts at 0 or runs past 65535.
    #[error("{flag} {first} leaves no room for {count} port(s) (ports must be 1 to 65535)")]
    NoRoom {
        flag: &'static str,
        first: u16,
        count: u16,
    },
    /// Two ranges of ports share a port.
    #[error(
        "{flag} {first} overlaps the ports of {other} {other_first} ({other_count} port(s) from there); pick another"
    )]
    Overlap {
        flag: &'static str,
        first: u16,
        other: &'static str,
        other_first: u16,
        other_count: u16,
    },
    /// Something listens on a port of the plan already.
    #[error(
        "port {port} (for {name}) is already in use on 127.0.0.1 — is another `keel up` running? \
         stop it, or pick other ports with {flag}"
    )]
    Taken {
        port: u16,
        name: String,
        flag: &'static str,
    },
    /// A port of the plan cannot be listened on, for another reason than its being taken.
    #[error("cannot use port {port} for {name}")]
    Unusable {
        port: u16,
        name: String,
        source: std::io::Error,
    },
}

/// The name of the monitor in the output and the supervisor.
pub const MONITOR: &str = "monitor";
/// The name of the proxy.
pub const PROXY: &str = "proxy";

/// One process to start.
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: String,
    pub port: u16,
    pub url: String,
    /// Where it answers `GET /health` once it is up.
    pub health: String,
    /// The flag that moves its port, for the message when the port is taken.
    pub port_flag: &'static str,
    pub args: Vec<String>,
    /// The network namespace it runs in (`keel up --netns`), else `None`: this one's.
    pub netns: Option<String>,
    /// Whether `keel chaos` signals its children (and theirs) with it: a keeper's
    /// PostgreSQL server and its backends, which die, freeze and thaw with it as a
    /// machine's processes do.
    pub whole_tree: bool,
    /// How long it may take to answer its health check once started.
    pub startup: Duration,
}

/// Where each process of the data tier runs: its address and network namespace. Empty
/// (everything on 127.0.0.1, in this namespace) unless `keel up --netns`.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    by_name: BTreeMap<String, (Ipv4Addr, String)>,
}

impl Placement {
    /// Everything on 127.0.0.1.
    pub fn loopback() -> Placement {
        Placement::default()
    }

    /// Process `name` listens on `addr` inside the network namespace `netns`.
    pub fn insert(&mut self, name: &str, addr: Ipv4Addr, netns: &str) {
        self.by_name
            .insert(name.to_owned(), (addr, netns.to_owned()));
    }

    pub fn host(&self, name: &str) -> IpAddr {
        self.by_name
            .get(name)
            .map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |(addr, _)| {
                IpAddr::V4(*addr)
            })
    }

    fn netns(&self, name: &str) -> Option<String> {
        self.by_name.get(name).map(|(_, ns)| ns.clone())
    }
}

/// The names of the data tier's processes, the monitors first: what `keel up --netns`
/// gives a namespace each, and what a partition may cut.
pub fn data_tier_names(nodes: u16, monitors: u16) -> Vec<String> {
    monitor_names(monitors)
        .into_iter()
        .chain((1..=nodes).map(node_name))
        .collect()
}

/// The monitors' names: `monitor` alone, `m1..mN` in a group.
pub fn monitor_names(monitors: u16) -> Vec<String> {
    if monitors <= 1 {
        vec![MONITOR.to_owned()]
    } else {
        (1..=monitors).map(|k| format!("m{k}")).collect()
    }
}

/// Whether `name` is one of `keel up`'s monitors (`monitor`, or `m1`, `m2`…).
pub fn is_monitor(name: &str) -> bool {
    name == MONITOR
        || name
            .strip_prefix('m')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn node_name(k: u16) -> String {
    format!("app{k}")
}

/// Everything `keel up` starts.
#[derive(Debug)]
pub struct Plan {
    /// The monitor, or `m1..mN` replicating with Raft.
    pub monitors: Vec<Spec>,
    /// Every monitor's URL, separated by commas: what the nodes, the proxy and the
    /// clients are told.
    pub monitor_urls: String,
    /// `app1..appN`, in that order.
    pub nodes: Vec<Spec>,
    /// Under `--shards`, each group and its nodes (indexes into `nodes`); empty with one
    /// group.
    pub groups: Vec<(GroupId, Vec<usize>)>,
    /// `service1..serviceN`.
    pub services: Vec<Spec>,
    /// The front door: `/v1/…` to the primary, the rest over the services.
    pub proxy: Spec,
    /// The proxy's admin API.
    pub proxy_admin: String,
    /// The PostgreSQL group's monitor under `--postgres` ([`Plan::add_postgres`]).
    pub pg_monitor: Option<Spec>,
    /// The keepers of `pg1..pg3` under `--postgres`, else none.
    pub postgres: Vec<Spec>,
    /// The ports of the keepers' servers, in the keepers' order.
    pub pg_servers: Vec<u16>,
    /// The proxy's read-write and read-only ports under `--postgres`.
    pub tcp_ports: Option<(u16, u16)>,
}

/// How many PostgreSQL servers `keel up --postgres` runs: a primary and two standbys.
pub const PG_SERVERS: u16 = 3;

/// The name of the PostgreSQL group's monitor.
pub const PG_MONITOR: &str = "pgmonitor";

/// How long a process may take to answer its health check once started.
pub const STARTUP: Duration = Duration::from_secs(10);

/// How long a keeper may take: it makes its server first (initdb, or a copy of the
/// primary's by pg_basebackup, or a rewind), and starts it.
pub const KEEPER_STARTUP: Duration = Duration::from_secs(60);

/// Whether `name` is one of `keel up --postgres`'s servers, or its keeper (`pg1`, `pg2`…).
pub fn is_postgres(name: &str) -> bool {
    name.strip_prefix("pg")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

impl Plan {
    /// Everything, in start order.
    pub fn all(&self) -> impl Iterator<Item = &Spec> {
        self.monitors
            .iter()
            .chain(&self.nodes)
            .chain(&self.pg_monitor)
            .chain(&self.postgres)
            .chain(&self.services)
            .chain(std::iter::once(&self.proxy))
    }

    /// Adds PostgreSQL: a monitor of its own (`pgmonitor`: a monitor runs one group, and
    /// the data tier is another) and a keeper for each of pg1..pg3, which makes, runs and
    /// fails over its server ([`keel_pg::keeper`]), pg1's with `--init` so that it makes
    /// the cluster the others copy; the proxy's TCP pool over the servers on
    /// `ports.tcp_port` and the next, following the PostgreSQL monitor; the services'
    /// `/data` on that pool. Every server's password is in `password_file`.
    pub fn add_postgres(
        &mut self,
        ports: crate::settings::PgPorts,
        credentials: &Credentials,
        data_dir: &std::path::Path,
        password_file: &std::path::Path,
    ) -> Result<(), PlanError> {
        let servers = PG_SERVERS;
        let ranges = [
            ("--pg-port", ports.pg_port, servers),
            ("--tcp-port", ports.tcp_port, 2),
            ("--keeper-port", ports.keeper_port, servers + 1),
        ];
        for (flag, first, count) in ranges {
            if first == 0 || u32::from(first) + u32::from(count) > 65_536 {
                return Err(PlanError::NoRoom { flag, first, count });
            }
        }
        // The other processes' ports, and the proxy's admin port.
        let admin = self
            .proxy_admin
            .rsplit(':')
            .next()
            .and_then(|p| p.parse::<u16>().ok());
        let taken: Vec<(u16, u16, &'static str)> = self
            .all()
            .map(|s| (s.port, 1, s.port_flag))
            .chain(admin.map(|p| (p, 1, "--proxy-admin-port")))
            .collect();
        for (i, (flag, first, count)) in ranges.iter().enumerate() {
            let others = ranges[..i].iter().map(|(f, p, c)| (*p, *c, *f));
            for (other_first, other_count, other) in taken.iter().copied().chain(others) {
                let (a, b) = (u32::from(*first), u32::from(other_first));
                if a < b + u32::from(other_count) && b < a + u32::from(*count) {
                    return Err(PlanError::Overlap {
                        flag,
                        first: *first,
                        other,
                        other_first,
                        other_count,
                    });
                }
            }
        }
        let (rw, ro) = (ports.tcp_port, ports.tcp_port + 1);
        let token = path_arg(&credentials.token);
        let secret = path_arg(&credentials.secret);
        // Plain HTTP on 127.0.0.1, signed with the cluster secret: keepers do not speak
        // TLS (docs/postgres.md, "Not yet").
        let monitor_url = format!("http://127.0.0.1:{}", ports.keeper_port);
        self.pg_monitor = Some(Spec {
            name: PG_MONITOR.to_owned(),
            port: ports.keeper_port,
            url: monitor_url.clone(),
            health: format!("{monitor_url}/health"),
            port_flag: "--keeper-port",
            args: vec![
                "monitor".into(),
                "--listen".into(),
                format!("127.0.0.1:{}", ports.keeper_port),
                "--data-dir".into(),
                path_arg(&data_dir.join(PG_MONITOR)),
                "--token-file".into(),
                token.clone(),
                "--cluster-secret-file".into(),
                secret.clone(),
            ],
            netns: None,
            whole_tree: false,
            startup: STARTUP,
        });
        self.postgres = (1..=servers)
            .map(|k| {
                let name = format!("pg{k}");
                let port = ports.keeper_port + k;
                let url = format!("http://127.0.0.1:{port}");
                let mut args: Vec<String> = vec![
                    "keeper".into(),
                    "--id".into(),
                    name.clone(),
                    "--listen".into(),
                    format!("127.0.0.1:{port}"),
                    "--monitor".into(),
                    monitor_url.clone(),
                    "--data-dir".into(),
                    path_arg(data_dir),
                    "--pg-port".into(),
                    (ports.pg_port + k - 1).to_string(),
                    "--token-file".into(),
                    token.clone(),
                    "--cluster-secret-file".into(),
                    secret.clone(),
                ];
                if k == 1 {
                    // Only while the monitor never had a primary; later starts copy or rewind.
                    args.push("--init".into());
                }
                Spec {
                    health: format!("{url}/health"),
                    port_flag: "--keeper-port",
                    netns: None,
                    // Its server and the server's backends die, freeze and thaw with it,
                    // as a machine does.
                    whole_tree: true,
                    // Making a cluster (initdb) or copying one (pg_basebackup) first.
                    startup: KEEPER_STARTUP,
                    name,
                    port,
                    url,
                    args,
                }
            })
            .collect();
        self.pg_servers = (0..servers).map(|k| ports.pg_port + k).collect();
        let password = path_arg(password_file);
        let servers: Vec<String> = self
            .pg_servers
            .iter()
            .zip(1..)
            .map(|(port, k)| format!("pg{k}=127.0.0.1:{port}"))
            .collect();
        self.proxy.args.extend([
            "--tcp".into(),
            servers.join(","),
            "--tcp-read-write".into(),
            format!("127.0.0.1:{rw}"),
            "--tcp-read-only".into(),
            format!("127.0.0.1:{ro}"),
            "--tcp-password-file".into(),
            password.clone(),
            // The read-write port goes to the server the monitor names primary, not to
            // whichever says it is out of recovery.
            "--tcp-monitor".into(),
            monitor_url,
        ]);
        for service in &mut self.services {
            service.args.extend([
                "--postgres-read".into(),
                format!("postgres://{}@127.0.0.1:{ro}/postgres", keel_pg::USER),
                "--postgres-write".into(),
                format!("postgres://{}@127.0.0.1:{rw}/postgres", keel_pg::USER),
                "--postgres-password-file".into(),
                password.clone(),
            ]);
            // /data is PostgreSQL's now; the visits counter stays in the data tier.
        }
        self.tcp_ports = Some((rw, ro));
        Ok(())
    }
}

/// The monitor and the nodes with their command lines, each placed by `placement`. No
/// node gets a role: the monitor assigns them.
pub fn plan(
    args: &Settings,
    credentials: &Credentials,
    placement: &Placement,
) -> Result<Plan, PlanError> {
    let n = args.nodes;
    let has_data_tier = args.has_data_tier();
    let monitor_count = if args.has_data_tier() {
        args.monitors.max(1)
    } else {
        0
    };
    let ranges = [
        ("--base-port", args.base_port, n),
        ("--monitor-port", args.monitor_port, monitor_count),
        ("--service-port", args.service_port, args.services),
        ("--proxy-port", args.proxy_port, 1),
        ("--proxy-admin-port", args.proxy_admin_port, 1),
    ];
    for (flag, first, count) in ranges {
        let fits = first > 0 && u32::from(first) + u32::from(count) <= 65_536;
        if count > 0 && !fits {
            return Err(PlanError::NoRoom { flag, first, count });
        }
    }
    for (i, (flag, first, count)) in ranges.iter().enumerate() {
        for (other, o_first, o_count) in &ranges[..i] {
            let (a, b) = (u32::from(*first), u32::from(*o_first));
            let overlap = a < b + u32::from(*o_count) && b < a + u32::from(*count);
            if *count > 0 && *o_count > 0 && overlap {
                return Err(PlanError::Overlap {
                    flag,
                    first: *first,
                    other,
                    other_first: *o_first,
                    other_count: *o_count,
                });
            }
        }
    }
    let token = path_arg(&credentials.token);
    let secret = path_arg(&credentials.secret);
    let scheme = credentials.scheme();
    let names = if args.has_data_tier() {
        monitor_names(args.monitors)
    } else {
        Vec::new()
    };
    let listens: Vec<std::net::SocketAddr> = (0u16..)
        .zip(&names)
        .map(|(k, name)| std::net::SocketAddr::new(placement.host(name), args.monitor_port + k))
        .collect();
    let urls: Vec<String> = listens.iter().map(|l| format!("{scheme}://{l}")).collect();
    let monitor_url = urls.join(",");
    let peers: Vec<String> = names
        .iter()
        .zip(&urls)
        .map(|(name, url)| format!("{name}={url}"))
        .collect();
    let groups = groups_of(args);
    let monitors = names
        .iter()
        .zip(listens.iter().zip(&urls))
        .map(|(name, (listen, url))| {
            let mut margs: Vec<String> = vec![
                "monitor".into(),
                "--listen".into(),
                listen.to_string(),
                "--data-dir".into(),
                path_arg(&args.data_dir.join(name)),
                "--token-file".into(),
                token.clone(),
                "--cluster-secret-file".into(),
                secret.clone(),
            ];
            if names.len() > 1 {
                margs.extend([
                    "--id".into(),
                    name.clone(),
                    "--peers".into(),
                    peers.join(","),
                ]);
            }
            // Monitors sign as `monitor`: over TLS their certificate names that member.
            if !groups.is_empty() {
                let names: Vec<&str> = groups.iter().map(|(g, _)| g.as_str()).collect();
                margs.extend(["--groups".into(), names.join(",")]);
            }
            margs.extend(credentials.tls_flags(MONITOR));
            Spec {
                name: name.clone(),
                port: listen.port(),
                url: url.clone(),
                health: format!("{url}/health"),
                port_flag: "--monitor-port",
                netns: placement.netns(name),
                args: margs,
                whole_tree: false,
                startup: STARTUP,
            }
        })
        .collect();
    let nodes = (1..=n)
        .map(|k| {
            let name = node_name(k);
            let port = args.base_port + (k - 1);
            let listen = std::net::SocketAddr::new(placement.host(&name), port);
            let args = vec![
                "node".into(),
                "--id".into(),
                name.clone(),
                "--listen".into(),
                listen.to_string(),
                "--data-dir".into(),
                path_arg(&args.data_dir.join(&name)),
                "--monitor".into(),
                monitor_url.clone(),
                "--token-file".into(),
                token.clone(),
                "--cluster-secret-file".into(),
                secret.clone(),
            ]
            .into_iter()
            .chain(
                groups
                    .iter()
                    .find(|(_, members)| members.contains(&usize::from(k - 1)))
                    .map(|(g, _)| ["--group".to_owned(), g.to_string()])
                    .into_iter()
                    .flatten(),
            )
            .chain(
                args.store
                    .iter()
                    .flat_map(|store| ["--store".to_owned(), store.clone()]),
            )
            .chain(credentials.tls_flags(&name))
            .collect();
            Spec {
                netns: placement.netns(&name),
                name,
                port,
                url: format!("{scheme}://{listen}"),
                health: format!("{scheme}://{listen}/health"),
                port_flag: "--base-port",
                args,
                whole_tree: false,
                startup: STARTUP,
            }
        })
        .collect();
    let proxy_url = format!("{scheme}://127.0.0.1:{}", args.proxy_port);
    let services: Vec<Spec> = (1..=args.services)
        .map(|k| {
            let name = format!("service{k}");
            let port = args.service_port + (k - 1);
            let url = format!("{scheme}://127.0.0.1:{port}");
            Spec {
                args: vec![
                    "service".into(),
                    "--name".into(),
                    name.clone(),
                    "--listen".into(),
                    format!("127.0.0.1:{port}"),
                ]
                .into_iter()
                // Through the proxy's cluster route, which follows the primary; without
                // a data tier (`keel pg`) the counter stays in the process.
                .chain(
                    has_data_tier
                        .then(|| ["--data".to_owned(), proxy_url.clone()])
                        .into_iter()
                        .flatten(),
                )
                .chain(credentials.tls_flags(&name))
                .collect(),
                health: format!("{url}/health"),
                port_flag: "--service-port",
                netns: None,
                name,
                port,
                url,
                whole_tree: false,
                startup: STARTUP,
            }
        })
        .collect();
    let proxy_admin = format!("{scheme}://127.0.0.1:{}", args.proxy_admin_port);
    let mut proxy_args: Vec<String> = vec![
        "proxy".into(),
        "--listen".into(),
        format!("127.0.0.1:{}", args.proxy_port),
        "--admin".into(),
        format!("127.0.0.1:{}", args.proxy_admin_port),
        "--token-file".into(),
        token.clone(),
        "--cluster-secret-file".into(),
        secret.clone(),
    ];
    if has_data_tier {
        proxy_args.extend(["--cluster".into(), monitor_url.clone()]);
    }
    proxy_args.extend(credentials.tls_flags(PROXY));
    for service in &services {
        proxy_args.push("--backend".into());
        proxy_args.push(format!("{},name={}", service.url, service.name));
    }
    let proxy = Spec {
        name: PROXY.to_owned(),
        port: args.proxy_port,
        url: proxy_url,
        health: format!("{proxy_admin}/health"),
        port_flag: "--proxy-port",
        args: proxy_args,
        netns: None,
        whole_tree: false,
        startup: STARTUP,
    };
    Ok(Plan {
        monitors,
        monitor_urls: monitor_url,
        nodes,
        groups,
        services,
        proxy,
        proxy_admin,
        pg_monitor: None,
        postgres: Vec::new(),
        pg_servers: Vec::new(),
        tcp_ports: None,
    })
}

/// The groups of `--shards` (`g1..gN`), each an equal share of the nodes in order (what
/// does not divide goes to the first groups); none with one group.
pub fn groups_of(settings: &Settings) -> Vec<(GroupId, Vec<usize>)> {
    let (shards, nodes) = (usize::from(settings.shards), usize::from(settings.nodes));
    if shards <= 1 || nodes == 0 {
        return Vec::new();
    }
    let (each, extra) = (nodes / shards, nodes % shards);
    let mut next = 0;
    (1..=shards)
        .filter_map(|k| {
            let count = each + usize::from(k <= extra);
            let members: Vec<usize> = (next..next + count).collect();
            next += count;
            GroupId::new(format!("g{k}")).ok().map(|g| (g, members))
        })
        .collect()
}

pub use crate::credentials::path_arg;

/// Under `--netns`, the name of everything outside the data tier's namespaces: the proxy,
/// the services, `keel up` itself and every client, all in the root namespace.
pub(crate) const CLIENTS: &str = "clients";

/// `s` as one shell word.
pub fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Fails before anything starts when a port is taken, naming it. A process that runs in a
/// namespace of its own is not checked: nothing else listens there.
pub fn check_ports(plan: &Plan) -> Result<(), PlanError> {
    let admin_port = plan
        .proxy_admin
        .rsplit(':')
        .next()
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or(0);
    let ports = plan
        .all()
        .filter(|s| s.netns.is_none())
        .map(|s| (s.name.as_str(), s.port, s.port_flag))
        .chain(std::iter::once((
            "the proxy's admin API",
            admin_port,
            "--proxy-admin-port",
        )))
        .chain(
            plan.pg_servers
                .iter()
                .map(|port| ("a PostgreSQL server", *port, "--pg-port")),
        )
        .chain(plan.tcp_ports.into_iter().flat_map(|(rw, ro)| {
            [
                ("the proxy's read-write port", rw, "--tcp-port"),
                ("the proxy's read-only port", ro, "--tcp-port"),
            ]
        }));
    for (name, port, flag) in ports {
        match TcpListener::bind(("127.0.0.1", port)) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::AddrInUse => {
                return Err(PlanError::Taken {
                    port,
                    name: name.to_owned(),
                    flag,
                });
            }
            Err(source) => {
                return Err(PlanError::Unusable {
                    port,
                    name: name.to_owned(),
                    source,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    fn args(nodes: u16, base_port: u16) -> Settings {
        Settings {
            nodes,
            shards: 1,
            data_dir: PathBuf::from("/tmp/d"),
            base_port,
            store: None,
            monitors: 1,
            monitor_port: 8070,
            services: 2,
            service_port: 5056,
            proxy_port: 8080,
            proxy_admin_port: 8090,
            control_port: 8060,
            verbose: false,
            netns: false,
            tls: false,
            restart: Default::default(),
            postgres: None,
        }
    }

    fn pg_ports(pg_port: u16, keeper_port: u16) -> crate::settings::PgPorts {
        crate::settings::PgPorts {
            pg_port,
            tcp_port: 5000,
            keeper_port,
        }
    }

    fn add_postgres(plan: &mut Plan, ports: crate::settings::PgPorts) -> Result<(), PlanError> {
        plan.add_postgres(
            ports,
            &Credentials::in_dir(Path::new("/tmp/d")),
            Path::new("/tmp/d"),
            Path::new("/tmp/d/pg.password"),
        )
    }

    #[test]
    fn postgres_adds_a_monitor_three_keepers_the_proxys_pool_and_the_services_urls() {
        let a = args(2, 8081);
        let mut plan = plan(
            &a,
            &Credentials::in_dir(Path::new("/tmp/d")),
            &Placement::loopback(),
        )
        .expect("plan");
        add_postgres(&mut plan, pg_ports(5433, 7000)).expect("postgres");
        let names: Vec<&str> = plan.all().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "monitor",
                "app1",
                "app2",
                "pgmonitor",
                "pg1",
                "pg2",
                "pg3",
                "service1",
                "service2",
                "proxy"
            ],
            "PostgreSQL starts before the services that read it, its monitor before the keepers"
        );
        let pgmonitor = plan.pg_monitor.as_ref().expect("the group's monitor");
        assert_eq!(pgmonitor.health, "http://127.0.0.1:7000/health");
        assert!(
            pgmonitor
                .args
                .join(" ")
                .contains("--data-dir /tmp/d/pgmonitor"),
            "{:?}",
            pgmonitor.args
        );
        let pg1 = plan.postgres[0].args.join(" ");
        let pg2 = &plan.postgres[1];
        assert_eq!(pg2.health, "http://127.0.0.1:7002/health");
        assert!(pg2.whole_tree, "its server dies with it");
        assert_eq!(pg2.startup, KEEPER_STARTUP);
        let pg2_args = pg2.args.join(" ");
        for wanted in [
            "keeper --id pg2 --listen 127.0.0.1:7002 --monitor http://127.0.0.1:7000",
            "--data-dir /tmp/d --pg-port 5434",
            "--cluster-secret-file /tmp/d/cluster.secret",
        ] {
            assert!(pg2_args.contains(wanted), "{wanted}: {pg2_args}");
        }
        assert!(pg1.ends_with("--init"), "{pg1}");
        assert!(!pg2_args.contains("--init"), "only pg1 makes a cluster");
        assert_eq!(plan.pg_servers, [5433, 5434, 5435]);
        let proxy = plan.proxy.args.join(" ");
        assert!(
            proxy.contains("--tcp pg1=127.0.0.1:5433,pg2=127.0.0.1:5434,pg3=127.0.0.1:5435")
                && proxy.contains("--tcp-read-only 127.0.0.1:5001")
                && proxy.contains("--tcp-password-file /tmp/d/pg.password")
                && proxy.contains("--tcp-monitor http://127.0.0.1:7000"),
            "{proxy}"
        );
        let service = plan.services[0].args.join(" ");
        assert!(
            service.contains("--postgres-read postgres://keel@127.0.0.1:5001/postgres")
                && service.contains("--postgres-write postgres://keel@127.0.0.1:5000/postgres"),
            "{service}"
        );
        assert_eq!(plan.tcp_ports, Some((5000, 5001)));

        let mut clash = super::plan(
            &a,
            &Credentials::in_dir(Path::new("/tmp/d")),
            &Placement::loopback(),
        )
        .expect("plan");
        let e = add_postgres(&mut clash, pg_ports(8080, 7000))
            .expect_err("8080..8082 holds the proxy and app1");
        assert!(e.to_string().contains("--pg-port 8080 overlaps"), "{e}");
        let e = add_postgres(&mut clash, pg_ports(5433, 5434))
            .expect_err("the keepers' ports run over the servers'");
        assert!(
            e.to_string()
                .contains("--keeper-port 5434 overlaps the ports of --pg-port 5433 (3 port(s)"),
            "{e}"
        );
        let e = add_postgres(&mut clash, pg_ports(5433, 65_534)).expect_err("no room");
        assert!(
            e.to_string()
                .contains("--keeper-port 65534 leaves no room for 4"),
            "{e}"
        );
    }

    #[test]
    fn the_nodes_get_the_store_asked_for_and_no_flag_without_one() {
        let credentials = Credentials::in_dir(Path::new("/tmp/d"));
        let mut a = args(2, 8081);
        let default = plan(&a, &credentials, &Placement::loopback()).expect("plan");
        for node in &default.nodes {
            assert!(
                !node.args.contains(&"--store".to_owned()),
                "{:?}",
                node.args
            );
        }
        a.store = Some("log".to_owned());
        let log = plan(&a, &credentials, &Placement::loopback()).expect("plan");
        for node in &log.nodes {
            let at = node.args.iter().position(|f| f == "--store");
            assert_eq!(
                at.and_then(|i| node.args.get(i + 1)).map(String::as_str),
                Some("log"),
                "{:?}",
                node.args
            );
        }
    }

    #[test]
    fn without_a_data_tier_there_is_no_monitor_and_no_cluster_route() {
        let mut a = args(0, 8081);
        a.postgres = Some(pg_ports(5433, 7000));
        let plan = plan(
            &a,
            &Credentials::in_dir(Path::new("/tmp/d")),
            &Placement::loopback(),
        )
        .expect("plan");
        assert!(plan.monitors.is_empty() && plan.nodes.is_empty());
        assert!(
            !plan.proxy.args.contains(&"--cluster".to_owned()),
            "{:?}",
            plan.proxy.args
        );
        assert!(
            !plan.services[0].args.contains(&"--data".to_owned()),
            "{:?}",
            plan.services[0].args
        );
    }

    #[test]
    fn three_monitors_form_a_group_and_every_node_and_the_proxy_know_all_three() {
        let mut a = args(2, 8081);
        a.monitors = 3;
        let plan = plan(
            &a,
            &Credentials::in_dir(Path::new("/tmp/d")),
            &Placement::loopback(),
        )
        .expect("plan");
        let names: Vec<&str> = plan.monitors.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["m1", "m2", "m3"]);
        let urls = "http://127.0.0.1:8070,http://127.0.0.1:8071,http://127.0.0.1:8072";
        assert_eq!(plan.monitor_urls, urls);
        let peers = "m1=http://127.0.0.1:8070,m2=http://127.0.0.1:8071,m3=http://127.0.0.1:8072";
        for (k, m) in plan.monitors.iter().enumerate() {
            let line = m.args.join(" ");
            assert!(
                line.contains(&format!("--id m{} --peers {peers}", k + 1)),
                "{line}"
            );
            assert!(
                line.contains(&format!("--data-dir /tmp/d/m{}", k + 1)),
                "{line}"
            );
        }
        for node in &plan.nodes {
            assert!(node.args.join(" ").contains(&format!("--monitor {urls}")));
        }
        assert!(
            plan.proxy
                .args
                .join(" ")
                .contains(&format!("--cluster {urls}"))
        );
        assert!(is_monitor("m2") && is_monitor("monitor") && !is_monitor("mx"));
        assert_eq!(data_tier_names(2, 3), ["m1", "m2", "m3", "app1", "app2"]);
    }

    #[test]
    fn the_monitor_comes_first_and_every_node_is_told_where_it_is() {
        let plan = plan(
            &args(3, 9000),
            &Credentials::in_dir(Path::new("/tmp/d")),
            &Placement::loopback(),
        )
        .expect("plan");
        let monitor = plan.monitors[0].args.join(" ");
        assert!(
            monitor.starts_with("monitor --listen 127.0.0.1:8070"),
            "{monitor}"
        );
        assert!(monitor.contains("--data-dir /tmp/d/monitor"), "{monitor}");
        assert!(
            monitor.contains("--token-file /tmp/d/admin.token"),
            "{monitor}"
        );
        let names: Vec<_> = plan.nodes.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["app1", "app2", "app3"]);
        for (k, node) in plan.nodes.iter().enumerate() {
            let joined = node.args.join(" ");
            assert_eq!(usize::from(node.port), 9000 + k, "{joined}");
            assert!(
                joined.contains("--monitor http://127.0.0.1:8070"),
                "{joined}"
            );
            assert!(
                !joined.contains("--role"),
                "the monitor assigns roles: {joined}"
            );
            assert!(!joined.contains("--standby"), "{joined}");
        }
        assert!(
            plan.nodes[0]
                .args
                .join(" ")
                .contains("--data-dir /tmp/d/app1")
        );
    }

    #[test]
    fn ports_past_65535_or_shared_with_the_monitor_are_refused() {
        assert!(
            plan(
                &args(3, 65534),
                &Credentials::in_dir(Path::new("t")),
                &Placement::loopback()
            )
            .is_err()
        );
        assert!(
            plan(
                &args(2, 0),
                &Credentials::in_dir(Path::new("t")),
                &Placement::loopback()
            )
            .is_err()
        );
        let mut clash = args(3, 8069);
        clash.monitor_port = 8070;
        let err = plan(
            &clash,
            &Credentials::in_dir(Path::new("t")),
            &Placement::loopback(),
        )
        .expect_err("8070 is app2's port");
        assert!(err.to_string().contains("--monitor-port 8070"), "{err}");
        let mut clash = args(2, 9000);
        clash.service_port = 8069;
        let err = plan(
            &clash,
            &Credentials::in_dir(Path::new("t")),
            &Placement::loopback(),
        )
        .expect_err("8070 is service2's port");
        assert!(err.to_string().contains("--service-port 8069"), "{err}");
    }

    #[test]
    fn the_proxy_fronts_the_services_and_follows_the_monitor() {
        let plan = plan(
            &args(2, 9000),
            &Credentials::in_dir(Path::new("/tmp/d")),
            &Placement::loopback(),
        )
        .expect("plan");
        let names: Vec<_> = plan.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["service1", "service2"]);
        assert_eq!(plan.services[1].port, 5057);
        let service = plan.services[0].args.join(" ");
        assert!(
            service.contains("--data http://127.0.0.1:8080"),
            "{service}"
        );
        let proxy = plan.proxy.args.join(" ");
        assert!(proxy.contains("--listen 127.0.0.1:8080"), "{proxy}");
        assert!(proxy.contains("--admin 127.0.0.1:8090"), "{proxy}");
        assert!(proxy.contains("--cluster http://127.0.0.1:8070"), "{proxy}");
        assert!(
            proxy.contains("--backend http://127.0.0.1:5056,name=service1"),
            "{proxy}"
        );
        assert!(
            proxy.contains("--backend http://127.0.0.1:5057,name=service2"),
            "{proxy}"
        );
        assert_eq!(plan.proxy.health, "http://127.0.0.1:8090/health");
        let order: Vec<_> = plan.all().map(|s| s.name.as_str()).collect();
        assert_eq!(
            order,
            ["monitor", "app1", "app2", "service1", "service2", "proxy"]
        );
    }

    #[test]
    fn in_namespaces_the_data_tier_listens_on_its_own_addresses_and_the_rest_stays_local() {
        let mut placement = Placement::loopback();
        for (name, ns, host) in [
            ("monitor", "ns-m", 2),
            ("app1", "ns-1", 3),
            ("app2", "ns-2", 4),
        ] {
            placement.insert(name, Ipv4Addr::new(10, 77, 5, host), ns);
        }
        let plan = plan(
            &args(2, 8081),
            &Credentials::in_dir(Path::new("/tmp/d")),
            &placement,
        )
        .expect("plan");
        assert_eq!(plan.monitors[0].url, "http://10.77.5.2:8070");
        assert_eq!(plan.monitors[0].netns.as_deref(), Some("ns-m"));
        assert!(
            plan.monitors[0]
                .args
                .join(" ")
                .contains("--listen 10.77.5.2:8070"),
            "{:?}",
            plan.monitors[0].args
        );
        let app2 = plan.nodes[1].args.join(" ");
        assert!(app2.contains("--listen 10.77.5.4:8082"), "{app2}");
        assert!(app2.contains("--monitor http://10.77.5.2:8070"), "{app2}");
        assert_eq!(plan.nodes[1].health, "http://10.77.5.4:8082/health");
        assert_eq!(plan.nodes[1].netns.as_deref(), Some("ns-2"));
        let proxy = plan.proxy.args.join(" ");
        assert!(proxy.contains("--listen 127.0.0.1:8080"), "{proxy}");
        assert!(proxy.contains("--cluster http://10.77.5.2:8070"), "{proxy}");
        assert!(plan.proxy.netns.is_none() && plan.services.iter().all(|s| s.netns.is_none()));
        assert_eq!(
            data_tier_names(2, 1),
            ["monitor", "app1", "app2"],
            "the names the namespaces are made for"
        );
        // A port held here is no obstacle for a process in a namespace of its own.
        let held = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = held.local_addr().expect("addr").port();
        let mut a = args(1, port);
        // A port free now for the monitor. Not `port - 1`: the kernel hands out ephemeral
        // ports in order, so the one before ours is likely another test's.
        a.monitor_port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        a.services = 0;
        let mut placement = Placement::loopback();
        placement.insert("app1", Ipv4Addr::new(10, 77, 5, 3), "ns-1");
        placement.insert("monitor", Ipv4Addr::new(10, 77, 5, 2), "ns-m");
        let free = free_port_pair();
        (a.proxy_port, a.proxy_admin_port) = free;
        let small =
            super::plan(&a, &Credentials::in_dir(Path::new("t")), &placement).expect("plan");
        check_ports(&small).expect("app1's port is taken here, not in its namespace");
    }

    /// Two ports free now, for the proxy.
    fn free_port_pair() -> (u16, u16) {
        let a = TcpListener::bind("127.0.0.1:0").expect("bind");
        let b = TcpListener::bind("127.0.0.1:0").expect("bind");
        (
            a.local_addr().expect("addr").port(),
            b.local_addr().expect("addr").port(),
        )
    }

    #[test]
    fn a_taken_port_is_named() {
        let held = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = held.local_addr().expect("addr").port();
        let mut a = args(1, port);
        // A port free now for the monitor. Not `port - 1`: the kernel hands out ephemeral
        // ports in order, so the one before ours is likely another test's.
        a.monitor_port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let plan = plan(
            &a,
            &Credentials::in_dir(Path::new("t")),
            &Placement::loopback(),
        )
        .expect("plan");
        let err = check_ports(&plan).expect_err("port is taken");
        assert!(err.to_string().contains(&format!("port {port}")), "{err}");
    }

    #[test]
    fn restart_lines_survive_a_shell() {
        assert_eq!(shell_quote("--data-dir"), "--data-dir");
        assert_eq!(shell_quote("/a b/c"), "'/a b/c'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
