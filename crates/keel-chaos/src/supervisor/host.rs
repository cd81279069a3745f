//! What the supervisor needs of the processes it runs, behind two small traits: the
//! machine's processes ([`super::os`]) in `keel up`, fakes in the tests, which then pin
//! the order of stopping and what a restart does without starting anything.

use std::future::Future;
use std::io;
use std::process::ExitStatus;

use nix::sys::signal::Signal;

use crate::plan::Spec;

/// A process the supervisor started.
pub(crate) trait Process: Send + 'static {
    /// Its pid, until it has been waited for.
    fn id(&self) -> Option<u32>;

    /// Waits for it to end. Must be cancel-safe: the supervisor waits for the end and for
    /// an order to stop at once, and drops whichever does not come first.
    fn wait(&mut self) -> impl Future<Output = io::Result<ExitStatus>> + Send;

    /// Asks it to stop: SIGTERM, and SIGCONT, since a paused process acts on SIGTERM only
    /// once it runs again.
    fn terminate(&mut self);

    /// SIGKILL, then waits for it.
    fn kill(&mut self) -> impl Future<Output = io::Result<()>> + Send;
}

/// Where the supervisor's processes run.
pub(crate) trait Host {
    /// The processes it starts.
    type Process: Process;

    /// Starts the process `spec` describes.
    fn start(&mut self, spec: &Spec) -> io::Result<Self::Process>;

    /// Sends `signal` to process `pid`; `false` when it is gone.
    fn signal(&self, pid: u32, signal: Signal) -> bool;

    /// Whether `spec`'s process answers its health check now.
    fn healthy(&self, spec: &Spec) -> impl Future<Output = bool>;

    /// Lets the last of the children's output through, within a bound.
    fn flush(&mut self) -> impl Future<Output = ()>;
}
