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

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use super::plan::Placement;

/// The file in the data directory that lists what `keel up --netns` made.
const RECORD_FILE: &str = "netns.json";

/// The first two octets of the /24s the data tier may get.
const NET_PREFIX: [u8; 2] = [10, 77];

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

/// What `<data-dir>/netns.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    /// The `keel up` that made them, and when it started (clock ticks since boot, from
    /// `/proc/<pid>/stat`), so that a pid used again by another process is not taken for
    /// it.
    pid: u32,
    started: Option<u64>,
    bridge: String,
    veths: Vec<String>,
    namespaces: Vec<String>,
}

/// The data tier's namespaces, veths and bridge: planned, made, cut and removed.
#[derive(Debug)]
pub(super) struct Net {
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
pub(super) fn requirements(
    linux: bool,
    euid: Option<u32>,
    ip: Option<PathBuf>,
) -> anyhow::Result<PathBuf> {
    if !linux {
        bail!(
            "--netns needs Linux: network namespaces are a Linux kernel feature; without \
             --netns, keel chaos partition uses keel's own fault filter, which works everywhere"
        );
    }
    match euid {
        Some(0) => {}
        Some(uid) => bail!(
            "--netns needs root: network namespaces, veths and a bridge can only be made by \
             root, and keel up runs as uid {uid}; run it with sudo, or leave --netns out (keel \
             chaos partition then uses keel's own fault filter)"
        ),
        None => bail!(
            "--netns needs root: network namespaces, veths and a bridge can only be made by \
             root, and keel up cannot tell which user it runs as (/proc/self/status is unreadable)"
        ),
    }
    ip.ok_or_else(|| {
        anyhow::anyhow!(
            "--netns needs iproute2's `ip` command, which is not on the PATH (nor in /usr/sbin \
             or /sbin); install it (Debian and Ubuntu: apt-get install iproute2)"
        )
    })
}

/// Whether `--netns` can run here (Linux, root, `ip`): an error that names what is
/// missing, before anything is made.
pub(super) fn check() -> anyhow::Result<()> {
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

/// Clock ticks since boot at which process `pid` started, from `/proc/<pid>/stat`;
/// `None` when there is no such process, or only its zombie (it has ended).
fn start_time(pid: u32) -> Option<u64> {
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

/// FNV-1a, 32 bits: a hash that is the same in every build, for names that must not
/// change between two runs on the same directory. Written here because it is five lines
/// and std's hasher promises no stability.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// The tag in every name, from the data directory's path: six hex digits.
fn tag_for(data_dir: &Path) -> String {
    let path = fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_owned());
    format!(
        "{:06x}",
        fnv1a(path.as_os_str().as_encoded_bytes()) & 0x00ff_ffff
    )
}

/// An IPv4 network: address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cidr {
    addr: Ipv4Addr,
    len: u8,
}

impl Cidr {
    /// `10.0.0.0/8`, or an address alone (a /32).
    fn parse(s: &str) -> Option<Cidr> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, l.parse().ok()?),
            None => (s, 32),
        };
        (len <= 32).then_some(Cidr {
            addr: addr.parse().ok()?,
            len,
        })
    }

    fn overlaps(self, other: Cidr) -> bool {
        let len = self.len.min(other.len);
        let mask = if len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(len))
        };
        u32::from(self.addr) & mask == u32::from(other.addr) & mask
    }
}

/// The networks in use here: every address's network (`ip -j -4 addr`) and every route's
/// destination but the default (`ip -j -4 route show table all`).
fn networks_in_use(addrs_json: &str, routes_json: &str) -> anyhow::Result<Vec<Cidr>> {
    #[derive(Deserialize)]
    struct Link {
        #[serde(default)]
        addr_info: Vec<AddrInfo>,
    }
    #[derive(Deserialize)]
    struct AddrInfo {
        local: Option<String>,
        prefixlen: Option<u8>,
    }
    #[derive(Deserialize)]
    struct Route {
        dst: Option<String>,
    }
    let links: Vec<Link> =
        serde_json::from_str(addrs_json).context("cannot read the output of `ip -j -4 addr`")?;
    let routes: Vec<Route> = serde_json::from_str(routes_json)
        .context("cannot read the output of `ip -j -4 route show table all`")?;
    let mut nets: Vec<Cidr> = links
        .iter()
        .flat_map(|l| &l.addr_info)
        .filter_map(|a| {
            Some(Cidr {
                addr: a.local.as_deref()?.parse().ok()?,
                len: a.prefixlen?.min(32),
            })
        })
        .collect();
    nets.extend(
        routes
            .iter()
            .filter_map(|r| r.dst.as_deref())
            .filter(|d| *d != "default")
            .filter_map(Cidr::parse),
    );
    Ok(nets)
}

/// The first `10.77.N.0/24`, from `start` on (wrapping), that overlaps nothing in `used`.
fn pick_subnet(start: u8, used: &[Cidr]) -> Option<u8> {
    (0..=255u8).map(|i| start.wrapping_add(i)).find(|&n| {
        let candidate = Cidr {
            addr: Ipv4Addr::new(NET_PREFIX[0], NET_PREFIX[1], n, 0),
            len: 24,
        };
        !used.iter().any(|u| u.overlaps(candidate))
    })
}

impl Net {
    /// Checks that `--netns` can run here, removes what a crashed `keel up` on
    /// `data_dir` left, and picks names and addresses for `names` (the data tier, the
    /// monitor first) under the lock; nothing is made yet ([`Net::create`] does). Returns
    /// the plan and a line for each thing left over that was removed.
    pub(super) fn plan(data_dir: &Path, names: &[String]) -> anyhow::Result<(Net, Vec<String>)> {
        let ip = requirements(cfg!(target_os = "linux"), effective_uid(), find_ip())?;
        let record_path = data_dir.join(RECORD_FILE);
        let removed = remove_leftovers(&ip, &record_path)?;

        let lock_dir = if Path::new("/run").is_dir() {
            PathBuf::from("/run")
        } else {
            std::env::temp_dir()
        };
        let lock_path = lock_dir.join(LOCK_FILE);
        let lock = File::create(&lock_path)
            .with_context(|| format!("cannot open the lock {}", lock_path.display()))?;
        lock.lock()
            .with_context(|| format!("cannot take the lock {}", lock_path.display()))?;

        let tag = tag_for(data_dir);
        let addrs = run_ip(&ip, &["-j", "-4", "addr", "show"])?;
        let routes = run_ip(&ip, &["-j", "-4", "route", "show", "table", "all"])?;
        let used = networks_in_use(&addrs, &routes)?;
        let start = u8::try_from(u32::from_str_radix(&tag, 16).unwrap_or(0) & 0xff).unwrap_or(0);
        let Some(n) = pick_subnet(start, &used) else {
            bail!(
                "--netns: every network 10.77.0.0/24 to 10.77.255.0/24 is in use on this machine \
                 (ip -4 route); free one"
            );
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
    pub(super) fn placement(&self) -> Placement {
        let mut placement = Placement::loopback();
        for m in &self.members {
            placement.insert(&m.name, m.addr, &m.namespace);
        }
        placement
    }

    /// The path of `ip`, which starts the children in their namespaces.
    pub(super) fn ip(&self) -> &Path {
        &self.ip
    }

    /// One line for the banner: the bridge, its network, and who is where.
    pub(super) fn describe(&self) -> String {
        format!(
            "network namespaces {}-<name> on bridge {} ({}/24)",
            self.bridge, self.bridge, self.bridge_addr
        )
    }

    /// Makes the bridge, then a namespace and a veth pair for every member, recording
    /// each name first. On a failure, removes whatever was made.
    pub(super) fn create(&mut self) -> anyhow::Result<()> {
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

    fn try_create(&mut self) -> anyhow::Result<()> {
        for m in &self.members {
            if namespace_exists(&m.namespace) {
                bail!(
                    "--netns: the network namespace {} exists already, and {} does not list it as \
                     made by keel up on this directory; remove it (ip netns delete {}) or use \
                     another --data-dir",
                    m.namespace,
                    self.record_path.display(),
                    m.namespace
                );
            }
        }
        for link in std::iter::once(&self.bridge).chain(self.members.iter().map(|m| &m.veth)) {
            if self.link_exists(link) {
                bail!(
                    "--netns: the network interface {link} exists already, and {} does not list \
                     it as made by keel up on this directory; remove it (ip link delete {link}) \
                     or use another --data-dir",
                    self.record_path.display()
                );
            }
        }
        let record = Record {
            pid: std::process::id(),
            started: start_time(std::process::id()),
            bridge: self.bridge.clone(),
            veths: self.members.iter().map(|m| m.veth.clone()).collect(),
            namespaces: self.members.iter().map(|m| m.namespace.clone()).collect(),
        };
        let text = serde_json::to_string_pretty(&record).context("cannot encode netns.json")?;
        fs::write(&self.record_path, text)
            .with_context(|| format!("cannot write {}", self.record_path.display()))?;
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
    /// [`CLIENTS`](super::partition::CLIENTS): the bridge's address), and nothing else.
    /// Changes only the rules that differ from those in force. Runs `ip` and waits for
    /// it, on the supervisor's loop: a few commands of a few milliseconds, between two of
    /// its events.
    pub(super) fn apply(
        &mut self,
        drops: &BTreeMap<String, BTreeSet<String>>,
    ) -> anyhow::Result<()> {
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
    fn drop_rule(&self, op: &str, namespace: &str, addr: Ipv4Addr) -> anyhow::Result<()> {
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
        if name == super::partition::CLIENTS {
            return Some(self.bridge_addr);
        }
        self.members.iter().find(|m| m.name == name).map(|m| m.addr)
    }

    /// Removes the veths, the bridge and the namespaces, then the record. Returns a line
    /// that says what was removed, or one for each thing that could not be.
    pub(super) fn teardown(&mut self) -> Vec<String> {
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
    fn ip_ok(&self, args: &[&str]) -> anyhow::Result<()> {
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
fn run_ip(ip: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(ip)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {}", ip.display()))?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn link_exists(ip: &Path, name: &str) -> bool {
    run_ip(ip, &["link", "show", "dev", name]).is_ok()
}

/// Whether `ip netns` knows a namespace of that name (its file under /run/netns).
fn namespace_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists() || Path::new("/var/run/netns").join(name).exists()
}

/// Removes what an earlier `keel up --netns` on this directory made and did not remove
/// (it crashed or was killed); refuses when that `keel up` still runs.
fn remove_leftovers(ip: &Path, record_path: &Path) -> anyhow::Result<Vec<String>> {
    let text = match fs::read_to_string(record_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", record_path.display())),
    };
    let record: Record = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not keel up's record of its network namespaces; check that nothing it names \
             is left (ip netns list, ip link), then delete it",
            record_path.display()
        )
    })?;
    if record.pid != std::process::id()
        && record.started.is_some()
        && start_time(record.pid) == record.started
    {
        bail!(
            "another keel up --netns (pid {}) runs on this data directory; stop it first",
            record.pid
        );
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
fn remove(ip: &Path, record: &Record, record_path: &Path) -> Vec<String> {
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
            Err(e) => failed.push(format!("{e:#}")),
        }
    }
    for ns in record.namespaces.iter().filter(|n| ours(n)) {
        if !namespace_exists(ns) {
            continue;
        }
        match run_ip(ip, &["netns", "delete", ns]) {
            Ok(_) => removed.push(ns.clone()),
            Err(e) => failed.push(format!("{e:#}")),
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

    #[test]
    fn a_subnet_in_use_by_an_address_or_a_route_is_skipped() {
        let addrs = r#"[{"ifname":"lo","addr_info":[{"local":"127.0.0.1","prefixlen":8}]},
            {"ifname":"eth0","addr_info":[{"local":"10.77.5.9","prefixlen":24}]},
            {"ifname":"x"}]"#;
        let routes = r#"[{"dst":"default","gateway":"192.0.2.1"},{"dst":"10.77.6.0/23"},
            {"type":"local","dst":"10.77.9.4"},{"type":"blackhole","dst":"10.77.10.0/24"}]"#;
        let used = networks_in_use(addrs, routes).expect("parse");
        assert_eq!(
            pick_subnet(5, &used),
            Some(8),
            "5 has an address, 6 and 7 a route"
        );
        assert_eq!(
            pick_subnet(9, &used),
            Some(11),
            "a host route and a blackhole count"
        );
        assert_eq!(pick_subnet(255, &used), Some(255));
        assert_eq!(pick_subnet(0, &[]), Some(0));
        let everything = networks_in_use("[]", r#"[{"dst":"10.0.0.0/8"}]"#).expect("parse");
        assert_eq!(pick_subnet(3, &everything), None);
        assert!(networks_in_use("not json", "[]").is_err());
    }

    #[test]
    fn names_fit_the_kernel_and_differ_between_directories() {
        let a = tag_for(Path::new("/srv/keel-a"));
        let b = tag_for(Path::new("/srv/keel-b"));
        assert_eq!(a.len(), 6);
        assert_ne!(a, b);
        assert_eq!(a, tag_for(Path::new("/srv/keel-a")), "stable");
        // The longest interface name: the veth of app9.
        assert!(format!("{NAME_PREFIX}{a}-9").len() <= 15);
        assert_eq!(fnv1a(b""), 0x811c_9dc5);
        assert_eq!(fnv1a(b"a"), 0xe40c_292c);
    }

    #[test]
    fn start_time_tells_this_process_from_another_with_its_pid() {
        let mine = start_time(std::process::id()).expect("this process has a start time");
        assert!(mine > 0);
        assert_eq!(start_time(u32::MAX), None);
    }
}
