//! The keeper's view of PostgreSQL's replication, in the node machine's words.
//!
//! A keeper is a node to the monitor (docs/postgres.md, "Failover"): it runs keel's node
//! machine (`keel_node::machine`) so that roles, epochs, the lease, the sync set and
//! promotion are decided once, by the code the data tier already trusts, and not a
//! second time for PostgreSQL. Where a data node's senders report their streams to the
//! machine, a keeper reports what its primary's `pg_stat_replication` shows: [`Links`]
//! turns each observation into the machine's inputs about its standbys.
//!
//! - A standby PostgreSQL streams to is the standby the monitor listed with the same id
//!   (keel names each server's `cluster_name` after its node id, and a walreceiver
//!   reports it as its `application_name`).
//! - The primary's WAL position is the machine's log end ([`Input::Decided`]), so that a
//!   standby counts as caught up once it has flushed everything written so far.
//! - A standby's flush position is its ack. The acks carry no send time: the instant a
//!   walsender's reply left is on the standby's clock, which is never compared with
//!   this one. So a standby's ack does not renew a keeper's lease; the monitor's answers
//!   do.
//! - A standby missing from `pg_stat_replication` is a stream down: after
//!   `heartbeat_timeout` the machine names it among the silent sync standbys, and the
//!   keeper asks the monitor to drop it, as a data node does.

use std::collections::BTreeMap;

use keel_node::machine::{Input, LinkInfo};

use crate::observe::Observed;

/// What the machine was last told about each link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Told {
    /// The standby is connected and catching up.
    Connected,
    /// The standby has streamed: its flush positions are acks now.
    Streaming,
}

/// Turns the primary's observations into the machine's inputs, remembering what it has
/// told so that each change is said once.
#[derive(Debug, Default)]
pub struct Links {
    told: BTreeMap<u64, Told>,
}

impl Links {
    /// The inputs that tell the machine what `observed` shows of the standbys in `links`
    /// (the machine's own list, [`keel_node::machine::Machine::links`]).
    pub fn inputs(&mut self, links: &[LinkInfo], observed: &Observed) -> Vec<Input> {
        let mut inputs = vec![Input::Decided { last: observed.lsn }];
        self.told.retain(|id, _| links.iter().any(|l| l.id == *id));
        for link in links {
            let Some(node) = link.node.as_deref() else {
                continue;
            };
            let replica = observed.replicas.iter().find(|r| r.name == node);
            let told = self.told.get(&link.id).copied();
            match (replica, told) {
                (Some(r), None | Some(Told::Connected)) if r.streaming() => {
                    if told.is_none() {
                        inputs.push(Input::LinkHello {
                            link: link.id,
                            node: node.to_owned(),
                        });
                    }
                    inputs.push(Input::LinkAligned {
                        link: link.id,
                        acked: r.flushed,
                    });
                    self.told.insert(link.id, Told::Streaming);
                }
                (Some(r), Some(Told::Streaming)) => {
                    inputs.push(Input::Ack {
                        link: link.id,
                        lsn: r.flushed,
                        sent_at: None,
                    });
                }
                (Some(_), None) => {
                    inputs.push(Input::LinkHello {
                        link: link.id,
                        node: node.to_owned(),
                    });
                    self.told.insert(link.id, Told::Connected);
                }
                (Some(_), Some(Told::Connected)) => {}
                (None, Some(_)) => {
                    inputs.push(Input::LinkDown { link: link.id });
                    self.told.remove(&link.id);
                }
                (None, None) => {}
            }
        }
        inputs
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use keel_client::wire::{PrimaryRef, StandbyView, Timing as WireTiming, View};
    use keel_core::{Epoch, Lsn, NodeId, Role};
    use keel_node::machine::{LinkState, Machine, Settings};
    use tokio::time::Instant;

    use super::*;
    use crate::observe::Replica;

    const PG1: &str = "http://127.0.0.1:7001";
    const PG2: &str = "http://127.0.0.1:7002";

    fn id(s: &str) -> NodeId {
        NodeId::new(s).expect("id")
    }

    /// pg1's keeper, a standby under the monitor until told otherwise.
    fn keeper(t0: Instant) -> Machine {
        Machine::new(
            Settings {
                advertise: PG1.into(),
                monitored: true,
                role: Role::Standby,
                standbys: Vec::new(),
                sync: true,
                sync_timeout: Duration::from_secs(2),
                writing_epoch: Epoch(0),
                seen: Epoch(1),
                log_end: Lsn(0),
            },
            t0,
        )
    }

    /// The monitor's view making pg1 primary in epoch 1 with pg2 as its sync standby.
    fn primary_with_pg2() -> View {
        View {
            slots_version: 0,
            slots: None,
            group: None,
            version: 1,
            epoch: Epoch(1),
            role: Role::Primary,
            primary: Some(PrimaryRef {
                node: id("pg1"),
                url: PG1.into(),
            }),
            standbys: vec![StandbyView {
                node: id("pg2"),
                url: PG2.into(),
                sync: true,
            }],
            lease_ms: Some(500),
            failover: None,
            timing: WireTiming {
                heartbeat_interval_ms: 100,
                heartbeat_timeout_ms: 300,
                lease_ms: 500,
                drift_ms: 100,
            },
        }
    }

    fn observed(lsn: u64, pg2: Option<(&str, u64)>) -> Observed {
        Observed {
            in_recovery: false,
            lsn: Lsn(lsn),
            timeline: 1,
            replicas: pg2
                .map(|(state, flushed)| Replica {
                    name: "pg2".into(),
                    state: state.into(),
                    flushed: Lsn(flushed),
                    sync_state: "sync".into(),
                })
                .into_iter()
                .collect(),
        }
    }

    fn feed(m: &mut Machine, links: &mut Links, o: &Observed, at: Instant) {
        let inputs = links.inputs(&m.links(), o);
        for input in inputs {
            m.handle(input, at);
        }
    }

    fn pg2(m: &Machine) -> LinkInfo {
        m.links().into_iter().next().expect("a link to pg2")
    }

    /// A keeper made primary: the monitor's view gives it pg2 as a sync standby, and the
    /// machine asks for a "sender" to it — for a keeper, only a name to watch for.
    fn made_primary(t0: Instant) -> Machine {
        let mut m = keeper(t0);
        m.handle(
            Input::View {
                view: Box::new(primary_with_pg2()),
                sent_at: Some(t0),
            },
            t0,
        );
        m.handle(
            Input::PromotionRecorded {
                epoch: Epoch(1),
                log_end: Lsn(0),
                error: None,
            },
            t0,
        );
        assert!(m.is_primary(), "{:?}", m.role());
        m
    }

    #[test]
    fn a_standby_in_pg_stat_replication_is_told_once_and_its_flush_becomes_acks() {
        let t0 = Instant::now();
        let mut m = made_primary(t0);
        let mut links = Links::default();
        let link = pg2(&m).id;

        // Connected, still catching up: hello, nothing acknowledged.
        let o = observed(100, Some(("catchup", 40)));
        let inputs = links.inputs(&m.links(), &o);
        assert_eq!(
            inputs,
            vec![
                Input::Decided { last: Lsn(100) },
                Input::LinkHello {
                    link,
                    node: "pg2".into()
                },
            ]
        );
        for input in inputs {
            m.handle(input, t0);
        }
        assert_eq!(pg2(&m).state, LinkState::CatchingUp);

        // Streaming: aligned once at its flush position...
        let o = observed(120, Some(("streaming", 120)));
        let inputs = links.inputs(&m.links(), &o);
        assert_eq!(
            inputs,
            vec![
                Input::Decided { last: Lsn(120) },
                Input::LinkAligned {
                    link,
                    acked: Lsn(120)
                },
            ]
        );
        for input in inputs {
            m.handle(input, t0);
        }
        let seen = pg2(&m);
        assert_eq!((seen.state, seen.acked), (LinkState::Streaming, Lsn(120)));

        // ...then every flush is an ack that renews no lease.
        let o = observed(150, Some(("streaming", 150)));
        assert_eq!(
            links.inputs(&m.links(), &o),
            vec![
                Input::Decided { last: Lsn(150) },
                Input::Ack {
                    link,
                    lsn: Lsn(150),
                    sent_at: None
                },
            ]
        );
        let (reports, _) = m.report();
        assert_eq!(reports.len(), 1);
        assert!(reports[0].streaming && reports[0].sync, "{reports:?}");
    }

    #[test]
    fn a_standby_gone_from_pg_stat_replication_is_a_silent_sync_standby_after_the_timeout() {
        let t0 = Instant::now();
        let mut m = made_primary(t0);
        let mut links = Links::default();
        feed(
            &mut m,
            &mut links,
            &observed(10, Some(("streaming", 10))),
            t0,
        );
        assert_eq!(pg2(&m).state, LinkState::Streaming);

        // pg2's walreceiver is gone: the stream is down, said once.
        let t1 = t0 + Duration::from_millis(50);
        let gone = observed(12, None);
        let inputs = links.inputs(&m.links(), &gone);
        assert!(
            inputs.contains(&Input::LinkDown { link: pg2(&m).id }),
            "{inputs:?}"
        );
        for input in inputs {
            m.handle(input, t1);
        }
        assert_eq!(
            links.inputs(&m.links(), &gone),
            vec![Input::Decided { last: Lsn(12) }]
        );
        assert!(m.silent_sync_standbys(t1).is_empty());
        // After heartbeat_timeout the keeper must ask the monitor to drop it, as a data
        // node would.
        let t2 = t1 + Duration::from_millis(301);
        assert_eq!(
            m.silent_sync_standbys(t2),
            vec![(PG2.to_owned(), id("pg2"))]
        );

        // Back and streaming: hello and aligned again.
        let back = links.inputs(&m.links(), &observed(12, Some(("streaming", 12))));
        assert!(
            back.iter().any(|i| matches!(i, Input::LinkHello { .. }))
                && back.iter().any(|i| matches!(i, Input::LinkAligned { .. })),
            "{back:?}"
        );
    }

    #[test]
    fn a_replica_the_monitor_did_not_list_is_not_a_standby_of_the_machine() {
        let t0 = Instant::now();
        let mut m = made_primary(t0);
        let mut links = Links::default();
        let mut o = observed(10, Some(("streaming", 10)));
        o.replicas[0].name = "pg9".into();
        assert_eq!(
            links.inputs(&m.links(), &o),
            vec![Input::Decided { last: Lsn(10) }]
        );
        feed(&mut m, &mut links, &o, t0);
        assert_eq!(pg2(&m).state, LinkState::Connecting);
    }
}
