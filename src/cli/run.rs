//! `expertcast run`: the flags become a plan, the pipeline runs it into the output
//! directory, and the summary is printed.

use anyhow::Context;

use super::RunArgs;
use super::progress::Progress;
use super::summary;
use crate::output::RunDir;
use crate::pipeline;

/// Runs the pipeline for `args`; `argv` is recorded in the manifest.
pub fn run(args: &RunArgs, argv: &[String]) -> anyhow::Result<()> {
    let plan = args.plan(argv)?;
    // Refuse what can be refused before the thread pool and the device are set up.
    let prep = pipeline::prepare(&plan)?;
    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new().num_threads(n).build_global().context("starting the thread pool")?;
    }
    let progress = Progress::new(args.quiet);
    let mut sink = RunDir::new(&args.out, &pipeline::tables(&plan));
    let report = pipeline::run_prepared(&plan, prep, &mut sink, &progress)?;
    if !args.quiet {
        summary::print(&report.metrics, &report.states, &report.specs, plan.state_window, plan.kappa, &args.out);
    }
    Ok(())
}
