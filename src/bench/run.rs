//! `expertcast bench --stage run`: the whole default run (every default window,
//! horizon and forecaster) on a synthetic trace of the paper's GPT-3 350M shape,
//! from `.npy` and from Parquet, a stage at a time, best of `--runs`. The runs are
//! in this process, so they leave out the process's start and the device's first
//! opening (the first run pays the kernels' first load); `make bench-e2e` times
//! whole processes beside the PyTorch peer.

use std::time::Instant;

use anyhow::Context;

use super::BenchArgs;
use crate::output::RunDir;
use crate::pipeline::{self, RunPlan};
use crate::synth::{self, SynthConfig};
use crate::trace::Input;

/// Tokens per step and layer of the paper-scale trace (the command).
const TOKENS: u64 = 524_288;
/// Its seed.
const SEED: u64 = 7;

pub fn bench_run(args: &BenchArgs) -> anyhow::Result<()> {
    let cfg = SynthConfig { steps: args.steps, layers: args.layers, experts: args.experts, tokens_per_step: TOKENS, seed: SEED, ..Default::default() };
    cfg.validate()?;
    let dir = tempfile::tempdir().context("creating a temporary directory for the bench trace")?;
    println!(
        "bench --stage run: the default run on `expertcast synth --steps {} --layers {} --experts {} --tokens-per-step {TOKENS} --seed {SEED}`, {} run(s) per input, {} threads",
        cfg.steps,
        cfg.layers,
        cfg.experts,
        args.runs,
        rayon::current_num_threads()
    );
    for ext in ["npy", "parquet"] {
        let path = dir.path().join(format!("trace.{ext}"));
        let t = Instant::now();
        match ext {
            "npy" => synth::write_npy(&cfg, &path)?,
            _ => synth::write_parquet(&cfg, &path)?,
        }
        let bytes = std::fs::metadata(&path)?.len();
        println!("{ext}: {:.1} MB, written in {:.1} s", bytes as f64 / 1e6, t.elapsed().as_secs_f64());
        let mut best = f64::INFINITY;
        for run in 1..=args.runs.max(1) {
            let mut plan = RunPlan::new(vec![Input::File(path.clone())]);
            plan.device = args.device;
            let out = dir.path().join(format!("out-{ext}-{run}"));
            let mut sink = RunDir::new(&out, &pipeline::tables(&plan));
            let t = Instant::now();
            let report = pipeline::run(&plan, &mut sink, &pipeline::Silent)?;
            let wall = t.elapsed().as_secs_f64();
            best = best.min(wall);
            let s = &report.seconds;
            let at = |k: &str| s.get(k).copied().unwrap_or(0.0);
            println!(
                "  run {run}: {wall:.2} s (read {:.2}, statistics {:.2}, states {:.3}, forecasts + scores {:.2}; {} metric rows)",
                at("read"),
                at("stats"),
                at("states"),
                at("forecast"),
                report.metrics.len()
            );
            std::fs::remove_dir_all(&out).ok();
        }
        println!("{ext}: best {best:.2} s");
    }
    Ok(())
}
