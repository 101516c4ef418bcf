//! The rows of each table and the record batches they are written as.

use arrow::array::{ArrayRef, RecordBatch};

use super::{batch, f64s, i32s, i64s, opt_f64s, opt_i64s, strs, Table};
use crate::eval::{SavedForecasts, SavedRow, Score};
use crate::forecast::LayerView;
use crate::stats::{ExpertStats, LayerStats};
use crate::trace::Trace;

/// One row of `metrics.parquet`.
#[derive(Debug, Clone)]
pub struct MetricRow {
    pub trace: String,
    pub layer: i64,
    pub forecaster: String,
    pub real: bool,
    pub score: Score,
}

/// One row of `placement.parquet`.
#[derive(Debug, Clone)]
pub struct PlacementRow {
    pub trace: String,
    pub layer: i64,
    pub score: crate::placement::PlacementScore,
}

/// `placement.parquet`.
pub fn placement_batch(rows: &[PlacementRow]) -> anyhow::Result<RecordBatch> {
    batch(
        &Table::Placement.schema(),
        vec![
            strs(rows.iter().map(|r| &r.trace)),
            i32s(rows.iter().map(|r| r.layer)),
            strs(rows.iter().map(|r| &r.score.policy)),
            i32s(rows.iter().map(|r| r.score.gpus as i64)),
            i32s(rows.iter().map(|r| r.score.replicas as i64)),
            i32s(rows.iter().map(|r| r.score.horizon as i64)),
            strs(rows.iter().map(|r| r.score.regime.as_str())),
            i64s(rows.iter().map(|r| r.score.origins as i64)),
            opt_f64s(rows.iter().map(|r| r.score.imbalance_mean)),
            opt_f64s(rows.iter().map(|r| r.score.imbalance_p99)),
            opt_f64s(rows.iter().map(|r| r.score.imbalance_max)),
            opt_f64s(rows.iter().map(|r| r.score.moved_replicas_mean)),
        ],
    )
}

/// One row of `states.parquet`.
#[derive(Debug, Clone)]
pub struct StateRow {
    pub trace: String,
    pub layer: i64,
    pub window: usize,
    pub transition_step: Option<i64>,
    pub final_std: Option<f64>,
}

/// The key columns that every window-statistics batch of a trace takes a slice of,
/// made once per trace instead of once per batch: the trace's name and its steps,
/// one row per step (window `w`'s rows start at step index `w - 1`). Made per batch,
/// they were half the bytes built for the bundled run's layer summaries.
pub struct TraceKeys<'a> {
    tr: &'a Trace,
    names: ArrayRef,
    steps: ArrayRef,
}

impl<'a> TraceKeys<'a> {
    pub fn new(tr: &'a Trace) -> Self {
        let names = strs(std::iter::repeat_n(&tr.name, tr.steps()));
        let steps = i64s((0..tr.steps()).map(|i| tr.step_at(i)));
        TraceKeys { tr, names, steps }
    }
}

/// The rows of one (layer[, expert], window) of a trace's window statistics: the key
/// columns `trace`, `layer`[, `expert`], `window`, `step` (index `i` is step index
/// `window - 1 + i`), then one column per slice of `values`, in the table's order.
fn window_batch(table: Table, keys: &TraceKeys, layer: usize, expert: Option<usize>, window: usize, values: &[&[f64]]) -> anyhow::Result<RecordBatch> {
    let (tr, n) = (keys.tr, values[0].len());
    let mut columns = vec![keys.names.slice(0, n), i32s(std::iter::repeat_n(tr.layer_ids[layer], n))];
    columns.extend(expert.map(|e| i32s(std::iter::repeat_n(tr.expert_ids[e], n))));
    columns.push(i32s(std::iter::repeat_n(window as i64, n)));
    // (A window longer than the trace has no rows, and starts at the end.)
    columns.push(keys.steps.slice((window - 1).min(tr.steps()), n));
    columns.extend(values.iter().map(|v| f64s(v.iter().copied())));
    batch(&table.schema(), columns)
}

/// The `layer_stats.parquet` rows of one (layer, window) of a trace.
pub fn layer_stats_batch(keys: &TraceKeys, s: &LayerStats) -> anyhow::Result<RecordBatch> {
    window_batch(Table::LayerStats, keys, s.layer, None, s.window, &[&s.summary.var_mean, &s.summary.var_max, &s.summary.range_mean, &s.summary.range_max])
}

/// The `window_stats.parquet` rows of one (layer, expert, window) of a trace.
pub fn window_stats_batch(keys: &TraceKeys, s: &ExpertStats) -> anyhow::Result<RecordBatch> {
    window_batch(Table::WindowStats, keys, s.layer, Some(s.expert), s.window, &[&s.mean, &s.var, &s.range])
}

/// `states.parquet`.
pub fn states_batch(rows: &[StateRow], kappa: f64) -> anyhow::Result<RecordBatch> {
    batch(
        &Table::States.schema(),
        vec![
            strs(rows.iter().map(|r| &r.trace)),
            i32s(rows.iter().map(|r| r.layer)),
            i32s(rows.iter().map(|r| r.window as i64)),
            f64s(rows.iter().map(|_| kappa)),
            opt_i64s(rows.iter().map(|r| r.transition_step)),
            opt_f64s(rows.iter().map(|r| r.final_std)),
        ],
    )
}

/// `metrics.parquet`.
pub fn metrics_batch(rows: &[MetricRow]) -> anyhow::Result<RecordBatch> {
    batch(
        &Table::Metrics.schema(),
        vec![
            strs(rows.iter().map(|r| &r.trace)),
            i32s(rows.iter().map(|r| r.layer)),
            strs(rows.iter().map(|r| &r.forecaster)),
            i32s(rows.iter().map(|r| r.score.horizon as i64)),
            strs(rows.iter().map(|r| r.score.regime.as_str())),
            i64s(rows.iter().map(|r| r.score.origins as i64)),
            opt_f64s(rows.iter().map(|r| r.score.mae_pp)),
            opt_f64s(rows.iter().map(|r| r.score.rmse_pp)),
            opt_f64s(rows.iter().map(|r| r.score.tv_pct)),
            i64s(rows.iter().map(|r| r.score.fallbacks as i64)),
        ],
    )
}

/// Rows of `forecasts.parquet` a batch holds.
const FORECAST_ROWS: usize = 1 << 16;

/// The `forecasts.parquet` rows of layer `l` (its shares `layer`) and forecaster
/// `spec`, handed to `each` a batch at a time, so they are never all held as Arrow.
pub fn forecasts_batches(
    tr: &Trace,
    l: usize,
    layer: &LayerView,
    spec: &str,
    saved: &SavedForecasts,
    mut each: impl FnMut(&RecordBatch) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let schema = Table::Forecasts.schema();
    let mut rows = saved.rows(layer).peekable();
    let mut chunk: Vec<SavedRow> = Vec::with_capacity(FORECAST_ROWS.min(saved.len()));
    while rows.peek().is_some() {
        chunk.clear();
        chunk.extend(rows.by_ref().take(FORECAST_ROWS));
        let n = chunk.len();
        let b = batch(
            &schema,
            vec![
                strs(std::iter::repeat_n(&tr.name, n)),
                i32s(std::iter::repeat_n(tr.layer_ids[l], n)),
                i32s(chunk.iter().map(|r| tr.expert_ids[r.expert])),
                strs(std::iter::repeat_n(spec, n)),
                i64s(chunk.iter().map(|r| tr.step_at(r.origin))),
                i32s(chunk.iter().map(|r| r.k as i64)),
                f64s(chunk.iter().map(|r| r.predicted)),
                f64s(chunk.iter().map(|r| r.actual)),
                opt_f64s(chunk.iter().map(|r| r.stderr)),
            ],
        )?;
        each(&b)?;
    }
    Ok(())
}
