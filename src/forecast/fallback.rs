//! The protocol's one fallback: where a model's fit fails (an ARIMA that does not
//! converge) or cannot be used (an origin before an LSTM's lookback), the forecaster
//! predicts `mean:w=100` of the history for that series and origin and counts it in
//! `fallbacks`. With fewer than 100 steps of history it averages what there is.

use super::LayerView;

/// Steps the fallback averages.
pub const W: usize = 100;

/// The fallback for one series `y` (its values before the origin), `len` steps ahead.
pub fn series(y: &[f64], len: usize) -> Vec<f64> {
    let w = &y[y.len().saturating_sub(W)..];
    vec![w.iter().sum::<f64>() / w.len().max(1) as f64; len]
}

/// The fallback for every expert of a layer from `origin` (`history` ends there),
/// into `out` (step-major); returns the number of series that fell back (all).
pub fn layer(history: &LayerView, origin: usize, out: &mut [f64]) -> usize {
    let ne = history.experts();
    let from = origin.saturating_sub(W);
    let (first, rest) = out.split_at_mut(ne);
    first.iter_mut().for_each(|v| *v = 0.0);
    for t in from..origin {
        first.iter_mut().zip(history.row(t)).for_each(|(a, b)| *a += b);
    }
    let n = (origin - from).max(1) as f64;
    first.iter_mut().for_each(|v| *v /= n);
    rest.chunks_mut(ne).for_each(|o| o.copy_from_slice(first));
    ne
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layer_and_series_fallbacks_agree_bit_for_bit() {
        // 2 experts, 150 steps
        let p: Vec<f64> = (0..300).map(|i| ((i * 37 % 101) as f64) / 101.0).collect();
        let v = LayerView::new(&p, 2);
        for origin in [1, 7, 100, 150] {
            let mut out = vec![0.0; 3 * 2];
            assert_eq!(layer(&v.until(origin), origin, &mut out), 2);
            for e in 0..2 {
                let y: Vec<f64> = (0..origin).map(|t| v.at(t, e)).collect();
                let s = series(&y, 3);
                let got: Vec<f64> = (0..3).map(|k| out[k * 2 + e]).collect();
                assert_eq!(got, s, "origin {origin}, expert {e}");
            }
        }
        // a hand-computed case: history .2 .4 .6 of one expert
        assert_eq!(series(&[0.2, 0.4, 0.6], 2), vec![0.4000000000000001; 2]);
    }
}
