//! Which backend answered: read from a response header or a JSON field, and counted.
//!
//! A front door names the backend it used in `Keel-Backend`; a data node names itself in
//! `Keel-Node`; an app service answers `/data` with a JSON body carrying `backend_id`.
//! [`SpreadBy`] says which of these to read; [`Spread`] counts the answers per name.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use http::HeaderMap;
use serde::Serialize;

use keel_core::headers::{KEEL_BACKEND, KEEL_NODE};

/// Where the name of the backend that answered is read from (`--spread-by`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SpreadBy {
    /// `auto`: the `Keel-Backend` header, else `Keel-Node`.
    #[default]
    Auto,
    /// `header:NAME`: that response header.
    Header(http::HeaderName),
    /// `json:FIELD`: that field of a JSON body; `a.b` reads field `b` of object `a`.
    /// Strings are taken as they are, numbers and booleans as their JSON text.
    Json(String),
    /// `none`: no spread.
    None,
    /// Several of the above at once, separated by commas (`json:backend_id,
    /// json:postgres_node`): the name is theirs joined by [`FIELD_SEPARATOR`], `?` where
    /// one is missing, so that the spread is over the pairs and over each field.
    Fields(Vec<SpreadBy>),
}

/// A response's headers, looked up by name (without regard to case): a parsed
/// [`HeaderMap`], or the headers of a head parsed in place ([`crate::http1`]).
pub trait Headers {
    /// The value of the first header called `name`.
    fn value(&self, name: &str) -> Option<&[u8]>;
}

impl Headers for HeaderMap {
    fn value(&self, name: &str) -> Option<&[u8]> {
        self.get(name).map(http::HeaderValue::as_bytes)
    }
}

impl Headers for [httparse::Header<'_>] {
    fn value(&self, name: &str) -> Option<&[u8]> {
        self.iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }
}

/// What joins the parts of a [`SpreadBy::Fields`] name.
pub const FIELD_SEPARATOR: &str = " × ";

impl SpreadBy {
    /// Whether the body must be read as JSON to find the name.
    pub fn needs_body(&self) -> bool {
        match self {
            SpreadBy::Json(_) => true,
            SpreadBy::Fields(parts) => parts.iter().any(SpreadBy::needs_body),
            _ => false,
        }
    }

    /// The name in a response, from its headers and, when read, its body.
    pub fn from_response(
        &self,
        headers: &(impl Headers + ?Sized),
        body: Option<&[u8]>,
    ) -> Option<String> {
        match self {
            SpreadBy::Fields(parts) => {
                let names: Vec<Option<String>> = parts
                    .iter()
                    .map(|p| p.from_response(headers, body))
                    .collect();
                if names.iter().all(Option::is_none) {
                    return None;
                }
                Some(
                    names
                        .into_iter()
                        .map(|n| n.unwrap_or_else(|| "?".to_owned()))
                        .collect::<Vec<_>>()
                        .join(FIELD_SEPARATOR),
                )
            }
            SpreadBy::Json(_) => body.and_then(|b| self.from_body(b)),
            _ => self.from_headers(headers),
        }
    }

    /// The name in a response's headers, for the header kinds.
    pub fn from_headers(&self, headers: &(impl Headers + ?Sized)) -> Option<String> {
        let text = |name: &str| {
            headers
                .value(name)
                .and_then(|v| std::str::from_utf8(v).ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        match self {
            SpreadBy::Auto => text(KEEL_BACKEND).or_else(|| text(KEEL_NODE)),
            SpreadBy::Header(name) => text(name.as_str()),
            SpreadBy::Json(_) | SpreadBy::None | SpreadBy::Fields(_) => None,
        }
    }

    /// The name in a JSON body, for [`SpreadBy::Json`]; `None` when the body is not JSON
    /// or has no such field.
    pub fn from_body(&self, body: &[u8]) -> Option<String> {
        let SpreadBy::Json(path) = self else {
            return None;
        };
        let value: serde_json::Value = serde_json::from_slice(body).ok()?;
        let mut at = &value;
        for part in path.split('.') {
            at = at.get(part)?;
        }
        match at {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(_) | serde_json::Value::Bool(_) => Some(at.to_string()),
            _ => None,
        }
    }
}

impl FromStr for SpreadBy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let usage = "use auto, none, header:NAME or json:FIELD, or several of the last two separated by commas";
        if s.contains(',') {
            let parts = s
                .split(',')
                .map(|part| match part.trim().parse::<SpreadBy>()? {
                    p @ (SpreadBy::Header(_) | SpreadBy::Json(_)) => Ok(p),
                    _ => Err(format!("{part:?} cannot be one of several fields; {usage}")),
                })
                .collect::<Result<Vec<_>, String>>()?;
            return Ok(SpreadBy::Fields(parts));
        }
        match s {
            "auto" => return Ok(SpreadBy::Auto),
            "none" => return Ok(SpreadBy::None),
            _ => {}
        }
        match s.split_once(':') {
            Some(("header", name)) => http::HeaderName::from_bytes(name.trim().as_bytes())
                .map(SpreadBy::Header)
                .map_err(|_| format!("{name:?} is not a header name; {usage}")),
            Some(("json", field)) => {
                let field = field.trim();
                if field.is_empty() || field.split('.').any(str::is_empty) {
                    Err(format!("{field:?} is not a JSON field name; {usage}"))
                } else {
                    Ok(SpreadBy::Json(field.to_owned()))
                }
            }
            _ => Err(format!("{s:?}: {usage}")),
        }
    }
}

impl fmt::Display for SpreadBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpreadBy::Auto => f.write_str("header Keel-Backend, else Keel-Node"),
            SpreadBy::Header(name) => write!(f, "header {name}"),
            SpreadBy::Json(field) => write!(f, "JSON field {field}"),
            SpreadBy::None => f.write_str("none"),
            SpreadBy::Fields(parts) => {
                let parts: Vec<String> = parts.iter().map(ToString::to_string).collect();
                f.write_str(&parts.join(FIELD_SEPARATOR))
            }
        }
    }
}

/// Answers counted per backend name.
#[derive(Debug, Clone, Default)]
pub struct Spread {
    counts: HashMap<String, u64>,
    /// Answers that named no backend.
    unnamed: u64,
}

/// One backend's share, for the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackendShare {
    /// The name the answers carried.
    pub name: String,
    /// How many answers carried it.
    pub count: u64,
    /// `count` over all answers that named a backend, in percent.
    pub percent: f64,
}

impl Spread {
    /// Counts one answer.
    pub fn record(&mut self, name: Option<&str>) {
        match name {
            // Look up by &str first: most answers name a backend seen before, and this
            // spares an allocation per request.
            Some(name) => match self.counts.get_mut(name) {
                Some(count) => *count += 1,
                None => {
                    self.counts.insert(name.to_owned(), 1);
                }
            },
            None => self.unnamed += 1,
        }
    }

    /// Answers that named no backend.
    pub fn unnamed(&self) -> u64 {
        self.unnamed
    }

    /// Every backend with its count and share, most answers first (then by name).
    pub fn shares(&self) -> Vec<BackendShare> {
        let named: u64 = self.counts.values().sum();
        let mut shares: Vec<BackendShare> = self
            .counts
            .iter()
            .map(|(name, &count)| BackendShare {
                name: name.clone(),
                count,
                percent: if named == 0 {
                    0.0
                } else {
                    count as f64 * 100.0 / named as f64
                },
            })
            .collect();
        shares.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.name.cmp(&b.name)));
        shares
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn auto_prefers_keel_backend_and_falls_back_to_keel_node() {
        let both = headers(&[("keel-backend", "svc1"), ("keel-node", "app1")]);
        assert_eq!(SpreadBy::Auto.from_headers(&both).as_deref(), Some("svc1"));
        let node = headers(&[("keel-node", "app2")]);
        assert_eq!(SpreadBy::Auto.from_headers(&node).as_deref(), Some("app2"));
        assert_eq!(SpreadBy::Auto.from_headers(&HeaderMap::new()), None);
    }

    #[test]
    fn several_fields_name_the_pair_and_a_missing_one_is_a_question_mark() {
        let by: SpreadBy = "json:backend_id, json:postgres_node"
            .parse()
            .expect("valid");
        assert!(by.needs_body());
        let body = br#"{"backend_id":"service1","postgres_node":"pg2"}"#;
        assert_eq!(
            by.from_response(&HeaderMap::new(), Some(body)).as_deref(),
            Some("service1 × pg2")
        );
        let half = br#"{"backend_id":"service2","error":"postgres_unavailable"}"#;
        assert_eq!(
            by.from_response(&HeaderMap::new(), Some(half)).as_deref(),
            Some("service2 × ?")
        );
        assert_eq!(by.from_response(&HeaderMap::new(), Some(b"{}")), None);
        assert!("json:a,none".parse::<SpreadBy>().is_err());
        assert!("json:a,".parse::<SpreadBy>().is_err());
        assert_eq!(
            by.to_string(),
            "JSON field backend_id × JSON field postgres_node"
        );
    }

    #[test]
    fn a_named_header_is_read_and_nothing_else() {
        let by: SpreadBy = "header:X-Served-By".parse().expect("valid");
        let h = headers(&[("x-served-by", "b"), ("keel-node", "app1")]);
        assert_eq!(by.from_headers(&h).as_deref(), Some("b"));
        assert_eq!(by.from_headers(&headers(&[("keel-node", "app1")])), None);
    }

    #[test]
    fn a_json_field_is_read_from_the_body_even_nested_or_numeric() {
        let by: SpreadBy = "json:backend_id".parse().expect("valid");
        assert!(by.needs_body());
        assert_eq!(
            by.from_body(br#"{"backend_id": "svc2", "rows": []}"#)
                .as_deref(),
            Some("svc2")
        );
        assert_eq!(by.from_body(br#"{"backend_id": 7}"#).as_deref(), Some("7"));
        assert_eq!(by.from_body(b"not json"), None);
        assert_eq!(by.from_body(br#"{"other": 1}"#), None);
        let nested: SpreadBy = "json:meta.node".parse().expect("valid");
        assert_eq!(
            nested.from_body(br#"{"meta": {"node": "n1"}}"#).as_deref(),
            Some("n1")
        );
    }

    #[test]
    fn bad_spread_flags_say_what_is_accepted() {
        for bad in [
            "json:",
            "json:a..b",
            "header:bad name",
            "cookie:x",
            "backend",
        ] {
            let err = bad.parse::<SpreadBy>().expect_err(bad);
            assert!(err.contains("header:NAME or json:FIELD"), "{bad}: {err}");
        }
    }

    #[test]
    fn shares_are_exact_and_sorted() {
        let mut spread = Spread::default();
        for name in ["b", "a", "b", "b", "a", "c"] {
            spread.record(Some(name));
        }
        spread.record(None);
        let shares = spread.shares();
        let names: Vec<(&str, u64)> = shares.iter().map(|s| (s.name.as_str(), s.count)).collect();
        assert_eq!(names, [("b", 3), ("a", 2), ("c", 1)]);
        assert_eq!(shares[0].percent, 50.0);
        assert_eq!(spread.unnamed(), 1);
    }
}
