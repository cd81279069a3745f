//! A pool of backends: which one serves the next request, and what a backend's failure
//! does to the pool (ejection, never of the last one; panic mode when all look down).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use keel_resilience::budget::{BudgetConfig, RetryBudget};
use tokio::time::Instant;

use crate::backend::Backend;
use crate::config::{Balance, Config, MAX_BACKENDS};
use crate::health::{Policy, Transition};
use crate::selection::{Candidate, SmoothWrr, least_request};

/// The backends of one route and how they are chosen.
#[derive(Debug)]
pub struct Pool {
    pub backends: Vec<Arc<Backend>>,
    pub balance: Balance,
    pub policy: Policy,
    /// Below this percentage of backends up, picks spread over all.
    panic_threshold: u8,
    wrr: Mutex<SmoothWrr>,
    pub budget: RetryBudget,
    /// Held while deciding an ejection, so two failing backends cannot both decide that
    /// the other one is still there.
    eject: Mutex<()>,
}

/// A pick: the backend, and whether it was made in panic mode.
#[derive(Debug)]
pub struct Pick {
    pub backend: Arc<Backend>,
    pub index: usize,
    pub panic: bool,
}

impl Pool {
    /// A pool of `backends` (already built, perhaps kept from the previous configuration)
    /// with the settings of `config`.
    pub fn new(backends: Vec<Arc<Backend>>, config: &Config) -> Pool {
        let budget = RetryBudget::new(BudgetConfig {
            ratio: config.retry.budget_ratio,
            min_per_sec: config.retry.budget_min_per_second,
            ..BudgetConfig::default()
        })
        .unwrap_or_else(|_| {
            // The configuration was checked; the defaults always hold.
            RetryBudget::new(BudgetConfig::default()).unwrap_or_else(|e| unreachable!("{e}"))
        });
        Pool {
            wrr: Mutex::new(SmoothWrr::new(backends.len())),
            backends,
            balance: config.balance,
            policy: policy_of(config),
            panic_threshold: config.panic_threshold,
            budget,
            eject: Mutex::new(()),
        }
    }

    /// Picks a backend, leaving out drained ones and those in `tried`; `None` when none is
    /// left.
    pub fn pick(&self, tried: &[usize], now: Instant) -> Option<Pick> {
        let offered = |i: usize, b: &Backend| !b.is_drained() && !tried.contains(&i);
        let total = self.backends.iter().filter(|b| !b.is_drained()).count();
        let up = self
            .backends
            .iter()
            .filter(|b| !b.is_drained() && b.is_up())
            .count();
        let panic = total > 0 && (up == 0 || up * 100 < usize::from(self.panic_threshold) * total);
        // On the stack: a pick is made for every request, and a pool holds at most
        // MAX_BACKENDS backends (the configuration is checked for it).
        let mut buffer = [Candidate {
            index: 0,
            weight: 0,
            in_flight: 0,
        }; MAX_BACKENDS];
        let mut n = 0;
        for (index, b) in self.backends.iter().enumerate().take(MAX_BACKENDS) {
            if offered(index, b) && (panic || b.is_up()) {
                buffer[n] = Candidate {
                    index,
                    weight: b.effective_weight(now, &self.policy),
                    in_flight: b.in_flight.load(Ordering::Relaxed),
                };
                n += 1;
            }
        }
        let candidates = &buffer[..n];
        let index = match self.balance {
            Balance::RoundRobin => self
                .wrr
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pick(candidates),
            Balance::LeastRequest => least_request(candidates, |n| rand::random_range(0..n)),
        }?;
        let backend = Arc::clone(self.backends.get(index)?);
        Some(Pick {
            backend,
            index,
            panic,
        })
    }

    /// A connection to `backend` could not be made: eject it, unless it is the last one.
    pub fn connect_failed(&self, backend: &Backend, now: Instant) -> Option<Transition> {
        backend
            .stats
            .connect_failures
            .fetch_add(1, Ordering::Relaxed);
        let _decide = self.eject.lock().unwrap_or_else(PoisonError::into_inner);
        let may = self.others_up(backend);
        let change = backend.update_health(|h| h.on_connect_failure(now, &self.policy, may));
        if change.is_some() {
            backend.close_idle();
        }
        change
    }

    /// `backend` answered (`server_error`: with a 5xx, or not at all after the request
    /// went out).
    pub fn answered(&self, backend: &Backend, server_error: bool, now: Instant) {
        if !server_error {
            // The common case takes no lock at all.
            if backend.answers_clean() {
                return;
            }
            backend.update_health(|h| h.on_answer(false, now, &self.policy, false));
            return;
        }
        let _decide = self.eject.lock().unwrap_or_else(PoisonError::into_inner);
        let may = self.others_up(backend);
        backend.update_health(|h| h.on_answer(true, now, &self.policy, may));
    }

    /// Whether some other backend is up and not drained.
    fn others_up(&self, backend: &Backend) -> bool {
        self.backends
            .iter()
            .any(|b| !std::ptr::eq(b.as_ref(), backend) && b.is_up() && !b.is_drained())
    }
}

/// The health policy a configuration sets.
pub fn policy_of(config: &Config) -> Policy {
    Policy {
        active: !config.health.interval.is_zero(),
        interval: config.health.interval,
        fast_interval: config.health.fast_interval,
        fall: config.health.fall,
        rise: config.health.rise,
        consecutive_5xx: config.passive.consecutive_5xx,
        ejection: config.passive.ejection,
        max_ejection: config.passive.max_ejection,
        slow_start: config.slow_start,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BackendConfig;

    fn pool(weights: &[u32], edit: impl FnOnce(&mut Config)) -> Pool {
        let mut config = Config::default();
        for (i, &weight) in weights.iter().enumerate() {
            config.backends.push(BackendConfig {
                name: format!("b{i}"),
                url: format!("http://127.0.0.1:{}", 5000 + i),
                weight,
            });
        }
        edit(&mut config);
        let backends = config
            .backends
            .iter()
            .map(|b| {
                let addr = crate::config::parse_backend_url(&b.url).expect("a backend URL");
                Arc::new(Backend::new(
                    b.name.clone(),
                    b.url.clone(),
                    &addr,
                    b.weight,
                    None,
                ))
            })
            .collect();
        Pool::new(backends, &config)
    }

    fn names(pool: &Pool, n: usize, now: Instant) -> Vec<String> {
        (0..n)
            .map(|_| {
                pool.pick(&[], now)
                    .map(|p| p.backend.name.clone())
                    .unwrap_or_default()
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_connection_ejects_but_never_the_last_backend() {
        let p = pool(&[1, 1], |_| {});
        let now = Instant::now();
        assert!(p.connect_failed(&p.backends[0], now).is_some());
        assert_eq!(names(&p, 3, now), ["b1", "b1", "b1"]);
        assert!(
            p.connect_failed(&p.backends[1], now).is_none(),
            "the last one stays"
        );
        assert!(p.backends[1].is_up());
    }

    #[tokio::test(start_paused = true)]
    async fn all_down_by_checks_is_panic_mode_over_every_backend() {
        let p = pool(&[1, 1], |_| {});
        let now = Instant::now();
        for b in &p.backends {
            for _ in 0..3 {
                b.update_health(|h| h.on_check(false, now, &p.policy));
            }
            assert!(!b.is_up());
        }
        let pick = p.pick(&[], now).expect("panic mode still picks");
        assert!(pick.panic);
        assert_eq!(names(&p, 2, now).len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_panic_threshold_spreads_before_all_are_down() {
        let p = pool(&[1, 1, 1, 1], |c| c.panic_threshold = 50);
        let now = Instant::now();
        for b in &p.backends[..3] {
            p.connect_failed(b, now);
        }
        let pick = p.pick(&[], now).expect("a pick");
        assert!(pick.panic, "1 of 4 up is under 50%");
    }

    #[tokio::test(start_paused = true)]
    async fn drained_and_tried_backends_are_left_out() {
        let p = pool(&[1, 1, 1], |_| {});
        let now = Instant::now();
        p.backends[1].set_drained(true);
        assert_eq!(names(&p, 4, now), ["b0", "b2", "b0", "b2"]);
        let pick = p.pick(&[0, 2], now);
        assert!(pick.is_none(), "every undrained backend was tried");
    }

    #[tokio::test(start_paused = true)]
    async fn a_recovered_backend_ramps_up_with_slow_start() {
        let p = pool(&[1, 1], |c| {
            c.slow_start = std::time::Duration::from_secs(10)
        });
        let t0 = Instant::now();
        p.connect_failed(&p.backends[0], t0);
        let back = t0 + p.policy.ejection;
        for _ in 0..p.policy.rise {
            p.backends[0].update_health(|h| h.on_check(true, back, &p.policy));
        }
        assert!(p.backends[0].is_up());
        let share = |at: Instant| names(&p, 1000, at).iter().filter(|n| *n == "b0").count();
        let first = share(back);
        let later = share(back + std::time::Duration::from_secs(5));
        let full = share(back + std::time::Duration::from_secs(10));
        assert!(first < 100, "a tenth of the weight: {first} of 1000");
        assert!(
            (300..=360).contains(&later),
            "half the weight: {later} of 1000"
        );
        assert_eq!(full, 500, "full weight again");
    }
}
