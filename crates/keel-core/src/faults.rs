//! The fault filter: the peers this process must not talk to, which is how
//! `keel chaos partition` cuts the data tier in two.
//!
//! A partition is carried out in keel's own network layer, not in the kernel: every
//! connection the data tier opens to another of its processes (a node's heartbeats to the
//! monitor, a primary's replication stream to a standby, the monitor's probes of a
//! suspected primary) asks [`Faults::blocks`] first, and a blocked one fails as a refused
//! connection would, before a byte is sent. A partition between X and Y blocks Y in X's
//! filter and X in Y's, so whichever side would open the connection fails; the answers on
//! connections the other side opened need no check.
//!
//! The filter is read from the file named by the `KEEL_FAULTS_FILE` variable
//! ([`FAULTS_FILE_ENV`]), which `keel up` sets for every child and writes as
//! `{"blocked": ["127.0.0.1:8082", "127.0.0.1:8070"]}` ([`FaultsFile`]): socket addresses
//! (`host:port`). A task re-reads it every [`POLL_INTERVAL`] when it changed. A missing,
//! unreadable or malformed file blocks nothing (with one warning until it is good again):
//! a fault injector that breaks must not become a fault itself.
//!
//! Without the variable the filter is inert: [`Faults::blocks`] tests an `Option` and
//! returns `false`, nothing runs in the background, and the data tier behaves exactly as
//! if this module did not exist.
//!
//! A file, not a control endpoint on every process: the file outlives a restart (a
//! partitioned node that is restarted comes back partitioned, as it would on a real
//! network), needs no port or token, and `keel up` can write both sides of a partition
//! without either process having to be up.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// The environment variable that names the fault file.
pub const FAULTS_FILE_ENV: &str = "KEEL_FAULTS_FILE";

/// How often the fault file is checked for a change.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// How long after its modification a file's [`Stamp`] is trusted to tell a change.
const RACY: Duration = Duration::from_secs(1);

/// The fault file's contents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultsFile {
    /// The socket addresses (`host:port`) this process must not connect to.
    pub blocked: Vec<String>,
}

impl FaultsFile {
    /// Parses a fault file: every entry must be a `host:port` (a URL's authority).
    pub fn parse(text: &str) -> Result<HashSet<String>, String> {
        let file: FaultsFile = serde_json::from_str(text)
            .map_err(|e| format!("not {{\"blocked\": [\"host:port\", …]}}: {e}"))?;
        file.blocked
            .iter()
            .map(|entry| {
                authority(entry).ok_or_else(|| format!("{entry:?} is not a host:port address"))
            })
            .collect()
    }
}

/// The fault filter of this process. Cheap to clone (an `Arc` inside); the default is
/// inert.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    inner: Option<Arc<Filter>>,
}

#[derive(Debug)]
struct Filter {
    path: PathBuf,
    /// The blocked addresses, normalized by [`authority`].
    blocked: RwLock<HashSet<String>>,
    /// Bumped whenever `blocked` changes.
    generation: watch::Sender<u64>,
}

impl Faults {
    /// A filter that blocks nothing, ever.
    pub fn inert() -> Faults {
        Faults { inner: None }
    }

    /// The filter named by `KEEL_FAULTS_FILE`, or an inert one when it is unset or
    /// empty. See [`Faults::watch`] for what happens when it is set.
    pub fn from_env() -> Faults {
        Faults::from_var(std::env::var_os(FAULTS_FILE_ENV))
    }

    fn from_var(value: Option<std::ffi::OsString>) -> Faults {
        match value {
            Some(path) if !path.is_empty() => Faults::watch(PathBuf::from(path)),
            _ => Faults::inert(),
        }
    }

    /// A filter read from `path` now, then again every [`POLL_INTERVAL`] by a task on the
    /// current tokio runtime whenever the file changed (its inode, modification time or
    /// length). The task ends when the last clone of the filter is dropped. Called outside
    /// a runtime, the file is read once and a warning says so.
    pub fn watch(path: PathBuf) -> Faults {
        let filter = Arc::new(Filter {
            path,
            blocked: RwLock::new(HashSet::new()),
            generation: watch::Sender::new(0),
        });
        let mut watcher = Watcher::default();
        watcher.refresh(&filter);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(follow(Arc::downgrade(&filter), watcher));
            }
            Err(_) => tracing::warn!(
                file = %filter.path.display(),
                "no async runtime: the fault file is read once, not followed"
            ),
        }
        Faults {
            inner: Some(filter),
        }
    }

    /// Whether a connection to `target` — a URL (`http://host:port/…`) or an address
    /// (`host:port`) — must be refused. Always `false` for an inert filter or an
    /// unparsable target.
    pub fn blocks(&self, target: &str) -> bool {
        let Some(filter) = &self.inner else {
            return false;
        };
        let blocked = filter.blocked.read().unwrap_or_else(|p| p.into_inner());
        if blocked.is_empty() {
            return false;
        }
        authority(target).is_some_and(|a| blocked.contains(&a))
    }

    /// Whether this filter follows a file (`false` when inert).
    pub fn is_active(&self) -> bool {
        self.inner.is_some()
    }

    /// The blocked addresses, sorted.
    pub fn blocked(&self) -> Vec<String> {
        let Some(filter) = &self.inner else {
            return Vec::new();
        };
        let mut list: Vec<String> = filter
            .blocked
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        list.sort();
        list
    }

    /// A subscription to changes of the blocked set, for connections that stay open:
    /// they re-check [`Faults::blocks`] whenever it fires.
    pub fn subscribe(&self) -> FaultChanges {
        FaultChanges {
            rx: self.inner.as_ref().map(|f| f.generation.subscribe()),
        }
    }
}

/// Changes of a [`Faults`] filter, from [`Faults::subscribe`].
#[derive(Debug)]
pub struct FaultChanges {
    rx: Option<watch::Receiver<u64>>,
}

impl FaultChanges {
    /// Resolves when the blocked set changed since the subscription or the last time
    /// this resolved. Never resolves for an inert filter.
    pub async fn changed(&mut self) {
        let ok = match &mut self.rx {
            Some(rx) => rx.changed().await.is_ok(),
            None => false,
        };
        if !ok {
            // Inert, or the filter is gone: nothing will ever change.
            std::future::pending::<()>().await;
        }
    }
}

/// What identifies one version of the file, so that an unchanged file is not read again.
/// The inode is part of it, since `keel up` replaces the file by a rename; but a freed
/// inode number may be reused and two versions written within one tick of the file
/// system's clock may have the same length, so a file modified less than [`RACY`] before
/// it was read is read again until it is older (git's "racy clean" rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    inode: u64,
    modified: Option<SystemTime>,
    len: u64,
}

impl Stamp {
    fn of(path: &Path) -> std::io::Result<Stamp> {
        let meta = std::fs::metadata(path)?;
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&meta);
        #[cfg(not(unix))]
        let inode = 0;
        Ok(Stamp {
            inode,
            modified: meta.modified().ok(),
            len: meta.len(),
        })
    }
}

/// The watching task's memory: the version last read, and whether the current problem
/// with the file was reported.
#[derive(Debug, Default)]
struct Watcher {
    /// `Some(None)`: the file could not be looked at (missing, say).
    seen: Option<Option<Stamp>>,
    /// The version read was old enough for its stamp to be trusted.
    settled: bool,
    warned: bool,
}

impl Watcher {
    /// Reads the file again if it changed, and updates the filter.
    fn refresh(&mut self, filter: &Filter) {
        // A stat and, rarely, a read of a file of a few hundred bytes: done in place
        // rather than on the blocking pool, which would cost more than it saves.
        let stamp = Stamp::of(&filter.path);
        let key = stamp.as_ref().ok().copied();
        if self.seen == Some(key) && self.settled {
            return;
        }
        self.seen = Some(key);
        self.settled = key.is_none_or(|k| {
            k.modified
                .and_then(|m| SystemTime::now().duration_since(m).ok())
                .is_some_and(|age| age >= RACY)
        });
        let read = stamp
            .and_then(|_| std::fs::read_to_string(&filter.path))
            .map_err(|e| format!("cannot read it: {e}"))
            .and_then(|text| FaultsFile::parse(&text));
        let blocked = match read {
            Ok(blocked) => {
                self.warned = false;
                blocked
            }
            Err(why) => {
                if !self.warned {
                    tracing::warn!(file = %filter.path.display(), error = %why, "bad fault file; nothing is blocked");
                    self.warned = true;
                }
                HashSet::new()
            }
        };
        let mut current = filter.blocked.write().unwrap_or_else(|p| p.into_inner());
        if *current != blocked {
            let mut list: Vec<&String> = blocked.iter().collect();
            list.sort();
            tracing::info!(blocked = ?list, "fault filter changed");
            *current = blocked;
            drop(current);
            filter.generation.send_modify(|g| *g = g.wrapping_add(1));
        }
    }
}

async fn follow(filter: Weak<Filter>, mut watcher: Watcher) {
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate, and the file was just read.
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(filter) = filter.upgrade() else {
            return;
        };
        watcher.refresh(&filter);
    }
}

/// The `host:port` a URL or an address points at, normalized so that two spellings of
/// one address compare equal (`LOCALHOST` and `localhost`, the forms of an IPv6
/// address); `http://` without a port means 80, `https://` 443. `None` when there is no
/// host or no valid port.
pub fn authority(target: &str) -> Option<String> {
    let (default_port, rest) = if let Some(rest) = target.strip_prefix("http://") {
        (Some(80), rest)
    } else if let Some(rest) = target.strip_prefix("https://") {
        (Some(443), rest)
    } else {
        (None, target)
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let hostport = &rest[..end];
    let hostport = hostport.rsplit_once('@').map_or(hostport, |(_, h)| h);
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => return None,
        }
    } else {
        match hostport.rsplit_once(':') {
            // An IPv6 address needs its brackets: `::1:80` says nothing for sure.
            Some((host, _)) if host.contains(':') => return None,
            Some((host, port)) => (host, Some(port)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port: u16 = match port {
        Some(p) => p.parse().ok()?,
        None => default_port?,
    };
    Some(match host.parse::<IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, port).to_string(),
        Err(_) => format!("{}:{port}", host.to_ascii_lowercase()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_addresses_name_the_same_peer() {
        let same = [
            "http://127.0.0.1:8082",
            "http://127.0.0.1:8082/",
            "http://127.0.0.1:8082/v1/heartbeat?x=1",
            "127.0.0.1:8082",
        ];
        for s in same {
            assert_eq!(authority(s).as_deref(), Some("127.0.0.1:8082"), "{s}");
        }
        assert_eq!(
            authority("http://LocalHost/health").as_deref(),
            Some("localhost:80")
        );
        assert_eq!(authority("https://h").as_deref(), Some("h:443"));
        assert_eq!(
            authority("http://[0:0::1]:8070/x").as_deref(),
            Some("[::1]:8070")
        );
        assert_eq!(authority("[::1]:8070").as_deref(), Some("[::1]:8070"));
    }

    #[test]
    fn what_is_not_an_address_is_refused() {
        for bad in [
            "",
            "nonsense",
            "127.0.0.1",
            "http://",
            "http://h:99999",
            "http://h:port",
            ":8080",
            "[::1",
            "[::1]x",
            "::1:80x",
            "::1:80",
        ] {
            assert_eq!(authority(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_file_lists_addresses_and_nothing_else() {
        let blocked =
            FaultsFile::parse(r#"{"blocked": ["127.0.0.1:8082", "http://127.0.0.1:8070"]}"#)
                .expect("a good file");
        let mut list: Vec<_> = blocked.into_iter().collect();
        list.sort();
        assert_eq!(list, ["127.0.0.1:8070", "127.0.0.1:8082"]);
        assert!(
            FaultsFile::parse(r#"{"blocked": []}"#)
                .expect("empty")
                .is_empty()
        );
        let err = FaultsFile::parse(r#"{"blocked": ["app2"]}"#).expect_err("not an address");
        assert!(err.contains("\"app2\""), "{err}");
        assert!(FaultsFile::parse(r#"{"block": []}"#).is_err(), "a typo");
        assert!(FaultsFile::parse("not json").is_err());
        assert!(FaultsFile::parse(r#"{"blocked": "127.0.0.1:1"}"#).is_err());
    }

    #[test]
    fn an_inert_filter_blocks_nothing() {
        for faults in [
            Faults::inert(),
            Faults::default(),
            Faults::from_var(None),
            Faults::from_var(Some("".into())),
        ] {
            assert!(!faults.is_active());
            assert!(!faults.blocks("http://127.0.0.1:8082"));
            assert!(faults.blocked().is_empty());
        }
    }

    /// Writes the file as `keel up` does: a temporary file, then a rename.
    fn write(path: &Path, text: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, path).expect("rename");
    }

    #[tokio::test(start_paused = true)]
    async fn the_filter_follows_its_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("app1.json");
        write(&path, r#"{"blocked": ["127.0.0.1:8082"]}"#);
        let faults = Faults::watch(path.clone());
        assert!(faults.is_active());
        assert!(
            faults.blocks("http://127.0.0.1:8082/v1/replication"),
            "read at once"
        );
        assert!(!faults.blocks("http://127.0.0.1:8070"));
        assert!(!faults.blocks("not a url"));

        let mut changes = faults.subscribe();
        // Same length, within the same tick of the file system's clock: noticed all the same.
        write(&path, r#"{"blocked": ["127.0.0.1:8070"]}"#);
        tokio::time::timeout(2 * POLL_INTERVAL, changes.changed())
            .await
            .expect("the change is noticed within a poll");
        assert!(faults.blocks("http://127.0.0.1:8070/health"));
        assert!(!faults.blocks("http://127.0.0.1:8082"));

        write(&path, r#"{"blocked": []}"#);
        tokio::time::timeout(2 * POLL_INTERVAL, changes.changed())
            .await
            .expect("healed");
        assert!(!faults.blocks("http://127.0.0.1:8070"));

        // The same blocked set written again is no change.
        write(&path, r#"{"blocked": [ ]}"#);
        assert!(
            tokio::time::timeout(4 * POLL_INTERVAL, changes.changed())
                .await
                .is_err()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_missing_or_bad_file_blocks_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("monitor.json");
        let faults = Faults::watch(path.clone());
        assert!(
            faults.is_active() && !faults.blocks("127.0.0.1:8081"),
            "missing"
        );

        let mut changes = faults.subscribe();
        write(&path, r#"{"blocked": ["127.0.0.1:8081"]}"#);
        tokio::time::timeout(2 * POLL_INTERVAL, changes.changed())
            .await
            .expect("the file appeared");
        assert!(faults.blocks("127.0.0.1:8081"));

        write(&path, r#"{"blocked": ["127.0.0.1:8081", "app2"]}"#);
        tokio::time::timeout(2 * POLL_INTERVAL, changes.changed())
            .await
            .expect("a bad file unblocks");
        assert!(!faults.blocks("127.0.0.1:8081"));

        write(&path, r#"{"blocked": ["127.0.0.1:8081"]}"#);
        tokio::time::timeout(2 * POLL_INTERVAL, changes.changed())
            .await
            .expect("good again");
        std::fs::remove_file(&path).expect("remove");
        tokio::time::timeout(2 * POLL_INTERVAL, changes.changed())
            .await
            .expect("a removed file unblocks");
        assert!(!faults.blocks("127.0.0.1:8081"));
    }

    #[tokio::test(start_paused = true)]
    async fn an_inert_filter_never_reports_a_change() {
        let mut changes = Faults::inert().subscribe();
        assert!(
            tokio::time::timeout(Duration::from_secs(3600), changes.changed())
                .await
                .is_err()
        );
    }
}
