//! Three (or five) monitors replicating the cluster state with Raft, on openraft.
//!
//! The cluster state ([`ClusterState`]) is the Raft state machine: every change the
//! monitor's decision machine makes — a registration, an epoch bump, a promotion, a sync
//! drop — is committed to a majority of monitors ([`Command::SetGroups`]) before anyone is told
//! of it. Only the leader runs the decision machine (`crate::machine`, unchanged and
//! still pure); a monitor that loses the leadership drops its machine, so a deposed
//! leader's decision can never take effect: its write would not commit.
//!
//! - [`log`]: the Raft log, vote and commit point, durable in redb;
//! - [`sm`]: the state machine — the cluster state and the membership — durable in the
//!   same database, with snapshots;
//! - [`net`]: the calls between monitors, over keel's HTTP, signed with the cluster
//!   secret;
//! - [`Peers`]: who the monitors are (`--id m1 --peers m1=URL,m2=URL,m3=URL`).

pub mod log;
pub mod net;
pub mod sm;

use std::collections::BTreeMap;
use std::fmt;
// The Raft types' default snapshot data is `Cursor<Vec<u8>>`, named unqualified.
use std::io::Cursor;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::state::{ClusterState, GroupsState};

openraft::declare_raft_types!(
    /// The monitors' Raft types: commands set the cluster state; nodes are addressed by
    /// URL.
    pub TypeConfig:
        D = Command,
        R = Applied,
);

/// A Raft group member.
pub type Raft = openraft::Raft<TypeConfig>;
/// A monitor's number in the group (`m3` is 3).
pub type MonitorNum = u64;

/// What the log carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// The state of a monitor of one group, as logged before groups existed: read as
    /// group `g1`'s, owning every slot.
    Set(ClusterState),
    /// Every group's state and the slot table from now on (it is small: the whole of it,
    /// every time).
    SetGroups(GroupsState),
}

/// What applying a command returns: the version applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The cluster state's version after it.
    pub version: u64,
}

/// The Raft timing. openraft's defaults (elections after 150–300 ms, heartbeats every
/// 50 ms) suit a dedicated machine; here monitors share two cores with the nodes, the
/// proxy and the load generator, and a monitor starved for 300 ms would start an election
/// it does not need. A leader heartbeats every 100 ms; a follower stands after
/// 500–750 ms without one, and votes for no one within 750 ms (openraft's leader lease,
/// `election_timeout_max`) of hearing the leader: five to seven missed heartbeats before
/// an election, and a new leader within about 1 s of a leader's death.
pub fn config() -> openraft::Config {
    openraft::Config {
        cluster_name: "keel-monitors".into(),
        heartbeat_interval: 100,
        election_timeout_min: 500,
        election_timeout_max: 750,
        install_snapshot_timeout: 2_000,
        // The state is a few KiB: snapshot every 500 entries and keep 100 behind it.
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(500),
        max_in_snapshot_log_to_keep: 100,
        ..Default::default()
    }
}

/// How long a change of the cluster state may take to commit to a majority of monitors
/// before the leader gives up deciding: a leader cut off from the others must not hold a
/// request forever.
pub const COMMIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// A leader renews nodes' leases only while a majority acknowledged it this recently
/// (counted from when it sent what they acknowledged). No monitor that acknowledged votes
/// for anyone within `election_timeout_max` (750 ms) of it, so a new leader exists at the
/// earliest 750 ms after that send: every renewal the old leader grants is granted before
/// the new leader starts, and the new leader waits out a full lease and the drift margin
/// from its own start before it promotes anyone. The 300 ms between are the allowance for
/// clock rates and delays (docs/failover.md).
pub const GRANT_CONFIDENCE: std::time::Duration = std::time::Duration::from_millis(450);

/// Whether a leader that a majority last acknowledged `since_quorum_ack` ago (`None`:
/// never in this term) may renew a node's lease.
pub fn may_renew_leases(since_quorum_ack: Option<std::time::Duration>) -> bool {
    since_quorum_ack.is_some_and(|d| d < GRANT_CONFIDENCE)
}

/// One monitor of the group: its number and the URL the others reach it at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// `m1` → 1.
    pub num: MonitorNum,
    /// Its base URL.
    pub url: String,
}

/// Every monitor of the group, by number.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peers(pub BTreeMap<MonitorNum, String>);

/// A monitor id that is not `m` followed by a number from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a monitor id: monitors are named m1, m2, m3…")]
pub struct BadMonitorId(pub String);

/// The number of a monitor id (`m2` → 2).
pub fn monitor_num(id: &str) -> Result<MonitorNum, BadMonitorId> {
    id.strip_prefix('m')
        .and_then(|n| n.parse::<MonitorNum>().ok())
        .filter(|n| *n > 0)
        .ok_or_else(|| BadMonitorId(id.to_owned()))
}

/// A `--peers` list that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadPeers {
    /// An entry is not `ID=URL`.
    #[error("{0:?} is not ID=URL (e.g. m1=http://127.0.0.1:8070)")]
    Entry(String),
    /// An id is not `mN`.
    #[error(transparent)]
    Id(#[from] BadMonitorId),
    /// An id appears twice.
    #[error("monitor {0} is listed twice")]
    Twice(String),
    /// A URL is not http(s)://host:port.
    #[error("{0:?} is not a monitor URL: write http://HOST:PORT or https://HOST:PORT")]
    Url(String),
}

impl FromStr for Peers {
    type Err = BadPeers;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut peers = BTreeMap::new();
        for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (id, url) = entry
                .split_once('=')
                .ok_or_else(|| BadPeers::Entry(entry.to_owned()))?;
            let num = monitor_num(id.trim())?;
            let url = url.trim().trim_end_matches('/');
            let parsed: Option<http::Uri> = url.parse().ok();
            let ok = parsed.as_ref().is_some_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https"))
                    && u.authority().is_some_and(|a| a.port_u16().is_some())
            });
            if !ok {
                return Err(BadPeers::Url(url.to_owned()));
            }
            if peers.insert(num, url.to_owned()).is_some() {
                return Err(BadPeers::Twice(id.trim().to_owned()));
            }
        }
        Ok(Peers(peers))
    }
}

impl fmt::Display for Peers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(n, u)| format!("m{n}={u}")).collect();
        write!(f, "{}", parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_renews_leases_only_while_a_majority_acknowledged_it_recently() {
        use std::time::Duration;
        assert!(!may_renew_leases(None), "not yet acknowledged in this term");
        assert!(may_renew_leases(Some(Duration::ZERO)));
        assert!(may_renew_leases(Some(
            GRANT_CONFIDENCE - Duration::from_millis(1)
        )));
        assert!(!may_renew_leases(Some(GRANT_CONFIDENCE)));
        // Every renewal is granted before a new leader can exist, with room to spare.
        let election_timeout_max = Duration::from_millis(config().election_timeout_max);
        assert!(GRANT_CONFIDENCE + Duration::from_millis(300) <= election_timeout_max);
    }

    #[test]
    fn peers_parse_and_say_what_is_wrong() {
        let p: Peers = "m1=http://127.0.0.1:8070, m2=http://127.0.0.1:8071/,m3=https://h:1"
            .parse()
            .expect("peers");
        assert_eq!(p.0.len(), 3);
        assert_eq!(p.0[&2], "http://127.0.0.1:8071");
        assert_eq!(
            p.to_string(),
            "m1=http://127.0.0.1:8070,m2=http://127.0.0.1:8071,m3=https://h:1"
        );
        assert_eq!(
            "x1=http://a:1".parse::<Peers>(),
            Err(BadPeers::Id(BadMonitorId("x1".into())))
        );
        assert_eq!(
            "m1=http://a:1,m1=http://b:2".parse::<Peers>(),
            Err(BadPeers::Twice("m1".into()))
        );
        assert_eq!("m1=a:1".parse::<Peers>(), Err(BadPeers::Url("a:1".into())));
        assert_eq!("m1".parse::<Peers>(), Err(BadPeers::Entry("m1".into())));
        assert_eq!(monitor_num("m0"), Err(BadMonitorId("m0".into())));
    }
}
