//! The pipeline, one function per stage: [`prepare`] the forecasters and the
//! protocol, [`read`] the inputs, compute window [`statistics`], derive [`states`],
//! [`forecast`] and score, score expert [`placement`] when asked, then hand the
//! manifest to the [`Sink`]. [`run`] chains
//! them for a [`RunPlan`]; `expertcast run` and every unit of `expertcast sweep` call
//! it, each with its own sink ([`output::RunDir`](crate::output::RunDir),
//! [`output::hive::HiveSink`](crate::output::hive::HiveSink)).

pub mod plan;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget};
use rayon::prelude::*;

pub use plan::{RunPlan, StatsDetail, Work};

use crate::UsageError;
use crate::eval::{self, Protocol, SavedForecasts, Score};
use crate::forecast::{DeviceModel, FitContext, Forecaster, LayerView, parse_spec};
use crate::gpu::{self, Device};
use crate::output::{self, MetricRow, PlacementRow, Sink, StateRow, Table};
use crate::placement::{self as place, Policy};
use crate::stats::{self, ExpertStats, LayerStats, states as rule};
use crate::trace::{self, Trace};

/// What a run tells its user while it works: stage lines and progress bars.
pub trait Progress: Sync {
    fn line(&self, msg: String);
    /// A bar of `len` units for a long stage.
    fn bar(&self, len: u64, what: &str) -> ProgressBar;
}

/// No progress at all (a sweep's units, tests).
pub struct Silent;

impl Progress for Silent {
    fn line(&self, _msg: String) {}
    fn bar(&self, len: u64, _what: &str) -> ProgressBar {
        ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::hidden())
    }
}

/// What a run did: its rows for the summary and its seconds per stage.
pub struct RunReport {
    pub specs: Vec<String>,
    pub metrics: Vec<MetricRow>,
    pub states: Vec<StateRow>,
    /// Rows of `placement.parquet` (none without placement).
    pub placement: Vec<PlacementRow>,
    /// Seconds per stage: read, stats, states, forecast (and placement).
    pub seconds: BTreeMap<&'static str, f64>,
}

/// The run's forecasters, their canonical specs and the protocol.
pub struct Prepared {
    pub forecasters: Vec<Box<dyn Forecaster>>,
    pub specs: Vec<String>,
    pub protocol: Protocol,
}

/// Parses and checks the forecasters and fixes the protocol: everything that can be
/// refused before a file is read.
pub fn prepare(plan: &RunPlan) -> anyhow::Result<Prepared> {
    plan.validate()?;
    let forecasters: Vec<Box<dyn Forecaster>> = plan.all_forecasters().map(|s| parse_spec(s)).collect::<Result<_, _>>()?;
    let specs: Vec<String> = forecasters.iter().map(|f| f.spec()).collect();
    for (i, s) in specs.iter().enumerate() {
        if specs[..i].contains(s) {
            let how = if i >= plan.work.forecasters.len() { " (-a adds to the -f list, or to the defaults without -f)" } else { "" };
            return Err(UsageError(format!("forecaster {s} is given twice{how}")).into());
        }
    }
    let protocol = plan.protocol(plan.origin_start.unwrap_or_else(|| eval::default_start(&forecasters)));
    for (f, spec) in forecasters.iter().zip(&specs) {
        f.check_start(protocol.start).map_err(|e| UsageError(format!("--origin-start {}: {spec}: {e}", protocol.start)))?;
    }
    Ok(Prepared { forecasters, specs, protocol })
}

/// The traces of a run, with the size and SHA-256 of each input as it was read.
pub struct Inputs {
    pub traces: Vec<Trace>,
    pub hashes: Vec<(u64, String)>,
}

/// Reads and checks every input (nothing is written before this succeeds).
pub fn read(plan: &RunPlan, prep: &Prepared) -> anyhow::Result<Inputs> {
    let before = stamps(plan);
    let traces = read_traces(plan, prep)?;
    let hashes = hash_inputs(plan)?;
    check_unchanged(plan, before)?;
    Ok(Inputs { traces, hashes })
}

/// Size and modification time of each input file: taken before reading and checked
/// after hashing (unchanged: the hash in the manifest is that of the bytes read).
type Stamps = Vec<Option<(u64, Option<std::time::SystemTime>)>>;

fn stamps(plan: &RunPlan) -> Stamps {
    let stamp = |i: &trace::Input| match i {
        trace::Input::File(p) => std::fs::metadata(p).ok().map(|m| (m.len(), m.modified().ok())),
        trace::Input::Bundled(_) => None,
    };
    plan.inputs.iter().map(stamp).collect()
}

fn check_unchanged(plan: &RunPlan, before: Stamps) -> anyhow::Result<()> {
    for (input, (now, was)) in plan.inputs.iter().zip(stamps(plan).into_iter().zip(before)) {
        if now != was {
            return Err(UsageError(format!("{}: the file changed while it was being read; run again once it is written", input.path().display())).into());
        }
    }
    Ok(())
}

/// The size and SHA-256 of every input, for the manifest.
fn hash_inputs(plan: &RunPlan) -> anyhow::Result<Vec<(u64, String)>> {
    let _span = crate::profile::span(|| "SHA-256 of the inputs".into());
    Ok(plan.inputs.iter().map(|i| i.size_and_sha256()).collect::<Result<_, _>>()?)
}

/// Reads and checks the inputs' traces, and checks them against the forecasters.
fn read_traces(plan: &RunPlan, prep: &Prepared) -> anyhow::Result<Vec<Trace>> {
    let _span = crate::profile::span(|| "read: decode and check".into());
    let traces = trace::read_inputs(&plan.inputs, &plan.read)?;
    for tr in &traces {
        for (f, spec) in prep.forecasters.iter().zip(&prep.specs) {
            f.check_experts(tr.experts())
                .map_err(|e| UsageError(format!("{}: trace {} cannot be forecast with {spec}: {e}", tr.source.display(), tr.name)))?;
        }
        if let Some(p) = &plan.work.placement {
            p.check_experts(tr.experts())
                .map_err(|e| UsageError(format!("{}: trace {} has {} experts: {e}", tr.source.display(), tr.name, tr.experts())))?;
        }
    }
    Ok(traces)
}

/// The tables a plan writes.
pub fn tables(plan: &RunPlan) -> Vec<Table> {
    let mut t = vec![Table::LayerStats];
    if plan.stats_detail == StatsDetail::Expert {
        t.push(Table::WindowStats);
    }
    t.extend([Table::States, Table::Metrics]);
    if plan.save_forecasts {
        t.push(Table::Forecasts);
    }
    if plan.work.placement.is_some() {
        t.push(Table::Placement);
    }
    t
}

/// Window statistics of every trace (per trace, every layer and window of
/// [`RunPlan::all_windows`]); layer summaries of the plan's windows and, with
/// `--stats-detail expert`, every expert's statistics go to the sink. Returns the
/// summaries and the device they were computed on. On a GPU, the traces' loads stay
/// there for [`forecast`], which frees them (else [`crate::gpu::Gpu::release`]).
pub fn statistics(
    plan: &RunPlan,
    traces: &[Trace],
    device: &Device,
    sink: &mut dyn Sink,
    progress: &dyn Progress,
) -> anyhow::Result<(Vec<Vec<LayerStats>>, String)> {
    let windows = plan.windows();
    let all_windows = plan.all_windows();
    let stats_gpu = match device {
        Device::Cuda(g) => {
            let _span = crate::profile::span(|| "stats: load the window kernels".into());
            let longest = stats::cuda::max_window(g)?;
            if all_windows.iter().any(|&w| w > longest) {
                progress.line(format!("window statistics on the CPU: the GPU kernel takes windows up to {longest} steps"));
                None
            } else {
                Some(g.clone())
            }
        }
        Device::Cpu => None,
    };
    let stats_device = if stats_gpu.is_some() { device.describe() } else { "cpu".to_string() };
    let n_layers: usize = traces.iter().map(|t| t.layers()).sum();
    let bar = progress.bar(n_layers as u64, "stats");
    let expert_detail = plan.stats_detail == StatsDetail::Expert;
    // Each trace's per-expert detail is written as it comes, the layer summaries after.
    let mut layer_stats: Vec<Vec<LayerStats>> = Vec::with_capacity(traces.len());
    // Each trace's key columns, made once for its detail and its summaries.
    let mut trace_keys = Vec::with_capacity(traces.len());
    for tr in traces {
        // The trace's loads go up once, for this stage and the forecast stage, which
        // releases them.
        if let Some(g) = &stats_gpu {
            g.keep(tr).with_context(|| format!("keeping the loads of {} on {}", tr.name, device.describe()))?;
        }
        let keys = output::TraceKeys::new(tr);
        let mut write_detail = |d: Vec<ExpertStats>| -> anyhow::Result<()> {
            for s in d.iter().filter(|s| windows.contains(&s.window)) {
                sink.write(Table::WindowStats, &output::window_stats_batch(&keys, s)?)?;
            }
            Ok(())
        };
        let detail: Option<&mut dyn FnMut(Vec<ExpertStats>) -> anyhow::Result<()>> =
            if expert_detail { Some(&mut write_detail) } else { None };
        layer_stats.push(match &stats_gpu {
            Some(g) => stats::cuda::layer_stats_cuda(g, tr, &all_windows, detail, || bar.inc(1))
                .with_context(|| format!("window statistics of {} on {}", tr.name, device.describe()))?,
            None => stats::layer_stats_cpu(tr, &all_windows, detail, || bar.inc(1))?,
        });
        trace_keys.push(keys);
    }
    bar.finish_and_clear();
    let _span = crate::profile::span(|| "stats: write layer summaries".into());
    // Batches made in parallel, handed over in order (the sink encodes them on).
    for (keys, ls) in trace_keys.iter().zip(&layer_stats) {
        let chosen: Vec<&LayerStats> = ls.iter().filter(|s| windows.contains(&s.window)).collect();
        let batches: Vec<arrow::array::RecordBatch> = chosen.par_iter().map(|s| output::layer_stats_batch(keys, s)).collect::<anyhow::Result<_>>()?;
        for b in &batches {
            sink.write(Table::LayerStats, b)?;
        }
    }
    // Encoded while the run goes on (a small run's summaries are one row group, which
    // would otherwise wait for the end).
    sink.end(Table::LayerStats)?;
    sink.end(Table::WindowStats)?;
    Ok((layer_stats, stats_device))
}

/// The states of every (trace, layer, window) and, per trace and layer, the step
/// index from which origins count as stable (the state window's transition).
pub fn states(plan: &RunPlan, traces: &[Trace], layer_stats: &[Vec<LayerStats>], sink: &mut dyn Sink) -> anyhow::Result<(Vec<StateRow>, Vec<Vec<Option<usize>>>)> {
    let mut rows = Vec::new();
    let mut stable_from = Vec::new();
    for (tr, ls) in traces.iter().zip(layer_stats) {
        let mut per_layer = vec![None; tr.layers()];
        for s in ls {
            let st = rule::transition(&s.summary.std_mean, s.window, plan.kappa);
            if s.window == plan.state_window {
                per_layer[s.layer] = st.transition;
            }
            rows.push(StateRow {
                trace: tr.name.clone(),
                layer: tr.layer_ids[s.layer],
                window: s.window,
                transition_step: st.transition.map(|i| tr.step_at(i)),
                final_std: st.final_std,
            });
        }
        stable_from.push(per_layer);
    }
    sink.write(Table::States, &output::states_batch(&rows, plan.kappa)?)?;
    sink.end(Table::States)?;
    Ok((rows, stable_from))
}

/// The shares of `layers` of `tr` (step-major, [`Trace::layer_proportions`]), in
/// parallel, each in a buffer of `buffers` kept from group to group (freeing and
/// faulting in a paper-scale layer's 100 MB each time costs more than its fill).
fn group_shares<'b>(tr: &Trace, layers: &[usize], buffers: &'b mut Vec<Vec<f64>>, stage: &str) -> &'b [Vec<f64>] {
    let _span = crate::profile::span(|| format!("{stage}: shares of {} layers", layers.len()));
    buffers.resize_with(buffers.len().max(layers.len()), Vec::new);
    let shares = &mut buffers[..layers.len()];
    shares.par_iter_mut().zip(layers).for_each(|(b, &l)| tr.layer_proportions_into(l, b));
    shares
}

/// Layers of `tr` worked on at once: as many as threads, within 512 MB of their
/// float64 shares, and more where they are small (up to 64 MB in all), unless
/// `saving` forecasts (a group's saved forecasts are held until its end, and they are
/// 10-20 times its shares): a small layer's tasks are short and uneven, and a group's
/// end waits for its longest.
fn layer_group(tr: &Trace, saving: bool) -> usize {
    let layer_bytes = 8 * tr.steps() * tr.experts();
    let threads = rayon::current_num_threads();
    let at_least = if saving { threads } else { threads.max((64 << 20) / layer_bytes.max(1)) };
    at_least.min((512 << 20) / layer_bytes.max(1)).max(1)
}

/// Forecasts and scores every (trace, layer, forecaster): a group of layers at a time
/// ([`layer_group`]), every (layer, forecaster)
/// of a group in parallel. On a GPU, each layer's shares are made there from the
/// trace's loads (else copied up, overlapping the kernels of the layer before); when
/// every forecaster is predicted there too (the defaults), the host makes no shares
/// at all. Otherwise the next group's shares (in a second 512 MB at most) and
/// host-made rows are made while the GPU scores a group. Metrics (and saved
/// forecasts) go to the sink; what placement can reuse is returned.
#[allow(clippy::too_many_arguments)]
pub fn forecast(
    plan: &RunPlan,
    traces: &[Trace],
    prep: &Prepared,
    stable_from: &[Vec<Option<usize>>],
    device: &Device,
    sink: &mut dyn Sink,
    progress: &dyn Progress,
) -> anyhow::Result<(Vec<MetricRow>, Kept)> {
    let proto = &prep.protocol;
    let specs = &prep.specs;
    let mut metric_rows: Vec<MetricRow> = Vec::new();
    let mut kept = Kept::default();
    // One unit per series and origin forecast: for ARIMA, fits per second.
    let units: u64 = traces
        .iter()
        .map(|t| (t.layers() * t.experts() * proto.origins(t.steps()).len() * prep.forecasters.len()) as u64)
        .sum();
    let bar = progress.bar(units, "forecast");
    bar.set_message(if specs.iter().any(|s| s.starts_with("arima")) { "series forecasts (ARIMA: fits)" } else { "series forecasts" });
    let ctx = FitContext {
        device: device.clone(),
        messages: Some({
            let bar = bar.clone();
            std::sync::Arc::new(move |m: String| bar.set_message(m))
        }),
    };
    let forecasters = &prep.forecasters;
    if plan.save_forecasts {
        // Say how big it gets before writing it: with the defaults on the bundled
        // traces it is 189 M rows, and writing them dominates the run.
        let rows: u64 =
            traces.iter().map(|t| t.layers() as u64 * forecasters.len() as u64 * eval::saved_rows(proto, t.steps(), t.experts())).sum();
        let bytes = rows as f64 * 2.0;
        let size = if bytes < 1e6 { format!("{:.0} kB", bytes / 1e3) } else { format!("{:.0} MB", bytes / 1e6) };
        progress.line(format!(
            "--save-forecasts: forecasts.parquet gets {} rows (about {size} at the ~2.0 bytes a row measured on the \
             bundled traces); encoding them takes most of this stage",
            group_digits(rows)
        ));
    }
    // On a GPU (and unless forecasts are saved), every forecaster with a device
    // model is scored on the device, one layer at a time on one thread, while the
    // others run on the CPU's threads.
    let mut scorer = match device {
        Device::Cuda(g) if scores_on_device(plan, prep) => {
            Some(eval::cuda::Scorer::new(g).context("preparing the GPU's scoring kernels")?)
        }
        _ => None,
    };
    let placing = plan.work.placement.as_ref();
    // Placement scores its plans on the layers' shares that the scorer leaves on the
    // GPU, within a quarter of the device memory free now (the rest go up again; a
    // sweep's workers on one GPU each take a quarter of what they find free).
    let mut device_room = match (&scorer, device, placing) {
        (Some(_), Device::Cuda(g), Some(_)) => g.ctx.mem_get_info().context("reading the GPU's free memory")?.0 / 4,
        _ => 0,
    };
    // The shares of a group's layers, filled again for each group, and of the next
    // group while the GPU scores one.
    let mut buffers: Vec<Vec<f64>> = Vec::new();
    let mut ahead: Vec<Vec<f64>> = Vec::new();
    for (ti, tr) in traces.iter().enumerate() {
        let group = layer_group(tr, plan.save_forecasts);
        let on_device: Vec<Option<DeviceModel>> = forecasters
            .iter()
            .map(|f| f.on_device().filter(|&m| scorer.is_some() && eval::cuda::fits(m, tr.experts(), proto)))
            // Placement keeps the rows of the flat forecasters as their weights: they
            // are made on the host then (see `Kept::means`).
            .map(|m| match m {
                Some(DeviceModel::Last | DeviceModel::Mean { .. } | DeviceModel::Ema { .. }) if placing.is_some() => Some(DeviceModel::HostRows),
                m => m,
            })
            .collect();
        // The trace's loads on the GPU (kept from the statistics stage): each layer's
        // shares are made there instead of copied up.
        let resident = match (&scorer, device) {
            (Some(_), Device::Cuda(g)) if on_device.iter().any(Option::is_some) => g.resident(tr).context("keeping the trace's loads on the GPU")?,
            _ => None,
        };
        // Whether the host needs the layers' shares: not when every forecaster is
        // predicted on the GPU from shares made there (the default run's five).
        let host_shares = resident.is_none() || placing.is_some() || on_device.iter().any(|m| m.is_none_or(|m| m == DeviceModel::HostRows));
        let leave_on_device = placing.is_some_and(|p| place::cuda::fits(tr.experts(), p.replicas.iter().copied().max().unwrap_or(0)));
        // The first placement interval's origins: placement's weights of a forecaster
        // scored on the GPU from its own predictions (`sw-avg`, `oracle-median`) are
        // made here, on the CPU, while the GPU scores.
        let placement_origins = placing.map(|p| (p.horizons[0], place::placement_origins(&proto.origins(tr.steps()), p.horizons[0], tr.steps())));
        // With no shares on the host, one group: the GPU goes from layer to layer
        // without waiting at a group's end.
        let group = if host_shares { group } else { tr.layers() };
        let groups: Vec<Vec<usize>> = (0..tr.layers()).step_by(group).map(|f| (f..(f + group).min(tr.layers())).collect()).collect();
        // On a GPU, the next group's shares and host-made rows are made while the GPU
        // scores this group (in `ahead`, swapped in when the group comes).
        let mut rows_ahead: Option<MadeRows> = None;
        for (gn, layers) in groups.iter().enumerate() {
            let shares: &[Vec<f64>] = if rows_ahead.is_some() {
                std::mem::swap(&mut buffers, &mut ahead);
                &buffers[..layers.len()]
            } else if host_shares {
                group_shares(tr, layers, &mut buffers, "forecast")
            } else {
                &[]
            };
            let made_ahead = rows_ahead.take();
            let tasks: Vec<(usize, usize)> = (0..layers.len()).flat_map(|g| (0..forecasters.len()).map(move |f| (g, f))).collect();
            let what = |g: usize, fi: usize| format!("forecasting {} layer {} with {}", tr.name, tr.layer_ids[layers[g]], specs[fi]);
            let cpu_task = |&(g, fi): &(usize, usize)| -> anyhow::Result<(Vec<Score>, Option<SavedForecasts>, Vec<Vec<f64>>)> {
                let l = layers[g];
                let view = LayerView::new(&shares[g], tr.experts());
                let mut saved =
                    plan.save_forecasts.then(|| SavedForecasts::with_capacity(eval::saved_rows(proto, tr.steps(), tr.experts()) as usize));
                // Placement reuses what was predicted here when the scored steps cover
                // its interval: ARIMA and the LSTM need not fit again.
                let mut means = Vec::new();
                let keep = plan.work.placement.as_ref().filter(|p| proto.max_horizon() >= p.horizons[0]).map(|p| eval::KeptMeans { steps: p.horizons[0], means: &mut means });
                let scores = eval::evaluate_layer_progress(&view, forecasters[fi].as_ref(), proto, stable_from[ti][l], saved.as_mut(), &ctx, &|n| {
                    bar.inc(n)
                }, keep)
                .with_context(|| what(g, fi))?;
                Ok((scores, saved, means))
            };
            // A flat forecast's one row per origin is also its mean over any interval
            // (as `eval::mean_of_rows` takes it), so placement keeps those rows.
            let keep_rows = plan.work.placement.is_some();
            type DeviceOut = (Vec<(Vec<Score>, Vec<Vec<f64>>)>, Vec<(usize, cudarc::driver::CudaSlice<f64>)>);
            let room = &mut device_room;
            // The host-made rows of every layer of a group, in parallel.
            let host_rows = |layers: &[usize], shares: &[Vec<f64>]| -> MadeRows {
                let _span = crate::profile::span(|| format!("forecast: host rows of layers {layers:?}"));
                let host: Vec<(usize, usize)> = (0..layers.len())
                    .flat_map(|g| (0..forecasters.len()).map(move |f| (g, f)))
                    .filter(|&(_, fi)| on_device[fi] == Some(DeviceModel::HostRows))
                    .collect();
                let made: Vec<anyhow::Result<eval::cuda::HostRows>> = host
                    .par_iter()
                    .map(|&(g, fi)| {
                        let view = LayerView::new(&shares[g], tr.experts());
                        eval::cuda::host_rows(&view, forecasters[fi].as_ref(), proto, &ctx, &|n| bar.inc(n)).with_context(|| {
                            format!("forecasting {} layer {} with {}", tr.name, tr.layer_ids[layers[g]], specs[fi])
                        })
                    })
                    .collect();
                host.into_iter().zip(made).collect()
            };
            let device_task = |scorer: &mut eval::cuda::Scorer| -> anyhow::Result<DeviceOut> {
                type Scoring = (usize, usize, eval::cuda::Pending, Vec<Vec<f64>>);
                // Enqueues layer g's scorings by the forecasters `fis` (in slot `slot`).
                let enqueue = |scorer: &mut eval::cuda::Scorer, made: &mut MadeRows, g: usize, fis: &[usize], pending: &mut Vec<Scoring>| -> anyhow::Result<()> {
                    let l = layers[g];
                    let view = shares.get(g).map(|s| LayerView::new(s, tr.experts()));
                    for &fi in fis {
                        let m = on_device[fi].expect("a forecaster on the device");
                        let _span = crate::profile::span(|| format!("forecast: layer {l} {} enqueued", specs[fi]));
                        let rows = made.remove(&(g, fi)).transpose()?;
                        let means: Vec<Vec<f64>> = match &rows {
                            Some((r, _)) if keep_rows => r.chunks(tr.experts()).map(<[f64]>::to_vec).collect(),
                            _ => Vec::new(),
                        };
                        let p = scorer
                            .enqueue((tr.steps(), tr.experts()), view.as_ref(), forecasters[fi].as_ref(), m, proto, stable_from[ti][l], &ctx, &|n| bar.inc(n), rows)
                            .with_context(|| what(g, fi))?;
                        pending.push((g, fi, p, means));
                    }
                    Ok(())
                };
                let load = |scorer: &mut eval::cuda::Scorer, g: usize| -> anyhow::Result<usize> {
                    let l = layers[g];
                    let _span = crate::profile::span(|| format!("forecast: layer {l} to the GPU"));
                    match &resident {
                        Some(r) => scorer.load_resident(r, l),
                        None => scorer.load(&LayerView::new(&shares[g], tr.experts())),
                    }
                    .with_context(|| format!("forecasting {} layer {} on the GPU", tr.name, tr.layer_ids[l]))
                };
                let (rows_first, own_first): (Vec<usize>, Vec<usize>) =
                    (0..forecasters.len()).filter(|&fi| on_device[fi].is_some()).partition(|&fi| on_device[fi] == Some(DeviceModel::HostRows));
                // The first group's rows are not made ahead: the GPU starts on the first
                // layer's own predictions (`sw-avg`, `oracle-median`) while they are made.
                let mut early: Option<(usize, Vec<Scoring>)> = None;
                let mut made = match made_ahead {
                    Some(m) => m,
                    None if !own_first.is_empty() && !layers.is_empty() => {
                        let mut none = MadeRows::new();
                        let (m, e) = rayon::join(
                            || host_rows(layers, shares),
                            || -> anyhow::Result<(usize, Vec<Scoring>)> {
                                let slot = load(scorer, 0)?;
                                let mut pending = Vec::new();
                                enqueue(scorer, &mut none, 0, &own_first, &mut pending)?;
                                Ok((slot, pending))
                            },
                        );
                        early = Some(e?);
                        m
                    }
                    None => host_rows(layers, shares),
                };
                let (mut out, mut left) = (Vec::new(), Vec::new());
                // A layer's scorings are enqueued, then the layer before is finished:
                // the next layer's copy and kernels overlap the last one's kernels.
                type Enqueued = (usize, usize, Vec<Scoring>);
                let mut finish = |scorer: &mut eval::cuda::Scorer, (l, slot, pending): Enqueued| -> anyhow::Result<()> {
                    for (g, fi, p, means) in pending {
                        out.push((scorer.finish(p).with_context(|| what(g, fi))?, means));
                    }
                    let bytes = scorer.loaded_bytes(slot);
                    if leave_on_device
                        && bytes <= *room
                        && let Some(d) = scorer.take_loaded(slot)
                    {
                        *room -= bytes;
                        left.push((l, d));
                    }
                    Ok(())
                };
                let mut last: Option<Enqueued> = None;
                for (g, &l) in layers.iter().enumerate() {
                    if !on_device.iter().any(Option::is_some) {
                        continue;
                    }
                    let (slot, mut pending, early_done) = match early.take() {
                        Some((slot, pending)) => (slot, pending, true),
                        None => (load(scorer, g)?, Vec::new(), false),
                    };
                    // Host-made rows first: the device's own predictions are the
                    // long kernels (`oracle-median`'s sort above all).
                    enqueue(scorer, &mut made, g, &rows_first, &mut pending)?;
                    if !early_done {
                        enqueue(scorer, &mut made, g, &own_first, &mut pending)?;
                    }
                    // Finished in forecaster order, as the results are taken.
                    pending.sort_by_key(|p| p.1);
                    if let Some(before) = last.replace((l, slot, pending)) {
                        let _span = crate::profile::span(|| format!("forecast: layer {} finished", before.0));
                        finish(scorer, before)?;
                    }
                }
                if let Some(before) = last.take() {
                    let _span = crate::profile::span(|| format!("forecast: layer {} finished", before.0));
                    finish(scorer, before)?;
                }
                Ok((out, left))
            };
            let cpu_tasks: Vec<(usize, usize)> = tasks.iter().copied().filter(|&(_, fi)| on_device[fi].is_none()).collect();
            let weight_tasks: Vec<(usize, usize)> = match &placement_origins {
                Some(_) => tasks.iter().copied().filter(|&(_, fi)| matches!(on_device[fi], Some(m) if m != DeviceModel::HostRows)).collect(),
                None => Vec::new(),
            };
            let weight_task = |&(g, fi): &(usize, usize)| -> anyhow::Result<Vec<Vec<f64>>> {
                let (horizon, origins) = placement_origins.as_ref().expect("placement asked for");
                let view = LayerView::new(&shares[g], tr.experts());
                predicted_weights(&view, forecasters[fi].as_ref(), proto, origins, *horizon, &ctx)
                    .with_context(|| format!("placement's weights of {} layer {} from {}", tr.name, tr.layer_ids[layers[g]], specs[fi]))
            };
            let cpu_all = || {
                let _span = crate::profile::span(|| format!("forecast: {} CPU tasks, {} placement weights", cpu_tasks.len(), weight_tasks.len()));
                rayon::join(|| cpu_tasks.par_iter().map(cpu_task).collect::<Vec<_>>(), || weight_tasks.par_iter().map(weight_task).collect::<Vec<_>>())
            };
            let next = groups.get(gn + 1);
            let prefetch = || {
                let next = next.filter(|_| host_shares)?;
                let shares = group_shares(tr, next, &mut ahead, "forecast (ahead)");
                Some(host_rows(next, shares))
            };
            let (dev, ((cpu, weights), made_next)) = match scorer.as_mut() {
                Some(sc) => rayon::join(|| device_task(sc), || rayon::join(cpu_all, prefetch)),
                None => (Ok((Vec::new(), Vec::new())), (cpu_all(), None)),
            };
            rows_ahead = made_next;
            let (dev, left) = dev?;
            kept.on_device.extend(left.into_iter().map(|(l, d)| ((ti, l), d)));
            for (&(g, fi), w) in weight_tasks.iter().zip(weights) {
                kept.means.insert((ti, layers[g], fi), w?);
            }
            let (mut dev, mut cpu) = (dev.into_iter(), cpu.into_iter());
            for &(g, fi) in &tasks {
                let l = layers[g];
                let (scores, saved, means) = match on_device[fi] {
                    Some(_) => {
                        let (scores, means) = dev.next().expect("one result per device task");
                        (scores, None, means)
                    }
                    None => cpu.next().expect("one result per CPU task")?,
                };
                if !means.is_empty() {
                    kept.means.insert((ti, l, fi), means);
                }
                for score in scores {
                    metric_rows.push(MetricRow {
                        trace: tr.name.clone(),
                        layer: tr.layer_ids[l],
                        forecaster: specs[fi].clone(),
                        real: forecasters[fi].is_real(),
                        score,
                    });
                }
                if let Some(s) = saved {
                    let view = LayerView::new(&shares[g], tr.experts());
                    output::forecasts_batches(tr, l, &view, &specs[fi], &s, |b| sink.write(Table::Forecasts, b))?;
                }
            }
        }
        if let Device::Cuda(g) = device {
            g.release(tr);
        }
    }
    bar.finish_and_clear();
    if placing.is_some() {
        kept.buffers = buffers;
    } else {
        // Freeing a paper-scale run's two groups of shares (1 GB) takes tens of
        // milliseconds: another thread does it while the run goes on.
        std::thread::spawn(move || drop((buffers, ahead)));
    }
    let _span = crate::profile::span(|| "forecast: write metrics".into());
    sink.write(Table::Metrics, &output::metrics_batch(&metric_rows)?)?;
    fallback_lines(traces, prep, &metric_rows, progress);
    Ok((metric_rows, kept))
}

/// Host-made rows of a group's (layer in the group, forecaster) pairs.
type MadeRows = std::collections::HashMap<(usize, usize), anyhow::Result<eval::cuda::HostRows>>;

/// What the forecast stage hands to [`placement`] so that it need not do it again.
#[derive(Default)]
pub struct Kept {
    /// Each origin's mean prediction over the first placement interval, per (trace,
    /// layer, forecaster), for the protocol's origins (placement's are a prefix of
    /// them): as the CPU path scored it (see [`eval::KeptMeans`]), a flat model's rows
    /// made on the host for the GPU (a flat forecast's row is its mean), or, for a
    /// forecaster the GPU predicts itself (`sw-avg`, `oracle-median`), made on the CPU
    /// for placement's origins while the GPU scored.
    pub means: std::collections::HashMap<(usize, usize, usize), Vec<Vec<f64>>>,
    /// Layers' shares that the forecast stage left on the GPU, per (trace, layer).
    pub on_device: std::collections::HashMap<(usize, usize), cudarc::driver::CudaSlice<f64>>,
    /// The forecast stage's host buffers of a group's shares, for placement to fill
    /// again (a paper-scale group's 500 MB is not allocated and faulted in twice).
    pub buffers: Vec<Vec<f64>>,
}

/// Expert placement of every (trace, layer), when the plan asks for it: the
/// policies `static`, `reactive:w=W`, one per forecaster of the run (in the run's
/// order) and `oracle`, each planned at every origin with a whole re-placement
/// interval ahead and scored on the actual shares of that interval
/// ([`crate::placement::evaluate_layer`]). A forecaster's weights are those `kept`
/// from the forecast stage where it has them, else predicted again. Rows go to the
/// sink.
#[allow(clippy::too_many_arguments)]
pub fn placement(
    plan: &RunPlan,
    traces: &[Trace],
    prep: &Prepared,
    stable_from: &[Vec<Option<usize>>],
    device: &Device,
    kept: Kept,
    sink: &mut dyn Sink,
    progress: &dyn Progress,
) -> anyhow::Result<Vec<PlacementRow>> {
    let Some(cfg) = &plan.work.placement else { return Ok(Vec::new()) };
    let proto = &prep.protocol;
    let mut policies = vec![Policy::Static, Policy::Reactive { w: cfg.reactive_window }];
    policies.extend(prep.specs.iter().map(|s| Policy::Forecast(s.clone())));
    policies.push(Policy::Oracle);
    let ctx = FitContext { device: device.clone(), messages: None };
    let bar = progress.bar(traces.iter().map(|t| t.layers() as u64).sum::<u64>() * cfg.horizons.len() as u64, "placement");
    // Each step's imbalance is taken on the GPU when the run has one (and the plans
    // fit its kernel), else on the CPU; both give the same bits.
    let on_gpu = match device {
        Device::Cuda(g) => Some(place::cuda::PlacementGpu::new(g).context("preparing the GPU's placement kernel")?),
        _ => None,
    };
    let max_replicas = cfg.replicas.iter().copied().max().unwrap_or(0);
    let mut rows = Vec::new();
    // The shares of a group's layers, filled again for each group.
    let Kept { means: kept_means, on_device: kept_on_device, mut buffers } = kept;
    let reused = std::sync::atomic::AtomicUsize::new(0);
    let gpu_layers = std::sync::atomic::AtomicUsize::new(0);
    for (ti, tr) in traces.iter().enumerate() {
        for (hi, &horizon) in cfg.horizons.iter().enumerate() {
            let ne = tr.experts();
            let origins = place::placement_origins(&proto.origins(tr.steps()), horizon, tr.steps());
            // A group of layers at a time ([`layer_group`]), the layers of a group
            // through each phase together.
            let group = layer_group(tr, false);
            for first in (0..tr.layers()).step_by(group) {
                let layers: Vec<usize> = (first..(first + group).min(tr.layers())).collect();
                let _span = crate::profile::span(|| format!("placement: {} layers", layers.len()));
                let shares = group_shares(tr, &layers, &mut buffers, "placement");
                // The forecasters' weights (kept from the forecast stage, or made again),
                // every (layer, forecaster) in parallel, while the layers' shares go to
                // the GPU where the forecast stage did not leave them there.
                let span = crate::profile::span(|| format!("placement: weights of {} layers", layers.len()));
                let tasks: Vec<(usize, usize)> = (0..layers.len()).flat_map(|g| (0..prep.forecasters.len()).map(move |f| (g, f))).collect();
                let upload = || -> anyhow::Result<Vec<Option<place::cuda::LayerOnGpu>>> {
                    layers
                        .iter()
                        .zip(shares)
                        .map(|(&l, s)| match &on_gpu {
                            Some(g) if place::cuda::fits(ne, max_replicas) => match kept_on_device.get(&(ti, l)) {
                                Some(d) => g.layer_on_device(d, tr.steps(), ne),
                                None => g.layer(s, ne),
                            }
                            .map(Some)
                            .with_context(|| format!("placement of {} layer {} on the GPU", tr.name, tr.layer_ids[l])),
                            _ => Ok(None),
                        })
                        .collect()
                };
                let weights = || -> anyhow::Result<Vec<Cow<[Vec<f64>]>>> {
                    tasks
                        .par_iter()
                        .map(|&(g, fi)| {
                            let l = layers[g];
                            match kept_means.get(&(ti, l, fi)).filter(|_| hi == 0) {
                                // The forecast stage's (kept for the first interval), for the placement origins (a prefix).
                                Some(means) if means.len() >= origins.len() && means.iter().all(|m| m.len() == ne) => {
                                    reused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                    Ok(Cow::Borrowed(&means[..origins.len()]))
                                }
                                _ => {
                                    let view = LayerView::new(&shares[g], ne);
                                    predicted_weights(&view, prep.forecasters[fi].as_ref(), proto, &origins, horizon, &ctx)
                                        .map(Cow::Owned)
                                        .with_context(|| format!("placement of {} layer {} from {}", tr.name, tr.layer_ids[l], prep.specs[fi]))
                                }
                            }
                        })
                        .collect()
                };
                let (uploaded, predicted) = rayon::join(upload, weights);
                let (uploaded, predicted) = (uploaded?, predicted?);
                drop(span);
                let hosts: Vec<place::HostSteps> = shares.iter().map(|s| place::HostSteps { shares: s, experts: ne }).collect();
                let nf = prep.forecasters.len();
                let inputs: Vec<place::LayerInput> = (0..layers.len())
                    .map(|g| place::LayerInput {
                        eval: match &uploaded[g] {
                            Some(gpu) => {
                                gpu_layers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                gpu
                            }
                            None => &hosts[g],
                        },
                        shares: &shares[g],
                        predicted: predicted[g * nf..(g + 1) * nf].iter().map(|p| p.as_ref()).collect(),
                        stable_from: stable_from[ti][layers[g]],
                    })
                    .collect();
                let scored = place::evaluate_layers(&inputs, ne, cfg, horizon, &policies, &origins).with_context(|| {
                    format!("placement of {} layers {}-{}", tr.name, tr.layer_ids[layers[0]], tr.layer_ids[*layers.last().expect("a layer")])
                })?;
                for (&l, scores) in layers.iter().zip(scored) {
                    rows.extend(scores.into_iter().map(|score| PlacementRow { trace: tr.name.clone(), layer: tr.layer_ids[l], score }));
                }
                bar.inc(layers.len() as u64);
            }
        }
    }
    bar.finish_and_clear();
    let pairs = traces.iter().map(|t| t.layers()).sum::<usize>() * prep.forecasters.len() * cfg.horizons.len();
    progress.line(format!(
        "placement: {} of {pairs} (layer, forecaster) predictions kept from the forecast stage, the others made again; \
         each step's imbalance taken on the GPU for {} of {} layers",
        reused.into_inner(),
        gpu_layers.into_inner(),
        traces.iter().map(|t| t.layers()).sum::<usize>() * cfg.horizons.len()
    ));
    sink.write(Table::Placement, &output::placement_batch(&rows)?)?;
    Ok(rows)
}

/// A forecaster's weights for placement at each origin: its prediction of the next
/// `horizon` steps (renormalised as when it is scored), averaged over the steps. It
/// is fitted once, on the steps before the first origin, as when it is scored.
fn predicted_weights(
    view: &LayerView,
    f: &dyn Forecaster,
    proto: &Protocol,
    origins: &[usize],
    horizon: usize,
    ctx: &FitContext,
) -> anyhow::Result<Vec<Vec<f64>>> {
    let Some(&first) = origins.first() else { return Ok(Vec::new()) };
    let ne = view.experts();
    let fitted = f.fit(&view.until(first), ctx)?;
    let real = f.is_real() && proto.renormalize;
    let mut out = vec![Vec::new(); origins.len()];
    fitted.predict_origins(view, origins, &vec![horizon; origins.len()], &mut |i, pred, _, _| {
        if real {
            crate::forecast::renormalize(pred, ne);
        }
        out[i] = eval::mean_of_rows(pred, ne, horizon);
    })?;
    Ok(out)
}

/// Fits that fell back, per forecaster that can fall back (each origin's series
/// counted once: the shortest horizon of regime "all" scores every origin).
fn fallback_lines(traces: &[Trace], prep: &Prepared, rows: &[MetricRow], progress: &dyn Progress) {
    let Some(h0) = prep.protocol.horizons.iter().min() else { return };
    for (_, spec) in prep.forecasters.iter().zip(&prep.specs).filter(|(f, _)| f.can_fall_back()) {
        let (mut fb, mut fits) = (0u64, 0u64);
        for r in rows.iter().filter(|r| &r.forecaster == spec && r.score.horizon == *h0 && r.score.regime == eval::Regime::All) {
            let experts = traces.iter().find(|t| t.name == r.trace).map_or(0, |t| t.experts()) as u64;
            fb += r.score.fallbacks;
            fits += r.score.origins * experts;
        }
        progress.line(format!("{spec}: {fb} of the {fits} series forecasts scored at horizon {h0} fell back to mean:w=100"));
    }
}

/// `189234000` as `189,234,000`.
pub fn group_digits(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Whether a GPU run scores forecasts there: unless forecasts are saved, every
/// forecaster with a device model is (see [`forecast`]).
fn scores_on_device(plan: &RunPlan, prep: &Prepared) -> bool {
    !plan.save_forecasts && prep.forecasters.iter().any(|f| f.on_device().is_some())
}

/// The whole run: every stage in order, then the manifest to the sink.
pub fn run(plan: &RunPlan, sink: &mut dyn Sink, progress: &dyn Progress) -> anyhow::Result<RunReport> {
    run_prepared(plan, prepare(plan)?, sink, progress)
}

/// [`run`] from the stage after [`prepare`]. The device is opened and the inputs
/// hashed (for the manifest) on threads of their own while the inputs are read.
pub fn run_prepared(plan: &RunPlan, prep: Prepared, sink: &mut dyn Sink, progress: &dyn Progress) -> anyhow::Result<RunReport> {
    std::thread::scope(|scope| run_scoped(scope, plan, prep, sink, progress))
}

fn run_scoped<'s>(
    scope: &'s std::thread::Scope<'s, '_>,
    plan: &'s RunPlan,
    prep: Prepared,
    sink: &mut dyn Sink,
    progress: &dyn Progress,
) -> anyhow::Result<RunReport> {
    let before = stamps(plan);
    let hashing = scope.spawn(|| hash_inputs(plan));
    let opening = scope.spawn(|| {
        let _span = crate::profile::span(|| "open the device".into());
        gpu::choose_at(plan.device, plan.gpu)
    });
    let mut seconds: BTreeMap<&'static str, f64> = BTreeMap::new();

    let t = Instant::now();
    let span = crate::profile::span(|| "stage: read".into());
    let traces = read_traces(plan, &prep);
    drop(span);
    // A device that cannot be had is said first, as when it was opened before reading.
    let (device, note) = opening.join().map_err(|_| anyhow::anyhow!("opening the device panicked"))??;
    if let Some(n) = note {
        progress.line(n);
    }
    let traces = &traces?;
    if let Device::Cuda(g) = &device {
        // The kernels this run will use compile side by side from now (a bad input
        // stopped before, compiling nothing): shares and statistics on every GPU run,
        // scoring when forecasts are scored there, placement when asked for.
        let mut used = vec![&gpu::SHARES, &gpu::WINDOW_STATS];
        if scores_on_device(plan, &prep) {
            used.push(&gpu::SCORE);
        }
        if plan.work.placement.is_some() {
            used.push(&gpu::PLACEMENT);
        }
        g.prefetch(&used);
    }
    // Whatever happens next, the GPU keeps none of this run's loads after it.
    let _release = Release(&device, traces);
    seconds.insert("read", t.elapsed().as_secs_f64());
    let n_layers: usize = traces.iter().map(|t| t.layers()).sum();
    progress.line(format!(
        "read {} trace(s) from {} file(s): {} layers, {} steps in all ({:.2} s)",
        traces.len(),
        plan.inputs.len(),
        n_layers,
        traces.iter().map(|t| t.steps()).sum::<usize>(),
        seconds["read"]
    ));

    let t = Instant::now();
    let span = crate::profile::span(|| "stage: statistics".into());
    let (layer_stats, stats_device) = statistics(plan, traces, &device, sink, progress)?;
    drop(span);
    seconds.insert("stats", t.elapsed().as_secs_f64());
    progress.line(format!(
        "window statistics: {} window(s) over {} layers on {} ({:.2} s)",
        plan.all_windows().len(),
        n_layers,
        stats_device,
        seconds["stats"]
    ));

    let t = Instant::now();
    let span = crate::profile::span(|| "stage: states".into());
    let (state_rows, stable_from) = states(plan, traces, &layer_stats, sink)?;
    drop(span);
    drop(layer_stats);
    seconds.insert("states", t.elapsed().as_secs_f64());

    let t = Instant::now();
    let span = crate::profile::span(|| "stage: forecasts".into());
    let (metric_rows, kept) = forecast(plan, traces, &prep, &stable_from, &device, sink, progress)?;
    drop(span);
    seconds.insert("forecast", t.elapsed().as_secs_f64());
    let proto = &prep.protocol;
    let n_origins: usize = traces.iter().map(|t| proto.origins(t.steps()).len()).sum();
    progress.line(format!(
        "forecasts: {} forecaster(s) × {} layers, {} origin(s) from step index {} every {} ({:.2} s)",
        prep.forecasters.len(),
        n_layers,
        n_origins,
        proto.start,
        proto.stride,
        seconds["forecast"]
    ));

    let placement_rows = if plan.work.placement.is_some() {
        let t = Instant::now();
        let span = crate::profile::span(|| "stage: placement".into());
        let rows = placement(plan, traces, &prep, &stable_from, &device, kept, sink, progress)?;
        drop(span);
        seconds.insert("placement", t.elapsed().as_secs_f64());
        let cfg = plan.work.placement.as_ref().expect("placement asked for");
        progress.line(format!(
            "placement: {} policies × {} layers on {:?} GPU(s) with {:?} redundant replica(s), re-placed every {:?} steps ({:.2} s)",
            prep.forecasters.len() + 3,
            n_layers,
            cfg.gpus,
            cfg.replicas,
            cfg.horizons,
            seconds["placement"]
        ));
        rows
    } else {
        Vec::new()
    };

    if let Device::Cuda(g) = &device {
        gpu::timeline::print(&g.ctx);
    }
    let hashes = hashing.join().map_err(|_| anyhow::anyhow!("hashing the inputs panicked"))??;
    check_unchanged(plan, before)?;
    let manifest = manifest(plan, &prep, traces, &hashes, &device, &stats_device, &seconds);
    let span = crate::profile::span(|| "finish the outputs".into());
    sink.finish(&manifest)?;
    drop(span);
    Ok(RunReport { specs: prep.specs, metrics: metric_rows, states: state_rows, placement: placement_rows, seconds })
}

/// Frees the loads a GPU keeps for a run's traces ([`crate::gpu::resident`]) when
/// the run ends, however it ends.
struct Release<'a>(&'a Device, &'a [Trace]);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        if let Device::Cuda(g) = self.0 {
            for t in self.1 {
                g.release(t);
            }
        }
    }
}

/// `manifest.json`: the version, command line, resolved config, inputs with sizes and
/// hashes, devices and seconds per stage.
fn manifest(
    plan: &RunPlan,
    prep: &Prepared,
    traces: &[Trace],
    hashes: &[(u64, String)],
    device: &Device,
    stats_device: &str,
    seconds: &BTreeMap<&'static str, f64>,
) -> serde_json::Value {
    let mut inputs_json = Vec::new();
    for (input, (bytes, sha256)) in plan.inputs.iter().zip(hashes) {
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
    let proto = &prep.protocol;
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "command_line": plan.command_line,
        "config": {
            "windows": plan.windows(),
            "state_window": plan.state_window,
            "kappa": plan.kappa,
            "horizons": proto.horizons,
            "forecasters": prep.specs,
            "origin_start": proto.start,
            "origin_stride": proto.stride,
            "renormalize": proto.renormalize,
            "stats_detail": plan.stats_detail,
            "save_forecasts": plan.save_forecasts,
            "placement": plan.work.placement,
            "device_requested": plan.device,
            "threads": rayon::current_num_threads(),
            "columns": plan.read.columns,
            "format": plan.read.format,
        },
        "inputs": inputs_json,
        "device": device.describe(),
        "stats_device": stats_device,
        "seconds": seconds,
    })
}
