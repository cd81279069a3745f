//! `keel flaky`: the flaky service of the fault-tolerance lab, for clients to practise
//! retries, fallbacks and circuit breakers on.
//!
//! `GET /` answers as the lab's Flask service does, byte for byte in its bodies:
//!
//! | mode | answer |
//! |---|---|
//! | `normal` | `503 {"message": "Service Unavailable"}` with probability `failure_rate` (0.3 by default), else `200 {"message": "Hello from the service!", "data": [1, 2, 3, 4, 5]}` |
//! | `fallback` | `200 {"message": "Service in degraded mode (fallback)", "data": [1, 2, 3]}` |
//! | `failure` | `503 {"message": "Service Unavailable"}` |
//!
//! Every answer of `/` waits `latency` first (0 by default). `PUT /admin/mode` with the
//! admin token changes the mode, the failure rate and the latency while the service runs
//! (`{"mode": "failure", "failure_rate": 0.3, "latency": "0ms"}`, every field optional);
//! `GET /admin/mode` shows them, as does `GET /health`. `GET /metrics` counts the answers
//! by mode and status.
//!
//! In `normal` mode each request takes one draw from a [`StdRng`]: from the OS's random
//! source by default, or seeded (`--seed N`, [`FlakyConfig::seed`]) so that a run's
//! sequence of answers can be replayed exactly.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Extension, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use keel_auth::Principal;
use keel_core::ApiError;
use keel_core::token::Token;
use keel_http::Guard;
use keel_http::error_response;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::ServiceError;

/// The lab's body for a refused request.
pub const UNAVAILABLE_BODY: &str = "{\"message\": \"Service Unavailable\"}\n";
/// The lab's body for a successful request in normal mode.
pub const HELLO_BODY: &str =
    "{\"message\": \"Hello from the service!\", \"data\": [1, 2, 3, 4, 5]}\n";
/// The lab's body in fallback (degraded) mode.
pub const DEGRADED_BODY: &str =
    "{\"message\": \"Service in degraded mode (fallback)\", \"data\": [1, 2, 3]}\n";

/// The lab's failure rate in normal mode.
pub const DEFAULT_FAILURE_RATE: f64 = 0.3;

/// The longest latency the service accepts: longer would only hold connections open.
pub const MAX_LATENCY: Duration = Duration::from_secs(60);

/// Admin bodies are a few fields.
const MAX_BODY: usize = 4096;

/// How the flaky endpoint behaves (the lab's `SERVICE_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Fails with probability `failure_rate`, else answers in full.
    Normal,
    /// Always answers, with limited data and a message saying so.
    Fallback,
    /// Always fails with 503.
    Failure,
}

impl Mode {
    /// Every mode, in the order of the docs.
    pub const ALL: [Mode; 3] = [Mode::Normal, Mode::Fallback, Mode::Failure];

    /// The mode's name: `normal`, `fallback`, `failure`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Normal => "normal",
            Mode::Fallback => "fallback",
            Mode::Failure => "failure",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Mode::ALL
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| format!("unknown mode {s:?}: expected normal, fallback or failure"))
    }
}

/// What can change while the service runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// How `GET /` behaves.
    pub mode: Mode,
    /// In normal mode, the probability of a 503, from 0 to 1.
    pub failure_rate: f64,
    /// How long every answer of `GET /` waits.
    pub latency: Duration,
}

impl Default for Settings {
    /// The lab's: normal mode, 30% failures, no added latency.
    fn default() -> Self {
        Settings {
            mode: Mode::Normal,
            failure_rate: DEFAULT_FAILURE_RATE,
            latency: Duration::ZERO,
        }
    }
}

impl Settings {
    /// Checks the failure rate (0 to 1) and the latency (at most [`MAX_LATENCY`]).
    pub fn validate(&self) -> Result<(), String> {
        check_rate(self.failure_rate)?;
        check_latency(self.latency)
    }

    fn to_json(self) -> serde_json::Value {
        serde_json::json!({
            "mode": self.mode,
            "failure_rate": self.failure_rate,
            "latency": keel_core::duration::format(self.latency),
        })
    }
}

/// Checks a failure rate: a probability, 0 to 1.
pub fn check_rate(rate: f64) -> Result<(), String> {
    if (0.0..=1.0).contains(&rate) {
        Ok(())
    } else {
        Err(format!(
            "the failure rate is a probability from 0 to 1 (0.3 for 30%), got {rate}"
        ))
    }
}

fn check_latency(latency: Duration) -> Result<(), String> {
    if latency <= MAX_LATENCY {
        Ok(())
    } else {
        Err(format!(
            "the latency may be at most {}, got {}",
            keel_core::duration::format(MAX_LATENCY),
            keel_core::duration::format(latency)
        ))
    }
}

/// How `keel flaky` is run.
#[derive(Debug, Clone)]
pub struct FlakyConfig {
    /// Address to serve on (127.0.0.1:5055 by default, the lab's port).
    pub listen: SocketAddr,
    /// The settings it starts with.
    pub settings: Settings,
    /// Seed for the failure draws; `None` draws a seed from the OS.
    pub seed: Option<u64>,
    /// The admin token `PUT /admin/mode` needs; without one, changes are refused.
    pub token: Option<Token>,
}

/// What the handlers share.
struct Flaky {
    // A std mutex: held to copy or replace a few words, never across an await.
    settings: Mutex<Settings>,
    rng: Mutex<StdRng>,
    guard: Arc<Guard>,
    stats: Mutex<Stats>,
}

#[derive(Debug, Default)]
struct Stats {
    /// Answers of `GET /` by (mode, status).
    answers: BTreeMap<(Mode, u16), u64>,
    mode_changes: u64,
}

impl Flaky {
    fn settings(&self) -> Settings {
        *self.settings.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stats(&self) -> std::sync::MutexGuard<'_, Stats> {
        self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a normal-mode request fails: one draw from the service's generator.
    fn draw_failure(&self, rate: f64) -> bool {
        let draw: f64 = self
            .rng
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .random();
        draw < rate
    }
}

/// Serves the flaky service until `shutdown` resolves, then drains in-flight requests.
pub async fn run(
    config: FlakyConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServiceError> {
    let (listener, addr) = crate::bind(config.listen).await?;
    let settings = config.settings;
    tracing::info!(
        %addr,
        mode = %settings.mode,
        failure_rate = settings.failure_rate,
        latency = %keel_core::duration::format(settings.latency),
        seed = ?config.seed,
        admin = config.token.is_some(),
        "flaky service listening"
    );
    let rng = match config.seed {
        Some(seed) => StdRng::seed_from_u64(seed),
        None => StdRng::from_os_rng(),
    };
    let router = router(settings, rng, config.token)?;
    let (stopping, _) = tokio::sync::watch::channel(false);
    keel_http::serve_draining(
        listener,
        router,
        shutdown,
        Duration::from_secs(5),
        stopping,
        None,
    )
    .await;
    Ok(())
}

/// The flaky service's routes, drawing its failures from `rng` (seed it in tests).
pub fn router(
    settings: Settings,
    rng: StdRng,
    token: Option<Token>,
) -> Result<Router, ServiceError> {
    settings.validate().map_err(ServiceError::Config)?;
    let guard = Arc::new(Guard::new(
        "flaky service",
        "flaky",
        None,
        token.as_ref(),
        keel_auth::Hosts::any(),
    ));
    let flaky = Arc::new(Flaky {
        settings: Mutex::new(settings),
        rng: Mutex::new(rng),
        guard: guard.clone(),
        stats: Mutex::default(),
    });
    let routes = keel_http::json_fallbacks(
        Router::new()
            .route("/", get(flaky_endpoint))
            .route("/health", get(health))
            .route("/metrics", get(metrics))
            .route("/admin/mode", get(show_settings).put(change_settings))
            .layer(DefaultBodyLimit::max(MAX_BODY)),
        "GET /, /health, /metrics, GET or PUT /admin/mode (docs/resilience.md)",
    )
    .with_state(flaky);
    Ok(keel_http::guarded(routes, guard))
}

/// `GET /`: the lab's flaky endpoint.
async fn flaky_endpoint(State(flaky): State<Arc<Flaky>>) -> Response {
    let settings = flaky.settings();
    let (status, body) = match settings.mode {
        Mode::Failure => (StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE_BODY),
        Mode::Fallback => (StatusCode::OK, DEGRADED_BODY),
        Mode::Normal if flaky.draw_failure(settings.failure_rate) => {
            (StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE_BODY)
        }
        Mode::Normal => (StatusCode::OK, HELLO_BODY),
    };
    if !settings.latency.is_zero() {
        tokio::time::sleep(settings.latency).await;
    }
    *flaky
        .stats()
        .answers
        .entry((settings.mode, status.as_u16()))
        .or_default() += 1;
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn health(State(flaky): State<Arc<Flaky>>) -> Response {
    let mut body = flaky.settings().to_json();
    body["status"] = "ok".into();
    body["service"] = "flaky".into();
    axum::Json(body).into_response()
}

async fn show_settings(State(flaky): State<Arc<Flaky>>) -> Response {
    axum::Json(flaky.settings().to_json()).into_response()
}

/// The body of `PUT /admin/mode`: whatever is to change.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Change {
    mode: Option<Mode>,
    failure_rate: Option<f64>,
    latency: Option<String>,
}

const CHANGE_EXAMPLE: &str =
    r#"{"mode": "failure", "failure_rate": 0.3, "latency": "0ms"} (every field optional)"#;

/// `PUT /admin/mode`: changes the mode, failure rate or latency (admin token needed).
async fn change_settings(
    State(flaky): State<Arc<Flaky>>,
    signed: Option<Extension<Principal>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Err(refused) = flaky
        .guard
        .require_admin(signed.as_ref().map(|Extension(p)| p))
    {
        return refused;
    }
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            return keel_http::body_rejection(rejection, MAX_BODY, "bad_body");
        }
    };
    let bad = |message: String| {
        error_response(
            StatusCode::BAD_REQUEST,
            ApiError::new("bad_settings", message),
        )
    };
    let change: Change = match serde_json::from_slice(&body) {
        Ok(change) => change,
        Err(e) => return bad(format!("expected a JSON object like {CHANGE_EXAMPLE}: {e}")),
    };
    if change.mode.is_none() && change.failure_rate.is_none() && change.latency.is_none() {
        return bad(format!("nothing to change: send {CHANGE_EXAMPLE}"));
    }
    let latency = match change.latency.as_deref().map(keel_core::duration::parse) {
        None => None,
        Some(Ok(latency)) => Some(latency),
        Some(Err(e)) => return bad(format!("latency: {e}")),
    };
    let updated = {
        let mut settings = flaky
            .settings
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut next = *settings;
        if let Some(mode) = change.mode {
            next.mode = mode;
        }
        if let Some(rate) = change.failure_rate {
            next.failure_rate = rate;
        }
        if let Some(latency) = latency {
            next.latency = latency;
        }
        if let Err(message) = next.validate() {
            return bad(message);
        }
        *settings = next;
        next
    };
    flaky.stats().mode_changes += 1;
    tracing::info!(
        mode = %updated.mode,
        failure_rate = updated.failure_rate,
        latency = %keel_core::duration::format(updated.latency),
        "flaky settings changed"
    );
    axum::Json(updated.to_json()).into_response()
}

async fn metrics(State(flaky): State<Arc<Flaky>>) -> Response {
    let settings = flaky.settings();
    let stats = flaky.stats();
    let mut out = String::with_capacity(1024);
    let _ = writeln!(
        out,
        "# HELP keel_flaky_requests_total Answers of GET /, by mode and status\n\
         # TYPE keel_flaky_requests_total counter"
    );
    for ((mode, status), n) in &stats.answers {
        let _ = writeln!(
            out,
            "keel_flaky_requests_total{{mode=\"{mode}\",status=\"{status}\"}} {n}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP keel_flaky_mode The current mode (1 for the current one)\n# TYPE keel_flaky_mode gauge"
    );
    for mode in Mode::ALL {
        let _ = writeln!(
            out,
            "keel_flaky_mode{{mode=\"{mode}\"}} {}",
            u8::from(mode == settings.mode)
        );
    }
    let _ = writeln!(
        out,
        "# HELP keel_flaky_failure_rate The probability of a 503 in normal mode\n\
         # TYPE keel_flaky_failure_rate gauge\n\
         keel_flaky_failure_rate {}\n\
         # HELP keel_flaky_latency_seconds The latency added to every answer of GET /\n\
         # TYPE keel_flaky_latency_seconds gauge\n\
         keel_flaky_latency_seconds {}\n\
         # HELP keel_flaky_changes_total Settings changes through PUT /admin/mode\n\
         # TYPE keel_flaky_changes_total counter\n\
         keel_flaky_changes_total {}",
        settings.failure_rate,
        settings.latency.as_secs_f64(),
        stats.mode_changes
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    const TOKEN: &str = "flaky-test-token-0123456789";

    fn service(settings: Settings, seed: u64) -> Router {
        let token = Token::new(TOKEN, "test").expect("token");
        router(settings, StdRng::seed_from_u64(seed), Some(token)).expect("valid settings")
    }

    async fn call(router: &Router, request: Request<Body>) -> (StatusCode, String) {
        let response = router.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    async fn get_root(router: &Router) -> (StatusCode, String) {
        call(
            router,
            Request::get("/").body(Body::empty()).expect("request"),
        )
        .await
    }

    fn put_mode(body: &str, token: Option<&str>) -> Request<Body> {
        let mut builder = Request::put("/admin/mode").header("content-type", "application/json");
        if let Some(token) = token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        builder.body(Body::from(body.to_owned())).expect("request")
    }

    #[tokio::test]
    async fn normal_mode_fails_exactly_when_the_draw_is_below_the_rate() {
        let seed = 11;
        let router = service(Settings::default(), seed);
        let mut rng = StdRng::seed_from_u64(seed);
        for _ in 0..200 {
            let fails = rng.random::<f64>() < DEFAULT_FAILURE_RATE;
            let expected = if fails {
                (StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE_BODY.to_owned())
            } else {
                (StatusCode::OK, HELLO_BODY.to_owned())
            };
            assert_eq!(get_root(&router).await, expected);
        }
    }

    #[tokio::test]
    async fn rates_of_zero_and_one_never_and_always_fail() {
        for (rate, status) in [
            (0.0, StatusCode::OK),
            (1.0, StatusCode::SERVICE_UNAVAILABLE),
        ] {
            let router = service(
                Settings {
                    failure_rate: rate,
                    ..Settings::default()
                },
                3,
            );
            for _ in 0..50 {
                assert_eq!(get_root(&router).await.0, status, "rate {rate}");
            }
        }
    }

    #[tokio::test]
    async fn admin_changes_the_mode_with_the_token_only() {
        let router = service(Settings::default(), 1);
        let (status, body) = call(&router, put_mode(r#"{"mode": "failure"}"#, None)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        let (status, body) = call(
            &router,
            put_mode(r#"{"mode": "failure"}"#, Some("wrong-token-0123456789")),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

        let (status, body) = call(
            &router,
            put_mode(
                r#"{"mode": "fallback", "failure_rate": 0.5, "latency": "0ms"}"#,
                Some(TOKEN),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let shown: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(
            shown,
            serde_json::json!({"mode": "fallback", "failure_rate": 0.5, "latency": "0s"})
        );
        assert_eq!(
            get_root(&router).await,
            (StatusCode::OK, DEGRADED_BODY.to_owned())
        );
    }

    #[tokio::test]
    async fn bad_changes_are_refused_and_change_nothing() {
        let router = service(Settings::default(), 1);
        for (body, says) in [
            (r#"{"mode": "broken"}"#, "unknown variant"),
            (r#"{"failure_rate": 1.5}"#, "probability from 0 to 1"),
            (r#"{"latency": "forever"}"#, "latency:"),
            (r#"{"latency": "2m"}"#, "at most 60s"),
            (r#"{"mode": "failure", "rate": 1}"#, "unknown field"),
            ("{}", "nothing to change"),
            ("mode=failure", "expected a JSON object"),
        ] {
            let (status, answer) = call(&router, put_mode(body, Some(TOKEN))).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
            assert!(answer.contains(says), "{body}: {answer}");
        }
        let (_, shown) = call(
            &router,
            Request::get("/admin/mode")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
        let shown: serde_json::Value = serde_json::from_str(&shown).expect("json");
        assert_eq!(shown["mode"], "normal");
        assert_eq!(shown["failure_rate"], 0.3);
    }

    #[tokio::test]
    async fn without_a_token_admin_is_disabled() {
        let router = router(Settings::default(), StdRng::seed_from_u64(1), None).expect("valid");
        let (status, body) = call(&router, put_mode(r#"{"mode": "failure"}"#, Some(TOKEN))).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(body.contains("admin_disabled"), "{body}");
    }

    #[tokio::test(start_paused = true)]
    async fn latency_delays_every_answer() {
        let router = service(
            Settings {
                mode: Mode::Fallback,
                latency: Duration::from_millis(250),
                ..Settings::default()
            },
            1,
        );
        let start = tokio::time::Instant::now();
        assert_eq!(get_root(&router).await.0, StatusCode::OK);
        assert_eq!(start.elapsed(), Duration::from_millis(250));
    }

    #[test]
    fn modes_parse_from_their_names() {
        assert_eq!("Failure".parse::<Mode>(), Ok(Mode::Failure));
        assert!(
            "down"
                .parse::<Mode>()
                .is_err_and(|e| e.contains("normal, fallback or failure"))
        );
        assert!(
            router(
                Settings {
                    failure_rate: -0.1,
                    ..Settings::default()
                },
                StdRng::seed_from_u64(1),
                None
            )
            .is_err()
        );
    }

    #[test]
    fn bodies_are_the_labs_json() {
        let hello: serde_json::Value = serde_json::from_str(HELLO_BODY).expect("json");
        assert_eq!(
            hello,
            serde_json::json!({"message": "Hello from the service!", "data": [1, 2, 3, 4, 5]})
        );
        let degraded: serde_json::Value = serde_json::from_str(DEGRADED_BODY).expect("json");
        assert_eq!(
            degraded,
            serde_json::json!({"message": "Service in degraded mode (fallback)", "data": [1, 2, 3]})
        );
        let unavailable: serde_json::Value = serde_json::from_str(UNAVAILABLE_BODY).expect("json");
        assert_eq!(
            unavailable,
            serde_json::json!({"message": "Service Unavailable"})
        );
    }
}
