//! What a PostgreSQL server says of itself: whether it is in recovery (a standby), how
//! far its WAL goes, its timeline, and — on a primary — the standbys streaming from it.
//!
//! This is what a keeper reports to the monitor (docs/postgres.md, "Failover"): the
//! monitor compares the standbys' positions to pick the most advanced, and counts a
//! standby in sync from what the primary's `pg_stat_replication` shows. Positions are
//! PostgreSQL's own LSNs, as one number (`16/B374D848` is `0x16_B374D848`), so that the
//! monitor compares them as it compares keel's nodes' log positions.

use keel_core::Lsn;

/// One standby streaming from a primary, a row of `pg_stat_replication`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    /// Its `application_name`: the standby's `cluster_name` (`pg2`), which keel sets.
    pub name: String,
    /// The walsender's state: `streaming` once caught up, `catchup` before.
    pub state: String,
    /// Where the standby has flushed the WAL to disk.
    pub flushed: Lsn,
    /// `sync`, `potential`, `quorum` or `async`.
    pub sync_state: String,
}

impl Replica {
    /// Caught up and receiving the WAL as it is written.
    pub fn streaming(&self) -> bool {
        self.state == "streaming"
    }
}

/// A server's view of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// `pg_is_in_recovery()`: a standby (or a primary still replaying after a crash).
    pub in_recovery: bool,
    /// A primary: `pg_current_wal_lsn()`. A standby: the furthest of what it received and
    /// replayed (what a promotion would keep).
    pub lsn: Lsn,
    /// Its timeline, which grows at every promotion: a primary's from the WAL file it
    /// writes (at once after a promotion), a standby's from its last checkpoint.
    pub timeline: u32,
    /// A primary's standbys; empty on a standby.
    pub replicas: Vec<Replica>,
}

/// Why an LSN cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a PostgreSQL LSN (two hexadecimal numbers, as 16/B374D848)")]
pub struct BadLsn(pub String);

/// `16/B374D848` as one number: the high 32 bits, then the low 32 bits.
pub fn parse_lsn(text: &str) -> Result<Lsn, BadLsn> {
    let bad = || BadLsn(text.to_owned());
    let (high, low) = text.trim().split_once('/').ok_or_else(bad)?;
    let high = u32::from_str_radix(high, 16).map_err(|_| bad())?;
    let low = u32::from_str_radix(low, 16).map_err(|_| bad())?;
    Ok(Lsn((u64::from(high) << 32) | u64::from(low)))
}

/// Why a server could not be observed.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    /// The query failed (the server is down, starting, or refused).
    #[error("cannot ask PostgreSQL")]
    Query(#[from] tokio_postgres::Error),
    /// The server answered something that is not an LSN.
    #[error(transparent)]
    Lsn(#[from] BadLsn),
}

/// Asks the server over `client` what it is. Two round trips on a primary, one on a
/// standby. LSNs travel as text because `pg_lsn` has no binary mapping in
/// tokio-postgres.
pub async fn observe(client: &tokio_postgres::Client) -> Result<Observed, ObserveError> {
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(), \
                    CASE WHEN pg_is_in_recovery() \
                         THEN greatest(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::text \
                         ELSE pg_current_wal_lsn()::text END, \
                    CASE WHEN pg_is_in_recovery() \
                         THEN (SELECT timeline_id FROM pg_control_checkpoint()) \
                         ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END",
            &[],
        )
        .await?;
    let in_recovery: bool = row.try_get(0)?;
    // A standby that has received nothing yet has no position: 0, behind everyone.
    let lsn: Option<String> = row.try_get(1)?;
    let lsn = match lsn {
        Some(text) => parse_lsn(&text)?,
        None => Lsn(0),
    };
    let timeline: i32 = row.try_get(2)?;
    let replicas = if in_recovery {
        Vec::new()
    } else {
        let rows = client
            .query(
                "SELECT application_name, state, flush_lsn::text, sync_state \
                 FROM pg_stat_replication ORDER BY application_name",
                &[],
            )
            .await?;
        let mut replicas = Vec::with_capacity(rows.len());
        for row in rows {
            let flushed: Option<String> = row.try_get(2)?;
            replicas.push(Replica {
                name: row.try_get(0)?,
                state: row.try_get::<_, Option<String>>(1)?.unwrap_or_default(),
                flushed: match flushed {
                    Some(text) => parse_lsn(&text)?,
                    None => Lsn(0),
                },
                sync_state: row.try_get::<_, Option<String>>(3)?.unwrap_or_default(),
            });
        }
        replicas
    };
    Ok(Observed {
        in_recovery,
        lsn,
        timeline: u32::try_from(timeline).unwrap_or(0),
        replicas,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_lsn_is_its_two_halves_as_one_number() {
        assert_eq!(parse_lsn("0/0"), Ok(Lsn(0)));
        assert_eq!(parse_lsn("0/3000060"), Ok(Lsn(0x300_0060)));
        assert_eq!(parse_lsn("16/B374D848"), Ok(Lsn(0x16_B374_D848)));
        assert_eq!(parse_lsn("FFFFFFFF/FFFFFFFF"), Ok(Lsn(u64::MAX)));
        // Ordered as PostgreSQL orders them: the high half first.
        assert!(parse_lsn("1/0").unwrap_or(Lsn(0)) > parse_lsn("0/FFFFFFFF").unwrap_or(Lsn(0)));
    }

    #[test]
    fn what_is_not_an_lsn_says_so() {
        for bad in ["", "16", "16/", "/1", "G/1", "1/2/3", "100000000/0"] {
            let err = parse_lsn(bad).expect_err(bad);
            assert!(err.to_string().contains("is not a PostgreSQL LSN"), "{err}");
        }
    }
}
