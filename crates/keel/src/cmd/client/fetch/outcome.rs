//! What a fetch ended with, and how it is shown: the answer on stdout as the server sent
//! it, the stale cache or the fallback said on stderr, or one JSON object.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

/// What a fetch ended with.
pub(super) struct Outcome {
    pub(super) url: String,
    pub(super) source: Source,
    /// The server's status, for an answer from the service.
    pub(super) status: Option<StatusCode>,
    /// How many attempts were made.
    pub(super) attempts: u32,
    /// Why the attempts ended without an answer.
    pub(super) error: Option<String>,
    pub(super) body: String,
}

pub(super) enum Source {
    /// A fresh answer from the service.
    Service,
    /// The last good answer, this old.
    Cache(Duration),
    /// The lab's fallback message.
    Fallback,
}

/// The message of a 2xx answer that says the service is degraded, if it says so.
pub(super) fn degraded(body: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(body).ok()?;
    let message = value.get("message")?.as_str()?;
    message
        .to_ascii_lowercase()
        .contains("degraded")
        .then(|| message.to_owned())
}

/// `12.3 s`, `4 min 5 s`, `2 h 3 min`.
fn age(d: Duration) -> String {
    let secs = d.as_secs();
    if secs < 60 {
        format!("{:.1} s", d.as_secs_f64())
    } else if secs < 3600 {
        format!("{} min {} s", secs / 60, secs % 60)
    } else {
        format!("{} h {} min", secs / 3600, (secs % 3600) / 60)
    }
}

impl Outcome {
    fn degraded(&self) -> Option<String> {
        match self.source {
            Source::Fallback => None,
            _ => degraded(&self.body),
        }
    }

    pub(super) fn print(&self, json: bool) -> anyhow::Result<()> {
        if json {
            let body: serde_json::Value = serde_json::from_str(&self.body)
                .unwrap_or_else(|_| serde_json::Value::String(self.body.clone()));
            let (source, age) = match self.source {
                Source::Service => ("service", None),
                Source::Cache(age) => ("cache", Some(age.as_secs_f64())),
                Source::Fallback => ("fallback", None),
            };
            let line = json!({
                "url": self.url,
                "source": source,
                "stale": matches!(self.source, Source::Cache(_)),
                "age_s": age,
                "degraded": self.degraded().is_some(),
                "status": self.status.map(|s| s.as_u16()),
                "attempts": self.attempts,
                "error": self.error,
                "body": body,
            });
            println!("{}", serde_json::to_string(&line)?);
            return Ok(());
        }
        match self.source {
            Source::Service => {}
            Source::Cache(stale_for) => eprintln!(
                "No answer: {}; serving the cached answer from {} ago (stale)",
                self.error.as_deref().unwrap_or("every attempt failed"),
                age(stale_for)
            ),
            Source::Fallback => eprintln!(
                "No answer: {}; nothing cached, so answering with the fallback",
                self.error.as_deref().unwrap_or("every attempt failed")
            ),
        }
        if let Some(message) = self.degraded() {
            eprintln!("The service is in degraded mode ({message:?}): its answer is limited");
        }
        println!("{}", self.body.trim_end());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_degraded_answer_is_recognised() {
        assert_eq!(
            degraded(r#"{"message": "Service in degraded mode (fallback)", "data": [1, 2, 3]}"#)
                .as_deref(),
            Some("Service in degraded mode (fallback)")
        );
        assert_eq!(
            degraded(r#"{"message": "Hello from the service!", "data": [1, 2, 3, 4, 5]}"#),
            None
        );
        assert_eq!(degraded("degraded, but not JSON"), None);
    }

    #[test]
    fn ages_read_naturally() {
        assert_eq!(age(Duration::from_millis(12_340)), "12.3 s");
        assert_eq!(age(Duration::from_secs(245)), "4 min 5 s");
        assert_eq!(age(Duration::from_secs(7_380)), "2 h 3 min");
    }
}
