//! Who gives way when the proxy is full.
//!
//! At `max_connections`, a proxy that stops accepting lets a crowd of slow clients — each
//! holding a connection with a request it never finishes — lock everyone else out until
//! their timeouts run out. So a new connection takes the place of one already open:
//!
//! 1. one the proxy is closing anyway (lingering after a refusal);
//! 2. else the kept-alive connection idle the longest, between two requests: closing it
//!    costs its client a new connection, no request;
//! 3. else the connection that has been sending its request the longest — head or body,
//!    or nothing yet since it connected: the slowest sender, most likely the attacker,
//!    and never younger than the connection it makes room for;
//! 4. never a connection whose request is being served (sent on, answered): when every
//!    one is, the new connection waits until one ends, as before.
//!
//! Each connection keeps its phase and since when in one atomic word that it stores at
//! each change — no lock and no allocation on the request path. Only a full proxy takes
//! the registry's lock and scans the words ([`choose`] is the pure decision), then claims
//! its victim with a compare-and-swap, so a connection that moved on in the meantime (into
//! serving, say) is left alone and the next candidate is taken.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;
use tokio::time::Instant;

/// What a connection is doing, as far as giving way goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Its request is arriving (or, new, it has not sent one yet).
    Receiving,
    /// Kept alive between two requests.
    Idle,
    /// Its request is whole and being served.
    Serving,
    /// The proxy is closing it.
    Closing,
}

impl Phase {
    fn code(self) -> u64 {
        match self {
            Phase::Receiving => 1,
            Phase::Idle => 2,
            Phase::Serving => 3,
            Phase::Closing => 4,
        }
    }

    fn from_code(code: u64) -> Option<Phase> {
        match code {
            1 => Some(Phase::Receiving),
            2 => Some(Phase::Idle),
            3 => Some(Phase::Serving),
            4 => Some(Phase::Closing),
            _ => None,
        }
    }

    /// Who goes first: lower first; `None` never goes.
    fn rank(self) -> Option<u8> {
        match self {
            Phase::Closing => Some(0),
            Phase::Idle => Some(1),
            Phase::Receiving => Some(2),
            Phase::Serving => None,
        }
    }
}

/// The low bits of a slot's word hold the phase; the rest, microseconds since the
/// registry's origin.
const PHASE_BITS: u32 = 3;
const PHASE_MASK: u64 = (1 << PHASE_BITS) - 1;
/// The word of a slot that was evicted: it never changes again.
const EVICTED: u64 = PHASE_MASK;

/// Which of `candidates` — (index, phase, since) — gives way: the first phase in the order
/// of the module's rule, the oldest `since` within it, the lowest index on a tie. `None`
/// when every one is serving.
pub fn choose(candidates: impl IntoIterator<Item = (usize, Phase, u64)>) -> Option<usize> {
    candidates
        .into_iter()
        .filter_map(|(index, phase, since)| Some(((phase.rank()?, since, index), index)))
        .min_by_key(|(key, _)| *key)
        .map(|(_, index)| index)
}

/// One connection's place in the registry.
#[derive(Debug)]
pub struct Slot {
    index: usize,
    origin: Instant,
    word: AtomicU64,
    evicted: Notify,
}

impl Slot {
    /// Records that the connection is in `phase` since `now`. False if it was evicted:
    /// it must end.
    pub fn enter(&self, phase: Phase, now: Instant) -> bool {
        let micros = now.saturating_duration_since(self.origin).as_micros();
        let since = u64::try_from(micros)
            .unwrap_or(u64::MAX)
            .min(u64::MAX >> PHASE_BITS);
        self.store((since << PHASE_BITS) | phase.code())
    }

    /// Records that the connection's request is whole and being served (when does not
    /// matter: a serving connection is never evicted).
    pub fn serving(&self) -> bool {
        let current = self.word.load(Ordering::Relaxed);
        current & PHASE_MASK == Phase::Serving.code() || self.store(Phase::Serving.code())
    }

    fn store(&self, word: u64) -> bool {
        // Only the connection and an evictor write: a failed exchange means it was evicted.
        let mut current = self.word.load(Ordering::Relaxed);
        loop {
            if current == EVICTED {
                return false;
            }
            match self.word.compare_exchange_weak(
                current,
                word,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => current = now,
            }
        }
    }

    /// The phase and since when (microseconds from the registry's origin); `None` once
    /// evicted.
    fn read(&self) -> Option<(Phase, u64)> {
        let word = self.word.load(Ordering::Acquire);
        Some((Phase::from_code(word & PHASE_MASK)?, word >> PHASE_BITS))
    }

    /// Whether the connection was told to give way.
    pub fn is_evicted(&self) -> bool {
        self.word.load(Ordering::Acquire) == EVICTED
    }

    /// Resolves once the connection has been evicted.
    pub async fn evicted(&self) {
        while !self.is_evicted() {
            self.evicted.notified().await;
        }
    }
}

/// Every open client connection's slot.
#[derive(Debug)]
pub struct Registry {
    origin: Instant,
    inner: Mutex<Inner>,
    /// A connection left (or was evicted): a full proxy may take a new one.
    left: Notify,
}

#[derive(Debug, Default)]
struct Inner {
    slots: Vec<Option<Arc<Slot>>>,
    free: Vec<usize>,
    open: usize,
}

/// How many times a full proxy looks again when its chosen victim moved on first.
const CLAIM_TRIES: usize = 8;

impl Registry {
    pub fn new(origin: Instant) -> Registry {
        Registry {
            origin,
            inner: Mutex::new(Inner::default()),
            left: Notify::new(),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Connections open (evicted ones no longer count).
    pub fn open(&self) -> usize {
        self.inner().open
    }

    /// A place for a connection accepted at `now`: receiving its first request since then.
    pub fn register(&self, now: Instant) -> Arc<Slot> {
        let mut inner = self.inner();
        let index = inner.free.pop().unwrap_or(inner.slots.len());
        let slot = Arc::new(Slot {
            index,
            origin: self.origin,
            word: AtomicU64::new(0),
            evicted: Notify::new(),
        });
        slot.enter(Phase::Receiving, now);
        match inner.slots.get_mut(index) {
            Some(place) => *place = Some(Arc::clone(&slot)),
            None => inner.slots.push(Some(Arc::clone(&slot))),
        }
        inner.open += 1;
        slot
    }

    /// Gives a connection's place back (when it ends; nothing if it was evicted).
    pub fn release(&self, slot: &Arc<Slot>) {
        let mut inner = self.inner();
        let ours = inner
            .slots
            .get(slot.index)
            .and_then(Option::as_ref)
            .is_some_and(|s| Arc::ptr_eq(s, slot));
        if ours {
            inner.slots[slot.index] = None;
            inner.free.push(slot.index);
            inner.open -= 1;
            drop(inner);
            self.left.notify_one();
        }
    }

    /// Evicts the connection [`choose`] names: its place is free at once, and the
    /// connection is told to end. False when none may be evicted.
    pub fn evict_one(&self) -> bool {
        let mut inner = self.inner();
        for _ in 0..CLAIM_TRIES {
            let candidates = inner.slots.iter().enumerate().filter_map(|(i, s)| {
                let (phase, since) = s.as_ref()?.read()?;
                Some((i, phase, since))
            });
            let Some(index) = choose(candidates) else {
                return false;
            };
            let Some(victim) = inner.slots[index].clone() else {
                return false;
            };
            let Some((phase, since)) = victim.read() else {
                continue;
            };
            let seen = (since << PHASE_BITS) | phase.code();
            let claimed = phase.rank().is_some()
                && victim
                    .word
                    .compare_exchange(seen, EVICTED, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok();
            if claimed {
                inner.slots[index] = None;
                inner.free.push(index);
                inner.open -= 1;
                drop(inner);
                victim.evicted.notify_one();
                return true;
            }
        }
        false
    }

    /// Resolves when a connection leaves (or soon after, if one left before the call).
    pub async fn left(&self) {
        self.left.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_rule_takes_closing_then_the_longest_idle_then_the_slowest_sender() {
        use Phase::*;
        assert_eq!(
            choose([
                (0, Receiving, 1),
                (1, Idle, 9),
                (2, Idle, 5),
                (3, Serving, 0)
            ]),
            Some(2),
            "the longest idle, before any still sending"
        );
        assert_eq!(
            choose([(0, Receiving, 7), (1, Receiving, 3), (2, Serving, 0)]),
            Some(1),
            "no idle one: the one sending its request the longest"
        );
        assert_eq!(
            choose([(0, Idle, 1), (1, Closing, 50)]),
            Some(1),
            "one being closed anyway goes first"
        );
        assert_eq!(
            choose([(4, Idle, 2), (3, Idle, 2)]),
            Some(3),
            "ties: lowest index"
        );
        assert_eq!(
            choose([(0, Serving, 0), (1, Serving, 0)]),
            None,
            "a request being served is never cut off"
        );
        assert_eq!(choose([]), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_registry_evicts_by_the_rule_as_time_passes() {
        let registry = Registry::new(Instant::now());
        let tick = || tokio::time::advance(Duration::from_secs(1));
        let early = registry.register(Instant::now());
        tick().await;
        let kept_alive = registry.register(Instant::now());
        tick().await;
        let busy = registry.register(Instant::now());
        tick().await;
        let newest = registry.register(Instant::now());
        assert_eq!(registry.open(), 4);
        // kept_alive answers a request at 3 s, then idles; busy is being served.
        assert!(kept_alive.serving());
        assert!(busy.serving());
        tick().await;
        assert!(kept_alive.enter(Phase::Idle, Instant::now()));

        assert!(registry.evict_one());
        assert!(
            kept_alive.is_evicted(),
            "the idle one goes first, though younger"
        );
        assert!(
            !kept_alive.enter(Phase::Receiving, Instant::now()),
            "it must end"
        );
        assert_eq!(registry.open(), 3);

        assert!(registry.evict_one());
        assert!(early.is_evicted(), "then the one sending the longest");
        assert!(!newest.is_evicted() && !busy.is_evicted());

        // newest moves on to being served: nobody is left to evict.
        assert!(newest.serving());
        assert!(!registry.evict_one());
        assert_eq!(registry.open(), 2);

        // Releasing an evicted slot changes nothing; releasing a live one frees its place,
        // which the next registration takes.
        registry.release(&early);
        assert_eq!(registry.open(), 2);
        registry.release(&busy);
        assert_eq!(registry.open(), 1);
        let again = registry.register(Instant::now());
        assert_eq!(registry.open(), 2);
        registry.release(&again);
        registry.release(&newest);
        assert_eq!(registry.open(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_evicted_connection_is_woken_and_a_left_one_wakes_the_acceptor() {
        let registry = Arc::new(Registry::new(Instant::now()));
        let slot = registry.register(Instant::now());
        let waiting = tokio::spawn({
            let slot = Arc::clone(&slot);
            async move { slot.evicted().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        assert!(registry.evict_one());
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("woken")
            .expect("task");

        let other = registry.register(Instant::now());
        assert!(other.serving());
        let acceptor = tokio::spawn({
            let registry = Arc::clone(&registry);
            async move { registry.left().await }
        });
        tokio::task::yield_now().await;
        assert!(!acceptor.is_finished());
        registry.release(&other);
        tokio::time::timeout(Duration::from_secs(1), acceptor)
            .await
            .expect("woken")
            .expect("task");
    }
}
