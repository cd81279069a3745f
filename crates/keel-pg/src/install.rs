//! Where the machine's PostgreSQL server binaries are.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::PgError;

/// The tools keel runs.
const TOOLS: [&str; 3] = ["postgres", "initdb", "pg_basebackup"];

/// A directory holding `postgres`, `initdb` and `pg_basebackup`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binaries {
    dir: PathBuf,
}

impl Binaries {
    /// `KEEL_PG_BIN` when set; else `pg_config --bindir`; else the newest
    /// `/usr/lib/postgresql/N/bin` (Debian's layout, where the server's tools are not on
    /// `PATH`).
    pub fn find() -> Result<Binaries, PgError> {
        if let Some(dir) = std::env::var_os("KEEL_PG_BIN") {
            return Self::at(Path::new(&dir));
        }
        let from_pg_config = Command::new("pg_config")
            .arg("--bindir")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
        if let Some(dir) = from_pg_config
            && let Ok(found) = Self::at(&dir)
        {
            return Ok(found);
        }
        let newest = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let version: u32 = e.file_name().to_str()?.parse().ok()?;
                Some((version, e.path().join("bin")))
            })
            .max();
        match newest {
            Some((_, dir)) => Self::at(&dir),
            None => Err(PgError::NotInstalled(
                "no pg_config on PATH and nothing in /usr/lib/postgresql".into(),
            )),
        }
    }

    /// The tools in `dir`, if they are all there.
    pub fn at(dir: &Path) -> Result<Binaries, PgError> {
        for tool in TOOLS {
            if !dir.join(tool).is_file() {
                return Err(PgError::NotInstalled(format!(
                    "{} has no {tool}",
                    dir.display()
                )));
            }
        }
        Ok(Binaries {
            dir: dir.to_owned(),
        })
    }

    /// The path of `tool`.
    pub fn tool(&self, tool: &str) -> PathBuf {
        self.dir.join(tool)
    }

    /// `postgres --version`'s answer, e.g. `postgres (PostgreSQL) 15.18`.
    pub fn version(&self) -> Result<String, PgError> {
        let out = Command::new(self.tool("postgres"))
            .arg("--version")
            .output()
            .map_err(PgError::io("postgres --version"))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_without_the_tools_is_not_postgresql() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = Binaries::at(dir.path()).expect_err("empty");
        assert!(err.to_string().contains("has no postgres"), "{err}");
    }
}
