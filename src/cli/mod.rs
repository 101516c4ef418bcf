//! Command-line parsing, progress reporting and the `run` pipeline.

pub mod linear;
pub mod lstm;
pub mod sweep;
mod progress;
mod run;
mod summary;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::gpu::DeviceRequest;
use crate::pipeline::{RunPlan, Work};
use crate::trace::{ColumnNames, Format, Input, ReadOptions};

pub use run::run;

pub use crate::UsageError;
pub use crate::pipeline::StatsDetail;
use crate::pipeline::plan as defaults;

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
    Bench(crate::bench::BenchArgs),
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
    /// Fit the `linear` baseline (a ridge autoregression on per-window-normalised
    /// shares) on traces and save a model that `run -f linear:model=DIR` applies.
    Linear(linear::LinearArgs),
    /// Draw a run's or a sweep's results: one self-contained HTML page (expert
    /// shares, s(t) and the transition steps, error against horizon, error per layer,
    /// placement, sweep dimensions), and each figure as PNG or SVG files on request.
    Report(crate::report::ReportArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct SynthArgs {
    /// Output file: `.parquet` (long, the schema of the bundled traces) or `.npy`
    /// (dense int32 `[steps, layers, experts]`).
    #[arg(long, short, value_name = "FILE")]
    pub out: PathBuf,
    #[command(flatten)]
    pub config: crate::synth::SynthConfig,
}

/// `--threads N`: at least 1 and at most 8 per core this process may use (more
/// only make the machine thrash).
pub fn check_threads(threads: Option<usize>) -> Result<(), UsageError> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    match threads {
        Some(0) => Err(UsageError("--threads 0: at least one thread is needed".into())),
        Some(n) if n > 8 * cores => Err(UsageError(format!("--threads {n}: at most {} (8 per core; {cores} available)", 8 * cores))),
        _ => Ok(()),
    }
}

/// Sizes the global thread pool when `--threads` is given.
pub fn start_threads(threads: Option<usize>) -> anyhow::Result<()> {
    check_threads(threads)?;
    if let Some(n) = threads {
        rayon::ThreadPoolBuilder::new().num_threads(n).build_global().map_err(|e| anyhow::anyhow!("starting the thread pool: {e}"))?;
    }
    Ok(())
}

/// `expertcast synth`.
pub fn synth(args: &SynthArgs) -> anyhow::Result<()> {
    args.config.validate()?;
    let t = std::time::Instant::now();
    match args.out.extension().and_then(|e| e.to_str()) {
        Some("parquet") => crate::synth::write_parquet(&args.config, &args.out)?,
        Some("npy") => crate::synth::write_npy(&args.config, &args.out)?,
        _ => return Err(UsageError(format!("--out {}: the file name must end in .parquet or .npy", args.out.display())).into()),
    }
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
    #[arg(long = "window", short = 'w', value_name = "W", default_values_t = defaults::WINDOWS)]
    pub windows: Vec<usize>,

    /// Forecast horizon H in steps; repeat for several. Each is scored on the
    /// origins that have H steps ahead.
    #[arg(long = "horizon", value_name = "H", default_values_t = defaults::HORIZONS)]
    pub horizons: Vec<usize>,

    /// Forecaster spec NAME[:key=value,...]; repeat for several. Given at all, -f
    /// replaces the default list (use -a to add to it). Known: last, mean:w=W,
    /// median:w=W, sw-avg:w=W, ema:alpha=A, oracle-median, arima:p=P,d=D,q=Q,..., arima-auto,
    /// lstm:... (lstm:model=DIR for a checkpoint), linear:... (linear:model=DIR); a wrong spec lists every
    /// forecaster and its parameters.
    #[arg(long = "forecaster", short = 'f', value_name = "SPEC",
          default_values_t = defaults::FORECASTERS.map(String::from))]
    pub forecasters: Vec<String>,

    /// Forecaster spec added to the -f list (to the defaults when -f is not given):
    /// `-a arima` scores ARIMA beside the baselines and the oracle-median floor.
    /// Repeat for several.
    #[arg(long = "add-forecaster", short = 'a', value_name = "SPEC")]
    pub add_forecasters: Vec<String>,

    /// Steps between forecast origins.
    #[arg(long, value_name = "N", default_value_t = defaults::ORIGIN_STRIDE)]
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
    #[arg(long, value_name = "K", default_value_t = defaults::KAPPA, allow_negative_numbers = true)]
    pub kappa: f64,

    /// Window whose states define each layer's transition step (regime = stable).
    #[arg(long, value_name = "W", default_value_t = defaults::STATE_WINDOW)]
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

    /// Score expert placement on G devices (repeat for several; off unless given):
    /// static, reactive, one plan per forecaster and the oracle, in placement.parquet.
    #[arg(long = "placement-gpus", value_name = "G", allow_negative_numbers = true, help_heading = "Expert placement")]
    pub placement_gpus: Vec<usize>,

    /// Redundant expert replicas R (repeat for several; every device holds (E + R) / G
    /// replicas, so G must divide E + R).
    #[arg(long = "placement-replicas", value_name = "R", default_values_t = [0usize], allow_negative_numbers = true, help_heading = "Expert placement")]
    pub placement_replicas: Vec<usize>,

    /// Re-placement interval H in steps: a plan made at an origin is applied to the H
    /// steps after it. Repeat for several (each scored on its own).
    #[arg(long, value_name = "H", default_values_t = [crate::placement::HORIZON], allow_negative_numbers = true, help_heading = "Expert placement")]
    pub placement_horizon: Vec<usize>,

    /// Window W of the reactive policy (`reactive:w=W`: planned from the mean of the
    /// last W actual shares).
    #[arg(long, value_name = "W", default_value_t = crate::placement::REACTIVE_WINDOW, allow_negative_numbers = true, help_heading = "Expert placement")]
    pub placement_reactive_window: usize,

    /// Also write OUT/report.html at the end: the figures and tables of
    /// `expertcast report OUT`. Without it, a report.html of an earlier run in OUT is
    /// removed (it would describe other results).
    #[arg(long)]
    pub report: bool,

    /// No progress bars, stage lines or summary table (errors are still printed).
    #[arg(long, short)]
    pub quiet: bool,
}

impl RunArgs {
    /// The placement the flags ask for: none without `--placement-gpus`, whose
    /// companions are refused alone.
    fn placement(&self, argv: &[String]) -> Result<Option<crate::placement::PlacementConfig>, UsageError> {
        if self.placement_gpus.is_empty() {
            let given = ["--placement-replicas", "--placement-horizon", "--placement-reactive-window"]
                .into_iter()
                .find(|f| argv.iter().any(|a| a == f || a.starts_with(&format!("{f}="))));
            return match given {
                Some(f) => Err(UsageError(format!("{f} needs --placement-gpus G (placement is off without it)"))),
                None => Ok(None),
            };
        }
        Ok(Some(crate::placement::PlacementConfig {
            gpus: crate::pipeline::plan::sorted_unique(&self.placement_gpus),
            replicas: crate::pipeline::plan::sorted_unique(&self.placement_replicas),
            horizons: crate::pipeline::plan::sorted_unique(&self.placement_horizon),
            reactive_window: self.placement_reactive_window,
        }))
    }

    /// The run's resolved plan (checked by the pipeline); `argv` is recorded in the
    /// manifest.
    pub fn plan(&self, argv: &[String]) -> Result<RunPlan, UsageError> {
        check_threads(self.threads)?;
        let inputs = if self.traces.is_empty() { Input::bundled() } else { self.traces.iter().cloned().map(Input::File).collect() };
        Ok(RunPlan {
            inputs,
            read: ReadOptions {
                format: self.format,
                columns: ColumnNames {
                    step: self.step_col.clone(),
                    layer: self.layer_col.clone(),
                    expert: self.expert_col.clone(),
                    tokens: self.tokens_col.clone(),
                    trace: self.trace_col.clone(),
                },
            },
            work: Work {
                windows: self.windows.clone(),
                horizons: self.horizons.clone(),
                forecasters: self.forecasters.clone(),
                placement: self.placement(argv)?,
            },
            added_forecasters: self.add_forecasters.clone(),
            origin_stride: self.origin_stride,
            origin_start: self.origin_start,
            state_window: self.state_window,
            kappa: self.kappa,
            renormalize: !self.no_renormalize,
            device: self.device,
            gpu: self.gpu,
            stats_detail: self.stats_detail,
            save_forecasts: self.save_forecasts,
            command_line: argv.to_vec(),
        })
    }
}
