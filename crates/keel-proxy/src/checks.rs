//! Active health checks: `GET <health.path>` on a new connection to each backend, at the
//! backend's own pace (faster while its state is changing, see [`crate::health`]).
//!
//! A new connection each time, as HAProxy does: a check then also proves that the backend
//! still accepts connections, which a reused keep-alive connection would not.
//! A check passes on any 2xx or 3xx answer within `health.timeout`. An `https://`
//! backend is checked over TLS, as requests reach it: a backend whose certificate the
//! proxy would refuse fails its checks.

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use crate::Proxy;
use crate::backend::Backend;

/// How often an ejection's end is looked at when there are no active checks.
const TICK_WITHOUT_CHECKS: Duration = Duration::from_millis(100);

/// Checks `backend` until it leaves the configuration or the proxy stops.
pub async fn run(proxy: Weak<Proxy>, backend: Weak<Backend>) {
    loop {
        let (Some(proxy), Some(backend)) = (proxy.upgrade(), backend.upgrade()) else {
            return;
        };
        let table = proxy.table();
        if !table.pool.backends.iter().any(|b| Arc::ptr_eq(b, &backend)) {
            return;
        }
        let policy = table.pool.policy.clone();
        let health = table.config.health.clone();
        drop((table, proxy));
        let wait = if policy.active {
            let result = check_once(&backend, &health.path, health.timeout).await;
            if let Err(why) = &result {
                tracing::debug!(backend = %backend.name, "health check failed: {why}");
            }
            let ok = result.is_ok();
            backend.update_health(|h| h.on_check(ok, Instant::now(), &policy));
            backend.health().next_check_in(&policy)
        } else {
            backend.update_health(|h| h.on_tick(Instant::now(), &policy));
            TICK_WITHOUT_CHECKS
        };
        drop(backend);
        tokio::time::sleep(wait).await;
    }
}

/// One check: `Ok` on a 2xx or 3xx within `timeout`, else what went wrong.
pub async fn check_once(backend: &Backend, path: &str, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, exchange(backend, path, timeout)).await {
        Err(_) => Err(format!("no answer within {timeout:?}")),
        Ok(result) => result,
    }
}

async fn exchange(backend: &Backend, path: &str, timeout: Duration) -> Result<(), String> {
    let stream = backend.open(timeout).await.map_err(|e| e.to_string())?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let driver = tokio::spawn(connection);
    let request = Request::get(path)
        .header(header::HOST, backend.addr.to_string())
        .header(header::USER_AGENT, "keel-proxy-check")
        .header(header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("cannot build the check: {e}"))?;
    let answer = sender.send_request(request).await;
    driver.abort();
    let status = answer.map_err(|e| format!("no answer: {e}"))?.status();
    if status.is_success() || status.is_redirection() {
        Ok(())
    } else {
        Err(format!("answered {status}"))
    }
}
