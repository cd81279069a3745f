//! The stop signal servers take as an argument (Ctrl-C or SIGTERM).

/// Set (to `1`) by a supervisor such as `keel up` on the processes it starts: they then
/// stop on SIGTERM only. A Ctrl-C in a terminal reaches every process of the terminal's
/// process group at once; under a supervisor it is the supervisor's to act on, so that it
/// can stop its processes in order.
pub const SUPERVISED_ENV: &str = "KEEL_SUPERVISED";

/// Set by `keel up` to its own pid on the processes it starts: they die with it (the
/// kernel's parent-death signal), so that a `keel up` killed with SIGKILL leaves no child
/// holding its ports.
pub const SUPERVISOR_PID_ENV: &str = "KEEL_SUPERVISOR_PID";

/// Resolves on the first Ctrl-C (SIGINT) or SIGTERM; on SIGTERM only when
/// [`SUPERVISED_ENV`] is set, Ctrl-C then being caught and ignored.
pub async fn signal() {
    let supervised = std::env::var_os(SUPERVISED_ENV).is_some_and(|v| v == "1");
    let ctrl_c = async move {
        let _ = tokio::signal::ctrl_c().await;
        if supervised {
            // Caught, so that it does not end the process, and ignored from now on.
            loop {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops this process");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        ctrl_c.await;
    }
}
