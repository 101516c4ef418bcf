//! `expertcast run`: the whole pipeline, stage by stage.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use rayon::prelude::*;

use super::progress::Progress;
use super::summary;
use super::{RunArgs, StatsDetail, UsageError};
use crate::eval::{self, Protocol, SavedForecasts, SavedRow, Score};
use crate::forecast::{Forecaster, LayerView, parse_spec};
use crate::gpu;
use crate::output::{self as out, AtomicParquet};
use crate::stats::{self, ExpertStats, LayerStats, states};
use crate::trace::{self, ColumnNames, Input, ReadOptions, Trace};

/// One row of `metrics.parquet`.
pub(super) struct MetricRow {
    pub trace: String,
    pub layer: i64,
    pub forecaster: String,
    pub real: bool,
    pub score: Score,
}

/// One row of `states.parquet`.
pub(super) struct StateRow {
    pub trace: String,
    pub layer: i64,
    pub window: usize,
    pub transition_step: Option<i64>,
    pub final_std: Option<f64>,
}

fn sorted_unique(v: &[usize]) -> Vec<usize> {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}

/// Runs the pipeline for `args`; `argv` is recorded in the manifest.
pub fn run(args: &RunArgs, argv: &[String]) -> anyhow::Result<()> {
    args.validate()?;
    let mut forecasters: Vec<Box<dyn Forecaster>> =
        args.all_forecasters().map(|s| parse_spec(s)).collect::<Result<_, _>>()?;
    let specs: Vec<String> = forecasters.iter().map(|f| f.spec()).collect();
    for (i, s) in specs.iter().enumerate() {
        if specs[..i].contains(s) {
            let how = if i >= args.forecasters.len() { " (-a adds to the -f list, or to the defaults without -f)" } else { "" };
            return Err(UsageError(format!("forecaster {s} is given twice{how}")).into());
        }
    }
    let windows = sorted_unique(&args.windows);
    let mut all_windows = windows.clone();
    all_windows.push(args.state_window);
    let all_windows = sorted_unique(&all_windows);
    let proto = Protocol {
        horizons: sorted_unique(&args.horizons),
        stride: args.origin_stride,
        start: args.origin_start.unwrap_or_else(|| eval::default_start(&forecasters)),
        renormalize: !args.no_renormalize,
    };
    for (f, spec) in forecasters.iter().zip(&specs) {
        f.check_start(proto.start).map_err(|e| UsageError(format!("--origin-start {}: {spec}: {e}", proto.start)))?;
    }
    let inputs: Vec<Input> =
        if args.traces.is_empty() { Input::bundled() } else { args.traces.iter().cloned().map(Input::File).collect() };
    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new().num_threads(n).build_global().context("starting the thread pool")?;
    }
    let progress = Progress::new(args.quiet);
    let (device, note) = gpu::choose_at(args.device, args.gpu)?;
    if let Some(n) = note {
        progress.line(n);
    }
    let mut stages: BTreeMap<&str, f64> = BTreeMap::new();

    // Read and validate every input before anything is written.
    let t = Instant::now();
    let opts = ReadOptions {
        format: args.format,
        columns: ColumnNames {
            step: args.step_col.clone(),
            layer: args.layer_col.clone(),
            expert: args.expert_col.clone(),
            tokens: args.tokens_col.clone(),
            trace: args.trace_col.clone(),
        },
    };
    let traces = trace::read_inputs(&inputs, &opts)?;
    // Sizes and hashes of what was read, taken now (before anything is written).
    let input_hashes: Vec<(u64, String)> = inputs.iter().map(|i| i.size_and_sha256()).collect::<Result<_, _>>()?;
    for tr in &traces {
        for (f, spec) in forecasters.iter().zip(&specs) {
            f.check_experts(tr.experts())
                .map_err(|e| UsageError(format!("{}: trace {} cannot be forecast with {spec}: {e}", tr.source.display(), tr.name)))?;
        }
    }
    stages.insert("read", t.elapsed().as_secs_f64());
    let n_layers: usize = traces.iter().map(|t| t.layers()).sum();
    progress.line(format!(
        "read {} trace(s) from {} file(s): {} layers, {} steps in all ({:.2} s)",
        traces.len(),
        inputs.len(),
        n_layers,
        traces.iter().map(|t| t.steps()).sum::<usize>(),
        stages["read"]
    ));

    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;

    // Window statistics (and the per-expert detail, streamed layer by layer).
    let t = Instant::now();
    let stats_gpu = match &device {
        gpu::Device::Cuda(g) => {
            let longest = stats::cuda::max_window(g)?;
            if all_windows.iter().any(|&w| w > longest) {
                progress.line(format!("window statistics on the CPU: the GPU kernel takes windows up to {longest} steps"));
                None
            } else {
                Some(g.clone())
            }
        }
        gpu::Device::Cpu => None,
    };
    let stats_device = if stats_gpu.is_some() { device.describe() } else { "cpu".to_string() };
    let bar = progress.bar(n_layers as u64, "stats");
    let mut detail_writer = match args.stats_detail {
        StatsDetail::Expert => Some(AtomicParquet::create(&args.out, "window_stats.parquet", out::window_stats_schema())?),
        StatsDetail::Layer => None,
    };
    let mut layer_stats: Vec<Vec<LayerStats>> = Vec::with_capacity(traces.len());
    for tr in &traces {
        let mut write_detail = |d: Vec<ExpertStats>| -> anyhow::Result<()> {
            if let Some(w) = detail_writer.as_mut() {
                write_expert_stats(w, tr, &windows, &d)?;
            }
            Ok(())
        };
        let detail: Option<&mut dyn FnMut(Vec<ExpertStats>) -> anyhow::Result<()>> =
            if args.stats_detail == StatsDetail::Expert { Some(&mut write_detail) } else { None };
        layer_stats.push(match &stats_gpu {
            Some(g) => stats::cuda::layer_stats_cuda(g, tr, &all_windows, detail, || bar.inc(1))
                .with_context(|| format!("window statistics of {} on {}", tr.name, device.describe()))?,
            None => stats::layer_stats_cpu(tr, &all_windows, detail, || bar.inc(1))?,
        });
    }
    bar.finish_and_clear();
    let mut w = AtomicParquet::create(&args.out, "layer_stats.parquet", out::layer_stats_schema())?;
    for (tr, ls) in traces.iter().zip(&layer_stats) {
        for s in ls.iter().filter(|s| windows.contains(&s.window)) {
            write_layer_stats(&mut w, tr, s)?;
        }
    }
    w.finish()?;
    if let Some(w) = detail_writer {
        w.finish()?;
    }
    stages.insert("stats", t.elapsed().as_secs_f64());
    progress.line(format!(
        "window statistics: {} window(s) over {} layers on {} ({:.2} s)",
        all_windows.len(),
        n_layers,
        stats_device,
        stages["stats"]
    ));

    // States.
    let t = Instant::now();
    let mut state_rows = Vec::new();
    let mut stable_from: Vec<Vec<Option<usize>>> = Vec::new();
    for (tr, ls) in traces.iter().zip(&layer_stats) {
        let mut per_layer = vec![None; tr.layers()];
        for s in ls {
            let st = states::transition(&s.std_mean, s.window, args.kappa);
            if s.window == args.state_window {
                per_layer[s.layer] = st.transition;
            }
            state_rows.push(StateRow {
                trace: tr.name.clone(),
                layer: tr.layer_ids[s.layer],
                window: s.window,
                transition_step: st.transition.map(|i| tr.step_at(i)),
                final_std: st.final_std,
            });
        }
        stable_from.push(per_layer);
    }
    write_states(&args.out, &state_rows, args.kappa)?;
    drop(layer_stats);
    stages.insert("states", t.elapsed().as_secs_f64());

    // Forecasts and scores: every (layer, forecaster) of a trace in parallel.
    let t = Instant::now();
    let mut metric_rows: Vec<MetricRow> = Vec::new();
    // One unit per series and origin forecast: for ARIMA, fits per second.
    let units: u64 = traces
        .iter()
        .map(|t| (t.layers() * t.experts() * proto.origins(t.steps()).len() * forecasters.len()) as u64)
        .sum();
    let bar = progress.bar(units, "forecast");
    bar.set_message(if specs.iter().any(|s| s.starts_with("arima")) { "series forecasts (ARIMA: fits)" } else { "series forecasts" });
    let messages: crate::forecast::lstm::Messages = {
        let bar = bar.clone();
        std::sync::Arc::new(move |m: String| bar.set_message(m))
    };
    for f in forecasters.iter_mut() {
        f.use_device(&device, Some(messages.clone()));
    }
    let mut fc_writer = if args.save_forecasts {
        // Say how big it gets before writing it: with the defaults on the bundled
        // traces it is 189 M rows, and writing them dominates the run.
        let rows: u64 = traces
            .iter()
            .map(|t| t.layers() as u64 * forecasters.len() as u64 * eval::saved_rows(&proto, t.steps(), t.experts()))
            .sum();
        let bytes = rows as f64 * 2.3;
        let size = if bytes < 1e6 { format!("{:.0} kB", bytes / 1e3) } else { format!("{:.0} MB", bytes / 1e6) };
        progress.line(format!(
            "--save-forecasts: forecasts.parquet gets {} rows (about {size} at the ~2.3 bytes a row measured on the \
             bundled traces); encoding them takes most of this stage",
            super::progress::group_digits(rows)
        ));
        Some(AtomicParquet::create(&args.out, "forecasts.parquet", out::forecasts_schema())?)
    } else {
        None
    };
    for (ti, tr) in traces.iter().enumerate() {
        // A group of layers at a time (as many as threads, within 512 MB of float64
        // shares), every (layer, forecaster) of the group in parallel.
        let layer_bytes = 8 * tr.steps() * tr.experts();
        let group = rayon::current_num_threads().min((512 << 20) / layer_bytes.max(1)).max(1);
        for first in (0..tr.layers()).step_by(group) {
            let layers: Vec<usize> = (first..(first + group).min(tr.layers())).collect();
            let shares: Vec<Vec<f64>> = layers.par_iter().map(|&l| tr.layer_proportions(l)).collect();
            let tasks: Vec<(usize, usize)> =
                (0..layers.len()).flat_map(|g| (0..forecasters.len()).map(move |f| (g, f))).collect();
            let results: Vec<anyhow::Result<(Vec<Score>, Option<SavedForecasts>)>> = tasks
                .par_iter()
                .map(|&(g, fi)| {
                    let l = layers[g];
                    let view = LayerView::new(&shares[g], tr.experts());
                    let mut saved = args
                        .save_forecasts
                        .then(|| SavedForecasts::with_capacity(eval::saved_rows(&proto, tr.steps(), tr.experts()) as usize));
                    let scores =
                        eval::evaluate_layer_progress(&view, forecasters[fi].as_ref(), &proto, stable_from[ti][l], saved.as_mut(), &|n| bar.inc(n))
                            .with_context(|| format!("forecasting {} layer {} with {}", tr.name, tr.layer_ids[l], specs[fi]))?;
                    Ok((scores, saved))
                })
                .collect();
            for (&(g, fi), r) in tasks.iter().zip(results) {
                let l = layers[g];
                let (scores, saved) = r?;
                for score in scores {
                    metric_rows.push(MetricRow {
                        trace: tr.name.clone(),
                        layer: tr.layer_ids[l],
                        forecaster: specs[fi].clone(),
                        real: forecasters[fi].is_real(),
                        score,
                    });
                }
                if let (Some(w), Some(s)) = (fc_writer.as_mut(), saved) {
                    write_forecasts(w, tr, l, &LayerView::new(&shares[g], tr.experts()), &specs[fi], &s)?;
                }
            }
        }
    }
    bar.finish_and_clear();
    write_metrics(&args.out, &metric_rows)?;
    if let Some(w) = fc_writer {
        w.finish()?;
    }
    stages.insert("forecast", t.elapsed().as_secs_f64());
    let n_origins: usize = traces.iter().map(|t| proto.origins(t.steps()).len()).sum();
    progress.line(format!(
        "forecasts: {} forecaster(s) × {} layers, {} origin(s) from step index {} every {} ({:.2} s)",
        forecasters.len(),
        n_layers,
        n_origins,
        proto.start,
        proto.stride,
        stages["forecast"]
    ));

    // Fits that fell back, per forecaster that can fail (each origin's series counted
    // once: the shortest horizon of regime "all" scores every origin).
    if let Some(h0) = proto.horizons.iter().min() {
        for spec in specs.iter().filter(|s| s.starts_with("arima")) {
            let (mut fb, mut fits) = (0u64, 0u64);
            for r in metric_rows.iter().filter(|r| &r.forecaster == spec && r.score.horizon == *h0 && r.score.regime == eval::Regime::All) {
                let experts = traces.iter().find(|t| t.name == r.trace).map_or(0, |t| t.experts()) as u64;
                fb += r.score.fallbacks;
                fits += r.score.origins * experts;
            }
            progress.line(format!("{spec}: {fb} of the {fits} series fits scored at horizon {h0} fell back to mean:w=100"));
        }
    }

    // Manifest last: its presence marks a complete run.
    let mut inputs_json = Vec::new();
    for (input, (bytes, sha256)) in inputs.iter().zip(&input_hashes) {
        let p = input.path();
        let ts: Vec<serde_json::Value> = traces
            .iter()
            .filter(|t| t.source == p)
            .map(|t| {
                serde_json::json!({
                    "name": t.name, "steps": t.steps(), "layers": t.layers(), "experts": t.experts(),
                    "first_step": t.first_step,
                })
            })
            .collect();
        inputs_json.push(serde_json::json!({
            "path": p.display().to_string(), "bytes": bytes, "sha256": sha256, "traces": ts,
        }));
    }
    let manifest = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "command_line": argv,
        "config": {
            "windows": windows,
            "state_window": args.state_window,
            "kappa": args.kappa,
            "horizons": proto.horizons,
            "forecasters": specs,
            "origin_start": proto.start,
            "origin_stride": proto.stride,
            "renormalize": proto.renormalize,
            "stats_detail": args.stats_detail,
            "save_forecasts": args.save_forecasts,
            "device_requested": args.device,
            "threads": rayon::current_num_threads(),
            "columns": opts.columns,
            "format": args.format,
        },
        "inputs": inputs_json,
        "device": device.describe(),
        "stats_device": stats_device,
        "seconds": stages,
    });
    out::write_atomic(&args.out, "manifest.json", serde_json::to_string_pretty(&manifest)?.as_bytes())?;

    if !args.quiet {
        summary::print(&metric_rows, &state_rows, &specs, args.state_window, args.kappa, &args.out);
    }
    Ok(())
}

fn write_layer_stats(w: &mut AtomicParquet, tr: &Trace, s: &LayerStats) -> anyhow::Result<()> {
    let n = s.var_mean.len();
    let schema = out::layer_stats_schema();
    let b = out::batch(
        &schema,
        vec![
            out::strs(std::iter::repeat_n(&tr.name, n)),
            out::i32s(std::iter::repeat_n(tr.layer_ids[s.layer], n)),
            out::i32s(std::iter::repeat_n(s.window as i64, n)),
            out::i64s((0..n).map(|i| tr.step_at(s.window - 1 + i))),
            out::f64s(s.var_mean.iter().copied()),
            out::f64s(s.var_max.iter().copied()),
            out::f64s(s.range_mean.iter().copied()),
            out::f64s(s.range_max.iter().copied()),
        ],
    )?;
    w.write(&b)
}

fn write_expert_stats(w: &mut AtomicParquet, tr: &Trace, windows: &[usize], d: &[ExpertStats]) -> anyhow::Result<()> {
    let schema = out::window_stats_schema();
    for s in d.iter().filter(|s| windows.contains(&s.window)) {
        let n = s.mean.len();
        let b = out::batch(
            &schema,
            vec![
                out::strs(std::iter::repeat_n(&tr.name, n)),
                out::i32s(std::iter::repeat_n(tr.layer_ids[s.layer], n)),
                out::i32s(std::iter::repeat_n(tr.expert_ids[s.expert], n)),
                out::i32s(std::iter::repeat_n(s.window as i64, n)),
                out::i64s((0..n).map(|i| tr.step_at(s.window - 1 + i))),
                out::f64s(s.mean.iter().copied()),
                out::f64s(s.var.iter().copied()),
                out::f64s(s.range.iter().copied()),
            ],
        )?;
        w.write(&b)?;
    }
    Ok(())
}

fn write_states(dir: &Path, rows: &[StateRow], kappa: f64) -> anyhow::Result<()> {
    let schema = out::states_schema();
    let b = out::batch(
        &schema,
        vec![
            out::strs(rows.iter().map(|r| &r.trace)),
            out::i32s(rows.iter().map(|r| r.layer)),
            out::i32s(rows.iter().map(|r| r.window as i64)),
            out::f64s(rows.iter().map(|_| kappa)),
            out::opt_i64s(rows.iter().map(|r| r.transition_step)),
            out::opt_f64s(rows.iter().map(|r| r.final_std)),
        ],
    )?;
    let mut w = AtomicParquet::create(dir, "states.parquet", schema)?;
    w.write(&b)?;
    w.finish()?;
    Ok(())
}

fn write_metrics(dir: &Path, rows: &[MetricRow]) -> anyhow::Result<()> {
    let schema = out::metrics_schema();
    let b = out::batch(
        &schema,
        vec![
            out::strs(rows.iter().map(|r| &r.trace)),
            out::i32s(rows.iter().map(|r| r.layer)),
            out::strs(rows.iter().map(|r| &r.forecaster)),
            out::i32s(rows.iter().map(|r| r.score.horizon as i64)),
            out::strs(rows.iter().map(|r| r.score.regime.as_str())),
            out::i64s(rows.iter().map(|r| r.score.origins as i64)),
            out::opt_f64s(rows.iter().map(|r| r.score.mae_pp)),
            out::opt_f64s(rows.iter().map(|r| r.score.rmse_pp)),
            out::opt_f64s(rows.iter().map(|r| r.score.tv_pct)),
            out::i64s(rows.iter().map(|r| r.score.fallbacks as i64)),
        ],
    )?;
    let mut w = AtomicParquet::create(dir, "metrics.parquet", schema)?;
    w.write(&b)?;
    w.finish()?;
    Ok(())
}

fn write_forecasts(w: &mut AtomicParquet, tr: &Trace, l: usize, layer: &LayerView, spec: &str, s: &SavedForecasts) -> anyhow::Result<()> {
    let schema = out::forecasts_schema();
    const CHUNK: usize = 1 << 16;
    let mut rows = s.rows(layer).peekable();
    let mut chunk: Vec<SavedRow> = Vec::with_capacity(CHUNK.min(s.len()));
    while rows.peek().is_some() {
        chunk.clear();
        chunk.extend(rows.by_ref().take(CHUNK));
        let n = chunk.len();
        let b = out::batch(
            &schema,
            vec![
                out::strs(std::iter::repeat_n(&tr.name, n)),
                out::i32s(std::iter::repeat_n(tr.layer_ids[l], n)),
                out::i32s(chunk.iter().map(|r| tr.expert_ids[r.expert])),
                out::strs(std::iter::repeat_n(spec, n)),
                out::i64s(chunk.iter().map(|r| tr.step_at(r.origin))),
                out::i32s(chunk.iter().map(|r| r.k as i64)),
                out::f64s(chunk.iter().map(|r| r.predicted)),
                out::f64s(chunk.iter().map(|r| r.actual)),
                out::opt_f64s(chunk.iter().map(|r| r.stderr)),
            ],
        )?;
        w.write(&b)?;
    }
    Ok(())
}
