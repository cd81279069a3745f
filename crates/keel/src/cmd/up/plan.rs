//! What `keel up` starts: the monitor and the nodes, with their ports and command lines,
//! checked before anything runs.

use std::io::ErrorKind;
use std::net::TcpListener;
use std::path::Path;

use anyhow::bail;

use crate::cli::UpArgs;

/// The name of the monitor in the output and the supervisor.
pub(super) const MONITOR: &str = "monitor";

/// One process to start.
#[derive(Debug, Clone)]
pub(super) struct Spec {
    pub(super) name: String,
    pub(super) port: u16,
    pub(super) url: String,
    pub(super) args: Vec<String>,
}

/// Everything `keel up` starts.
#[derive(Debug)]
pub(super) struct Plan {
    pub(super) monitor: Spec,
    /// `app1..appN`, in that order.
    pub(super) nodes: Vec<Spec>,
}

impl Plan {
    pub(super) fn all(&self) -> impl Iterator<Item = &Spec> {
        std::iter::once(&self.monitor).chain(&self.nodes)
    }
}

/// The monitor and the nodes with their command lines. No node gets a role: the monitor
/// assigns them.
pub(super) fn plan(args: &UpArgs, token_path: &Path) -> anyhow::Result<Plan> {
    let n = args.nodes;
    let last = args.base_port.checked_add(n - 1).filter(|p| *p > 0);
    if args.base_port == 0 || last.is_none() {
        bail!(
            "--base-port {} leaves no room for {n} nodes (ports must be 1 to 65535)",
            args.base_port
        );
    }
    if args.monitor_port == 0 {
        bail!("--monitor-port must be 1 to 65535");
    }
    if (args.base_port..=args.base_port + (n - 1)).contains(&args.monitor_port) {
        bail!(
            "--monitor-port {} is one of the nodes' ports ({} to {}); pick another",
            args.monitor_port,
            args.base_port,
            args.base_port + (n - 1)
        );
    }
    let token = path_arg(token_path);
    let monitor_url = format!("http://127.0.0.1:{}", args.monitor_port);
    let monitor = Spec {
        name: MONITOR.to_owned(),
        port: args.monitor_port,
        url: monitor_url.clone(),
        args: vec![
            "monitor".into(),
            "--listen".into(),
            format!("127.0.0.1:{}", args.monitor_port),
            "--data-dir".into(),
            path_arg(&args.data_dir.join(MONITOR)),
            "--token-file".into(),
            token.clone(),
        ],
    };
    let nodes = (1..=n)
        .map(|k| {
            let name = format!("app{k}");
            let port = args.base_port + (k - 1);
            let args = vec![
                "node".into(),
                "--id".into(),
                name.clone(),
                "--listen".into(),
                format!("127.0.0.1:{port}"),
                "--data-dir".into(),
                path_arg(&args.data_dir.join(&name)),
                "--monitor".into(),
                monitor_url.clone(),
                "--token-file".into(),
                token.clone(),
            ];
            Spec {
                name,
                port,
                url: format!("http://127.0.0.1:{port}"),
                args,
            }
        })
        .collect();
    Ok(Plan { monitor, nodes })
}

pub(super) fn path_arg(p: &Path) -> String {
    p.display().to_string()
}

/// A command line a person can paste into a shell.
pub(super) fn shell_line(exe: &Path, args: &[String]) -> String {
    std::iter::once(path_arg(exe))
        .chain(args.iter().cloned())
        .map(|a| shell_quote(&a))
        .collect::<Vec<_>>()
        .join(" ")
}

fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Fails before anything starts when a port is taken, naming it.
pub(super) fn check_ports(plan: &Plan) -> anyhow::Result<()> {
    for spec in plan.all() {
        let flag = if spec.name == MONITOR {
            "--monitor-port"
        } else {
            "--base-port"
        };
        match TcpListener::bind(("127.0.0.1", spec.port)) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::AddrInUse => bail!(
                "port {} (for {}) is already in use on 127.0.0.1 — is another `keel up` running? \
                 stop it, or pick other ports with {flag}",
                spec.port,
                spec.name
            ),
            Err(e) => bail!("cannot use port {} for {}: {e}", spec.port, spec.name),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn args(nodes: u16, base_port: u16) -> UpArgs {
        UpArgs {
            nodes,
            data_dir: PathBuf::from("/tmp/d"),
            base_port,
            monitor_port: 8070,
            verbose: false,
        }
    }

    #[test]
    fn the_monitor_comes_first_and_every_node_is_told_where_it_is() {
        let plan = plan(&args(3, 9000), Path::new("/tmp/d/admin.token")).expect("plan");
        let monitor = plan.monitor.args.join(" ");
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
        assert!(plan(&args(3, 65534), Path::new("t")).is_err());
        assert!(plan(&args(2, 0), Path::new("t")).is_err());
        let mut clash = args(3, 8069);
        clash.monitor_port = 8070;
        let err = plan(&clash, Path::new("t")).expect_err("8070 is app2's port");
        assert!(err.to_string().contains("--monitor-port 8070"), "{err}");
    }

    #[test]
    fn a_taken_port_is_named() {
        let held = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = held.local_addr().expect("addr").port();
        let mut a = args(1, port);
        a.monitor_port = if port == 1 { 2 } else { port - 1 };
        let plan = plan(&a, Path::new("t")).expect("plan");
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
