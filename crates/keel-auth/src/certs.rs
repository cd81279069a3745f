//! A small CA and a certificate per process, for TLS across hosts (`keel certs`, `keel
//! up --tls`; docs/security.md).
//!
//! The CA is made once per directory and kept: running again adds certificates signed by
//! the same CA (a new node), and keeps those already there. A multi-host set-up is then a
//! copy of the directory: each host needs `ca.pem` and its own `NAME.pem` and
//! `NAME.key`; `ca.key` stays with whoever issues certificates.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Why certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file could not be read or written.
    #[error("{what}")]
    Io {
        /// What was being done, with the path.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// rcgen refused.
    #[error("{what}: {reason}")]
    Rcgen {
        /// What was being made.
        what: String,
        /// Why it failed.
        reason: String,
    },
    /// The directory or a name is not usable; says what to do.
    #[error("{0}")]
    Invalid(String),
}

impl CertError {
    fn io(what: impl Into<String>, source: std::io::Error) -> CertError {
        CertError::Io {
            what: what.into(),
            source,
        }
    }

    fn rcgen(what: impl Into<String>, e: rcgen::Error) -> CertError {
        CertError::Rcgen {
            what: what.into(),
            reason: e.to_string(),
        }
    }
}

/// The CA's common name.
const CA_NAME: &str = "keel cluster CA";
/// How long the CA's certificate is valid, in years.
const CA_YEARS: i32 = 10;
/// How long a process's certificate is valid, in years.
const CERT_YEARS: i32 = 2;

/// Makes sure `dir` holds a CA and a certificate for each `(name, extra hosts)`; returns
/// a line per file made or kept. Each certificate names `name`, `localhost`,
/// `127.0.0.1`, `::1` and the extra hosts, and serves as both a server's and a client's
/// certificate (members are both).
pub fn ensure(dir: &Path, wanted: &[(String, Vec<String>)]) -> Result<Vec<String>, CertError> {
    fs::create_dir_all(dir)
        .map_err(|e| CertError::io(format!("cannot create the directory {}", dir.display()), e))?;
    let mut lines = Vec::new();
    let (ca_pem, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
    let ca_key = match (ca_pem.exists(), ca_key.exists()) {
        (true, true) => {
            lines.push(format!("kept the CA in {}", ca_pem.display()));
            let pem = fs::read_to_string(&ca_key).map_err(|e| {
                CertError::io(format!("cannot read the CA key {}", ca_key.display()), e)
            })?;
            KeyPair::from_pem(&pem).map_err(|e| {
                CertError::rcgen(format!("{} is not a private key", ca_key.display()), e)
            })?
        }
        (false, false) => {
            let key = KeyPair::generate()
                .map_err(|e| CertError::rcgen("cannot generate the CA's key", e))?;
            let cert = ca_params(&key)?
                .self_signed(&key)
                .map_err(|e| CertError::rcgen("cannot make the CA's certificate", e))?;
            write_file(&ca_pem, &cert.pem(), false)?;
            write_file(&ca_key, &key.serialize_pem(), true)?;
            lines.push(format!(
                "made a CA in {} (its key in {})",
                ca_pem.display(),
                ca_key.display()
            ));
            key
        }
        _ => {
            return Err(CertError::Invalid(format!(
                "{} holds only one of ca.pem and ca.key; restore the other or remove both to make a new CA",
                dir.display()
            )));
        }
    };
    let issuer = Issuer::new(ca_params(&ca_key)?, ca_key);
    for (name, hosts) in wanted {
        check_name(name)?;
        let (pem, key) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        if pem.exists() && key.exists() {
            lines.push(format!("kept {}", pem.display()));
            continue;
        }
        let mut names = vec![
            name.clone(),
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        for host in hosts {
            if !host.is_empty() && !names.contains(host) {
                names.push(host.clone());
            }
        }
        let mut params = CertificateParams::new(names.clone()).map_err(|e| {
            CertError::rcgen(format!("a certificate for {name} naming {names:?}"), e)
        })?;
        params
            .distinguished_name
            .push(DnType::CommonName, name.as_str());
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        set_validity(&mut params, CERT_YEARS);
        let leaf_key =
            KeyPair::generate().map_err(|e| CertError::rcgen("cannot generate a key", e))?;
        let cert = params
            .signed_by(&leaf_key, &issuer)
            .map_err(|e| CertError::rcgen(format!("cannot sign the certificate of {name}"), e))?;
        write_file(&pem, &cert.pem(), false)?;
        write_file(&key, &leaf_key.serialize_pem(), true)?;
        lines.push(format!("made {} for {}", pem.display(), names.join(", ")));
    }
    Ok(lines)
}

/// The CA's parameters; the same every time for one key, so that its key alone signs
/// again. Its name ends with a fingerprint of the key: two clusters' CAs never share a
/// name, and a certificate of the other is refused as of an unknown issuer.
fn ca_params(key: &KeyPair) -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::new(Vec::<String>::new())
        .map_err(|e| CertError::rcgen("the CA's parameters", e))?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.public_key_raw());
    let fingerprint: String = digest.as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{CA_NAME} {fingerprint}"));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, CA_YEARS);
    Ok(params)
}

/// Valid from the start of last year to the start of the year `years` on (a day's
/// precision is all a certificate's validity needs).
fn set_validity(params: &mut CertificateParams, years: i32) {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400);
    // 365.2425 days a year; off by at most a day around New Year, which the margin of a
    // whole year before `now` absorbs.
    let year = 1970 + i32::try_from(days * 10_000 / 3_652_425).unwrap_or(0);
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + years, 1, 1);
}

/// A name becomes a file name: letters, digits, `-`, `_` and `.` only.
fn check_name(name: &str) -> Result<(), CertError> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        return Err(CertError::Invalid(format!(
            "{name:?} cannot name a certificate: use letters, digits, '-', '_' and '.'"
        )));
    }
    Ok(())
}

fn write_file(path: &PathBuf, text: &str, secret: bool) -> Result<(), CertError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .map_err(|e| CertError::io(format!("cannot write {}", path.display()), e))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| CertError::io(format!("cannot write {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_run_keeps_the_ca_and_its_certificates_and_adds_new_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = ensure(
            dir.path(),
            &[("app1".to_owned(), vec!["10.0.0.1".to_owned()])],
        )
        .expect("first run");
        assert!(first[0].starts_with("made a CA"), "{first:?}");
        assert!(
            first[1].contains("app1, localhost, 127.0.0.1, ::1, 10.0.0.1"),
            "{first:?}"
        );
        let ca = fs::read(dir.path().join("ca.pem")).expect("ca");
        let second = ensure(
            dir.path(),
            &[("app1".to_owned(), vec![]), ("app2".to_owned(), vec![])],
        )
        .expect("second run");
        assert!(second[0].starts_with("kept the CA"), "{second:?}");
        assert!(second[1].starts_with("kept"), "{second:?}");
        assert!(second[2].starts_with("made"), "{second:?}");
        assert_eq!(fs::read(dir.path().join("ca.pem")).expect("ca"), ca);
        // Both certificates chain to the one CA: TLS set up from either works.
        for name in ["app1", "app2"] {
            crate::tls::Tls::load(&crate::tls::TlsFiles {
                cert: dir.path().join(format!("{name}.pem")),
                key: dir.path().join(format!("{name}.key")),
                ca: dir.path().join("ca.pem"),
            })
            .expect("loads");
        }
        let mode = fs::metadata(dir.path().join("app2.key"))
            .expect("key")
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }

    #[test]
    fn names_that_are_not_file_names_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        for bad in ["../x", "a/b", "", ".hidden"] {
            assert!(
                ensure(dir.path(), &[(bad.to_owned(), vec![])]).is_err(),
                "{bad}"
            );
        }
    }
}
