//! One backend's health: a pure state machine fed by active checks and by the answers to
//! real requests (passive health), with time passed in.
//!
//! - **Active**: `fall` failed checks in a row take a backend down, `rise` good ones bring
//!   it back (HAProxy's model, with its 2 s / 3 / 2 as defaults). While a backend's state
//!   is changing — a failure counted on an up backend, a success on a down one, or an
//!   ejection running — it is checked at the faster interval, so a change is confirmed
//!   in about a second rather than in six.
//! - **Passive**: a connect failure ejects a backend at once; `consecutive_5xx` 5xx
//!   answers in a row eject it too. An ejection lasts `ejection · 2^(n-1)` for the n-th
//!   ejection in a row, capped at `max_ejection` (Envoy's outlier detection); the count
//!   starts again once the backend has stayed up for `max_ejection`. An ejected backend
//!   comes back when its ejection is over and, with active checks, after `rise` good
//!   checks as well.
//! - **Slow start**: a backend that comes back ramps from a tenth of its weight to all of
//!   it over `slow_start`, so that it is not flooded while its caches are cold.
//!
//! Whether an ejection may happen at all ("never the last backend") is the pool's
//! question; the caller says so with `may_eject`.

use std::time::Duration;

use tokio::time::Instant;

/// Settings this module needs, taken from the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Active checks on (`health.interval` > 0).
    pub active: bool,
    pub interval: Duration,
    pub fast_interval: Duration,
    pub fall: u32,
    pub rise: u32,
    pub consecutive_5xx: u32,
    pub ejection: Duration,
    pub max_ejection: Duration,
    pub slow_start: Duration,
}

/// Up or down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Up,
    Down,
}

/// A change of state, for the log, the metrics and the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Taken out of rotation, and why.
    Down {
        why: String,
        /// Set for a passive ejection: how long it lasts at least.
        ejected_for: Option<Duration>,
    },
    /// Back in rotation.
    Up { why: String },
}

/// The health of one backend.
#[derive(Debug, Clone)]
pub struct Health {
    state: State,
    /// Why it is down (or what last brought it up).
    why: String,
    ok_streak: u32,
    fail_streak: u32,
    five_xx_streak: u32,
    /// Passive ejections in a row: the next one lasts twice as long.
    ejections: u32,
    ejected_until: Option<Instant>,
    /// When it last came back; `None` since start (no slow start for the first run).
    up_since: Option<Instant>,
}

impl Default for Health {
    fn default() -> Self {
        Health::new()
    }
}

impl Health {
    /// A backend starts up: traffic finds out about a dead one at once (a connect failure
    /// ejects it), and a live one serves from the first request.
    pub fn new() -> Health {
        Health {
            state: State::Up,
            why: "started".to_owned(),
            ok_streak: 0,
            fail_streak: 0,
            five_xx_streak: 0,
            ejections: 0,
            ejected_until: None,
            up_since: None,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn why(&self) -> &str {
        &self.why
    }

    /// When a running ejection ends.
    pub fn ejected_until(&self) -> Option<Instant> {
        self.ejected_until
    }

    /// The result of one active check.
    pub fn on_check(&mut self, ok: bool, now: Instant, policy: &Policy) -> Option<Transition> {
        if ok {
            self.fail_streak = 0;
            self.ok_streak = self.ok_streak.saturating_add(1);
            let ejection_over = self.ejected_until.is_none_or(|until| now >= until);
            if self.state == State::Down && self.ok_streak >= policy.rise && ejection_over {
                return Some(self.come_up(now, format!("{} good checks", self.ok_streak)));
            }
        } else {
            self.ok_streak = 0;
            self.fail_streak = self.fail_streak.saturating_add(1);
            if self.state == State::Up && self.fail_streak >= policy.fall {
                return Some(self.go_down(format!("{} failed checks", self.fail_streak), None));
            }
        }
        None
    }

    /// A connection to the backend could not be made.
    pub fn on_connect_failure(
        &mut self,
        now: Instant,
        policy: &Policy,
        may_eject: bool,
    ) -> Option<Transition> {
        self.eject(
            "connection refused, timed out or its TLS handshake failed",
            now,
            policy,
            may_eject,
        )
    }

    /// The backend answered (`server_error`: with a 5xx) or broke off after the request
    /// was sent (counted as a 5xx).
    pub fn on_answer(
        &mut self,
        server_error: bool,
        now: Instant,
        policy: &Policy,
        may_eject: bool,
    ) -> Option<Transition> {
        if !server_error {
            self.five_xx_streak = 0;
            return None;
        }
        self.five_xx_streak = self.five_xx_streak.saturating_add(1);
        if policy.consecutive_5xx > 0 && self.five_xx_streak >= policy.consecutive_5xx {
            let why = format!("{} server errors in a row", self.five_xx_streak);
            return self.eject(&why, now, policy, may_eject);
        }
        None
    }

    /// Without active checks, an ejected backend comes back when its ejection is over.
    pub fn on_tick(&mut self, now: Instant, policy: &Policy) -> Option<Transition> {
        match self.ejected_until {
            Some(until) if !policy.active && self.state == State::Down && now >= until => {
                Some(self.come_up(now, "ejection over".to_owned()))
            }
            _ => None,
        }
    }

    /// Whether a run of server errors has begun (an answer that is not one ends it).
    pub fn in_error_streak(&self) -> bool {
        self.five_xx_streak > 0
    }

    /// The share of its weight the backend gets now: 1, or less during slow start.
    pub fn weight_factor(&self, now: Instant, policy: &Policy) -> f64 {
        match self.up_since {
            Some(since) if !policy.slow_start.is_zero() => {
                let ramp = now.saturating_duration_since(since).as_secs_f64()
                    / policy.slow_start.as_secs_f64();
                ramp.clamp(0.1, 1.0)
            }
            _ => 1.0,
        }
    }

    /// Whether slow start is still ramping.
    pub fn warming(&self, now: Instant, policy: &Policy) -> bool {
        self.state == State::Up && self.weight_factor(now, policy) < 1.0
    }

    /// How long until the next active check.
    pub fn next_check_in(&self, policy: &Policy) -> Duration {
        let changing = match self.state {
            State::Up => self.fail_streak > 0,
            State::Down => self.ok_streak > 0 || self.ejected_until.is_some(),
        };
        if changing {
            policy.fast_interval.min(policy.interval)
        } else {
            policy.interval
        }
    }

    fn eject(
        &mut self,
        why: &str,
        now: Instant,
        policy: &Policy,
        may_eject: bool,
    ) -> Option<Transition> {
        if self.state == State::Down || !may_eject {
            return None;
        }
        let settled = self
            .up_since
            .is_none_or(|since| now.saturating_duration_since(since) >= policy.max_ejection);
        if settled {
            self.ejections = 0;
        }
        self.ejections = self.ejections.saturating_add(1);
        let factor = 1u32
            .checked_shl(self.ejections.saturating_sub(1))
            .unwrap_or(u32::MAX);
        let length = policy
            .ejection
            .saturating_mul(factor)
            .min(policy.max_ejection);
        self.ejected_until = Some(now + length);
        Some(self.go_down(format!("ejected: {why}"), Some(length)))
    }

    fn go_down(&mut self, why: String, ejected_for: Option<Duration>) -> Transition {
        self.state = State::Down;
        self.why = why.clone();
        self.ok_streak = 0;
        self.fail_streak = 0;
        self.five_xx_streak = 0;
        if ejected_for.is_none() {
            self.ejected_until = None;
        }
        Transition::Down { why, ejected_for }
    }

    fn come_up(&mut self, now: Instant, why: String) -> Transition {
        self.state = State::Up;
        self.why = why.clone();
        self.ok_streak = 0;
        self.fail_streak = 0;
        self.five_xx_streak = 0;
        self.ejected_until = None;
        self.up_since = Some(now);
        Transition::Up { why }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            active: true,
            interval: Duration::from_secs(2),
            fast_interval: Duration::from_millis(500),
            fall: 3,
            rise: 2,
            consecutive_5xx: 5,
            ejection: Duration::from_secs(5),
            max_ejection: Duration::from_secs(60),
            slow_start: Duration::from_secs(10),
        }
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn fall_failed_checks_take_it_down_and_rise_good_ones_bring_it_back() {
        let (p, t0) = (policy(), Instant::now());
        let mut h = Health::new();
        assert_eq!(h.on_check(false, t0, &p), None);
        assert_eq!(
            h.next_check_in(&p),
            p.fast_interval,
            "a failure: check faster"
        );
        assert_eq!(h.on_check(false, t0, &p), None);
        assert!(matches!(
            h.on_check(false, t0, &p),
            Some(Transition::Down { .. })
        ));
        assert_eq!(h.state(), State::Down);
        assert_eq!(h.why(), "3 failed checks");
        assert_eq!(h.next_check_in(&p), p.interval, "steadily down");
        assert_eq!(h.on_check(true, t0, &p), None);
        assert_eq!(h.next_check_in(&p), p.fast_interval, "rising: check faster");
        assert!(matches!(
            h.on_check(true, t0, &p),
            Some(Transition::Up { .. })
        ));
        assert_eq!(h.state(), State::Up);
    }

    #[test]
    fn a_good_check_between_failures_starts_the_count_again() {
        let (p, t0) = (policy(), Instant::now());
        let mut h = Health::new();
        h.on_check(false, t0, &p);
        h.on_check(false, t0, &p);
        h.on_check(true, t0, &p);
        h.on_check(false, t0, &p);
        h.on_check(false, t0, &p);
        assert_eq!(h.state(), State::Up);
        assert!(h.on_check(false, t0, &p).is_some());
    }

    #[test]
    fn a_connect_failure_ejects_at_once_and_rise_needs_the_ejection_over() {
        let (p, t0) = (policy(), Instant::now());
        let mut h = Health::new();
        assert_eq!(
            h.on_connect_failure(t0, &p, true),
            Some(Transition::Down {
                why: "ejected: connection refused, timed out or its TLS handshake failed".into(),
                ejected_for: Some(secs(5)),
            })
        );
        assert_eq!(h.on_check(true, t0 + secs(1), &p), None);
        assert_eq!(
            h.on_check(true, t0 + secs(2), &p),
            None,
            "ejection not over"
        );
        assert!(h.on_check(true, t0 + secs(5), &p).is_some());
    }

    #[test]
    fn the_last_backend_is_not_ejected() {
        let (p, t0) = (policy(), Instant::now());
        let mut h = Health::new();
        assert_eq!(h.on_connect_failure(t0, &p, false), None);
        assert_eq!(h.state(), State::Up);
    }

    #[test]
    fn five_server_errors_in_a_row_eject_and_a_success_resets_the_count() {
        let (p, t0) = (policy(), Instant::now());
        let mut h = Health::new();
        for _ in 0..4 {
            assert_eq!(h.on_answer(true, t0, &p, true), None);
        }
        assert_eq!(h.on_answer(false, t0, &p, true), None);
        for _ in 0..4 {
            assert_eq!(h.on_answer(true, t0, &p, true), None);
        }
        assert!(matches!(
            h.on_answer(true, t0, &p, true),
            Some(Transition::Down { .. })
        ));
        assert_eq!(h.why(), "ejected: 5 server errors in a row");
    }

    #[test]
    fn repeated_ejections_back_off_up_to_the_cap_then_settle() {
        let (p, t0) = (policy(), Instant::now());
        let mut h = Health::new();
        let mut now = t0;
        let mut lengths = Vec::new();
        for _ in 0..6 {
            match h.on_connect_failure(now, &p, true) {
                Some(Transition::Down {
                    ejected_for: Some(d),
                    ..
                }) => lengths.push(d.as_secs()),
                other => panic!("expected an ejection, got {other:?}"),
            }
            now += secs(lengths.last().copied().unwrap_or(0));
            for _ in 0..2 {
                h.on_check(true, now, &p);
            }
            assert_eq!(h.state(), State::Up);
            now += secs(1);
        }
        assert_eq!(lengths, [5, 10, 20, 40, 60, 60]);
        now += secs(60);
        assert!(matches!(
            h.on_connect_failure(now, &p, true),
            Some(Transition::Down { ejected_for: Some(d), .. }) if d == secs(5)
        ));
    }

    #[test]
    fn without_active_checks_an_ejection_ends_by_itself() {
        let p = Policy {
            active: false,
            ..policy()
        };
        let t0 = Instant::now();
        let mut h = Health::new();
        h.on_connect_failure(t0, &p, true);
        assert_eq!(h.on_tick(t0 + secs(4), &p), None);
        assert!(h.on_tick(t0 + secs(5), &p).is_some());
        assert_eq!(h.state(), State::Up);
    }

    #[test]
    fn slow_start_ramps_from_a_tenth_to_all_after_a_recovery_only() {
        let (p, t0) = (policy(), Instant::now());
        let mut h = Health::new();
        assert_eq!(
            h.weight_factor(t0, &p),
            1.0,
            "no slow start at the first start"
        );
        for _ in 0..3 {
            h.on_check(false, t0, &p);
        }
        h.on_check(true, t0, &p);
        h.on_check(true, t0, &p);
        assert_eq!(h.weight_factor(t0, &p), 0.1);
        assert!(h.warming(t0, &p));
        assert_eq!(h.weight_factor(t0 + secs(5), &p), 0.5);
        assert_eq!(h.weight_factor(t0 + secs(10), &p), 1.0);
        assert!(!h.warming(t0 + secs(10), &p));
    }
}
