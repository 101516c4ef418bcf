//! Transient and stable states (docs/reference.md, "States").
//!
//! `s(t)` is the mean over experts of the window standard deviation, defined for
//! `t >= W - 1`. Of its `n` values, `final` is the median of the last
//! `max(1, n / 10)`; the transition step is the first `t` from which
//! `s(t') <= (1 + kappa) * final` holds for every later `t'`.

/// Median, with the mean of the two middle values for an even count.
pub fn median(values: &[f64]) -> f64 {
    median_in_place(&mut values.to_vec())
}

/// [`median`] in O(n), reordering `v`.
pub fn median_in_place(v: &mut [f64]) -> f64 {
    assert!(!v.is_empty(), "median of nothing");
    let n = v.len();
    let (lower, mid, _) = v.select_nth_unstable_by(n / 2, |a, b| a.total_cmp(b));
    let mid = *mid;
    if n % 2 == 1 { mid } else { 0.5 * (lower.iter().copied().fold(f64::NEG_INFINITY, f64::max) + mid) }
}

/// The state of one layer at one window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct State {
    /// Step index (not label) of the transition, `None` when none exists.
    pub transition: Option<usize>,
    /// The `final` level of `s(t)`; `None` when the trace is shorter than the window.
    pub final_std: Option<f64>,
}

/// `std_mean[i]` is `s(window - 1 + i)`.
pub fn transition(std_mean: &[f64], window: usize, kappa: f64) -> State {
    let n = std_mean.len();
    if n == 0 {
        return State { transition: None, final_std: None };
    }
    let tail = (n / 10).max(1);
    let fin = median(&std_mean[n - tail..]);
    let limit = (1.0 + kappa) * fin;
    // The first index after the last one above the limit.
    let start = match std_mean.iter().rposition(|&s| s > limit) {
        Some(i) if i + 1 == n => None,
        Some(i) => Some(i + 1),
        None => Some(0),
    };
    State { transition: start.map(|i| window - 1 + i), final_std: Some(fin) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[7.0]), 7.0);
        assert_eq!(median(&[5.0, 1.0, 9.0, 2.0, 8.0, 3.0]), 4.0);
    }

    #[test]
    fn hand_derived_transition() {
        // n = 20 values, tail = 2: final = median(1.0, 1.2) = 1.1, limit at kappa .5 = 1.65.
        // The last value above 1.65 is at i = 6 (2.0), so the transition is i = 7,
        // step index window - 1 + 7 = 16 for window 10.
        let mut s = vec![5.0, 4.0, 3.0, 2.5, 1.0, 1.6, 2.0];
        s.extend(std::iter::repeat_n(1.3, 11));
        s.extend([1.0, 1.2]);
        assert_eq!(s.len(), 20);
        let st = transition(&s, 10, 0.5);
        assert!((st.final_std.unwrap() - 1.1).abs() < 1e-15);
        assert_eq!(st.transition, Some(16));
        // kappa = 0: limit 1.1, the last value above it is 1.2 at i = 19 -> no transition.
        assert_eq!(transition(&s, 10, 0.0).transition, None);
    }

    #[test]
    fn flat_series_is_stable_from_the_first_defined_step() {
        let st = transition(&[0.5; 7], 100, 0.5);
        assert_eq!(st.transition, Some(99));
        assert_eq!(st.final_std, Some(0.5));
    }

    #[test]
    fn too_short_for_the_window() {
        assert_eq!(transition(&[], 100, 0.5), State { transition: None, final_std: None });
    }
}
