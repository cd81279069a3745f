//! Who runs PostgreSQL. The server refuses to run as root; when keel is root, it runs
//! PostgreSQL as the `postgres` account the package created.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::Command;

use nix::unistd::{Gid, Uid, User};

use crate::PgError;

/// The account PostgreSQL runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// This process's own user.
    Me,
    /// Another account (keel runs as root).
    Account {
        /// Its name.
        name: String,
        /// Its user id.
        uid: u32,
        /// Its group id.
        gid: u32,
    },
}

impl Owner {
    /// This user, or `postgres` when this user is root.
    pub fn detect() -> Result<Owner, PgError> {
        if !Uid::effective().is_root() {
            return Ok(Owner::Me);
        }
        match User::from_name("postgres") {
            Ok(Some(user)) => Ok(Owner::Account {
                name: user.name,
                uid: user.uid.as_raw(),
                gid: user.gid.as_raw(),
            }),
            _ => Err(PgError::NoAccount),
        }
    }

    /// A command that runs `program` as this owner. For another account it goes through
    /// `setpriv`, which drops root's groups and then execs: the server keeps the pid,
    /// so signals sent to the child reach it.
    pub fn command(&self, program: &Path) -> Command {
        match self {
            Owner::Me => Command::new(program),
            Owner::Account { uid, gid, .. } => {
                let mut cmd = Command::new("setpriv");
                cmd.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .arg("--clear-groups")
                    .arg("--")
                    .arg(program);
                cmd
            }
        }
    }

    /// Like [`Owner::command`], for a program that must die with the process that
    /// starts it (SIGKILL when it goes, through `setpriv --pdeathsig`, which sets it
    /// before it execs): a supervisor killed must not leave its servers holding their
    /// ports. It runs in a process group of its own, so that a terminal's Ctrl-C reaches
    /// the supervisor, which stops it in its own time, and not the program behind its
    /// back.
    pub fn command_dying_with_parent(&self, program: &Path) -> Command {
        let mut cmd = Command::new("setpriv");
        cmd.process_group(0);
        cmd.arg("--pdeathsig=KILL");
        if let Owner::Account { uid, gid, .. } = self {
            cmd.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .arg("--clear-groups");
        }
        cmd.arg("--").arg(program);
        cmd
    }

    /// Gives `path` to this owner.
    pub fn own(&self, path: &Path) -> Result<(), PgError> {
        if let Owner::Account { uid, gid, .. } = self {
            std::os::unix::fs::chown(path, Some(*uid), Some(*gid))
                .map_err(PgError::io(format!("chown {}", path.display())))?;
        }
        Ok(())
    }

    /// Checks that this owner can reach `dir`: another account needs to traverse every
    /// directory above it.
    pub fn check_reachable(&self, dir: &Path) -> Result<(), PgError> {
        let Owner::Account { uid, gid, .. } = self else {
            return Ok(());
        };
        let dir = std::path::absolute(dir).map_err(PgError::io(dir.display().to_string()))?;
        for ancestor in dir.ancestors().skip(1) {
            let Ok(meta) = std::fs::metadata(ancestor) else {
                continue;
            };
            let mode = meta.permissions().mode();
            use std::os::unix::fs::MetadataExt;
            let traversable = if meta.uid() == *uid {
                mode & 0o100 != 0
            } else if meta.gid() == *gid {
                mode & 0o010 != 0
            } else {
                mode & 0o001 != 0
            };
            if !traversable {
                return Err(PgError::Unreachable(ancestor.display().to_string()));
            }
        }
        Ok(())
    }

    /// The account's ids, for a test that wants to look (`None`: this user).
    pub fn ids(&self) -> Option<(Uid, Gid)> {
        match self {
            Owner::Me => None,
            Owner::Account { uid, gid, .. } => Some((Uid::from_raw(*uid), Gid::from_raw(*gid))),
        }
    }
}
