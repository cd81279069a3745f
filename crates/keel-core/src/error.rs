//! The JSON body of every error answer.

use serde::{Deserialize, Serialize};

/// What a client gets with a 4xx or 5xx: a stable machine-readable `error` code and a
/// `message` a person can act on. Extra fields (the primary's address, a version) ride
/// along in `details`, flattened into the same object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    /// A short snake_case code, e.g. `not_primary`, `bad_update_line`.
    pub error: String,
    /// What was wrong and, where it helps, what to do.
    pub message: String,
    /// Extra facts, flattened into the JSON object.
    #[serde(flatten, default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl ApiError {
    /// An error with a code and a message.
    pub fn new(error: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            message: message.into(),
            details: serde_json::Map::new(),
        }
    }

    /// Adds an extra field.
    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }
}
