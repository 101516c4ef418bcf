//! `expertcast bench --stage arima`: ARIMA fits per second on the series of a trace.
//!
//! Every expert share series of every layer, cut to steps `[start, end)`, is fitted
//! once with the chosen order, method and optimiser, the series spread over
//! `--threads` rayon threads. Prints fits per second and the evaluations per fit;
//! `--json` writes one record per series (log-likelihood, σ², coefficients, time)
//! for `benches/peers/arima_statsforecast.py`, which compares with statsforecast.

use std::time::Instant;

use anyhow::{Context, bail};
use rayon::prelude::*;

use crate::forecast::arima::{Method, Optimizer, Order, difference, fit_with};
use crate::trace::{Input, ReadOptions, read_inputs};

/// Settings of the ARIMA stage of `expertcast bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct ArimaBenchArgs {
    /// Trace whose series are fitted (default: the bundled gpt12-e16-top2-s1).
    #[arg(long = "arima-trace")]
    pub trace: Option<std::path::PathBuf>,
    /// First step index of each series.
    #[arg(long = "arima-start", default_value_t = 2000)]
    pub start: usize,
    /// Step index after the last one of each series.
    #[arg(long = "arima-end", default_value_t = 4000)]
    pub end: usize,
    /// ARIMA order p,d,q.
    #[arg(long = "arima-order", default_value = "5,1,5")]
    pub order: String,
    /// css, ml or css-ml.
    #[arg(long = "arima-method", default_value = "css-ml")]
    pub method: String,
    /// lm (Levenberg-Marquardt) or nm (Nelder-Mead).
    #[arg(long = "arima-opt", default_value = "lm")]
    pub opt: String,
    /// Write one JSON record per series here.
    #[arg(long = "arima-json")]
    pub json: Option<std::path::PathBuf>,
}

pub fn bench_arima(a: &ArimaBenchArgs) -> anyhow::Result<()> {
    let order: Vec<usize> = a.order.split(',').map(|v| v.trim().parse()).collect::<Result<_, _>>().context("--arima-order must be p,d,q")?;
    let [p, d, q] = order[..] else { bail!("--arima-order must be p,d,q") };
    let method = Method::parse(&a.method)?;
    let opt = Optimizer::parse(&a.opt)?;
    let input = match &a.trace {
        Some(p) => Input::File(p.clone()),
        None => Input::bundled_named("gpt12-e16-top2-s1.parquet").expect("a bundled trace"),
    };
    let tr = read_inputs(std::slice::from_ref(&input), &ReadOptions::default())?.remove(0);
    if a.end > tr.steps() || a.start + p + q + d + 2 > a.end {
        bail!("--arima-start {} .. --arima-end {} does not fit the trace's {} steps", a.start, a.end, tr.steps());
    }
    let ne = tr.experts();
    let mut series = Vec::new();
    for l in 0..tr.layers() {
        let pr = tr.layer_proportions(l);
        for e in 0..ne {
            let y: Vec<f64> = (a.start..a.end).map(|t| pr[t * ne + e]).collect();
            series.push((l, e, y));
        }
    }
    let ord = Order { p, q, mean: d == 0 };
    let threads = rayon::current_num_threads();
    let t0 = Instant::now();
    let fits: Vec<(f64, Option<crate::forecast::arima::Fit>)> = series
        .par_iter()
        .map(|(_, _, y)| {
            let t = Instant::now();
            let f = fit_with(&difference(y, d), ord, method, None, opt);
            (t.elapsed().as_secs_f64(), f)
        })
        .collect();
    let wall = t0.elapsed().as_secs_f64();
    let ok = fits.iter().filter(|f| f.1.is_some()).count();
    let evals: usize = fits.iter().filter_map(|f| f.1.as_ref().map(|f| f.evals)).sum();
    println!(
        "arima bench: {} series of {} steps ({}..{}) from {}, ARIMA({p},{d},{q}) {} opt={} on {threads} thread(s): \
         {:.3} s, {:.1} fits/s, {:.2} ms a fit on one thread, {:.0} evaluations a fit, {} failed",
        series.len(),
        a.end - a.start,
        a.start,
        a.end,
        input.path().display(),
        a.method,
        a.opt,
        wall,
        series.len() as f64 / wall,
        fits.iter().map(|f| f.0).sum::<f64>() / series.len() as f64 * 1e3,
        evals as f64 / ok.max(1) as f64,
        series.len() - ok
    );
    if let Some(out) = &a.json {
        let recs: Vec<serde_json::Value> = series
            .iter()
            .zip(&fits)
            .map(|((l, e, _), (secs, f))| {
                serde_json::json!({
                    "layer": tr.layer_ids[*l], "expert": tr.expert_ids[*e], "seconds": secs,
                    "loglik": f.as_ref().map(|f| f.loglik), "sigma2": f.as_ref().map(|f| f.sigma2),
                    "ar": f.as_ref().map(|f| f.model.ar.clone()), "ma": f.as_ref().map(|f| f.model.ma.clone()),
                    "evals": f.as_ref().map(|f| f.evals),
                })
            })
            .collect();
        let doc = serde_json::json!({"threads": threads, "wall_seconds": wall, "opt": a.opt, "method": a.method, "order": [p, d, q], "series": recs});
        std::fs::write(out, serde_json::to_string(&doc)?).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}
