//! The admin bearer token.
//!
//! Admin actions (kill, and later failover and chaos) need `Authorization: Bearer <token>`.
//! `keel up` generates the token into its data directory; a node reads it from
//! `--token-file` or the `KEEL_TOKEN` environment variable.

use std::fs;
use std::path::{Path, PathBuf};

/// The file name `keel up` writes the token to, inside its data directory.
pub const TOKEN_FILE_NAME: &str = "admin.token";

/// Why a token could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token file could not be read.
    #[error("cannot read token file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The token was empty or too short to be a secret.
    #[error("the admin token from {origin} is {len} characters long; it needs at least 16")]
    TooShort {
        /// Where the token came from.
        origin: String,
        /// Its length.
        len: usize,
    },
}

/// An admin token. Compared in constant time; never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

impl Token {
    /// Wraps a token after checking it is long enough to be a secret.
    pub fn new(token: &str, origin: &str) -> Result<Self, TokenError> {
        let token = token.trim();
        if token.len() < 16 {
            return Err(TokenError::TooShort {
                origin: origin.to_owned(),
                len: token.len(),
            });
        }
        Ok(Self(token.to_owned()))
    }

    /// Reads a token from a file (surrounding white space is ignored).
    pub fn from_file(path: &Path) -> Result<Self, TokenError> {
        let text = fs::read_to_string(path).map_err(|source| TokenError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::new(&text, &path.display().to_string())
    }

    /// The token from `file` if given, else from `env_value` (the `KEEL_TOKEN` variable).
    pub fn load(file: Option<&Path>, env_value: Option<&str>) -> Result<Option<Self>, TokenError> {
        match (file, env_value) {
            (Some(path), _) => Self::from_file(path).map(Some),
            (None, Some(value)) => Self::new(value, "KEEL_TOKEN").map(Some),
            (None, None) => Ok(None),
        }
    }

    /// A fresh random token: 32 hex characters from the OS's random source.
    pub fn generate() -> std::io::Result<Self> {
        let mut bytes = [0u8; 16];
        let mut f = fs::File::open("/dev/urandom")?;
        std::io::Read::read_exact(&mut f, &mut bytes)?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Ok(Self(hex))
    }

    /// The secret itself, for writing it to a file or a header.
    pub fn secret(&self) -> &str {
        &self.0
    }

    /// Whether an `Authorization` header value carries this token, compared in constant
    /// time so that the answer's timing does not leak how much of a guess was right.
    pub fn matches_header(&self, header: Option<&str>) -> bool {
        let Some(given) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
            return false;
        };
        let (a, b) = (self.0.as_bytes(), given.trim().as_bytes());
        if a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// Checks an admin request: the process must have a token (`403 admin_disabled`
/// otherwise) and the request must have proven it holds it (`401 unauthorized`):
/// `authorized` is true when its `Authorization: Bearer` matched or its `Keel-Auth`
/// signature was made with the token (`keel_http::Guard` checks both). `what`
/// names the process in the message ("node", "monitor").
pub fn check_admin(
    token: Option<&Token>,
    authorized: bool,
    what: &str,
) -> Result<(), (http::StatusCode, crate::ApiError)> {
    if token.is_none() {
        return Err((
            http::StatusCode::FORBIDDEN,
            crate::ApiError::new(
                "admin_disabled",
                format!(
                    "this {what} was started without an admin token (--token-file or KEEL_TOKEN)"
                ),
            ),
        ));
    };
    if !authorized {
        return Err((
            http::StatusCode::UNAUTHORIZED,
            crate::ApiError::new(
                "unauthorized",
                "admin actions need the cluster's admin token: 'Authorization: Bearer <token>', or a Keel-Auth signature made with it",
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_must_carry_the_exact_token() {
        let t = Token::new("0123456789abcdef", "test").expect("valid token");
        assert!(t.matches_header(Some("Bearer 0123456789abcdef")));
        assert!(!t.matches_header(Some("Bearer 0123456789abcdeX")));
        assert!(!t.matches_header(Some("0123456789abcdef")));
        assert!(!t.matches_header(None));
    }

    #[test]
    fn admin_requests_need_a_configured_token_and_the_right_header() {
        let t = Token::new("0123456789abcdef", "test").expect("valid token");
        assert!(check_admin(Some(&t), true, "node").is_ok());
        let (status, body) = check_admin(Some(&t), false, "node").expect_err("no header");
        assert_eq!(
            (status.as_u16(), body.error.as_str()),
            (401, "unauthorized")
        );
        let (status, body) = check_admin(None, true, "monitor").expect_err("no token");
        assert_eq!(
            (status.as_u16(), body.error.as_str()),
            (403, "admin_disabled")
        );
        assert!(body.message.contains("this monitor"));
    }

    #[test]
    fn short_tokens_are_refused() {
        assert!(matches!(
            Token::new("short", "x"),
            Err(TokenError::TooShort { len: 5, .. })
        ));
    }

    #[test]
    fn generated_tokens_are_long_and_differ() {
        let a = Token::generate().expect("urandom");
        let b = Token::generate().expect("urandom");
        assert_eq!(a.secret().len(), 32);
        assert_ne!(a, b);
    }
}
