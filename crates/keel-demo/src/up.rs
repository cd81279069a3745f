//! A `keel up` (or `keel pg`) of the demo's own, on free ports, in its directory.

use std::time::Duration;

use keel_chaos::{Action, Control};
use keel_client::wire::ClusterView;

use crate::stack::{Proc, Workdir, free_ports, wait_for};
use crate::{DemoError, Ended};

/// What to run: `keel up` with a data tier, or `keel pg` (PostgreSQL, no data tier).
pub struct Shape {
    /// Data nodes (0: `keel pg`).
    pub nodes: u16,
    pub services: u16,
    pub postgres: bool,
}

/// The stack's addresses, as the demo's steps use them.
pub struct Up {
    proc: Option<Proc>,
    pub control: Control,
    /// The monitor's URL (none under `keel pg`).
    pub monitor: Option<String>,
    pub nodes: Vec<String>,
    pub services: Vec<String>,
    pub proxy: String,
    pub proxy_admin: String,
    /// The command a person types for the same stack (without the demo's ports).
    pub command: String,
}

impl Up {
    /// Starts it and waits until every process runs and, with a data tier, the monitor
    /// has a primary and every standby may be promoted.
    pub async fn start(work: &mut Workdir, shape: Shape) -> Result<Up, DemoError> {
        // pg1..pg3, the proxy's two TCP ports, PostgreSQL's monitor and three keepers.
        let pg = if shape.postgres { 9 } else { 0 };
        let monitors = u16::from(shape.nodes > 0);
        let first = free_ports(shape.nodes + monitors + shape.services + 3 + pg)?;
        let mut next = first;
        let mut take = |n: u16| {
            let port = next;
            next += n;
            port
        };
        let base = take(shape.nodes);
        let monitor_port = take(monitors);
        let service_port = take(shape.services);
        let proxy_port = take(1);
        let admin_port = take(1);
        let control_port = take(1);
        let (pg_port, tcp_port, keeper_port) = (take(3), take(2), take(4));

        let mut args: Vec<String> = if shape.nodes > 0 {
            vec![
                "up".into(),
                "--nodes".into(),
                shape.nodes.to_string(),
                "--base-port".into(),
                base.to_string(),
                "--monitor-port".into(),
                monitor_port.to_string(),
            ]
        } else {
            vec!["pg".into()]
        };
        let mut command = if shape.nodes > 0 {
            format!(
                "keel up --nodes {} --services {}",
                shape.nodes, shape.services
            )
        } else {
            format!("keel pg --services {}", shape.services)
        };
        if shape.postgres {
            if shape.nodes > 0 {
                args.push("--postgres".into());
                command.push_str(" --postgres");
            }
            args.extend([
                "--pg-port".into(),
                pg_port.to_string(),
                "--tcp-port".into(),
                tcp_port.to_string(),
                "--keeper-port".into(),
                keeper_port.to_string(),
            ]);
        }
        args.extend([
            "--services".into(),
            shape.services.to_string(),
            "--service-port".into(),
            service_port.to_string(),
            "--proxy-port".into(),
            proxy_port.to_string(),
            "--proxy-admin-port".into(),
            admin_port.to_string(),
            "--control-port".into(),
            control_port.to_string(),
        ]);
        let url = |port: u16| format!("http://127.0.0.1:{port}");
        let monitor = (shape.nodes > 0).then(|| url(monitor_port));
        if let Some(monitor) = &monitor {
            work.set_env("KEEL_MONITOR_URL", monitor);
        }
        let mut proc = work.spawn_keel("up", &args)?;
        let data_dir = work.path().join("keel-data");
        // PostgreSQL's initdb and base backups take a while on a first start.
        let limit = Duration::from_secs(if shape.postgres { 120 } else { 60 });
        let started = std::time::Instant::now();
        let control = loop {
            proc.check_running()?;
            if let Ok(control) = Control::find(&data_dir, None, None, None)
                && let Ok(all) = control.processes().await
                && all.iter().all(|p| p.state == "running")
            {
                break control;
            }
            if started.elapsed() > limit {
                return Err(proc.start_error(format!("not every process ran within {limit:?}")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let up = Up {
            proc: Some(proc),
            control,
            monitor,
            nodes: (0..shape.nodes).map(|k| url(base + k)).collect(),
            services: (0..shape.services).map(|k| url(service_port + k)).collect(),
            proxy: url(proxy_port),
            proxy_admin: url(admin_port),
            command,
        };
        if shape.nodes > 0 {
            let settled = up
                .wait_view(Duration::from_secs(30), |v| {
                    v.primary.is_some()
                        && v.nodes.len() == usize::from(shape.nodes)
                        && v.nodes.iter().all(|n| {
                            n.healthy && (n.role == keel_core::Role::Primary || n.promotable)
                        })
                })
                .await;
            if settled.is_none() {
                let mut proc = up.proc.ok_or(DemoError::Http("no keel up".into()))?;
                proc.check_running()?;
                return Err(proc.start_error(
                    "the monitor had no primary with promotable standbys within 30 s".into(),
                ));
            }
        }
        Ok(up)
    }

    /// Reads the monitor's view.
    pub async fn view(&self) -> Option<ClusterView> {
        let monitor = self.monitor.as_deref()?;
        let http = crate::stack::http().ok()?;
        keel_client::monitor::cluster(&http, monitor, Duration::from_secs(2))
            .await
            .ok()
    }

    /// Polls the monitor's view until `holds`, at most `limit`.
    pub async fn wait_view(
        &self,
        limit: Duration,
        holds: impl Fn(&ClusterView) -> bool,
    ) -> Option<ClusterView> {
        wait_for(limit, || async {
            let view = self.view().await?;
            holds(&view).then_some(view)
        })
        .await
    }

    /// `keel chaos ACTION NAME`, through the control API as `keel chaos` does.
    pub async fn chaos(&self, action: Action, name: &str) -> Result<String, String> {
        self.control
            .act(name, action)
            .await
            .map(|done| done.message)
            .map_err(|e| format!("keel chaos {} {name}: {e}", action.as_str()))
    }

    /// Stops the stack in order (SIGTERM to `keel up`, which stops its children).
    pub async fn stop(mut self) {
        if let Some(proc) = self.proc.take() {
            proc.stop(Duration::from_secs(20)).await;
        }
    }
}

/// Starts the stack of `shape`, plays `steps` against it, and stops it whatever came of
/// them: the shape of every demo that runs on `keel up` or `keel pg`.
pub async fn play_on(
    mut work: Workdir,
    shape: Shape,
    steps: impl AsyncFnOnce(&Workdir, &Up) -> Result<(), DemoError>,
) -> Ended {
    let up = match Up::start(&mut work, shape).await {
        Ok(up) => up,
        Err(e) => return Err((work, e)),
    };
    let result = steps(&work, &up).await;
    up.stop().await;
    match result {
        Ok(()) => Ok(work),
        Err(e) => Err((work, e)),
    }
}
