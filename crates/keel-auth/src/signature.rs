//! Signed requests: how members prove membership and operators prove they may act,
//! without either secret ever crossing the wire.
//!
//! keel has two credentials (docs/security.md):
//!
//! - the **cluster secret**, held by every member (monitors, nodes, proxies and services
//!   that follow the cluster): registering, heartbeating, dropping a standby from the sync
//!   set, replication and probes need it;
//! - the **admin token** ([`keel_core::token`]), held by operators: kill, failover, drain,
//!   chaos, mode changes need it.
//!
//! A request carries a `Keel-Auth` header with an HMAC-SHA256 over what it asks for —
//! method, the host it was addressed to, path and query, the SHA-256 of its body — and a
//! timestamp and a random nonce:
//!
//! ```text
//! Keel-Auth: v1 kind=member id=app1 ts=1764892800123 nonce=5f0c…e1 sig=9a41…07
//! ```
//!
//! The receiver recomputes the HMAC with its own copy of the key, refuses a timestamp
//! outside its window ([`WINDOW_MS`]) and a nonce it has already seen in that window
//! ([`ReplayCache`]), so a captured request can neither be changed nor replayed, and a
//! request signed for one host is refused by another. The answer to a member is signed
//! in turn, over the request's nonce, the status and the body's SHA-256: a member acts
//! only on answers from a process that proved it holds the same secret, and so never
//! follows a view, a probe result or a replication handshake from an impostor.
//!
//! **Why an HMAC and not the secret as a bearer token.** A bearer token goes to whoever
//! is asked; the first registration of an attacker's URL used to receive the admin token
//! that way. A signature is useless anywhere but where it was sent, for [`WINDOW_MS`],
//! once. Mutual TLS (`--tls-*`) adds encryption and a per-member certificate across
//! hosts; the signatures stay, so that loopback without TLS is closed too.
//!
//! Everything here is pure: time is passed in (`now_ms`, Unix milliseconds), and nonces
//! come from the caller, so tests pin every rule exactly.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};

use aws_lc_rs::{digest, hmac};

/// The request and response header.
pub const AUTH_HEADER: &str = "keel-auth";
/// The file name `keel up` writes the cluster secret to, inside its data directory.
pub const SECRET_FILE_NAME: &str = "cluster.secret";
/// The environment variable a process reads the cluster secret from when no file is
/// given.
pub const SECRET_ENV: &str = "KEEL_CLUSTER_SECRET";
/// How far a request's timestamp may be from the receiver's clock, either way. Clocks of
/// members must agree to within this (NTP keeps them within milliseconds).
pub const WINDOW_MS: u64 = 30_000;
/// Most nonces remembered at once; at the cap, new signed requests are refused until old
/// ones expire rather than forgetting one that could then be replayed. Only requests
/// with a valid signature are remembered, so only members can fill it, at ~6,600 signed
/// requests a second.
pub const REPLAY_CAP: usize = 200_000;
/// The shortest cluster secret accepted, in characters.
pub const MIN_SECRET_LEN: usize = 32;

/// Why a credential could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file could not be read.
    #[error("cannot read the cluster secret file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Too short to be a secret.
    #[error(
        "the cluster secret from {origin} is {len} characters long; it needs at least {MIN_SECRET_LEN} (keel up and keel certs write one)"
    )]
    TooShort {
        /// Where it came from.
        origin: String,
        /// Its length.
        len: usize,
    },
    /// The system's random source failed.
    #[error("cannot draw random bytes from the system")]
    Random,
}

/// The cluster secret. Never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret(String);

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(…)")
    }
}

impl ClusterSecret {
    /// Wraps a secret after checking it is long enough.
    pub fn new(secret: &str, origin: &str) -> Result<Self, SecretError> {
        let secret = secret.trim();
        if secret.len() < MIN_SECRET_LEN {
            return Err(SecretError::TooShort {
                origin: origin.to_owned(),
                len: secret.len(),
            });
        }
        Ok(Self(secret.to_owned()))
    }

    /// Reads a secret from a file (surrounding white space is ignored).
    pub fn from_file(path: &Path) -> Result<Self, SecretError> {
        let text = std::fs::read_to_string(path).map_err(|source| SecretError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::new(&text, &path.display().to_string())
    }

    /// The secret from `file` if given, else from `env_value` ([`SECRET_ENV`]).
    pub fn load(file: Option<&Path>, env_value: Option<&str>) -> Result<Option<Self>, SecretError> {
        match (file, env_value) {
            (Some(path), _) => Self::from_file(path).map(Some),
            (None, Some(value)) => Self::new(value, SECRET_ENV).map(Some),
            (None, None) => Ok(None),
        }
    }

    /// A fresh secret: 32 random bytes, as 64 hex characters.
    pub fn generate() -> Result<Self, SecretError> {
        Ok(Self(random_hex(32)?))
    }

    /// The secret itself, for writing it to a file.
    pub fn secret(&self) -> &str {
        &self.0
    }

    /// The key members sign with.
    pub fn key(&self) -> Key {
        Key::new(Kind::Member, self.0.as_bytes())
    }
}

/// `n` random bytes from the operating system, as hex.
pub fn random_hex(n: usize) -> Result<String, SecretError> {
    use aws_lc_rs::rand::SecureRandom;
    let mut bytes = vec![0u8; n];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| SecretError::Random)?;
    Ok(hex(&bytes))
}

/// A fresh nonce for one request.
pub fn nonce() -> Result<String, SecretError> {
    random_hex(16)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Which credential signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The cluster secret: a member.
    Member,
    /// The admin token: an operator.
    Admin,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Member => "member",
            Kind::Admin => "admin",
        }
    }

    fn parse(text: &str) -> Option<Kind> {
        match text {
            "member" => Some(Kind::Member),
            "admin" => Some(Kind::Admin),
            _ => None,
        }
    }
}

/// A signing key: one credential, ready to sign and verify.
#[derive(Clone)]
pub struct Key {
    kind: Kind,
    key: hmac::Key,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({}, …)", self.kind.as_str())
    }
}

impl Key {
    /// A key of `kind` from the credential's bytes.
    pub fn new(kind: Kind, secret: &[u8]) -> Key {
        Key {
            kind,
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// The admin token's key.
    pub fn admin(token: &keel_core::token::Token) -> Key {
        Key::new(Kind::Admin, token.secret().as_bytes())
    }

    /// Which credential this is.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    fn tag(&self, text: &str) -> String {
        hex(hmac::sign(&self.key, text.as_bytes()).as_ref())
    }

    fn check(&self, text: &str, sig: &str) -> bool {
        unhex(sig).is_some_and(|sig| hmac::verify(&self.key, text.as_bytes(), &sig).is_ok())
    }

    /// The `Keel-Auth` value for a request. `signer` names the member (its node id, or
    /// `monitor`, `proxy`…) or the operator's tool.
    pub fn sign_request(
        &self,
        signer: &str,
        request: &RequestParts<'_>,
        now_ms: u64,
        nonce: &str,
    ) -> String {
        let text = request_text(self.kind, signer, now_ms, nonce, request);
        format!(
            "v1 kind={} id={signer} ts={now_ms} nonce={nonce} sig={}",
            self.kind.as_str(),
            self.tag(&text)
        )
    }

    /// The `Keel-Auth` value for the answer to a request that carried `nonce`. `body` is
    /// the SHA-256 of the answer's body, or `None` for a streamed body (server-sent
    /// events), whose bytes the signature then does not cover.
    pub fn sign_response(
        &self,
        signer: &str,
        nonce: &str,
        status: u16,
        body: Option<&[u8; 32]>,
    ) -> String {
        let text = response_text(self.kind, signer, nonce, status, body);
        format!(
            "v1 kind={} id={signer} sig={}",
            self.kind.as_str(),
            self.tag(&text)
        )
    }

    /// Checks the `Keel-Auth` value of an answer to the request that carried `nonce`; on
    /// success, the id of the member that answered.
    pub fn verify_response(
        &self,
        header: Option<&str>,
        nonce: &str,
        status: u16,
        body: Option<&[u8; 32]>,
    ) -> Result<String, AuthError> {
        let header = header.ok_or(AuthError::Unsigned)?;
        let fields = Fields::parse(header)?;
        let kind = fields.kind()?;
        if kind != self.kind {
            return Err(AuthError::WrongKind { got: kind.as_str() });
        }
        let id = fields.get("id")?;
        let sig = fields.get("sig")?;
        let text = response_text(kind, id, nonce, status, body);
        if !self.check(&text, sig) {
            return Err(AuthError::BadSignature);
        }
        Ok(id.to_owned())
    }
}

/// What a request signature covers, besides the signer, time and nonce.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    /// `GET`, `POST`…
    pub method: &'a str,
    /// The `Host` the request was sent to (`127.0.0.1:8070`).
    pub host: &'a str,
    /// The path and query (`/v1/heartbeat`).
    pub path: &'a str,
    /// SHA-256 of the body ([`body_digest`]).
    pub body: &'a [u8; 32],
}

/// SHA-256 of a body.
pub fn body_digest(body: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, body);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn request_text(kind: Kind, signer: &str, ts: u64, nonce: &str, r: &RequestParts<'_>) -> String {
    format!(
        "keel-auth-v1\nrequest\n{}\n{signer}\n{ts}\n{nonce}\n{}\n{}\n{}\n{}",
        kind.as_str(),
        r.method,
        r.host.to_ascii_lowercase(),
        r.path,
        hex(r.body)
    )
}

fn response_text(
    kind: Kind,
    signer: &str,
    nonce: &str,
    status: u16,
    body: Option<&[u8; 32]>,
) -> String {
    format!(
        "keel-auth-v1\nresponse\n{}\n{signer}\n{nonce}\n{status}\n{}",
        kind.as_str(),
        body.map_or_else(|| "stream".to_owned(), |b| hex(b))
    )
}

/// Why a signature was refused. Each message says what to check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Keel-Auth` header.
    #[error("no Keel-Auth signature")]
    Unsigned,
    /// The header is not `v1 key=value…`.
    #[error("the Keel-Auth header is malformed: {0}")]
    Malformed(String),
    /// Signed with a credential this side does not hold.
    #[error("signed with the {got} credential, which this process does not accept here")]
    WrongKind {
        /// The kind the header named.
        got: &'static str,
    },
    /// The HMAC does not match: another secret, or a changed request.
    #[error(
        "the signature does not match: the sender holds another secret, or the request was changed on the way"
    )]
    BadSignature,
    /// The timestamp is outside the window.
    #[error(
        "the signature's time is {skew_ms} ms from this process's clock (at most {WINDOW_MS} ms allowed): check that both clocks are set"
    )]
    Expired {
        /// How far off, in milliseconds.
        skew_ms: u64,
    },
    /// The nonce was already used within the window.
    #[error("this signed request was already received once (a replay)")]
    Replayed,
    /// The replay cache is at its cap.
    #[error("too many signed requests in the last {WINDOW_MS} ms; try again shortly")]
    Busy,
    /// Signed for another host.
    #[error("signed for host {signed}, but this process is {expected}")]
    WrongHost {
        /// The host in the signature.
        signed: String,
        /// Who this process is.
        expected: String,
    },
}

impl AuthError {
    /// The stable code of the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Unsigned => "unsigned",
            AuthError::Malformed(_) => "bad_signature_header",
            AuthError::WrongKind { .. } => "wrong_credential",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired { .. } => "signature_expired",
            AuthError::Replayed => "replayed",
            AuthError::Busy => "busy",
            AuthError::WrongHost { .. } => "wrong_host",
        }
    }
}

/// The `key=value` fields of a `Keel-Auth` header.
struct Fields<'a>(Vec<(&'a str, &'a str)>);

impl<'a> Fields<'a> {
    fn parse(header: &'a str) -> Result<Fields<'a>, AuthError> {
        let mut words = header.split_ascii_whitespace();
        if words.next() != Some("v1") {
            return Err(AuthError::Malformed("it must start with 'v1'".to_owned()));
        }
        let mut fields = Vec::new();
        for word in words {
            let (k, v) = word
                .split_once('=')
                .ok_or_else(|| AuthError::Malformed(format!("{word:?} is not key=value")))?;
            if fields.iter().any(|(seen, _)| *seen == k) {
                return Err(AuthError::Malformed(format!("{k} appears twice")));
            }
            fields.push((k, v));
        }
        Ok(Fields(fields))
    }

    fn get(&self, key: &str) -> Result<&'a str, AuthError> {
        self.0
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| AuthError::Malformed(format!("no {key}=")))
    }

    fn kind(&self) -> Result<Kind, AuthError> {
        let kind = self.get("kind")?;
        Kind::parse(kind).ok_or_else(|| AuthError::Malformed(format!("unknown kind {kind:?}")))
    }
}

/// A parsed request signature, before it is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The credential it claims.
    pub kind: Kind,
    /// Who signed.
    pub signer: String,
    /// When, in Unix milliseconds by the signer's clock.
    pub ts_ms: u64,
    /// The request's nonce (the answer is signed over it).
    pub nonce: String,
    sig: String,
}

impl Claim {
    /// Parses a `Keel-Auth` request header.
    pub fn parse(header: &str) -> Result<Claim, AuthError> {
        let fields = Fields::parse(header)?;
        let kind = fields.kind()?;
        let signer = fields.get("id")?;
        let ts = fields.get("ts")?;
        let ts_ms = ts
            .parse()
            .map_err(|_| AuthError::Malformed(format!("ts={ts} is not a number")))?;
        let nonce = fields.get("nonce")?;
        if nonce.len() < 16 || nonce.len() > 64 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(AuthError::Malformed(
                "the nonce must be 16 to 64 hex characters".to_owned(),
            ));
        }
        if signer.len() > 128 {
            return Err(AuthError::Malformed(
                "the id is longer than 128 bytes".to_owned(),
            ));
        }
        Ok(Claim {
            kind,
            signer: signer.to_owned(),
            ts_ms,
            nonce: nonce.to_owned(),
            sig: fields.get("sig")?.to_owned(),
        })
    }
}

/// Who a checked request came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A member, by the id it signed with.
    Member(String),
    /// An operator (a signature with the admin token, or the token as a bearer).
    Admin,
}

/// The nonces seen within the window, oldest first.
#[derive(Debug, Default)]
pub struct ReplayCache {
    order: VecDeque<(u64, String)>,
    seen: HashSet<String>,
}

impl ReplayCache {
    /// Remembers `nonce` until `until_ms`; `Err` if it is already known or the cache is
    /// full. Expired nonces are forgotten first.
    fn insert(&mut self, nonce: &str, until_ms: u64, now_ms: u64) -> Result<(), AuthError> {
        while let Some((until, _)) = self.order.front() {
            if *until > now_ms {
                break;
            }
            if let Some((_, old)) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        if self.seen.contains(nonce) {
            return Err(AuthError::Replayed);
        }
        if self.seen.len() >= REPLAY_CAP {
            return Err(AuthError::Busy);
        }
        self.seen.insert(nonce.to_owned());
        // Keep the queue sorted by expiry so that the front always expires first.
        let at = self.order.partition_point(|(u, _)| *u <= until_ms);
        self.order.insert(at, (until_ms, nonce.to_owned()));
        Ok(())
    }

    /// How many nonces are remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// Checks request signatures for one process: which credentials it accepts, which hosts
/// it answers to, and the nonces it has seen.
#[derive(Debug)]
pub struct Verifier {
    member: Option<Key>,
    admin: Option<Key>,
    hosts: Hosts,
    replay: ReplayCache,
}

/// The hosts a process answers to: a request signed for another is refused, so a
/// signature captured on its way to one member cannot be replayed to another.
#[derive(Debug, Clone, Default)]
pub struct Hosts {
    names: Vec<String>,
    /// The process listens on every address: only the port is checked.
    any_address_port: Option<u16>,
}

impl Hosts {
    /// Any host is accepted (a process that cannot know its names).
    pub fn any() -> Hosts {
        Hosts::default()
    }

    /// The hosts of a process listening on `listen` and known as each of `urls` (its
    /// advertised URLs). A wildcard listen address (`0.0.0.0`, `[::]`) accepts any host
    /// with the right port.
    pub fn of(listen: std::net::SocketAddr, urls: &[&str]) -> Hosts {
        let mut names = vec![listen.to_string()];
        if listen.ip().is_loopback() {
            names.push(format!("localhost:{}", listen.port()));
        }
        for url in urls {
            if let Some(authority) = keel_core::faults::authority(url) {
                names.push(authority.to_ascii_lowercase());
            }
        }
        let any_address_port = listen.ip().is_unspecified().then_some(listen.port());
        Hosts {
            names,
            any_address_port,
        }
    }

    fn allows(&self, host: &str) -> bool {
        if self.names.is_empty() && self.any_address_port.is_none() {
            return true;
        }
        let host = host.to_ascii_lowercase();
        if self.names.contains(&host) {
            return true;
        }
        self.any_address_port.is_some_and(|port| {
            host.rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_some_and(|p| p == port)
        })
    }

    fn describe(&self) -> String {
        match (self.names.first(), self.any_address_port) {
            (_, Some(port)) => format!("any host on port {port}"),
            (Some(first), None) => first.clone(),
            (None, None) => "any host".to_owned(),
        }
    }
}

impl Verifier {
    /// A verifier accepting the member key and the admin key it is given.
    pub fn new(member: Option<Key>, admin: Option<Key>, hosts: Hosts) -> Verifier {
        Verifier {
            member,
            admin,
            hosts,
            replay: ReplayCache::default(),
        }
    }

    /// Whether this process holds the cluster secret (and so checks member requests).
    pub fn has_member_key(&self) -> bool {
        self.member.is_some()
    }

    /// The member key, for signing answers.
    pub fn member_key(&self) -> Option<&Key> {
        self.member.as_ref()
    }

    /// Checks `claim` against `request` at `now_ms`. Every check that can fail without
    /// the key runs first; the nonce is remembered only once the HMAC matched, so that
    /// forged requests cannot fill the cache.
    pub fn verify(
        &mut self,
        claim: &Claim,
        sig_over: &RequestParts<'_>,
        now_ms: u64,
    ) -> Result<Principal, AuthError> {
        let key = match claim.kind {
            Kind::Member => self.member.as_ref(),
            Kind::Admin => self.admin.as_ref(),
        }
        .ok_or(AuthError::WrongKind {
            got: claim.kind.as_str(),
        })?;
        let skew_ms = now_ms.abs_diff(claim.ts_ms);
        if skew_ms > WINDOW_MS {
            return Err(AuthError::Expired { skew_ms });
        }
        let text = request_text(
            claim.kind,
            &claim.signer,
            claim.ts_ms,
            &claim.nonce,
            sig_over,
        );
        if !key.check(&text, &claim.sig) {
            return Err(AuthError::BadSignature);
        }
        if !self.hosts.allows(sig_over.host) {
            return Err(AuthError::WrongHost {
                signed: sig_over.host.to_owned(),
                expected: self.hosts.describe(),
            });
        }
        // Remembered until the timestamp leaves the window on this clock.
        let until = claim.ts_ms.saturating_add(WINDOW_MS).max(now_ms) + 1;
        self.replay.insert(&claim.nonce, until, now_ms)?;
        Ok(match claim.kind {
            Kind::Member => Principal::Member(claim.signer.clone()),
            Kind::Admin => Principal::Admin,
        })
    }

    /// Nonces remembered now (for metrics and tests).
    pub fn remembered(&self) -> usize {
        self.replay.len()
    }
}

/// The `Keel-Auth` value of a message's headers, if it has one (as text).
pub fn signature_of(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get(AUTH_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// A member or operator tool's signing side: its key and the id it signs as.
#[derive(Debug, Clone)]
pub struct Signer {
    key: Key,
    id: String,
}

/// A signed request's header and the nonce its answer is signed over.
#[derive(Debug, Clone)]
pub struct Signed {
    /// The `Keel-Auth` value.
    pub header: String,
    /// The nonce in it.
    pub nonce: String,
}

impl Signer {
    /// Signs as `id` with `key`.
    pub fn new(key: Key, id: impl Into<String>) -> Signer {
        Signer { key, id: id.into() }
    }

    /// The key.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The id this signer signs as.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Signs `method url` with `body`, now. `url` is absolute (`http://host:port/path`);
    /// the signature covers its host, path and query.
    pub fn sign(&self, method: &str, url: &str, body: &[u8]) -> Result<Signed, SignError> {
        let uri: http::Uri = url.parse().map_err(|_| SignError::BadUrl(url.to_owned()))?;
        let host = uri
            .authority()
            .ok_or_else(|| SignError::BadUrl(url.to_owned()))?
            .as_str();
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let nonce = nonce().map_err(|_| SignError::Random)?;
        let digest = body_digest(body);
        let parts = RequestParts {
            method,
            host,
            path,
            body: &digest,
        };
        Ok(Signed {
            header: self.key.sign_request(&self.id, &parts, unix_ms(), &nonce),
            nonce,
        })
    }

    /// Checks the answer to `signed`: its `Keel-Auth` header, status and body (`None`
    /// for an event stream). On success, the id of the member that answered.
    pub fn check_answer(
        &self,
        signed: &Signed,
        header: Option<&str>,
        status: u16,
        body: Option<&[u8]>,
    ) -> Result<String, AuthError> {
        let digest = body.map(body_digest);
        self.key
            .verify_response(header, &signed.nonce, status, digest.as_ref())
    }
}

/// Why a request could not be signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// The URL has no host.
    #[error("cannot sign a request to {0:?}: it needs an absolute URL with a host")]
    BadUrl(String),
    /// The system's random source failed.
    #[error("cannot draw a nonce from the system's random source")]
    Random,
}

/// The current time in Unix milliseconds, for signatures only: it is compared with
/// another machine's clock within [`WINDOW_MS`], never used for failure detection.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_764_892_800_000;
    const NONCE: &str = "00112233445566778899aabbccddeeff";

    fn secret() -> ClusterSecret {
        ClusterSecret::new(&"s".repeat(40), "test").expect("secret")
    }

    fn parts<'a>(body: &'a [u8; 32]) -> RequestParts<'a> {
        RequestParts {
            method: "POST",
            host: "127.0.0.1:8070",
            path: "/v1/heartbeat",
            body,
        }
    }

    fn verifier() -> Verifier {
        Verifier::new(
            Some(secret().key()),
            None,
            Hosts::of("127.0.0.1:8070".parse().expect("addr"), &[]),
        )
    }

    #[test]
    fn a_signed_request_is_accepted_once() {
        let body = body_digest(b"{}");
        let header = secret()
            .key()
            .sign_request("app1", &parts(&body), NOW, NONCE);
        let claim = Claim::parse(&header).expect("parses");
        let mut v = verifier();
        assert_eq!(
            v.verify(&claim, &parts(&body), NOW + 5),
            Ok(Principal::Member("app1".to_owned()))
        );
        assert_eq!(
            v.verify(&claim, &parts(&body), NOW + 6),
            Err(AuthError::Replayed)
        );
    }

    #[test]
    fn any_change_to_the_request_breaks_the_signature() {
        let body = body_digest(b"{\"epoch\":1}");
        let header = secret()
            .key()
            .sign_request("app1", &parts(&body), NOW, NONCE);
        let claim = Claim::parse(&header).expect("parses");
        let other = body_digest(b"{\"epoch\":9}");
        let changed = [
            RequestParts {
                body: &other,
                ..parts(&body)
            },
            RequestParts {
                method: "PUT",
                ..parts(&body)
            },
            RequestParts {
                path: "/v1/register",
                ..parts(&body)
            },
        ];
        for request in changed {
            assert_eq!(
                verifier().verify(&claim, &request, NOW),
                Err(AuthError::BadSignature),
                "{request:?}"
            );
        }
        let forged = Claim::parse(&header.replace("id=app1", "id=app2")).expect("parses");
        assert_eq!(
            verifier().verify(&forged, &parts(&body), NOW),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn another_secret_is_refused() {
        let body = body_digest(b"");
        let other = ClusterSecret::new(&"t".repeat(40), "test").expect("secret");
        let header = other.key().sign_request("app1", &parts(&body), NOW, NONCE);
        let claim = Claim::parse(&header).expect("parses");
        assert_eq!(
            verifier().verify(&claim, &parts(&body), NOW),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn a_signature_outside_the_window_is_refused_either_way() {
        let body = body_digest(b"");
        let key = secret().key();
        for (ts, now) in [(NOW, NOW + WINDOW_MS + 1), (NOW + WINDOW_MS + 1, NOW)] {
            let claim =
                Claim::parse(&key.sign_request("app1", &parts(&body), ts, NONCE)).expect("parses");
            assert_eq!(
                verifier().verify(&claim, &parts(&body), now),
                Err(AuthError::Expired {
                    skew_ms: WINDOW_MS + 1
                })
            );
        }
        let claim =
            Claim::parse(&key.sign_request("app1", &parts(&body), NOW, NONCE)).expect("parses");
        assert!(
            verifier()
                .verify(&claim, &parts(&body), NOW + WINDOW_MS)
                .is_ok()
        );
    }

    #[test]
    fn a_nonce_is_forgotten_only_once_its_signature_has_expired() {
        let body = body_digest(b"");
        let key = secret().key();
        let mut v = verifier();
        let claim =
            Claim::parse(&key.sign_request("app1", &parts(&body), NOW, NONCE)).expect("parses");
        v.verify(&claim, &parts(&body), NOW).expect("first");
        // Another request later evicts expired nonces; the first is still remembered
        // while its timestamp is inside the window.
        let later = "ffeeddccbbaa99887766554433221100";
        let c2 = Claim::parse(&key.sign_request("app1", &parts(&body), NOW + WINDOW_MS, later))
            .expect("parses");
        v.verify(&c2, &parts(&body), NOW + WINDOW_MS)
            .expect("second");
        assert_eq!(v.remembered(), 2);
        assert_eq!(
            v.verify(&claim, &parts(&body), NOW + WINDOW_MS),
            Err(AuthError::Replayed)
        );
        let c3 = Claim::parse(&key.sign_request(
            "app1",
            &parts(&body),
            NOW + 2 * WINDOW_MS,
            "0123456789abcdef0123",
        ))
        .expect("parses");
        v.verify(&c3, &parts(&body), NOW + 2 * WINDOW_MS)
            .expect("third");
        assert_eq!(
            v.remembered(),
            2,
            "the first nonce expired and was forgotten"
        );
    }

    #[test]
    fn a_signature_for_another_host_is_refused() {
        let body = body_digest(b"");
        let to_other = RequestParts {
            host: "127.0.0.1:8082",
            ..parts(&body)
        };
        let header = secret().key().sign_request("app1", &to_other, NOW, NONCE);
        let claim = Claim::parse(&header).expect("parses");
        assert!(matches!(
            verifier().verify(&claim, &to_other, NOW),
            Err(AuthError::WrongHost { .. })
        ));
        let wildcard = Verifier::new(
            Some(secret().key()),
            None,
            Hosts::of("0.0.0.0:8082".parse().expect("addr"), &[]),
        );
        let mut wildcard = wildcard;
        assert!(wildcard.verify(&claim, &to_other, NOW).is_ok());
    }

    #[test]
    fn admin_signatures_need_the_admin_key_and_member_ones_the_secret() {
        let body = body_digest(b"");
        let token = keel_core::token::Token::new("0123456789abcdef0123", "test").expect("token");
        let admin = Key::admin(&token);
        let claim = Claim::parse(&admin.sign_request("keel-client", &parts(&body), NOW, NONCE))
            .expect("parses");
        assert_eq!(
            verifier().verify(&claim, &parts(&body), NOW),
            Err(AuthError::WrongKind { got: "admin" })
        );
        let mut both = Verifier::new(Some(secret().key()), Some(admin), Hosts::any());
        assert_eq!(
            both.verify(&claim, &parts(&body), NOW),
            Ok(Principal::Admin)
        );
    }

    #[test]
    fn answers_are_signed_over_the_request_nonce_status_and_body() {
        let key = secret().key();
        let body = body_digest(b"{\"role\":\"primary\"}");
        let header = key.sign_response("monitor", NONCE, 200, Some(&body));
        assert_eq!(
            key.verify_response(Some(&header), NONCE, 200, Some(&body)),
            Ok("monitor".to_owned())
        );
        let other = body_digest(b"{\"role\":\"standby\"}");
        assert_eq!(
            key.verify_response(Some(&header), NONCE, 200, Some(&other)),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            key.verify_response(Some(&header), NONCE, 409, Some(&body)),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            key.verify_response(
                Some(&header),
                "ffffffffffffffffffffffffffffffff",
                200,
                Some(&body)
            ),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            key.verify_response(None, NONCE, 200, Some(&body)),
            Err(AuthError::Unsigned)
        );
        let streamed = key.sign_response("monitor", NONCE, 200, None);
        assert!(
            key.verify_response(Some(&streamed), NONCE, 200, None)
                .is_ok()
        );
        assert!(
            key.verify_response(Some(&streamed), NONCE, 200, Some(&body))
                .is_err()
        );
    }

    #[test]
    fn malformed_headers_say_what_is_wrong() {
        for (header, says) in [
            ("v2 kind=member", "v1"),
            (
                "v1 kind=member id=a ts=1 nonce=00112233445566778899 sig",
                "key=value",
            ),
            (
                "v1 kind=root id=a ts=1 nonce=00112233445566778899 sig=00",
                "unknown kind",
            ),
            (
                "v1 kind=member id=a ts=x nonce=00112233445566778899 sig=00",
                "not a number",
            ),
            ("v1 kind=member id=a ts=1 nonce=zz sig=00", "nonce"),
            (
                "v1 kind=member id=a id=b ts=1 nonce=00112233445566778899 sig=00",
                "twice",
            ),
            (
                "v1 kind=member ts=1 nonce=00112233445566778899 sig=00",
                "no id=",
            ),
        ] {
            let err = Claim::parse(header).expect_err(header);
            assert!(err.to_string().contains(says), "{header}: {err}");
        }
    }

    #[test]
    fn a_signer_signs_what_a_verifier_checks_and_checks_what_a_key_answers() {
        let signer = Signer::new(secret().key(), "app1");
        let signed = signer
            .sign("POST", "http://127.0.0.1:8070/v1/heartbeat?x=1", b"{}")
            .expect("signs");
        let claim = Claim::parse(&signed.header).expect("parses");
        let body = body_digest(b"{}");
        let request = RequestParts {
            path: "/v1/heartbeat?x=1",
            ..parts(&body)
        };
        let mut v = verifier();
        assert_eq!(
            v.verify(&claim, &request, unix_ms()),
            Ok(Principal::Member("app1".to_owned()))
        );
        let answer =
            secret()
                .key()
                .sign_response("monitor", &claim.nonce, 200, Some(&body_digest(b"ok")));
        assert_eq!(
            signer.check_answer(&signed, Some(&answer), 200, Some(b"ok")),
            Ok("monitor".to_owned())
        );
        assert!(signer.sign("GET", "/no-host", b"").is_err());
    }

    #[test]
    fn short_secrets_are_refused_and_generated_ones_are_long() {
        assert!(matches!(
            ClusterSecret::new("short", "x"),
            Err(SecretError::TooShort { len: 5, .. })
        ));
        let a = ClusterSecret::generate().expect("random");
        assert_eq!(a.secret().len(), 64);
        assert_ne!(a, ClusterSecret::generate().expect("random"));
        assert_eq!(format!("{a:?}"), "ClusterSecret(…)");
    }
}
