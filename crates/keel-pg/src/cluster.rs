//! A primary and its standbys made ready in one call: whatever is missing is
//! initialised, whatever is there is kept, so that starting again on the same directory
//! reuses the clusters.

use std::time::Duration;

use crate::{PgError, Running, Server, Setup};

/// How long the primary may take to start when it is run to clone a standby from.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Makes `primary` a primary and each of `standbys` its streaming standby where their
/// directories hold no cluster yet, saying each step through `say`. The primary is run
/// for the cloning, and stopped again before this returns.
pub fn ensure(
    setup: &Setup,
    primary: &Server,
    standbys: &[Server],
    say: &mut dyn FnMut(String),
) -> Result<(), PgError> {
    if primary.is_initialised() {
        say(format!(
            "{}: reusing {}",
            primary.name,
            primary.dir.display()
        ));
    } else {
        say(format!(
            "{}: initdb in {} (a primary, scram-sha-256, role {})",
            primary.name,
            primary.dir.display(),
            crate::USER
        ));
        setup.init_primary(primary)?;
    }
    let mut running: Option<Running> = None;
    for standby in standbys {
        if standby.is_initialised() {
            say(format!(
                "{}: reusing {}",
                standby.name,
                standby.dir.display()
            ));
            continue;
        }
        if running.is_none() {
            let mut started = Running::start(setup, primary)?;
            started.wait_ready(READY_TIMEOUT)?;
            running = Some(started);
        }
        say(format!(
            "{}: pg_basebackup -R from {} into {} (a streaming standby)",
            standby.name,
            primary.name,
            standby.dir.display()
        ));
        setup.clone_standby(standby, primary)?;
    }
    // Dropping it stops the primary (a fast shutdown), which its supervisor starts again.
    drop(running);
    Ok(())
}
