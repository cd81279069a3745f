//! Linearizability of one key's history, checked as Wing & Gong did, with memoisation of
//! the states already explored (as Lowe, Porcupine and Knossos do).
//!
//! A key is a register. Every write puts a value no other write puts, so a read names the
//! write it saw. A write whose outcome the client never learned (a timeout, an answer
//! that says "unknown") may take effect at any moment after it was sent, or never.

use std::collections::{BTreeSet, HashMap, HashSet};

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
///
/// Two facts keep the search small on long histories full of unknown outcomes:
/// - a write of unknown outcome that no read saw may be taken never to have happened
///   (taking it out of any linearization leaves a linearization, since no read sits
///   between it and the next write), so it is dropped;
/// - one that a read saw took effect before that read was answered, so it gets the
///   earliest such answer as its deadline, like an answered write.
///
/// Then every operation has a deadline and the search is Wing & Gong's, without recursion
/// (histories have thousands of operations), remembering each failed state by its exact
/// value: the first operation not yet placed, which of the few later ones are, and the
/// register's value.
pub fn check(history: &[Op]) -> Result<(), NotLinearizable> {
    let mut first_seen: HashMap<u64, u64> = HashMap::new();
    let mut written: HashSet<u64> = HashSet::new();
    for op in history {
        match (op.kind, op.complete) {
            (Kind::Read(Some(v)), Some(c)) => {
                let seen = first_seen.entry(v).or_insert(c);
                *seen = (*seen).min(c);
            }
            (Kind::Write(v), _) => {
                written.insert(v);
            }
            _ => {}
        }
    }
    // A read of a value nobody wrote needs no search.
    if let Some(bad) = history
        .iter()
        .find(|o| matches!(o.kind, Kind::Read(Some(v)) if !written.contains(&v)))
    {
        return Err(NotLinearizable {
            longest: Vec::new(),
            stuck: vec![bad.clone()],
        });
    }
    let mut ops: Vec<(Op, u64)> = history
        .iter()
        .filter_map(|o| match (o.kind, o.complete) {
            (_, Some(c)) => Some((o.clone(), c)),
            (Kind::Write(v), None) => first_seen.get(&v).map(|&c| (o.clone(), c)),
            (Kind::Read(_), None) => None,
        })
        .collect();
    ops.sort_by_key(|(o, deadline)| (o.invoke, *deadline, o.client));
    let mut search = Search::new(&ops);
    if search.run() {
        return Ok(());
    }
    let longest: Vec<Op> = search.longest.iter().map(|&i| ops[i].0.clone()).collect();
    let placed: HashSet<usize> = search.longest.iter().copied().collect();
    let stuck = (0..ops.len())
        .filter(|i| !placed.contains(i) && ops[*i].0.complete.is_some())
        .map(|i| ops[i].0.clone())
        .collect();
    Err(NotLinearizable { longest, stuck })
}

/// A state of the search, exactly: the first operation not placed, the later ones that
/// are, and the register's value.
type State = (usize, Vec<usize>, Option<u64>);

struct Search<'a> {
    /// The operations in order of invocation, each with its deadline.
    ops: &'a [(Op, u64)],
    done: Vec<bool>,
    /// The first operation not yet placed.
    first: usize,
    /// The deadlines of the operations not yet placed.
    pending: BTreeSet<(u64, usize)>,
    /// The operations placed, in order, each with the value before it.
    stack: Vec<(usize, Option<u64>)>,
    /// The longest order that reached a dead end.
    longest: Vec<usize>,
    /// States already explored, all of which failed.
    seen: HashSet<State>,
}

impl<'a> Search<'a> {
    fn new(ops: &'a [(Op, u64)]) -> Self {
        Self {
            ops,
            done: vec![false; ops.len()],
            first: 0,
            pending: ops.iter().enumerate().map(|(i, (_, d))| (*d, i)).collect(),
            stack: Vec::new(),
            longest: Vec::new(),
            seen: HashSet::new(),
        }
    }

    /// Depth first: place the next operation that may go next, and on a dead end take the
    /// last one back and try the one after it.
    fn run(&mut self) -> bool {
        let mut value: Option<u64> = None;
        'enter: loop {
            let Some(&(deadline, _)) = self.pending.first() else {
                return true;
            };
            let mut from = if self.seen.insert(self.state(deadline, value)) {
                Some(self.first)
            } else {
                None
            };
            loop {
                if let Some(i) = from.and_then(|f| self.candidate(f, value)) {
                    self.place(i);
                    self.stack.push((i, value));
                    if let Kind::Write(v) = self.ops[i].0.kind {
                        value = Some(v);
                    }
                    continue 'enter;
                }
                if self.stack.len() > self.longest.len() {
                    self.longest = self.stack.iter().map(|(i, _)| *i).collect();
                }
                let Some((i, before)) = self.stack.pop() else {
                    return false;
                };
                self.unplace(i);
                value = before;
                from = Some(i + 1);
            }
        }
    }

    /// The first operation from `from` on that may go next: not placed, sent no later than
    /// the earliest deadline still to meet, and (a read) seeing the register's value.
    fn candidate(&self, from: usize, value: Option<u64>) -> Option<usize> {
        let &(deadline, _) = self.pending.first()?;
        (from..self.ops.len())
            .take_while(|&i| self.ops[i].0.invoke <= deadline)
            .find(|&i| {
                !self.done[i]
                    && match self.ops[i].0.kind {
                        Kind::Write(_) => true,
                        Kind::Read(v) => v == value,
                    }
            })
    }

    /// Every placed operation after `first` was sent before a deadline no later than
    /// today's (deadlines only grow as operations are placed), so they all lie in the
    /// window that ends at the first operation sent after it.
    fn state(&self, deadline: u64, value: Option<u64>) -> State {
        let later = (self.first..self.ops.len())
            .take_while(|&i| self.ops[i].0.invoke <= deadline)
            .filter(|&i| self.done[i])
            .collect();
        (self.first, later, value)
    }

    fn place(&mut self, i: usize) {
        self.done[i] = true;
        self.pending.remove(&(self.ops[i].1, i));
        while self.first < self.ops.len() && self.done[self.first] {
            self.first += 1;
        }
    }

    fn unplace(&mut self, i: usize) {
        self.done[i] = false;
        self.pending.insert((self.ops[i].1, i));
        self.first = self.first.min(i);
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

    #[test]
    fn a_write_of_unknown_outcome_cannot_be_seen_before_it_was_sent() {
        let h = [r(1, Some(1), 0, 10), w(0, 1, 20, None)];
        assert!(check(&h).is_err());
    }

    #[test]
    fn a_read_of_a_value_nobody_wrote_is_caught_without_a_search() {
        let h = [w(0, 1, 0, Some(10)), r(1, Some(9), 20, 30)];
        let err = check(&h).expect_err("invented value");
        assert_eq!(err.stuck, vec![r(1, Some(9), 20, 30)]);
    }

    /// Four clients, forty thousand operations, overlapping in pairs, a fifth of the
    /// writes of unknown outcome: the kind of history a minute of chaos leaves. A search
    /// that explored the subsets of unknown writes would never end.
    #[test]
    fn a_long_history_full_of_unknown_writes_is_checked() {
        let mut h = Vec::new();
        let mut value = None;
        for step in 0..10_000u64 {
            let t = step * 100;
            let v = step + 1;
            let unknown = step % 5 == 0;
            h.push(w(0, v, t, (!unknown).then_some(t + 60)));
            // A write of unknown outcome that never took effect.
            h.push(w(1, 1_000_000 + v, t + 10, None));
            if !unknown || step % 10 == 0 {
                value = Some(v);
            }
            h.push(r(2, value, t + 70, t + 80));
            h.push(r(3, value, t + 75, t + 95));
        }
        // Half the unknown writes took effect (read after), half did not.
        assert!(check(&h).is_ok());
        // And one stale read at the end is still caught.
        h.push(r(2, Some(1), 2_000_000, 2_000_010));
        assert!(check(&h).is_err());
    }
}
