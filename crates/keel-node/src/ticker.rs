//! The ticker: tells the machine that time has passed when one of its deadlines comes
//! (a batch that waited the sync timeout, a promotion's lease wait). It sleeps to the
//! machine's next deadline, and wakes earlier when [`Shared::input`] makes an earlier one.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::machine::Input;
use crate::shared::Shared;

/// How long the ticker sleeps when nothing is due (a safety net: every new deadline
/// wakes it anyway).
const IDLE: Duration = Duration::from_secs(1);

/// Runs until `stop` turns true.
pub async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        let deadline = shared
            .machine()
            .next_deadline()
            .unwrap_or_else(|| Instant::now() + IDLE);
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                shared.input(Input::Tick).await;
            }
            _ = shared.ticker_wake.notified() => {}
            _ = stop.changed() => return,
        }
    }
}
