//! For the tests: a cluster CA and certificates made on the spot, as `keel certs` makes
//! them (each naming its process, `localhost` and `127.0.0.1`, good as a server's and a
//! client's), and small TLS servers and clients over them.

use std::path::Path;

use keel_auth::tls::{Tls, TlsFiles};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A CA in a directory of its own, and the certificates it signed there.
pub(crate) struct Ca {
    dir: tempfile::TempDir,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("a CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("the CA's certificate");
        write(&dir.path().join("ca.pem"), &issuer.pem());
        Ca { dir, issuer }
    }

    /// The TLS of process `name`, with a certificate this CA signs for it.
    pub fn tls(&self, name: &str) -> Tls {
        let names = vec![
            name.to_owned(),
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ];
        let mut params = CertificateParams::new(names).expect("parameters");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().expect("a key");
        let cert = params.signed_by(&key, &self.issuer).expect("a certificate");
        let files = TlsFiles {
            cert: self.dir.path().join(format!("{name}.pem")),
            key: self.dir.path().join(format!("{name}.key")),
            ca: self.dir.path().join("ca.pem"),
        };
        write(&files.cert, &cert.pem());
        write(&files.key, &key.serialize_pem());
        Tls::load(&files).expect("TLS from the files")
    }
}

impl Ca {
    /// A client that trusts this CA and shows no certificate (curl with `--cacert`).
    pub fn client(&self) -> tokio_rustls::TlsConnector {
        let config = keel_auth::tls::client_for_ca(&self.dir.path().join("ca.pem"))
            .expect("a client of the CA");
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write a PEM file");
}
