//! The real connection: one HTTP/1.1 keep-alive connection per slot, with hyper's
//! low-level `conn` API.
//!
//! Not a pooled client (reqwest, hyper-util's legacy client): a pool is free to open
//! more connections or to share them, and `--concurrency 8` must mean exactly eight
//! connections, as in wrk. It is also the cheapest way to send a request, which matters
//! when the tool must keep up with the server it measures.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Uri};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;

use crate::LoadError;
use crate::exchange::{Answer, Exchange, Failure, Request};
use crate::settings::{HeaderLine, Plan, Target};
use crate::spread::SpreadBy;
use crate::verify::{write_key, write_value};

/// The most of a body read to find a backend name or an error code (1 MiB, the data
/// tier's own limit on bodies).
const MAX_READ_BODY: usize = 1 << 20;

/// How to build every request of a run; shared by its connections.
#[derive(Debug)]
pub struct RequestTemplate {
    method: Method,
    uri: Uri,
    host: HeaderValue,
    headers: Vec<HeaderLine>,
    body: Bytes,
    run_id: String,
    spread_by: SpreadBy,
    timeout: Duration,
    /// For an `https://` target: TLS, and the name its certificate must be valid for.
    tls: Option<TargetTls>,
}

/// TLS towards the target: the connector and the name the certificate must be valid for.
struct TargetTls(
    tokio_rustls::TlsConnector,
    rustls_pki_types::ServerName<'static>,
);

impl std::fmt::Debug for TargetTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TargetTls({:?})", self.1)
    }
}

impl RequestTemplate {
    /// The template of `plan`'s requests; writes are named after `run_id`.
    pub fn new(plan: &Plan, run_id: &str) -> Result<RequestTemplate, LoadError> {
        let bad = |why: &str| {
            LoadError::Plan(crate::settings::PlanError::BadUrl {
                url: plan.target.url.clone(),
                why: why.to_owned(),
            })
        };
        Ok(RequestTemplate {
            method: plan.settings.method.clone(),
            uri: plan
                .target
                .path_and_query
                .parse()
                .map_err(|_| bad("its path is not valid"))?,
            host: HeaderValue::from_str(&plan.target.authority)
                .map_err(|_| bad("its host is not valid"))?,
            headers: plan.settings.headers.clone(),
            body: plan.settings.body.clone(),
            run_id: run_id.to_owned(),
            spread_by: plan.settings.spread_by.clone(),
            timeout: plan.settings.timeout,
            tls: match (&plan.settings.tls, plan.target.https) {
                (Some(tls), true) => Some(TargetTls(
                    tokio_rustls::TlsConnector::from(Arc::new(tls.clone())),
                    keel_auth::tls::server_name(&plan.target.host)
                        .map_err(|e| bad(&e.to_string()))?,
                )),
                _ => None,
            },
        })
    }

    fn build(&self, request: Request) -> http::Request<Full<Bytes>> {
        let mut req = if request.write {
            let mut req =
                http::Request::new(Full::new(Bytes::from(write_value(&self.run_id, request.n))));
            *req.method_mut() = Method::PUT;
            // Keys are `load-<hex>-<digits>`: always a valid path.
            if let Ok(uri) = format!("/v1/kv/{}", write_key(&self.run_id, request.n)).parse() {
                *req.uri_mut() = uri;
            }
            req
        } else {
            let mut req = http::Request::new(Full::new(self.body.clone()));
            *req.method_mut() = self.method.clone();
            *req.uri_mut() = self.uri.clone();
            req
        };
        let headers = req.headers_mut();
        headers.insert(header::HOST, self.host.clone());
        for line in &self.headers {
            headers.append(line.name.clone(), line.value.clone());
        }
        req
    }
}

/// Resolves the target's host to the address to connect to. Unless `allow_remote`, every
/// address the name resolves to must be a loopback one: a `localhost` that resolves
/// elsewhere is refused too.
pub async fn resolve(target: &Target, allow_remote: bool) -> Result<SocketAddr, LoadError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .map_err(|e| LoadError::Resolve {
            host: target.host.clone(),
            why: e.to_string(),
        })?
        .collect();
    if !allow_remote && addrs.iter().any(|a| !a.ip().is_loopback()) {
        return Err(LoadError::Plan(crate::settings::PlanError::NotLocal {
            url: target.url.clone(),
        }));
    }
    // IPv4 first: a server told to listen on 127.0.0.1 does not answer on ::1.
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| LoadError::Resolve {
            host: target.host.clone(),
            why: "no address".to_owned(),
        })
}

/// One connection slot.
pub struct HttpConn {
    addr: SocketAddr,
    template: Arc<RequestTemplate>,
    /// `None` before the first request and after a failure; the next request reconnects.
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl HttpConn {
    /// A slot that connects to `addr` on its first request.
    pub fn new(addr: SocketAddr, template: Arc<RequestTemplate>) -> HttpConn {
        HttpConn {
            addr,
            template,
            sender: None,
        }
    }

    /// Opens the connection now (so that a run starts with every connection up, and an
    /// unreachable target is an error before the run rather than a run of errors).
    pub async fn connect(&mut self) -> std::io::Result<()> {
        let sender = open(self.addr, &self.template).await?;
        self.sender = Some(sender);
        Ok(())
    }

    async fn send(&mut self, request: Request) -> Answer {
        let mut message = self.template.build(request);
        // A keep-alive connection the server closed while idle is normal; the request
        // then goes on a new one, once.
        for _ in 0..2 {
            let sender = match &mut self.sender {
                Some(sender) if !sender.is_closed() => sender,
                slot => match open(self.addr, &self.template).await {
                    Ok(sender) => slot.insert(sender),
                    Err(_) => {
                        *slot = None;
                        return Answer::Failed(Failure::Connect);
                    }
                },
            };
            if sender.ready().await.is_err() {
                self.sender = None;
                continue;
            }
            match sender.try_send_request(message).await {
                Ok(response) => return self.read(response).await,
                Err(mut err) => {
                    self.sender = None;
                    match err.take_message() {
                        // Not sent: try again on a fresh connection.
                        Some(unsent) => message = unsent,
                        None => {
                            let error = err.into_error();
                            return Answer::Failed(if error.is_parse() {
                                Failure::BadResponse
                            } else {
                                Failure::Broken
                            });
                        }
                    }
                }
            }
        }
        // Two connections in a row closed before the request could go: it was not sent.
        Answer::Failed(Failure::Connect)
    }

    async fn read(&mut self, response: http::Response<Incoming>) -> Answer {
        let (parts, mut body) = response.into_parts();
        let status = parts.status.as_u16();
        let spread_by = &self.template.spread_by;
        let mut backend = spread_by.from_headers(&parts.headers);
        let mut error_code = None;
        let mut outcome_unknown = false;
        if spread_by.needs_body() || status >= 400 {
            let bytes = match Limited::new(body, MAX_READ_BODY).collect().await {
                Ok(collected) => collected.to_bytes(),
                // An answer too large to look into still counts as an answer; the rest of
                // it is not read, so the connection cannot be used again.
                Err(e) if e.is::<LengthLimitError>() => {
                    self.sender = None;
                    Bytes::new()
                }
                Err(_) => {
                    self.sender = None;
                    return Answer::Failed(Failure::Broken);
                }
            };
            if spread_by.needs_body() {
                backend = spread_by.from_response(&parts.headers, Some(&bytes));
            }
            if status >= 400
                && let Ok(err) = serde_json::from_slice::<ErrorBody>(&bytes)
            {
                error_code = err.error;
                outcome_unknown = err
                    .written
                    .and_then(|w| serde_json::from_value::<keel_client::Written>(w).ok())
                    == Some(keel_client::Written::Unknown);
            }
        } else {
            // Read and drop: the connection must be past this body before the next
            // request, and nothing in it is needed.
            while let Some(frame) = body.frame().await {
                if frame.is_err() {
                    self.sender = None;
                    return Answer::Failed(Failure::Broken);
                }
            }
        }
        Answer::Response {
            status,
            backend,
            error_code,
            outcome_unknown,
        }
    }
}

impl Exchange for HttpConn {
    async fn exchange(&mut self, request: Request) -> Answer {
        match tokio::time::timeout(self.template.timeout, self.send(request)).await {
            Ok(answer) => answer,
            Err(_) => {
                // The answer may still come on this connection; a new request must not
                // read it as its own.
                self.sender = None;
                Answer::Failed(Failure::Timeout)
            }
        }
    }
}

/// The parts of keel's JSON error body the counts use.
#[derive(Deserialize)]
struct ErrorBody {
    error: Option<String>,
    /// `false`, `true` or `"unknown"` ([`keel_client::Written`]); read apart, so that a
    /// bad value loses only itself, not the error code beside it.
    written: Option<serde_json::Value>,
}

async fn open(
    addr: SocketAddr,
    template: &RequestTemplate,
) -> std::io::Result<SendRequest<Full<Bytes>>> {
    let timed_out = || std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out");
    let stream = tokio::time::timeout(template.timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| timed_out())??;
    // Every request is one small write; Nagle would hold it back waiting for an ACK.
    stream.set_nodelay(true)?;
    match &template.tls {
        Some(TargetTls(connector, name)) => {
            let stream =
                tokio::time::timeout(template.timeout, connector.connect(name.clone(), stream))
                    .await
                    .map_err(|_| timed_out())??;
            handshake(TokioIo::new(stream)).await
        }
        None => handshake(TokioIo::new(stream)).await,
    }
}

async fn handshake<T>(io: T) -> std::io::Result<SendRequest<Full<Bytes>>>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = http1::handshake(io).await.map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        // A broken connection shows on the next request, which is where it is counted.
        let _ = connection.await;
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{Bound, Pace, Settings};

    fn template(write_ratio: f64) -> RequestTemplate {
        let plan = Plan::new(Settings {
            url: "http://127.0.0.1:8080/data?x=1".into(),
            pace: Pace::Concurrency(1),
            bound: Bound::Requests(1),
            method: Method::POST,
            body: Bytes::from_static(b"payload"),
            headers: vec!["X-Test: 1".parse().expect("header")],
            timeout: Duration::from_secs(1),
            write_ratio,
            spread_by: SpreadBy::Auto,
            allow_remote: false,
            tls: None,
        })
        .expect("plan");
        RequestTemplate::new(&plan, "abcd0123").expect("template")
    }

    async fn body_of(req: http::Request<Full<Bytes>>) -> Bytes {
        match req.into_body().collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(never) => match never {},
        }
    }

    #[tokio::test]
    async fn a_request_carries_the_method_path_body_host_and_extra_headers() {
        let req = template(0.0).build(Request { n: 0, write: false });
        assert_eq!(req.method(), Method::POST);
        assert_eq!(req.uri(), "/data?x=1");
        assert_eq!(req.headers()["host"], "127.0.0.1:8080");
        assert_eq!(req.headers()["x-test"], "1");
        assert_eq!(body_of(req).await, "payload");
    }

    #[tokio::test]
    async fn a_write_puts_its_unique_value_under_its_unique_key() {
        let req = template(1.0).build(Request { n: 42, write: true });
        assert_eq!(req.method(), Method::PUT);
        assert_eq!(req.uri(), "/v1/kv/load-abcd0123-42");
        assert_eq!(body_of(req).await, write_value("abcd0123", 42));
    }
}
