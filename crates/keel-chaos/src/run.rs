//! `keel chaos run`: faults drawn from a seeded random generator against a running
//! `keel up`, one at a time, each restored before the next; the same seed gives the same
//! sequence of faults, targets and timings.

use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::control::{Action, Control, ControlError};

/// What `keel chaos run` is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSettings {
    /// How long to go on.
    pub duration: Duration,
    /// The seed of the draws.
    pub seed: u64,
    /// The faults to draw from, comma-separated: `kill`, `pause`, `partition`.
    pub faults: String,
    /// The processes to hit, comma-separated; the data nodes when `None`.
    pub targets: Option<String>,
    /// Shortest quiet time before a fault.
    pub min_gap: Duration,
    /// Longest quiet time before a fault.
    pub max_gap: Duration,
    /// Shortest time a fault lasts.
    pub min_hold: Duration,
    /// Longest time a fault lasts.
    pub max_hold: Duration,
}

/// Why a run cannot start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The shortest gap is longer than the longest.
    #[error("--min-gap must not exceed --max-gap")]
    Gaps,
    /// The shortest hold is longer than the longest.
    #[error("--min-hold must not exceed --max-hold")]
    Holds,
    /// A fault of `--faults` is not one.
    #[error("--faults: {0:?} is not a fault (kill, pause, partition)")]
    UnknownFault(String),
    /// A target of `--targets` is not a process `keel up` runs.
    #[error("--targets: keel up runs no {target:?}; it runs {running}")]
    UnknownTarget { target: String, running: String },
    /// There is nothing to hit.
    #[error("no targets: keel up runs no data node")]
    NoTargets,
    /// A partition was asked for a process outside the data tier.
    #[error(
        "--targets: {0} cannot be partitioned (only the data tier is: the monitor and the nodes); \
         leave partition out of --faults or {0} out of --targets"
    )]
    Unpartitionable(String),
    /// `keel up` could not be asked, or refused.
    #[error(transparent)]
    Control(#[from] ControlError),
}

/// A fault `keel chaos run` draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL, restored by a restart.
    Kill,
    /// SIGSTOP, restored by SIGCONT.
    Pause,
    /// Cut off from every other process of the data tier, restored by a heal.
    Partition,
}

impl Fault {
    /// The faults of a comma-separated list.
    fn parse_list(list: &str) -> Result<Vec<Fault>, RunError> {
        list.split(',')
            .map(|f| match f.trim() {
                "kill" => Ok(Fault::Kill),
                "pause" => Ok(Fault::Pause),
                "partition" => Ok(Fault::Partition),
                other => Err(RunError::UnknownFault(other.to_owned())),
            })
            .collect()
    }

    /// Carries the fault out on `target`; the line that says what was done.
    async fn inject(self, control: &Control, target: &str) -> Result<String, ControlError> {
        Ok(match self {
            Fault::Kill => control.act(target, Action::Kill).await?.message,
            Fault::Pause => control.act(target, Action::Pause).await?.message,
            Fault::Partition => control.partition(target, &[]).await?.message,
        })
    }

    /// Undoes [`Fault::inject`].
    async fn restore(self, control: &Control, target: &str) -> Result<String, ControlError> {
        Ok(match self {
            Fault::Kill => control.act(target, Action::Restart).await?.message,
            Fault::Pause => control.act(target, Action::Resume).await?.message,
            Fault::Partition => control.heal().await?.message,
        })
    }
}

/// One fault of a run: after `gap`, `fault` on `target` for `hold`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Draw {
    gap: Duration,
    fault: Fault,
    target: String,
    hold: Duration,
}

/// The seeded sequence of draws. The order of the draws (gap, fault, target, hold) is
/// what makes a seed reproduce a run: change it and every recorded seed means another run.
struct Draws<'a> {
    rng: StdRng,
    settings: &'a RunSettings,
    faults: &'a [Fault],
    targets: &'a [String],
}

impl<'a> Draws<'a> {
    fn new(settings: &'a RunSettings, faults: &'a [Fault], targets: &'a [String]) -> Self {
        Draws {
            rng: StdRng::seed_from_u64(settings.seed),
            settings,
            faults,
            targets,
        }
    }

    fn next(&mut self) -> Draw {
        let s = self.settings;
        let gap = self.duration(s.min_gap, s.max_gap);
        let fault = self.faults[self.rng.random_range(0..self.faults.len())];
        let target = self.targets[self.rng.random_range(0..self.targets.len())].clone();
        let hold = self.duration(s.min_hold, s.max_hold);
        Draw {
            gap,
            fault,
            target,
            hold,
        }
    }

    /// A duration from `min` to `max`, to the millisecond.
    fn duration(&mut self, min: Duration, max: Duration) -> Duration {
        let (lo, hi) = (min.as_millis() as u64, max.as_millis() as u64);
        Duration::from_millis(self.rng.random_range(lo..=hi))
    }
}

/// A fault at a random time on a random target, held for a while, then restored; again
/// until the time is up or `stop` completes (the fault in force is restored first). One
/// fault at a time, so the stack is never asked to survive more than one failure at once.
/// `say` gets the timeline, a line at a time.
pub async fn run(
    control: &Control,
    settings: &RunSettings,
    stop: impl Future<Output = ()>,
    mut say: impl FnMut(&str),
) -> Result<(), RunError> {
    if settings.min_gap > settings.max_gap {
        return Err(RunError::Gaps);
    }
    if settings.min_hold > settings.max_hold {
        return Err(RunError::Holds);
    }
    let faults = Fault::parse_list(&settings.faults)?;
    let processes = control.processes().await?;
    let targets: Vec<String> = match &settings.targets {
        Some(list) => list.split(',').map(|t| t.trim().to_owned()).collect(),
        None => processes
            .iter()
            .filter(|p| p.name.starts_with("app"))
            .map(|p| p.name.clone())
            .collect(),
    };
    for target in &targets {
        if !processes.iter().any(|p| &p.name == target) {
            let names: Vec<&str> = processes.iter().map(|p| p.name.as_str()).collect();
            return Err(RunError::UnknownTarget {
                target: target.clone(),
                running: names.join(", "),
            });
        }
    }
    if targets.is_empty() {
        return Err(RunError::NoTargets);
    }
    if faults.contains(&Fault::Partition)
        && let Some(client) = targets
            .iter()
            .find(|t| !crate::plan::is_monitor(t) && !t.starts_with("app"))
    {
        return Err(RunError::Unpartitionable(client.clone()));
    }
    let mut draws = Draws::new(settings, &faults, &targets);
    let started = Instant::now();
    let clock = || format!("{:7.1} s", started.elapsed().as_secs_f64());
    say(&format!(
        "chaos: {} s, seed {}, faults {}, targets {}",
        settings.duration.as_secs_f64(),
        settings.seed,
        settings.faults,
        targets.join(",")
    ));
    let mut injected = 0;
    let mut stop = pin!(stop);
    loop {
        let Draw {
            gap,
            fault,
            target,
            hold,
        } = draws.next();
        if started.elapsed() + gap + hold >= settings.duration {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(gap) => {}
            () = &mut stop => break,
        }
        let message = fault.inject(control, &target).await?;
        injected += 1;
        say(&format!("{}  {message}", clock()));
        let interrupted = tokio::select! {
            () = tokio::time::sleep(hold) => false,
            () = &mut stop => true,
        };
        let message = fault.restore(control, &target).await?;
        say(&format!("{}  {message}", clock()));
        if interrupted {
            break;
        }
    }
    say(&format!(
        "{}  chaos over: {injected} fault(s), each restored",
        clock()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(seed: u64) -> RunSettings {
        RunSettings {
            duration: Duration::from_secs(60),
            seed,
            faults: "kill,pause".into(),
            targets: None,
            min_gap: Duration::from_secs(2),
            max_gap: Duration::from_secs(5),
            min_hold: Duration::from_secs(1),
            max_hold: Duration::from_secs(3),
        }
    }

    fn first(settings: &RunSettings, n: usize) -> Vec<Draw> {
        let faults = Fault::parse_list(&settings.faults).expect("faults");
        let targets = vec!["app1".to_owned(), "app2".to_owned()];
        let mut draws = Draws::new(settings, &faults, &targets);
        (0..n).map(|_| draws.next()).collect()
    }

    #[test]
    fn the_same_seed_draws_the_same_faults_targets_and_times_within_bounds() {
        let a = first(&settings(42), 50);
        assert_eq!(a, first(&settings(42), 50));
        assert_ne!(a, first(&settings(43), 50), "another seed, another run");
        for d in &a {
            assert!((Duration::from_secs(2)..=Duration::from_secs(5)).contains(&d.gap));
            assert!((Duration::from_secs(1)..=Duration::from_secs(3)).contains(&d.hold));
        }
        for fault in [Fault::Kill, Fault::Pause] {
            assert!(a.iter().any(|d| d.fault == fault), "{fault:?} is drawn");
        }
        for target in ["app1", "app2"] {
            assert!(a.iter().any(|d| d.target == target), "{target} is drawn");
        }
    }

    #[test]
    fn a_fault_that_is_not_one_is_named() {
        let err = Fault::parse_list("kill, crash").expect_err("crash is no fault");
        assert_eq!(
            err.to_string(),
            "--faults: \"crash\" is not a fault (kill, pause, partition)"
        );
        assert_eq!(
            Fault::parse_list(" partition ,pause").expect("trimmed"),
            [Fault::Partition, Fault::Pause]
        );
    }
}
