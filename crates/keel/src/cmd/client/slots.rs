//! `keel client slots`: the slot table, and moving slots between groups online
//! (docs/shards.md). The monitors' leader drives each move — freeze at the owner, copy,
//! switch — and this command asks for it and follows the table until it is done.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use keel_client::wire::MoveRequest;
use keel_core::slots::{GroupId, Slot, SlotTable, format_slots, parse_slots};
use reqwest::Method;

use super::Client;
use super::conn::Req;
use super::print::print_json;
use crate::cli::SlotsCommand;

/// How often the table is read while a move runs.
const POLL: Duration = Duration::from_millis(50);

impl Client {
    pub(super) async fn slots(&self, command: SlotsCommand) -> anyhow::Result<ExitCode> {
        match command {
            SlotsCommand::Show => {
                let table = self.table().await?;
                if self.json {
                    print_json(&serde_json::to_value(&table)?)?;
                } else {
                    print_table(&table);
                }
                Ok(ExitCode::SUCCESS)
            }
            SlotsCommand::Move {
                slots,
                to,
                no_wait,
                wait,
            } => {
                let slots = parse_slots(&slots).with_context(|| format!("{slots:?}"))?;
                self.move_slots(&slots, &to, (!no_wait).then_some(wait))
                    .await?;
                Ok(ExitCode::SUCCESS)
            }
            SlotsCommand::Rebalance { weights, wait } => {
                let table = self.table().await?;
                let weights = match weights {
                    Some(text) => parse_weights(&text)?,
                    None => table.groups().iter().map(|g| (g.clone(), 1)).collect(),
                };
                let moves = table.rebalance(&weights)?;
                if moves.is_empty() {
                    println!(
                        "the slots are balanced already (table version {})",
                        table.version()
                    );
                    return Ok(ExitCode::SUCCESS);
                }
                for m in &moves {
                    // One move per giving group and taking group, as the plan has them.
                    self.move_slots(&m.slots, &m.to, Some(wait)).await?;
                }
                let table = self.table().await?;
                for group in table.groups() {
                    println!("  {group}  {} slots", table.count(group));
                }
                Ok(ExitCode::SUCCESS)
            }
            SlotsCommand::Cancel => {
                let table = self
                    .ask_leader(Req::new(Method::POST, &["v1", "slots", "cancel"]))
                    .await?;
                println!(
                    "move cancelled: the slots stay their owner's (table version {})",
                    table.version()
                );
                Ok(ExitCode::SUCCESS)
            }
        }
    }

    /// The table, from the monitors' leader.
    async fn table(&self) -> anyhow::Result<SlotTable> {
        let monitor = &self.monitor;
        keel_client::monitor::slots_as(self.conn.http(), monitor, self.conn.timeout(), None)
            .await
            .map_err(|e| anyhow!("cannot read the slot table from {monitor}: {e}"))
    }

    /// Sends an operator's request to the monitors' leader; the table it answers.
    async fn ask_leader(&self, mut req: Req) -> anyhow::Result<SlotTable> {
        let (token, origin) = self.load_token()?;
        let http = self.conn.http();
        let leader = keel_client::monitor::leading(http, &self.monitor, self.timeout, None)
            .await
            .map_err(|e| anyhow!("{e}"))?;
        req.bearer = Some(token.secret().to_owned());
        let answer = self.conn.try_send(&leader, &req).await.map_err(|u| {
            anyhow!(
                "cannot reach the monitors' leader at {leader}: {}",
                u.reason
            )
        })?;
        if answer.status == reqwest::StatusCode::UNAUTHORIZED {
            bail!(
                "the admin token (from {origin}) was refused by the monitor at {leader}: check --token-file or KEEL_TOKEN"
            );
        }
        if !answer.status.is_success() {
            return Err(answer.failure());
        }
        answer.json()
    }

    /// Moves `slots` to `to`, and with `wait`, follows the table until the move is done.
    async fn move_slots(
        &self,
        slots: &[Slot],
        to: &GroupId,
        wait: Option<Duration>,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut req = Req::new(Method::POST, &["v1", "slots", "move"]);
        let body = MoveRequest {
            slots: format_slots(slots),
            to: to.clone(),
        };
        req.body = Some(("application/json", serde_json::to_vec(&body)?));
        let table = self.ask_leader(req).await?;
        let Some(moving) = table.moving().cloned() else {
            bail!(
                "the monitor answered a table with no move under way (version {})",
                table.version()
            );
        };
        let what = format!("slots {} from {} to {}", body.slots, moving.from, moving.to);
        let Some(wait) = wait else {
            println!(
                "moving {what}: frozen at {} in table version {}",
                moving.from, moving.since
            );
            return Ok(());
        };
        let deadline = started + wait;
        loop {
            tokio::time::sleep(POLL).await;
            let table = match self.table().await {
                Ok(table) => table,
                // The monitors' leader may be changing: the move goes on without it.
                Err(_) if Instant::now() < deadline => continue,
                Err(e) => return Err(e),
            };
            if table.moving().is_some_and(|m| m.since == moving.since) {
                if Instant::now() >= deadline {
                    bail!(
                        "{what} is still under way after {wait:?}, its slots frozen at {} (it goes on: slots holding much data are copied piece by piece, and `--wait 5m` waits longer); `keel client slots show` shows it, `keel client slots cancel` calls it off",
                        moving.from
                    );
                }
                continue;
            }
            let first = slots.first().copied().unwrap_or(Slot(0));
            if table.owner(first) == to {
                println!(
                    "moved {what} in {:.2} s (table version {})",
                    started.elapsed().as_secs_f64(),
                    table.version()
                );
                return Ok(());
            }
            bail!(
                "the move of {what} was cancelled: the slots stay {}'s (table version {})",
                moving.from,
                table.version()
            );
        }
    }
}

/// `g1=3,g2=1`.
fn parse_weights(text: &str) -> anyhow::Result<BTreeMap<GroupId, u32>> {
    let mut weights = BTreeMap::new();
    for part in text.split(',') {
        let (group, weight) = part
            .split_once('=')
            .ok_or_else(|| anyhow!("{part:?} is not GROUP=WEIGHT (e.g. g1=3,g2=1)"))?;
        let group = GroupId::new(group.trim()).map_err(|e| anyhow!("{group:?}: {e}"))?;
        let weight: u32 = weight
            .trim()
            .parse()
            .map_err(|_| anyhow!("{weight:?} is not a whole number (in {part:?})"))?;
        weights.insert(group, weight);
    }
    Ok(weights)
}

fn print_table(table: &SlotTable) {
    println!("slot table version {}", table.version());
    for group in table.groups() {
        println!(
            "  {group}  {:>5} slots  {}",
            table.count(group),
            table.slots_text(group)
        );
    }
    if let Some(m) = table.moving() {
        println!(
            "  moving: slots {} from {} to {} (frozen in version {})",
            format_slots(&m.slots),
            m.from,
            m.to,
            m.since
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_read_as_a_person_writes_them() {
        let w = parse_weights("g1=3, g2=1").expect("weights");
        assert_eq!(w.len(), 2);
        assert_eq!(w[&GroupId::new("g1").expect("g1")], 3);
        assert!(parse_weights("g1").is_err());
        assert!(parse_weights("g1=x").is_err());
    }
}
