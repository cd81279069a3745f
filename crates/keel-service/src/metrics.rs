//! `/metrics`: requests by route and status, and the data tier's failures.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::StatusCode;

#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Answers by (route, status). Few distinct keys, so one small map under a lock.
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    pub(crate) data_errors: AtomicU64,
}

impl Stats {
    pub(crate) fn count(&self, route: &'static str, status: StatusCode) {
        if let Ok(mut map) = self.requests.lock() {
            *map.entry((route, status.as_u16())).or_default() += 1;
        }
    }

    pub(crate) fn render(&self, name: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP keel_service_requests_total Requests answered, by route and status\n\
             # TYPE keel_service_requests_total counter"
        );
        if let Ok(map) = self.requests.lock() {
            for ((route, status), n) in map.iter() {
                let _ = writeln!(
                    out,
                    "keel_service_requests_total{{service=\"{name}\",route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP keel_service_data_errors_total Calls to the data tier that failed\n\
             # TYPE keel_service_data_errors_total counter\n\
             keel_service_data_errors_total{{service=\"{name}\"}} {}",
            self.data_errors.load(Ordering::Relaxed)
        );
        out
    }
}
