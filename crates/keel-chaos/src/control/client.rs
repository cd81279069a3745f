//! The control API from outside: what `keel chaos` uses to reach a running `keel up`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use keel_auth::{Key, SignError, Signer};
use keel_core::token::{TOKEN_FILE_NAME, Token, TokenError};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;

use super::{Action, Done, PartitionDone, PartitionRequest, ProcessInfo, UP_FILE, UpFile};

/// Why `keel up` could not be asked, or what it refused.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// `<data-dir>/up.json` cannot be read: probably no `keel up` runs on that directory.
    #[error(
        "cannot read {}: is `keel up` running with --data-dir {}? (or give --up URL)",
        path.display(),
        data_dir.display()
    )]
    NoUpFile {
        path: PathBuf,
        data_dir: PathBuf,
        source: std::io::Error,
    },
    /// `up.json` holds something else than where `keel up` listens.
    #[error("{} is not keel up's file", path.display())]
    BadUpFile {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// The admin token cannot be loaded.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The HTTP client cannot be built (no TLS backend, say).
    #[error("cannot set up the HTTP client")]
    Setup(#[source] reqwest::Error),
    /// Nothing answers at the control API's address.
    #[error("cannot reach keel up's control API at {url} — is keel up running?")]
    Unreachable { url: String, source: reqwest::Error },
    /// The answer is not the JSON the control API sends.
    #[error("a bad answer from keel up")]
    BadAnswer(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// `keel up` refused, and said why.
    #[error("keel up refused: {message} ({status})")]
    Refused { message: String, status: StatusCode },
    /// The request cannot be signed with the token.
    #[error("cannot sign the request")]
    Sign(#[source] SignError),
}

/// A connection to a running `keel up`.
#[derive(Debug)]
pub struct Control {
    url: String,
    token: Option<Token>,
    http: reqwest::Client,
}

impl Control {
    /// Finds the control API (`up`, else `<data-dir>/up.json`) and the token
    /// (`token_file`, else `env_token` — `KEEL_TOKEN` —, else `<data-dir>/admin.token`).
    pub fn find(
        data_dir: &Path,
        up: Option<&str>,
        token_file: Option<&Path>,
        env_token: Option<&str>,
    ) -> Result<Control, ControlError> {
        let url = match up {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => read_up_file(data_dir)?.control,
        };
        let default_file = data_dir.join(TOKEN_FILE_NAME);
        let file: Option<PathBuf> = token_file
            .map(Path::to_owned)
            .or_else(|| (env_token.is_none() && default_file.exists()).then_some(default_file));
        let token = Token::load(file.as_deref(), env_token)?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            // A restart waits for the process to answer its health check.
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(ControlError::Setup)?;
        Ok(Control { url, token, http })
    }

    /// Every process `keel up` runs, with its state.
    pub async fn processes(&self) -> Result<Vec<ProcessInfo>, ControlError> {
        let url = format!("{}/v1/processes", self.url);
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let mut body: serde_json::Value = response.json().await.map_err(bad_answer)?;
        serde_json::from_value(body["processes"].take()).map_err(bad_answer)
    }

    /// Kills, pauses, resumes or restarts process `name`.
    pub async fn act(&self, name: &str, action: Action) -> Result<Done, ControlError> {
        let path = format!("/v1/processes/{name}/{}", action.as_str());
        self.post(&path, None).await
    }

    /// Cuts `node` off from `from` (every other process of the data tier when empty).
    pub async fn partition(
        &self,
        node: &str,
        from: &[String],
    ) -> Result<PartitionDone, ControlError> {
        let request = PartitionRequest {
            node: node.to_owned(),
            from: from.to_vec(),
        };
        // Two strings and a list of strings always encode.
        let body = serde_json::to_vec(&request).unwrap_or_default();
        self.post("/v1/partition", Some(body)).await
    }

    /// Ends every partition.
    pub async fn heal(&self) -> Result<PartitionDone, ControlError> {
        self.post("/v1/heal", None).await
    }

    /// `POST {control}{path}` with the token and an optional JSON body.
    async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ControlError> {
        let url = format!("{}{path}", self.url);
        let body = body.unwrap_or_default();
        let mut request = self.http.post(&url);
        // Signed with the token rather than carrying it (docs/security.md).
        if let Some(token) = &self.token {
            let signed = Signer::new(Key::admin(token), "keel-chaos")
                .sign("POST", &url, &body)
                .map_err(ControlError::Sign)?;
            request = request.header(keel_auth::AUTH_HEADER, signed.header);
        }
        if !body.is_empty() {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.map_err(bad_answer)?;
        if !status.is_success() {
            let message = body["message"].as_str().unwrap_or("no message").to_owned();
            return Err(ControlError::Refused { message, status });
        }
        serde_json::from_value(body).map_err(bad_answer)
    }

    fn unreachable(&self, source: reqwest::Error) -> ControlError {
        ControlError::Unreachable {
            url: self.url.clone(),
            source,
        }
    }
}

fn bad_answer(e: impl std::error::Error + Send + Sync + 'static) -> ControlError {
    ControlError::BadAnswer(Box::new(e))
}

/// `<data-dir>/up.json`: where the `keel up` of that directory listens.
pub fn read_up_file(data_dir: &Path) -> Result<UpFile, ControlError> {
    let path = data_dir.join(UP_FILE);
    let text = std::fs::read_to_string(&path).map_err(|source| ControlError::NoUpFile {
        path: path.clone(),
        data_dir: data_dir.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| ControlError::BadUpFile { path, source })
}
