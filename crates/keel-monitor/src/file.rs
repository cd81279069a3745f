//! `keel monitor --config monitor.toml`: every option of the flags, in a file, so that a
//! group's monitors can be started from one file each. Keys are the flags' names with
//! `_` for `-`; `[peers]` is the group, one `mN = "URL"` per monitor. Relative paths are
//! taken from the file's directory. Unknown keys, bad values and a missing `data_dir`
//! are refused with the key named.
//!
//! ```toml
//! id = "m2"
//! listen = "127.0.0.1:8071"
//! data_dir = "m2"
//! cluster_secret_file = "cluster.secret"
//! heartbeat_timeout = "300ms"
//!
//! [peers]
//! m1 = "http://127.0.0.1:8070"
//! m2 = "http://127.0.0.1:8071"
//! m3 = "http://127.0.0.1:8072"
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::raft::{BadPeers, Peers};

/// A monitor's configuration file, as written. Absent keys take the flags' defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorFile {
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--data-dir` (required).
    pub data_dir: Option<PathBuf>,
    /// `--advertise`, each.
    #[serde(default)]
    pub advertise: Vec<String>,
    /// `--heartbeat-interval`.
    #[serde(default, deserialize_with = "duration")]
    pub heartbeat_interval: Option<Duration>,
    /// `--heartbeat-timeout`.
    #[serde(default, deserialize_with = "duration")]
    pub heartbeat_timeout: Option<Duration>,
    /// `--probe-retries`.
    pub probe_retries: Option<u32>,
    /// `--lease`.
    #[serde(default, deserialize_with = "duration")]
    pub lease: Option<Duration>,
    /// `--drift-margin`.
    #[serde(default, deserialize_with = "duration")]
    pub drift_margin: Option<Duration>,
    /// `--drain-timeout`.
    #[serde(default, deserialize_with = "duration")]
    pub drain_timeout: Option<Duration>,
    /// `--token-file`.
    pub token_file: Option<PathBuf>,
    /// `--cluster-secret-file`.
    pub cluster_secret_file: Option<PathBuf>,
    /// `--tls-cert`.
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key`.
    pub tls_key: Option<PathBuf>,
    /// `--tls-ca`.
    pub tls_ca: Option<PathBuf>,
    /// `--epoch-floor`.
    pub epoch_floor: Option<u64>,
    /// `--id`.
    pub id: Option<String>,
    /// `--peers`, as a table.
    pub peers: Option<BTreeMap<String, String>>,
    /// The groups of nodes a new monitor runs (`--groups`).
    #[serde(default)]
    pub groups: Vec<keel_core::slots::GroupId>,
}

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// It cannot be read.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// It is not TOML, or a key is unknown or has a value of the wrong kind.
    #[error("{path}: {reason}")]
    Syntax {
        /// The file.
        path: String,
        /// What and where.
        reason: String,
    },
    /// A value is wrong.
    #[error("{path}: {key}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// The key.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl MonitorFile {
    /// Reads `path` and checks it; relative paths in it are made relative to its
    /// directory.
    pub fn load(path: &Path) -> Result<MonitorFile, FileError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| FileError::Read {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        let mut file = Self::parse(&text, &shown)?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut file.data_dir,
            &mut file.token_file,
            &mut file.cluster_secret_file,
            &mut file.tls_cert,
            &mut file.tls_key,
            &mut file.tls_ca,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(file)
    }

    /// Parses and checks TOML text (`shown` names it in errors).
    pub fn parse(text: &str, shown: &str) -> Result<MonitorFile, FileError> {
        let file: MonitorFile = toml::from_str(text).map_err(|e| FileError::Syntax {
            path: shown.to_owned(),
            reason: e.to_string().trim().to_owned(),
        })?;
        let invalid = |key, reason: String| FileError::Invalid {
            path: shown.to_owned(),
            key,
            reason,
        };
        if file.data_dir.is_none() {
            return Err(invalid(
                "data_dir",
                "missing: the directory for the monitor's durable state".into(),
            ));
        }
        match (&file.id, &file.peers) {
            (Some(_), None) => {
                return Err(invalid("peers", "missing: `id` needs the group".into()));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "id",
                    "missing: `[peers]` needs this monitor's id".into(),
                ));
            }
            _ => {}
        }
        file.peers().map_err(|e| invalid("peers", e.to_string()))?;
        Ok(file)
    }

    /// The group, parsed as `--peers` is.
    pub fn peers(&self) -> Result<Option<Peers>, BadPeers> {
        let Some(table) = &self.peers else {
            return Ok(None);
        };
        let list: Vec<String> = table
            .iter()
            .map(|(id, url)| format!("{id}={url}"))
            .collect();
        list.join(",").parse().map(Some)
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    keel_core::duration::parse(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> String {
        match MonitorFile::parse(text, "m.toml") {
            Ok(f) => panic!("accepted: {f:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_full_file_parses_into_every_option() {
        let file = MonitorFile::parse(
            r#"
            id = "m2"
            listen = "127.0.0.1:8071"
            data_dir = "m2"
            advertise = ["http://mon2.internal:8071"]
            heartbeat_interval = "50ms"
            heartbeat_timeout = "200ms"
            probe_retries = 3
            lease = "400ms"
            drift_margin = "80ms"
            drain_timeout = "2s"
            token_file = "admin.token"
            cluster_secret_file = "cluster.secret"
            epoch_floor = 7

            [peers]
            m1 = "http://127.0.0.1:8070"
            m2 = "http://127.0.0.1:8071"
            m3 = "http://127.0.0.1:8072"
            "#,
            "m.toml",
        )
        .expect("parses");
        assert_eq!(file.listen, Some("127.0.0.1:8071".parse().expect("addr")));
        assert_eq!(file.heartbeat_interval, Some(Duration::from_millis(50)));
        assert_eq!(file.drain_timeout, Some(Duration::from_secs(2)));
        assert_eq!(file.probe_retries, Some(3));
        assert_eq!(file.epoch_floor, Some(7));
        let peers = file.peers().expect("peers").expect("a group");
        assert_eq!(
            peers.to_string(),
            "m1=http://127.0.0.1:8070,m2=http://127.0.0.1:8071,m3=http://127.0.0.1:8072"
        );
    }

    #[test]
    fn a_lone_monitor_needs_only_its_data_dir() {
        let file = MonitorFile::parse(r#"data_dir = "/var/lib/keel""#, "m.toml").expect("ok");
        assert_eq!(file.data_dir, Some(PathBuf::from("/var/lib/keel")));
        assert_eq!(file.peers().expect("no group"), None);
    }

    #[test]
    fn mistakes_are_refused_with_the_key_named() {
        assert_eq!(
            refused(r#"listen = "127.0.0.1:8070""#),
            "m.toml: data_dir: missing: the directory for the monitor's durable state"
        );
        let unknown = refused("data_dir = \"d\"\nhearbeat_timeout = \"1s\"");
        assert!(
            unknown.contains("unknown field `hearbeat_timeout`"),
            "{unknown}"
        );
        let bad = refused("data_dir = \"d\"\nlease = \"soon\"");
        assert!(bad.contains("lease") && bad.contains("soon"), "{bad}");
        assert_eq!(
            refused("data_dir = \"d\"\nid = \"m1\""),
            "m.toml: peers: missing: `id` needs the group"
        );
        let peers = refused("data_dir = \"d\"\nid = \"m1\"\n[peers]\nm1 = \"127.0.0.1:8070\"");
        assert!(
            peers.starts_with("m.toml: peers:") && peers.contains("not a monitor URL"),
            "{peers}"
        );
    }

    #[test]
    fn relative_paths_are_taken_from_the_files_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m1.toml");
        std::fs::write(
            &path,
            "data_dir = \"m1\"\ncluster_secret_file = \"/etc/keel/secret\"",
        )
        .expect("write");
        let file = MonitorFile::load(&path).expect("loads");
        assert_eq!(file.data_dir, Some(dir.path().join("m1")));
        assert_eq!(
            file.cluster_secret_file,
            Some(PathBuf::from("/etc/keel/secret"))
        );
        let missing = MonitorFile::load(&dir.path().join("nope.toml")).expect_err("missing");
        assert!(missing.to_string().starts_with("cannot read"), "{missing}");
    }
}
