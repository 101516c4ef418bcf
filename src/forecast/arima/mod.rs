//! `arima:p=P,d=D,q=Q[,n=N][,method=css|ml|css-ml]...`: ARIMA per expert series.
//!
//! The series' last `n` shares before the origin are differenced `d` times; an
//! ARMA(p, q) (with a mean when `d = 0`, as R's `arima` and statsmodels do, or as
//! `mean=` says) is fitted by conditional sum of squares (`css`, on the coefficients
//! themselves, as R), exact Gaussian likelihood (`ml`, Chandrasekhar recursions from
//! the stationary covariance, coefficients kept stationary and invertible by R's PACF
//! transform), or CSS then ML (`css-ml`, the default). Both objectives are sums of
//! squares, minimised by Levenberg-Marquardt ([`lm`]); argmin's Nelder-Mead takes
//! over if LM fails (or always, with `opt=nm`). The experts of a layer fit in
//! parallel; with `warm=true` each series' fits walk its origins in order, each
//! starting from the previous origin's parameters. A fit that fails falls back to
//! `mean:w=100` for that series and origin and is counted in `fallbacks`.
//! [`auto`] is `arima-auto`'s order selection.

pub mod auto;
pub mod lm;
pub mod model;

use argmin::core::{CostFunction, Executor};
use argmin::solver::neldermead::NelderMead;
use rayon::prelude::*;

use super::{Emit, FitContext, Fitted, Forecaster, Known, LayerView, Param, Params, ParamError, fallback, canonical};
use model::{Arma, css, filter, forecast_mean, partrans};

pub static ARIMA: Known = Known {
    name: "arima",
    doc: "ARIMA(p, d, q) per expert series, refitted at every origin",
    params: &[
        Param { key: "p", default: "5", doc: "AR order" },
        Param { key: "d", default: "1", doc: "differences" },
        Param { key: "q", default: "5", doc: "MA order" },
        Param { key: "n", default: "1000", doc: "observations before the origin used by a fit" },
        Param { key: "method", default: "css-ml", doc: "css, ml or css-ml" },
        Param { key: "mean", default: "auto", doc: "constant of the differenced series: auto (only when d=0), true (mean or drift), false" },
        Param { key: "opt", default: "lm", doc: "optimiser: lm (Levenberg-Marquardt) or nm (argmin's Nelder-Mead)" },
        Param { key: "warm", default: "false", doc: "start each origin's fit from the previous origin's parameters (faster, less accurate: BENCHMARKS.md)" },
    ],
    build: |p| Ok(Box::new(ArimaForecaster::from_params(p)?)),
};

pub static ARIMA_AUTO: Known = Known {
    name: "arima-auto",
    doc: "ARIMA with d, p, q and constant chosen at every origin (KPSS, stepwise AICc, as statsforecast's AutoARIMA)",
    params: &[
        Param { key: "max_p", default: "5", doc: "largest AR order" },
        Param { key: "max_q", default: "5", doc: "largest MA order" },
        Param { key: "max_d", default: "2", doc: "most differences" },
        Param { key: "start_p", default: "2", doc: "AR order the search starts from" },
        Param { key: "start_q", default: "2", doc: "MA order the search starts from" },
        Param { key: "n", default: "1000", doc: "observations before the origin used by a fit" },
        Param { key: "approx", default: "false", doc: "CSS fits during the search: false (statsforecast AutoARIMA's default), true, or auto (when n > 150, R's auto.arima)" },
    ],
    build: |p| Ok(Box::new(ArimaForecaster::auto_from_params(p)?)),
};

/// Observations an ARIMA(p, d, q) fit needs before its first origin: `d` for the
/// differences plus at least 50 (Box and Jenkins' minimum) and at least 10 for each
/// of the `p + q + 1` coefficients. ARIMA(5,1,5): 111 steps.
pub fn min_history(p: usize, d: usize, q: usize) -> usize {
    d + 50usize.max(10 * (p + q + 1))
}

/// How parameters are estimated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Css,
    Ml,
    CssMl,
}

impl Method {
    pub fn parse(s: &str) -> Result<Method, ParamError> {
        match s {
            "css" => Ok(Method::Css),
            "ml" => Ok(Method::Ml),
            "css-ml" => Ok(Method::CssMl),
            _ => Err(ParamError(format!("method={s} must be css, ml or css-ml"))),
        }
    }
    fn as_str(&self) -> &'static str {
        match self {
            Method::Css => "css",
            Method::Ml => "ml",
            Method::CssMl => "css-ml",
        }
    }
}

/// The minimiser behind `css` and `ml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Optimizer {
    /// Levenberg-Marquardt on the residuals (the default); Nelder-Mead if it fails.
    Lm,
    /// argmin's Nelder-Mead on the objective.
    NelderMead,
}

impl Optimizer {
    pub fn parse(s: &str) -> Result<Optimizer, ParamError> {
        match s {
            "lm" => Ok(Optimizer::Lm),
            "nm" => Ok(Optimizer::NelderMead),
            _ => Err(ParamError(format!("opt={s} must be lm (Levenberg-Marquardt) or nm (Nelder-Mead)"))),
        }
    }
    fn as_str(&self) -> &'static str {
        match self {
            Optimizer::Lm => "lm",
            Optimizer::NelderMead => "nm",
        }
    }
}

/// A fitted model.
#[derive(Debug, Clone)]
pub struct Fit {
    pub model: Arma,
    pub sigma2: f64,
    /// Exact log-likelihood (for `css`: evaluated at the CSS estimates).
    pub loglik: f64,
    /// Unconstrained parameters, the warm start of the next fit.
    pub raw: Vec<f64>,
    /// Objective evaluations the fit used.
    pub evals: usize,
    /// The Kalman filter at the estimates (its final state starts the forecasts);
    /// `None` for a non-stationary CSS fit.
    pub filtered: Option<model::Filtered>,
}

/// Order and estimation settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Order {
    pub p: usize,
    pub q: usize,
    pub mean: bool,
}

impl Order {
    /// The model of a parameter vector `[ar..., ma..., mean]`: with `transform`, AR
    /// and MA values are unconstrained and mapped to stationary and invertible
    /// coefficients (R's transform, used for ML); without, they are the
    /// coefficients themselves (R's CSS, which lets the search leave that region).
    fn model(&self, raw: &[f64], transform: bool) -> Arma {
        let (p, q) = (self.p, self.q);
        if !transform {
            return Arma { ar: raw[..p].to_vec(), ma: raw[p..p + q].to_vec(), mean: if self.mean { raw[p + q] } else { 0.0 } };
        }
        Arma {
            ar: partrans(&raw[..p]),
            ma: partrans(&raw[p..p + q]).into_iter().map(|v| -v).collect(),
            mean: if self.mean { raw[p + q] } else { 0.0 },
        }
    }

    /// Coefficients to the unconstrained values of [`Order::model`] with transform;
    /// an AR part that is not stationary, or an MA part that is not invertible,
    /// starts from zeros instead.
    fn to_transformed(&self, coefs: &[f64]) -> Vec<f64> {
        let (p, q) = (self.p, self.q);
        let mut out = coefs.to_vec();
        let ar = model::invtrans(&coefs[..p]).unwrap_or_else(|| vec![0.0; p]);
        let neg_ma: Vec<f64> = coefs[p..p + q].iter().map(|v| -v).collect();
        let ma = model::invtrans(&neg_ma).unwrap_or_else(|| vec![0.0; q]);
        out[..p].copy_from_slice(&ar);
        out[p..p + q].copy_from_slice(&ma);
        out
    }
}

struct Objective<'a> {
    x: &'a [f64],
    order: Order,
    ml: bool,
    evals: std::cell::Cell<usize>,
}

impl CostFunction for Objective<'_> {
    type Param = Vec<f64>;
    type Output = f64;
    fn cost(&self, raw: &Vec<f64>) -> Result<f64, argmin::core::Error> {
        self.evals.set(self.evals.get() + 1);
        let m = self.order.model(raw, self.ml);
        let v = if self.ml {
            filter(self.x, &m).map(|f| -f.loglik_concentrated() / f.n as f64)
        } else {
            let (ssq, n) = css(self.x, &m);
            (n > 0 && ssq > 0.0).then(|| 0.5 * (ssq / n as f64).ln())
        };
        Ok(v.filter(|v| v.is_finite()).unwrap_or(1e10))
    }
}

fn nelder_mead(x: &[f64], order: Order, ml: bool, start: &[f64], scale_mean: f64) -> Option<(Vec<f64>, usize)> {
    let k = start.len();
    if k == 0 {
        return Some((Vec::new(), 0));
    }
    let mut simplex = vec![start.to_vec()];
    for i in 0..k {
        let mut v = start.to_vec();
        v[i] += if order.mean && i == k - 1 { scale_mean } else { 0.1 };
        simplex.push(v);
    }
    let solver = NelderMead::new(simplex).with_sd_tolerance(1e-9).ok()?;
    let res = Executor::new(Objective { x, order, ml, evals: Default::default() }, solver).configure(|s| s.max_iters(400 * k as u64)).run().ok()?;
    let evals = res.problem.problem.as_ref().map_or(0, |p| p.evals.get());
    let best = res.state.best_param?;
    (res.state.best_cost < 1e9).then_some((best, evals))
}

/// The residuals LM minimises: CSS residuals, or the scaled innovations of the
/// exact likelihood; difference points are evaluated [`model::LANES`] at a time.
struct ArmaResiduals<'a> {
    x: &'a [f64],
    order: Order,
    ml: bool,
}

impl lm::Residuals for ArmaResiduals<'_> {
    fn eval(&mut self, raw: &[f64], out: &mut Vec<f64>) -> bool {
        let mut ok = [false];
        self.eval_many(std::slice::from_ref(&raw.to_vec()), std::slice::from_mut(out), &mut ok);
        ok[0]
    }
    fn eval_many(&mut self, xs: &[Vec<f64>], outs: &mut [Vec<f64>], ok: &mut [bool]) {
        for ((xc, oc), kc) in xs.chunks(model::LANES).zip(outs.chunks_mut(model::LANES)).zip(ok.chunks_mut(model::LANES)) {
            let ms: Vec<Arma> = xc.iter().map(|raw| self.order.model(raw, self.ml)).collect();
            if self.ml {
                model::ml_residuals_lanes(self.x, &ms, oc, kc);
            } else {
                model::css_residuals_lanes(self.x, &ms, oc);
                kc.iter_mut().zip(oc.iter()).for_each(|(k, o)| *k = !o.is_empty());
            }
        }
    }
}

/// Stopping rules of the two LM stages.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    pub css: lm::Settings,
    pub ml: lm::Settings,
    /// Fail (as R's `arima` does) when the CSS stage of CSS-ML ends with a
    /// non-stationary AR part, instead of starting ML from zeros.
    pub strict: bool,
    /// Let argmin's Nelder-Mead take over when LM fails.
    pub nm_rescue: bool,
}

impl Default for Tuning {
    /// CSS only starts the likelihood search, so it stops sooner. ARMA(5,5) surfaces
    /// have long flat ridges (near-cancelling AR and MA roots) along which LM crawls;
    /// these limits (chosen on `make bench-arima-peers`, BENCHMARKS.md) reach
    /// statsforecast's likelihood or better on 94 of its 96 series with 419
    /// evaluations a fit, where 20 and 30 iterations took 682 and reached 92.
    fn default() -> Self {
        Tuning {
            css: lm::Settings { ftol: 1e-8, max_iter: 10, ..Default::default() },
            ml: lm::Settings { ftol: 1e-9, max_iter: 20, ..Default::default() },
            strict: false,
            nm_rescue: true,
        }
    }
}

fn levenberg_marquardt(x: &[f64], order: Order, ml: bool, start: &[f64], scale_mean: f64, tuning: &Tuning) -> Option<(Vec<f64>, usize)> {
    let k = start.len();
    let mut scale = vec![1.0; k];
    if order.mean {
        scale[k - 1] = scale_mean;
    }
    let settings = if ml { tuning.ml } else { tuning.css };
    let m = lm::minimize(ArmaResiduals { x, order, ml }, start, &scale, settings)?;
    (m.ssq > 0.0 && m.x.iter().all(|v| v.is_finite())).then_some((m.x, m.evals))
}

fn minimise(x: &[f64], order: Order, ml: bool, start: &[f64], scale_mean: f64, opt: Optimizer, tuning: &Tuning) -> Option<(Vec<f64>, usize)> {
    match opt {
        Optimizer::NelderMead => nelder_mead(x, order, ml, start, scale_mean),
        Optimizer::Lm => levenberg_marquardt(x, order, ml, start, scale_mean, tuning)
            .or_else(|| if tuning.nm_rescue { nelder_mead(x, order, ml, start, scale_mean) } else { None }),
    }
}

/// Fits ARMA(p, q) to `x` (already differenced), starting from `start` (unconstrained
/// parameters) or from zeros and the sample mean. `None` when the fit fails.
pub fn fit(x: &[f64], order: Order, method: Method, start: Option<&[f64]>) -> Option<Fit> {
    fit_with(x, order, method, start, Optimizer::Lm)
}

/// [`fit`] with a chosen optimiser.
pub fn fit_with(x: &[f64], order: Order, method: Method, start: Option<&[f64]>, opt: Optimizer) -> Option<Fit> {
    fit_tuned(x, order, method, start, opt, &Tuning::default())
}

/// Largest |unconstrained AR/MA value| a warm start keeps: tanh(4) = 0.9993, inside
/// the stationary and invertible region by a margin the filter can work with.
const WARM_MAX: f64 = 4.0;

/// [`fit_with`] with chosen stopping rules. A warm start is clamped into the region's
/// interior; if the fit from it fails, the cold fit (CSS first) is tried.
pub fn fit_tuned(x: &[f64], order: Order, method: Method, start: Option<&[f64]>, opt: Optimizer, tuning: &Tuning) -> Option<Fit> {
    let k = order.p + order.q + order.mean as usize;
    if let Some(s) = start.filter(|s| s.len() == k) {
        let transformed = method != Method::Css;
        let clamped: Vec<f64> =
            s.iter().enumerate().map(|(i, v)| if transformed && i < order.p + order.q { v.clamp(-WARM_MAX, WARM_MAX) } else { *v }).collect();
        // From the previous origin's optimum half the likelihood iterations do; no
        // Nelder-Mead from a warm start: a failure there goes to the cold fit.
        let warm_tuning = Tuning { nm_rescue: false, ml: lm::Settings { max_iter: tuning.ml.max_iter.div_ceil(2), ..tuning.ml }, ..*tuning };
        if let Some(f) = fit_from(x, order, method, Some(&clamped), opt, &warm_tuning) {
            return Some(f);
        }
    }
    fit_from(x, order, method, None, opt, tuning)
}

fn fit_from(x: &[f64], order: Order, method: Method, start: Option<&[f64]>, opt: Optimizer, tuning: &Tuning) -> Option<Fit> {
    let k = order.p + order.q + order.mean as usize;
    if x.len() <= order.p + order.q + 1 {
        return None;
    }
    let mean = x.iter().sum::<f64>() / x.len() as f64;
    let sd = (x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / x.len() as f64).sqrt().max(1e-12);
    let mut raw = match start {
        Some(s) if s.len() == k => s.to_vec(),
        _ => {
            let mut v = vec![0.0; k];
            if order.mean {
                v[k - 1] = mean;
            }
            v
        }
    };
    let warm = start.is_some();
    let mut evals = 0;
    if method == Method::Css || (method == Method::CssMl && !warm) {
        let (r, e) = minimise(x, order, false, &raw, 0.1 * sd, opt, tuning)?;
        raw = r;
        evals += e;
        if method == Method::CssMl {
            if tuning.strict && model::invtrans(&raw[..order.p]).is_none() {
                return None;
            }
            raw = order.to_transformed(&raw);
        }
    }
    if method != Method::Css {
        let (r, e) = minimise(x, order, true, &raw, 0.1 * sd, opt, tuning)?;
        raw = r;
        evals += e;
    }
    let model = order.model(&raw, method != Method::Css);
    // a CSS fit may be non-stationary: then it has no exact likelihood
    let filtered = filter(x, &model);
    let sigma2 = if method == Method::Css {
        let (ssq, n) = css(x, &model);
        ssq / n as f64
    } else {
        filtered.as_ref()?.sigma2()
    };
    let loglik = filtered.as_ref().map_or(f64::NAN, |f| f.loglik(sigma2));
    let ok = sigma2.is_finite() && sigma2 > 0.0 && (method == Method::Css || loglik.is_finite());
    ok.then_some(Fit { model, sigma2, loglik, raw, evals, filtered })
}

/// Differences `y` `d` times.
pub fn difference(y: &[f64], d: usize) -> Vec<f64> {
    let mut v = y.to_vec();
    for _ in 0..d {
        v = v.windows(2).map(|w| w[1] - w[0]).collect();
    }
    v
}

/// Turns forecasts of the `d`-times differenced series back into levels of `y`.
pub fn integrate(y: &[f64], d: usize, w: &[f64]) -> Vec<f64> {
    // last[i] = last value of the i-times differenced series
    let mut last: Vec<f64> = (0..d).map(|i| *difference(&y[y.len() - (i + 1).min(y.len())..], i).last().unwrap()).collect();
    w.iter()
        .map(|&next| {
            let mut v = next;
            for i in (0..d).rev() {
                v += last[i];
                last[i] = v;
            }
            v
        })
        .collect()
}

/// The `arima` forecaster.
#[derive(Debug, Clone)]
pub struct ArimaForecaster {
    pub p: usize,
    pub d: usize,
    pub q: usize,
    /// Observations before the origin that a fit uses.
    pub n: usize,
    pub method: Method,
    /// A constant in the differenced series (a mean for `d = 0`, a drift for `d = 1`);
    /// `None`: R's and statsmodels' default, a mean for `d = 0` only.
    pub mean: Option<bool>,
    pub opt: Optimizer,
    /// Start each origin's fit from the previous origin's parameters.
    pub warm: bool,
    /// `arima-auto`: choose d, p, q and the constant at every origin (the fixed
    /// order fields are then unused).
    pub auto: Option<auto::AutoSettings>,
}

/// One series' forecast from one origin.
struct SeriesForecast {
    pred: Vec<f64>,
    /// Standard errors (NaN after a fallback).
    se: Vec<f64>,
    fell_back: bool,
}

impl ArimaForecaster {
    /// The forecaster with `arima`'s defaults for everything but the order.
    pub fn new(p: usize, d: usize, q: usize) -> Self {
        ArimaForecaster { p, d, q, n: 1000, method: Method::CssMl, mean: None, opt: Optimizer::Lm, warm: false, auto: None }
    }

    fn order(&self) -> Order {
        Order { p: self.p, q: self.q, mean: self.mean.unwrap_or(self.d == 0) }
    }

    /// Forecasts one series from one origin, warm-starting from and updating `warm`.
    fn series(&self, y: &[f64], len: usize, warm: &mut Option<Vec<f64>>) -> SeriesForecast {
        let hist = &y[y.len().saturating_sub(self.n)..];
        let (d, fitted) = match &self.auto {
            Some(a) => match auto::select(hist, a) {
                Some(c) => (c.d, Some(c.fit)),
                None => (0, None),
            },
            None => {
                let x = difference(hist, self.d);
                let start = if self.warm { warm.as_deref() } else { None };
                (self.d, fit_with(&x, self.order(), self.method, start, self.opt))
            }
        };
        // the fit's own filter pass holds the final state the forecasts start from
        if let Some((f, flt)) = fitted.and_then(|mut f| f.filtered.take().map(|flt| (f, flt))) {
            let out = integrate(hist, d, &forecast_mean(&flt, &f.model, len));
            if out.iter().all(|v| v.is_finite()) {
                let se = model::level_stderr(&flt, &f.model, d, len, f.sigma2);
                *warm = Some(f.raw);
                return SeriesForecast { pred: out, se, fell_back: false };
            }
        }
        *warm = None;
        SeriesForecast { pred: fallback::series(y, len), se: vec![f64::NAN; len], fell_back: true }
    }
}

impl ArimaForecaster {
    /// `arima:...` from its spec parameters.
    fn from_params(p: &Params) -> Result<ArimaForecaster, ParamError> {
        let f = ArimaForecaster {
            p: p.usize("p", 0)?,
            d: p.usize("d", 0)?,
            q: p.usize("q", 0)?,
            n: p.usize("n", 10)?,
            method: Method::parse(p.get("method"))?,
            mean: p.auto_bool("mean")?,
            opt: Optimizer::parse(p.get("opt"))?,
            warm: p.bool("warm")?,
            auto: None,
        };
        if f.p + f.q > 20 || f.d > 2 {
            return Err(ParamError(format!("p + q must be at most 20 and d at most 2 (got p={}, d={}, q={})", f.p, f.d, f.q)));
        }
        let need = min_history(f.p, f.d, f.q);
        if f.n < need {
            return Err(ParamError(format!(
                "n={} is below the {need} observations an ARIMA({},{},{}) fit needs (d + max(50, 10 (p + q + 1)))",
                f.n, f.p, f.d, f.q
            )));
        }
        Ok(f)
    }

    /// `arima-auto:...` from its spec parameters.
    fn auto_from_params(p: &Params) -> Result<ArimaForecaster, ParamError> {
        let a = auto::AutoSettings {
            max_p: p.usize("max_p", 0)?,
            max_q: p.usize("max_q", 0)?,
            max_d: p.usize("max_d", 0)?,
            start_p: p.usize("start_p", 0)?,
            start_q: p.usize("start_q", 0)?,
            approximation: p.auto_bool("approx")?,
            ..Default::default()
        };
        if a.max_p + a.max_q > 20 || a.max_d > 2 {
            return Err(ParamError(format!(
                "max_p + max_q must be at most 20 and max_d at most 2 (got {}, {}, {})",
                a.max_p, a.max_q, a.max_d
            )));
        }
        let mut f = ArimaForecaster::new(0, 0, 0);
        f.n = p.usize("n", 10)?;
        let need = min_history(a.max_p, a.max_d, a.max_q);
        if f.n < need {
            return Err(ParamError(format!(
                "n={} is below the {need} observations the largest model of the search needs (max_d + max(50, 10 (max_p + max_q + 1)))",
                f.n
            )));
        }
        f.auto = Some(a);
        Ok(f)
    }
}

impl Forecaster for ArimaForecaster {
    fn spec(&self) -> String {
        if let Some(a) = &self.auto {
            return canonical(
                "arima-auto",
                &[
                    ("max_p", a.max_p.to_string()),
                    ("max_q", a.max_q.to_string()),
                    ("max_d", a.max_d.to_string()),
                    ("start_p", a.start_p.to_string()),
                    ("start_q", a.start_q.to_string()),
                    ("n", self.n.to_string()),
                    ("approx", super::auto_bool_str(a.approximation).to_string()),
                ],
            );
        }
        canonical(
            "arima",
            &[
                ("p", self.p.to_string()),
                ("d", self.d.to_string()),
                ("q", self.q.to_string()),
                ("n", self.n.to_string()),
                ("method", self.method.as_str().to_string()),
                ("mean", super::auto_bool_str(self.mean).to_string()),
                ("opt", self.opt.as_str().to_string()),
                ("warm", self.warm.to_string()),
            ],
        )
    }
    fn history(&self) -> usize {
        match &self.auto {
            Some(a) => min_history(a.max_p, a.max_d, a.max_q),
            None => min_history(self.p, self.d, self.q),
        }
    }
    fn can_fall_back(&self) -> bool {
        true
    }
    /// Every origin is fitted on its own history: the fitted model is the spec.
    fn fit(&self, _history: &LayerView, _ctx: &FitContext) -> anyhow::Result<Box<dyn Fitted + '_>> {
        Ok(Box::new(self.clone()))
    }
}

impl Fitted for ArimaForecaster {
    fn predict(&self, h: &LayerView, origin: usize, out: &mut [f64]) -> usize {
        let ne = h.experts();
        let len = out.len() / ne;
        let mut fallbacks = 0;
        for e in 0..ne {
            let y: Vec<f64> = (0..origin).map(|t| h.at(t, e)).collect();
            let s = self.series(&y, len, &mut None);
            fallbacks += s.fell_back as usize;
            (0..len).for_each(|k| out[k * ne + e] = s.pred[k]);
        }
        fallbacks
    }
    /// Experts in parallel, each walking the origins in order with warm starts.
    fn predict_origins(&self, layer: &LayerView, origins: &[usize], lens: &[usize], emit: &mut Emit<'_>) -> anyhow::Result<()> {
        let ne = layer.experts();
        let mut warm: Vec<Option<Vec<f64>>> = vec![None; ne];
        // Origins in chunks, so memory holds one chunk's predictions.
        const CHUNK: usize = 32;
        for (c, (chunk_o, chunk_l)) in origins.chunks(CHUNK).zip(lens.chunks(CHUNK)).enumerate() {
            let last = chunk_o[chunk_o.len() - 1];
            let per_expert: Vec<Vec<SeriesForecast>> = warm
                .par_iter_mut()
                .enumerate()
                .map(|(e, w)| {
                    let series: Vec<f64> = (0..last).map(|t| layer.at(t, e)).collect();
                    chunk_o.iter().zip(chunk_l).map(|(&o, &len)| self.series(&series[..o], len, w)).collect()
                })
                .collect();
            for (i, &len) in chunk_l.iter().enumerate() {
                let (mut out, mut se) = (vec![0.0; len * ne], vec![0.0; len * ne]);
                let mut fb = 0;
                for (e, preds) in per_expert.iter().enumerate() {
                    let s = &preds[i];
                    fb += s.fell_back as usize;
                    for k in 0..len {
                        out[k * ne + e] = s.pred[k];
                        se[k * ne + e] = s.se[k];
                    }
                }
                emit(c * CHUNK + i, &mut out, Some(&se), fb);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::model::forecast;
    use super::*;

    /// Cases written by tests/fixtures/make_arima_fixtures.py with statsmodels.
    fn cases() -> Vec<serde_json::Value> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/arima.json");
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        v["cases"].as_array().unwrap().clone()
    }

    fn floats(v: &serde_json::Value) -> Vec<f64> {
        v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
    }

    /// statsmodels' parameter vector: [const,] ar..., ma..., sigma2.
    fn model_of(c: &serde_json::Value, params: &[f64]) -> (Arma, f64) {
        let (p, q) = (c["p"].as_u64().unwrap() as usize, c["q"].as_u64().unwrap() as usize);
        let off = c["mean"].as_bool().unwrap() as usize;
        let m = Arma { ar: params[off..off + p].to_vec(), ma: params[off + p..off + p + q].to_vec(), mean: if off == 1 { params[0] } else { 0.0 } };
        (m, params[off + p + q])
    }

    #[test]
    fn exact_loglik_forecasts_and_stderr_match_statsmodels_at_given_parameters() {
        for c in cases() {
            let d = c["d"].as_u64().unwrap() as usize;
            let levels = floats(&c["y"]);
            let y = difference(&levels, d);
            let (m, s2) = model_of(&c, &floats(&c["given"]));
            let f = filter(&y, &m).unwrap();
            let want = c["loglik"].as_f64().unwrap();
            let got = f.loglik(s2);
            assert!(((got - want) / want).abs() < 1e-8, "{}: loglik {got} vs {want}", c["name"]);
            let (w, se_arma) = forecast(&f, &m, 10, s2);
            let mean = integrate(&levels, d, &w);
            let se = model::level_stderr(&f, &m, d, 10, s2);
            for (k, (a, b)) in mean.iter().zip(floats(&c["forecast"])).enumerate() {
                assert!((a - b).abs() <= 1e-8 * b.abs().max(1e-4), "{}: forecast {k}: {a} vs {b}", c["name"]);
            }
            for (k, (a, b)) in se.iter().zip(floats(&c["stderr"])).enumerate() {
                assert!(((a - b) / b).abs() < 1e-8, "{}: stderr {k}: {a} vs {b}", c["name"]);
            }
            if d == 0 {
                assert_eq!(se.len(), se_arma.len());
                se.iter().zip(&se_arma).for_each(|(a, b)| assert!((a - b).abs() <= 1e-12 * b, "{a} vs {b}"));
            }
            assert_eq!(forecast_mean(&f, &m, 10), w);
        }
    }

    #[test]
    fn maximum_likelihood_is_as_good_as_statsmodels_with_either_optimiser() {
        for c in cases() {
            let y = difference(&floats(&c["y"]), c["d"].as_u64().unwrap() as usize);
            let order = Order { p: c["p"].as_u64().unwrap() as usize, q: c["q"].as_u64().unwrap() as usize, mean: c["mean"].as_bool().unwrap() };
            let want = c["fit_loglik"].as_f64().unwrap();
            for opt in [Optimizer::Lm, Optimizer::NelderMead] {
                let fit = fit_with(&y, order, Method::CssMl, None, opt).unwrap();
                eprintln!("{} {opt:?}: loglik {} (statsmodels {want}) in {} evaluations", c["name"], fit.loglik, fit.evals);
                assert!(fit.loglik >= want - 1e-4 * want.abs(), "{} {opt:?}: {} < {want}", c["name"], fit.loglik);
            }
        }
    }

    #[test]
    fn simulated_parameters_are_recovered_within_their_standard_errors() {
        let c = cases().into_iter().find(|c| c["name"] == "sim-arma21").unwrap();
        let y = floats(&c["y"]);
        let fit = fit(&y, Order { p: 2, q: 1, mean: false }, Method::CssMl, None).unwrap();
        let bse = floats(&c["fit_bse"]);
        for (got, (truth, se)) in [fit.model.ar[0], fit.model.ar[1], fit.model.ma[0]].iter().zip([(0.5, bse[0]), (-0.3, bse[1]), (0.4, bse[2])]) {
            assert!((got - truth).abs() < 3.0 * se, "{got} vs {truth} ± {se}");
        }
    }

    fn statsforecast() -> serde_json::Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/statsforecast.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn css_objective_matches_statsforecast_at_given_parameters() {
        let sf = statsforecast();
        // every case is on the same real series: gpt12-e16-top2-s1 layer 0 expert 3, steps 2000-3999
        let y = &floats(&cases()[0]["y"]);
        let levels: Vec<f64> = std::iter::once(0.0).chain(y.iter().scan(0.0, |a, v| {
            *a += v;
            Some(*a)
        })).collect();
        for c in sf["css"].as_array().unwrap() {
            let d = c["d"].as_u64().unwrap() as usize;
            let m = Arma { ar: floats(&c["ar"]), ma: floats(&c["ma"]), mean: 0.0 };
            // arima.json's first case holds that series differenced once; rebuild levels
            // up to a constant, which differencing removes (d >= 1), else use the fixture's own
            let series = if d == 0 { None } else { Some(difference(&levels, d)) };
            if let Some(x) = series {
                let (ssq, n) = css(&x, &m);
                let want = c["sigma2"].as_f64().unwrap();
                let got = ssq / n as f64;
                assert!(((got - want) / want).abs() < 1e-8, "css p={} d={d} q={}: {got} vs {want}", c["p"], c["q"]);
            }
        }
    }

    #[test]
    fn arima_auto_picks_statsforecasts_orders() {
        let sf = statsforecast();
        let cases = sf["auto"].as_array().unwrap();
        let mut same = 0;
        for c in cases {
            let y = floats(&c["y"]);
            let got = auto::select(&y, &auto::AutoSettings::default()).unwrap();
            let want = (c["p"].as_u64().unwrap() as usize, c["d"].as_u64().unwrap() as usize, c["q"].as_u64().unwrap() as usize, c["constant"].as_bool().unwrap());
            let ok = (got.p, got.d, got.q, got.constant) == want;
            same += ok as usize;
            eprintln!("{} layer {} expert {} origin {}: ours {:?}, statsforecast {want:?} {}", c["trace"], c["layer"], c["expert"], c["origin"], (got.p, got.d, got.q, got.constant), if ok { "" } else { "  <-- differs" });
        }
        eprintln!("arima-auto: {same}/{} orders as statsforecast's", cases.len());
        // At least 80% (32 of these 40 match; the others: our likelihood optimum sits
        // nearer the invertibility boundary, so the 1.01 root rule rejects a model R's
        // BFGS keeps, or near-ties in AICc; five of the eight have d = 1 and a drift).
        assert!(same * 10 >= cases.len() * 8, "{same}/{} orders match", cases.len());
    }

    #[test]
    fn differencing_and_integration_invert_each_other() {
        let y = [1.0, 3.0, 4.0, 8.0, 9.0];
        assert_eq!(difference(&y, 1), vec![2.0, 1.0, 4.0, 1.0]);
        assert_eq!(difference(&y, 2), vec![-1.0, 3.0, -3.0]);
        // d = 1: levels continue from 9; d = 2: slopes continue from 1
        assert_eq!(integrate(&y, 1, &[1.0, 2.0]), vec![10.0, 12.0]);
        assert_eq!(integrate(&y, 2, &[0.0, 1.0]), vec![10.0, 12.0]);
        assert_eq!(integrate(&y, 0, &[0.5]), vec![0.5]);
    }

    #[test]
    fn forecaster_spec_and_fallback_counting() {
        let f = crate::forecast::parse_spec("arima:p=1,q=0").unwrap();
        assert_eq!(f.spec(), "arima:p=1,d=1,q=0,n=1000,method=css-ml,mean=auto,opt=lm,warm=false");
        assert!(crate::forecast::parse_spec("arima:mean=maybe").is_err());
        assert!(crate::forecast::parse_spec("arima:opt=bfgs").is_err());
        assert!(crate::forecast::parse_spec("arima:p=15,q=15").is_err());
        assert!(crate::forecast::parse_spec("arima:method=mle").is_err());
        // a fit needs d + max(50, 10 (p + q + 1)) observations: n below that is refused,
        // and the run's first origin moves there
        assert_eq!((min_history(5, 1, 5), min_history(1, 1, 1), min_history(0, 0, 0)), (111, 51, 50));
        let e = crate::forecast::parse_spec("arima:n=100").err().unwrap().to_string();
        assert!(e.contains("n=100") && e.contains("111"), "{e}");
        let f = crate::forecast::parse_spec("arima").unwrap();
        assert_eq!(f.history(), 111);
        assert!(f.check_start(110).unwrap_err().to_string().contains("111"));
        assert!(f.check_start(111).is_ok());
        assert_eq!(crate::forecast::parse_spec("arima-auto").unwrap().history(), 112);
        // A constant series cannot be fitted: every series falls back to its mean.
        let p = vec![0.5; 2 * 60];
        let view = LayerView::new(&p, 2);
        let mut out = vec![0.0; 2 * 3];
        let fb = f.fit(&view.until(50), &FitContext::cpu()).unwrap().predict(&view.until(50), 50, &mut out);
        assert_eq!(fb, 2);
        assert_eq!(out, vec![0.5; 6]);
    }
}
