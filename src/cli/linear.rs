//! `expertcast linear train TRACE... --out MODEL`: fits the `linear` baseline on
//! every layer of the given traces and saves it for `run -f linear:model=MODEL`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;

use super::UsageError;
use super::progress::Progress;
use crate::forecast::linear::{self, LinearConfig};
use crate::trace::{self, ReadOptions};

#[derive(clap::Args, Debug, Clone)]
pub struct LinearArgs {
    #[command(subcommand)]
    pub command: LinearCommand,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum LinearCommand {
    /// Fit one matrix on every window of every layer and expert of the given traces
    /// (ridge least squares, closed form) and save MODEL/linear.json.
    Train(LinearTrainArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct LinearTrainArgs {
    /// Trace files to fit on (.parquet, .csv, .npy).
    #[arg(value_name = "TRACE", required = true)]
    pub traces: Vec<PathBuf>,
    /// Model directory to write (created; its linear.json is replaced).
    #[arg(long, short, value_name = "DIR")]
    pub out: PathBuf,
    #[command(flatten)]
    pub config: LinearConfig,
    /// No summary line.
    #[arg(long, short)]
    pub quiet: bool,
}

pub fn linear(args: &LinearArgs) -> anyhow::Result<()> {
    match &args.command {
        LinearCommand::Train(a) => train(a),
    }
}

fn train(a: &LinearTrainArgs) -> anyhow::Result<()> {
    a.config.validate().map_err(|e| UsageError(format!("linear train: {e}")))?;
    let progress = Progress::new(a.quiet);
    let traces = trace::read_all(&a.traces, &ReadOptions::default())?;
    let t = Instant::now();
    let m = linear::fit_traces(&traces, &a.config).map_err(|e| UsageError(format!("linear train: {e:#}")))?;
    m.save(&a.out).with_context(|| format!("saving the model to {}", a.out.display()))?;
    progress.line(format!(
        "fitted a linear model (lookback {}, k {}, lambda {}) on {} windows of {} trace(s): loss {:.4}, {:.2} s; wrote {}",
        a.config.lookback,
        a.config.k,
        a.config.lambda,
        m.windows,
        traces.len(),
        m.train_loss,
        t.elapsed().as_secs_f64(),
        a.out.join("linear.json").display()
    ));
    Ok(())
}
