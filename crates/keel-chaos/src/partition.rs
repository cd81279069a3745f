//! Network partitions of the data tier, for `keel chaos partition` and `heal`, carried
//! out in one of two ways.
//!
//! - **Network namespaces** (`keel up --netns`, [`Net`]): the kernel drops the packets
//!   between two processes' namespaces. A partition with no `--from` cuts the process off
//!   from everything: the rest of the data tier and the [`CLIENTS`] (the proxy, the
//!   services, `keel up`'s checks, curl, `keel load`: everything in the root namespace),
//!   which may also be named on their own (`--from clients`).
//! - **The fault filter** in keel's own network layer ([`keel_core::faults`]), everywhere
//!   else: every child of `keel up` follows its file `<data-dir>/faults/<name>.json`
//!   (`KEEL_FAULTS_FILE`), and a partition between X and Y lists Y's address in X's file
//!   and X's in Y's, so that neither can open a connection to the other. The kernel still
//!   carries everything: clients (curl, `keel client`, the proxy and the services) are not
//!   filtered, and neither is anything outside keel.
//!
//! Either way the supervisor keeps the set of cut pairs, and every change makes what is
//! in force match it: the rules of every namespace, or the file of every process of the
//! data tier (a temporary file, then a rename, so a process never reads half a file).
//! Both outlive a restart of the process: a partitioned node that is restarted comes back
//! partitioned, as it would on a real network.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use axum::http::StatusCode;
use keel_core::ApiError;
use keel_core::faults::{FaultsFile, authority};

use crate::control::{PartitionDone, Refused};
use crate::netns::Net;
use crate::plan::{Plan, Spec};

/// A fault file that cannot be written: the processes would not follow the partitions.
#[derive(Debug, thiserror::Error)]
#[error("cannot {verb} {}", path.display())]
pub struct FaultFileError {
    verb: &'static str,
    path: PathBuf,
    source: std::io::Error,
}

/// The directory of the fault files, inside the data directory.
pub(crate) const FAULTS_DIR: &str = "faults";

/// What the answers say about how a partition is carried out: by keel's fault filter…
pub(crate) const METHOD: &str = "fault_filter";

/// …or by the kernel, between network namespaces.
pub(crate) const METHOD_NETNS: &str = "netns";

/// The sentence every answer ends with, so that nobody takes the partition for more than
/// it is.
const HOW: &str = "fault filter in keel's own network layer: connections between them are \
                   refused by keel, the kernel still carries them";

/// The same, under `keel up --netns`.
const HOW_NETNS: &str = "network namespaces: the kernel drops packets between them";

pub(crate) use crate::plan::CLIENTS;

/// The partitions in force, and how they are carried out.
#[derive(Debug)]
pub(crate) struct Partitions {
    /// Where the fault files are (the fault filter).
    dir: PathBuf,
    /// The namespaces, under `keel up --netns`; the fault filter when `None`.
    net: Option<Net>,
    /// Pairs of processes cut off from each other, each as (smaller, larger) name.
    pairs: BTreeSet<(String, String)>,
}

impl Partitions {
    /// With `net` (`keel up --netns`, its namespaces made): partitions by the kernel.
    /// Without: creates `<data_dir>/faults` and writes a file that blocks nothing for
    /// every process of `plan` (a partition left over from an earlier `keel up` is gone).
    pub(crate) fn start(
        data_dir: &Path,
        plan: &Plan,
        net: Option<Net>,
    ) -> Result<Partitions, FaultFileError> {
        let dir = data_dir.join(FAULTS_DIR);
        let partitions = Partitions {
            dir,
            net,
            pairs: BTreeSet::new(),
        };
        if partitions.net.is_none() {
            fs::create_dir_all(&partitions.dir).map_err(|source| FaultFileError {
                verb: "create the directory",
                path: partitions.dir.clone(),
                source,
            })?;
            for spec in plan.all() {
                partitions.write_file(&spec.name, Vec::new())?;
            }
        }
        Ok(partitions)
    }

    /// The fault file of process `name`, which it must follow; `None` under `--netns`,
    /// where the kernel does the work.
    pub(crate) fn file(&self, name: &str) -> Option<PathBuf> {
        self.net
            .is_none()
            .then(|| self.dir.join(format!("{name}.json")))
    }

    /// The namespaces, under `keel up --netns`.
    pub(crate) fn net(&self) -> Option<&Net> {
        self.net.as_ref()
    }

    /// How partitions are carried out: [`METHOD`] or [`METHOD_NETNS`].
    pub(crate) fn method(&self) -> &'static str {
        if self.net.is_some() {
            METHOD_NETNS
        } else {
            METHOD
        }
    }

    /// The sentence that says so.
    pub(crate) fn how(&self) -> &'static str {
        if self.net.is_some() { HOW_NETNS } else { HOW }
    }

    /// Whether a partition in force cuts `name` off from the clients, `keel up`'s health
    /// checks among them.
    pub(crate) fn cut_from_clients(&self, name: &str) -> bool {
        self.pairs.contains(&pair(name, CLIENTS))
    }

    /// Ends every partition and removes the namespaces (under `--netns`; nothing
    /// otherwise): a line for what was removed, or could not be.
    pub(crate) fn teardown(&mut self) -> Vec<String> {
        self.pairs.clear();
        self.net.as_mut().map(Net::teardown).unwrap_or_default()
    }

    /// Cuts `node` off from each of `from` (every other process of the data tier when
    /// empty; under `--shards`, the monitors and its own group's nodes), in addition to
    /// the partitions already in force. A group's name (`g2`) in `from` stands for its
    /// nodes.
    pub(crate) fn partition(
        &mut self,
        plan: &Plan,
        node: &str,
        from: &[String],
    ) -> Result<PartitionDone, Refused> {
        let tier = data_tier(plan);
        let netns = self.net.is_some();
        if node == CLIENTS {
            return Err(bad(format!(
                "the clients cannot be cut off as a whole; cut a process of the data tier off \
                 from them: keel chaos partition {} --from {CLIENTS}{}",
                tier.get(1).map_or("app1", |s| s.name.as_str()),
                if netns { "" } else { NEEDS_NETNS }
            )));
        }
        check_name(plan, node, netns)?;
        // A node of a group talks to its group and the monitors only: by default it is
        // cut off from them, and the other groups go on untouched. A group's name in
        // `from` stands for its nodes.
        let own_group = plan
            .groups
            .iter()
            .find(|(_, members)| members.iter().any(|&i| plan.nodes[i].name == node));
        let from: Vec<String> = if from.is_empty() {
            tier.iter()
                .filter(|s| s.name != node)
                .filter(|s| {
                    own_group.is_none_or(|(_, members)| {
                        plan.monitors.iter().any(|m| m.name == s.name)
                            || members.iter().any(|&i| plan.nodes[i].name == s.name)
                    })
                })
                .map(|s| s.name.clone())
                .chain(netns.then(|| CLIENTS.to_owned()))
                .collect()
        } else {
            let from: Vec<String> = from
                .iter()
                .flat_map(
                    |f| match plan.groups.iter().find(|(g, _)| g.as_str() == f) {
                        Some((_, members)) => members
                            .iter()
                            .map(|&i| plan.nodes[i].name.clone())
                            .filter(|n| n != node)
                            .collect(),
                        None => vec![f.clone()],
                    },
                )
                .collect();
            let mut list = Vec::new();
            for other in &from {
                if other == CLIENTS && !netns {
                    return Err(bad(format!(
                        "the fault filter does not cut off the clients (the proxy, the \
                         services, curl): only keel's own connections inside the data tier{NEEDS_NETNS}"
                    )));
                }
                if other != CLIENTS {
                    check_name(plan, other, netns)?;
                }
                if other == node {
                    return Err(bad(format!("{node} cannot be partitioned from itself")));
                }
                if !list.contains(other) {
                    list.push(other.clone());
                }
            }
            list
        };
        if from.is_empty() {
            return Err(bad(format!(
                "{node} is the only process of the data tier: there is nobody to partition it from"
            )));
        }
        let mut pairs = self.pairs.clone();
        for other in &from {
            pairs.insert(pair(node, other));
        }
        self.apply(plan, pairs)?;
        Ok(PartitionDone {
            action: "partition".into(),
            node: Some(node.to_owned()),
            from: from.clone(),
            partitions: self.list(),
            method: self.method().into(),
            message: format!(
                "partitioned {node} from {} ({})",
                from.join(", "),
                self.how()
            ),
        })
    }

    /// Ends every partition.
    pub(crate) fn heal(&mut self, plan: &Plan) -> Result<PartitionDone, Refused> {
        let healed = self.list();
        self.apply(plan, BTreeSet::new())?;
        let how = self.how();
        let message = if healed.is_empty() {
            format!("healed: there was no partition ({how})")
        } else {
            let pairs: Vec<String> = healed.iter().map(|[a, b]| format!("{a}–{b}")).collect();
            format!(
                "healed {}: they connect to each other again ({how})",
                pairs.join(", ")
            )
        };
        Ok(PartitionDone {
            action: "heal".into(),
            node: None,
            from: Vec::new(),
            partitions: Vec::new(),
            method: self.method().into(),
            message,
        })
    }

    /// The pairs in force.
    fn list(&self) -> Vec<[String; 2]> {
        self.pairs
            .iter()
            .map(|(a, b)| [a.clone(), b.clone()])
            .collect()
    }

    /// Puts `pairs` in force (the namespaces' rules, or the files) and keeps them; on a
    /// failure, puts back the pairs in force before, so that what the kernel or the
    /// processes follow is what this says.
    fn apply(&mut self, plan: &Plan, pairs: BTreeSet<(String, String)>) -> Result<(), Refused> {
        if let Some(net) = &mut self.net {
            if let Err(e) = net.apply(&drops(&pairs)) {
                let _ = net.apply(&drops(&self.pairs));
                return Err((
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ApiError::new("partition_failed", crate::chain(&e)),
                ));
            }
        } else if let Err(e) = self.write_all(plan, &pairs) {
            let _ = self.write_all(plan, &self.pairs);
            return Err((
                StatusCode::INTERNAL_SERVER_ERROR,
                ApiError::new("faults_not_written", crate::chain(&e)),
            ));
        }
        self.pairs = pairs;
        Ok(())
    }

    fn write_all(
        &self,
        plan: &Plan,
        pairs: &BTreeSet<(String, String)>,
    ) -> Result<(), FaultFileError> {
        for spec in data_tier(plan) {
            self.write_file(&spec.name, blocked_for(plan, pairs, &spec.name))?;
        }
        Ok(())
    }

    /// Replaces one fault file: a temporary file, then a rename.
    fn write_file(&self, name: &str, blocked: Vec<String>) -> Result<(), FaultFileError> {
        let path = self.dir.join(format!("{name}.json"));
        let tmp = self.dir.join(format!(".{name}.json.tmp"));
        let failed = |path: &Path| {
            let path = path.to_owned();
            move |source| FaultFileError {
                verb: "write",
                path,
                source,
            }
        };
        // A list of addresses always encodes.
        let text = serde_json::to_string(&FaultsFile { blocked }).unwrap_or_default();
        let mut file = fs::File::create(&tmp).map_err(failed(&tmp))?;
        writeln!(file, "{text}").map_err(failed(&tmp))?;
        drop(file);
        fs::rename(&tmp, &path).map_err(failed(&path))
    }
}

/// How a partition under `--netns` is asked for, for the refusals without it.
const NEEDS_NETNS: &str = " (`keel up --netns` can: there the kernel drops the packets)";

/// For each process, the others (or [`CLIENTS`]) it must drop everything from.
fn drops(pairs: &BTreeSet<(String, String)>) -> BTreeMap<String, BTreeSet<String>> {
    let mut drops: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (a, b) in pairs {
        drops.entry(a.clone()).or_default().insert(b.clone());
        drops.entry(b.clone()).or_default().insert(a.clone());
    }
    drops
}

/// The monitor and the nodes: the processes whose connections the filter governs.
fn data_tier(plan: &Plan) -> Vec<&Spec> {
    plan.monitors.iter().chain(&plan.nodes).collect()
}

fn pair(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_owned(), b.to_owned())
    } else {
        (b.to_owned(), a.to_owned())
    }
}

/// The addresses process `name` must not connect to under `pairs`, sorted.
fn blocked_for(plan: &Plan, pairs: &BTreeSet<(String, String)>, name: &str) -> Vec<String> {
    let mut blocked: Vec<String> = pairs
        .iter()
        .filter_map(|(a, b)| {
            if a == name {
                Some(b)
            } else if b == name {
                Some(a)
            } else {
                None
            }
        })
        .filter_map(|other| plan.all().find(|s| s.name == *other))
        .filter_map(|spec| authority(&spec.url))
        .collect();
    blocked.sort();
    blocked.dedup();
    blocked
}

/// A process of the data tier, or a refusal that names them.
fn check_name(plan: &Plan, name: &str, netns: bool) -> Result<(), Refused> {
    let tier: Vec<&str> = data_tier(plan).iter().map(|s| s.name.as_str()).collect();
    if tier.contains(&name) {
        return Ok(());
    }
    if plan.all().any(|s| s.name == name) {
        let clients = if netns {
            format!(
                "; {name} is one of the {CLIENTS}, which a process of the data tier can be cut \
                 off from with --from {CLIENTS}"
            )
        } else {
            " (clients such as the proxy and the services are not filtered)".to_owned()
        };
        return Err(bad(format!(
            "{name} is not in the data tier: partitions are between {}{clients}",
            tier.join(", ")
        )));
    }
    let all: Vec<&str> = plan.all().map(|s| s.name.as_str()).collect();
    Err((
        StatusCode::NOT_FOUND,
        ApiError::new(
            "no_such_process",
            format!(
                "keel up runs no {name:?}; it runs {} (partitions are between {})",
                all.join(", "),
                tier.join(", ")
            ),
        ),
    ))
}

fn bad(message: String) -> Refused {
    (
        StatusCode::BAD_REQUEST,
        ApiError::new("bad_partition", message),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Settings;
    use crate::credentials::Credentials;
    use crate::plan::{MONITOR, Placement};

    fn plan(dir: &Path) -> Plan {
        plan_of(dir, 3, 1)
    }

    /// The plan of `keel up --nodes NODES --shards SHARDS`.
    fn plan_of(dir: &Path, nodes: u16, shards: u16) -> Plan {
        let args = Settings {
            nodes,
            shards,
            data_dir: dir.to_owned(),
            base_port: 9001,
            store: None,
            monitors: 1,
            monitor_port: 9070,
            services: 2,
            service_port: 9056,
            proxy_port: 9080,
            proxy_admin_port: 9090,
            control_port: 9060,
            verbose: false,
            netns: false,
            tls: false,
            restart: Default::default(),
            postgres: None,
        };
        crate::plan::plan(&args, &Credentials::in_dir(dir), &Placement::loopback()).expect("plan")
    }

    fn read(partitions: &Partitions, name: &str) -> Vec<String> {
        let path = partitions.file(name).expect("the fault filter has files");
        let text = fs::read_to_string(path).expect("the file exists");
        let file: FaultsFile = serde_json::from_str(&text).expect("a fault file");
        file.blocked
    }

    #[test]
    fn every_process_starts_with_a_file_that_blocks_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plan = plan(dir.path());
        let partitions = Partitions::start(dir.path(), &plan, None).expect("start");
        for spec in plan.all() {
            assert!(read(&partitions, &spec.name).is_empty(), "{}", spec.name);
        }
    }

    #[test]
    fn under_shards_a_partition_stays_within_the_group_and_a_group_names_its_nodes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plan = plan_of(dir.path(), 4, 2);
        let mut partitions = Partitions::start(dir.path(), &plan, None).expect("start");
        let done = partitions.partition(&plan, "app1", &[]).expect("partition");
        assert_eq!(done.from, ["monitor", "app2"], "g1's and the monitor only");
        assert!(read(&partitions, "app3").is_empty(), "g2 untouched");
        let done = partitions
            .partition(&plan, "app3", &["g2".into()])
            .expect("partition");
        assert_eq!(
            done.from,
            ["app4"],
            "g2 stands for its nodes but app3 itself"
        );
        assert!(partitions.partition(&plan, "app3", &["g9".into()]).is_err());
    }

    #[test]
    fn a_partition_blocks_both_sides_and_heal_clears_every_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plan = plan(dir.path());
        let mut partitions = Partitions::start(dir.path(), &plan, None).expect("start");

        let done = partitions
            .partition(&plan, "app2", &["app1".into()])
            .expect("partition");
        assert_eq!(done.from, ["app1"]);
        assert!(
            done.message
                .contains("partitioned app2 from app1 (fault filter")
        );
        assert_eq!(read(&partitions, "app1"), ["127.0.0.1:9002"]);
        assert_eq!(read(&partitions, "app2"), ["127.0.0.1:9001"]);
        assert!(read(&partitions, "app3").is_empty());
        assert!(read(&partitions, MONITOR).is_empty());

        // From everyone else of the data tier, on top of what is in force.
        let done = partitions.partition(&plan, "app1", &[]).expect("partition");
        assert_eq!(done.from, ["monitor", "app2", "app3"]);
        assert_eq!(
            read(&partitions, "app1"),
            ["127.0.0.1:9002", "127.0.0.1:9003", "127.0.0.1:9070"]
        );
        assert_eq!(read(&partitions, MONITOR), ["127.0.0.1:9001"]);
        assert_eq!(read(&partitions, "app3"), ["127.0.0.1:9001"]);
        assert_eq!(done.partitions.len(), 3, "{:?}", done.partitions);
        assert!(
            read(&partitions, "service1").is_empty(),
            "clients are not filtered"
        );

        let done = partitions.heal(&plan).expect("heal");
        assert!(done.message.contains("app1–app2"), "{}", done.message);
        for spec in plan.all() {
            assert!(read(&partitions, &spec.name).is_empty(), "{}", spec.name);
        }
        let done = partitions.heal(&plan).expect("heal again");
        assert!(
            done.message.contains("there was no partition"),
            "{}",
            done.message
        );
    }

    #[test]
    fn the_fault_filter_refuses_to_cut_the_clients_and_says_what_can() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plan = plan(dir.path());
        let mut partitions = Partitions::start(dir.path(), &plan, None).expect("start");
        assert_eq!(partitions.method(), METHOD);
        let (status, error) = partitions
            .partition(&plan, "app1", &[CLIENTS.into()])
            .expect_err("the filter does not see the clients");
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            error.message.contains("keel up --netns"),
            "{}",
            error.message
        );
        let (status, error) = partitions
            .partition(&plan, CLIENTS, &[])
            .expect_err("the clients are not a node");
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            error.message.contains("partition app1 --from clients"),
            "{}",
            error.message
        );
        // Without --from, the data tier only: the clients are not the filter's.
        let done = partitions.partition(&plan, "app1", &[]).expect("partition");
        assert_eq!(done.from, ["monitor", "app2", "app3"]);
        assert!(!partitions.cut_from_clients("app1"));
        for spec in plan.all() {
            assert!(
                partitions.file(&spec.name).is_some(),
                "every child follows a file"
            );
        }
    }

    #[test]
    fn each_side_of_a_pair_drops_the_other() {
        let pairs: BTreeSet<(String, String)> = [
            pair("app1", "monitor"),
            pair("app1", CLIENTS),
            pair("app2", "app1"),
        ]
        .into_iter()
        .collect();
        let drops = drops(&pairs);
        let names = |n: &str| -> Vec<&str> {
            drops
                .get(n)
                .map(|s| s.iter().map(String::as_str).collect())
                .unwrap_or_default()
        };
        assert_eq!(names("app1"), ["app2", CLIENTS, "monitor"]);
        assert_eq!(names("app2"), ["app1"]);
        assert_eq!(names("monitor"), ["app1"]);
        // The clients have no namespace to drop anything in: app1's drops both ways.
        assert_eq!(names(CLIENTS), ["app1"]);
        assert!(names("app3").is_empty());
    }

    #[test]
    fn wrong_names_are_refused_and_change_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plan = plan(dir.path());
        let mut partitions = Partitions::start(dir.path(), &plan, None).expect("start");
        let (status, error) = partitions
            .partition(&plan, "app9", &[])
            .expect_err("unknown");
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(
            error.message.contains("app1, app2, app3"),
            "{}",
            error.message
        );
        let (status, _) = partitions
            .partition(&plan, "app1", &["app9".into()])
            .expect_err("unknown peer");
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, error) = partitions
            .partition(&plan, "proxy", &[])
            .expect_err("not in the data tier");
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            error.message.contains("not in the data tier"),
            "{}",
            error.message
        );
        let (status, _) = partitions
            .partition(&plan, "app1", &["app1".into()])
            .expect_err("itself");
        assert_eq!(status, StatusCode::BAD_REQUEST);
        for spec in plan.all() {
            assert!(read(&partitions, &spec.name).is_empty(), "{}", spec.name);
        }
    }
}
