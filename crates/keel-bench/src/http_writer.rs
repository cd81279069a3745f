//! Writes over one HTTP/1.1 keep-alive connection (keel's API and etcd's JSON gateway).

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::{Method, Request, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Which HTTP API a write goes to.
#[derive(Debug, Clone, Copy)]
pub enum HttpApi {
    /// `PUT /v1/kv/{key}`, the raw value as the body.
    Keel,
    /// `POST /v3/kv/put`, `{"key": b64, "value": b64}`.
    Etcd,
}

/// A single connection, used by a single task. hyper's low-level `conn` API rather than
/// a pooled client: the benchmark wants exactly one connection per client, and a pool
/// would be free to open more or to share them.
pub struct HttpWriter {
    api: HttpApi,
    /// `host:port`, to connect to and to send as `Host`.
    authority: String,
    /// `None` after a transport error; the next write reconnects.
    sender: Option<SendRequest<Full<Bytes>>>,
    /// For an `https://` URL: TLS, and the name to check the server's certificate for.
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls_pki_types::ServerName<'static>,
    )>,
}

impl HttpWriter {
    pub async fn connect(
        api: HttpApi,
        url: &str,
        tls: Option<&tokio_rustls::TlsConnector>,
    ) -> anyhow::Result<Self> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("`{url}` is not a URL like http://127.0.0.1:8081"))?;
        let authority = uri
            .authority()
            .with_context(|| format!("`{url}` has no host:port"))?;
        let tls = match (uri.scheme_str(), tls) {
            (Some("http"), _) => None,
            (Some("https"), Some(tls)) => {
                Some((tls.clone(), keel_auth::tls::server_name(authority.host())?))
            }
            (Some("https"), None) => {
                bail!("`{url}` is https: pass --tls-ca with the CA to check it against")
            }
            _ => bail!("`{url}`: only http:// and https:// are supported"),
        };
        let authority = authority.to_string();
        let sender = open(&authority, tls.as_ref()).await?;
        Ok(Self {
            api,
            authority,
            sender: Some(sender),
            tls,
        })
    }

    pub async fn write(&mut self, key: &str, value: &Bytes) -> anyhow::Result<()> {
        let request = self.request(key, value)?;
        let sender = match &mut self.sender {
            Some(sender) if !sender.is_closed() => sender,
            slot => slot.insert(open(&self.authority, self.tls.as_ref()).await?),
        };
        match exchange(sender, request).await {
            Ok(Ok(())) => Ok(()),
            // The server answered, so the connection is still good.
            Ok(Err(refused)) => Err(refused),
            Err(transport) => {
                self.sender = None;
                Err(transport)
            }
        }
    }

    pub fn abandon_connection(&mut self) {
        self.sender = None;
    }

    fn request(&self, key: &str, value: &Bytes) -> anyhow::Result<Request<Full<Bytes>>> {
        let builder = Request::builder().header(header::HOST, &self.authority);
        let request = match self.api {
            HttpApi::Keel => builder
                .method(Method::PUT)
                .uri(format!("/v1/kv/{key}"))
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .body(Full::new(value.clone()))?,
            HttpApi::Etcd => {
                let body = serde_json::json!({
                    "key": BASE64.encode(key),
                    "value": BASE64.encode(value),
                });
                builder
                    .method(Method::POST)
                    .uri("/v3/kv/put")
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Full::new(Bytes::from(serde_json::to_vec(&body)?)))?
            }
        };
        Ok(request)
    }
}

async fn open(
    authority: &str,
    tls: Option<&(
        tokio_rustls::TlsConnector,
        rustls_pki_types::ServerName<'static>,
    )>,
) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(authority)
        .await
        .with_context(|| format!("connecting to {authority}"))?;
    // Every request is one small write; Nagle would hold it back waiting for an ACK.
    stream.set_nodelay(true)?;
    match tls {
        Some((connector, name)) => {
            let stream = connector
                .connect(name.clone(), stream)
                .await
                .with_context(|| format!("TLS with {authority}"))?;
            handshake(TokioIo::new(stream)).await
        }
        None => handshake(TokioIo::new(stream)).await,
    }
}

async fn handshake<T>(io: T) -> anyhow::Result<SendRequest<Full<Bytes>>>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = http1::handshake(io).await?;
    tokio::spawn(async move {
        // A broken connection shows up as an error on the next request, which is where
        // it is counted; nothing to do with it here.
        let _ = connection.await;
    });
    Ok(sender)
}

/// The outer error is the transport's (reconnect); the inner one is the server's answer.
async fn exchange(
    sender: &mut SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> anyhow::Result<anyhow::Result<()>> {
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    // Read the whole body even on success, so the connection is ready for the next one.
    let body = response.into_body().collect().await?.to_bytes();
    if status.is_success() {
        Ok(Ok(()))
    } else {
        let text = String::from_utf8_lossy(&body);
        Ok(Err(anyhow::anyhow!("{status}: {}", text.trim())))
    }
}
