//! `linear`: the baseline every learned forecaster is reported against. A global
//! linear autoregression on the LSTM's per-window normalisation ([`lstm::data`]):
//! each expert series' last `lookback` shares, centred on their mean and divided
//! by their standard deviation, predict the next `k` normalised shares through one
//! `(lookback + 1) × k` matrix (the last row the intercept) shared by every series,
//! fitted by ridge least squares in closed form over every window of the training
//! series. Beyond `k` steps it predicts the window's level (as `lstm`'s
//! `multi=direct`).
//!
//! Without `model=`, a run fits one matrix per layer on the `train` steps before
//! the layer's first scored origin; with `model=DIR` it applies a matrix written by
//! `expertcast linear train` (`DIR/linear.json`), fitted on whole traces. The fit
//! and the forecasts run on the CPU on any device (a fit is one small Gram matrix,
//! a forecast one dot product per step).
//!
//! [`lstm::data`]: super::lstm::data

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use rayon::prelude::*;

use super::lstm::Mode;
use super::lstm::data::{Sample, Windows};
use super::{CheckError, Emit, FitContext, Fitted, Forecaster, Known, LayerView, Param, ParamError, Params, canonical, fallback};

const FORMAT: &str = "expertcast-linear";

const PARAMS: &[Param] = &[
    Param { key: "model", default: "", doc: "checkpoint directory from `expertcast linear train` (else fit per layer on the run's trace)" },
    Param { key: "lookback", default: "100", doc: "input steps" },
    Param { key: "k", default: "10", doc: "steps predicted (beyond k: the window's level)" },
    Param { key: "lambda", default: "0.001", doc: "ridge penalty per window (the intercept is not penalised)" },
    Param { key: "train", default: "2000", doc: "steps before the first origin to fit on (without model=)" },
];

pub static LINEAR: Known = Known {
    name: "linear",
    doc: "global ridge autoregression on per-window-normalised shares, fitted before the first origin or loaded with model=",
    params: PARAMS,
    build: |p| build(p).map(|f| Box::new(f) as Box<dyn Forecaster>),
};

/// The settings of a linear model.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, clap::Args)]
pub struct LinearConfig {
    /// Steps of input a forecast reads.
    #[arg(long, default_value = super::default_of("linear", "lookback"))]
    pub lookback: usize,
    /// Steps predicted (beyond k: the window's level).
    #[arg(long, default_value = super::default_of("linear", "k"))]
    pub k: usize,
    /// Ridge penalty per window (the intercept is not penalised).
    #[arg(long, default_value = super::default_of("linear", "lambda"))]
    pub lambda: f64,
}

impl LinearConfig {
    pub fn validate(&self) -> Result<(), ParamError> {
        if self.lookback < 2 {
            return Err(ParamError("lookback must be at least 2".into()));
        }
        if self.k < 1 {
            return Err(ParamError("k must be at least 1".into()));
        }
        if !(self.lambda >= 0.0 && self.lambda.is_finite()) {
            return Err(ParamError(format!("lambda={} must be a number >= 0", self.lambda)));
        }
        Ok(())
    }
}

/// A fitted matrix and what it was fitted on: `DIR/linear.json`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LinearModel {
    pub format: String,
    pub version: u32,
    pub config: LinearConfig,
    pub normalisation: String,
    pub trained_on: Vec<String>,
    /// Training windows (one per series and step).
    pub windows: usize,
    /// Mean squared error of the fit on its own windows, in units of each window's
    /// variance.
    pub train_loss: f64,
    /// `(lookback + 1) × k`, row-major; the last row is the intercept.
    pub weights: Vec<f64>,
}

impl LinearModel {
    pub fn read(dir: &Path) -> anyhow::Result<LinearModel> {
        let f = dir.join("linear.json");
        let text = std::fs::read_to_string(&f).with_context(|| format!("cannot read linear model {}", f.display()))?;
        let m: LinearModel = serde_json::from_str(&text).with_context(|| format!("{}: not an expertcast linear model", f.display()))?;
        if m.format != FORMAT || m.version != 1 {
            bail!("{}: format {:?} version {} is not {FORMAT} version 1", f.display(), m.format, m.version);
        }
        m.config.validate().map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
        if m.weights.len() != (m.config.lookback + 1) * m.config.k || m.weights.iter().any(|w| !w.is_finite()) {
            bail!("{}: weights must be {} finite numbers ((lookback + 1) × k)", f.display(), (m.config.lookback + 1) * m.config.k);
        }
        Ok(m)
    }

    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        crate::output::write_atomic(dir, "linear.json", (serde_json::to_string_pretty(self)? + "\n").as_bytes())
    }
}

/// The normal equations of one layer's windows: `XᵀX` (`(L+1)²`), `XᵀY`
/// (`(L+1) × k`), `ΣYᵀY`, and the window count; in f64.
#[derive(Clone)]
struct Normal {
    xtx: Vec<f64>,
    xty: Vec<f64>,
    yty: f64,
    n: usize,
}

impl Normal {
    fn zero(l: usize, k: usize) -> Normal {
        Normal { xtx: vec![0.0; (l + 1) * (l + 1)], xty: vec![0.0; (l + 1) * k], yty: 0.0, n: 0 }
    }
    fn add(&mut self, o: &Normal) {
        self.xtx.iter_mut().zip(&o.xtx).for_each(|(a, b)| *a += b);
        self.xty.iter_mut().zip(&o.xty).for_each(|(a, b)| *a += b);
        self.yty += o.yty;
        self.n += o.n;
    }
}

/// The normal equations of every window of one layer whose target ends before `end`.
fn layer_normal(layer: LayerView, end: usize, cfg: &LinearConfig) -> Normal {
    let (l, k) = (cfg.lookback, cfg.k);
    let mut acc = Normal::zero(l, k);
    if end < l + k {
        return acc;
    }
    let win = Windows { layers: vec![layer], mode: Mode::Global, lookback: l, k };
    let (mut x, mut y, mut norms) = (Vec::with_capacity(l), Vec::with_capacity(k), Vec::new());
    let mut xe = vec![0.0f64; l + 1];
    for t in l..=end - k {
        for e in 0..layer.experts() {
            x.clear();
            y.clear();
            norms.clear();
            win.fill(&Sample { layer: 0, t: t as u32, expert: e as u32 }, &mut x, Some(&mut y), &mut norms);
            for (d, s) in xe.iter_mut().zip(&x) {
                *d = *s as f64;
            }
            xe[l] = 1.0;
            for i in 0..=l {
                let xi = xe[i];
                for (a, xj) in acc.xtx[i * (l + 1)..(i + 1) * (l + 1)].iter_mut().zip(&xe) {
                    *a += xi * xj;
                }
                for (a, yj) in acc.xty[i * k..(i + 1) * k].iter_mut().zip(&y) {
                    *a += xi * *yj as f64;
                }
            }
            acc.yty += y.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>();
            acc.n += 1;
        }
    }
    acc
}

/// Solves `(XᵀX + λ n I') W = XᵀY` by Cholesky (`I'` leaves the intercept
/// unpenalised); returns W and the fit's mean squared error per target value.
fn solve(nq: &Normal, cfg: &LinearConfig) -> anyhow::Result<(Vec<f64>, f64)> {
    let (m, k) = (cfg.lookback + 1, cfg.k);
    if nq.n == 0 {
        bail!("no training window: the linear model needs at least lookback + k = {} steps", cfg.lookback + cfg.k);
    }
    let mut a = nq.xtx.clone();
    // A tiny ridge keeps constant series (all-zero windows) solvable with lambda = 0.
    for i in 0..cfg.lookback {
        a[i * m + i] += (cfg.lambda * nq.n as f64).max(1e-9 * nq.n as f64);
    }
    // One Cholesky solve per output step.
    let mut w = vec![0.0; m * k];
    for c in 0..k {
        let (mut f, mut b): (Vec<f64>, Vec<f64>) = (a.clone(), (0..m).map(|i| nq.xty[i * k + c]).collect());
        if !super::arima::lm::cholesky_solve(&mut f, &mut b, m) {
            bail!("the linear model's normal equations are singular (every training window constant?)");
        }
        for i in 0..m {
            w[i * k + c] = b[i];
        }
    }
    // SSE = YᵀY - 2 Wᵀ XᵀY + Wᵀ XᵀX W, per column.
    let mut sse = nq.yty;
    for c in 0..k {
        let mut q = 0.0;
        for i in 0..m {
            let mut row = 0.0;
            for j in 0..m {
                row += nq.xtx[i * m + j] * w[j * k + c];
            }
            q += w[i * k + c] * row;
            sse -= 2.0 * w[i * k + c] * nq.xty[i * k + c];
        }
        sse += q;
    }
    Ok((w, sse.max(0.0) / (nq.n * k) as f64))
}

/// Fits one matrix on the first `ends[i]` steps of every layer in `layers` (the
/// layers' equations summed in their order, so the result does not depend on the
/// thread count).
pub fn fit_layers(layers: &[LayerView], ends: &[usize], cfg: &LinearConfig) -> anyhow::Result<(Vec<f64>, f64, usize)> {
    cfg.validate()?;
    let parts: Vec<Normal> = layers.par_iter().zip(ends).map(|(v, &end)| layer_normal(*v, end, cfg)).collect();
    let mut all = Normal::zero(cfg.lookback, cfg.k);
    for p in &parts {
        all.add(p);
    }
    let (w, loss) = solve(&all, cfg)?;
    Ok((w, loss, all.n))
}

/// `expertcast linear train`: one matrix on every layer of `traces`.
pub fn fit_traces(traces: &[crate::trace::Trace], cfg: &LinearConfig) -> anyhow::Result<LinearModel> {
    let shares: Vec<Vec<f64>> = traces.iter().flat_map(|t| (0..t.layers()).map(move |l| t.layer_proportions(l))).collect();
    let experts = traces.iter().flat_map(|t| std::iter::repeat_n(t.experts(), t.layers()));
    let views: Vec<LayerView> = shares.iter().zip(experts).map(|(p, e)| LayerView::new(p, e)).collect();
    let ends: Vec<usize> = views.iter().map(|v| v.steps()).collect();
    let (weights, train_loss, windows) = fit_layers(&views, &ends, cfg)?;
    Ok(LinearModel {
        format: FORMAT.into(),
        version: 1,
        config: cfg.clone(),
        normalisation: super::lstm::NORMALISATION.into(),
        trained_on: traces.iter().map(|t| t.name.clone()).collect(),
        windows,
        train_loss,
        weights,
    })
}

/// `linear:...` in a run.
pub struct LinearForecaster {
    cfg: LinearConfig,
    train: usize,
    model: Option<(PathBuf, LinearModel)>,
}

fn build(p: &Params) -> Result<LinearForecaster, ParamError> {
    let model = p.get("model");
    if !model.is_empty() {
        if let Some(k) = p.given_keys().iter().find(|k| **k != "model") {
            return Err(ParamError(format!("{k} comes from the model given by model=")));
        }
        let dir = PathBuf::from(model);
        let m = LinearModel::read(&dir).map_err(|e| ParamError(format!("{e:#}")))?;
        return Ok(LinearForecaster { cfg: m.config.clone(), train: 0, model: Some((dir, m)) });
    }
    let lambda: f64 = p.get("lambda").parse().map_err(|_| ParamError(format!("lambda={} is not a number", p.get("lambda"))))?;
    let cfg = LinearConfig { lookback: p.usize("lookback", 2)?, k: p.usize("k", 1)?, lambda };
    cfg.validate()?;
    let train = p.usize("train", 1)?;
    if train < cfg.lookback + cfg.k {
        return Err(ParamError(format!("train={train} must be at least lookback + k = {}", cfg.lookback + cfg.k)));
    }
    Ok(LinearForecaster { cfg, train, model: None })
}

impl Forecaster for LinearForecaster {
    fn spec(&self) -> String {
        if let Some((dir, _)) = &self.model {
            return canonical("linear", &[("model", dir.display().to_string())]);
        }
        let c = &self.cfg;
        canonical(
            "linear",
            &[("lookback", c.lookback.to_string()), ("k", c.k.to_string()), ("lambda", c.lambda.to_string()), ("train", self.train.to_string())],
        )
    }
    fn history(&self) -> usize {
        if self.model.is_some() { self.cfg.lookback } else { self.train }
    }
    fn can_fall_back(&self) -> bool {
        true
    }
    fn check_start(&self, start: usize) -> Result<(), CheckError> {
        let need = self.cfg.lookback + self.cfg.k;
        if self.model.is_none() && start < need {
            return Err(CheckError::NoTrainingWindow { start, need });
        }
        Ok(())
    }
    fn fit(&self, history: &LayerView, _ctx: &FitContext) -> anyhow::Result<Box<dyn Fitted + '_>> {
        let weights = match &self.model {
            Some((_, m)) => m.weights.clone(),
            None => {
                let recent = history.since(history.steps().saturating_sub(self.train));
                fit_layers(&[recent], &[recent.steps()], &self.cfg)?.0
            }
        };
        Ok(Box::new(FittedLinear { cfg: self.cfg.clone(), weights }))
    }
}

struct FittedLinear {
    cfg: LinearConfig,
    weights: Vec<f64>,
}

impl FittedLinear {
    /// `len` steps of every expert (step-major) after `origin`.
    fn forecast(&self, layer: &LayerView, origin: usize, out: &mut [f64]) {
        let (l, k, ne) = (self.cfg.lookback, self.cfg.k, layer.experts());
        let len = out.len() / ne;
        let win = Windows { layers: vec![*layer], mode: Mode::Global, lookback: l, k };
        let (mut x, mut norms) = (Vec::with_capacity(l), Vec::new());
        for e in 0..ne {
            x.clear();
            norms.clear();
            win.fill(&Sample { layer: 0, t: origin as u32, expert: e as u32 }, &mut x, None, &mut norms);
            let (level, scale) = norms[0];
            for s in 0..len {
                out[s * ne + e] = if s < k {
                    let mut z = self.weights[l * k + s];
                    for (i, xi) in x.iter().enumerate() {
                        z += *xi as f64 * self.weights[i * k + s];
                    }
                    level + scale * z.clamp(-super::lstm::data::CLIP, super::lstm::data::CLIP)
                } else {
                    level
                };
            }
        }
    }
}

impl Fitted for FittedLinear {
    fn predict(&self, history: &LayerView, origin: usize, out: &mut [f64]) -> usize {
        if origin < self.cfg.lookback {
            return fallback::layer(history, origin, out);
        }
        self.forecast(history, origin, out);
        0
    }
    fn predict_origins(&self, layer: &LayerView, origins: &[usize], lens: &[usize], emit: &mut Emit<'_>) -> anyhow::Result<()> {
        let ne = layer.experts();
        let preds: Vec<(Vec<f64>, usize)> = origins
            .par_iter()
            .zip(lens)
            .map(|(&o, &len)| {
                let mut out = vec![0.0; len * ne];
                let fb = self.predict(&layer.until(o), o, &mut out);
                (out, fb)
            })
            .collect();
        for (i, (mut out, fb)) in preds.into_iter().enumerate() {
            emit(i, &mut out, None, fb);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An AR(2) series with a known rule, fitted with no penalty: the normalised
    /// rule is recovered, and a forecast continues the series.
    #[test]
    fn recovers_a_linear_rule_and_matches_a_float64_least_squares_fit() {
        // Two experts that mirror each other: p0 = 0.5 + 0.1 sin(0.3 t), p1 = 1 - p0.
        let steps = 400;
        let p: Vec<f64> = (0..steps)
            .flat_map(|t| {
                let a = 0.5 + 0.1 * (0.3 * t as f64).sin();
                [a, 1.0 - a]
            })
            .collect();
        let v = LayerView::new(&p, 2);
        let cfg = LinearConfig { lookback: 6, k: 2, lambda: 0.0 };
        let (w, loss, n) = fit_layers(&[v], &[steps], &cfg).unwrap();
        assert_eq!(n, 2 * (steps - 6 - 2 + 1));
        // A sinusoid obeys x_t = 2 cos(0.3) x_{t-1} - x_{t-2} exactly, and the
        // per-window normalisation is affine, so the fit is exact.
        assert!(loss < 1e-10, "loss {loss}");
        let f = FittedLinear { cfg: cfg.clone(), weights: w.clone() };
        let mut out = vec![0.0; 4 * 2];
        f.predict(&v.until(300), 300, &mut out);
        for s in 0..2 {
            let want = 0.5 + 0.1 * (0.3 * (300 + s) as f64).sin();
            assert!((out[s * 2] - want).abs() < 1e-5, "step {s}: {} vs {want}", out[s * 2]);
        }
        // Beyond k: the window's level.
        let level: f64 = (294..300).map(|t| v.at(t, 0)).sum::<f64>() / 6.0;
        assert!((out[2 * 2] - level).abs() < 1e-12 && (out[3 * 2] - level).abs() < 1e-12);

        // A penalised fit equals the float64 solution of the normal equations built
        // directly (Gauss-Jordan on the dense system).
        let cfg = LinearConfig { lookback: 4, k: 3, lambda: 0.01 };
        let noisy: Vec<f64> = (0..300).map(|t| 0.3 + 0.05 * ((t * 7919 % 101) as f64 / 101.0) + 0.02 * (0.1 * t as f64).cos()).collect();
        let v = LayerView::new(&noisy, 1);
        let (w, _, n) = fit_layers(&[v], &[300], &cfg).unwrap();
        let m = cfg.lookback + 1;
        let win = Windows { layers: vec![v], mode: Mode::Global, lookback: 4, k: 3 };
        let mut a = vec![vec![0.0f64; m + 3]; m];
        for t in 4..=297 {
            let (mut x, mut y, mut nn) = (Vec::new(), Vec::new(), Vec::new());
            win.fill(&Sample { layer: 0, t, expert: 0 }, &mut x, Some(&mut y), &mut nn);
            let mut xe: Vec<f64> = x.iter().map(|v| *v as f64).collect();
            xe.push(1.0);
            for i in 0..m {
                for j in 0..m {
                    a[i][j] += xe[i] * xe[j];
                }
                for c in 0..3 {
                    a[i][m + c] += xe[i] * y[c] as f64;
                }
            }
        }
        for (i, row) in a.iter_mut().enumerate().take(4) {
            row[i] += 0.01 * n as f64;
        }
        for c in 0..m {
            let piv = a[c][c];
            let row = a[c].clone();
            for (r, other) in a.iter_mut().enumerate() {
                if r != c {
                    let f = other[c] / piv;
                    other.iter_mut().zip(&row).for_each(|(o, v)| *o -= f * v);
                }
            }
        }
        for i in 0..m {
            for c in 0..3 {
                let want = a[i][m + c] / a[i][i];
                assert!((w[i * 3 + c] - want).abs() < 1e-9 * want.abs().max(1.0), "w[{i}][{c}] {} vs {want}", w[i * 3 + c]);
            }
        }
    }

    #[test]
    fn bad_parameters_and_short_histories_are_refused() {
        assert!(super::super::parse_spec("linear:lookback=1").is_err());
        assert!(super::super::parse_spec("linear:k=0").is_err());
        assert!(super::super::parse_spec("linear:lambda=-1").is_err());
        assert!(super::super::parse_spec("linear:train=10,lookback=20").is_err());
        assert_eq!(super::super::parse_spec("linear").unwrap().spec(), "linear:lookback=100,k=10,lambda=0.001,train=2000");
        let p = [0.5; 20];
        let v = LayerView::new(&p, 2);
        assert!(fit_layers(&[v], &[10], &LinearConfig { lookback: 8, k: 3, lambda: 0.0 }).is_err());
    }
}
