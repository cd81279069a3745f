//! The PostgreSQL failover driver: one writer ([`pg_writer`]) commits a row every few
//! milliseconds while this mode kills the primary `--cycles` times: its whole node
//! (`--kill node`, the default: the agent and the postmaster with every process of
//! either, see [`pg_kill`]) or its postmaster alone (`--kill postmaster`).
//!
//! One cycle:
//!
//! 1. `--settle` of steady writes, every member back (see below) and a fresh
//!    acknowledgement;
//! 2. the primary is the one server that answers `pg_is_in_recovery() = false`; its
//!    postmaster's pid is the first line of `<data dir>/postmaster.pid`, its agent's
//!    the content of its `--agent-pid-files` entry; what to kill is found in `/proc`
//!    first, then the kill is marked on the run's clock and `SIGKILL` sent;
//! 3. writes are back at the first acknowledgement on a connection opened after the
//!    kill (an answer the dying server sent just before it died arrives on the old one,
//!    and does not count as the system having recovered);
//! 4. once every process killed has left `/proc`, `--rejoin-command`, if given, starts
//!    the killed member again as its system's operator would; after a postmaster kill
//!    the system may also restart its server itself;
//! 5. every member back: one primary, every other server streaming from it
//!    (`pg_stat_replication`), and `--ready-command` succeeding if given.
//!
//! A wait longer than `--step-timeout` ends the cycles; the report says where. At the
//! end every acknowledged id is looked for on the primary of the moment: one missing is
//! a lost acknowledged COMMIT. Every time is read on this process's monotonic clock.
//!
//! [`pg_writer`]: crate::pg_writer
//! [`pg_kill`]: crate::pg_kill

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::cli::{KillMode, PgFailoverArgs};
use crate::failover_report::ms;
use crate::gaps::{self, Mark, MarkKind};
use crate::pg_kill::{self, Victims};
use crate::pg_report::{CycleRecord, PgFailoverReport, Verification};
use crate::pg_writer::{self, Progress, Servers, TABLE};

/// Between two looks at the cluster while waiting for it.
const POLL: Duration = Duration::from_millis(100);

/// A `--ready-command` or `--rejoin-command` that runs longer than this has failed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn run(args: &PgFailoverArgs) -> anyhow::Result<PgFailoverReport> {
    if args.ports.len() != args.data_dirs.len() || args.ports.len() < 2 {
        bail!(
            "give one data dir per port, for two servers or more ({} ports, {} data dirs)",
            args.ports.len(),
            args.data_dirs.len()
        );
    }
    if args.kill == KillMode::Node && args.agent_pid_files.len() != args.ports.len() {
        bail!(
            "--kill node needs one agent pid file per port ({} ports, {} files)",
            args.ports.len(),
            args.agent_pid_files.len()
        );
    }
    let password = match &args.password_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading the password in {}", path.display()))?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    let servers = Servers {
        user: args.user.clone(),
        password,
        dbname: args.dbname.clone(),
        ports: args.ports.clone(),
        connect_timeout: Duration::from_secs(1),
    };
    let started = Instant::now();
    let deadline = started + args.max_duration;
    let step = |what: &'static str| Step {
        what,
        until: (Instant::now() + args.step_timeout).min(deadline),
    };

    make_table(&servers, step("a primary to make the table on")).await?;
    let (progress_tx, progress) = watch::channel(Progress::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let writer = tokio::spawn(pg_writer::write(
        servers.clone(),
        args.interval,
        args.timeout,
        started,
        progress_tx,
        stop_rx,
    ));

    let mut marks: Vec<Mark> = Vec::new();
    let mut cycles: Vec<CycleRecord> = Vec::new();
    let aborted = async {
        wait_for_ack(&progress, 0, step("the first acknowledged COMMIT")).await?;
        for cycle in 1..=args.cycles {
            tokio::time::sleep(args.settle).await;
            whole(&servers, args, step("every member back")).await?;
            wait_for_ack(&progress, 0, step("a COMMIT before the kill")).await?;
            let victim = primary(&servers, step("one primary")).await?;
            let pid = postmaster_pid(&args.data_dirs[victim])?;
            let victims = match args.kill {
                KillMode::Postmaster => Victims {
                    groups: Default::default(),
                    pids: [pid].into(),
                },
                KillMode::Node => {
                    let agent = pid_in(&args.agent_pid_files[victim])?;
                    let own_group = nix::unistd::getpgrp().as_raw();
                    let table = pg_kill::process_table()?;
                    pg_kill::node_victims(agent, Some(pid), &table, own_group)
                }
            };
            let killed = started.elapsed();
            marks.push(Mark {
                kind: MarkKind::Kill,
                at: killed,
            });
            pg_kill::kill_all(&victims)
                .with_context(|| format!("killing member {}", victim + 1))?;
            let newer = progress.borrow().connections + 1;
            let back = wait_for_ack(&progress, newer, step("a COMMIT after the kill")).await;
            let back = back.with_context(|| format!("cycle {cycle}"))?;
            marks.push(Mark {
                kind: MarkKind::Recovered,
                at: back,
            });
            // The node is down before it comes back: its agent started again must not
            // find its old postmaster still holding the data directory.
            let left = pg_kill::wait_gone(&victims.pids, Instant::now() + COMMAND_TIMEOUT).await;
            if !left.is_empty() {
                bail!("cycle {cycle}: processes still there {COMMAND_TIMEOUT:?} after the kill: {left:?}");
            }
            if let Some(rejoin) = &args.rejoin_command {
                shell(rejoin, Some((victim, args)))
                    .await
                    .with_context(|| format!("cycle {cycle}: the rejoin command"))?;
            }
            let new_primary = whole(&servers, args, step("every member back"))
                .await
                .with_context(|| format!("cycle {cycle}"))?;
            let whole_again = started.elapsed() - killed;
            eprintln!(
                "[pg-failover] {} cycle {cycle}/{}: killed member {} (processes killed: {}, postmaster {pid}), writes back after {:.0} ms, member {} primary, all back after {:.1} s",
                args.system,
                args.cycles,
                victim + 1,
                victims.pids.len(),
                ms(back - killed),
                new_primary + 1,
                whole_again.as_secs_f64()
            );
            cycles.push(CycleRecord {
                victim: victim + 1,
                new_primary: new_primary + 1,
                processes_killed: victims.pids.len(),
                whole_again_ms: ms(whole_again),
            });
        }
        anyhow::Ok(())
    }
    .await
    .err()
    .map(|err| format!("{err:#}"));
    if let Some(why) = &aborted {
        eprintln!("[pg-failover] {}: stopped early: {why}", args.system);
    }

    let duration = started.elapsed();
    let _ = stop_tx.send(true);
    let log = writer.await.context("the writer task failed")?;
    let acks: Vec<Duration> = log.acks.iter().map(|ack| ack.at).collect();
    let windows = gaps::windows(&acks, &marks);
    let acked: Vec<i64> = log.acks.iter().map(|ack| ack.id).collect();
    let verification = read_back(&servers, &acked, step("a primary to read back from")).await;
    Ok(PgFailoverReport::new(
        args,
        duration,
        &log,
        &windows,
        cycles,
        verification,
        aborted,
    ))
}

/// A wait with a name and an end.
#[derive(Clone, Copy)]
struct Step {
    what: &'static str,
    until: Instant,
}

impl Step {
    /// Whether there is time for another look; the error says what never came.
    fn check(&self, last: &str) -> anyhow::Result<()> {
        if Instant::now() >= self.until {
            bail!("gave up waiting for {} ({last})", self.what);
        }
        Ok(())
    }
}

/// Drops and makes the table on the primary, once one takes writes.
async fn make_table(servers: &Servers, step: Step) -> anyhow::Result<()> {
    let sql = format!("DROP TABLE IF EXISTS {TABLE}; CREATE TABLE {TABLE} (id bigint PRIMARY KEY)");
    loop {
        let last = match pg_writer::connect(&servers.read_write()).await {
            Ok(client) => match client.batch_execute(&sql).await {
                Ok(()) => return Ok(()),
                Err(err) => format!("{err}"),
            },
            Err(err) => format!("{err}"),
        };
        step.check(&last)?;
        tokio::time::sleep(POLL).await;
    }
}

/// Waits for a new acknowledgement, on connection number `on_or_after` or a later one;
/// returns when it came.
async fn wait_for_ack(
    progress: &watch::Receiver<Progress>,
    on_or_after: u64,
    step: Step,
) -> anyhow::Result<Duration> {
    let mut progress = progress.clone();
    let before = progress.borrow().acked;
    let came = tokio::time::timeout_at(
        step.until,
        progress.wait_for(|p| p.acked > before && p.last_on >= on_or_after),
    )
    .await;
    match came {
        Ok(Ok(p)) => Ok(p.last_at),
        Ok(Err(_)) => bail!("the writer stopped"),
        Err(_) => bail!("gave up waiting for {}", step.what),
    }
}

/// What server `i` says it is: `Some(true)` in recovery, `Some(false)` primary, `None`
/// not answering.
async fn in_recovery(servers: &Servers, i: usize) -> Option<bool> {
    let client = pg_writer::connect(&servers.one(i)).await.ok()?;
    let row = client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .ok()?;
    row.try_get(0).ok()
}

/// The one server that is not in recovery, once there is exactly one.
async fn primary(servers: &Servers, step: Step) -> anyhow::Result<usize> {
    loop {
        let mut roles = Vec::with_capacity(servers.ports.len());
        for i in 0..servers.ports.len() {
            roles.push(in_recovery(servers, i).await);
        }
        let primaries: Vec<usize> = (0..roles.len())
            .filter(|&i| roles[i] == Some(false))
            .collect();
        if let [one] = primaries[..] {
            return Ok(one);
        }
        step.check(&format!("in recovery, by member: {roles:?}"))?;
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until there is one primary and every other server streams from it, and the
/// system's own check (if any) agrees; returns the primary.
async fn whole(servers: &Servers, args: &PgFailoverArgs, step: Step) -> anyhow::Result<usize> {
    let others = i64::try_from(servers.ports.len() - 1).context("too many servers")?;
    loop {
        let at = primary(servers, step).await?;
        let streaming = match pg_writer::connect(&servers.one(at)).await {
            Ok(client) => client
                .query_one(
                    "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
                    &[],
                )
                .await
                .ok()
                .and_then(|row| row.try_get::<_, i64>(0).ok()),
            Err(_) => None,
        };
        let last = if streaming != Some(others) {
            format!(
                "member {} primary, standbys streaming: {streaming:?}",
                at + 1
            )
        } else {
            match &args.ready_command {
                None => return Ok(at),
                Some(ready) => match shell(ready, None).await {
                    Ok(()) => return Ok(at),
                    Err(err) => format!("{err:#}"),
                },
            }
        };
        step.check(&last)?;
        tokio::time::sleep(POLL).await;
    }
}

/// The postmaster's pid: the first line of its `postmaster.pid`.
fn postmaster_pid(data_dir: &Path) -> anyhow::Result<i32> {
    pid_in(&data_dir.join("postmaster.pid"))
}

/// The pid on the first line of `file`.
fn pid_in(file: &Path) -> anyhow::Result<i32> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    text.lines()
        .next()
        .and_then(|line| line.trim().parse().ok())
        .filter(|&pid: &i32| pid > 1)
        .with_context(|| format!("{} does not start with a pid", file.display()))
}

/// Runs `command` with `sh -c`, with the member's details in its environment when given.
async fn shell(command: &str, member: Option<(usize, &PgFailoverArgs)>) -> anyhow::Result<()> {
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c").arg(command).kill_on_drop(true);
    if let Some((i, args)) = member {
        cmd.env("MEMBER", (i + 1).to_string())
            .env("MEMBER_PORT", args.ports[i].to_string())
            .env("MEMBER_DATA_DIR", &args.data_dirs[i]);
    }
    let output = tokio::time::timeout(COMMAND_TIMEOUT, cmd.output())
        .await
        .with_context(|| format!("`{command}` ran over {COMMAND_TIMEOUT:?}"))?
        .with_context(|| format!("running `{command}`"))?;
    if !output.status.success() {
        let said = String::from_utf8_lossy(&output.stderr);
        bail!(
            "`{command}`: {}{}{}",
            output.status,
            if said.trim().is_empty() { "" } else { ": " },
            said.trim()
        );
    }
    Ok(())
}

/// Every id on the primary of the moment, against the acknowledged ones.
async fn read_back(servers: &Servers, acked: &[i64], step: Step) -> Verification {
    let read = async {
        let at = primary(servers, step).await?;
        let client = pg_writer::connect(&servers.one(at)).await?;
        let rows = client
            .query(&format!("SELECT id FROM {TABLE}"), &[])
            .await?;
        let present = rows
            .iter()
            .map(|row| row.try_get::<_, i64>(0))
            .collect::<Result<HashSet<i64>, _>>()?;
        anyhow::Ok((at, present))
    };
    match read.await {
        Ok((at, present)) => Verification::Done {
            against: at + 1,
            lost: acked
                .iter()
                .copied()
                .filter(|id| !present.contains(id))
                .collect(),
        },
        Err(err) => Verification::Failed(format!("{err:#}")),
    }
}
