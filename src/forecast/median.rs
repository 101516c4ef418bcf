//! `median:w=W`: each expert's median share over the last `W` steps, for every
//! future step (the mean of the two middle values when `W` is even). Robust to the
//! single-step spikes a router's counts show, where `mean:w=W` follows them.

use super::simple::{stateless, windowed};
use super::{FitContext, Fitted, Forecaster, Known, LayerView, Param, canonical, column_medians, repeat_row};

windowed!(
    /// `median:w=W`.
    MEDIAN, WindowMedian, "median", "median of p[o-w .. o-1] for every future step";
    fn on_device(&self) -> Option<super::DeviceModel> {
        Some(super::DeviceModel::HostRows)
    }
);

impl Fitted for WindowMedian {
    fn flat(&self) -> bool {
        true
    }
    fn predict(&self, h: &LayerView, origin: usize, out: &mut [f64]) -> usize {
        repeat_row(out, &column_medians(h, origin - self.w, origin));
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::parse_spec;

    // Two experts, 6 steps: e0 = .1 .9 .3 .5 .2 .4, e1 = 1 - e0
    const P: [f64; 12] = [0.1, 0.9, 0.9, 0.1, 0.3, 0.7, 0.5, 0.5, 0.2, 0.8, 0.4, 0.6];

    #[test]
    fn the_median_of_the_window_by_hand() {
        let v = LayerView::new(&P, 2);
        let f = parse_spec("median:w=3").unwrap();
        assert_eq!(f.spec(), "median:w=3");
        assert_eq!(f.history(), 3);
        assert_eq!(parse_spec("median").unwrap().spec(), "median:w=100");
        let predict = |w: usize, origin: usize| {
            let mut out = vec![f64::NAN; 2 * 2];
            WindowMedian { w }.predict(&v.until(origin), origin, &mut out);
            out
        };
        // origin 4, w = 3: e0 sees .9 .3 .5 -> .5 ; e1 .1 .7 .5 -> .5
        assert_eq!(predict(3, 4), vec![0.5, 0.5, 0.5, 0.5]);
        // origin 5, w = 4: e0 .9 .3 .5 .2 -> (.3 + .5) / 2 = .4 ; e1 .1 .7 .5 .8 -> .6
        let out = predict(4, 5);
        assert!((out[0] - 0.4).abs() < 1e-15 && (out[1] - 0.6).abs() < 1e-15, "{out:?}");
        // a spike moves the mean, not the median
        let spiky = [0.2, 0.8, 0.2, 0.8, 0.9, 0.1, 0.2, 0.8];
        let s = LayerView::new(&spiky, 2);
        let mut out = vec![0.0; 2];
        WindowMedian { w: 4 }.predict(&s, 4, &mut out);
        assert_eq!(out, vec![0.2, 0.8]);
    }
}
