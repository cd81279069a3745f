//! What became of a write that was not acknowledged, and whether it may be sent again.
//!
//! A node that refuses a write says in its error body whether the write was applied
//! (`"written"`); the proxy's cluster route says the same of a write it could not
//! deliver. Every writer and reader of that field goes through [`Written`], so the
//! three answers travel one way on every wire: `false`, `true`, `"unknown"`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Whether a refused or unanswered write took effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// It did (the answer was lost, say).
    Yes,
    /// It did not: sending it again cannot apply it twice.
    No,
    /// Nobody can tell yet: it may have been applied, and it is kept if the node that
    /// took it stays primary.
    Unknown,
}

impl Written {
    /// The `"written"` field of an error body, if it has one.
    pub fn of(details: &serde_json::Map<String, serde_json::Value>) -> Option<Written> {
        details
            .get("written")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
    }

    /// As the field's JSON value, for an error body.
    pub fn to_json(self) -> serde_json::Value {
        match self {
            Written::Yes => serde_json::Value::Bool(true),
            Written::No => serde_json::Value::Bool(false),
            Written::Unknown => serde_json::Value::String("unknown".to_owned()),
        }
    }
}

impl Serialize for Written {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Written {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Written, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Bool(true) => Ok(Written::Yes),
            serde_json::Value::Bool(false) => Ok(Written::No),
            serde_json::Value::String(s) if s == "unknown" => Ok(Written::Unknown),
            other => Err(serde::de::Error::custom(format!(
                "\"written\" is true, false or \"unknown\", not {other}"
            ))),
        }
    }
}

/// Whether a request may be sent again when its outcome is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Safety {
    /// Applying it twice is the same as once (reads, PUT, PATCH of entries).
    Idempotent,
    /// Applying it twice is not the same (an increment): send it at most once after it
    /// may have been received.
    Once,
}

impl Safety {
    /// The rule for sending again: always when nothing was applied, never when it was,
    /// and when nobody knows, only what is the same done twice.
    pub fn may_resend(self, written: Written) -> bool {
        match written {
            Written::No => true,
            Written::Yes => false,
            Written::Unknown => self == Safety::Idempotent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_answers_travel_as_false_true_and_unknown() {
        for (w, text) in [
            (Written::No, "false"),
            (Written::Yes, "true"),
            (Written::Unknown, "\"unknown\""),
        ] {
            assert_eq!(serde_json::to_string(&w).expect("serializes"), text);
            assert_eq!(serde_json::from_str::<Written>(text).expect("parses"), w);
        }
        assert!(serde_json::from_str::<Written>("\"maybe\"").is_err());
        let body: keel_core::ApiError = serde_json::from_str(
            r#"{"error":"lease_lapsed","message":"m","written":"unknown","lsn":7}"#,
        )
        .expect("an error body");
        assert_eq!(Written::of(&body.details), Some(Written::Unknown));
    }

    #[test]
    fn only_what_is_the_same_done_twice_is_sent_again_when_nobody_knows() {
        assert!(Safety::Idempotent.may_resend(Written::Unknown));
        assert!(!Safety::Once.may_resend(Written::Unknown));
        assert!(Safety::Once.may_resend(Written::No));
        assert!(!Safety::Idempotent.may_resend(Written::Yes));
    }
}
