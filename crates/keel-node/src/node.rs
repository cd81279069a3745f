//! [`run`]: a node's whole life, from opening its store to draining on shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use keel_core::faults::Faults;
use keel_core::{Epoch, Role};
use keel_store::{LogStore, Storage, Store, StoreError};
use tokio::sync::watch;

use crate::config::{NodeConfig, PRIMARY_EPOCH, StoreKind};
use crate::machine::Input;
use crate::shared::Shared;
use crate::{api, repl, ticker, writer};

/// How long in-flight requests get to finish once the node is told to stop.
const GRACE: Duration = Duration::from_secs(5);

/// Why a node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The store could not be opened or written.
    #[error("store in {dir}: {source}")]
    Store {
        /// The data directory.
        dir: String,
        /// The store's error.
        source: StoreError,
    },
    /// The data directory holds the other kind of store: opening this one would start
    /// from nothing beside it.
    #[error(
        "{dir} holds a {found} store ({file}), and this node was started with --store {asked}: start it with --store {found}, or give it another --data-dir"
    )]
    OtherStore {
        /// The data directory.
        dir: String,
        /// The store found there.
        found: StoreKind,
        /// Its file.
        file: &'static str,
        /// The store asked for.
        asked: StoreKind,
    },
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The epoch asked for (or implied) is not safe to take.
    #[error("{0}")]
    Epoch(String),
    /// The server failed.
    #[error("server: {0}")]
    Serve(std::io::Error),
}

/// Runs a node until `shutdown` resolves, then drains in-flight requests (up to a grace
/// period) and stops replication.
///
/// The node's outgoing connections (heartbeats, replication) go through the fault filter
/// named by `KEEL_FAULTS_FILE` ([`keel_core::faults`]), which is inert when it is unset.
pub async fn run(
    config: NodeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    let dir = config.data_dir.display().to_string();
    let store_err = |source| NodeError::Store {
        dir: dir.clone(),
        source,
    };
    // A node started on the other store's directory would begin from nothing and could
    // be promoted so.
    let found = config.store.other();
    if config.data_dir.join(found.file()).exists()
        && !config.data_dir.join(config.store.file()).exists()
    {
        return Err(NodeError::OtherStore {
            dir,
            found,
            file: found.file(),
            asked: config.store,
        });
    }
    let store = {
        let (path, retain, kind) = (config.data_dir.clone(), config.log_retain, config.store);
        tokio::task::spawn_blocking(move || -> Result<Arc<dyn Storage>, StoreError> {
            Ok(match kind {
                StoreKind::Redb => Arc::new(Store::open(&path, retain)?),
                StoreKind::Log => Arc::new(LogStore::open(&path, retain)?),
            })
        })
        .await
        .map_err(|e| NodeError::Serve(std::io::Error::other(e)))?
        .map_err(store_err)?
    };
    let epoch = choose_epoch(&config, store.as_ref()).map_err(|e| match e {
        EpochChoice::Store(s) => store_err(s),
        EpochChoice::Refused(m) => NodeError::Epoch(m),
    })?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| NodeError::Bind {
            addr: config.listen,
            source,
        })?;
    let status = store.status();
    tracing::info!(
        node = %config.id, role = %config.role, epoch = %epoch, lsn = %status.last.lsn,
        listen = %config.listen, mode = if config.sync { "sync" } else { "async" }, store = %config.store,
        "node started"
    );

    let monitor = config.monitor.clone();
    let (shared, queues) = Shared::new(config, store, Faults::from_env(), epoch);
    let writer = tokio::spawn(writer::run(shared.clone(), queues.writes));
    let (stop_tx, stop_rx) = watch::channel(false);
    let supervisor = tokio::spawn(repl::sender::supervise(shared.clone(), queues.senders));
    let ticker = tokio::spawn(ticker::run(shared.clone(), stop_rx.clone()));
    shared.input(Input::Started).await;
    let heartbeater = monitor
        .map(|url| tokio::spawn(crate::heartbeat::run(shared.clone(), url, stop_rx.clone())));

    let app = api::router(shared.clone());
    let tls = shared.config.tls.clone();
    keel_http::serve_draining(listener, app, shutdown, GRACE, stop_tx, tls.as_ref()).await;
    shared.stop_senders();
    if let Some(h) = heartbeater {
        h.abort();
    }
    ticker.abort();
    writer.abort();
    let _ = supervisor.await;
    tracing::info!("node stopped");
    Ok(())
}

enum EpochChoice {
    Store(StoreError),
    Refused(String),
}

impl From<StoreError> for EpochChoice {
    fn from(e: StoreError) -> Self {
        EpochChoice::Store(e)
    }
}

/// Decides the epoch a node starts in, so that no two primaries — and no two lives of the
/// same primary — ever write in one epoch.
///
/// Every start as primary begins a new epoch: the one after the epoch in which the node
/// was last primary, or the one given with `--epoch`. A new life needs a new epoch because
/// the primary ships entries to its standbys while it makes them durable itself: a crash in
/// between can leave a standby holding an entry the primary never kept, and only a new
/// epoch lets log matching tell that entry apart from the one the primary writes next at
/// the same lsn. A node that has seen a newer epoch than its own last one was deposed by
/// another primary and must not take over by itself. A fresh primary starts in epoch 1.
fn choose_epoch(config: &NodeConfig, store: &dyn Storage) -> Result<Epoch, EpochChoice> {
    let seen = store.status().epoch;
    let was_primary_in = Epoch(store.node_meta(PRIMARY_EPOCH)?.unwrap_or(0));
    let take = |epoch: Epoch| -> Result<Epoch, EpochChoice> {
        store.observe_epoch(epoch)?;
        store.set_node_meta(PRIMARY_EPOCH, epoch.0)?;
        Ok(epoch)
    };
    if config.monitor.is_some() {
        // The monitor hands out epochs; the node only keeps what it has seen.
        return Ok(seen);
    }
    match (config.role, config.epoch) {
        (Role::Standby, Some(_)) => Err(EpochChoice::Refused(
            "--epoch starts a new epoch as primary; a standby takes its epoch from its primary"
                .into(),
        )),
        (Role::Standby, None) => Ok(seen),
        (Role::Primary, Some(asked)) if asked > seen => take(asked),
        (Role::Primary, Some(asked)) => Err(EpochChoice::Refused(format!(
            "--epoch {asked} is not newer than epoch {seen}, which this node has already seen; use --epoch {}",
            seen.next()
        ))),
        (Role::Primary, None) if seen == Epoch(0) || was_primary_in == seen => take(seen.next()),
        (Role::Primary, None) => Err(EpochChoice::Refused(format!(
            "this node has seen epoch {seen} from another primary (it was last primary in epoch {}); \
             start it as a standby, or promote it explicitly with --epoch {}",
            was_primary_in.0,
            seen.next()
        ))),
    }
}
