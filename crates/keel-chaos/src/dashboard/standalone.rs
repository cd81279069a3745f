//! `keel dashboard`: the page for a stack started by hand (or by another `keel up`'s
//! caller), from its monitor and its proxy's admin API. There is no supervisor here: the
//! processes shown are the monitor's nodes, and the buttons that act on processes
//! (kill, pause, resume, restart, partition, heal) answer that they need `keel up`; the
//! switchover, which is the monitor's to carry out, works with the admin token.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::http::StatusCode;
use keel_core::ApiError;
use keel_core::token::Token;
use tokio::sync::mpsc;

use super::{Context, router};
use crate::control::{self, Command, ProcessInfo};
use crate::monitor::MonitorClient;

/// What `keel dashboard` serves.
#[derive(Debug, Clone)]
pub struct DashboardSettings {
    /// Where the page is served (loopback unless told otherwise).
    pub listen: SocketAddr,
    /// The monitor, or a group's monitors separated by commas.
    pub monitor: Option<String>,
    /// The proxy's admin API.
    pub proxy_admin: String,
    /// The admin token, for the switchover button.
    pub token_file: Option<PathBuf>,
}

/// Why the dashboard could not be served.
#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot set up the HTTP client")]
    Http(#[source] reqwest::Error),
    #[error("cannot set up the client for the monitor's events")]
    Stream(#[source] keel_client::monitor::ClientError),
}

/// How long the event stream may take to connect.
const STREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Serves the page until `shutdown` resolves, printing the monitor's events meanwhile.
pub async fn serve(
    settings: DashboardSettings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), DashboardError> {
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|source| DashboardError::Bind {
            addr: settings.listen,
            source,
        })?;
    let http = reqwest::Client::builder()
        .build()
        .map_err(DashboardError::Http)?;
    let monitor = settings
        .monitor
        .as_ref()
        .map(|urls| MonitorClient::new(http.clone(), urls.clone()));
    if let Some(monitor) = &monitor {
        let stream = keel_client::monitor::stream_client(STREAM_CONNECT_TIMEOUT, None)
            .map_err(DashboardError::Stream)?;
        tokio::spawn(monitor.clone().follow_events(stream, "monitor"));
    }
    let (commands_tx, commands) = mpsc::channel(16);
    tokio::spawn(answer(
        commands,
        settings.clone(),
        http.clone(),
        monitor.clone(),
    ));
    let (_served, never) = tokio::sync::watch::channel(false);
    let token = settings
        .token_file
        .as_deref()
        .and_then(|path| Token::from_file(path).ok());
    let app = control::router(token, commands_tx.clone()).merge(router(Context {
        commands: commands_tx,
        http,
        monitors: super::Monitors {
            data_tier: monitor,
            postgres: None,
        },
        proxy_admin: settings.proxy_admin.clone(),
        stopping: never,
    }));
    crate::say(&format!(
        "keel dashboard on http://{}/ (monitor {}, proxy {})",
        settings.listen,
        settings.monitor.as_deref().unwrap_or("none"),
        settings.proxy_admin
    ));
    let (stopping, _) = tokio::sync::watch::channel(false);
    keel_http::serve_draining(listener, app, shutdown, Duration::ZERO, stopping, None).await;
    Ok(())
}

/// Answers the control routes: the monitor's nodes as the processes, a switchover through
/// the monitor, and for the rest a refusal that says `keel up` is needed.
async fn answer(
    mut commands: mpsc::Receiver<Command>,
    settings: DashboardSettings,
    http: reqwest::Client,
    monitor: Option<MonitorClient>,
) {
    let needs_up = || {
        (
            StatusCode::NOT_FOUND,
            ApiError::new(
                "not_supervised",
                "keel dashboard does not run the processes: kill, pause, resume, restart and partitions need the keel up that started them",
            ),
        )
    };
    while let Some(command) = commands.recv().await {
        match command {
            Command::List(reply) => {
                let nodes = match &monitor {
                    Some(m) => m.view().await.map(|v| v.nodes).unwrap_or_default(),
                    None => Vec::new(),
                };
                let list = nodes
                    .into_iter()
                    .map(|n| ProcessInfo {
                        name: n.node.to_string(),
                        pid: None,
                        state: if n.healthy {
                            "running"
                        } else {
                            "not answering"
                        }
                        .to_owned(),
                        url: n.url,
                    })
                    .collect();
                let _ = reply.send(list);
            }
            Command::Act { reply, .. } => {
                let _ = reply.send(Err(needs_up()));
            }
            Command::Partition { reply, .. } | Command::Heal { reply } => {
                let _ = reply.send(Err(needs_up()));
            }
            Command::Switchover { request, reply } => {
                let done = match (&settings.monitor, &settings.token_file) {
                    (Some(urls), Some(token)) => {
                        crate::up::switchover(&http, urls, token, request).await
                    }
                    _ => Err((
                        StatusCode::NOT_FOUND,
                        ApiError::new(
                            "no_monitor",
                            "a switchover needs --monitor and --token-file",
                        ),
                    )),
                };
                if let Ok(done) = &done {
                    crate::say(&format!("keel dashboard: {}", done.message));
                }
                let _ = reply.send(done);
            }
        }
    }
}
