//! Forecasters behind one trait, and the spec syntax `NAME[:key=value[,key=value]...]`.
//!
//! A new forecaster is one file implementing [`Forecaster`] plus one entry in
//! [`KNOWN`].
//!
//! ```
//! use expertcast::forecast::{parse_spec, LayerView};
//! // Two experts, three steps of history: shares (.5,.5), (.25,.75), (.75,.25).
//! let p = [0.5, 0.5, 0.25, 0.75, 0.75, 0.25];
//! let layer = LayerView::new(&p, 2);
//! let f = parse_spec("mean:w=2").unwrap();
//! assert_eq!(f.spec(), "mean:w=2");
//! let mut out = vec![0.0; 2 * 2]; // 2 future steps × 2 experts
//! f.forecast_origin(&layer.until(3), 3, &mut out);
//! assert_eq!(out, vec![0.5, 0.5, 0.5, 0.5]);
//! ```

pub mod arima;
pub mod lstm;
mod oracle;
mod simple;

use std::collections::BTreeMap;

pub use oracle::OracleMedian;
pub use simple::{Ema, Last, SlidingWindowAverage, WindowMean};

/// A spec string that names no known forecaster or has bad parameters.
#[derive(Debug, thiserror::Error)]
#[error("forecaster spec {spec:?}: {msg}\n{}", known_list())]
pub struct SpecError {
    pub spec: String,
    pub msg: String,
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
}

/// The callback of [`Forecaster::forecast_layer`]: `(origin index, prediction,
/// standard errors, fallbacks)`.
pub type Emit<'a> = dyn FnMut(usize, &mut [f64], Option<&[f64]>, usize) + 'a;

/// A forecaster of one layer's expert shares.
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
    /// (the oracle's median over `h` steps). Such a forecaster is asked once per
    /// horizon with `out` of exactly `h` steps.
    fn horizon_dependent(&self) -> bool {
        false
    }

    /// Tells the forecaster the run's device and where to send progress messages
    /// (training). The simple forecasters ignore both.
    fn use_device(&mut self, _device: &crate::gpu::Device, _messages: Option<lstm::Messages>) {}

    /// Whether the forecaster can serve layers of `experts` experts (a joint-mode
    /// LSTM checkpoint serves only the count it was trained on); checked for every
    /// trace before a run writes anything.
    fn check_experts(&self, _experts: usize) -> Result<(), String> {
        Ok(())
    }

    /// Whether the forecaster can serve a run whose first origin is `start`; checked
    /// before a run reads or writes anything. By default the origin must leave the
    /// forecaster its [`history`](Self::history) (an LSTM trained by the run asks
    /// only for one training window).
    fn check_start(&self, start: usize) -> Result<(), String> {
        let need = self.history();
        if start < need {
            return Err(format!("needs {need} steps of history before its first origin, and step index {start} leaves {start}"));
        }
        Ok(())
    }

    /// Predicts `p[origin .. origin + len]` into `out` (`len × experts`, step-major)
    /// from `history`, which for a real forecaster ends at `origin`. Returns how
    /// many expert series fell back to `mean:w=100` (0 for the simple forecasters).
    fn forecast_origin(&self, history: &LayerView, origin: usize, out: &mut [f64]) -> usize;

    /// Predicts every origin of a layer (ascending), calling `emit(i, prediction,
    /// stderr, fallbacks)` for origin `i`, with `lens[i]` steps predicted. `stderr`
    /// (laid out like the prediction) comes from forecasters with a predictive
    /// distribution (ARIMA) and is `None` otherwise. Override to share work across
    /// origins (a running average, warm starts, batching on a GPU).
    fn forecast_layer(
        &self,
        layer: &LayerView,
        origins: &[usize],
        lens: &[usize],
        emit: &mut Emit<'_>,
    ) -> anyhow::Result<()> {
        let mut out = Vec::new();
        for (i, (&o, &len)) in origins.iter().zip(lens).enumerate() {
            out.clear();
            out.resize(len * layer.experts(), 0.0);
            let view = if self.is_real() { layer.until(o) } else { *layer };
            let fb = self.forecast_origin(&view, o, &mut out);
            emit(i, &mut out, None, fb);
        }
        Ok(())
    }
}

/// A parameter of a forecaster, for the spec parser and its error message.
pub struct Param {
    pub key: &'static str,
    pub default: &'static str,
    pub doc: &'static str,
}

/// One known forecaster.
pub struct Known {
    pub name: &'static str,
    pub doc: &'static str,
    pub params: &'static [Param],
    build: fn(&Params) -> Result<Box<dyn Forecaster>, String>,
}

/// Parsed `key=value` pairs with the defaults filled in, and the keys given.
pub struct Params(BTreeMap<&'static str, String>, Vec<&'static str>);

impl Params {
    pub fn usize(&self, key: &str, min: usize) -> Result<usize, String> {
        let v = &self.0[key];
        let n: usize = v.parse().map_err(|_| format!("{key}={v} is not a whole number"))?;
        if n < min {
            return Err(format!("{key}={v} must be at least {min}"));
        }
        Ok(n)
    }
    /// `auto` (None), `true` or `false`.
    pub fn auto_bool(&self, key: &str) -> Result<Option<bool>, String> {
        match self.0[key].as_str() {
            "auto" => Ok(None),
            "true" => Ok(Some(true)),
            "false" => Ok(Some(false)),
            v => Err(format!("{key}={v} must be auto, true or false")),
        }
    }
    pub fn bool(&self, key: &str) -> Result<bool, String> {
        match self.0[key].as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            v => Err(format!("{key}={v} must be true or false")),
        }
    }
    pub fn f64_in(&self, key: &str, lo: f64, hi: f64) -> Result<f64, String> {
        let v = &self.0[key];
        let x: f64 = v.parse().map_err(|_| format!("{key}={v} is not a number"))?;
        if !(x > lo && x <= hi) {
            return Err(format!("{key}={v} must be in ({lo}, {hi}]"));
        }
        Ok(x)
    }
}

/// Every forecaster the spec parser knows, with its parameters.
pub static KNOWN: &[Known] = &[
    Known { name: "last", doc: "p[o-1] for every future step", params: &[], build: |_| Ok(Box::new(Last)) },
    Known {
        name: "mean",
        doc: "mean of p[o-w .. o-1] for every future step",
        params: &[Param { key: "w", default: "100", doc: "window length (steps)" }],
        build: |p| Ok(Box::new(WindowMean { w: p.usize("w", 1)? })),
    },
    Known {
        name: "sw-avg",
        doc: "the paper's sliding-window average, fed its own predictions",
        params: &[Param { key: "w", default: "100", doc: "window length (steps)" }],
        build: |p| Ok(Box::new(SlidingWindowAverage { w: p.usize("w", 1)? })),
    },
    Known {
        name: "ema",
        doc: "exponential moving average e(o-1) for every future step",
        params: &[Param { key: "alpha", default: "0.3", doc: "smoothing weight in (0, 1]" }],
        build: |p| Ok(Box::new(Ema { alpha: p.f64_in("alpha", 0.0, 1.0)? })),
    },
    Known {
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
        build: |p| {
            let f = arima::ArimaForecaster {
                p: p.usize("p", 0)?,
                d: p.usize("d", 0)?,
                q: p.usize("q", 0)?,
                n: p.usize("n", 10)?,
                method: arima::Method::parse(&p.0["method"])?,
                mean: p.auto_bool("mean")?,
                opt: arima::Optimizer::parse(&p.0["opt"])?,
                warm: p.bool("warm")?,
                auto: None,
            };
            if f.p + f.q > 20 || f.d > 2 {
                return Err(format!("p + q must be at most 20 and d at most 2 (got p={}, d={}, q={})", f.p, f.d, f.q));
            }
            let need = arima::min_history(f.p, f.d, f.q);
            if f.n < need {
                return Err(format!(
                    "n={} is below the {need} observations an ARIMA({},{},{}) fit needs (d + max(50, 10 (p + q + 1)))",
                    f.n, f.p, f.d, f.q
                ));
            }
            Ok(Box::new(f))
        },
    },
    Known {
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
        build: |p| {
            let a = arima::auto::AutoSettings {
                max_p: p.usize("max_p", 0)?,
                max_q: p.usize("max_q", 0)?,
                max_d: p.usize("max_d", 0)?,
                start_p: p.usize("start_p", 0)?,
                start_q: p.usize("start_q", 0)?,
                approximation: p.auto_bool("approx")?,
                ..Default::default()
            };
            if a.max_p + a.max_q > 20 || a.max_d > 2 {
                return Err(format!("max_p + max_q must be at most 20 and max_d at most 2 (got {}, {}, {})", a.max_p, a.max_q, a.max_d));
            }
            let mut f = arima::ArimaForecaster::new(0, 0, 0);
            f.n = p.usize("n", 10)?;
            let need = arima::min_history(a.max_p, a.max_d, a.max_q);
            if f.n < need {
                return Err(format!("n={} is below the {need} observations the largest model of the search needs (max_d + max(50, 10 (max_p + max_q + 1)))", f.n));
            }
            f.auto = Some(a);
            Ok(Box::new(f))
        },
    },
    Known {
        name: "lstm",
        doc: "LSTM (burn) on the run's device, trained before the first origin or loaded with model=",
        params: lstm::PARAMS,
        build: |p| lstm::build(p, &p.1),
    },
    Known {
        name: "oracle-median",
        doc: "median of the actual future over the horizon: a floor, not a forecast",
        params: &[],
        build: |_| Ok(Box::new(OracleMedian)),
    },
];

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
    let mut params: BTreeMap<&'static str, String> = known.params.iter().map(|p| (p.key, p.default.to_string())).collect();
    let mut given = Vec::new();
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
            if given.contains(&p.key) {
                return Err(err(format!("parameter {k} is given twice")));
            }
            given.push(p.key);
            params.insert(p.key, v.to_string());
        }
    }
    (known.build)(&Params(params, given)).map_err(err)
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
pub fn renormalize(out: &mut [f64], experts: usize) {
    for row in out.chunks_mut(experts) {
        let mut s = 0.0;
        for v in row.iter_mut() {
            if *v < 0.0 || v.is_nan() {
                *v = 0.0;
            }
            s += *v;
        }
        if s > 0.0 {
            row.iter_mut().for_each(|v| *v /= s);
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
    }
}
