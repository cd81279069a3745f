//! [`Up`]: the whole system on this machine, in the foreground — what `keel up` runs.
//!
//! [`Up::prepare`] does everything that can fail before a process starts: the checks of
//! `--netns`, the credentials, the namespaces, the plan and its ports, the control API's
//! listener. [`Up::start`] starts the monitor, then the node it recorded as primary (else
//! `app1`: the first node to register becomes primary), waits for the monitor to name it,
//! starts the other nodes and waits for them to be promotable; under `--postgres` the
//! same for PostgreSQL's monitor and keepers; then the services and the proxy; each only
//! after the one before answers its health check. [`Up::serve`] carries
//! out the control API's requests and reports exits until told to stop;
//! [`Up::shutdown`] stops everything in order. The network namespaces of `--netns` go
//! when the [`Up`] does.

mod banner;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::time::Duration;

use axum::http::StatusCode;
use keel_client::wire::ClusterView;
use keel_core::ApiError;
use keel_core::token::Token;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::control::{self, Action, Command, Done, Refused, UP_FILE, UpFile};
use crate::credentials::{CredentialError, Credentials, Origin};
use crate::monitor::{MonitorClient, SETTLE_TIMEOUT};
use crate::netns::{self, Net, NetError};
use crate::partition::{FaultFileError, Partitions};
use crate::plan::{
    PG_MONITOR, PROXY, Placement, Plan, PlanError, Spec, check_ports, data_tier_names, is_postgres,
    plan,
};
use crate::supervisor::{
    Awaited, Host as _, OsHost, StartError, Supervisor, exit_report, restart_after,
};
use crate::{Settings, say};

/// The state `keel chaos list` shows for a process keel up does not run but that answers
/// on its port: someone started it again by hand.
pub const STARTED_BY_HAND: &str = "running (started by hand, not by keel up)";

/// How long a switchover may take to be asked of the monitor.
const SWITCHOVER_TIMEOUT: Duration = Duration::from_secs(3);

/// How long the proxy may take to learn the primary from the monitor.
const ROUTE_POLL: Duration = Duration::from_millis(50);

/// How long the event stream may take to connect.
const STREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Why `keel up` cannot start.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    /// `--netns` cannot run here, or the namespaces cannot be made.
    #[error(transparent)]
    Netns(#[from] NetError),
    /// The data directory cannot be made.
    #[error("cannot create the data directory {}", path.display())]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The admin token or the cluster secret cannot be kept or written.
    #[error(transparent)]
    Credentials(#[from] CredentialError),
    /// The certificates of `--tls` cannot be made.
    #[error(transparent)]
    Certificates(#[from] keel_auth::certs::CertError),
    /// The CA of `--tls` cannot be read.
    #[error("cannot set up TLS towards the tier")]
    Tls(#[source] keel_auth::tls::TlsError),
    /// The ports of the plan are out of range, overlap or are taken.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The fault files cannot be written.
    #[error(transparent)]
    FaultFiles(#[from] FaultFileError),
    /// The control API's port is taken.
    #[error(
        "cannot listen on {addr} for keel chaos — is another `keel up` running? \
         pick another port with --control-port"
    )]
    Control {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The HTTP client cannot be built.
    #[error("cannot set up the HTTP client")]
    Http(#[source] reqwest::Error),
    /// The client for the monitor's events cannot be built.
    #[error("cannot set up the client for the monitor's events")]
    Stream(#[source] keel_client::monitor::ClientError),
    /// A process did not start or come up.
    #[error(transparent)]
    Start(#[from] StartError),
    /// PostgreSQL cannot be set up (`--postgres`).
    #[error(transparent)]
    Postgres(#[from] keel_pg::PgError),
    /// `up.json` cannot be written.
    #[error("cannot write {}", path.display())]
    UpFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A certificate `--tls` needs: the process's name and the other host names it must be
/// valid for.
pub type CertificateFor = (String, Vec<String>);

/// The system `keel up` runs: its plan, its children, its partitions and its control API.
pub struct Up {
    settings: Settings,
    plan: Plan,
    credentials: Credentials,
    /// Whether the admin token was there already, for the banner.
    token_origin: Origin,
    supervisor: Supervisor<OsHost>,
    partitions: Partitions,
    monitor: MonitorClient,
    /// PostgreSQL's monitor, under `--postgres`.
    pg_monitor: Option<MonitorClient>,
    http: reqwest::Client,
    /// For the event stream: no timeout on the whole request.
    stream_http: reqwest::Client,
    /// The tasks that print the monitors' events.
    events: Vec<JoinHandle<()>>,
    control: JoinHandle<()>,
    commands: mpsc::Receiver<Command>,
    /// `<data-dir>/up.json`, once written.
    up_file: Option<PathBuf>,
    /// When each process was last started, for `--restart`'s backoff.
    started_at: HashMap<String, Instant>,
    /// Restarts in a row of each process (`--restart`).
    restarts: HashMap<String, u32>,
    /// Restarts due: when, and which process.
    pending: Vec<(Instant, String)>,
}

impl Up {
    /// Everything before the first process starts; nothing is left behind when this
    /// fails (a `--netns` that cannot run fails before anything is made). Prints a line
    /// for what an earlier `keel up --netns` on the directory left and was removed.
    /// `exe` is the `keel` executable: every child is it, with a subcommand.
    pub async fn prepare(settings: Settings, exe: PathBuf) -> Result<Up, UpError> {
        if settings.netns {
            netns::check()?;
        }
        let data_dir = settings.data_dir.clone();
        std::fs::create_dir_all(&data_dir).map_err(|source| UpError::DataDir {
            path: data_dir.clone(),
            source,
        })?;
        let mut credentials = Credentials::in_dir(&data_dir);
        let token_origin = credentials.ensure()?;
        let net = if settings.netns {
            let (net, leftovers) = Net::plan(
                &data_dir,
                &data_tier_names(settings.nodes, settings.monitors),
            )?;
            for line in leftovers {
                say(&line);
            }
            Some(net)
        } else {
            None
        };
        let placement = net
            .as_ref()
            .map_or_else(Placement::loopback, Net::placement);
        let tls = if settings.tls {
            let dir = data_dir.join("tls");
            keel_auth::certs::ensure(&dir, &certificates_wanted(&settings, &placement))?;
            let client =
                keel_auth::tls::client_for_ca(&dir.join("ca.pem")).map_err(UpError::Tls)?;
            credentials.tls = Some(dir);
            Some(client)
        } else {
            None
        };
        let mut plan = plan(&settings, &credentials, &placement)?;
        if let Some(ports) = settings.postgres {
            let password = prepare_postgres(&data_dir).await?;
            plan.add_postgres(ports, &credentials, &data_dir, &password)?;
        }
        check_ports(&plan)?;
        let net = match net {
            Some(mut net) => {
                net.create()?;
                Some(net)
            }
            None => None,
        };
        // From here on, the namespaces go when `partitions` does, however `keel up` ends.
        let partitions = Partitions::start(&data_dir, &plan, net)?;
        let mut http = reqwest::Client::builder();
        if let Some(tls) = &tls {
            http = http.tls_backend_preconfigured(tls.clone());
        }
        let http = http.build().map_err(UpError::Http)?;
        let monitor = MonitorClient::new(http.clone(), plan.monitor_urls.clone());
        let pg_monitor = plan
            .pg_monitor
            .as_ref()
            .map(|spec| MonitorClient::new(http.clone(), spec.url.clone()));
        let (control, commands) = serve_control(
            settings.control_port,
            &credentials.token,
            crate::dashboard::Monitors {
                data_tier: (!plan.monitors.is_empty()).then(|| monitor.clone()),
                postgres: pg_monitor.clone(),
            },
            http.clone(),
            plan.proxy_admin.clone(),
        )
        .await?;
        let stream_http = keel_client::monitor::stream_client(STREAM_CONNECT_TIMEOUT, tls)
            .map_err(UpError::Stream)?;
        let width = plan.all().map(|s| s.name.len()).max().unwrap_or(0);
        let fault_files = plan
            .all()
            .filter_map(|s| Some((s.name.clone(), partitions.file(&s.name)?)))
            .collect();
        let host = OsHost::new(
            exe,
            width,
            child_log_level(std::env::var_os("KEEL_LOG").is_some(), settings.verbose),
            partitions.net().map(|net| net.ip().to_owned()),
            fault_files,
            http.clone(),
        );
        Ok(Up {
            monitor,
            pg_monitor,
            settings,
            plan,
            credentials,
            token_origin,
            supervisor: Supervisor::new(host),
            partitions,
            http,
            stream_http,
            events: Vec::new(),
            control,
            commands,
            up_file: None,
            started_at: HashMap::new(),
            restarts: HashMap::new(),
            pending: Vec::new(),
        })
    }

    /// Starts every process, each once the one before answers its health check (see the
    /// module's doc). Dropping the future half-way leaves what was started to
    /// [`Up::shutdown`].
    pub async fn start(&mut self) -> Result<(), UpError> {
        let plan = &self.plan;
        // A group of monitors elects its leader once a majority runs: start them all,
        // then wait for each.
        for spec in &plan.monitors {
            self.supervisor.start(spec)?;
        }
        for spec in &plan.monitors {
            self.supervisor.wait_healthy(spec, Awaited::Startup).await?;
        }
        if !plan.monitors.is_empty() {
            self.events.push(tokio::spawn(
                self.monitor
                    .clone()
                    .follow_events(self.stream_http.clone(), "monitor"),
            ));
        }
        if plan.groups.is_empty() {
            start_members(
                &mut self.supervisor,
                &self.monitor,
                &plan.nodes,
                "the monitor",
            )
            .await?;
        }
        // Under --shards, each group as a data tier of its own.
        for (group, members) in &plan.groups {
            let members: Vec<Spec> = members
                .iter()
                .filter_map(|&i| plan.nodes.get(i).cloned())
                .collect();
            let who = format!("the monitor ({group})");
            start_members(
                &mut self.supervisor,
                &self.monitor.of_group(group),
                &members,
                &who,
            )
            .await?;
        }
        if let (Some(spec), Some(pg_monitor)) = (&plan.pg_monitor, &self.pg_monitor) {
            self.supervisor.start(spec)?;
            self.supervisor.wait_healthy(spec, Awaited::Startup).await?;
            self.events.push(tokio::spawn(
                pg_monitor
                    .clone()
                    .follow_events(self.stream_http.clone(), PG_MONITOR),
            ));
            start_members(&mut self.supervisor, pg_monitor, &plan.postgres, PG_MONITOR).await?;
        }
        for spec in plan.services.iter().chain(std::iter::once(&plan.proxy)) {
            self.supervisor.start(spec)?;
            self.supervisor.wait_healthy(spec, Awaited::Startup).await?;
        }
        if !plan.monitors.is_empty() {
            self.wait_for_route().await;
        }
        if !plan.postgres.is_empty() {
            self.wait_for_tcp_pool().await;
        }
        Ok(())
    }

    /// Waits until the proxy's checks have found every PostgreSQL server (a standby
    /// still starting up is refused at first), so that the banner comes once reads can
    /// spread over both standbys.
    async fn wait_for_tcp_pool(&self) {
        let url = format!("{}/v1/tcp", self.plan.proxy_admin);
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        while Instant::now() < deadline {
            let view: Option<serde_json::Value> = match self.http.get(&url).send().await {
                Ok(r) => r.json().await.ok(),
                Err(_) => None,
            };
            let whole = view.is_some_and(|v| {
                v["pools"][0]["servers"].as_array().is_some_and(|servers| {
                    servers
                        .iter()
                        .all(|s| s["in_read_write"] == true || s["in_read_only"] == true)
                })
            });
            if whole {
                return;
            }
            tokio::time::sleep(ROUTE_POLL).await;
        }
        say(
            "note: the proxy's checks have not found every PostgreSQL server yet; its log above says why",
        );
    }

    /// Waits until the proxy's cluster route knows the primary, so that the first
    /// request to `/v1/…` through the front door finds it.
    async fn wait_for_route(&self) {
        let url = format!("{}/v1/route", self.plan.proxy_admin);
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        while Instant::now() < deadline {
            let view: Option<serde_json::Value> = match self.http.get(&url).send().await {
                Ok(r) => r.json().await.ok(),
                Err(_) => None,
            };
            if view.is_some_and(|v| !v["primary"].is_null()) {
                return;
            }
            tokio::time::sleep(ROUTE_POLL).await;
        }
        say("note: the proxy does not know the primary yet; its log above says why");
    }

    /// The monitor's view, or `None` when it does not answer.
    pub async fn view(&self) -> Option<ClusterView> {
        self.monitor.view().await
    }

    /// Each group's view under `--shards` (none with one group), for the banner.
    pub async fn group_views(&self) -> Vec<ClusterView> {
        let mut views = Vec::new();
        for (group, _) in &self.plan.groups {
            views.extend(self.monitor.of_group(group).view().await);
        }
        views
    }

    /// PostgreSQL's monitor's view, or `None` without `--postgres` or when it does not
    /// answer.
    pub async fn pg_view(&self) -> Option<ClusterView> {
        match &self.pg_monitor {
            Some(monitor) => monitor.view().await,
            None => None,
        }
    }

    /// Writes `<data-dir>/up.json`: where `keel chaos` finds this `keel up`. Removed by
    /// [`Up::shutdown`].
    pub fn write_up_file(&mut self) -> Result<(), UpError> {
        let path = self.settings.data_dir.join(UP_FILE);
        let file = UpFile {
            control: format!("http://127.0.0.1:{}", self.settings.control_port),
            pid: std::process::id(),
            monitor: self.plan.monitor_urls.clone(),
            proxy: self.plan.proxy.url.clone(),
        };
        // Four plain fields always encode.
        let text = serde_json::to_string_pretty(&file).unwrap_or_default();
        std::fs::write(&path, text).map_err(|source| UpError::UpFile {
            path: path.clone(),
            source,
        })?;
        self.up_file = Some(path);
        Ok(())
    }

    /// Carries out what `keel chaos` asks and reports the processes that exit, until
    /// `stop` completes. Restarts what ends only under `--restart on-failure|always`.
    pub async fn serve(&mut self, stop: impl Future<Output = ()>) {
        let mut stop = pin!(stop);
        let total = self.plan.all().count();
        let mut alive = total;
        let now = Instant::now();
        for spec in self.plan.all() {
            self.started_at.insert(spec.name.clone(), now);
        }
        loop {
            let next_restart = self.pending.iter().map(|(at, _)| *at).min();
            tokio::select! {
                biased;
                () = &mut stop => break,
                () = tokio::time::sleep_until(next_restart.unwrap_or(now)), if next_restart.is_some() => {
                    alive = (alive + self.restart_due().await).min(total);
                }
                Some(command) = self.commands.recv() => match command {
                    Command::List(reply) => {
                        let _ = reply.send(self.processes().await);
                    }
                    Command::Act { name, action, reply } => {
                        let done = self.act(&name, action).await;
                        if let Ok(done) = &done {
                            say(&format!("keel chaos: {}", done.message));
                            if action == Action::Restart {
                                alive = (alive + 1).min(total);
                                self.started_at.insert(name.clone(), Instant::now());
                            }
                        }
                        let _ = reply.send(done);
                    }
                    Command::Partition { request, reply } => {
                        let done = self.partitions.partition(&self.plan, &request.node, &request.from);
                        if let Ok(done) = &done {
                            say(&format!("keel chaos: {}", done.message));
                        }
                        let _ = reply.send(done);
                    }
                    Command::Switchover { request, reply } => {
                        let done = self.switchover(request).await;
                        if let Ok(done) = &done {
                            say(&format!("keel up: {}", done.message));
                        }
                        let _ = reply.send(done);
                    }
                    Command::Heal { reply } => {
                        let done = self.partitions.heal(&self.plan);
                        if let Ok(done) = &done {
                            say(&format!("keel chaos: {}", done.message));
                        }
                        let _ = reply.send(done);
                    }
                },
                Some(exit) = self.supervisor.next_exit() => {
                    alive = alive.saturating_sub(1);
                    let ran = self
                        .started_at
                        .get(&exit.name)
                        .map_or(Duration::MAX, Instant::elapsed);
                    let in_a_row = self.restarts.get(&exit.name).copied().unwrap_or(0);
                    let restart = restart_after(self.settings.restart, &exit.how, ran, in_a_row);
                    let again = format!("keel chaos{} restart {}", self.chaos_data_dir(), exit.name);
                    say(&exit_report(&exit.name, &exit.how, &again, restart));
                    if let Some(r) = restart {
                        self.restarts.insert(exit.name.clone(), r.in_a_row + 1);
                        self.pending.push((Instant::now() + r.after, exit.name.clone()));
                    }
                    if alive == 0 {
                        say("nothing is running any more; press Ctrl-C to quit");
                    }
                }
            }
        }
    }

    /// Every process and its state; one that keel up does not run but that answers its
    /// health check was started again by hand, and is shown running.
    async fn processes(&self) -> Vec<crate::control::ProcessInfo> {
        let mut list = self.supervisor.processes(&self.plan);
        for info in &mut list {
            if info.state != "exited" {
                continue;
            }
            let Some(spec) = self.plan.all().find(|s| s.name == info.name) else {
                continue;
            };
            if self.supervisor.host().healthy(spec).await {
                info.state = STARTED_BY_HAND.to_owned();
            }
        }
        list
    }

    /// A switchover by hand, asked of the monitors' leader ([`switchover`]).
    async fn switchover(
        &self,
        request: crate::control::SwitchoverRequest,
    ) -> Result<crate::control::SwitchoverDone, Refused> {
        // PostgreSQL's monitor for a switchover to one of its servers, or when there is
        // no data tier; else the data tier's.
        let to_postgres = request
            .to
            .as_deref()
            .map_or(self.plan.monitors.is_empty(), is_postgres);
        let monitors = match (&self.plan.pg_monitor, to_postgres) {
            (Some(pg), true) => pg.url.as_str(),
            _ if !self.plan.monitors.is_empty() => self.plan.monitor_urls.as_str(),
            _ => {
                return Err((
                    StatusCode::NOT_FOUND,
                    ApiError::new("no_data_tier", "this stack has no data tier to switch over"),
                ));
            }
        };
        switchover(&self.http, monitors, &self.credentials.token, request).await
    }

    /// Starts again the processes whose restart is due (`--restart`), unless one was
    /// started by hand meanwhile; how many it started.
    async fn restart_due(&mut self) -> usize {
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = self.pending.drain(..).partition(|(at, _)| *at <= now);
        self.pending = later;
        let mut started = 0;
        for (_, name) in due {
            if self.supervisor.running(&name).is_some() {
                continue;
            }
            match self.act(&name, Action::Restart).await {
                Ok(done) => {
                    say(&format!("keel up: {}", done.message));
                    self.started_at.insert(name, Instant::now());
                    started += 1;
                }
                Err((_, e)) => say(&format!("keel up: cannot restart {name}: {}", e.message)),
            }
        }
        started
    }

    /// ` --data-dir DIR` for a `keel chaos` command line, unless the directory is the
    /// default one, where `keel chaos` looks by itself.
    fn chaos_data_dir(&self) -> String {
        let dir = &self.settings.data_dir;
        if dir == Path::new("./keel-data") || dir == Path::new("keel-data") {
            String::new()
        } else {
            format!(
                " --data-dir {}",
                crate::plan::shell_quote(&crate::plan::path_arg(dir))
            )
        }
    }

    /// Carries out a `keel chaos` action on process `name`.
    async fn act(&mut self, name: &str, action: Action) -> Result<Done, Refused> {
        let Some(spec) = self.plan.all().find(|s| s.name == name) else {
            let names: Vec<&str> = self.plan.all().map(|s| s.name.as_str()).collect();
            return Err((
                StatusCode::NOT_FOUND,
                ApiError::new(
                    "no_such_process",
                    format!("keel up runs no {name:?}; it runs {}", names.join(", ")),
                ),
            ));
        };
        let reachable = !self.partitions.cut_from_clients(name);
        self.supervisor.act(spec, action, reachable).await
    }

    /// Stops everything: the control API, then the processes in order (the front door
    /// and the services, the monitor, the primary, the standbys), a line for each.
    pub async fn shutdown(&mut self) {
        self.control.abort();
        if let Some(path) = self.up_file.take() {
            let _ = std::fs::remove_file(path);
        }
        // Asked before the monitors go: after that, nobody knows.
        let mut primaries = Vec::new();
        if !self.plan.monitors.is_empty() && self.plan.groups.is_empty() {
            primaries.extend(self.monitor.primary().await);
        }
        for (group, _) in &self.plan.groups {
            primaries.extend(self.monitor.of_group(group).primary().await);
        }
        if let Some(pg_monitor) = &self.pg_monitor {
            primaries.extend(pg_monitor.primary().await);
        }
        for events in self.events.drain(..) {
            events.abort();
        }
        self.supervisor
            .stop_all(&primaries, |line| say(&line))
            .await;
    }
}

impl Drop for Up {
    /// Once the children are stopped (or, when `keel up` ends by an error, killed), the
    /// namespaces of `--netns` go, with a line that says so.
    fn drop(&mut self) {
        for line in self.partitions.teardown() {
            say(&line);
        }
    }
}

/// PostgreSQL for `--postgres`, checked before anything starts: the machine's binaries,
/// an account to run them that can reach `data_dir`, and the password of the `keel` role,
/// made once and kept; the password file's path. The keepers make the servers.
async fn prepare_postgres(data_dir: &Path) -> Result<PathBuf, UpError> {
    let data_dir = data_dir.to_owned();
    let made = tokio::task::spawn_blocking(move || {
        keel_pg::Setup::prepare(&data_dir).map(|setup| setup.password_file())
    })
    .await;
    match made {
        Ok(result) => Ok(result?),
        Err(e) => Err(UpError::Postgres(keel_pg::PgError::Io {
            what: "setting PostgreSQL up".to_owned(),
            source: std::io::Error::other(e.to_string()),
        })),
    }
}

/// Starts a monitor's members, each once the one before answers its health check: the
/// one `monitor` (named `who` in the notes) recorded as primary in an earlier run, else
/// the first — the first member to register becomes primary, and the recorded primary,
/// when it comes back first, keeps the role (in a new epoch) rather than waiting for a
/// standby that is not yet promotable; once the monitor names it, the others; then waits
/// for them to be promotable.
async fn start_members(
    supervisor: &mut Supervisor<OsHost>,
    monitor: &MonitorClient,
    members: &[Spec],
    who: &str,
) -> Result<(), UpError> {
    if members.is_empty() {
        return Ok(());
    }
    let recorded = monitor.primary().await;
    let first = recorded
        .as_deref()
        .and_then(|name| members.iter().position(|s| s.name == name))
        .unwrap_or(0);
    let order = std::iter::once(first).chain((0..members.len()).filter(|&i| i != first));
    for (started, i) in order.enumerate() {
        let spec = &members[i];
        supervisor.start(spec)?;
        supervisor.wait_healthy(spec, Awaited::Startup).await?;
        if started == 0 && !monitor.wait_for_primary().await {
            say(&format!(
                "note: {who} names no live primary after {} s; starting the others anyway \
                 (its events above say why)",
                SETTLE_TIMEOUT.as_secs()
            ));
        }
    }
    if !monitor.wait_for_promotable(members).await {
        say(&format!(
            "note: not every standby of {who} is promotable after {} s; `keel client cluster` says why",
            SETTLE_TIMEOUT.as_secs()
        ));
    }
    Ok(())
}

/// A switchover by hand: asks the leader of `monitors` (one URL, or a group's separated
/// by commas), with the admin token in `token_file`, as `keel client failover` does; the
/// monitor's answer, or why there was none.
pub(crate) async fn switchover(
    http: &reqwest::Client,
    monitors: &str,
    token_file: &Path,
    request: crate::control::SwitchoverRequest,
) -> Result<crate::control::SwitchoverDone, Refused> {
    let unavailable = |message: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            ApiError::new("monitor_unavailable", message),
        )
    };
    let to = match request.to {
        Some(name) => Some(keel_core::NodeId::new(name).map_err(|e| {
            (
                StatusCode::BAD_REQUEST,
                ApiError::new("bad_switchover", format!("not a node's name: {e}")),
            )
        })?),
        None => None,
    };
    let token = Token::from_file(token_file)
        .map_err(|e| unavailable(format!("cannot read the admin token: {e}")))?;
    let leader = keel_client::monitor::leading(http, monitors, SWITCHOVER_TIMEOUT, None)
        .await
        .map_err(|e| unavailable(format!("no monitor leader answers: {e}")))?;
    let answer = http
        .post(format!("{leader}/v1/failover"))
        .bearer_auth(token.secret())
        .json(&keel_client::wire::FailoverRequest { to })
        .timeout(SWITCHOVER_TIMEOUT)
        .send()
        .await
        .map_err(|e| unavailable(format!("the monitor at {leader} does not answer: {e}")))?;
    let status = answer.status();
    let body: serde_json::Value = answer.json().await.unwrap_or_default();
    let message = body["message"].as_str().unwrap_or("").to_owned();
    if status.is_success() {
        // The monitor answers with its view: the failover it started, if it did.
        let failover = &body["failover"];
        let message = match (failover["from"].as_str(), failover["to"].as_str()) {
            (Some(from), Some(to)) => format!(
                "switchover from {from} to {to} asked of the monitor at {leader}: {}",
                failover["phase"].as_str().unwrap_or("started")
            ),
            _ => format!("switchover asked of the monitor at {leader}"),
        };
        Ok(crate::control::SwitchoverDone { message })
    } else {
        let code = body["error"].as_str().unwrap_or("refused").to_owned();
        Err((
            StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY),
            ApiError::new(
                code,
                format!("the monitor refused the switchover: {message}"),
            ),
        ))
    }
}

/// The certificates `--tls` needs: one for each process, the data tier's naming its own
/// address too (a network namespace's, under `--netns`: the others reach it there).
fn certificates_wanted(settings: &Settings, placement: &Placement) -> Vec<CertificateFor> {
    // Every monitor signs as `monitor`: one certificate, naming each monitor's address.
    let monitor_hosts = crate::plan::monitor_names(settings.monitors)
        .iter()
        .map(|name| placement.host(name).to_string())
        .collect();
    let mut wanted: Vec<CertificateFor> = vec![(crate::plan::MONITOR.to_owned(), monitor_hosts)];
    wanted.extend((1..=settings.nodes).map(|k| {
        let name = format!("app{k}");
        let host = placement.host(&name).to_string();
        (name, vec![host])
    }));
    wanted.push((PROXY.to_owned(), Vec::new()));
    wanted.extend((1..=settings.services).map(|k| (format!("service{k}"), Vec::new())));
    wanted
}

/// Listens on `127.0.0.1:port` and serves the control API and the dashboard there until
/// the task is aborted; the control API's requests come out of the receiver. The
/// dashboard reads `monitors` and the proxy's admin API.
async fn serve_control(
    port: u16,
    token_file: &Path,
    monitors: crate::dashboard::Monitors,
    http: reqwest::Client,
    proxy_admin: String,
) -> Result<(JoinHandle<()>, mpsc::Receiver<Command>), UpError> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| UpError::Control { addr, source })?;
    let (commands_tx, commands) = mpsc::channel(16);
    let token = Token::from_file(token_file).ok();
    let task = tokio::spawn(async move {
        // Served until `keel up` ends, which aborts this task (and drops `_served`).
        let (_served, never) = tokio::sync::watch::channel(false);
        let dashboard = crate::dashboard::router(crate::dashboard::Context {
            commands: commands_tx.clone(),
            http,
            monitors,
            proxy_admin,
            stopping: never,
        });
        let app = control::router(token, commands_tx).merge(dashboard);
        let (stopping, _) = tokio::sync::watch::channel(false);
        keel_http::serve_draining(
            listener,
            app,
            std::future::pending(),
            Duration::ZERO,
            stopping,
            None,
        )
        .await;
    });
    Ok((task, commands))
}

/// The children's `KEEL_LOG`: warnings only, unless `verbose` or the person set
/// `KEEL_LOG` themselves (then theirs, inherited). At info level the nodes log every
/// replication stream and role change, which would bury the monitor's events — the lines
/// that tell the story — while the warnings (a lost stream, a refused heartbeat) are
/// exactly what should stand out next to them.
fn child_log_level(keel_log_set: bool, verbose: bool) -> Option<&'static str> {
    if keel_log_set {
        None
    } else if verbose {
        Some("info,openraft=warn")
    } else {
        // openraft logs every failed call to a dead monitor, twice a second: the
        // monitors say themselves when the leadership moves.
        Some("warn,openraft=off")
    }
}
