//! Network partitions of the data tier, for `keel chaos partition` and `heal`.
//!
//! Carried out by the fault filter in keel's own network layer ([`keel_core::faults`]):
//! every child of `keel up` follows its file `<data-dir>/faults/<name>.json`
//! (`KEEL_FAULTS_FILE`), and a partition between X and Y lists Y's address in X's file and
//! X's in Y's, so that neither can open a connection to the other. The kernel still
//! carries everything: clients (curl, `keel client`, the proxy and the services) are not
//! filtered, and neither is anything outside keel.
//!
//! Network namespaces would cut the kernel's paths too, but every process would need an
//! address of its own and `keel up` would need root; the filter works everywhere.
//!
//! The supervisor keeps the set of cut pairs; every change rewrites the file of every
//! process of the data tier (a temporary file, then a rename, so a process never reads
//! half a file). The files outlive a restart of the process: a partitioned node that is
//! restarted comes back partitioned, as it would on a real network.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use keel_core::ApiError;
use keel_core::faults::{FaultsFile, authority};
use reqwest::StatusCode;

use super::control::PartitionDone;
use super::plan::{Plan, Spec};

/// The directory of the fault files, inside the data directory.
pub(super) const FAULTS_DIR: &str = "faults";

/// What the answers say about how a partition is carried out.
pub(super) const METHOD: &str = "fault_filter";

/// The sentence every answer ends with, so that nobody takes the partition for more than
/// it is.
const HOW: &str = "fault filter in keel's own network layer: connections between them are \
                   refused by keel, the kernel still carries them";

/// The partitions in force and where the fault files are.
#[derive(Debug)]
pub(super) struct Partitions {
    dir: PathBuf,
    /// Pairs of processes cut off from each other, each as (smaller, larger) name.
    pairs: BTreeSet<(String, String)>,
}

type Refused = (StatusCode, ApiError);

impl Partitions {
    /// Creates `<data_dir>/faults` and writes a file that blocks nothing for every
    /// process of `plan` (a partition left over from an earlier `keel up` is gone).
    pub(super) fn start(data_dir: &Path, plan: &Plan) -> anyhow::Result<Partitions> {
        let dir = data_dir.join(FAULTS_DIR);
        fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the directory {}", dir.display()))?;
        let partitions = Partitions {
            dir,
            pairs: BTreeSet::new(),
        };
        for spec in plan.all() {
            partitions.write_file(&spec.name, Vec::new())?;
        }
        Ok(partitions)
    }

    /// The fault file of process `name`.
    pub(super) fn file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// Cuts `node` off from each of `from` (every other process of the data tier when
    /// empty), in addition to the partitions already in force.
    pub(super) fn partition(
        &mut self,
        plan: &Plan,
        node: &str,
        from: &[String],
    ) -> Result<PartitionDone, Refused> {
        let tier = data_tier(plan);
        check_name(plan, node)?;
        let from: Vec<String> = if from.is_empty() {
            tier.iter()
                .filter(|s| s.name != node)
                .map(|s| s.name.clone())
                .collect()
        } else {
            let mut list = Vec::new();
            for other in from {
                check_name(plan, other)?;
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
            method: METHOD.into(),
            message: format!("partitioned {node} from {} ({HOW})", from.join(", ")),
        })
    }

    /// Ends every partition.
    pub(super) fn heal(&mut self, plan: &Plan) -> Result<PartitionDone, Refused> {
        let healed = self.list();
        self.apply(plan, BTreeSet::new())?;
        let message = if healed.is_empty() {
            format!("healed: there was no partition ({HOW})")
        } else {
            let pairs: Vec<String> = healed.iter().map(|[a, b]| format!("{a}–{b}")).collect();
            format!(
                "healed {}: they connect to each other again ({HOW})",
                pairs.join(", ")
            )
        };
        Ok(PartitionDone {
            action: "heal".into(),
            node: None,
            from: Vec::new(),
            partitions: Vec::new(),
            method: METHOD.into(),
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

    /// Writes the files of `pairs` and keeps them; on a failure, puts back the files of
    /// the pairs in force before, so that what the processes follow is what this says.
    fn apply(&mut self, plan: &Plan, pairs: BTreeSet<(String, String)>) -> Result<(), Refused> {
        if let Err(e) = self.write_all(plan, &pairs) {
            let _ = self.write_all(plan, &self.pairs);
            return Err((
                StatusCode::INTERNAL_SERVER_ERROR,
                ApiError::new("faults_not_written", format!("{e:#}")),
            ));
        }
        self.pairs = pairs;
        Ok(())
    }

    fn write_all(&self, plan: &Plan, pairs: &BTreeSet<(String, String)>) -> anyhow::Result<()> {
        for spec in data_tier(plan) {
            self.write_file(&spec.name, blocked_for(plan, pairs, &spec.name))?;
        }
        Ok(())
    }

    /// Replaces one fault file: a temporary file, then a rename.
    fn write_file(&self, name: &str, blocked: Vec<String>) -> anyhow::Result<()> {
        let path = self.file(name);
        let tmp = self.dir.join(format!(".{name}.json.tmp"));
        let text =
            serde_json::to_string(&FaultsFile { blocked }).context("cannot encode a fault file")?;
        let mut file =
            fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        writeln!(file, "{text}").with_context(|| format!("cannot write {}", tmp.display()))?;
        drop(file);
        fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
    }
}

/// The monitor and the nodes: the processes whose connections the filter governs.
fn data_tier(plan: &Plan) -> Vec<&Spec> {
    std::iter::once(&plan.monitor).chain(&plan.nodes).collect()
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
fn check_name(plan: &Plan, name: &str) -> Result<(), Refused> {
    let tier: Vec<&str> = data_tier(plan).iter().map(|s| s.name.as_str()).collect();
    if tier.contains(&name) {
        return Ok(());
    }
    if plan.all().any(|s| s.name == name) {
        return Err(bad(format!(
            "{name} is not in the data tier: partitions are between {} (clients such as the \
             proxy and the services are not filtered)",
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
    use super::super::plan::MONITOR;
    use super::*;
    use crate::cli::UpArgs;

    fn plan(dir: &Path) -> Plan {
        let args = UpArgs {
            nodes: 3,
            data_dir: dir.to_owned(),
            base_port: 9001,
            monitor_port: 9070,
            services: 2,
            service_port: 9056,
            proxy_port: 9080,
            proxy_admin_port: 9090,
            control_port: 9060,
            verbose: false,
        };
        super::super::plan::plan(&args, &dir.join("admin.token")).expect("plan")
    }

    fn read(partitions: &Partitions, name: &str) -> Vec<String> {
        let text = fs::read_to_string(partitions.file(name)).expect("the file exists");
        let file: FaultsFile = serde_json::from_str(&text).expect("a fault file");
        file.blocked
    }

    #[test]
    fn every_process_starts_with_a_file_that_blocks_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plan = plan(dir.path());
        let partitions = Partitions::start(dir.path(), &plan).expect("start");
        for spec in plan.all() {
            assert!(read(&partitions, &spec.name).is_empty(), "{}", spec.name);
        }
    }

    #[test]
    fn a_partition_blocks_both_sides_and_heal_clears_every_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plan = plan(dir.path());
        let mut partitions = Partitions::start(dir.path(), &plan).expect("start");

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
    fn wrong_names_are_refused_and_change_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plan = plan(dir.path());
        let mut partitions = Partitions::start(dir.path(), &plan).expect("start");
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
