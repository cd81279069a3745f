//! A primary and its streaming standbys: each a [`Server`] (a name, a data directory, a
//! port), set up by a [`Setup`] that holds the machine's binaries, the account that runs
//! them and the password.
//!
//! Every server listens on 127.0.0.1 only, over TCP (no Unix socket: one in the data
//! directory would be a file `pg_rewind` tries to copy from a primary), and lets in only
//! the `keel` role with scram-sha-256. The password is made once, in
//! `<base>/pg.password` (0600); libpq's password file `<base>/pg.pgpass` is what
//! `pg_basebackup` and each standby's `primary_conninfo` use, so the password is never
//! on a command line.

use std::ffi::OsString;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use rand::Rng as _;
use rand::distr::Alphanumeric;

use crate::{Binaries, Owner, PgError};

/// The role keel connects as.
pub const USER: &str = "keel";
/// The password, made once.
const PASSWORD_FILE: &str = "pg.password";
/// libpq's password file.
const PASSFILE: &str = "pg.pgpass";

/// One PostgreSQL server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// Its name (`pg1`): its `cluster_name`, what the checks and `keel chaos` call it.
    pub name: String,
    /// Its data directory.
    pub dir: PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl Server {
    /// `name` in `base/name`, on `port`.
    ///
    /// The directory is made absolute: PostgreSQL changes into its data directory, so a
    /// relative one (`keel up --postgres` on its default `./keel-data`) would name paths
    /// that do not exist from there.
    pub fn new(name: &str, base: &Path, port: u16) -> Server {
        let dir = base.join(name);
        Server {
            name: name.to_owned(),
            // Fails only without a current directory; then the path is used as given.
            dir: std::path::absolute(&dir).unwrap_or(dir),
            port,
        }
    }

    /// Whether its data directory holds a cluster already.
    pub fn is_initialised(&self) -> bool {
        self.dir.join("PG_VERSION").is_file()
    }

    /// Whether it starts as a standby.
    pub fn is_standby(&self) -> bool {
        self.dir.join("standby.signal").is_file()
    }

    /// Waits until no process holds its directory's lock file (`postmaster.pid`) any more:
    /// a server whose keeper was killed dies with it, but not in the same instant, and
    /// PostgreSQL will not start, nor pg_rewind rewind, while the old postmaster lives.
    /// Fails after `within`, naming the process.
    pub fn wait_until_unlocked(&self, within: std::time::Duration) -> Result<(), PgError> {
        let lock = self.dir.join("postmaster.pid");
        let deadline = std::time::Instant::now() + within;
        loop {
            let holder = fs::read_to_string(&lock)
                .ok()
                .and_then(|text| text.lines().next()?.trim().parse::<u32>().ok())
                .filter(|pid| alive(*pid));
            let Some(pid) = holder else {
                return Ok(());
            };
            if std::time::Instant::now() >= deadline {
                return Err(PgError::Tool {
                    tool: format!("postgres ({})", self.name),
                    status: "not started".to_owned(),
                    output: format!(
                        "process {pid} still holds {} after {within:?}: another server runs in \
                         this directory; stop it first",
                        lock.display()
                    ),
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// Whether process `pid` exists, as PostgreSQL sees it (`kill(pid, 0)`): a zombie
/// does too, until its new parent reaps it.
fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// What setting servers up and running them needs.
#[derive(Debug, Clone)]
pub struct Setup {
    bin: Binaries,
    owner: Owner,
    base: PathBuf,
    password: String,
}

impl Setup {
    /// The machine's PostgreSQL, run by the right account, with the password kept in
    /// `base` (made on first use).
    pub fn prepare(base: &Path) -> Result<Setup, PgError> {
        Self::with(base, Binaries::find()?, Owner::detect()?)
    }

    /// Like [`Setup::prepare`], with the binaries and the owner given.
    pub fn with(base: &Path, bin: Binaries, owner: Owner) -> Result<Setup, PgError> {
        // Absolute: the password file's path goes into each standby's `primary_conninfo`,
        // which its walreceiver reads from inside the standby's own directory.
        let base = &std::path::absolute(base).unwrap_or_else(|_| base.to_path_buf());
        if !base.is_dir() {
            fs::create_dir_all(base).map_err(PgError::io(format!("mkdir {}", base.display())))?;
            // Other accounts may pass through (to the servers' directories), not list it.
            fs::set_permissions(base, fs::Permissions::from_mode(0o711))
                .map_err(PgError::io(format!("chmod {}", base.display())))?;
        }
        owner.check_reachable(&base.join("pg"))?;
        let password_path = base.join(PASSWORD_FILE);
        let password = match fs::read_to_string(&password_path) {
            Ok(p) if !p.trim().is_empty() => p.trim().to_owned(),
            _ => {
                let made: String = rand::rng()
                    .sample_iter(Alphanumeric)
                    .take(32)
                    .map(char::from)
                    .collect();
                write_private(&password_path, &format!("{made}\n"))?;
                made
            }
        };
        let passfile = base.join(PASSFILE);
        write_private(&passfile, &format!("127.0.0.1:*:*:{USER}:{password}\n"))?;
        owner.own(&passfile)?;
        Ok(Setup {
            bin,
            owner,
            base: base.to_owned(),
            password,
        })
    }

    /// The file that holds the password of the `keel` role (`<base>/pg.password`).
    pub fn password_file(&self) -> PathBuf {
        self.base.join(PASSWORD_FILE)
    }

    /// libpq's password file for the `keel` role (what `primary_conninfo`'s `passfile`
    /// names, so that no password is written into a server's settings).
    pub fn passfile(&self) -> PathBuf {
        self.base.join(PASSFILE)
    }

    /// Makes `server`, a former primary, a copy of the primary at `source` (`host:port`)
    /// again: `pg_rewind` takes back what `server` wrote after the two parted (never
    /// acknowledged: a COMMIT waits for a sync standby), and the server's own name and
    /// port go back into its settings, which the rewind copied from the source.
    pub fn rewind(&self, server: &Server, source: &str) -> Result<(), PgError> {
        let (host, port) = source.rsplit_once(':').ok_or_else(|| PgError::Tool {
            tool: "pg_rewind".into(),
            status: "not run".into(),
            output: format!("{source:?} is not host:port"),
        })?;
        let said = self.run(
            "pg_rewind",
            &[
                "--target-pgdata".into(),
                server.dir.clone().into(),
                "--source-server".into(),
                format!("host={host} port={port} user={USER} dbname=postgres").into(),
            ],
            &[("PGPASSFILE", self.base.join(PASSFILE).into())],
        )?;
        tracing::info!(server = %server.name, "pg_rewind: {}", said.trim().replace('\n', " / "));
        append(&server.dir.join("postgresql.conf"), &settings(server))?;
        // pg_rewind copied the source's `postgresql.auto.conf` too: its
        // `primary_conninfo` points at this very server, under the source's name, and
        // a server that cannot stream from its new primary never becomes consistent. It
        // follows the source, under its own name, and waits for nobody until promoted.
        append(
            &server.dir.join("postgresql.auto.conf"),
            &format!(
                "\n# keel: rewound to {source}\nprimary_conninfo = {}\nsynchronous_standby_names = ''\n",
                quote_literal(&self.standby_conninfo(server, host, port))
            ),
        )
    }

    /// The `primary_conninfo` of `server` following the primary at `host:port`: as
    /// `keel`, the password from the password file, its name as `application_name` (which
    /// `synchronous_standby_names` and `pg_stat_replication` know it by).
    pub fn standby_conninfo(&self, server: &Server, host: &str, port: &str) -> String {
        format!(
            "host={host} port={port} user={USER} passfile={} application_name={}",
            self.passfile().display(),
            server.name
        )
    }

    /// Makes `server` start in recovery (`standby.signal`), whatever it was: a keeper's
    /// server becomes primary only by a promotion the monitor asked for.
    pub fn start_in_recovery(&self, server: &Server) -> Result<(), PgError> {
        let signal = server.dir.join("standby.signal");
        if !signal.is_file() {
            fs::write(&signal, "").map_err(PgError::io(format!("write {}", signal.display())))?;
            self.owner.own(&signal)?;
        }
        Ok(())
    }

    /// The password of the `keel` role.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// Who runs the servers.
    pub fn owner(&self) -> &Owner {
        &self.owner
    }

    /// libpq's connection string for `server`, as `keel`.
    pub fn conninfo(&self, server: &Server) -> String {
        self.conninfo_at("127.0.0.1", &server.port.to_string())
    }

    /// libpq's connection string for the server at `host:port`, as `keel`.
    pub fn conninfo_at(&self, host: &str, port: &str) -> String {
        format!(
            "host={host} port={port} user={USER} password={} dbname=postgres",
            self.password
        )
    }

    /// Makes `server` a new primary: `initdb`, then keel's settings and access rules.
    pub fn init_primary(&self, server: &Server) -> Result<(), PgError> {
        self.make_dir(&server.dir)?;
        let pwfile = self.base.join(format!(".{}.initdb-password", server.name));
        write_private(&pwfile, &format!("{}\n", self.password))?;
        self.owner.own(&pwfile)?;
        let ran = self.run(
            "initdb",
            &[
                "-D".into(),
                server.dir.clone().into(),
                "-U".into(),
                USER.into(),
                format!("--pwfile={}", pwfile.display()).into(),
                "--auth=scram-sha-256".into(),
                "-E".into(),
                "UTF8".into(),
                "--locale=C".into(),
            ],
            &[],
        );
        let _ = fs::remove_file(&pwfile);
        ran?;
        append(&server.dir.join("postgresql.conf"), &settings(server))?;
        let hba = format!(
            "# keel: the keel role only, from this machine, with scram-sha-256\n\
             local all {USER} scram-sha-256\n\
             host all {USER} 127.0.0.1/32 scram-sha-256\n\
             host replication {USER} 127.0.0.1/32 scram-sha-256\n"
        );
        fs::write(server.dir.join("pg_hba.conf"), hba).map_err(PgError::io(format!(
            "write {}/pg_hba.conf",
            server.dir.display()
        )))
    }

    /// Makes `server` a streaming standby of `primary`, which must be running:
    /// `pg_basebackup -R` (it writes `standby.signal` and `primary_conninfo`), then the
    /// standby's own port and name.
    pub fn clone_standby(&self, server: &Server, primary: &Server) -> Result<(), PgError> {
        self.clone_from(server, "127.0.0.1", &primary.port.to_string())
    }

    /// Like [`Setup::clone_standby`], from the server at `host:port`.
    pub fn clone_from(&self, server: &Server, host: &str, port: &str) -> Result<(), PgError> {
        self.make_dir(&server.dir)?;
        self.run(
            "pg_basebackup",
            &[
                "-h".into(),
                host.into(),
                "-p".into(),
                port.into(),
                "-U".into(),
                USER.into(),
                "-D".into(),
                server.dir.clone().into(),
                "-R".into(),
                "-X".into(),
                "stream".into(),
                "-c".into(),
                "fast".into(),
                "-w".into(),
            ],
            &[("PGPASSFILE", self.base.join(PASSFILE).into())],
        )?;
        append(&server.dir.join("postgresql.conf"), &settings(server))
    }

    /// The command that runs `server` in the foreground (`postgres -D DIR -p PORT`; the
    /// port given again so that a directory reused with another port takes it), as the
    /// owner: stop it with SIGINT (a fast shutdown) or SIGTERM (once clients leave).
    pub fn command(&self, server: &Server) -> Command {
        let mut cmd = self.owner.command(&self.bin.tool("postgres"));
        server_args(&mut cmd, server);
        cmd
    }

    /// Like [`Setup::command`], the server dying with the process that starts it (a
    /// supervisor's child must not outlive it).
    pub fn supervised_command(&self, server: &Server) -> Command {
        let mut cmd = self
            .owner
            .command_dying_with_parent(&self.bin.tool("postgres"));
        server_args(&mut cmd, server);
        cmd
    }

    fn make_dir(&self, dir: &Path) -> Result<(), PgError> {
        fs::create_dir_all(dir).map_err(PgError::io(format!("mkdir {}", dir.display())))?;
        // PostgreSQL insists on a data directory only its owner can read.
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(PgError::io(format!("chmod {}", dir.display())))?;
        self.owner.own(dir)
    }

    /// Runs `tool`: what it printed, or the error with the end of it.
    fn run(
        &self,
        tool: &str,
        args: &[OsString],
        env: &[(&str, OsString)],
    ) -> Result<String, PgError> {
        let mut cmd = self.owner.command(&self.bin.tool(tool));
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().map_err(PgError::io(format!("run {tool}")))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            return Ok(text);
        }
        let tail: Vec<&str> = text.trim().lines().rev().take(6).collect();
        Err(PgError::Tool {
            tool: tool.to_owned(),
            status: out.status.to_string(),
            output: tail.into_iter().rev().collect::<Vec<_>>().join(" / "),
        })
    }
}

/// `-D DIR -p PORT`: the port given again so that a directory reused with another port
/// takes it.
fn server_args(cmd: &mut Command, server: &Server) {
    cmd.arg("-D")
        .arg(&server.dir)
        .arg("-p")
        .arg(server.port.to_string());
}

/// keel's settings, appended to `postgresql.conf` (the last line of a setting wins): a
/// standby inherits its primary's file and overrides the port and the name.
fn settings(server: &Server) -> String {
    let quote = |s: &str| s.replace('\'', "''");
    format!(
        "\n# keel\n\
         listen_addresses = '127.0.0.1'\n\
         port = {port}\n\
         unix_socket_directories = ''\n\
         cluster_name = '{name}'\n\
         wal_level = replica\n\
         max_wal_senders = 10\n\
         wal_keep_size = '256MB'\n\
         hot_standby = on\n\
         hot_standby_feedback = on\n\
         wal_log_hints = on\n\
         password_encryption = 'scram-sha-256'\n\
         logging_collector = off\n",
        port = server.port,
        name = quote(&server.name),
    )
}

/// `text` as an SQL (and configuration file) string literal.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn append(path: &Path, text: &str) -> Result<(), PgError> {
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(PgError::io(format!("open {}", path.display())))?;
    file.write_all(text.as_bytes())
        .map_err(PgError::io(format!("write {}", path.display())))
}

/// Writes `text` to `path`, readable by its owner only.
fn write_private(path: &Path, text: &str) -> Result<(), PgError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(PgError::io(format!("write {}", path.display())))?;
    file.write_all(text.as_bytes())
        .map_err(PgError::io(format!("write {}", path.display())))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .map_err(PgError::io(format!("chmod {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_waits_for_the_process_holding_its_lock_file_and_names_it() {
        let base = tempfile::tempdir().expect("a temporary directory");
        let server = Server::new("pg1", base.path(), 5433);
        fs::create_dir_all(&server.dir).expect("its directory");
        let lock = server.dir.join("postmaster.pid");
        let within = std::time::Duration::from_millis(100);
        assert!(server.wait_until_unlocked(within).is_ok(), "no lock file");
        // This process holds it: it never goes.
        fs::write(
            &lock,
            format!("{}\n{}\n", std::process::id(), server.dir.display()),
        )
        .expect("lock");
        let e = server.wait_until_unlocked(within).expect_err("held");
        assert!(
            e.to_string().contains(&std::process::id().to_string()),
            "{e}"
        );
        // A process that has ended and been reaped leaves a stale lock file behind.
        let mut ended = std::process::Command::new("true").spawn().expect("true");
        let pid = ended.id();
        ended.wait().expect("reaped");
        fs::write(&lock, format!("{pid}\n")).expect("lock");
        assert!(
            server.wait_until_unlocked(within).is_ok(),
            "stale lock file"
        );
    }

    #[test]
    fn a_standby_overrides_its_primarys_port_and_name_and_listens_on_loopback_tcp_only() {
        let s = Server::new("pg2", Path::new("/data/it's"), 5434);
        let text = settings(&s);
        assert!(text.contains("port = 5434\n"), "{text}");
        assert!(text.contains("cluster_name = 'pg2'\n"), "{text}");
        assert!(text.contains("unix_socket_directories = ''\n"), "{text}");
        assert!(text.contains("listen_addresses = '127.0.0.1'"), "{text}");
        assert!(text.contains("wal_log_hints = on\n"), "{text}");
    }

    #[test]
    fn a_relative_base_gives_standbys_an_absolute_password_file() {
        let base = tempfile::tempdir().expect("a temporary directory");
        // The same directory, named from here: `../../…/tmp/.tmpXXXX`.
        let here = std::env::current_dir().expect("the tests run in a directory");
        let mut relative = PathBuf::new();
        for _ in here.components().skip(1) {
            relative.push("..");
        }
        relative.push(
            base.path()
                .strip_prefix("/")
                .expect("an absolute temporary path"),
        );
        let setup = Setup::with(
            &relative,
            Binaries::find().expect("PostgreSQL is installed (scripts/test installs it)"),
            Owner::detect().expect("an owner for the servers"),
        )
        .expect("a setup");
        let passfile = setup.passfile();
        assert!(passfile.is_absolute(), "{}", passfile.display());
        assert_eq!(
            fs::canonicalize(&passfile).expect("the password file exists"),
            fs::canonicalize(base.path().join(PASSFILE)).expect("the password file exists")
        );
        let conninfo =
            setup.standby_conninfo(&Server::new("pg2", &relative, 5434), "127.0.0.1", "5433");
        assert!(
            conninfo.contains(&format!("passfile={} ", passfile.display())),
            "{conninfo}"
        );
    }

    #[test]
    fn a_relative_data_directory_is_made_absolute() {
        // PostgreSQL runs inside its data directory: `./keel-data/pg1` from there is not
        // the directory it was started on.
        let s = Server::new("pg1", Path::new("keel-data"), 5433);
        let here = std::env::current_dir().expect("the tests run in a directory");
        assert_eq!(s.dir, here.join("keel-data/pg1"));
    }
}
