//! The one-screen summary printed at the end of a run.

use std::collections::BTreeMap;
use std::path::Path;

use crate::output::{MetricRow, PlacementRow, StateRow};
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

pub(super) struct Rows<'a> {
    pub metrics: &'a [MetricRow],
    pub states: &'a [StateRow],
    pub placement: &'a [PlacementRow],
}

pub(super) fn print(rows: Rows, specs: &[String], state_window: usize, kappa: f64, out: &Path) {
    let Rows { metrics, states, placement } = rows;
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
    let real: Vec<&str> = specs.iter().filter(|s| metrics.iter().any(|m| &m.forecaster == *s && m.real)).map(String::as_str).collect();
    print_placement(placement, specs, &real);
    println!();
    println!("Results in {}", out.display());
}

/// Per (gpus, replicas): the mean imbalance of `static`, the best forecaster's plan,
/// `reactive` and `oracle`; `real`: the specs of real forecasters (not oracle-median) (stable regime when any layer has stable origins, else all),
/// over every (trace, layer) with origins, and the share of the static → oracle gap
/// the best forecaster closes.
fn print_placement(rows: &[PlacementRow], specs: &[String], real: &[&str]) {
    if rows.is_empty() {
        return;
    }
    let regime = if rows.iter().any(|r| r.score.regime == Regime::Stable && r.score.origins > 0) { Regime::Stable } else { Regime::All };
    // The first (shortest) re-placement interval; placement.parquet has them all.
    let Some(h0) = rows.iter().map(|r| r.score.horizon).min() else { return };
    let mut sums: BTreeMap<(usize, usize, &str), (f64, usize)> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.score.regime == regime && r.score.horizon == h0) {
        if let Some(m) = r.score.imbalance_mean {
            let e = sums.entry((r.score.gpus, r.score.replicas, &r.score.policy)).or_insert((0.0, 0));
            e.0 += m;
            e.1 += 1;
        }
    }
    let mut cells: BTreeMap<(usize, usize), Vec<(&str, f64)>> = BTreeMap::new();
    for ((g, r, p), (s, n)) in sums {
        cells.entry((g, r)).or_default().push((p, s / n as f64));
    }
    println!();
    println!("Expert placement (mean imbalance, regime {}, re-placed every {h0} steps; gap = share of static -> oracle closed)", regime.as_str());
    let wd = specs.iter().map(|s| display_name(s, specs).chars().count()).max().unwrap_or(0).max(20);
    println!("{:>6} {:>8} {:>8}  {:<wd$} {:>8} {:>6}  {:>8} {:>8}", "gpus", "replicas", "static", "best real forecaster", "imbal.", "gap", "reactive", "oracle");
    for ((g, r), v) in cells {
        let get = |name: &str| v.iter().find(|x| x.0 == name).map(|x| x.1);
        let reactive = v.iter().find(|x| x.0.starts_with("reactive:")).map(|x| x.1);
        let best = v.iter().filter(|x| real.contains(&x.0)).min_by(|a, b| a.1.total_cmp(&b.1));
        let (Some(st), Some(or)) = (get("static"), get("oracle")) else { continue };
        let f = |x: Option<f64>| x.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into());
        let (name, imb, gap) = match best {
            Some(&(p, m)) => {
                let gap = if st > or { format!("{:.0} %", 100.0 * (st - m) / (st - or)) } else { "-".into() };
                (display_name(p, specs), format!("{m:.4}"), gap)
            }
            None => ("-".into(), "-".into(), "-".into()),
        };
        println!("{g:>6} {r:>8} {st:>8.4}  {name:<wd$} {imb:>8} {gap:>6}  {:>8} {:>8}", f(reactive), f(Some(or)));
    }
}
