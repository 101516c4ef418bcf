//! `expertcast lstm train TRACE... --out MODEL`: trains one LSTM on every layer of
//! the given traces and saves a checkpoint that `run -f lstm:model=MODEL` applies
//! to other traces.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;

use super::UsageError;
use super::progress::Progress;
use crate::forecast::lstm::{self, GpuEngine, LstmConfig};
use crate::gpu::{self, DeviceRequest};
use crate::trace::{self, ReadOptions};

#[derive(clap::Args, Debug, Clone)]
pub struct LstmArgs {
    #[command(subcommand)]
    pub command: LstmCommand,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum LstmCommand {
    /// Train on every layer of the given traces (every --stride-th window of every
    /// layer, the latest --val share of each held out to pick the best epoch) and save a
    /// checkpoint directory: weights.mpk (burn's recorder) and lstm.json (config,
    /// normalisation, training report).
    Train(LstmTrainArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct LstmTrainArgs {
    /// Trace files to train on (.parquet, .csv, .npy).
    #[arg(value_name = "TRACE", required = true)]
    pub traces: Vec<PathBuf>,
    /// Checkpoint directory to write (created; its lstm.json and weights.mpk are replaced).
    #[arg(long, short, value_name = "DIR")]
    pub out: PathBuf,
    #[command(flatten)]
    pub config: LstmConfig,
    /// Where to train: auto uses a GPU when one is usable.
    #[arg(long, value_enum, default_value_t = DeviceRequest::Auto)]
    pub device: DeviceRequest,
    /// Which GPU (0-based).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub gpu: usize,
    /// Our kernels (on a GPU kernels/lstm.cu, burn-cuda for sizes they do not take; on
    /// the CPU our Rust kernels) or burn always (burn-cuda, or burn's ndarray backend).
    #[arg(long, value_enum, default_value_t = GpuEngine::Kernels)]
    pub engine: GpuEngine,
    /// No progress bar or summary.
    #[arg(long, short)]
    pub quiet: bool,
}

pub fn lstm(args: &LstmArgs) -> anyhow::Result<()> {
    match &args.command {
        LstmCommand::Train(a) => train(a),
    }
}

fn train(a: &LstmTrainArgs) -> anyhow::Result<()> {
    let cfg = &a.config;
    cfg.validate().map_err(|e| UsageError(format!("lstm train: {e}")))?;
    let progress = Progress::new(a.quiet);
    let (device, note) = gpu::choose_at(a.device, a.gpu)?;
    if let Some(n) = note {
        progress.line(n);
    }
    let traces = trace::read_all(&a.traces, &ReadOptions::default())?;
    progress.line(format!(
        "training a {} LSTM ({} layers × {} units, lookback {}, k {}) on {} layer(s) of {} trace(s) on {}",
        cfg.mode.as_str(),
        cfg.layers,
        cfg.hidden,
        cfg.lookback,
        cfg.k,
        traces.iter().map(|t| t.layers()).sum::<usize>(),
        traces.len(),
        device.describe()
    ));
    let bar = progress.bar(0, "train");
    let t = Instant::now();
    let mut on_batch = |done: usize, total: usize, epoch: usize, loss: Option<f64>| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(format!("epoch {}{}", epoch + 1, loss.map_or(String::new(), |l| format!(", loss {l:.4}"))));
    };
    let (trained, ck) = lstm::fit_traces(&traces, cfg, &device, a.engine, &mut on_batch).map_err(|e| {
        if e.is::<UsageError>() { e } else { UsageError(format!("lstm train: {e:#}")).into() }
    })?;
    bar.finish_and_clear();
    trained.save(&ck, &a.out).with_context(|| format!("saving the checkpoint to {}", a.out.display()))?;
    let report = &ck.report;
    progress.line(format!(
        "trained on {} windows ({} held out): {} epoch(s), best {} (train loss {:.4}{}), {:.1} s; wrote {}",
        report.train_windows,
        report.val_windows,
        report.epochs_run,
        report.best_epoch,
        report.train_loss,
        report.val_loss.map_or(String::new(), |v| format!(", validation loss {v:.4}")),
        t.elapsed().as_secs_f64(),
        a.out.display()
    ));
    Ok(())
}
