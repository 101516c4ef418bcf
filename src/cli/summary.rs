//! The one-screen summary printed at the end of a run.

use std::collections::BTreeMap;
use std::path::Path;

use crate::output::{MetricRow, StateRow};
use crate::eval::Regime;
use crate::forecast::display_name;

/// Mean `mae_pp` (regime `all`) of each forecaster at each horizon, over every
/// trace and layer that scored at least one origin.
pub(super) fn mean_mae(rows: &[MetricRow]) -> BTreeMap<usize, Vec<(String, bool, f64)>> {
    let mut sums: BTreeMap<(usize, &str), (bool, f64, usize)> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.score.regime == Regime::All) {
        if let Some(m) = r.score.mae_pp {
            let e = sums.entry((r.score.horizon, &r.forecaster)).or_insert((r.real, 0.0, 0));
            e.1 += m;
            e.2 += 1;
        }
    }
    let mut out: BTreeMap<usize, Vec<(String, bool, f64)>> = BTreeMap::new();
    for ((h, f), (real, s, n)) in sums {
        out.entry(h).or_default().push((f.to_string(), real, s / n as f64));
    }
    for v in out.values_mut() {
        v.sort_by(|a, b| a.2.total_cmp(&b.2));
    }
    out
}

pub(super) fn print(metrics: &[MetricRow], states: &[StateRow], specs: &[String], state_window: usize, kappa: f64, out: &Path) {
    println!();
    println!("Best forecaster per horizon (mae_pp, mean over traces and layers, regime all)");
    let mut table = mean_mae(metrics);
    for v in table.values_mut() {
        v.iter_mut().for_each(|x| x.0 = display_name(&x.0, specs));
    }
    let wd = table.values().flatten().map(|x| x.0.chars().count()).max().unwrap_or(0).max(22);
    println!("{:>8}  {:<wd$} {:>8}  {:<wd$} {:>8}  {:>13}", "horizon", "best", "mae_pp", "runner-up", "mae_pp", "oracle-median");
    for (h, v) in table {
        let real: Vec<&(String, bool, f64)> = v.iter().filter(|x| x.1).collect();
        let oracle = v.iter().find(|x| !x.1).map(|x| format!("{:.3}", x.2)).unwrap_or_else(|| "-".into());
        let cell = |i: usize| real.get(i).map(|x| (x.0.clone(), format!("{:.3}", x.2))).unwrap_or(("-".into(), "-".into()));
        let (b, bm) = cell(0);
        let (r, rm) = cell(1);
        println!("{h:>8}  {b:<wd$} {bm:>8}  {r:<wd$} {rm:>8}  {oracle:>13}");
    }
    for spec in specs {
        let short = display_name(spec, specs);
        if short != *spec {
            println!("  {short} = {spec}");
        }
    }
    println!();
    println!("Transition steps per layer (window {state_window}, kappa {kappa}; '-' = none)");
    let mut by_trace: BTreeMap<&str, Vec<(i64, Option<i64>)>> = BTreeMap::new();
    for s in states.iter().filter(|s| s.window == state_window) {
        by_trace.entry(&s.trace).or_default().push((s.layer, s.transition_step));
    }
    for (t, layers) in by_trace {
        let cells: Vec<String> = layers
            .iter()
            .map(|(l, s)| format!("L{l}:{}", s.map(|x| x.to_string()).unwrap_or_else(|| "-".into())))
            .collect();
        println!("  {t:<24} {}", cells.join("  "));
    }
    println!();
    println!("Results in {}", out.display());
}
