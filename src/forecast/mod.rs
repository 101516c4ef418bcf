//! Forecasters, each in its own file, behind one seam in two parts (augurs' `Fit` →
//! `Predict`): a [`Forecaster`] is a parsed spec (its canonical spec, the history it
//! needs, its checks against a run's shape) that [`fit`](Forecaster::fit)s on a
//! layer's history into a [`Fitted`] model, which predicts the layer's origins.
//! The spec syntax is `NAME[:key=value[,key=value]...]`.
//!
//! A new forecaster is one file that defines its [`Known`] entry (name, parameters
//! and their defaults, builder) plus one line in the `registry!` below.
//!
//! ```
//! use expertcast::forecast::{parse_spec, FitContext, LayerView};
//! // Two experts, three steps of history: shares (.5,.5), (.25,.75), (.75,.25).
//! let p = [0.5, 0.5, 0.25, 0.75, 0.75, 0.25];
//! let layer = LayerView::new(&p, 2);
//! let f = parse_spec("mean:w=2").unwrap();
//! assert_eq!(f.spec(), "mean:w=2");
//! let fitted = f.fit(&layer.until(3), &FitContext::cpu()).unwrap();
//! let mut out = vec![0.0; 2 * 2]; // 2 future steps × 2 experts
//! fitted.predict(&layer.until(3), 3, &mut out);
//! assert_eq!(out, vec![0.5, 0.5, 0.5, 0.5]);
//! ```

/// Declares the forecaster modules and [`KNOWN`], the list of their entries in the
/// order the spec parser lists them.
macro_rules! registry {
    ($($vis:vis mod $m:ident: [$($entry:ident),*];)*) => {
        $($vis mod $m;)*
        /// Every forecaster the spec parser knows, with its parameters.
        pub static KNOWN: &[&Known] = &[$($(&$m::$entry,)*)*];
    };
}

registry! {
    mod simple: [LAST, MEAN, SW_AVG, EMA];
    mod median: [MEDIAN];
    pub mod arima: [ARIMA, ARIMA_AUTO];
    pub mod lstm: [LSTM];
    pub mod linear: [LINEAR];
    mod oracle: [ORACLE_MEDIAN];
}

pub mod fallback;
mod window_medians;

pub(crate) use window_medians::window_medians;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use median::WindowMedian;
pub use oracle::OracleMedian;
pub use simple::{Ema, Last, SlidingWindowAverage, WindowMean};

use crate::gpu::Device;

/// A spec string that names no known forecaster or has bad parameters.
#[derive(Debug, thiserror::Error)]
#[error("forecaster spec {spec:?}: {msg}\n{}", known_list())]
pub struct SpecError {
    pub spec: String,
    pub msg: String,
}

/// A parameter value a forecaster does not take; the message says why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ParamError(pub String);

impl From<String> for ParamError {
    fn from(s: String) -> Self {
        ParamError(s)
    }
}

/// What building a forecaster from its parameters gives.
pub type BuildResult = Result<Box<dyn Forecaster>, ParamError>;

/// Why a forecaster cannot serve a run, found before the run reads or writes anything.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CheckError {
    #[error("needs {need} steps of history before its first origin, and step index {start} leaves {start}")]
    History { need: usize, start: usize },
    #[error(
        "the first origin, step {start}, leaves no training window: an LSTM trained by the run needs at least lookback + k = {need} steps before it (or give model=DIR)"
    )]
    NoTrainingWindow { start: usize, need: usize },
    #[error(
        "the joint-mode LSTM checkpoint {model} was trained on {trained} experts a layer, not {experts} (a global-mode model serves any number)"
    )]
    Experts { model: String, trained: usize, experts: usize },
}

/// Proportions of one layer, step-major (`p[t * experts + e]`), possibly cut at
/// an origin so that a forecaster cannot read the future.
#[derive(Debug, Clone, Copy)]
pub struct LayerView<'a> {
    p: &'a [f64],
    experts: usize,
}

impl<'a> LayerView<'a> {
    pub fn new(p: &'a [f64], experts: usize) -> Self {
        assert!(experts > 0 && p.len() % experts == 0, "p must hold whole steps");
        LayerView { p, experts }
    }
    /// The shares, step-major (`steps × experts`).
    pub fn raw(&self) -> &'a [f64] {
        self.p
    }
    pub fn steps(&self) -> usize {
        self.p.len() / self.experts
    }
    pub fn experts(&self) -> usize {
        self.experts
    }
    /// The shares of every expert at step index `t`.
    pub fn row(&self, t: usize) -> &'a [f64] {
        &self.p[t * self.experts..(t + 1) * self.experts]
    }
    /// `p[t, e]`.
    pub fn at(&self, t: usize, e: usize) -> f64 {
        self.p[t * self.experts + e]
    }
    /// The view of steps `0 .. origin` only: what a forecast from `origin` may read.
    pub fn until(&self, origin: usize) -> LayerView<'a> {
        LayerView { p: &self.p[..origin * self.experts], experts: self.experts }
    }
    /// The view of steps `from ..` (a history's latest part).
    pub fn since(&self, from: usize) -> LayerView<'a> {
        LayerView { p: &self.p[from * self.experts..], experts: self.experts }
    }
}

/// Where training progress goes (an LSTM trained inside a run).
pub type Messages = Arc<dyn Fn(String) + Send + Sync>;

/// What a fit may use besides the history: the run's device and a sink for
/// progress messages. The simple forecasters read neither.
#[derive(Clone)]
pub struct FitContext {
    pub device: Device,
    pub messages: Option<Messages>,
}

impl FitContext {
    /// The CPU, no messages.
    pub fn cpu() -> FitContext {
        FitContext { device: Device::Cpu, messages: None }
    }
}

/// The callback of [`Fitted::predict_origins`]: `(origin index, prediction,
/// standard errors, fallbacks)`.
pub type Emit<'a> = dyn FnMut(usize, &mut [f64], Option<&[f64]>, usize) + 'a;

/// A forecaster as its spec defines it, before it has seen any data.
pub trait Forecaster: Send + Sync {
    /// The canonical spec string, every parameter written out (`sw-avg:w=100`).
    fn spec(&self) -> String;

    /// Steps of history the forecaster needs before its first origin.
    fn history(&self) -> usize;

    /// A real forecast (clipped and renormalised) or a reference that reads the
    /// future, like `oracle-median` (scored as it is).
    fn is_real(&self) -> bool {
        true
    }

    /// Whether the prediction for a step depends on the horizon being scored
    /// (the oracle's median over `h` steps). Such a forecaster is asked once for
    /// every horizon: [`Fitted::predict_origins`] gets each horizon's origins
    /// (ascending) with exactly `h` steps, one horizon after another.
    fn horizon_dependent(&self) -> bool {
        false
    }

    /// Whether a fit can fail and fall back (see [`fallback`]); the run then says how
    /// often it did.
    fn can_fall_back(&self) -> bool {
        false
    }

    /// Whether the forecaster can serve a run whose first origin is `start`; checked
    /// before a run reads or writes anything. By default the origin must leave the
    /// forecaster its [`history`](Self::history).
    fn check_start(&self, start: usize) -> Result<(), CheckError> {
        let need = self.history();
        if start < need {
            return Err(CheckError::History { need, start });
        }
        Ok(())
    }

    /// Whether the forecaster can serve layers of `experts` experts (a joint-mode
    /// LSTM checkpoint serves only the count it was trained on); checked for every
    /// trace before a run writes anything.
    fn check_experts(&self, _experts: usize) -> Result<(), CheckError> {
        Ok(())
    }

    /// How the GPU path runs this forecaster (`None`: on the CPU, as without a GPU).
    fn on_device(&self) -> Option<DeviceModel> {
        None
    }

    /// Fits on `history`, a layer's steps before its first origin, into the model
    /// that predicts its origins.
    fn fit(&self, history: &LayerView, ctx: &FitContext) -> anyhow::Result<Box<dyn Fitted + '_>>;
}

/// How a forecaster runs in a GPU run (see `eval::cuda`), where the layer's shares
/// are on the device and every forecast is scored there.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DeviceModel {
    /// A [flat](Fitted::flat) model predicted on the host (one row an origin: a few
    /// kB), scored on the device.
    HostRows,
    /// `last`, its rows made and scored on the device.
    Last,
    /// `mean:w=W`, its rows made and scored on the device.
    Mean { w: usize },
    /// `ema:alpha=A`, its rows made and scored on the device.
    Ema { alpha: f64 },
    /// `sw-avg:w=W`, predicted and scored on the device.
    SwAvg { w: usize },
    /// `oracle-median`'s medians taken and scored on the device.
    OracleMedian,
}

/// A fitted forecaster: predicts the origins of the layer it was fitted on.
pub trait Fitted {
    /// Predicts `p[origin .. origin + len]` into `out` (`len × experts`, step-major)
    /// from `history`, which for a real forecaster ends at `origin`. Returns how
    /// many expert series fell back.
    fn predict(&self, history: &LayerView, origin: usize, out: &mut [f64]) -> usize;

    /// Whether every prediction is one row that holds for every step ahead (`last`,
    /// `mean`, `ema`, the medians). Such a model's
    /// [`predict_origins`](Self::predict_origins) emits that one row (`experts`
    /// values) whatever `lens[i]`, and scoring reads it for every step instead of a
    /// buffer of `lens[i]` rows.
    fn flat(&self) -> bool {
        false
    }

    /// Predicts every origin of `layer` (ascending; for a
    /// [`horizon_dependent`](Forecaster::horizon_dependent) forecaster, ascending within
    /// each horizon's run), calling `emit(i, prediction,
    /// stderr, fallbacks)` for origin `i` with `lens[i]` steps (one row if the model
    /// is [`flat`](Self::flat)). `stderr` (laid out like the prediction) comes from
    /// forecasters with a predictive distribution (ARIMA). The default cuts the layer
    /// at each origin and calls [`predict`](Self::predict); override to share work
    /// across origins, or (the oracle) to read the future.
    fn predict_origins(&self, layer: &LayerView, origins: &[usize], lens: &[usize], emit: &mut Emit<'_>) -> anyhow::Result<()> {
        let flat = self.flat();
        predict_each(layer, origins, lens, flat, emit, |o, out| self.predict(&layer.until(o), o, out));
        Ok(())
    }

    /// Scores every origin of `layer` without keeping its prediction, for a model
    /// that makes its steps ahead a row at a time and never falls back: each row
    /// (renormalised first when `real`) is scored while it is in cache, and
    /// `sums[i * horizons.len() + hi]` gets origin `i`'s `(Σ |err|, Σ err²)` over
    /// its first `horizons[hi]` steps, as [`predict_origins`](Self::predict_origins)
    /// and the scorer would have made them, bit for bit; `done(experts)` is called
    /// for each origin. `None` (the default): no such path.
    fn score_origins(
        &self,
        _layer: &LayerView,
        _origins: &[usize],
        _horizons: &[usize],
        _real: bool,
        _sums: &mut [(f64, f64)],
        _done: &(dyn Fn(u64) + Sync),
    ) -> Option<()> {
        None
    }
}

/// Calls `predict(origin, out)` for every origin, with `out` sized for its steps
/// (one step if `flat`), and hands each prediction to `emit`.
pub fn predict_each(
    layer: &LayerView,
    origins: &[usize],
    lens: &[usize],
    flat: bool,
    emit: &mut Emit<'_>,
    mut predict: impl FnMut(usize, &mut [f64]) -> usize,
) {
    let mut out = Vec::new();
    for (i, (&o, &len)) in origins.iter().zip(lens).enumerate() {
        out.clear();
        out.resize(if flat { 1 } else { len } * layer.experts(), 0.0);
        let fb = predict(o, &mut out);
        emit(i, &mut out, None, fb);
    }
}

/// Each expert's median over steps `from .. to` of `layer` (the mean of the two
/// middle values for an even count). The block is copied expert-major first, row by
/// row, so that each median reads contiguous memory instead of one cache line a step.
pub(crate) fn column_medians(layer: &LayerView, from: usize, to: usize) -> Vec<f64> {
    let (ne, n) = (layer.experts(), to - from);
    let mut cols = vec![0.0; ne * n];
    for (k, t) in (from..to).enumerate() {
        for (e, &v) in layer.row(t).iter().enumerate() {
            cols[e * n + k] = v;
        }
    }
    cols.chunks_mut(n.max(1)).take(ne).map(crate::stats::states::median_in_place).collect()
}

/// Writes `row` (one value per expert) into every step of `out`.
pub(crate) fn repeat_row(out: &mut [f64], row: &[f64]) {
    out.chunks_mut(row.len()).for_each(|o| o.copy_from_slice(row));
}

/// A parameter of a forecaster, for the spec parser and its error message.
pub struct Param {
    pub key: &'static str,
    pub default: &'static str,
    pub doc: &'static str,
}

/// One known forecaster, defined in its own file and listed in [`KNOWN`].
pub struct Known {
    pub name: &'static str,
    pub doc: &'static str,
    pub params: &'static [Param],
    pub build: fn(&Params) -> BuildResult,
}

/// Parsed `key=value` pairs with the defaults filled in, and the keys given.
pub struct Params {
    values: BTreeMap<&'static str, String>,
    given: Vec<&'static str>,
}

impl Params {
    /// Every parameter of `known` at its default, none given.
    pub fn defaults(known: &Known) -> Params {
        Params { values: known.params.iter().map(|p| (p.key, p.default.to_string())).collect(), given: Vec::new() }
    }
    /// The value of `key` (given or its default).
    pub fn get(&self, key: &str) -> &str {
        &self.values[key]
    }
    /// The keys written in the spec, in order.
    pub fn given_keys(&self) -> &[&'static str] {
        &self.given
    }
    pub fn usize(&self, key: &str, min: usize) -> Result<usize, ParamError> {
        let v = self.get(key);
        let n: usize = v.parse().map_err(|_| ParamError(format!("{key}={v} is not a whole number")))?;
        if n < min {
            return Err(ParamError(format!("{key}={v} must be at least {min}")));
        }
        Ok(n)
    }
    /// `auto` (None), `true` or `false`.
    pub fn auto_bool(&self, key: &str) -> Result<Option<bool>, ParamError> {
        match self.get(key) {
            "auto" => Ok(None),
            "true" => Ok(Some(true)),
            "false" => Ok(Some(false)),
            v => Err(ParamError(format!("{key}={v} must be auto, true or false"))),
        }
    }
    pub fn bool(&self, key: &str) -> Result<bool, ParamError> {
        match self.get(key) {
            "true" => Ok(true),
            "false" => Ok(false),
            v => Err(ParamError(format!("{key}={v} must be true or false"))),
        }
    }
    /// A number in `(lo, hi]`.
    pub fn f64_in(&self, key: &str, lo: f64, hi: f64) -> Result<f64, ParamError> {
        let v = self.get(key);
        let x: f64 = v.parse().map_err(|_| ParamError(format!("{key}={v} is not a number")))?;
        if !(x > lo && x <= hi) {
            return Err(ParamError(format!("{key}={v} must be in ({lo}, {hi}]")));
        }
        Ok(x)
    }
}

/// The default value of parameter `key` of forecaster `name`: the one source of a
/// forecaster's defaults, which other interfaces (`lstm train`'s flags) read.
pub fn default_of(name: &str, key: &str) -> &'static str {
    KNOWN
        .iter()
        .find(|k| k.name == name)
        .and_then(|k| k.params.iter().find(|p| p.key == key))
        .map(|p| p.default)
        .unwrap_or_else(|| panic!("{name} has no parameter {key}"))
}

fn known_list() -> String {
    let mut s = String::from("known forecasters:");
    for k in KNOWN {
        let params: Vec<String> = k.params.iter().map(|p| format!("{}={} ({})", p.key, p.default, p.doc)).collect();
        let sig = if params.is_empty() { String::new() } else { format!(" [{}]", params.join(", ")) };
        s.push_str(&format!("\n  {}{} — {}", k.name, sig, k.doc));
    }
    s
}

/// Parses `NAME[:key=value[,key=value]...]` into a forecaster.
pub fn parse_spec(spec: &str) -> Result<Box<dyn Forecaster>, SpecError> {
    let err = |msg: String| SpecError { spec: spec.to_string(), msg };
    let (name, rest) = match spec.split_once(':') {
        Some((n, r)) => (n.trim(), Some(r)),
        None => (spec.trim(), None),
    };
    let known = KNOWN.iter().find(|k| k.name == name).ok_or_else(|| err(format!("unknown forecaster {name:?}")))?;
    let mut params = Params::defaults(known);
    if let Some(rest) = rest {
        for kv in rest.split(',') {
            let (k, v) = kv.split_once('=').ok_or_else(|| err(format!("{kv:?} is not key=value")))?;
            let (k, v) = (k.trim(), v.trim());
            let p = known.params.iter().find(|p| p.key == k).ok_or_else(|| {
                let keys: Vec<&str> = known.params.iter().map(|p| p.key).collect();
                err(format!(
                    "{name} has no parameter {k:?}{}",
                    if keys.is_empty() { " (it takes none)".to_string() } else { format!(" (it takes {})", keys.join(", ")) }
                ))
            })?;
            if params.given.contains(&p.key) {
                return Err(err(format!("parameter {k} is given twice")));
            }
            params.given.push(p.key);
            params.values.insert(p.key, v.to_string());
        }
    }
    (known.build)(&params).map_err(|e| err(e.0))
}

/// How an `auto|true|false` parameter is written in a canonical spec.
pub(crate) fn auto_bool_str(v: Option<bool>) -> &'static str {
    match v {
        None => "auto",
        Some(true) => "true",
        Some(false) => "false",
    }
}

/// The canonical spec string of a forecaster with its parameters.
pub(crate) fn canonical(name: &str, params: &[(&str, String)]) -> String {
    if params.is_empty() {
        return name.to_string();
    }
    let kv: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{name}:{}", kv.join(","))
}

/// Longest canonical spec shown as it is in the run's summary table.
pub const DISPLAY_WIDTH: usize = 24;

/// The name a forecaster goes by in the summary table: its canonical spec when that
/// is at most [`DISPLAY_WIDTH`] characters, else the spec without the parameters
/// that are at their defaults (those that differ between forecasters of the same
/// name in `all` are kept, so two forecasters never share a display name).
/// `arima:p=5,d=1,q=5,n=1000,...` with every default becomes `arima`. The files
/// always hold the canonical spec.
pub fn display_name(spec: &str, all: &[String]) -> String {
    if spec.chars().count() <= DISPLAY_WIDTH {
        return spec.to_string();
    }
    let split = |s: &str| -> (String, Vec<(String, String)>) {
        match s.split_once(':') {
            None => (s.to_string(), Vec::new()),
            Some((n, rest)) => (
                n.to_string(),
                rest.split(',').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ),
        }
    };
    let (name, params) = split(spec);
    let siblings: Vec<Vec<(String, String)>> = all.iter().map(|s| split(s)).filter(|(n, _)| *n == name).map(|(_, p)| p).collect();
    let default = |k: &str| KNOWN.iter().find(|x| x.name == name).and_then(|x| x.params.iter().find(|p| p.key == k)).map(|p| p.default);
    let kept: Vec<(&str, String)> = params
        .iter()
        .filter(|(k, v)| {
            let differs = siblings.iter().any(|p| p.iter().find(|(k2, _)| k2 == k).map(|(_, v2)| v2) != Some(v));
            differs || default(k) != Some(v.as_str())
        })
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    canonical(&name, &kept)
}

/// Clips a prediction at 0 and renormalises every step to sum to 1 over experts
/// (a step that clips to all zeros becomes uniform).
/// Each row's sum runs in the lane order of [`crate::simd`].
#[inline(always)]
pub fn renormalize(out: &mut [f64], experts: usize) {
    // Clipped as they are summed and again as they are scaled, never stored clipped:
    // a clipped value stored in place becomes a masked store, slow on some CPUs (on
    // AMD's, half of sw-avg's time). Scaled by the sum's reciprocal: one division a
    // row, not one a value (the quotient's last bit may differ; 1e-16 relative).
    let clip = |v: f64| if v >= 0.0 { v } else { 0.0 };
    for row in out.chunks_mut(experts) {
        let s = crate::simd::lane_sum_by(row, clip);
        if s > 0.0 {
            let inv = 1.0 / s;
            row.iter_mut().for_each(|v| *v = clip(*v) * inv);
        } else {
            row.iter_mut().for_each(|v| *v = 1.0 / experts as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_are_canonicalised_with_defaults() {
        assert_eq!(parse_spec("mean").unwrap().spec(), "mean:w=100");
        assert_eq!(parse_spec("sw-avg:w=50").unwrap().spec(), "sw-avg:w=50");
        assert_eq!(parse_spec("ema").unwrap().spec(), "ema:alpha=0.3");
        assert_eq!(parse_spec("ema:alpha=0.25").unwrap().spec(), "ema:alpha=0.25");
        assert_eq!(parse_spec("last").unwrap().spec(), "last");
        assert_eq!(parse_spec("oracle-median").unwrap().spec(), "oracle-median");
    }

    #[test]
    fn bad_specs_name_the_problem_and_list_known_forecasters() {
        for (spec, want) in [
            ("lsmt", "unknown forecaster \"lsmt\""),
            ("mean:x=3", "mean has no parameter \"x\""),
            ("mean:w=0", "w=0 must be at least 1"),
            ("mean:w=ten", "w=ten is not a whole number"),
            ("ema:alpha=1.5", "alpha=1.5 must be in (0, 1]"),
            ("mean:w", "\"w\" is not key=value"),
            ("mean:w=3,w=4", "given twice"),
            ("last:w=3", "it takes none"),
        ] {
            let e = parse_spec(spec).err().expect(spec).to_string();
            assert!(e.contains(want), "{spec}: {e}");
            assert!(e.contains("known forecasters:") && e.contains("sw-avg [w=100"), "{e}");
        }
    }

    #[test]
    fn display_names_drop_defaults_of_long_specs_only() {
        let arima = parse_spec("arima").unwrap().spec();
        let arima2 = parse_spec("arima:p=2,q=1").unwrap().spec();
        assert!(arima.len() > DISPLAY_WIDTH, "{arima}");
        let all = vec!["mean:w=100".to_string(), "sw-avg:w=10".to_string(), arima.clone()];
        assert_eq!(display_name("mean:w=100", &all), "mean:w=100");
        assert_eq!(display_name("sw-avg:w=10", &all), "sw-avg:w=10");
        assert_eq!(display_name(&arima, &all), "arima");
        assert_eq!(display_name(&arima2, &[arima2.clone()]), "arima:p=2,q=1");
        // two ARIMAs: what tells them apart stays, even where one is at its default
        let both = vec![arima.clone(), arima2.clone()];
        assert_eq!(display_name(&arima, &both), "arima:p=5,q=5");
        assert_eq!(display_name(&arima2, &both), "arima:p=2,q=1");
        let auto = parse_spec("arima-auto:n=500").unwrap().spec();
        assert_eq!(display_name(&auto, &[auto.clone()]), "arima-auto:n=500");
    }

    #[test]
    fn renormalize_clips_and_rescales() {
        let mut v = vec![0.2, -0.1, 0.6, -1.0, -2.0, 0.0];
        renormalize(&mut v, 3);
        assert!((v[0] - 0.25).abs() < 1e-15 && v[1] == 0.0 && (v[2] - 0.75).abs() < 1e-15);
        assert_eq!(&v[3..], &[1.0 / 3.0; 3]);
        // rows whose clipped values sum to exactly 1: only clipped
        let mut v = vec![0.25, 0.5, 0.25, 0.5, -0.1, 0.5, f64::NAN, 0.75, 0.25];
        renormalize(&mut v, 3);
        assert_eq!(v, vec![0.25, 0.5, 0.25, 0.5, 0.0, 0.5, 0.0, 0.75, 0.25]);
    }
}
