//! Linearizability of one key's history, checked as Wing & Gong did, with memoisation of
//! the states already explored (as Lowe, Porcupine and Knossos do).
//!
//! A key is a register. Every write puts a value no other write puts, so a read names the
//! write it saw. A write whose outcome the client never learned (a timeout, an answer
//! that says "unknown") may take effect at any moment after it was sent, or never.

use std::collections::HashSet;

/// One operation on the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// Which client issued it.
    pub client: usize,
    /// What it did.
    pub kind: Kind,
    /// When it was sent (µs of simulated time).
    pub invoke: u64,
    /// When its answer came; `None` for a write of unknown outcome.
    pub complete: Option<u64>,
}

/// What an operation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Wrote this value.
    Write(u64),
    /// Read this value (`None`: the key did not exist).
    Read(Option<u64>),
}

/// Why a history is not linearizable: the operations that could not be ordered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotLinearizable {
    /// The longest prefix the search found, in order.
    pub longest: Vec<Op>,
    /// The operations left over.
    pub stuck: Vec<Op>,
}

/// Checks one key's history.
pub fn check(history: &[Op]) -> Result<(), NotLinearizable> {
    let mut ops = history.to_vec();
    ops.sort_by_key(|o| (o.invoke, o.complete.unwrap_or(u64::MAX), o.client));
    let mut search = Search {
        ops: &ops,
        done: vec![false; ops.len()],
        order: Vec::new(),
        longest: Vec::new(),
        seen: HashSet::new(),
    };
    if search.explore(None) {
        return Ok(());
    }
    let longest: Vec<Op> = search.longest.iter().map(|&i| ops[i].clone()).collect();
    let placed: HashSet<usize> = search.longest.iter().copied().collect();
    let stuck = (0..ops.len())
        .filter(|i| !placed.contains(i) && ops[*i].complete.is_some())
        .map(|i| ops[i].clone())
        .collect();
    Err(NotLinearizable { longest, stuck })
}

struct Search<'a> {
    ops: &'a [Op],
    done: Vec<bool>,
    order: Vec<usize>,
    longest: Vec<usize>,
    /// (which operations are placed, the register's value) already explored and failed.
    seen: HashSet<(Vec<u64>, Option<u64>)>,
}

impl Search<'_> {
    fn explore(&mut self, state: Option<u64>) -> bool {
        // Done once every operation that completed is placed; writes of unknown outcome
        // may never have happened.
        let min_complete = self
            .ops
            .iter()
            .zip(&self.done)
            .filter(|(_, d)| !**d)
            .filter_map(|(o, _)| o.complete)
            .min();
        let Some(min_complete) = min_complete else {
            return true;
        };
        if !self.seen.insert((self.placed(), state)) {
            return false;
        }
        if self.order.len() > self.longest.len() {
            self.longest = self.order.clone();
        }
        for i in 0..self.ops.len() {
            // An operation can go next only if none still to place finished before it
            // began.
            if self.done[i] || self.ops[i].invoke > min_complete {
                continue;
            }
            let next = match self.ops[i].kind {
                Kind::Write(v) => Some(v),
                Kind::Read(v) if v == state => state,
                Kind::Read(_) => continue,
            };
            self.done[i] = true;
            self.order.push(i);
            if self.explore(next) {
                return true;
            }
            self.order.pop();
            self.done[i] = false;
        }
        false
    }

    fn placed(&self) -> Vec<u64> {
        let mut bits = vec![0u64; self.done.len().div_ceil(64)];
        for (i, d) in self.done.iter().enumerate() {
            if *d {
                bits[i / 64] |= 1 << (i % 64);
            }
        }
        bits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(client: usize, v: u64, invoke: u64, complete: Option<u64>) -> Op {
        Op {
            client,
            kind: Kind::Write(v),
            invoke,
            complete,
        }
    }

    fn r(client: usize, v: Option<u64>, invoke: u64, complete: u64) -> Op {
        Op {
            client,
            kind: Kind::Read(v),
            invoke,
            complete: Some(complete),
        }
    }

    #[test]
    fn sequential_reads_of_the_last_write_are_linearizable() {
        let h = [
            w(0, 1, 0, Some(10)),
            r(1, Some(1), 20, 30),
            w(0, 2, 40, Some(50)),
            r(1, Some(2), 60, 70),
        ];
        assert!(check(&h).is_ok());
    }

    #[test]
    fn a_read_of_an_older_value_after_a_newer_write_completed_is_not() {
        let h = [
            w(0, 1, 0, Some(10)),
            w(0, 2, 20, Some(30)),
            r(1, Some(1), 40, 50),
        ];
        let err = check(&h).expect_err("stale read");
        assert_eq!(err.stuck, vec![r(1, Some(1), 40, 50)]);
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        let h = [
            w(0, 1, 0, Some(100)),
            w(1, 2, 10, Some(90)),
            r(2, Some(1), 95, 120),
            r(2, Some(1), 130, 140),
        ];
        assert!(check(&h).is_ok());
    }

    #[test]
    fn a_write_of_unknown_outcome_may_take_effect_late_or_never() {
        let late = [
            w(0, 1, 0, None),
            r(1, None, 10, 20),
            r(1, Some(1), 500, 510),
        ];
        assert!(check(&late).is_ok());
        let never = [w(0, 1, 0, None), r(1, None, 10, 20), r(1, None, 500, 510)];
        assert!(check(&never).is_ok());
        let but_not_undone = [
            w(0, 1, 0, None),
            r(1, Some(1), 10, 20),
            r(1, None, 500, 510),
        ];
        assert!(
            check(&but_not_undone).is_err(),
            "seen once, it cannot vanish"
        );
    }

    #[test]
    fn an_acknowledged_write_that_vanishes_is_caught() {
        let h = [w(0, 7, 0, Some(10)), r(1, None, 20, 30)];
        assert!(check(&h).is_err());
    }
}
