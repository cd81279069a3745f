//! Which addresses and names `keel up --netns` takes: a /24 of `10.77.0.0/16` that
//! nothing on the machine uses, and names tagged with a hash of the data directory's
//! path, so that two directories never share them and one directory always gets the same.

use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;

use serde::Deserialize;

use super::NetError;

/// The first two octets of the /24s the data tier may get.
pub(super) const NET_PREFIX: [u8; 2] = [10, 77];

/// FNV-1a, 32 bits: a hash that is the same in every build, for names that must not
/// change between two runs on the same directory. Written here because it is five lines
/// and std's hasher promises no stability.
pub(super) fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// The tag in every name, from the data directory's path: six hex digits.
pub(super) fn tag_for(data_dir: &Path) -> String {
    let path = fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_owned());
    format!(
        "{:06x}",
        fnv1a(path.as_os_str().as_encoded_bytes()) & 0x00ff_ffff
    )
}

/// An IPv4 network: address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Cidr {
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
pub(super) fn networks_in_use(addrs_json: &str, routes_json: &str) -> Result<Vec<Cidr>, NetError> {
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
        serde_json::from_str(addrs_json).map_err(|source| NetError::IpOutput {
            command: "ip -j -4 addr",
            source,
        })?;
    let routes: Vec<Route> =
        serde_json::from_str(routes_json).map_err(|source| NetError::IpOutput {
            command: "ip -j -4 route show table all",
            source,
        })?;
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
pub(super) fn pick_subnet(start: u8, used: &[Cidr]) -> Option<u8> {
    (0..=255u8).map(|i| start.wrapping_add(i)).find(|&n| {
        let candidate = Cidr {
            addr: Ipv4Addr::new(NET_PREFIX[0], NET_PREFIX[1], n, 0),
            len: 24,
        };
        !used.iter().any(|u| u.overlaps(candidate))
    })
}

#[cfg(test)]
mod tests {
    use super::super::NAME_PREFIX;
    use super::*;

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
}
