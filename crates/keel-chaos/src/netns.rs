//! `keel up --netns`: the data tier in network namespaces, so that `keel chaos partition`
//! is carried out by the kernel.
//!
//! The monitor and every node run in a network namespace of their own (`ip netns exec`,
//! which keeps the pid, so kill, pause and restart by pid work as without). Each
//! namespace has `lo` and an `eth0`, one end of a veth pair whose other end is a port of a
//! Linux bridge in this (the root) namespace. The bridge has the first address of a
//! private /24 that nothing on the machine uses, `10.77.N.0/24`: the bridge is
//! `10.77.N.1`, the monitor `.2`, `appK` `.2+K`. The proxy, the services, `keel up`
//! itself and every client stay here and reach the data tier through the bridge, from
//! `10.77.N.1`; the data tier reaches nothing else (no default route).
//!
//! A partition between X and Y is a policy-routing rule in each namespace that sends what
//! comes from the other's address to a blackhole: `ip -n X rule add pref 10 from Y/32
//! blackhole`. Packets are dropped where they arrive, so a new connection waits for an
//! answer that never comes and an open one stalls, as on a network that loses them. A
//! blackhole *route* would not do: it fails the sender's `connect` at once (`EINVAL`),
//! which looks like a refused connection, not like a partition. The rules have to come
//! before the kernel's `lookup local` rule (at 0, where it would deliver the packet
//! first), so that rule is moved to 100 in each namespace when it is made. Cutting X off
//! from the clients is the same rule in X's namespace, from the bridge's address.
//!
//! Names are unique per data directory (a hash of its path): the bridge is `keel-<tag>`,
//! the veth ends here `keel-<tag>-<i>` (the monitor 0, `appK` K; at most 15 characters,
//! the kernel's limit), the namespaces `keel-<tag>-<name>`. What is made is written to
//! `<data-dir>/netns.json` *before* it is made, so that the next `keel up` on the same
//! directory removes what a crashed one left; nothing that file does not list is ever
//! deleted. The /24 is picked under a lock (`/run/keel-netns.lock`), so `keel up`s that
//! start at the same moment cannot pick the same one.
//!
//! `subnet` picks the /24 and the tag of the names; `record` keeps `netns.json` and
//! removes what it lists.

mod record;
mod subnet;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::plan::{CLIENTS, Placement};
use record::{RECORD_FILE, Record, namespace_exists, remove, remove_leftovers, start_time};
use subnet::{NET_PREFIX, networks_in_use, pick_subnet, tag_for};

/// Why `--netns` cannot run, or what went wrong making, cutting or removing the
/// namespaces. Each says what to do about it: most are about the machine, not keel.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Network namespaces are a Linux kernel feature.
    #[error(
        "--netns needs Linux: network namespaces are a Linux kernel feature; without \
         --netns, keel chaos partition uses keel's own fault filter, which works everywhere"
    )]
    NotLinux,
    /// Only root makes namespaces, veths and bridges.
    #[error(
        "--netns needs root: network namespaces, veths and a bridge can only be made by \
         root, and keel up runs as uid {uid}; run it with sudo, or leave --netns out (keel \
         chaos partition then uses keel's own fault filter)"
    )]
    NotRoot { uid: u32 },
    /// Which user this is could not be read, so root cannot be assumed.
    #[error(
        "--netns needs root: network namespaces, veths and a bridge can only be made by \
         root, and keel up cannot tell which user it runs as (/proc/self/status is unreadable)"
    )]
    UnknownUser,
    /// iproute2's `ip` is not installed where it is looked for.
    #[error(
        "--netns needs iproute2's `ip` command, which is not on the PATH (nor in /usr/sbin \
         or /sbin); install it (Debian and Ubuntu: apt-get install iproute2)"
    )]
    NoIp,
    /// The lock that makes the choice of a /24 exclusive cannot be had.
    #[error("cannot {verb} the lock {}", path.display())]
    Lock {
        verb: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// Every /24 keel may take is in use on this machine.
    #[error(
        "--netns: every network 10.77.0.0/24 to 10.77.255.0/24 is in use on this machine \
         (ip -4 route); free one"
    )]
    NoSubnet,
    /// A namespace of the chosen name exists and is not ours to remove.
    #[error(
        "--netns: the network namespace {namespace} exists already, and {} does not list it as \
         made by keel up on this directory; remove it (ip netns delete {namespace}) or use \
         another --data-dir",
        record.display()
    )]
    NamespaceExists { namespace: String, record: PathBuf },
    /// An interface of the chosen name exists and is not ours to remove.
    #[error(
        "--netns: the network interface {link} exists already, and {} does not list \
         it as made by keel up on this directory; remove it (ip link delete {link}) \
         or use another --data-dir",
        record.display()
    )]
    LinkExists { link: String, record: PathBuf },
    /// Another `keel up --netns` is running on the same data directory.
    #[error("another keel up --netns (pid {pid}) runs on this data directory; stop it first")]
    StillRunning { pid: u32 },
    /// The record of what was made cannot be read or written.
    #[error("cannot {verb} {}", path.display())]
    Record {
        verb: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The record holds something else than keel's list of what it made.
    #[error(
        "{} is not keel up's record of its network namespaces; check that nothing it names \
         is left (ip netns list, ip link), then delete it",
        path.display()
    )]
    BadRecord {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// `ip` could not be run at all.
    #[error("cannot run {}", ip.display())]
    RunIp { ip: PathBuf, source: std::io::Error },
    /// `ip` ran and refused.
    #[error("`ip {command}` failed: {stderr}")]
    Ip { command: String, stderr: String },
    /// `ip -j` printed something that is not the JSON it prints.
    #[error("cannot read the output of `{command}`")]
    IpOutput {
        command: &'static str,
        source: serde_json::Error,
    },
}

/// The priority of the partition rules: before the `lookup local` rule, moved to
/// [`LOCAL_PREF`].
const PARTITION_PREF: &str = "10";

/// Where the `lookup local` rule goes in each namespace.
const LOCAL_PREF: &str = "100";

/// The lock held while a /24 is picked and given to the bridge.
const LOCK_FILE: &str = "keel-netns.lock";

/// The network interface of a namespace (the veth end inside it).
const INNER_IF: &str = "eth0";

/// Every name made starts with this, and nothing else is ever deleted.
const NAME_PREFIX: &str = "keel-";

/// One process of the data tier in its namespace.
#[derive(Debug, Clone)]
struct Member {
    name: String,
    namespace: String,
    /// The veth end in the root namespace, a port of the bridge.
    veth: String,
    addr: Ipv4Addr,
}

/// The data tier's namespaces, veths and bridge: planned, made, cut and removed.
#[derive(Debug)]
pub(crate) struct Net {
    /// iproute2's `ip`.
    ip: PathBuf,
    record_path: PathBuf,
    bridge: String,
    /// The bridge's address: where every client of the data tier comes from.
    bridge_addr: Ipv4Addr,
    members: Vec<Member>,
    /// The sources each namespace drops now, by member name.
    dropped: BTreeMap<String, BTreeSet<Ipv4Addr>>,
    /// Held from the pick of the /24 until the bridge has it.
    lock: Option<File>,
    /// Whether anything may exist that [`Net::teardown`] must remove.
    made: bool,
}

/// Why `--netns` cannot run here, or the path of `ip`. Pure, so that the refusals are
/// tested without being root.
fn requirements(linux: bool, euid: Option<u32>, ip: Option<PathBuf>) -> Result<PathBuf, NetError> {
    if !linux {
        return Err(NetError::NotLinux);
    }
    match euid {
        Some(0) => {}
        Some(uid) => return Err(NetError::NotRoot { uid }),
        None => return Err(NetError::UnknownUser),
    }
    ip.ok_or(NetError::NoIp)
}

/// Whether `--netns` can run here (Linux, root, `ip`): an error that names what is
/// missing, before anything is made.
pub(crate) fn check() -> Result<(), NetError> {
    requirements(cfg!(target_os = "linux"), effective_uid(), find_ip()).map(drop)
}

/// The effective uid of this process, from `/proc/self/status`.
fn effective_uid() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// `ip`, on the PATH or where root's tools live.
fn find_ip() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join("ip"))
        .find(|p| p.is_file())
}

impl Net {
    /// Checks that `--netns` can run here, removes what a crashed `keel up` on
    /// `data_dir` left, and picks names and addresses for `names` (the data tier, the
    /// monitor first) under the lock; nothing is made yet ([`Net::create`] does). Returns
    /// the plan and a line for each thing left over that was removed.
    pub(crate) fn plan(data_dir: &Path, names: &[String]) -> Result<(Net, Vec<String>), NetError> {
        let ip = requirements(cfg!(target_os = "linux"), effective_uid(), find_ip())?;
        let record_path = data_dir.join(RECORD_FILE);
        let removed = remove_leftovers(&ip, &record_path)?;

        let lock_dir = if Path::new("/run").is_dir() {
            PathBuf::from("/run")
        } else {
            std::env::temp_dir()
        };
        let lock_path = lock_dir.join(LOCK_FILE);
        let lock_error = |verb| {
            let path = lock_path.clone();
            move |source| NetError::Lock { verb, path, source }
        };
        let lock = File::create(&lock_path).map_err(lock_error("open"))?;
        lock.lock().map_err(lock_error("take"))?;

        let tag = tag_for(data_dir);
        let addrs = run_ip(&ip, &["-j", "-4", "addr", "show"])?;
        let routes = run_ip(&ip, &["-j", "-4", "route", "show", "table", "all"])?;
        let used = networks_in_use(&addrs, &routes)?;
        let start = u8::try_from(u32::from_str_radix(&tag, 16).unwrap_or(0) & 0xff).unwrap_or(0);
        let Some(n) = pick_subnet(start, &used) else {
            return Err(NetError::NoSubnet);
        };
        let members = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let host = u8::try_from(i + 2).unwrap_or(u8::MAX);
                Member {
                    name: name.clone(),
                    namespace: format!("{NAME_PREFIX}{tag}-{name}"),
                    veth: format!("{NAME_PREFIX}{tag}-{i}"),
                    addr: Ipv4Addr::new(NET_PREFIX[0], NET_PREFIX[1], n, host),
                }
            })
            .collect();
        Ok((
            Net {
                ip,
                record_path,
                bridge: format!("{NAME_PREFIX}{tag}"),
                bridge_addr: Ipv4Addr::new(NET_PREFIX[0], NET_PREFIX[1], n, 1),
                members,
                dropped: BTreeMap::new(),
                lock: Some(lock),
                made: false,
            },
            removed,
        ))
    }

    /// Where each process of the data tier runs, for the plan.
    pub(crate) fn placement(&self) -> Placement {
        let mut placement = Placement::loopback();
        for m in &self.members {
            placement.insert(&m.name, m.addr, &m.namespace);
        }
        placement
    }

    /// The path of `ip`, which starts the children in their namespaces.
    pub(crate) fn ip(&self) -> &Path {
        &self.ip
    }

    /// One line for the banner: the bridge, its network, and who is where.
    pub(crate) fn describe(&self) -> String {
        format!(
            "network namespaces {}-<name> on bridge {} ({}/24)",
            self.bridge, self.bridge, self.bridge_addr
        )
    }

    /// Makes the bridge, then a namespace and a veth pair for every member, recording
    /// each name first. On a failure, removes whatever was made.
    pub(crate) fn create(&mut self) -> Result<(), NetError> {
        let result = self.try_create();
        // The bridge holds its address now, or nothing was made: others may pick.
        self.lock = None;
        if let Err(e) = result {
            for line in self.teardown() {
                eprintln!("keel: {line}");
            }
            return Err(e);
        }
        Ok(())
    }

    fn try_create(&mut self) -> Result<(), NetError> {
        for m in &self.members {
            if namespace_exists(&m.namespace) {
                return Err(NetError::NamespaceExists {
                    namespace: m.namespace.clone(),
                    record: self.record_path.clone(),
                });
            }
        }
        for link in std::iter::once(&self.bridge).chain(self.members.iter().map(|m| &m.veth)) {
            if self.link_exists(link) {
                return Err(NetError::LinkExists {
                    link: link.clone(),
                    record: self.record_path.clone(),
                });
            }
        }
        let record = Record {
            pid: std::process::id(),
            started: start_time(std::process::id()),
            bridge: self.bridge.clone(),
            veths: self.members.iter().map(|m| m.veth.clone()).collect(),
            namespaces: self.members.iter().map(|m| m.namespace.clone()).collect(),
        };
        // A record of names and numbers always encodes.
        let text = serde_json::to_string_pretty(&record).unwrap_or_default();
        fs::write(&self.record_path, text).map_err(|source| NetError::Record {
            verb: "write",
            path: self.record_path.clone(),
            source,
        })?;
        self.made = true;

        let bridge = self.bridge.clone();
        let bridge_cidr = format!("{}/24", self.bridge_addr);
        self.ip_ok(&["link", "add", &bridge, "type", "bridge"])?;
        self.ip_ok(&["addr", "add", &bridge_cidr, "dev", &bridge])?;
        self.ip_ok(&["link", "set", &bridge, "up"])?;
        for m in self.members.clone() {
            let ns = m.namespace.as_str();
            let cidr = format!("{}/24", m.addr);
            self.ip_ok(&["netns", "add", ns])?;
            self.ip_ok(&[
                "link", "add", &m.veth, "type", "veth", "peer", "name", INNER_IF, "netns", ns,
            ])?;
            self.ip_ok(&["link", "set", &m.veth, "master", &bridge])?;
            self.ip_ok(&["link", "set", &m.veth, "up"])?;
            self.ip_ok(&["-n", ns, "link", "set", "lo", "up"])?;
            self.ip_ok(&["-n", ns, "addr", "add", &cidr, "dev", INNER_IF])?;
            self.ip_ok(&["-n", ns, "link", "set", INNER_IF, "up"])?;
            // The partition rules must be looked at before the local table, which would
            // deliver a packet for this namespace's address at once (see the module's doc).
            self.ip_ok(&[
                "-n", ns, "rule", "add", "pref", LOCAL_PREF, "lookup", "local",
            ])?;
            self.ip_ok(&["-n", ns, "rule", "del", "pref", "0", "lookup", "local"])?;
        }
        Ok(())
    }

    /// Makes each namespace drop what comes from the members `drops` names for it (and
    /// [`CLIENTS`]: the bridge's address), and nothing else.
    /// Changes only the rules that differ from those in force. Runs `ip` and waits for
    /// it, on the supervisor's loop: a few commands of a few milliseconds, between two of
    /// its events.
    pub(crate) fn apply(
        &mut self,
        drops: &BTreeMap<String, BTreeSet<String>>,
    ) -> Result<(), NetError> {
        for m in self.members.clone() {
            let wanted: BTreeSet<Ipv4Addr> = drops
                .get(&m.name)
                .into_iter()
                .flatten()
                .filter_map(|other| self.addr_of(other))
                .collect();
            let now = self.dropped.get(&m.name).cloned().unwrap_or_default();
            for addr in now.difference(&wanted) {
                self.drop_rule("del", &m.namespace, *addr)?;
                self.dropped.entry(m.name.clone()).or_default().remove(addr);
            }
            for addr in wanted.difference(&now) {
                self.drop_rule("add", &m.namespace, *addr)?;
                self.dropped
                    .entry(m.name.clone())
                    .or_default()
                    .insert(*addr);
            }
        }
        Ok(())
    }

    /// Adds (`op` "add") or removes ("del") the rule in `namespace` that drops what comes
    /// from `addr`.
    fn drop_rule(&self, op: &str, namespace: &str, addr: Ipv4Addr) -> Result<(), NetError> {
        let from = format!("{addr}/32");
        self.ip_ok(&[
            "-n",
            namespace,
            "rule",
            op,
            "pref",
            PARTITION_PREF,
            "from",
            &from,
            "blackhole",
        ])
    }

    /// The address a member (or the clients, by the bridge) sends from.
    fn addr_of(&self, name: &str) -> Option<Ipv4Addr> {
        if name == CLIENTS {
            return Some(self.bridge_addr);
        }
        self.members.iter().find(|m| m.name == name).map(|m| m.addr)
    }

    /// Removes the veths, the bridge and the namespaces, then the record. Returns a line
    /// that says what was removed, or one for each thing that could not be.
    pub(crate) fn teardown(&mut self) -> Vec<String> {
        if !self.made {
            return Vec::new();
        }
        let record = Record {
            pid: 0,
            started: None,
            bridge: self.bridge.clone(),
            veths: self.members.iter().map(|m| m.veth.clone()).collect(),
            namespaces: self.members.iter().map(|m| m.namespace.clone()).collect(),
        };
        let lines = remove(&self.ip, &record, &self.record_path);
        self.made = false;
        self.dropped.clear();
        lines
    }

    /// `ip <args>`, failing with its error output.
    fn ip_ok(&self, args: &[&str]) -> Result<(), NetError> {
        run_ip(&self.ip, args).map(drop)
    }

    fn link_exists(&self, name: &str) -> bool {
        link_exists(&self.ip, name)
    }
}

impl Drop for Net {
    /// A `keel up` that ends by an error leaves nothing behind either.
    fn drop(&mut self) {
        for line in self.teardown() {
            eprintln!("keel: {line}");
        }
    }
}

/// Runs `ip <args>`; its standard output, or an error with what it printed.
fn run_ip(ip: &Path, args: &[&str]) -> Result<String, NetError> {
    let out = Command::new(ip)
        .args(args)
        .output()
        .map_err(|source| NetError::RunIp {
            ip: ip.to_owned(),
            source,
        })?;
    if !out.status.success() {
        return Err(NetError::Ip {
            command: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn link_exists(ip: &Path, name: &str) -> bool {
    run_ip(ip, &["link", "show", "dev", name]).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_is_refused_off_linux_without_root_or_without_ip() {
        let ip = Some(PathBuf::from("/usr/sbin/ip"));
        let err = requirements(false, Some(0), ip.clone()).expect_err("not Linux");
        assert!(err.to_string().contains("--netns needs Linux"), "{err}");
        let err = requirements(true, Some(1000), ip.clone()).expect_err("not root");
        let text = err.to_string();
        assert!(
            text.starts_with("--netns needs root: network namespaces"),
            "{text}"
        );
        assert!(text.contains("uid 1000"), "{text}");
        let err = requirements(true, None, ip.clone()).expect_err("unknown user");
        assert!(err.to_string().contains("--netns needs root"), "{err}");
        let err = requirements(true, Some(0), None).expect_err("no ip");
        assert!(err.to_string().contains("iproute2"), "{err}");
        assert_eq!(
            requirements(true, Some(0), ip).expect("root on Linux with ip"),
            PathBuf::from("/usr/sbin/ip")
        );
    }

    #[test]
    fn the_effective_uid_is_read_from_proc() {
        // Whoever runs the tests: the same number the metadata of a file just made shows.
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("mine");
        fs::write(&file, "").expect("write");
        let owner = fs::metadata(&file).expect("metadata").uid();
        assert_eq!(effective_uid(), Some(owner));
    }
}
