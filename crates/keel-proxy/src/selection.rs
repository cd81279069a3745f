//! Choosing a backend: pure algorithms over the candidates the pool offers.
//!
//! - [`SmoothWrr`]: nginx's smooth weighted round robin. Each pick adds every candidate's
//!   weight to its running score, takes the highest, and takes the total off the winner.
//!   Equal weights give plain round robin; weights 3:1 give `a a b a`, never `a a a b`,
//!   so no backend gets a burst longer than its weight. A weight that changes (slow
//!   start, an operator) takes effect at the next pick.
//! - [`least_request`]: power of two choices — draw two candidates at random and take
//!   the one with fewer requests in flight per unit of weight. It follows load as it is
//!   rather than as it was assigned, at the cost of two atomic reads per pick.

/// A backend the pool offers for this pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// The backend's place in its pool.
    pub index: usize,
    /// Its weight now (already scaled by slow start); more than 0.
    pub weight: u32,
    /// Requests it is serving now.
    pub in_flight: u32,
}

/// The running scores of smooth weighted round robin, one per backend of the pool.
#[derive(Debug, Clone, Default)]
pub struct SmoothWrr {
    current: Vec<i64>,
}

impl SmoothWrr {
    /// Scores for a pool of `n` backends.
    pub fn new(n: usize) -> SmoothWrr {
        SmoothWrr {
            current: vec![0; n],
        }
    }

    /// Picks one of `candidates`; `None` when there are none.
    pub fn pick(&mut self, candidates: &[Candidate]) -> Option<usize> {
        let mut total: i64 = 0;
        let mut best: Option<(usize, i64)> = None;
        for c in candidates {
            let Some(score) = self.current.get_mut(c.index) else {
                continue;
            };
            *score += i64::from(c.weight);
            total += i64::from(c.weight);
            let now = *score;
            if best.is_none_or(|(_, top)| now > top) {
                best = Some((c.index, now));
            }
        }
        let (chosen, _) = best?;
        if let Some(score) = self.current.get_mut(chosen) {
            *score -= total;
        }
        Some(chosen)
    }
}

/// Picks the less loaded (in flight per weight) of two candidates drawn at random; `draw`
/// returns a uniform index below its argument.
pub fn least_request(
    candidates: &[Candidate],
    mut draw: impl FnMut(usize) -> usize,
) -> Option<usize> {
    match candidates.len() {
        0 => None,
        1 => Some(candidates[0].index),
        n => {
            let a = draw(n);
            let mut b = draw(n - 1);
            if b >= a {
                b += 1;
            }
            let (a, b) = (&candidates[a], &candidates[b]);
            // (in_flight + 1) / weight, compared without division.
            let load = |c: &Candidate, other: &Candidate| {
                u64::from(c.in_flight + 1) * u64::from(other.weight.max(1))
            };
            if load(b, a) < load(a, b) {
                Some(b.index)
            } else {
                Some(a.index)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weighted(weights: &[u32]) -> Vec<Candidate> {
        weights
            .iter()
            .enumerate()
            .map(|(index, &weight)| Candidate {
                index,
                weight,
                in_flight: 0,
            })
            .collect()
    }

    fn sequence(weights: &[u32], picks: usize) -> Vec<usize> {
        let candidates = weighted(weights);
        let mut wrr = SmoothWrr::new(weights.len());
        (0..picks)
            .map(|_| wrr.pick(&candidates).expect("a candidate"))
            .collect()
    }

    #[test]
    fn equal_weights_are_exact_round_robin() {
        assert_eq!(sequence(&[1, 1], 6), [0, 1, 0, 1, 0, 1]);
        assert_eq!(sequence(&[5, 5, 5], 6), [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn three_to_one_is_smooth() {
        assert_eq!(sequence(&[3, 1], 8), [0, 0, 1, 0, 0, 0, 1, 0]);
        let picks = sequence(&[3, 1], 400);
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 300);
        let longest_run = picks
            .chunk_by(|a, b| a == b)
            .map(<[usize]>::len)
            .max()
            .unwrap_or(0);
        assert!(longest_run <= 3, "a burst of {longest_run}");
    }

    #[test]
    fn nginx_example_five_one_one() {
        // nginx's own example: weights 5, 1, 1 give a a b a c a a.
        assert_eq!(sequence(&[5, 1, 1], 7), [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn a_backend_left_out_is_skipped_and_the_rest_share_evenly() {
        let mut wrr = SmoothWrr::new(3);
        let all = weighted(&[1, 1, 1]);
        let without_middle = [all[0], all[2]];
        let mut picks = vec![wrr.pick(&all).unwrap_or(9)];
        picks.extend((0..101).filter_map(|_| wrr.pick(&without_middle)));
        let count = |b: usize| picks.iter().filter(|&&i| i == b).count();
        assert_eq!(count(1), 0, "the backend left out is never picked");
        assert!(
            count(0).abs_diff(count(2)) <= 1,
            "{} vs {}",
            count(0),
            count(2)
        );
        assert_eq!(wrr.pick(&[]), None);
    }

    #[test]
    fn least_request_takes_the_less_loaded_of_the_two_drawn() {
        let mut c = weighted(&[1, 1, 1]);
        c[0].in_flight = 5;
        c[1].in_flight = 1;
        // Draws 0 and then 0 (mapped past the first to 1): backends 0 and 1.
        let mut draws = [0, 0].into_iter();
        assert_eq!(least_request(&c, |_| draws.next().unwrap_or(0)), Some(1));
        // Same load per weight: the first drawn.
        c[2].in_flight = 1;
        let mut draws = [2, 1].into_iter();
        assert_eq!(least_request(&c, |_| draws.next().unwrap_or(0)), Some(2));
    }

    #[test]
    fn least_request_weighs_load_by_weight() {
        let mut c = weighted(&[4, 1]);
        c[0].in_flight = 3; // 4 / 4 = 1
        c[1].in_flight = 1; // 2 / 1 = 2
        let mut draws = [1, 0].into_iter();
        assert_eq!(least_request(&c, |_| draws.next().unwrap_or(0)), Some(0));
        assert_eq!(least_request(&c[..1], |_| 0), Some(0));
        assert_eq!(least_request(&[], |_| 0), None);
    }
}
