//! `expertcast lstm train TRACE... --out MODEL`: trains one LSTM on every layer of
//! the given traces and saves a checkpoint that `run -f lstm:model=MODEL` applies
//! to other traces.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;

use super::UsageError;
use super::progress::Progress;
use crate::forecast::LayerView;
use crate::forecast::lstm::{self, GpuEngine, LstmConfig, Mode, Multi};
use crate::gpu::{self, DeviceRequest};
use crate::trace::{self, ReadOptions};

#[derive(clap::Args, Debug, Clone)]
pub struct LstmArgs {
    #[command(subcommand)]
    pub command: LstmCommand,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum LstmCommand {
    /// Train on every layer of the given traces (all windows of every layer, the
    /// latest --val share of each held out to pick the best epoch) and save a
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
    /// joint: every expert's share of a layer in and out; global: one model for every series.
    #[arg(long, value_enum, default_value = lstm::default_of("mode"))]
    pub mode: Mode,
    /// Input steps.
    #[arg(long, default_value = lstm::default_of("lookback"))]
    pub lookback: usize,
    /// Hidden units per LSTM layer.
    #[arg(long, default_value = lstm::default_of("hidden"))]
    pub hidden: usize,
    /// LSTM layers.
    #[arg(long, default_value = lstm::default_of("layers"))]
    pub layers: usize,
    /// Steps predicted at once.
    #[arg(long, default_value = lstm::default_of("k"))]
    pub k: usize,
    /// Default multi-step rule stored with the model (a run may override it).
    #[arg(long, value_enum, default_value = lstm::default_of("multi"))]
    pub multi: Multi,
    /// Adam learning rate.
    #[arg(long, default_value = lstm::default_of("lr"))]
    pub lr: f64,
    /// Most training epochs.
    #[arg(long, default_value = lstm::default_of("epochs"))]
    pub epochs: usize,
    /// Epochs without a better validation loss before stopping.
    #[arg(long, default_value = lstm::default_of("patience"))]
    pub patience: usize,
    /// Windows per training batch.
    #[arg(long, default_value = lstm::default_of("batch"))]
    pub batch: usize,
    /// Seed of the initial weights and the shuffling.
    #[arg(long, default_value = lstm::default_of("seed"))]
    pub seed: u64,
    /// Latest share of each layer's windows held out for validation.
    #[arg(long, default_value = lstm::default_of("val"))]
    pub val: f64,
    /// Where to train: auto uses a GPU when one is usable.
    #[arg(long, value_enum, default_value_t = DeviceRequest::Auto)]
    pub device: DeviceRequest,
    /// Which GPU (0-based).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub gpu: usize,
    /// On a GPU: our kernels (burn-cuda for sizes they do not take) or burn-cuda always.
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
    let cfg = LstmConfig {
        mode: a.mode,
        lookback: a.lookback,
        hidden: a.hidden,
        layers: a.layers,
        k: a.k,
        multi: a.multi,
        lr: a.lr,
        epochs: a.epochs,
        patience: a.patience,
        batch: a.batch,
        seed: a.seed,
        val: a.val,
    };
    cfg.validate().map_err(|e| UsageError(format!("lstm train: {e}")))?;
    let progress = Progress::new(a.quiet);
    let (device, note) = gpu::choose_at(a.device, a.gpu)?;
    if let Some(n) = note {
        progress.line(n);
    }
    let traces = trace::read_all(&a.traces, &ReadOptions::default())?;
    let experts = traces[0].experts();
    if a.mode == Mode::Joint
        && let Some(t) = traces.iter().find(|t| t.experts() != experts)
    {
        return Err(UsageError(format!(
            "{}: {} experts a layer, but {} has {experts}; a joint-mode model needs one expert count (use --mode global)",
            t.source.display(),
            t.experts(),
            traces[0].source.display()
        ))
        .into());
    }
    let shares: Vec<Vec<f64>> = traces.iter().flat_map(|t| (0..t.layers()).map(move |l| t.layer_proportions(l))).collect();
    let mut views = Vec::new();
    let mut i = 0;
    for t in &traces {
        for _ in 0..t.layers() {
            views.push(LayerView::new(&shares[i], t.experts()));
            i += 1;
        }
    }
    let ends: Vec<usize> = views.iter().map(|v| v.steps()).collect();
    let win = lstm::data::Windows { layers: views, mode: a.mode, lookback: a.lookback, k: a.k };
    progress.line(format!(
        "training a {} LSTM ({} layers × {} units, lookback {}, k {}) on {} layer(s) of {} trace(s) on {}",
        a.mode.as_str(),
        a.layers,
        a.hidden,
        a.lookback,
        a.k,
        ends.len(),
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
    let (trained, report) = lstm::fit_with(&win, &ends, &cfg, &device, a.engine, &mut on_batch).map_err(|e| UsageError(format!("lstm train: {e:#}")))?;
    bar.finish_and_clear();
    let names = traces.iter().map(|t| t.name.clone()).collect();
    let ck = lstm::checkpoint(&cfg, experts, names, report.clone());
    trained.save(&ck, &a.out).with_context(|| format!("saving the checkpoint to {}", a.out.display()))?;
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
