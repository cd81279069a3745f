//! `<data-dir>/netns.json`: what `keel up --netns` made, written before it is made, so
//! that the next `keel up` on the same directory removes what a crashed one left — and
//! nothing that the record does not list.

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{NAME_PREFIX, NetError, link_exists, run_ip};

/// The file in the data directory that lists what `keel up --netns` made.
pub(super) const RECORD_FILE: &str = "netns.json";

/// What `<data-dir>/netns.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Record {
    /// The `keel up` that made them, and when it started (clock ticks since boot, from
    /// `/proc/<pid>/stat`), so that a pid used again by another process is not taken for
    /// it.
    pub(super) pid: u32,
    pub(super) started: Option<u64>,
    pub(super) bridge: String,
    pub(super) veths: Vec<String>,
    pub(super) namespaces: Vec<String>,
}

/// Clock ticks since boot at which process `pid` started, from `/proc/<pid>/stat`;
/// `None` when there is no such process, or only its zombie (it has ended).
pub(super) fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name in parentheses, which may hold spaces: field 3 (the
    // state) onwards; the start time is field 22.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    if fields.next()? == "Z" {
        return None;
    }
    fields.nth(18)?.parse().ok()
}
/// Whether `ip netns` knows a namespace of that name (its file under /run/netns).
pub(super) fn namespace_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists() || Path::new("/var/run/netns").join(name).exists()
}
/// Removes what an earlier `keel up --netns` on this directory made and did not remove
/// (it crashed or was killed); refuses when that `keel up` still runs.
pub(super) fn remove_leftovers(ip: &Path, record_path: &Path) -> Result<Vec<String>, NetError> {
    let text = match fs::read_to_string(record_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(NetError::Record {
                verb: "read",
                path: record_path.to_owned(),
                source,
            });
        }
    };
    let record: Record = serde_json::from_str(&text).map_err(|source| NetError::BadRecord {
        path: record_path.to_owned(),
        source,
    })?;
    if record.pid != std::process::id()
        && record.started.is_some()
        && start_time(record.pid) == record.started
    {
        return Err(NetError::StillRunning { pid: record.pid });
    }
    let mut lines = remove(ip, &record, record_path);
    if !lines.is_empty() {
        lines.insert(
            0,
            "an earlier keel up --netns on this directory ended without cleaning up:".to_owned(),
        );
    }
    Ok(lines)
}

/// Removes what `record` lists that still exists (names that do not start with
/// `keel-` are never touched), then the record file itself when all went. A line for each
/// thing removed or not removable.
pub(super) fn remove(ip: &Path, record: &Record, record_path: &Path) -> Vec<String> {
    let mut removed = Vec::new();
    let mut failed = Vec::new();
    let ours = |name: &String| name.starts_with(NAME_PREFIX);
    // A veth goes with its pair, at once; deleting the namespace alone would leave it to
    // the kernel's background clean-up, and a `keel up` started right after could find
    // the name still taken.
    for link in record
        .veths
        .iter()
        .chain(std::iter::once(&record.bridge))
        .filter(|n| ours(n))
    {
        if !link_exists(ip, link) {
            continue;
        }
        match run_ip(ip, &["link", "delete", "dev", link]) {
            Ok(_) => removed.push(link.clone()),
            Err(e) => failed.push(crate::chain(&e)),
        }
    }
    for ns in record.namespaces.iter().filter(|n| ours(n)) {
        if !namespace_exists(ns) {
            continue;
        }
        match run_ip(ip, &["netns", "delete", ns]) {
            Ok(_) => removed.push(ns.clone()),
            Err(e) => failed.push(crate::chain(&e)),
        }
    }
    let mut lines = Vec::new();
    if !removed.is_empty() {
        lines.push(format!(
            "removed the network namespaces and interfaces: {}",
            removed.join(", ")
        ));
    }
    if failed.is_empty() {
        let _ = fs::remove_file(record_path);
    } else {
        for e in failed {
            lines.push(format!("could not remove: {e}"));
        }
        lines.push(format!(
            "what could not be removed is listed in {}; the next keel up --netns on this directory tries again",
            record_path.display()
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_tells_this_process_from_another_with_its_pid() {
        let mine = start_time(std::process::id()).expect("this process has a start time");
        assert!(mine > 0);
        assert_eq!(start_time(u32::MAX), None);
    }
}
