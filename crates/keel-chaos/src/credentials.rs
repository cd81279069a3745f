//! The two credentials every process of `keel up` is started with (docs/security.md): the
//! admin token, for operators' actions, and the cluster secret, for members' calls to each
//! other. Both live in the data directory, made once and then kept, since nodes and
//! scripts may hold them; with `--tls`, the certificates join them in `<data-dir>/tls`.

use std::error::Error as StdError;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use keel_auth::ClusterSecret;
use keel_core::token::Token;

/// Why a credential file cannot be kept or written.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The file holds something that is not a usable credential.
    #[error(
        "the {what} in {} is unusable; delete the file and `keel up` writes a new one",
        path.display()
    )]
    Unusable {
        what: &'static str,
        path: PathBuf,
        source: Box<dyn StdError + Send + Sync>,
    },
    /// The system's random source failed.
    #[error("cannot generate {what}")]
    Generate {
        what: &'static str,
        source: Box<dyn StdError + Send + Sync>,
    },
    /// The new file could not be written.
    #[error("cannot write the {what} to {}", path.display())]
    Write {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Whether a credential file was there already: a note for the banner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Written by an earlier `keel up`, and kept.
    Kept,
    /// Written now.
    New,
}

impl Origin {
    /// `kept` or `new`, as the banner says it.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Kept => "kept",
            Origin::New => "new",
        }
    }
}

/// Where the two credentials every process is started with live (docs/security.md).
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The admin token: operators' actions.
    pub token: PathBuf,
    /// The cluster secret: members' calls to each other.
    pub secret: PathBuf,
    /// With `--tls`: the directory of the CA and every process's certificate.
    pub tls: Option<PathBuf>,
}

impl Credentials {
    /// The files `keel up` keeps in its data directory.
    pub fn in_dir(dir: &Path) -> Credentials {
        Credentials {
            token: dir.join(keel_core::token::TOKEN_FILE_NAME),
            secret: dir.join(keel_auth::SECRET_FILE_NAME),
            tls: None,
        }
    }

    /// Keeps the admin token and the cluster secret of an earlier `keel up`, or writes
    /// new ones; says which for the token.
    pub fn ensure(&self) -> Result<Origin, CredentialError> {
        let token = ensure_secret_file(
            &self.token,
            "admin token",
            "an admin token",
            || Token::generate().map(|t| t.secret().to_owned()),
            |path| Token::from_file(path).map(drop),
        )?;
        ensure_secret_file(
            &self.secret,
            "cluster secret",
            "a cluster secret",
            || ClusterSecret::generate().map(|s| s.secret().to_owned()),
            |path| ClusterSecret::from_file(path).map(drop),
        )?;
        Ok(token)
    }

    /// The flags that give process `name` its certificate, with `--tls`.
    pub(crate) fn tls_flags(&self, name: &str) -> Vec<String> {
        let Some(dir) = &self.tls else {
            return Vec::new();
        };
        vec![
            "--tls-cert".into(),
            path_arg(&dir.join(format!("{name}.pem"))),
            "--tls-key".into(),
            path_arg(&dir.join(format!("{name}.key"))),
            "--tls-ca".into(),
            path_arg(&dir.join("ca.pem")),
        ]
    }

    /// `https` with `--tls`, else `http`.
    pub(crate) fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }
}

/// Keeps the credential of an earlier `keel up` in `path` (nodes and scripts may hold
/// it) if `check` accepts it, else writes a new one from `generate`, readable by the
/// owner only.
fn ensure_secret_file<G, C>(
    path: &Path,
    what: &'static str,
    a_what: &'static str,
    generate: impl FnOnce() -> Result<String, G>,
    check: impl FnOnce(&Path) -> Result<(), C>,
) -> Result<Origin, CredentialError>
where
    G: StdError + Send + Sync + 'static,
    C: StdError + Send + Sync + 'static,
{
    if path.exists() {
        check(path).map_err(|e| CredentialError::Unusable {
            what,
            path: path.to_owned(),
            source: Box::new(e),
        })?;
        return Ok(Origin::Kept);
    }
    let secret = generate().map_err(|e| CredentialError::Generate {
        what: a_what,
        source: Box::new(e),
    })?;
    let write_error = |source| CredentialError::Write {
        what,
        path: path.to_owned(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(write_error)?;
    writeln!(file, "{secret}")
        .and_then(|()| file.sync_all())
        .map_err(write_error)
        .map(|()| Origin::New)
}

/// A path as a command-line argument.
pub fn path_arg(p: &Path) -> String {
    p.display().to_string()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn credentials_are_written_for_the_owner_only_then_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let credentials = Credentials::in_dir(dir.path());
        assert_eq!(credentials.ensure().expect("written"), Origin::New);
        let token = std::fs::read_to_string(&credentials.token).expect("token");
        for file in [&credentials.token, &credentials.secret] {
            let mode = std::fs::metadata(file)
                .expect("metadata")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{}", file.display());
        }
        assert_eq!(credentials.ensure().expect("kept"), Origin::Kept);
        assert_eq!(
            std::fs::read_to_string(&credentials.token).expect("token"),
            token
        );
    }

    #[test]
    fn an_unusable_token_is_refused_with_the_way_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let credentials = Credentials::in_dir(dir.path());
        std::fs::write(&credentials.token, "short").expect("write");
        let err = credentials.ensure().expect_err("too short to be a token");
        assert!(
            err.to_string()
                .contains("is unusable; delete the file and `keel up` writes a new one"),
            "{err}"
        );
    }
}
