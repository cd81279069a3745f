//! Parsing an entries update: a JSON object of strings, or the seed's `key=value` lines.

use std::collections::BTreeMap;

/// Longest key accepted, in bytes (entries, kv keys and counter names alike).
pub const MAX_KEY: usize = 1024;

/// Why an update was refused; the message names what was wrong and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    /// A `key=value` line was malformed.
    #[error("line {line}: {reason}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What was wrong with it.
        reason: String,
    },
    /// The JSON body was not an object of strings.
    #[error("{0}")]
    Json(String),
    /// The update held no pairs.
    #[error("the update holds no key=value pairs")]
    Empty,
}

impl UpdateError {
    /// The error code for the API.
    pub fn code(&self) -> &'static str {
        match self {
            UpdateError::Line { .. } => "bad_update_line",
            UpdateError::Json(_) => "bad_json",
            UpdateError::Empty => "empty_update",
        }
    }
}

/// Checks a key: 1 to [`MAX_KEY`] bytes, no control characters.
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("the key is empty".into());
    }
    if key.len() > MAX_KEY {
        return Err(format!(
            "the key is {} bytes long; the limit is {MAX_KEY}",
            key.len()
        ));
    }
    if key.chars().any(char::is_control) {
        return Err("the key holds a control character".into());
    }
    Ok(())
}

/// Parses `key=value` lines: blank lines and lines starting with `#` are skipped; key and
/// value are trimmed; the value is everything after the first `=` and may be empty.
pub fn parse_lines(text: &str) -> Result<BTreeMap<String, String>, UpdateError> {
    let mut pairs = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fail = |reason: String| UpdateError::Line {
            line: i + 1,
            reason,
        };
        let Some((key, value)) = line.split_once('=') else {
            return Err(fail(format!(
                "expected key=value, got {:?}",
                truncate(line)
            )));
        };
        let key = key.trim();
        check_key(key).map_err(|r| fail(format!("{r} in {:?}", truncate(line))))?;
        if value.chars().any(|c| c.is_control() && c != '\t') {
            return Err(fail(format!(
                "the value of {key:?} holds a control character"
            )));
        }
        pairs.insert(key.to_owned(), value.trim().to_owned());
    }
    if pairs.is_empty() {
        return Err(UpdateError::Empty);
    }
    Ok(pairs)
}

/// Parses a JSON object whose values are all strings.
pub fn parse_json(body: &[u8]) -> Result<BTreeMap<String, String>, UpdateError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| UpdateError::Json(format!("the body is not valid JSON: {e}")))?;
    let serde_json::Value::Object(map) = value else {
        return Err(UpdateError::Json(
            "the body must be a JSON object of strings, like {\"name\": \"Paola\"}".into(),
        ));
    };
    let mut pairs = BTreeMap::new();
    for (key, value) in map {
        check_key(&key).map_err(|r| UpdateError::Json(format!("{r}: {:?}", truncate(&key))))?;
        match value {
            serde_json::Value::String(s) => {
                pairs.insert(key, s);
            }
            other => {
                return Err(UpdateError::Json(format!(
                    "the value of {key:?} must be a string, not {}",
                    kind(&other)
                )));
            }
        }
    }
    if pairs.is_empty() {
        return Err(UpdateError::Empty);
    }
    Ok(pairs)
}

fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn truncate(s: &str) -> String {
    match s.char_indices().nth(60) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_update_file_parses() {
        let pairs = parse_lines("id=999\nname=Paola\n\n# a comment\n  age = 25 \n").expect("valid");
        assert_eq!(pairs.len(), 3);
        assert_eq!(pairs["name"], "Paola");
        assert_eq!(pairs["age"], "25");
    }

    #[test]
    fn values_keep_everything_after_the_first_equals() {
        let pairs = parse_lines("url=http://x/?a=b\nempty=").expect("valid");
        assert_eq!(pairs["url"], "http://x/?a=b");
        assert_eq!(pairs["empty"], "");
    }

    #[test]
    fn a_malformed_line_is_named_by_number() {
        let err = parse_lines("id=1\n# fine\nthis line has no equals\n").expect_err("invalid");
        assert_eq!(err.code(), "bad_update_line");
        assert!(
            err.to_string().starts_with("line 3: expected key=value"),
            "{err}"
        );
        assert!(matches!(
            parse_lines("=value"),
            Err(UpdateError::Line { line: 1, .. })
        ));
        assert_eq!(parse_lines("\n# only comments\n"), Err(UpdateError::Empty));
    }

    #[test]
    fn json_must_be_an_object_of_strings() {
        assert_eq!(parse_json(br#"{"a":"1"}"#).expect("valid")["a"], "1");
        let err = parse_json(br#"{"a":1}"#).expect_err("number");
        assert!(
            err.to_string().contains("must be a string, not a number"),
            "{err}"
        );
        assert!(parse_json(b"[1]").is_err());
        assert!(parse_json(b"{not json").is_err());
        assert_eq!(parse_json(b"{}"), Err(UpdateError::Empty));
    }
}
