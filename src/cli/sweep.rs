//! `expertcast sweep CONFIG.toml`: the flags, the dry run's listing and the progress
//! of a shard; the sweep itself is [`crate::sweep`].

use std::path::PathBuf;
use std::time::Instant;

use anyhow::bail;

use crate::gpu::DeviceRequest;
use crate::sweep::{self, Outcome, Unit};

#[derive(clap::Args, Debug, Clone)]
pub struct SweepArgs {
    /// The sweep's TOML config (see datasets/sweep-example.toml).
    #[arg(value_name = "CONFIG")]
    pub config: PathBuf,
    /// Print the plan (units and their work) without running it.
    #[arg(long)]
    pub dry_run: bool,
    /// Run shard I of N (0-based): every N-th unit of the plan, starting at I. Default:
    /// from SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT, or JOB_COMPLETION_INDEX with
    /// EXPERTCAST_SHARD_COUNT (Kubernetes Indexed Jobs), else the whole plan.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
    /// Worker threads (default: all cores).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Where window statistics run.
    #[arg(long, value_enum, default_value_t = DeviceRequest::Auto)]
    pub device: DeviceRequest,
    /// GPUs to spread units over: `all`, or ordinals such as `0,1`. Unit k of the
    /// shard goes to worker k mod jobs, and worker w uses GPU devices[w mod count].
    #[arg(long, value_name = "all|0,1,...", default_value = "all")]
    pub devices: String,
    /// Units run at the same time (default: 4 per GPU in use, at most half the
    /// cores, so that units' reading, GPU work and writing overlap; 1 without a GPU,
    /// where each unit's work is spread over every core).
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
    /// No progress output.
    #[arg(long, short)]
    pub quiet: bool,
}

/// `expertcast sweep`.
pub fn sweep(args: &SweepArgs) -> anyhow::Result<()> {
    let plan = sweep::plan(&args.config)?;
    let (si, sn) = sweep::shard(args.shard.as_deref(), &|k| std::env::var(k).ok())?;
    let mine: Vec<&Unit> = plan.units.iter().enumerate().filter(|(i, _)| i % sn == si).map(|(_, u)| u).collect();
    if args.dry_run {
        println!(
            "sweep {}: {} unit(s) ({} trace file(s)), shard {si}/{sn} runs {}; output {}",
            args.config.display(),
            plan.units.len(),
            plan.units.iter().map(|u| &u.trace_file).collect::<std::collections::BTreeSet<_>>().len(),
            mine.len(),
            plan.out.display()
        );
        println!("each unit: windows {:?}, horizons {:?}, forecasters {}", plan.work.windows, plan.work.horizons, plan.work.forecasters.join(" "));
        for u in &mine {
            let size = std::fs::metadata(&u.trace_file).map(|m| m.len()).unwrap_or(0);
            let state = if sweep::is_done(&plan, u) { "done" } else { "to run" };
            println!(
                "  {}  {}  stride {}  state_window {}  kappa {}  ({:.1} MB)  {state}",
                u.id,
                u.trace_file.display(),
                u.origin_stride,
                u.state_window,
                u.kappa,
                size as f64 / 1e6
            );
        }
        return Ok(());
    }
    super::start_threads(args.threads)?;
    let progress = super::progress::Progress::new(args.quiet);
    let gpus = sweep::gpus(args.device, &args.devices)?;
    let jobs = args.jobs.unwrap_or_else(|| default_jobs(gpus.len(), std::thread::available_parallelism().map_or(1, |n| n.get()))).max(1);
    if !gpus.is_empty() {
        progress.line(format!("sweep: {jobs} unit(s) at a time over GPU(s) {gpus:?}"));
    }
    let stale = sweep::remove_stale(&plan)?;
    if stale > 0 {
        progress.line(format!("sweep: removed the results of {stale} unit(s) no longer in {}", args.config.display()));
    }
    let bar = progress.bar(mine.len() as u64, "sweep");
    bar.set_message("units");
    let t0 = Instant::now();
    let on_unit = |u: &Unit, outcome: &Outcome| {
        if let Outcome::Failed(e) = outcome {
            bar.suspend(|| eprintln!("expertcast: unit {} ({}) failed: {e}", u.id, u.trace_file.display()));
        }
        bar.inc(1);
    };
    let counts = sweep::run_units(&plan, &mine, args.device, &gpus, jobs, &on_unit)?;
    bar.finish_and_clear();
    sweep::write_manifest(&plan, &args.config)?;
    let elsewhere = if counts.elsewhere > 0 { format!(", {} running in another process", counts.elsewhere) } else { String::new() };
    progress.line(format!(
        "sweep: shard {si}/{sn}: {} unit(s) run, {} already done{elsewhere}, {} failed ({:.1} s); results in {}",
        counts.done,
        counts.skipped,
        counts.failed,
        t0.elapsed().as_secs_f64(),
        plan.out.display()
    ));
    if counts.failed > 0 {
        bail!("{} unit(s) failed (see {}/units/)", counts.failed, plan.out.display());
    }
    if plan.report {
        // Only a complete dataset gets its report: the shard that finishes last writes it.
        let waiting = plan.units.iter().filter(|u| !sweep::is_done(&plan, u)).count();
        if waiting > 0 {
            progress.line(format!("sweep: report.html waits for {waiting} unit(s) of other shards (the last shard to finish writes it)"));
        } else {
            let t = Instant::now();
            let r = crate::report::build(&plan.out)?;
            crate::report::write(&r, &plan.out.join(crate::report::REPORT_FILE), None, None)?;
            progress.line(format!("sweep: report in {} ({:.2} s)", plan.out.join(crate::report::REPORT_FILE).display(), t.elapsed().as_secs_f64()));
        }
    }
    Ok(())
}

/// Units a sweep runs at once by default with `gpus` GPUs on `cores` cores: 4 a GPU,
/// so that one unit's reading and writing overlap another's GPU work (the 64-trace
/// sweep of BENCHMARKS.md: 37.5 s with 2 a GPU, 29.7 s with 4, 29.2 s with 6 on the
/// 16-core H200 host), at most half the cores and at least one a GPU; 1 without a GPU.
fn default_jobs(gpus: usize, cores: usize) -> usize {
    if gpus == 0 { 1 } else { (4 * gpus).min(cores / 2).max(gpus) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn default_jobs_follow_gpus_and_cores() {
        use super::default_jobs;
        assert_eq!(default_jobs(0, 16), 1);
        assert_eq!(default_jobs(1, 16), 4);
        assert_eq!(default_jobs(2, 32), 8);
        assert_eq!(default_jobs(1, 4), 2);
        assert_eq!(default_jobs(2, 2), 2);
        assert_eq!(default_jobs(8, 128), 32);
    }
}
