//! Which PostgreSQL server may take a connection on which port: a pure machine fed by
//! the checks' results (`super::check`), tested exactly.
//!
//! - A server is used only once a check has said what it is. `fall` failed checks in a
//!   row take it down, `rise` good ones bring it back (HAProxy's model).
//! - The **read-write** port goes to the primary, and to no one while two servers claim
//!   to be primary (a split brain: writing to either could be lost).
//! - The **read-only** port goes to the standbys whose replay is at most `max_lag`
//!   behind; when no standby is usable, to the primary.
//! - When a check sees a server's role change, the sessions it holds on the port it no
//!   longer belongs to must be closed (as Stolon's proxy does): a client connected to the
//!   read-write port of a server that is now a standby would be refused its writes, and
//!   one on the read-only port of a server promoted to primary would read from it forever.
//!   [`Change::Moved`] says so; the driver closes them.
//! - **Following a monitor** ([`Pools::follow_monitor`], `keel proxy --tcp-monitor`):
//!   the read-write port goes only to the server the monitor names primary, once a check
//!   has seen it out of recovery — never to one that only says so of itself, as an
//!   isolated old primary does — and when the monitor names another, the sessions on the
//!   old one's read-write port are closed ([`Change::Deposed`]).

use std::time::Duration;

/// What a server is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Takes writes (`pg_is_in_recovery()` is false).
    Primary,
    /// Replays the primary's WAL.
    Standby,
}

/// A port of a TCP pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// Every connection to the primary.
    ReadWrite,
    /// Connections over the standbys, the primary as the fallback.
    ReadOnly,
}

/// What one good check saw.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    /// Primary or standby.
    pub role: Role,
    /// How far a standby's replay is behind what it has received (zero for a primary).
    pub lag: Duration,
}

/// The settings the decisions need.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Failed checks in a row that take a server down.
    pub fall: u32,
    /// Good checks in a row that bring it back.
    pub rise: u32,
    /// A standby further behind leaves the read-only pool.
    pub max_lag: Duration,
}

/// What changed, for the log, the metrics and the driver.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The server is usable now.
    Up,
    /// It is not, after `fall` failed checks; the last one's reason.
    Down(String),
    /// Its role changed: close its sessions on `close`.
    Moved {
        /// What it was.
        from: Role,
        /// What it is now.
        to: Role,
        /// The port whose sessions on this server must be closed.
        close: Port,
    },
    /// A standby fell more than `max_lag` behind.
    Lagging(Duration),
    /// It caught up.
    CaughtUp,
    /// The monitor no longer names it primary: close its sessions on the read-write port.
    Deposed,
}

#[derive(Debug, Clone, Default)]
struct Server {
    up: bool,
    fails: u32,
    goods: u32,
    seen: Option<Seen>,
}

/// Every server of one pool.
#[derive(Debug, Clone)]
pub struct Pools {
    policy: Policy,
    servers: Vec<Server>,
    /// The next server to try for each port (round robin).
    next: [usize; 2],
    /// Whether the read-write port follows a monitor's word.
    follows: bool,
    /// The server the monitor names primary, when it names one of these.
    named: Option<usize>,
}

impl Pools {
    /// `n` servers, none usable until checked.
    pub fn new(n: usize, policy: Policy) -> Pools {
        Pools {
            policy,
            servers: vec![Server::default(); n],
            next: [0, 0],
            follows: false,
            named: None,
        }
    }

    /// From now on the read-write port goes only to the server a monitor names primary
    /// ([`Pools::named`]); to none until it has named one.
    pub fn follow_monitor(&mut self) {
        self.follows = true;
    }

    /// The monitor's word: server `primary` is primary (`None`: none of these, or none at
    /// all). The server it named before, if another, is deposed.
    pub fn named(&mut self, primary: Option<usize>) -> Vec<(usize, Change)> {
        let primary = primary.filter(|&i| i < self.servers.len());
        let before = std::mem::replace(&mut self.named, primary);
        match before {
            Some(old) if before != primary => vec![(old, Change::Deposed)],
            _ => Vec::new(),
        }
    }

    /// The result of a check of server `i`: what it saw, or why it failed.
    pub fn observe(&mut self, i: usize, result: Result<Seen, String>) -> Vec<Change> {
        let max_lag = self.policy.max_lag;
        let (fall, rise) = (self.policy.fall.max(1), self.policy.rise.max(1));
        let Some(s) = self.servers.get_mut(i) else {
            return Vec::new();
        };
        let mut changes = Vec::new();
        match result {
            Err(why) => {
                s.goods = 0;
                s.fails = s.fails.saturating_add(1);
                if s.up && s.fails >= fall {
                    s.up = false;
                    changes.push(Change::Down(why));
                }
            }
            Ok(seen) => {
                s.fails = 0;
                s.goods = s.goods.saturating_add(1);
                let before = s.seen.replace(seen.clone());
                if let Some(before) = &before {
                    if before.role != seen.role {
                        let close = match seen.role {
                            Role::Primary => Port::ReadOnly,
                            Role::Standby => Port::ReadWrite,
                        };
                        changes.push(Change::Moved {
                            from: before.role,
                            to: seen.role,
                            close,
                        });
                    }
                    let lagged = |x: &Seen| x.role == Role::Standby && x.lag > max_lag;
                    match (lagged(before), lagged(&seen)) {
                        (false, true) => changes.push(Change::Lagging(seen.lag)),
                        (true, false) => changes.push(Change::CaughtUp),
                        _ => {}
                    }
                } else if seen.role == Role::Standby && seen.lag > max_lag {
                    changes.push(Change::Lagging(seen.lag));
                }
                // The first good check makes a server usable: until then nothing was
                // known of it, and nothing holds it down.
                if !s.up && (before.is_none() || s.goods >= rise) {
                    s.up = true;
                    changes.insert(0, Change::Up);
                }
            }
        }
        changes
    }

    /// The servers that may take a new connection on `port`.
    pub fn eligible(&self, port: Port) -> Vec<usize> {
        let with = |role: Role| -> Vec<usize> {
            (0..self.servers.len())
                .filter(|&i| {
                    let s = &self.servers[i];
                    s.up && s.seen.as_ref().is_some_and(|x| x.role == role)
                })
                .collect()
        };
        let primaries = with(Role::Primary);
        match port {
            Port::ReadWrite if self.follows => primaries
                .into_iter()
                .filter(|&i| Some(i) == self.named)
                .collect(),
            Port::ReadWrite if primaries.len() == 1 => primaries,
            Port::ReadWrite => Vec::new(),
            Port::ReadOnly => {
                let standbys: Vec<usize> = with(Role::Standby)
                    .into_iter()
                    .filter(|&i| {
                        self.servers[i]
                            .seen
                            .as_ref()
                            .is_some_and(|x| x.lag <= self.policy.max_lag)
                    })
                    .collect();
                if standbys.is_empty() {
                    primaries
                } else {
                    standbys
                }
            }
        }
    }

    /// Round robin over the eligible servers, skipping those in `skip` (already tried
    /// for this connection).
    pub fn round_robin(&mut self, port: Port, skip: &[usize]) -> Option<usize> {
        let eligible: Vec<usize> = self
            .eligible(port)
            .into_iter()
            .filter(|i| !skip.contains(i))
            .collect();
        let slot = &mut self.next[port as usize];
        let pick = eligible
            .iter()
            .copied()
            .find(|&i| i >= *slot)
            .or_else(|| eligible.first().copied())?;
        *slot = pick + 1;
        Some(pick)
    }

    /// The eligible server with the fewest open connections (`open[i]`), the first of
    /// equals, skipping those in `skip`.
    pub fn least_connections(&self, port: Port, open: &[usize], skip: &[usize]) -> Option<usize> {
        self.eligible(port)
            .into_iter()
            .filter(|i| !skip.contains(i))
            .min_by_key(|&i| open.get(i).copied().unwrap_or(0))
    }

    /// Whether server `i` is usable now.
    pub fn is_up(&self, i: usize) -> bool {
        self.servers.get(i).is_some_and(|s| s.up)
    }

    /// What the last good check of server `i` saw.
    pub fn seen(&self, i: usize) -> Option<&Seen> {
        self.servers.get(i).and_then(|s| s.seen.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX_LAG: Duration = Duration::from_secs(1);

    fn pools(n: usize) -> Pools {
        Pools::new(
            n,
            Policy {
                fall: 2,
                rise: 2,
                max_lag: MAX_LAG,
            },
        )
    }

    fn primary() -> Result<Seen, String> {
        Ok(Seen {
            role: Role::Primary,
            lag: Duration::ZERO,
        })
    }

    fn standby(lag_ms: u64) -> Result<Seen, String> {
        Ok(Seen {
            role: Role::Standby,
            lag: Duration::from_millis(lag_ms),
        })
    }

    #[test]
    fn following_a_monitor_the_read_write_port_goes_to_its_primary_only() {
        let mut p = pools(3);
        p.follow_monitor();
        // pg1 and pg2 both out of recovery: an old primary cut off, and the new one.
        p.observe(0, primary());
        p.observe(1, primary());
        p.observe(2, standby(0));
        assert_eq!(
            p.eligible(Port::ReadWrite),
            Vec::<usize>::new(),
            "named no one yet"
        );
        assert_eq!(p.named(Some(1)), vec![]);
        assert_eq!(p.eligible(Port::ReadWrite), vec![1]);
        // The monitor moves on to pg3: pg2's read-write sessions close, and until a check
        // sees pg3 out of recovery the port goes to no one.
        assert_eq!(p.named(Some(2)), vec![(1, Change::Deposed)]);
        assert_eq!(p.eligible(Port::ReadWrite), Vec::<usize>::new());
        p.observe(2, primary());
        assert_eq!(p.eligible(Port::ReadWrite), vec![2]);
        // The same word again changes nothing; a name this pool does not know deposes.
        assert_eq!(p.named(Some(2)), vec![]);
        assert_eq!(p.named(None), vec![(2, Change::Deposed)]);
        assert_eq!(p.eligible(Port::ReadWrite), Vec::<usize>::new());
        // The read-only port is not the monitor's business.
        assert_eq!(p.eligible(Port::ReadOnly), vec![0, 1, 2]);
    }

    /// pg1 primary, pg2 and pg3 standbys, all checked once.
    fn cluster() -> Pools {
        let mut p = pools(3);
        assert_eq!(p.observe(0, primary()), vec![Change::Up]);
        assert_eq!(p.observe(1, standby(0)), vec![Change::Up]);
        assert_eq!(p.observe(2, standby(0)), vec![Change::Up]);
        p
    }

    #[test]
    fn nothing_is_used_before_a_check_says_what_it_is() {
        let p = pools(3);
        assert!(p.eligible(Port::ReadWrite).is_empty());
        assert!(p.eligible(Port::ReadOnly).is_empty());
    }

    #[test]
    fn writes_go_to_the_primary_and_reads_over_the_standbys_in_turn() {
        let mut p = cluster();
        assert_eq!(p.eligible(Port::ReadWrite), vec![0]);
        assert_eq!(p.eligible(Port::ReadOnly), vec![1, 2]);
        let picks: Vec<Option<usize>> =
            (0..4).map(|_| p.round_robin(Port::ReadOnly, &[])).collect();
        assert_eq!(picks, vec![Some(1), Some(2), Some(1), Some(2)]);
        assert_eq!(p.round_robin(Port::ReadWrite, &[]), Some(0));
        assert_eq!(
            p.least_connections(Port::ReadOnly, &[0, 5, 3], &[]),
            Some(2)
        );
        // A server already tried for this connection is passed over.
        assert_eq!(p.round_robin(Port::ReadOnly, &[1]), Some(2));
        assert_eq!(
            p.least_connections(Port::ReadOnly, &[0, 5, 3], &[2]),
            Some(1)
        );
        assert_eq!(
            p.round_robin(Port::ReadOnly, &[1, 2]),
            None,
            "a standby tried and refused does not make the primary a reader"
        );
    }

    #[test]
    fn a_standby_goes_down_after_fall_failures_and_back_after_rise_good_checks() {
        let mut p = cluster();
        assert_eq!(p.observe(1, Err("refused".into())), vec![]);
        assert_eq!(
            p.eligible(Port::ReadOnly),
            vec![1, 2],
            "one failure is not enough"
        );
        assert_eq!(
            p.observe(1, Err("refused".into())),
            vec![Change::Down("refused".into())]
        );
        assert_eq!(p.eligible(Port::ReadOnly), vec![2]);
        assert_eq!(p.observe(1, standby(0)), vec![]);
        assert_eq!(
            p.eligible(Port::ReadOnly),
            vec![2],
            "one good check is not enough"
        );
        assert_eq!(p.observe(1, standby(0)), vec![Change::Up]);
        assert_eq!(p.eligible(Port::ReadOnly), vec![1, 2]);
    }

    #[test]
    fn reads_fall_back_to_the_primary_only_while_no_standby_is_usable() {
        let mut p = cluster();
        for i in [1, 2] {
            p.observe(i, Err("down".into()));
            p.observe(i, Err("down".into()));
        }
        assert_eq!(p.eligible(Port::ReadOnly), vec![0]);
        p.observe(2, standby(0));
        p.observe(2, standby(0));
        assert_eq!(
            p.eligible(Port::ReadOnly),
            vec![2],
            "the primary again only a fallback"
        );
    }

    #[test]
    fn a_standby_further_behind_than_max_lag_leaves_the_read_pool_until_it_catches_up() {
        let mut p = cluster();
        assert_eq!(
            p.observe(1, standby(1_000)),
            vec![],
            "exactly max_lag is fine"
        );
        assert_eq!(
            p.observe(1, standby(1_500)),
            vec![Change::Lagging(Duration::from_millis(1_500))]
        );
        assert_eq!(p.eligible(Port::ReadOnly), vec![2]);
        assert!(p.is_up(1), "lagging is not down");
        assert_eq!(p.observe(1, standby(2_500)), vec![]);
        assert_eq!(p.observe(1, standby(10)), vec![Change::CaughtUp]);
        assert_eq!(p.eligible(Port::ReadOnly), vec![1, 2]);
    }

    #[test]
    fn a_promoted_standby_takes_the_writes_and_its_read_sessions_are_closed() {
        let mut p = cluster();
        // pg1 dies; pg2 is promoted.
        p.observe(0, Err("gone".into()));
        p.observe(0, Err("gone".into()));
        assert!(p.eligible(Port::ReadWrite).is_empty());
        assert_eq!(
            p.observe(1, primary()),
            vec![Change::Moved {
                from: Role::Standby,
                to: Role::Primary,
                close: Port::ReadOnly,
            }]
        );
        assert_eq!(p.eligible(Port::ReadWrite), vec![1]);
        assert_eq!(p.eligible(Port::ReadOnly), vec![2]);
        // pg1 comes back as a standby: its write sessions, had it any, must go.
        assert_eq!(
            p.observe(0, standby(0)),
            vec![Change::Moved {
                from: Role::Primary,
                to: Role::Standby,
                close: Port::ReadWrite,
            }]
        );
        p.observe(0, standby(0));
        assert_eq!(p.eligible(Port::ReadOnly), vec![0, 2]);
    }

    #[test]
    fn two_servers_claiming_to_be_primary_get_no_writes() {
        let mut p = cluster();
        p.observe(1, primary());
        assert!(
            p.eligible(Port::ReadWrite).is_empty(),
            "a split brain takes no writes"
        );
        assert_eq!(p.eligible(Port::ReadOnly), vec![2]);
    }
}
