//! Command-line parsing, progress reporting and the `run` pipeline.

pub mod bench;
pub mod bench_arima;
pub mod bench_lstm;
pub mod lstm;
pub mod sweep;
mod progress;
mod run;
mod summary;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::gpu::DeviceRequest;
use crate::trace::Format;

pub use run::run;

/// A flag or argument that makes no sense: exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

#[derive(Parser, Debug)]
#[command(
    name = "expertcast",
    version,
    about = "Batch forecasting of mixture-of-experts expert-load traces",
    long_about = "Batch forecasting of mixture-of-experts expert-load traces: window statistics, \
                  transient/stable states, rolling-origin forecasts and their scores, written as Parquet.\n\n\
                  Exit status: 0 success, 2 bad input or usage, 1 anything else."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the whole pipeline: read traces, window statistics, states, forecasts,
    /// scores; write the Parquet files of docs/reference.md into --out.
    Run(RunArgs),
    /// Measure a stage: the window statistics against their ceiling (the GPU's copy
    /// bandwidth) on a paper-scale trace tiled from the bundled data (`--stage
    /// window`), ARIMA fits per second on a trace's series (`--stage arima`), or LSTM
    /// training and inference windows per second (`--stage lstm`).
    Bench(bench::BenchArgs),
    /// Write a synthetic trace of any shape whose dynamics are calibrated to the
    /// bundled real traces (transient then stable, autocorrelated fluctuations,
    /// multinomial routing noise).
    Synth(SynthArgs),
    /// Run traces × a grid of settings (a TOML config) as resumable units, results
    /// as a hive-partitioned Parquet dataset; --shard I/N (or Slurm/Kubernetes
    /// array variables) splits the units across jobs.
    Sweep(sweep::SweepArgs),
    /// Train the LSTM forecaster on traces and save a checkpoint that
    /// `run -f lstm:model=DIR` applies to other traces.
    Lstm(lstm::LstmArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct SynthArgs {
    /// Output file (long Parquet, the schema of the bundled traces).
    #[arg(long, short, value_name = "FILE")]
    pub out: PathBuf,
    #[command(flatten)]
    pub config: crate::synth::SynthConfig,
}

/// `expertcast synth`.
pub fn synth(args: &SynthArgs) -> anyhow::Result<()> {
    args.config.validate().map_err(UsageError)?;
    if args.out.extension().and_then(|e| e.to_str()) != Some("parquet") {
        return Err(UsageError(format!("--out {}: the file name must end in .parquet", args.out.display())).into());
    }
    let t = std::time::Instant::now();
    crate::synth::write_parquet(&args.config, &args.out)?;
    let c = &args.config;
    eprintln!(
        "expertcast: wrote {} ({} steps × {} layers × {} experts, seed {}) in {:.2} s",
        args.out.display(),
        c.steps,
        c.layers,
        c.experts,
        c.seed,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// How much window statistics detail to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StatsDetail {
    /// Layer summaries only (layer_stats.parquet).
    Layer,
    /// Also every expert's mean, variance and range (window_stats.parquet).
    Expert,
}

pub const DEFAULT_FORECASTERS: &[&str] = &["last", "mean:w=100", "sw-avg:w=100", "ema:alpha=0.3", "oracle-median"];

#[derive(clap::Args, Debug, Clone, serde::Serialize)]
pub struct RunArgs {
    /// Trace files (.parquet, .csv long format; .npy dense [steps, layers, experts]).
    /// With none, the traces bundled in datasets/ are used.
    #[arg(value_name = "TRACE")]
    pub traces: Vec<PathBuf>,

    /// Output directory (created if missing; files in it are replaced).
    #[arg(long, short, value_name = "DIR", default_value = "expertcast-out")]
    pub out: PathBuf,

    /// Window length W in steps for the window statistics; repeat for several.
    #[arg(long = "window", short = 'w', value_name = "W", default_values_t = [10usize, 100, 200])]
    pub windows: Vec<usize>,

    /// Forecast horizon H in steps; repeat for several. Each is scored on the
    /// origins that have H steps ahead.
    #[arg(long = "horizon", value_name = "H", default_values_t = [1usize, 10, 100, 1000, 2000])]
    pub horizons: Vec<usize>,

    /// Forecaster spec NAME[:key=value,...]; repeat for several. Given at all, -f
    /// replaces the default list (use -a to add to it). Known: last, mean:w=W,
    /// sw-avg:w=W, ema:alpha=A, oracle-median, arima:p=P,d=D,q=Q,..., arima-auto,
    /// lstm:... (lstm:model=DIR for a checkpoint); a wrong spec lists every
    /// forecaster and its parameters.
    #[arg(long = "forecaster", short = 'f', value_name = "SPEC",
          default_values_t = DEFAULT_FORECASTERS.iter().map(|s| s.to_string()).collect::<Vec<_>>())]
    pub forecasters: Vec<String>,

    /// Forecaster spec added to the -f list (to the defaults when -f is not given):
    /// `-a arima` scores ARIMA beside the baselines and the oracle-median floor.
    /// Repeat for several.
    #[arg(long = "add-forecaster", short = 'a', value_name = "SPEC")]
    pub add_forecasters: Vec<String>,

    /// Steps between forecast origins.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub origin_stride: usize,

    /// First forecast origin (step index from the trace's first step). Default:
    /// the longest history any forecaster of the run needs, at least 1.
    #[arg(long, value_name = "N")]
    pub origin_start: Option<usize>,

    /// Where window statistics run: auto uses a GPU when one is usable.
    #[arg(long, value_enum, default_value_t = DeviceRequest::Auto)]
    pub device: DeviceRequest,

    /// Which GPU (0-based) --device cuda or auto uses.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub gpu: usize,

    /// Worker threads for CPU stages (default: all cores).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,

    /// Also write forecasts.parquet with every prediction and its actual value.
    #[arg(long)]
    pub save_forecasts: bool,

    /// layer: layer summaries only; expert: also window_stats.parquet per expert.
    #[arg(long, value_enum, default_value_t = StatsDetail::Layer)]
    pub stats_detail: StatsDetail,

    /// Tolerance of the states rule: stable once s(t) <= (1 + kappa) * final.
    #[arg(long, value_name = "K", default_value_t = 0.5, allow_negative_numbers = true)]
    pub kappa: f64,

    /// Window whose states define each layer's transition step (regime = stable).
    #[arg(long, value_name = "W", default_value_t = 100)]
    pub state_window: usize,

    /// Score predictions as they are, without clipping at 0 and renormalising.
    #[arg(long)]
    pub no_renormalize: bool,

    /// Input format for every TRACE, overriding the file extension.
    #[arg(long, value_enum)]
    pub format: Option<Format>,

    /// Name of the step column in long inputs.
    #[arg(long, value_name = "NAME", default_value = "step")]
    pub step_col: String,
    /// Name of the layer column in long inputs.
    #[arg(long, value_name = "NAME", default_value = "layer")]
    pub layer_col: String,
    /// Name of the expert column in long inputs.
    #[arg(long, value_name = "NAME", default_value = "expert")]
    pub expert_col: String,
    /// Name of the load column in long inputs.
    #[arg(long, value_name = "NAME", default_value = "tokens")]
    pub tokens_col: String,
    /// Name of the optional trace-name column in long inputs.
    #[arg(long, value_name = "NAME", default_value = "trace")]
    pub trace_col: String,

    /// No progress bars, stage lines or summary table (errors are still printed).
    #[arg(long, short)]
    pub quiet: bool,
}

impl RunArgs {
    /// The run's forecaster specs as given: the -f list (or the defaults), then -a's.
    pub fn all_forecasters(&self) -> impl Iterator<Item = &String> {
        self.forecasters.iter().chain(&self.add_forecasters)
    }

    /// Checks the values clap cannot.
    pub fn validate(&self) -> Result<(), UsageError> {
        let bad = |m: String| Err(UsageError(m));
        if let Some(w) = self.windows.iter().find(|&&w| w == 0) {
            return bad(format!("--window {w}: a window must be at least 1 step"));
        }
        if self.horizons.contains(&0) {
            return bad("--horizon 0: a horizon must be at least 1 step".into());
        }
        if self.origin_stride == 0 {
            return bad("--origin-stride 0: the stride must be at least 1".into());
        }
        if self.origin_start == Some(0) {
            return bad("--origin-start 0: a forecast needs at least one step of history".into());
        }
        if self.state_window == 0 {
            return bad("--state-window 0: a window must be at least 1 step".into());
        }
        if !(self.kappa.is_finite() && self.kappa >= 0.0) {
            return bad(format!("--kappa {}: must be a finite number >= 0", self.kappa));
        }
        if self.threads == Some(0) {
            return bad("--threads 0: at least one thread is needed".into());
        }
        if self.forecasters.is_empty() {
            return bad("at least one --forecaster is needed".into());
        }
        Ok(())
    }
}
