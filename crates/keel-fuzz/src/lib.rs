//! The bodies of keel's fuzz targets, here so that the test suite can replay every case
//! the fuzzers found (`tests/regressions.rs` reads `fuzz/regressions/<target>/`) without
//! the fuzzers themselves, which need a nightly compiler (`scripts/fuzz` runs them).
//!
//! Each function takes arbitrary bytes and must neither panic nor hang; where a property
//! holds for every input, it asserts it, so a violation is a crash the fuzzer reports.
//!
//! | target | what it takes apart |
//! |---|---|
//! | [`proxy_request_head`] | the proxy's request head parser and body framing |
//! | [`proxy_response_head`] | the proxy's response head parser and body framing |
//! | [`proxy_chunks`] | the proxy's chunked-body scanner, fed in arbitrary pieces |
//! | [`replication_frames`] | the replication stream: frame decoder and both message types |
//! | [`update_file`] | the entries update: `key=value` lines and JSON |
//! | [`monitor_requests`] | the monitor's request bodies, through its state machine |
//! | [`auth_header`] | the `Keel-Auth` header and its check |
#![forbid(unsafe_code)]

use bytes::BytesMut;
use keel_client::wire::{FailoverRequest, HeartbeatRequest, RegisterRequest, SyncDropRequest};
use keel_monitor::machine::{Input, Monitor, Output};
use keel_node::repl::frame::{self, ToPrimary, ToStandby};
use tokio_util::codec::Decoder;

/// A target: arbitrary bytes in, a panic on a bug.
pub type Target = fn(&[u8]);

/// The targets by name, for the replay of their cases.
pub const TARGETS: &[(&str, Target)] = &[
    ("proxy_request_head", proxy_request_head),
    ("proxy_response_head", proxy_response_head),
    ("proxy_chunks", proxy_chunks),
    ("replication_frames", replication_frames),
    ("update_file", update_file),
    ("monitor_requests", monitor_requests),
    ("auth_header", auth_header),
];

/// Parses a request head; when it is whole, its framing is decided and every field lies
/// inside the buffer.
pub fn proxy_request_head(data: &[u8]) {
    let mut head = keel_proxy::wire::RequestHead::default();
    if let Ok(true) = keel_proxy::wire::parse_request(data, &mut head) {
        assert!(head.len <= data.len(), "a head longer than its input");
    }
}

/// Parses a response head, as the answer to a GET and to a HEAD.
pub fn proxy_response_head(data: &[u8]) {
    for to_head in [false, true] {
        let mut head = keel_proxy::wire::ResponseHead::default();
        if let Ok(true) = keel_proxy::wire::parse_response(data, to_head, &mut head) {
            assert!(head.len <= data.len(), "a head longer than its input");
        }
    }
}

/// Scans a chunked body fed in pieces whose sizes the first byte chooses: whatever the
/// cut, the scanner finds the same end and passes the same data through.
pub fn proxy_chunks(data: &[u8]) {
    let Some((&step, body)) = data.split_first() else {
        return;
    };
    let whole = scan(body, body.len().max(1));
    let pieces = scan(body, usize::from(step % 16) + 1);
    assert_eq!(whole, pieces, "the scan depends on how the body was cut");
}

/// The scanner's verdict on `body` fed `step` bytes at a time: how many bytes the body
/// took (when it ended), whether it ended or was refused, and the data it carried.
fn scan(body: &[u8], step: usize) -> (usize, Option<bool>, Vec<u8>) {
    let mut scanner = keel_proxy::wire::Chunked::default();
    let mut data = Vec::new();
    let mut taken = 0;
    for piece in body.chunks(step) {
        match scanner.scan(piece, |d| data.extend_from_slice(d)) {
            Ok(n) => {
                taken += n;
                if scanner.is_done() {
                    return (taken, Some(true), data);
                }
            }
            // Where in the piece it broke is the scanner's business; the data before
            // the break is what counts.
            Err(_) => return (0, Some(false), data),
        }
    }
    (taken, None, data)
}

/// Decodes the replication stream: frames cut from the bytes as they would arrive, each
/// read as either side's message; one that decodes encodes back to the same message.
pub fn replication_frames(data: &[u8]) {
    let mut codec = frame::codec();
    let mut buffer = BytesMut::new();
    for piece in data.chunks(7) {
        buffer.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buffer) {
                Ok(Some(raw)) => {
                    if let Ok(message) = frame::decode::<ToStandby>(&raw) {
                        let again = frame::encode(&message).expect("a decoded frame encodes");
                        let back: ToStandby = frame::decode(&again).expect("and decodes back");
                        assert_eq!(back, message);
                    }
                    let _ = frame::decode::<ToPrimary>(&raw);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

/// Reads an entries update both ways; every key it accepts passes the key rules.
pub fn update_file(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(entries) = keel_node::update::parse_lines(text)
    {
        for key in entries.keys() {
            assert!(keel_node::update::check_key(key).is_ok(), "{key:?}");
        }
    }
    if let Ok(entries) = keel_node::update::parse_json(data) {
        for key in entries.keys() {
            assert!(keel_node::update::check_key(key).is_ok(), "{key:?}");
        }
    }
}

/// Feeds request bodies to a monitor that has a primary and a standby: the first byte
/// picks the route, the rest is the body, split on `\n` into several requests. Every
/// request gets exactly one answer, and a refused one changes no state.
pub fn monitor_requests(data: &[u8]) {
    let now = tokio::time::Instant::now();
    let (mut monitor, _) = Monitor::new(Default::default(), None, now);
    for (node, url) in [
        ("app1", "http://127.0.0.1:8081"),
        ("app2", "http://127.0.0.1:8082"),
    ] {
        let body =
            format!(r#"{{"node":"{node}","url":"{url}","incarnation":1,"epoch":0,"lsn":0}}"#);
        if let Ok(req) = serde_json::from_str::<RegisterRequest>(&body) {
            monitor.handle(Input::Register(req), now);
        }
    }
    let Some((&route, bodies)) = data.split_first() else {
        return;
    };
    for (i, body) in bodies.split(|b| *b == b'\n').enumerate() {
        let input = match route % 4 {
            0 => serde_json::from_slice::<RegisterRequest>(body).map(Input::Register),
            1 => serde_json::from_slice::<HeartbeatRequest>(body).map(Input::Heartbeat),
            2 => serde_json::from_slice::<SyncDropRequest>(body).map(Input::SyncDrop),
            _ => serde_json::from_slice::<FailoverRequest>(body)
                .map(|r| Input::Switchover { to: r.to }),
        };
        let Ok(input) = input else {
            continue;
        };
        let before = monitor.state().clone();
        let at = now + std::time::Duration::from_millis(10 * i as u64);
        let out = monitor.handle(input, at);
        let replies: Vec<_> = out
            .iter()
            .filter_map(|o| match o {
                Output::Reply(r) => Some(r),
                _ => None,
            })
            .collect();
        assert_eq!(
            replies.len(),
            1,
            "a request without exactly one answer: {out:?}"
        );
        if replies[0].is_err() {
            assert_eq!(
                monitor.state(),
                &before,
                "a refused request changed the state"
            );
        }
    }
}

/// Parses a `Keel-Auth` header and checks it against a fixed request: whatever it
/// holds, it is refused (the fuzzer does not know the secret).
pub fn auth_header(data: &[u8]) {
    use keel_auth::{Claim, ClusterSecret, Hosts, RequestParts, Verifier, body_digest};
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(claim) = Claim::parse(text) else {
        return;
    };
    let Ok(secret) = ClusterSecret::new("fuzzing-secret-0123456789abcdef0123456789", "fuzz") else {
        return;
    };
    let mut verifier = Verifier::new(Some(secret.key()), None, Hosts::any());
    let digest = body_digest(b"");
    let parts = RequestParts {
        method: "POST",
        host: "127.0.0.1:8070",
        path: "/v1/heartbeat",
        body: &digest,
    };
    assert!(
        verifier.verify(&claim, &parts, claim.ts_ms).is_err(),
        "a forged signature was accepted"
    );
}
