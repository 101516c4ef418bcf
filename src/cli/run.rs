//! `expertcast run`: the flags become a plan, the pipeline runs it into the output
//! directory, and the summary is printed.

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
    super::start_threads(args.threads)?;
    let progress = Progress::new(args.quiet);
    let mut sink = RunDir::new(&args.out, &pipeline::tables(&plan));
    let files: Vec<std::path::PathBuf> = plan.inputs.iter().filter_map(|i| if let crate::trace::Input::File(p) = i { Some(p.clone()) } else { None }).collect();
    sink.check(&files)?;
    let report = pipeline::run_prepared(&plan, prep, &mut sink, &progress)?;
    if !args.quiet {
        summary::print(
            summary::Rows { metrics: &report.metrics, states: &report.states, placement: &report.placement },
            &report.specs,
            plan.state_window,
            plan.kappa,
            &args.out,
        );
    }
    let page = args.out.join(crate::report::REPORT_FILE);
    if args.report {
        let t = std::time::Instant::now();
        let r = crate::report::build(&args.out)?;
        for m in &r.missing {
            progress.line(format!("report: missing: {m}"));
        }
        crate::report::write(&r, &page, None, None)?;
        progress.line(format!("report: {} figure(s) in {} ({:.2} s)", r.figures.len(), page.display(), t.elapsed().as_secs_f64()));
    } else if page.is_file() {
        std::fs::remove_file(&page).map_err(|e| anyhow::anyhow!("removing the earlier run's {}: {e}", page.display()))?;
    }
    Ok(())
}
