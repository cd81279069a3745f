//! The nodes' answers that clients read (docs/api.md), written by the node with the same
//! types, so that both ends agree on every field.

use serde::{Deserialize, Serialize};

/// `GET /v1/counters/{name}` and `POST …/incr`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    /// The counter's name.
    pub name: String,
    /// Its value (0 when never incremented).
    pub value: i64,
}

/// One key of `GET /v1/kv`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyVersion {
    /// The key.
    pub key: String,
    /// The log position of the write that last changed it.
    pub version: u64,
}

/// `GET /v1/kv`: a node's keys, or under several groups (docs/shards.md) the keys of
/// its group's slots, saying which group; through `keel proxy --cluster`, every group's
/// keys merged, saying which groups answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyList {
    /// Every key, sorted.
    pub keys: Vec<KeyVersion>,
    /// The group whose slots the keys are in, when the node belongs to one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The slot table version the list was filtered by (the highest, when merged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_version: Option<u64>,
    /// Set when the list is every group's merged: who answered for each group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged: Option<Vec<GroupKeys>>,
}

/// One piece of the data of slots on the move (docs/shards.md): what the source group's
/// primary exports once they are frozen (`GET /v1/slots/export?since=N[&after_kv=K |
/// &after_counter=C]`), and what the target group's primary imports (`POST
/// /v1/slots/import`), both signed by the monitor.
///
/// An export walks the slots' kv keys in order, then their counters, then (when its slot
/// moves) the entries map's keys ([`Mark`]), and answers a piece of a few hundred KiB: every key of the slots from just after `after`
/// up to `upto`. So an import replaces what the target held of the slots in that
/// stretch, and the pieces in turn replace all of it, whatever their number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotData {
    /// The table version that froze the slots: names the move.
    pub since: u64,
    /// The slots, as a person writes them (`0-99,200`).
    pub slots: String,
    /// The piece starts just after this mark; none: at the start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Mark>,
    /// The piece ends at this mark, inclusive; none: at the end, so it is the last piece
    /// (the next starts after it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upto: Option<Mark>,
    /// Every kv key of the slots in the piece's stretch, with its value.
    pub kv: Vec<KvItem>,
    /// Every counter of the slots in the piece's stretch.
    pub counters: std::collections::BTreeMap<String, i64>,
    /// The entries map's entries in the piece's stretch, when its key's slot is one of
    /// the move's; merged into the target's map, as entries are never removed.
    pub entries: Option<std::collections::BTreeMap<String, String>>,
}

impl SlotData {
    /// Whether `mark` lies in this piece's stretch: after `after`, up to `upto`.
    pub fn covers(&self, mark: &Mark) -> bool {
        self.after.as_ref().is_none_or(|after| mark > after)
            && self.upto.as_ref().is_none_or(|upto| mark <= upto)
    }
}

/// A place in the order an export walks the slots on the move: every kv key, sorted,
/// then every counter, sorted, then the entries map's keys, sorted (a kv key comes
/// before any counter, a counter before any entry).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mark {
    /// A kv key.
    Kv(String),
    /// A counter's name.
    Counter(String),
    /// A key of the entries map.
    Entry(String),
}

impl Mark {
    /// The export's query parameter that starts a piece after this mark, and its value.
    pub fn export_param(&self) -> (&'static str, &str) {
        match self {
            Mark::Kv(key) => ("after_kv", key),
            Mark::Counter(name) => ("after_counter", name),
            Mark::Entry(key) => ("after_entry", key),
        }
    }
}

/// One key of [`SlotData`]: its value in standard base64, as values are bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvItem {
    pub key: String,
    #[serde(with = "base64_bytes")]
    pub value: Vec<u8>,
}

mod base64_bytes {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

/// One group's part of a merged [`KeyList`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupKeys {
    /// The group.
    pub group: String,
    /// The node that answered for it.
    pub node: String,
    /// How many keys it listed.
    pub keys: usize,
}

/// The parts of a node's `GET /health` a client follows to find the primary without the
/// monitor.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct NodeHealth {
    /// The node's id.
    pub node: String,
    /// `primary` or `standby`.
    pub role: String,
    /// The primary a standby follows, when it knows it.
    #[serde(default)]
    pub primary: Option<String>,
    /// A primary's standbys.
    #[serde(default)]
    pub standbys: Vec<StandbyUrl>,
}

/// A standby in a primary's `/health`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StandbyUrl {
    /// Its base URL.
    pub url: String,
}

/// The key of the entries map in the key space: all of it lives in one group.
pub const ENTRIES_KEY: &str = "entries";

/// The key a node's data route names (docs/shards.md), from its path, percent-decoded:
/// `/v1/kv/{key}`, `/v1/counters/{name}` and `…/incr`, `/v1/entries` (the key
/// [`ENTRIES_KEY`]). `None` for a route with no key (`/v1/kv`, the list) or a path that
/// is none of them, or that does not decode to UTF-8.
pub fn key_of(path: &str) -> Option<String> {
    let path = path.split('?').next().unwrap_or(path);
    let rest = path.strip_prefix("/v1/")?;
    let raw = if rest == ENTRIES_KEY {
        return Some(ENTRIES_KEY.to_owned());
    } else if let Some(key) = rest.strip_prefix("kv/") {
        key
    } else if let Some(name) = rest.strip_prefix("counters/") {
        name.strip_suffix("/incr").unwrap_or(name)
    } else {
        return None;
    };
    if raw.is_empty() || raw.contains('/') {
        return None;
    }
    percent_decode(raw)
}

/// `%XX` escapes decoded; `None` when one is broken or the result is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_routes_key_is_read_from_its_path() {
        assert_eq!(key_of("/v1/kv/foo").as_deref(), Some("foo"));
        assert_eq!(key_of("/v1/kv/%7Bbar%7D.2?x=1").as_deref(), Some("{bar}.2"));
        assert_eq!(
            key_of("/v1/counters/visits/incr").as_deref(),
            Some("visits")
        );
        assert_eq!(key_of("/v1/counters/visits").as_deref(), Some("visits"));
        assert_eq!(key_of("/v1/entries").as_deref(), Some("entries"));
        for none in [
            "/v1/kv",
            "/v1/kv/",
            "/health",
            "/v1/kv/a/b",
            "/v1/kv/%zz",
            "/v1/kv/%ff",
        ] {
            assert_eq!(key_of(none), None, "{none}");
        }
    }

    #[test]
    fn a_piece_covers_the_stretch_after_its_start_up_to_its_end_kv_keys_before_counters() {
        let kv = |k: &str| Mark::Kv(k.to_owned());
        let counter = |c: &str| Mark::Counter(c.to_owned());
        assert!(kv("zzz") < counter("a"));
        assert!(counter("zzz") < Mark::Entry("a".to_owned()));
        let piece = |after: Option<Mark>, upto: Option<Mark>| SlotData {
            since: 2,
            slots: "0-99".to_owned(),
            after,
            upto,
            kv: Vec::new(),
            counters: Default::default(),
            entries: None,
        };
        let first = piece(None, Some(kv("m")));
        assert!(first.covers(&kv("a")) && first.covers(&kv("m")));
        assert!(!first.covers(&kv("n")) && !first.covers(&counter("a")));
        let middle = piece(Some(kv("m")), Some(counter("c")));
        assert!(!middle.covers(&kv("m")) && middle.covers(&kv("n")));
        assert!(middle.covers(&counter("c")) && !middle.covers(&counter("d")));
        let last = piece(Some(counter("c")), None);
        assert!(!last.covers(&kv("zzz")) && last.covers(&counter("d")));
        assert!(piece(None, None).covers(&kv("")));
        // The marks travel as `{"kv": "m"}`; a whole copy in one piece has neither.
        let text = serde_json::to_string(&middle).expect("json");
        assert!(
            text.contains(r#""after":{"kv":"m"},"upto":{"counter":"c"}"#),
            "{text}"
        );
        let whole: SlotData = serde_json::from_str(
            r#"{"since":2,"slots":"0-99","kv":[],"counters":{},"entries":null}"#,
        )
        .expect("a piece without marks");
        assert_eq!(whole, piece(None, None));
    }
}
