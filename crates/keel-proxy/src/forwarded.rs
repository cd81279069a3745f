//! Whose word the proxy takes for where a request came from: `X-Forwarded-For` as the
//! backend gets it, and the `trusted_proxies` that may add to it.
//!
//! A client can write any `X-Forwarded-For` it likes. Passed on, the header would let it
//! pose as any address to a backend that limits, logs or allows by client address, so the
//! proxy replaces it with the address it sees — unless that address is a proxy the
//! operator trusts (a load balancer in front of this one), whose list is kept and the
//! peer appended, as each hop does.

use std::net::IpAddr;

use serde::Deserialize;

use crate::wire::RequestHead;

/// An address or a network (`10.0.0.0/8`, `::1`) of `trusted_proxies`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Parses `IP` or `IP/PREFIX`; a network with bits set past its prefix is refused, as
    /// it is most likely a typing mistake.
    pub fn parse(text: &str) -> Result<IpNet, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or network (10.0.0.0/8, ::1)"))?;
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= bits)
                .ok_or_else(|| format!("{text:?}: the prefix must be 0 to {bits}"))?,
        };
        let net = IpNet { addr, prefix };
        if net.masked(addr) != bits_of(addr) {
            return Err(format!(
                "{text:?} has bits set past its /{prefix}: write the network's first address"
            ));
        }
        Ok(net)
    }

    /// Whether `ip` is in this network. An IPv4 peer seen on an IPv6 socket
    /// (`::ffff:10.0.0.1`) counts as the IPv4 address it is.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.addr.is_ipv4() && self.masked(ip) == bits_of(self.addr)
    }

    /// `ip`'s bits with those past the prefix cleared.
    fn masked(&self, ip: IpAddr) -> u128 {
        let bits: u32 = if ip.is_ipv4() { 32 } else { 128 };
        let host = bits - u32::from(self.prefix);
        let mask = u128::MAX.checked_shl(host).unwrap_or(0);
        bits_of(ip) & mask
    }
}

impl TryFrom<String> for IpNet {
    type Error = String;

    fn try_from(text: String) -> Result<IpNet, String> {
        IpNet::parse(&text)
    }
}

fn bits_of(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// Whether `peer` is one of the trusted proxies.
pub fn is_trusted(trusted: &[IpNet], peer: IpAddr) -> bool {
    trusted.iter().any(|net| net.contains(peer))
}

/// Appends the `X-Forwarded-For` field the backend is sent: the client's own fields
/// (which the caller leaves out of the head) only when the peer is `trusted`, then the
/// peer.
pub(crate) fn push_forwarded_for(
    up: &mut Vec<u8>,
    head: &RequestHead,
    bytes: &[u8],
    peer: &[u8],
    trusted: bool,
) {
    up.extend_from_slice(b"X-Forwarded-For: ");
    if trusted {
        // Earlier hops as the trusted proxy listed them.
        for field in &head.fields {
            if is_forwarded_for(field.name.get(bytes)) {
                let value = field.value.get(bytes).trim_ascii();
                if !value.is_empty() {
                    up.extend_from_slice(value);
                    up.extend_from_slice(b", ");
                }
            }
        }
    }
    up.extend_from_slice(peer);
    up.extend_from_slice(b"\r\n");
}

/// Whether a field is an `X-Forwarded-For`.
pub(crate) fn is_forwarded_for(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"x-forwarded-for")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire;

    fn net(text: &str) -> IpNet {
        IpNet::parse(text).expect(text)
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect(text)
    }

    #[test]
    fn trusted_networks_match_their_addresses_only() {
        let ten = net("10.0.0.0/8");
        assert!(ten.contains(ip("10.0.0.0")));
        assert!(ten.contains(ip("10.255.255.255")));
        assert!(!ten.contains(ip("11.0.0.0")));
        assert!(
            !ten.contains(ip("::a00:1")),
            "an IPv6 address is not in a v4 network"
        );
        assert!(
            ten.contains(ip("::ffff:10.1.2.3")),
            "a v4 peer on a v6 socket counts as v4"
        );
        let one = net("127.0.0.1");
        assert!(one.contains(ip("127.0.0.1")));
        assert!(!one.contains(ip("127.0.0.2")));
        let six = net("fd00::/8");
        assert!(six.contains(ip("fd12::1")));
        assert!(!six.contains(ip("fe80::1")));
        assert!(net("0.0.0.0/0").contains(ip("192.0.2.1")));
        assert!(net("::1").contains(ip("::1")));
        assert!(is_trusted(&[one, ten], ip("10.9.9.9")));
        assert!(
            !is_trusted(&[], ip("127.0.0.1")),
            "nobody is trusted by default"
        );
    }

    #[test]
    fn a_bad_trusted_proxy_entry_says_what_is_wrong() {
        for (text, says) in [
            ("localhost", "not an IP"),
            ("10.0.0.0/33", "0 to 32"),
            ("::/129", "0 to 128"),
            ("10.0.0.1/8", "first address"),
            ("10.0.0.0/x", "prefix"),
        ] {
            let error = IpNet::parse(text).expect_err(text);
            assert!(error.contains(says), "{text}: {error}");
        }
    }

    fn forwarded_for(head_text: &str, trusted: bool) -> String {
        let mut head = RequestHead::default();
        assert_eq!(
            wire::parse_request(head_text.as_bytes(), &mut head),
            Ok(true)
        );
        let mut up = Vec::new();
        push_forwarded_for(&mut up, &head, head_text.as_bytes(), b"192.0.2.7", trusted);
        String::from_utf8(up).expect("ascii")
    }

    #[test]
    fn a_client_s_forwarded_for_is_replaced_unless_its_peer_is_trusted() {
        let two = "GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.0.0.1, 10.0.0.2\r\n\
                   x-forwarded-for: 10.0.0.3\r\n\r\n";
        assert_eq!(
            forwarded_for(two, false),
            "X-Forwarded-For: 192.0.2.7\r\n",
            "an untrusted client cannot pose as another address"
        );
        assert_eq!(
            forwarded_for(two, true),
            "X-Forwarded-For: 10.0.0.1, 10.0.0.2, 10.0.0.3, 192.0.2.7\r\n",
            "a trusted proxy's list is kept, in order, and the peer appended"
        );
        let none = "GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: \r\n\r\n";
        assert_eq!(forwarded_for(none, true), "X-Forwarded-For: 192.0.2.7\r\n");
    }
}
