//! Windows of expert shares as network inputs and targets, normalised per window.
//!
//! A window of `L` steps ending before step `t` is centred on its own mean and
//! divided by its own standard deviation, per expert series (floored at
//! [`MIN_SCALE`]); the targets `p[t .. t+k]` are expressed on the same scale, so
//! the network predicts the deviation of the next steps from the recent level.
//! The normalisation needs nothing but the window, so a model trained on one trace
//! applies to any other (and to any number of experts in `global` mode), and no
//! statistic of the future enters an input. Normalised values are clipped to
//! ±[`CLIP`] (jumps in the transient regime).

use super::Mode;
use crate::forecast::LayerView;

/// Smallest per-window scale of a share series.
pub const MIN_SCALE: f64 = 1e-5;
/// Normalised inputs and targets are clipped to ± this.
pub const CLIP: f64 = 10.0;

/// One window: layer `layer`, ending before step index `t`; `expert` in `global`
/// mode (ignored in `joint` mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub layer: u32,
    pub t: u32,
    pub expert: u32,
}

/// The layers a model reads, with the shapes of its inputs and outputs.
pub struct Windows<'a> {
    pub layers: Vec<LayerView<'a>>,
    pub mode: Mode,
    pub lookback: usize,
    pub k: usize,
}

impl<'a> Windows<'a> {
    /// Features a step: every expert's share (`joint`) or one share (`global`).
    pub fn d_in(&self) -> usize {
        match self.mode {
            Mode::Joint => self.layers[0].experts(),
            Mode::Global => 1,
        }
    }
    /// Series a sample predicts.
    pub fn width(&self) -> usize {
        self.d_in()
    }
    /// Numbers the network writes per sample: `k` steps of every predicted series.
    pub fn d_out(&self) -> usize {
        self.k * self.width()
    }

    /// Every window ending at a step index in `range` (per layer: `(layer, from, to)`,
    /// `t` from `from` to `to` inclusive), in order.
    pub fn samples(&self, ranges: &[(usize, usize, usize)]) -> Vec<Sample> {
        let mut out = Vec::new();
        for &(l, from, to) in ranges {
            for t in from..=to {
                match self.mode {
                    Mode::Joint => out.push(Sample { layer: l as u32, t: t as u32, expert: 0 }),
                    Mode::Global => {
                        for e in 0..self.layers[l].experts() {
                            out.push(Sample { layer: l as u32, t: t as u32, expert: e as u32 });
                        }
                    }
                }
            }
        }
        out
    }

    /// Appends the normalised input of `s` (`L × d_in`, step-major) to `x`, its
    /// target (`k × width`, step-major) to `y` when given, and each predicted
    /// series' `(level, scale)` to `norms`.
    pub fn fill(&self, s: &Sample, x: &mut Vec<f32>, y: Option<&mut Vec<f32>>, norms: &mut Vec<(f64, f64)>) {
        let layer = &self.layers[s.layer as usize];
        let (t, l) = (s.t as usize, self.lookback);
        let series: Vec<usize> = match self.mode {
            Mode::Joint => (0..layer.experts()).collect(),
            Mode::Global => vec![s.expert as usize],
        };
        let first = norms.len();
        for &e in &series {
            let (mut sum, mut sq) = (0.0, 0.0);
            for i in t - l..t {
                sum += layer.at(i, e);
            }
            let mean = sum / l as f64;
            for i in t - l..t {
                let d = layer.at(i, e) - mean;
                sq += d * d;
            }
            norms.push((mean, (sq / l as f64).sqrt().max(MIN_SCALE)));
        }
        let norms = &norms[first..];
        let z = |v: f64, n: (f64, f64)| (((v - n.0) / n.1).clamp(-CLIP, CLIP)) as f32;
        for i in t - l..t {
            for (j, &e) in series.iter().enumerate() {
                x.push(z(layer.at(i, e), norms[j]));
            }
        }
        if let Some(y) = y {
            for i in t..t + self.k {
                for (j, &e) in series.iter().enumerate() {
                    y.push(z(layer.at(i, e), norms[j]));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_normalised_by_their_own_mean_and_std() {
        // Two experts, six steps.
        let p = [0.2, 0.8, 0.4, 0.6, 0.6, 0.4, 0.3, 0.7, 0.5, 0.5, 0.1, 0.9];
        let layer = LayerView::new(&p, 2);
        let w = Windows { layers: vec![layer], mode: Mode::Joint, lookback: 3, k: 2 };
        let (mut x, mut y, mut n) = (Vec::new(), Vec::new(), Vec::new());
        w.fill(&Sample { layer: 0, t: 3, expert: 0 }, &mut x, Some(&mut y), &mut n);
        // Expert 0 window 0.2, 0.4, 0.6: mean 0.4, population std sqrt(0.08/3).
        let sd = (0.08f64 / 3.0).sqrt();
        assert!((n[0].0 - 0.4).abs() < 1e-12 && (n[0].1 - sd).abs() < 1e-12);
        assert!((n[1].0 - 0.6).abs() < 1e-12 && (n[1].1 - sd).abs() < 1e-12);
        let want_x = [-0.2 / sd, 0.2 / sd, 0.0, 0.0, 0.2 / sd, -0.2 / sd];
        let want_y = [-0.1 / sd, 0.1 / sd, 0.1 / sd, -0.1 / sd];
        for (a, b) in x.iter().zip(want_x) {
            assert!((*a as f64 - b).abs() < 1e-5, "{x:?}");
        }
        for (a, b) in y.iter().zip(want_y) {
            assert!((*a as f64 - b).abs() < 1e-5, "{y:?}");
        }
        // Global mode: one series per sample, one sample per expert.
        let g = Windows { layers: vec![layer], mode: Mode::Global, lookback: 3, k: 2 };
        let s = g.samples(&[(0, 3, 4)]);
        assert_eq!(s.len(), 4);
        let (mut x, mut n) = (Vec::new(), Vec::new());
        g.fill(&s[1], &mut x, None, &mut n);
        assert_eq!(x.len(), 3);
        assert!((n[0].0 - 0.6).abs() < 1e-12 && (x[0] as f64 - 0.2 / sd).abs() < 1e-5);
    }
}
