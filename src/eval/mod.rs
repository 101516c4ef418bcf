//! The rolling-origin protocol and its metrics (docs/reference.md, "Forecasting protocol"
//! and "Metrics").
//!
//! Every forecaster of a run is scored on the same origins `start, start +
//! stride, ...`; horizon `h` on the origins with `o + h <= T`. For horizon `h` the
//! first `h` predicted steps are scored:
//! `mae_pp = 100 · mean |p̂ − p|`, `rmse_pp = 100 · sqrt(mean (p̂ − p)²)` over every
//! (origin, expert, step), and `tv_pct = 100 · mean over (origin, step) of
//! ½ Σ_e |p̂ − p|`.

use crate::forecast::{FitContext, Forecaster, LayerView, renormalize};

/// Which origins a score covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Regime {
    All,
    /// Origins at or after the layer's transition step.
    Stable,
}

impl Regime {
    pub fn as_str(&self) -> &'static str {
        match self {
            Regime::All => "all",
            Regime::Stable => "stable",
        }
    }
}

/// How forecasts are made and scored.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Protocol {
    /// Ascending, distinct horizons.
    pub horizons: Vec<usize>,
    pub stride: usize,
    /// The first origin (step index).
    pub start: usize,
    /// Clip at 0 and renormalise real forecasts.
    pub renormalize: bool,
}

impl Protocol {
    pub fn max_horizon(&self) -> usize {
        *self.horizons.last().expect("at least one horizon")
    }
    /// Origins for a trace of `steps` steps: every origin with at least one step to score.
    pub fn origins(&self, steps: usize) -> Vec<usize> {
        (self.start.max(1)..steps).step_by(self.stride).collect()
    }
}

/// The default first origin: the longest history any forecaster needs (at least 1).
pub fn default_start(forecasters: &[Box<dyn Forecaster>]) -> usize {
    forecasters.iter().map(|f| f.history()).max().unwrap_or(1).max(1)
}

/// One row of `metrics.parquet` for a (layer, forecaster).
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    pub horizon: usize,
    pub regime: Regime,
    pub origins: u64,
    /// `None` when no origin was scored.
    pub mae_pp: Option<f64>,
    pub rmse_pp: Option<f64>,
    pub tv_pct: Option<f64>,
    pub fallbacks: u64,
}

#[derive(Default, Clone)]
struct Acc {
    abs: f64,
    sq: f64,
    cells: u64,
    steps: u64,
    origins: u64,
    fallbacks: u64,
}

impl Acc {
    fn score(&self, horizon: usize, regime: Regime) -> Score {
        let has = self.cells > 0;
        Score {
            horizon,
            regime,
            origins: self.origins,
            mae_pp: has.then(|| 100.0 * self.abs / self.cells as f64),
            rmse_pp: has.then(|| 100.0 * (self.sq / self.cells as f64).sqrt()),
            tv_pct: has.then(|| 100.0 * 0.5 * self.abs / self.steps as f64),
            fallbacks: self.fallbacks,
        }
    }
}

/// Forecasts kept for `forecasts.parquet`: each origin's prediction as it came,
/// without the columns that follow from the origin and the layer (expert, step
/// ahead, actual value), which [`SavedForecasts::rows`] rebuilds while writing.
/// That keeps 8 bytes a row in memory (16 with standard errors) instead of 56.
#[derive(Debug, Default, Clone)]
pub struct SavedForecasts {
    /// Origin (step index) and steps predicted, per origin.
    origins: Vec<(usize, usize)>,
    /// Step-major predictions of every origin, one after another.
    predicted: Vec<f64>,
    /// The model's standard errors laid out like `predicted` (NaN: none), or empty
    /// when the forecaster gave none at all.
    stderr: Vec<f64>,
}

/// One row of `forecasts.parquet` for a layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SavedRow {
    pub expert: usize,
    /// Origin as a step index.
    pub origin: usize,
    pub k: usize,
    pub predicted: f64,
    pub actual: f64,
    /// The model's standard error of `predicted` (ARIMA), before renormalisation.
    pub stderr: Option<f64>,
}

impl SavedForecasts {
    /// Room for `rows` predictions (see [`saved_rows`]), so that keeping them never
    /// holds twice their size while a vector grows.
    pub fn with_capacity(rows: usize) -> SavedForecasts {
        SavedForecasts { predicted: Vec::with_capacity(rows), ..Default::default() }
    }
    fn push(&mut self, layer: &LayerView, origin: usize, pred: &[f64], se: Option<&[f64]>) {
        let before = self.predicted.len();
        self.origins.push((origin, pred.len() / layer.experts()));
        self.predicted.extend_from_slice(pred);
        match se {
            Some(se) => {
                self.stderr.resize(before, f64::NAN);
                self.stderr.extend_from_slice(se);
            }
            None if !self.stderr.is_empty() => self.stderr.resize(self.predicted.len(), f64::NAN),
            None => {}
        }
    }
    pub fn len(&self) -> usize {
        self.predicted.len()
    }
    pub fn is_empty(&self) -> bool {
        self.predicted.is_empty()
    }
    /// The rows in file order (origin, then step ahead, then expert); `layer` is the
    /// layer the forecasts were made on.
    pub fn rows<'a>(&'a self, layer: &'a LayerView<'a>) -> impl Iterator<Item = SavedRow> + 'a {
        let ne = layer.experts();
        let mut first = 0;
        self.origins.iter().flat_map(move |&(origin, len)| {
            let base = first;
            first += len * ne;
            (0..len * ne).map(move |j| {
                let (k, e) = (j / ne, j % ne);
                SavedRow {
                    expert: e,
                    origin,
                    k,
                    predicted: self.predicted[base + j],
                    actual: layer.at(origin + k, e),
                    stderr: self.stderr.get(base + j).copied().filter(|v| v.is_finite()),
                }
            })
        })
    }
}

/// Rows `forecasts.parquet` gets from one (layer, forecaster): every origin's
/// forecast up to the largest horizon or the trace's end, for every expert.
pub fn saved_rows(proto: &Protocol, steps: usize, experts: usize) -> u64 {
    proto.origins(steps).iter().map(|&o| (proto.max_horizon().min(steps - o) * experts) as u64).sum()
}

/// Scores one forecaster on one layer. `stable_from` is the layer's transition
/// step index (`None`: no stable origins). Returns one score per horizon and
/// regime, horizons ascending, `all` before `stable`.
pub fn evaluate_layer(
    layer: &LayerView,
    f: &dyn Forecaster,
    proto: &Protocol,
    stable_from: Option<usize>,
    save: Option<&mut SavedForecasts>,
) -> anyhow::Result<Vec<Score>> {
    evaluate_layer_progress(layer, f, proto, stable_from, save, &FitContext::cpu(), &|_| {})
}

/// [`evaluate_layer`] fitting with `ctx`, calling `done(experts)` as each origin's
/// forecast of every expert series arrives (for a progress bar of series forecasts
/// per second). The forecaster is fitted once, on the steps before the first origin.
pub fn evaluate_layer_progress(
    layer: &LayerView,
    f: &dyn Forecaster,
    proto: &Protocol,
    stable_from: Option<usize>,
    mut save: Option<&mut SavedForecasts>,
    ctx: &FitContext,
    done: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<Vec<Score>> {
    let nt = layer.steps();
    let ne = layer.experts();
    let origins = proto.origins(nt);
    let fitted = match origins.first() {
        Some(&first) => Some(f.fit(&layer.until(first), ctx)?),
        None => None,
    };
    let nh = proto.horizons.len();
    let mut acc = vec![[Acc::default(), Acc::default()]; nh];
    let is_stable = |o: usize| stable_from.is_some_and(|s| o >= s);
    let real = f.is_real() && proto.renormalize;

    // Per-step error sums of one prediction: (Σ_e |err|, Σ_e err²).
    let step_errors = |o: usize, pred: &[f64]| -> Vec<(f64, f64)> {
        pred.chunks(ne)
            .enumerate()
            .map(|(k, row)| {
                let actual = layer.row(o + k);
                row.iter().zip(actual).fold((0.0, 0.0), |(a, s), (p, y)| {
                    let d = p - y;
                    (a + d.abs(), s + d * d)
                })
            })
            .collect()
    };
    let add = |acc: &mut [Acc; 2], o: usize, errs: &[(f64, f64)], fb: usize| {
        let (abs, sq) = errs.iter().fold((0.0, 0.0), |(a, s), (x, y)| (a + x, s + y));
        let h = errs.len() as u64;
        for (r, a) in acc.iter_mut().enumerate() {
            if r == 1 && !is_stable(o) {
                continue;
            }
            a.abs += abs;
            a.sq += sq;
            a.cells += h * ne as u64;
            a.steps += h;
            a.origins += 1;
            a.fallbacks += fb as u64;
        }
    };

    if let Some(fitted) = fitted.as_deref()
        && f.horizon_dependent()
    {
        for (hi, &h) in proto.horizons.iter().enumerate() {
            let os: Vec<usize> = origins.iter().copied().filter(|&o| o + h <= nt).collect();
            let lens = vec![h; os.len()];
            fitted.predict_origins(layer, &os, &lens, &mut |i, pred, _, fb| {
                if hi == 0 {
                    done(ne as u64);
                }
                if real {
                    renormalize(pred, ne);
                }
                add(&mut acc[hi], os[i], &step_errors(os[i], pred), fb);
            })?;
        }
        if let Some(s) = save.as_deref_mut() {
            let lens: Vec<usize> = origins.iter().map(|&o| proto.max_horizon().min(nt - o)).collect();
            fitted.predict_origins(layer, &origins, &lens, &mut |i, pred, se, _| s.push(layer, origins[i], pred, se))?;
        }
    } else if let Some(fitted) = fitted.as_deref() {
        let lens: Vec<usize> = origins.iter().map(|&o| proto.max_horizon().min(nt - o)).collect();
        fitted.predict_origins(layer, &origins, &lens, &mut |i, pred, se, fb| {
            done(ne as u64);
            let o = origins[i];
            if real {
                renormalize(pred, ne);
            }
            let errs = step_errors(o, pred);
            for (hi, &h) in proto.horizons.iter().enumerate() {
                if h <= errs.len() {
                    add(&mut acc[hi], o, &errs[..h], fb);
                }
            }
            if let Some(s) = save.as_deref_mut() {
                s.push(layer, o, pred, se);
            }
        })?;
    }
    let mut out = Vec::with_capacity(2 * nh);
    for (hi, &h) in proto.horizons.iter().enumerate() {
        out.push(acc[hi][0].score(h, Regime::All));
        out.push(acc[hi][1].score(h, Regime::Stable));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::{Last, OracleMedian, WindowMean};

    // Two experts, 5 steps: e0 = .5 .2 .4 .1 .3
    const P: [f64; 10] = [0.5, 0.5, 0.2, 0.8, 0.4, 0.6, 0.1, 0.9, 0.3, 0.7];

    fn proto(h: &[usize], start: usize, stride: usize) -> Protocol {
        Protocol { horizons: h.to_vec(), stride, start, renormalize: true }
    }

    #[test]
    fn origins_follow_start_and_stride() {
        assert_eq!(proto(&[1], 2, 2).origins(7), vec![2, 4, 6]);
        assert_eq!(proto(&[1], 0, 3).origins(7), vec![1, 4]);
    }

    #[test]
    fn last_scored_by_hand() {
        let v = LayerView::new(&P, 2);
        // origins 2 and 4 (start 2, stride 2); horizons 1 and 2; e1 mirrors e0.
        // o=2: pred p[1] = .2 ; actual .4 (err .2), .1 (err .1)
        // o=4: pred p[3] = .1 ; actual .3 (err .2), and no step 5
        let s = evaluate_layer(&v, &Last, &proto(&[1, 2], 2, 2), Some(3), None).unwrap();
        let h1 = &s[0];
        assert_eq!((h1.horizon, h1.regime, h1.origins), (1, Regime::All, 2));
        assert!((h1.mae_pp.unwrap() - 20.0).abs() < 1e-9);
        assert!((h1.rmse_pp.unwrap() - 20.0).abs() < 1e-9);
        // tv per (origin, step) = (.2 + .2) / 2
        assert!((h1.tv_pct.unwrap() - 20.0).abs() < 1e-9);
        // horizon 2: origin 2 only, errors .2 .2 .1 .1
        let h2 = &s[2];
        assert_eq!((h2.horizon, h2.origins), (2, 1));
        assert!((h2.mae_pp.unwrap() - 15.0).abs() < 1e-9);
        assert!((h2.rmse_pp.unwrap() - 100.0 * 0.025f64.sqrt()).abs() < 1e-9);
        assert!((h2.tv_pct.unwrap() - 15.0).abs() < 1e-9);
        // stable from step 3: origin 4 only, at h = 1; none at h = 2
        assert_eq!((s[1].regime, s[1].origins), (Regime::Stable, 1));
        assert!((s[1].mae_pp.unwrap() - 20.0).abs() < 1e-9);
        assert_eq!((s[3].origins, s[3].mae_pp), (0, None));
    }

    #[test]
    fn horizons_past_the_end_score_fewer_origins() {
        let v = LayerView::new(&P, 2);
        let s = evaluate_layer(&v, &WindowMean { w: 1 }, &proto(&[1, 4], 1, 1), None, None).unwrap();
        assert_eq!(s[0].origins, 4); // origins 1..=4
        assert_eq!(s[2].origins, 1); // only origin 1 has 4 steps ahead
        assert_eq!(s[1].origins, 0);
        assert_eq!(s[1].mae_pp, None);
    }

    #[test]
    fn a_window_median_is_scored_by_hand() {
        // median:w=3 on two experts, e0 = .1 .9 .3 .5 .2 .4 (e1 = 1 - e0); origins 3 and
        // 5, horizon 1: e0 predicted .3 (median .1 .9 .3) vs .5, then .3 (median .3 .5 .2)
        // vs .4, and e1 mirrors it: errors .2, .2, .1, .1.
        let p = [0.1, 0.9, 0.9, 0.1, 0.3, 0.7, 0.5, 0.5, 0.2, 0.8, 0.4, 0.6];
        let v = LayerView::new(&p, 2);
        let f = crate::forecast::parse_spec("median:w=3").unwrap();
        let s = evaluate_layer(&v, f.as_ref(), &proto(&[1], 3, 2), None, None).unwrap();
        assert_eq!(s[0].origins, 2);
        assert!((s[0].mae_pp.unwrap() - 15.0).abs() < 1e-9, "{:?}", s[0]);
    }

    #[test]
    fn oracle_uses_the_median_of_each_horizon() {
        let v = LayerView::new(&P, 2);
        // origin 1, h = 3: e0 future .2 .4 .1 -> median .2, errors 0 .2 .1 -> mean .1
        let s = evaluate_layer(&v, &OracleMedian, &proto(&[3], 1, 10), None, None).unwrap();
        assert!((s[0].mae_pp.unwrap() - 10.0).abs() < 1e-9);
    }

    #[test]
    fn saved_standard_errors_stay_with_their_rows() {
        let v = LayerView::new(&P, 2);
        let mut saved = SavedForecasts::default();
        saved.push(&v, 1, &[0.5, 0.5], None);
        saved.push(&v, 2, &[0.3, 0.7], Some(&[0.01, f64::INFINITY]));
        saved.push(&v, 3, &[0.2, 0.8], None);
        let se: Vec<Option<f64>> = saved.rows(&v).map(|r| r.stderr).collect();
        assert_eq!(se, vec![None, None, Some(0.01), None, None, None]);
        let actual: Vec<f64> = saved.rows(&v).map(|r| r.actual).collect();
        assert_eq!(actual, vec![0.2, 0.8, 0.4, 0.6, 0.1, 0.9]);
    }

    #[test]
    fn saved_forecasts_hold_prediction_and_actual() {
        let v = LayerView::new(&P, 2);
        let mut saved = SavedForecasts::default();
        let p = proto(&[2], 3, 10);
        evaluate_layer(&v, &Last, &p, None, Some(&mut saved)).unwrap();
        assert_eq!(saved.len(), 4);
        assert_eq!(saved_rows(&p, 5, 2), 4);
        let rows: Vec<SavedRow> = saved.rows(&v).collect();
        assert_eq!(rows.iter().map(|r| r.k).collect::<Vec<_>>(), vec![0, 0, 1, 1]);
        assert_eq!(rows.iter().map(|r| r.expert).collect::<Vec<_>>(), vec![0, 1, 0, 1]);
        assert_eq!(rows.iter().map(|r| r.origin).collect::<Vec<_>>(), vec![3; 4]);
        assert_eq!(rows.iter().map(|r| r.predicted).collect::<Vec<_>>(), vec![0.4, 0.6, 0.4, 0.6]);
        assert_eq!(rows.iter().map(|r| r.actual).collect::<Vec<_>>(), vec![0.1, 0.9, 0.3, 0.7]);
        assert!(rows.iter().all(|r| r.stderr.is_none()));
    }
}
