//! How the driver kills a member: its postmaster alone, or its whole node.
//!
//! A node kill must leave nothing of the member running, whatever its agent does with
//! its processes. keel's keeper starts its postmaster in its own process group; Patroni
//! starts it in a session of its own (so a `killpg` of the agent misses it);
//! `pg_autoctl run` supervises children of its own. So the processes killed are the
//! union of:
//!
//! - the agent's process group (the script starts each agent with `setsid`, so the
//!   agent leads its group), and the postmaster's group when the postmaster leads one;
//! - the agent and every process descended from it;
//! - the postmaster (the pid in `postmaster.pid`) and every process descended from it:
//!   its backends, checkpointer, walsenders.
//!
//! A group is killed only when its leader is the agent or the postmaster itself, and
//! never the driver's own: the script's and the driver's processes are never in the
//! way. Which processes those are is decided by [`node_victims`] from a snapshot of
//! `/proc`, with no I/O of its own, so the tests can pin it.

use std::collections::BTreeSet;

use anyhow::Context;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// One process as `/proc/<pid>/stat` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proc {
    pub pid: i32,
    pub ppid: i32,
    pub pgrp: i32,
}

/// What a node kill sends `SIGKILL` to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Victims {
    /// Process groups, each led by the agent or the postmaster.
    pub groups: BTreeSet<i32>,
    /// Every process, including the group members (a group kill reaches them first;
    /// one by one catches any in another group).
    pub pids: BTreeSet<i32>,
}

/// Everything of a member's node: see the module's doc. `own_group` is the driver's
/// process group, never killed.
pub fn node_victims(
    agent: i32,
    postmaster: Option<i32>,
    table: &[Proc],
    own_group: i32,
) -> Victims {
    let roots: Vec<i32> = std::iter::once(agent).chain(postmaster).collect();
    let mut victims = Victims::default();
    for &root in &roots {
        let leads = table.iter().any(|p| p.pid == root && p.pgrp == root);
        if leads && root != own_group {
            victims.groups.insert(root);
        }
    }
    victims.pids.extend(
        table
            .iter()
            .filter(|p| victims.groups.contains(&p.pgrp))
            .map(|p| p.pid),
    );
    // Descendants: a walk down from the roots over the parent links.
    let mut seen: BTreeSet<i32> = roots.iter().copied().collect();
    let mut frontier = roots;
    while let Some(parent) = frontier.pop() {
        for child in table.iter().filter(|p| p.ppid == parent) {
            if seen.insert(child.pid) {
                frontier.push(child.pid);
            }
        }
    }
    victims.pids.extend(seen);
    victims.pids.retain(|&pid| pid > 1 && pid != own_group);
    victims
}

/// Parses `/proc/<pid>/stat`: the fields after the command's closing parenthesis (the
/// command may hold spaces and parentheses) are state, ppid, pgrp, …
pub fn parse_stat(pid: i32, text: &str) -> Option<Proc> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let _state = fields.next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some(Proc { pid, ppid, pgrp })
}

/// Every process of the host, as far as `/proc` can be read (one that ends meanwhile
/// is left out).
pub fn process_table() -> anyhow::Result<Vec<Proc>> {
    let mut table = Vec::new();
    for entry in std::fs::read_dir("/proc").context("listing /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if let Ok(text) = std::fs::read_to_string(entry.path().join("stat"))
            && let Some(proc) = parse_stat(pid, &text)
        {
            table.push(proc);
        }
    }
    Ok(table)
}

/// `SIGKILL` to every victim: the groups first (each in one go), then every process
/// one by one. One already gone is not an error.
pub fn kill_all(victims: &Victims) -> anyhow::Result<()> {
    for &group in &victims.groups {
        match killpg(Pid::from_raw(group), Signal::SIGKILL) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(err) => return Err(err).with_context(|| format!("kill -9 -{group}")),
        }
    }
    for &pid in &victims.pids {
        match kill(Pid::from_raw(pid), Signal::SIGKILL) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(err) => return Err(err).with_context(|| format!("kill -9 {pid}")),
        }
    }
    Ok(())
}

/// Waits until none of `pids` is left in `/proc`, zombies included: a killed postmaster
/// whose parent died with it is reaped by init a moment later, and until then its pid
/// still answers `kill(pid, 0)`, which is how a restarted server (or pg_rewind) decides
/// that its data directory is still in use. Returns the pids still there at `until`.
pub async fn wait_gone(pids: &BTreeSet<i32>, until: tokio::time::Instant) -> Vec<i32> {
    loop {
        let left: Vec<i32> = pids
            .iter()
            .copied()
            .filter(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
            .collect();
        if left.is_empty() || tokio::time::Instant::now() >= until {
            return left;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: i32, ppid: i32, pgrp: i32) -> Proc {
        Proc { pid, ppid, pgrp }
    }

    const DRIVER_GROUP: i32 = 50;

    #[test]
    fn keeper_node_takes_the_agent_group_and_the_postmasters_tree() {
        let table = [
            p(50, 1, 50),     // the driver
            p(100, 90, 90),   // the member loop (its own group): not the node
            p(101, 100, 101), // keel keeper, setsid: leads its group
            p(102, 101, 102), // its postmaster, in a group of its own
            p(103, 102, 102), // a backend
            p(104, 102, 102), // the walsender
            p(200, 90, 200),  // another member's keeper
        ];
        let victims = node_victims(101, Some(102), &table, DRIVER_GROUP);
        assert_eq!(victims.groups, BTreeSet::from([101, 102]));
        assert_eq!(victims.pids, BTreeSet::from([101, 102, 103, 104]));
    }

    #[test]
    fn patroni_postmaster_in_its_own_session_is_killed_with_its_backends() {
        // Patroni's postmaster is reparented to init and leads a session of its own: only
        // postmaster.pid leads to it.
        let table = [
            p(300, 90, 300), // patroni
            p(301, 300, 300),
            p(400, 1, 400), // postmaster
            p(401, 400, 400),
            p(402, 400, 400),
        ];
        let victims = node_victims(300, Some(400), &table, DRIVER_GROUP);
        assert_eq!(victims.groups, BTreeSet::from([300, 400]));
        assert_eq!(victims.pids, BTreeSet::from([300, 301, 400, 401, 402]));
    }

    #[test]
    fn pg_autoctl_children_in_other_groups_are_found_by_descent() {
        let table = [
            p(500, 90, 500),  // pg_autoctl run
            p(501, 500, 510), // a service that made a group of its own
            p(502, 501, 502), // postmaster, started by that service
            p(503, 502, 502),
            p(510, 500, 510), // another service
        ];
        let victims = node_victims(500, Some(502), &table, DRIVER_GROUP);
        assert_eq!(victims.groups, BTreeSet::from([500, 502]));
        assert_eq!(victims.pids, BTreeSet::from([500, 501, 502, 503, 510]));
    }

    #[test]
    fn never_the_drivers_group_nor_init() {
        // An agent that, against the script's set-up, did not lead a group of its own but
        // sits in the driver's: its tree dies, the group's leader does not.
        let table = [p(50, 1, 50), p(60, 50, 50), p(70, 60, 50)];
        let victims = node_victims(60, None, &table, DRIVER_GROUP);
        assert!(victims.groups.is_empty());
        assert_eq!(victims.pids, BTreeSet::from([60, 70]));
        let none = node_victims(1, None, &[p(1, 0, 1)], DRIVER_GROUP);
        assert!(none.pids.is_empty());
    }

    #[test]
    fn stale_postmaster_pid_leading_nothing_is_only_killed_by_pid() {
        let table = [p(600, 90, 600), p(700, 1, 650)];
        let victims = node_victims(600, Some(700), &table, DRIVER_GROUP);
        assert_eq!(victims.groups, BTreeSet::from([600]));
        assert_eq!(victims.pids, BTreeSet::from([600, 700]));
    }

    #[test]
    fn stat_with_parentheses_in_the_command_parses() {
        let text = "1234 (postgres: a (b) c) S 1200 1201 1201 0 -1 4194560 0";
        assert_eq!(parse_stat(1234, text), Some(p(1234, 1200, 1201)));
        assert_eq!(parse_stat(1, "garbage"), None);
    }
}
