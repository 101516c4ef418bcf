//! Long series down to the pixel width, so a paper-scale report stays light.

/// `n` items into at most `buckets` contiguous buckets of near-equal size: the
/// half-open ranges, in order. Bucket `b` is `[b * n / k, (b + 1) * n / k)`.
pub fn buckets(n: usize, buckets: usize) -> Vec<std::ops::Range<usize>> {
    let k = buckets.min(n).max(usize::from(n > 0));
    (0..k).map(|b| b * n / k..(b + 1) * n / k).collect()
}

/// Min/max down-sampling of `(x, y)` points: each bucket gives its minimum and its
/// maximum in the order they occur, so a spike of a single point survives. With no
/// more points than `2 * buckets` the points come back unchanged.
pub fn min_max(xs: &[f64], ys: &[f64], buckets_wanted: usize) -> Vec<(f64, f64)> {
    assert_eq!(xs.len(), ys.len());
    if xs.len() <= 2 * buckets_wanted {
        return xs.iter().copied().zip(ys.iter().copied()).collect();
    }
    let mut out = Vec::with_capacity(2 * buckets_wanted);
    for r in buckets(xs.len(), buckets_wanted) {
        let (mut lo, mut hi) = (r.start, r.start);
        for i in r.clone() {
            if ys[i] < ys[lo] {
                lo = i;
            }
            if ys[i] > ys[hi] {
                hi = i;
            }
        }
        let (a, b) = if lo <= hi { (lo, hi) } else { (hi, lo) };
        out.push((xs[a], ys[a]));
        if b != a {
            out.push((xs[b], ys[b]));
        }
    }
    out
}

/// Mean of each bucket of `values` (for heatmap cells).
pub fn means(values: &[f64], buckets_wanted: usize) -> Vec<f64> {
    buckets(values.len(), buckets_wanted).into_iter().map(|r| values[r.clone()].iter().sum::<f64>() / r.len() as f64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_everything_once() {
        for n in [0usize, 1, 5, 7, 100, 1001] {
            for k in [1usize, 3, 7, 1000] {
                let b = buckets(n, k);
                assert_eq!(b.len(), k.min(n));
                let mut next = 0;
                for r in &b {
                    assert_eq!(r.start, next);
                    assert!(!r.is_empty());
                    next = r.end;
                }
                assert_eq!(next, n);
            }
        }
    }

    #[test]
    fn a_single_spike_survives() {
        let n = 100_000;
        let xs: Vec<f64> = (0..n).map(|i| i as f64).collect();
        let mut ys = vec![1.0; n];
        ys[54_321] = 9.0;
        ys[77_777] = -3.0;
        let d = min_max(&xs, &ys, 500);
        assert!(d.len() <= 1000);
        assert!(d.contains(&(54_321.0, 9.0)));
        assert!(d.contains(&(77_777.0, -3.0)));
        // x stays in order.
        assert!(d.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn short_series_unchanged_and_means_by_hand() {
        let xs = [0.0, 1.0, 2.0];
        let ys = [3.0, 1.0, 2.0];
        assert_eq!(min_max(&xs, &ys, 2), vec![(0.0, 3.0), (1.0, 1.0), (2.0, 2.0)]);
        // Buckets [0,2) [2,5): means 1.5 and 4.
        assert_eq!(means(&[1.0, 2.0, 3.0, 4.0, 5.0], 2), vec![1.5, 4.0]);
    }
}
