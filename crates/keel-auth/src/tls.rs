//! TLS across hosts, with rustls: one [`Tls`] per process, loaded from `--tls-cert`,
//! `--tls-key` and `--tls-ca` (docs/security.md).
//!
//! Every member holds a certificate signed by the cluster's CA (`keel certs` makes both).
//! As a server it presents its certificate and checks the client's, if the client shows
//! one, against the CA: a member's client certificate from any other CA ends the
//! handshake. As a client it checks the server's certificate against the CA — and only
//! the CA, not the system's roots: a member talks to members — and presents its own.
//!
//! A client without a certificate may still connect (an operator's `keel client` with
//! just the CA, `curl --cacert`): what it may do is decided above TLS, where member
//! routes need a member's signature ([`crate`]) and admin routes the admin token.

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use rustls::ClientConfig;
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The files a process's TLS is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// This process's certificate chain (PEM), signed by the CA.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The cluster CA's certificate (PEM).
    pub ca: PathBuf,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no PEM of the expected kind.
    #[error("cannot read {what} from {path}: {reason}")]
    File {
        /// What was looked for ("a certificate", "a private key").
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// rustls refused the material.
    #[error("{0}")]
    Rustls(String),
}

/// A process's TLS: the server side for its listeners, the client side for its calls.
#[derive(Clone)]
pub struct Tls {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls(…)")
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |reason: String| TlsError::File {
        what: "a certificate",
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE block in the file".to_owned()));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File {
        what: "a private key",
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

impl Tls {
    /// Loads the certificate, key and CA, and builds both sides.
    pub fn load(files: &TlsFiles) -> Result<Tls, TlsError> {
        let chain = certs(&files.cert)?;
        let key = key(&files.key)?;
        let mut roots = RootCertStore::empty();
        for ca in certs(&files.ca)? {
            roots
                .add(ca)
                .map_err(|e| TlsError::Rustls(format!("the CA in {}: {e}", files.ca.display())))?;
        }
        let roots = Arc::new(roots);
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            // Members show a certificate; operators' tools and curl may not. What each may
            // do is decided by signatures and tokens above TLS.
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::Rustls(format!("the client verifier: {e}")))?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Rustls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| {
                TlsError::Rustls(format!(
                    "the certificate {} and key {} do not go together: {e}",
                    files.cert.display(),
                    files.key.display()
                ))
            })?;
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Rustls(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| TlsError::Rustls(format!("the client certificate: {e}")))?;
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }

    /// The configuration `--tls-cert`/`--tls-key`/`--tls-ca` name, if all three are given;
    /// an error names what is missing when only some are.
    pub fn from_flags(
        cert: Option<&Path>,
        key: Option<&Path>,
        ca: Option<&Path>,
    ) -> Result<Option<Tls>, TlsError> {
        match (cert, key, ca) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(ca)) => Tls::load(&TlsFiles {
                cert: cert.to_owned(),
                key: key.to_owned(),
                ca: ca.to_owned(),
            })
            .map(Some),
            _ => Err(TlsError::Rustls(
                "TLS needs all three of --tls-cert, --tls-key and --tls-ca (keel certs writes them)"
                    .to_owned(),
            )),
        }
    }

    /// Accepts TLS connections on a listener.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.server.clone())
    }

    /// Opens TLS connections to members.
    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.client.clone())
    }

    /// The client side, for an HTTP client library (reqwest's `use_preconfigured_tls`).
    pub fn client_config(&self) -> rustls::ClientConfig {
        (*self.client).clone()
    }
}

/// The client side of a tool that is not a member (`keel client`, `keel up`'s reads):
/// servers' certificates are checked against the CA in `ca`; no client certificate.
pub fn client_for_ca(ca: &Path) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs(ca)? {
        roots
            .add(cert)
            .map_err(|e| TlsError::Rustls(format!("the CA in {}: {e}", ca.display())))?;
    }
    let mut client = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(client)
}

/// The name to check a server's certificate against, from the host of an address or URL
/// authority (`127.0.0.1:8081`, `app1.example:8081`, `[::1]:8081`).
pub fn server_name(host: &str) -> Result<rustls_pki_types::ServerName<'static>, TlsError> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    rustls_pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| TlsError::Rustls(format!("{host:?} cannot name a TLS server: {e}")))
}
