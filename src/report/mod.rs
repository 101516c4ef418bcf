//! `expertcast report`: a run's or a sweep's results as one self-contained HTML page
//! (figures as inline SVG, no scripts, no fetched fonts) and, on request, each figure
//! as a PNG or SVG file.
//!
//! [`load`] reads the outputs back; [`build`] turns them, and the input traces the
//! manifest names, into [`figures::Figure`]s and the page; [`write`] publishes the
//! files (each under a temporary name, then renamed).

pub mod downsample;
pub mod figures;
pub mod load;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;

use crate::UsageError;
use figures::{Body, Figure, Grid, Heat, Mark, Panel, Series};
use load::{Kind, Outputs};

/// The page's default file name, inside the results directory.
pub const REPORT_FILE: &str = "report.html";

/// Pixel width of a trace figure, and so the most buckets a series is drawn with.
const TRACE_FIG_W: u32 = 640;
const TRACE_FIG_H: u32 = 290;
/// Heatmap columns: at most one a pixel of the plotting area.
const HEAT_COLS: usize = 520;
/// s(t) min/max buckets: two points each, one bucket a pixel.
const SERIES_BUCKETS: usize = 540;

#[derive(clap::Args, Debug, Clone)]
pub struct ReportArgs {
    /// A run's --out directory (manifest.json and its Parquet files) or a sweep's.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// The HTML page to write [default: DIR/report.html].
    #[arg(long, short, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Also write every figure as a PNG file into this directory.
    #[arg(long, value_name = "DIR")]
    pub png: Option<PathBuf>,
    /// Also write every figure as an SVG file into this directory.
    #[arg(long, value_name = "DIR")]
    pub svg: Option<PathBuf>,
    /// Write the report even when something is missing (input traces that moved, a
    /// sweep's unfinished units); the page then says what is missing. Without it,
    /// a missing part is an error (exit 2) and nothing is written.
    #[arg(long)]
    pub allow_partial: bool,
}

/// A built report.
pub struct Report {
    pub html: String,
    pub figures: Vec<(Figure, String)>,
    /// What the page could not show.
    pub missing: Vec<String>,
    pub kind: Kind,
}

/// `expertcast report`.
pub fn report(args: &ReportArgs) -> anyhow::Result<()> {
    let t = Instant::now();
    let out = args.out.clone().unwrap_or_else(|| args.dir.join(REPORT_FILE));
    check_target(&out, &args.png, &args.svg)?;
    let r = build(&args.dir)?;
    if !r.missing.is_empty() && !args.allow_partial {
        return Err(UsageError(format!(
            "{}: the report would be partial, so nothing was written:\n  - {}\nPass --allow-partial to write it with what is there (the page lists what is missing).",
            args.dir.display(),
            r.missing.join("\n  - ")
        ))
        .into());
    }
    for m in &r.missing {
        eprintln!("expertcast: report: missing: {m}");
    }
    write(&r, &out, args.png.as_deref(), args.svg.as_deref())?;
    eprintln!(
        "expertcast: report: {} figure(s), {:.1} MB, written to {} ({:.2} s)",
        r.figures.len(),
        r.html.len() as f64 / 1e6,
        out.display(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Refuses, before any work, a page path that is a directory or image directories
/// that are files.
pub fn check_target(out: &Path, png: &Option<PathBuf>, svg: &Option<PathBuf>) -> Result<(), UsageError> {
    if out.is_dir() {
        return Err(UsageError(format!("--out {}: is a directory; give the HTML file to write", out.display())));
    }
    for (flag, d) in [("--png", png), ("--svg", svg)] {
        if let Some(d) = d {
            crate::output::check_out_dir(d).map_err(|e| UsageError(e.0.replace("--out", flag)))?;
        }
    }
    Ok(())
}

/// Writes the page, and the figures as files when asked.
pub fn write(r: &Report, out: &Path, png: Option<&Path>, svg: Option<&Path>) -> anyhow::Result<()> {
    if let Some(d) = svg {
        crate::output::create_out_dir(d)?;
        for (f, s) in &r.figures {
            crate::output::write_atomic(d, &format!("{}.svg", f.id), s.as_bytes())?;
        }
    }
    if let Some(d) = png {
        crate::output::create_out_dir(d)?;
        let pngs: Vec<(String, Vec<u8>)> = r.figures.par_iter().map(|(f, _)| Ok((f.id.clone(), figures::png(f)?))).collect::<anyhow::Result<_>>()?;
        for (id, bytes) in pngs {
            crate::output::write_atomic(d, &format!("{id}.png"), &bytes)?;
        }
    }
    let parent = crate::output::folder_of(out);
    crate::output::create_out_dir(parent)?;
    let name = out.file_name().ok_or_else(|| UsageError(format!("--out {}: not a file name", out.display())))?;
    crate::output::write_atomic(parent, &name.to_string_lossy(), r.html.as_bytes())
}

fn is_oracle(spec: &str) -> bool {
    spec.starts_with("oracle")
}

/// A file-name- and id-safe form of `s`.
fn slug(s: &str) -> String {
    let mut out: String = s.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    while out.contains("--") {
        out = out.replace("--", "-");
    }
    out.trim_matches('-').to_string()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Mean mae_pp per (forecaster, horizon) over the rows `keep` accepts, in the run's
/// forecaster order.
fn mae_by(o: &Outputs, keep: impl Fn(&load::Metric) -> bool) -> BTreeMap<(String, i64), f64> {
    let mut acc: BTreeMap<(String, i64), Vec<f64>> = BTreeMap::new();
    for m in o.metrics.iter().filter(|m| keep(m)) {
        if let Some(v) = m.mae_pp {
            acc.entry((m.forecaster.clone(), m.horizon)).or_default().push(v);
        }
    }
    acc.into_iter().filter_map(|(k, v)| mean(&v).map(|m| (k, m))).collect()
}

/// The best real (non-oracle) forecaster per horizon, with its mean mae_pp, the
/// runner-up and oracle-median's.
pub type BestRow = (i64, Option<(String, f64)>, Option<(String, f64)>, Option<f64>);

fn best_per_horizon(table: &BTreeMap<(String, i64), f64>) -> Vec<BestRow> {
    let horizons: BTreeSet<i64> = table.keys().map(|k| k.1).collect();
    horizons
        .into_iter()
        .map(|h| {
            let mut real: Vec<(String, f64)> = table.iter().filter(|(k, _)| k.1 == h && !is_oracle(&k.0)).map(|(k, v)| (k.0.clone(), *v)).collect();
            real.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
            let oracle = table.get(&("oracle-median".to_string(), h)).copied();
            (h, real.first().cloned(), real.get(1).cloned(), oracle)
        })
        .collect()
}

/// The regime the per-layer figures use: `stable` when there are stable rows.
fn main_regime(o: &Outputs) -> &'static str {
    if o.metrics.iter().any(|m| m.regime == "stable" && m.mae_pp.is_some()) { "stable" } else { "all" }
}

/// Traces read back for the share heatmaps and s(t), with what could not be.
fn read_traces(o: &Outputs, missing: &mut Vec<String>) -> Vec<crate::trace::Trace> {
    let opts = crate::trace::ReadOptions { format: o.format, columns: o.column_names.clone() };
    let inputs: Vec<(String, Option<u64>, crate::trace::Input)> = o
        .files
        .iter()
        .filter_map(|f| {
            let input = match f.path.strip_prefix(&format!("{}/", crate::trace::BUNDLED_PREFIX)) {
                Some(name) => match crate::trace::Input::bundled_named(name) {
                    Some(i) => i,
                    None => {
                        missing.push(format!("{}: a bundled trace this binary does not have; its share heatmaps and s(t) are left out", f.path));
                        return None;
                    }
                },
                None => {
                    let p = PathBuf::from(&f.path);
                    match std::fs::metadata(&p) {
                        Ok(m) if f.bytes.is_some_and(|b| b != m.len()) => {
                            missing.push(format!(
                                "{}: the trace file changed since the run ({} bytes then, {} now); its share heatmaps and s(t) are left out",
                                f.path,
                                f.bytes.unwrap_or(0),
                                m.len()
                            ));
                            return None;
                        }
                        Ok(_) => crate::trace::Input::File(p),
                        Err(e) => {
                            missing.push(format!("{}: the trace file named in the manifest cannot be read ({e}); its share heatmaps and s(t) are left out", f.path));
                            return None;
                        }
                    }
                }
            };
            Some((f.path.clone(), f.bytes, input))
        })
        .collect();
    let read: Vec<(String, anyhow::Result<Vec<crate::trace::Trace>>)> =
        inputs.into_par_iter().map(|(p, _, i)| (p, crate::trace::read_inputs(std::slice::from_ref(&i), &opts).map_err(anyhow::Error::from))).collect();
    let mut out = Vec::new();
    for (p, r) in read {
        match r {
            Ok(ts) => out.extend(ts),
            Err(e) => missing.push(format!("{p}: reading the trace failed ({e:#}); its share heatmaps and s(t) are left out")),
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Builds the report of `dir`.
pub fn build(dir: &Path) -> anyhow::Result<Report> {
    let span = crate::profile::span(|| "report: load outputs".into());
    let o = load::load(dir)?;
    drop(span);
    let mut missing = o.missing.clone();
    let span = crate::profile::span(|| "report: read traces".into());
    let traces = read_traces(&o, &mut missing);
    drop(span);
    let regime = main_regime(&o);
    let data_note = format!("Data: <code>{}</code>", esc(&o.command));
    let mut figs: Vec<Figure> = Vec::new();
    let mut sections: Vec<(String, String, Vec<usize>, String)> = Vec::new(); // (id, title, figures, html before them)

    // States at the report's (state window, kappa), per (trace, layer, window).
    let states: BTreeMap<(String, i64, i64), &load::State> = o
        .states
        .iter()
        .filter(|s| s.kappa == o.kappa && s.unit.is_none_or(|u| u.state_window == o.state_window))
        .map(|s| ((s.trace.clone(), s.layer, s.window), s))
        .collect();

    // Overview tables.
    let mut intro = String::new();
    overview(&o, &states, &mut intro);
    sections.push(("summary".into(), "Summary".into(), Vec::new(), intro));

    // Per trace: share heatmaps and s(t), computed from the trace.
    let windows: Vec<usize> = o.windows.iter().filter(|&&w| w > 0).map(|&w| w as usize).collect();
    let per_trace: Vec<Vec<Figure>> = traces
        .par_iter()
        .map(|tr| trace_figures(tr, &windows, &o, &states, &data_note))
        .collect::<anyhow::Result<_>>()?;
    for (tr, fs) in traces.iter().zip(per_trace) {
        let first = figs.len();
        figs.extend(fs);
        let html = format!(
            "<p>{} steps × {} layers × {} experts. Left: each expert's share of the layer's tokens over the steps; right: <i>s(t)</i>, \
             the mean over experts of the window standard deviation, per window, with <i>final</i> and (1 + κ)·<i>final</i> (dashed) and the transition step (vertical) of each window, in the window's colour.</p>",
            tr.steps(),
            tr.layers(),
            tr.experts()
        );
        sections.push((format!("trace-{}", slug(&tr.name)), format!("Trace {}", tr.name), (first..figs.len()).collect(), html));
    }

    // Error against horizon.
    let names: BTreeSet<String> = o.metrics.iter().map(|m| m.trace.clone()).collect();
    if !o.metrics.is_empty() {
        let first = figs.len();
        let mut groups: Vec<(String, Option<String>)> = names.iter().map(|t| (t.clone(), Some(t.clone()))).collect();
        if names.len() > 1 {
            groups.insert(0, ("all traces".into(), None));
        }
        for (label, trace) in groups {
            let panels: Vec<Panel> = ["all", "stable"]
                .iter()
                .map(|reg| {
                    let t = mae_by(&o, |m| m.regime == *reg && trace.as_ref().is_none_or(|t| &m.trace == t));
                    horizon_panel(&o, &t, &format!("regime {reg}"))
                })
                .collect();
            figs.push(Figure {
                id: format!("error-{}", slug(&label)),
                title: format!("Error against horizon: {label}"),
                caption: format!(
                    "mae_pp (mean absolute error of the shares, percentage points) against the horizon (log scale), mean over {} layers{}, \
                     for origins in every regime (top) and in the stable regime (bottom). oracle-median (dashed grey) is the floor. {data_note}",
                    if trace.is_some() { "the" } else { "every trace's" },
                    if o.kind == Kind::Sweep { " and the sweep's units" } else { "" }
                ),
                width: 900,
                height: 640,
                body: Body::Lines(panels),
            });
        }
        sections.push(("error".into(), "Error against horizon".into(), (first..figs.len()).collect(), String::new()));

        // Per-layer grids.
        let first = figs.len();
        for t in &names {
            figs.push(layer_grid(&o, t, regime, &data_note));
        }
        sections.push(("layers".into(), "Error per layer".into(), (first..figs.len()).collect(), String::new()));
    }

    // Placement.
    if !o.placement.is_empty() {
        let first = figs.len();
        let mut html = String::new();
        placement_table(&o, &mut html);
        figs.push(placement_figure(&o, &data_note));
        sections.push(("placement".into(), "Expert placement".into(), (first..figs.len()).collect(), html));
    }

    // Sweep dimensions.
    if o.kind == Kind::Sweep {
        let first = figs.len();
        figs.extend(sweep_figures(&o, regime, &data_note));
        if figs.len() > first {
            sections.push(("sweep".into(), "Sweep dimensions".into(), (first..figs.len()).collect(), String::new()));
        }
    }

    // Unique ids.
    let mut seen = BTreeMap::new();
    for f in figs.iter_mut() {
        let n: &mut usize = seen.entry(f.id.clone()).or_default();
        *n += 1;
        if *n > 1 {
            f.id = format!("{}-{}", f.id, n);
        }
    }
    let span = crate::profile::span(|| "report: draw".into());
    let svgs: Vec<String> = figs.par_iter().map(figures::svg).collect::<anyhow::Result<_>>()?;
    drop(span);
    let html = page(&o, &sections, &figs, &svgs, &missing);
    Ok(Report { html, figures: figs.into_iter().zip(svgs).collect(), missing, kind: o.kind })
}

fn horizon_panel(o: &Outputs, t: &BTreeMap<(String, i64), f64>, title: &str) -> Panel {
    let mut series = Vec::new();
    for (i, f) in o.forecasters.iter().enumerate() {
        let pts: Vec<(f64, f64)> = t.iter().filter(|(k, _)| &k.0 == f).map(|(k, v)| (k.1 as f64, *v)).collect();
        if pts.is_empty() {
            continue;
        }
        let oracle = is_oracle(f);
        series.push(Series { name: crate::forecast::display_name(f, &o.forecasters), points: pts, color: if oracle { 7 } else { i }, dashed: oracle, markers: true, line: true });
    }
    Panel { title: title.into(), x_label: "horizon (steps)".into(), y_label: "mae_pp".into(), log_x: true, series, ..Default::default() }
}

fn trace_figures(
    tr: &crate::trace::Trace,
    windows: &[usize],
    o: &Outputs,
    states: &BTreeMap<(String, i64, i64), &load::State>,
    data_note: &str,
) -> anyhow::Result<Vec<Figure>> {
    let (nt, ne) = (tr.steps(), tr.experts());
    let ws: Vec<usize> = windows.iter().copied().filter(|&w| w <= nt).collect();
    let x_of = |t: usize| tr.step_at(t) as f64;
    let span = crate::profile::span(|| format!("report: {}: heatmap cells and s(t)", tr.name));
    let views: Vec<(Vec<f64>, Vec<Vec<f64>>)> = (0..tr.layers()).into_par_iter().map(|l| layer_views(tr, l, &ws, HEAT_COLS)).collect();
    drop(span);
    // One colour scale for the trace, topped at the 99.5th percentile of its cells so
    // that a few early bursts do not darken everything else (those saturate).
    let mut all: Vec<f64> = views.iter().flat_map(|v| v.0.iter().copied()).collect();
    let vmax = if all.is_empty() { 0.0 } else { crate::placement::quantile(&mut all, 0.995) };
    let cols = HEAT_COLS.min(nt);
    let mut out = Vec::new();
    let name = &tr.name;
    for (l, (cells, stds)) in views.into_iter().enumerate() {
        let li = tr.layer_ids[l];
        let st = states.get(&(name.clone(), li, o.state_window));
        let marks: Vec<(f64, String)> =
            st.and_then(|s| s.transition_step).map(|t| vec![(t as f64, format!("transition (window {})", o.state_window))]).unwrap_or_default();
        let tdesc = match st.and_then(|s| s.transition_step) {
            Some(t) => format!("the dashed line is the transition step {t} (window {}, kappa {})", o.state_window, o.kappa),
            None if st.is_some() => format!("the layer has no transition step (window {}, kappa {})", o.state_window, o.kappa),
            None => "no state for this layer in the outputs".into(),
        };
        out.push(Figure {
            id: format!("shares-{}-l{li}", slug(name)),
            title: format!("{name}, layer {li}: expert shares"),
            caption: format!(
                "Share of each of the {ne} experts (rows) over the {nt} steps, {} step(s) a column (a column is the mean of its steps); \
                 one colour scale for every layer of the trace, 0 to {} (the 99.5th percentile of its cells; higher ones saturate); {tdesc}. {data_note}",
                nt.div_ceil(cols),
                figures::fmt_num(vmax)
            ),
            width: TRACE_FIG_W,
            height: TRACE_FIG_H,
            body: Body::Heatmap(Heat { experts: ne, cols, cells, x0: x_of(0), x1: x_of(nt - 1), vmax, marks }),
        });
        let mut series = Vec::new();
        let mut hlines = Vec::new();
        let mut vlines = Vec::new();
        for (wi, (&w, ys)) in ws.iter().zip(&stds).enumerate() {
            let xs: Vec<f64> = (0..ys.len()).map(|i| x_of(w - 1 + i)).collect();
            series.push(Series { name: format!("W = {w}"), points: downsample::min_max(&xs, ys, SERIES_BUCKETS), color: wi, dashed: false, markers: false, line: true });
            let s = states.get(&(name.clone(), li, w as i64)).copied();
            let (fin, trans) = match s {
                Some(s) => (s.final_std, s.transition_step),
                None => {
                    let s = crate::stats::states::transition(ys, w, o.kappa);
                    (s.final_std, s.transition.map(|t| tr.step_at(t)))
                }
            };
            if let Some(f) = fin {
                hlines.push(Mark { at: f, color: wi, dashed: true, label: String::new() });
                hlines.push(Mark { at: (1.0 + o.kappa) * f, color: wi, dashed: true, label: String::new() });
            }
            if let Some(t) = trans {
                vlines.push(Mark { at: t as f64, color: wi, dashed: false, label: format!("transition {t}") });
            }
        }
        let panel = Panel { title: String::new(), x_label: "step".into(), y_label: "s(t)".into(), series, hlines, vlines, ..Default::default() };
        out.push(Figure {
            id: format!("std-{}-l{li}", slug(name)),
            title: format!("{name}, layer {li}: s(t)"),
            caption: format!(
                "s(t), the mean over experts of the window standard deviation of the shares, for windows {}; \
                 min/max of each pixel's steps, so spikes stay; dashed: final and (1 + {})·final; vertical: transition step. {data_note}",
                ws.iter().map(|w| w.to_string()).collect::<Vec<_>>().join(", "),
                o.kappa
            ),
            width: TRACE_FIG_W,
            height: TRACE_FIG_H,
            body: Body::Lines(vec![panel]),
        });
    }
    Ok(out)
}

/// One pass over a layer's shares (step-major): the heatmap cells (mean share of each
/// expert over each of at most `cols` step buckets, `e * cols + c`) and `s(t)` for each
/// window (`[i]` is step index `w - 1 + i`), from sliding sums of each expert's shares
/// less its first share (which keeps the sums small, so `E[x²] - E[x]²` stays exact
/// enough to draw). The states themselves come from states.parquet.
fn layer_views(tr: &crate::trace::Trace, l: usize, windows: &[usize], cols: usize) -> (Vec<f64>, Vec<Vec<f64>>) {
    let (nt, ne) = (tr.steps(), tr.experts());
    let p = tr.layer_proportions(l);
    let row = |t: usize| &p[t * ne..(t + 1) * ne];
    let buckets = downsample::buckets(nt, cols);
    let mut cells = vec![0.0; ne * buckets.len()];
    for (c, r) in buckets.iter().enumerate() {
        let mut acc = vec![0.0; ne];
        for t in r.clone() {
            acc.iter_mut().zip(row(t)).for_each(|(a, x)| *a += x);
        }
        for e in 0..ne {
            cells[e * buckets.len() + c] = acc[e] / r.len() as f64;
        }
    }
    let shift: Vec<f64> = if nt > 0 { row(0).to_vec() } else { Vec::new() };
    let stds = windows
        .iter()
        .map(|&w| {
            if w == 0 || w > nt {
                return Vec::new();
            }
            let (mut s1, mut s2) = (vec![0.0f64; ne], vec![0.0f64; ne]);
            let mut out = Vec::with_capacity(nt + 1 - w);
            let inv = 1.0 / w as f64;
            for t in 0..nt {
                for (e, x) in row(t).iter().enumerate() {
                    let d = x - shift[e];
                    s1[e] += d;
                    s2[e] += d * d;
                }
                if t >= w {
                    for (e, x) in row(t - w).iter().enumerate() {
                        let d = x - shift[e];
                        s1[e] -= d;
                        s2[e] -= d * d;
                    }
                }
                if t + 1 >= w {
                    let sum: f64 = (0..ne).map(|e| { let m = s1[e] * inv; (s2[e] * inv - m * m).max(0.0).sqrt() }).sum();
                    out.push(sum / ne as f64);
                }
            }
            out
        })
        .collect();
    (cells, stds)
}

fn layer_grid(o: &Outputs, trace: &str, regime: &str, data_note: &str) -> Figure {
    let mut acc: BTreeMap<(i64, String, i64), Vec<f64>> = BTreeMap::new();
    for m in o.metrics.iter().filter(|m| m.trace == trace && m.regime == regime) {
        if let Some(v) = m.mae_pp {
            acc.entry((m.horizon, m.forecaster.clone(), m.layer)).or_default().push(v);
        }
    }
    let cell: BTreeMap<(i64, String, i64), f64> = acc.into_iter().filter_map(|(k, v)| mean(&v).map(|m| (k, m))).collect();
    let horizons: BTreeSet<i64> = cell.keys().map(|k| k.0).collect();
    let layers: BTreeSet<i64> = cell.keys().map(|k| k.2).collect();
    let fcs: Vec<String> = o.forecasters.iter().filter(|f| cell.keys().any(|k| &k.1 == *f)).cloned().collect();
    let grids: Vec<Grid> = horizons
        .iter()
        .map(|&h| {
            let mut text = Vec::new();
            let mut shade = Vec::new();
            for f in &fcs {
                for &l in &layers {
                    let v = cell.get(&(h, f.clone(), l)).copied();
                    let best = fcs.iter().filter(|g| !is_oracle(g)).filter_map(|g| cell.get(&(h, g.clone(), l))).copied().fold(f64::INFINITY, f64::min);
                    text.push(v.map(|v| format!("{v:.3}")).unwrap_or_else(|| "–".into()));
                    shade.push(match v {
                        Some(v) if !is_oracle(f) && best.is_finite() && best > 0.0 => Some(((v / best - 1.0) / 0.5).clamp(0.0, 1.0)),
                        Some(v) if !is_oracle(f) && v == best => Some(0.0),
                        _ => None,
                    });
                }
            }
            Grid {
                title: format!("horizon {h}"),
                row_labels: fcs.iter().map(|f| crate::forecast::display_name(f, &o.forecasters)).collect(),
                col_labels: layers.iter().map(|l| format!("L{l}")).collect(),
                text,
                shade,
            }
        })
        .collect();
    let height = 40 + grids.iter().map(|g| 30 + 22 * (g.row_labels.len() as u32 + 1)).sum::<u32>();
    Figure {
        id: format!("layers-{}", slug(trace)),
        title: format!("{trace}: mae_pp per layer (regime {regime})"),
        caption: format!(
            "mae_pp per layer (columns) and forecaster (rows) at each horizon, regime {regime}. Colour: green is the layer's best real forecaster at that horizon, \
             red 1.5× its error or worse; oracle-median (grey) is the floor, not a competitor. {data_note}"
        ),
        width: 1000,
        height,
        body: Body::Grid(grids),
    }
}

fn placement_means(o: &Outputs) -> (&'static str, BTreeMap<(i64, i64, String, i64), (f64, f64)>) {
    let regime = if o.placement.iter().any(|p| p.regime == "stable" && p.imbalance_mean.is_some()) { "stable" } else { "all" };
    let mut acc: BTreeMap<(i64, i64, String, i64), (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for p in o.placement.iter().filter(|p| p.regime == regime) {
        if let (Some(m), Some(q)) = (p.imbalance_mean, p.imbalance_p99) {
            let e = acc.entry((p.gpus, p.replicas, p.policy.clone(), p.horizon)).or_default();
            e.0.push(m);
            e.1.push(q);
        }
    }
    (regime, acc.into_iter().map(|(k, (m, q))| (k, (mean(&m).unwrap_or(f64::NAN), mean(&q).unwrap_or(f64::NAN)))).collect())
}

/// Policies in display order: static, reactive, the forecasters, oracle.
fn policy_order(o: &Outputs, policies: &BTreeSet<String>) -> Vec<String> {
    let mut v: Vec<String> = policies.iter().filter(|p| *p == "static").cloned().collect();
    v.extend(policies.iter().filter(|p| p.starts_with("reactive")).cloned());
    v.extend(o.forecasters.iter().filter(|f| policies.contains(*f)).cloned());
    let rest: Vec<String> = policies.iter().filter(|p| !v.contains(p) && *p != "oracle").cloned().collect();
    v.extend(rest);
    v.extend(policies.iter().filter(|p| *p == "oracle").cloned());
    v
}

fn placement_figure(o: &Outputs, data_note: &str) -> Figure {
    let (regime, t) = placement_means(o);
    let pairs: BTreeSet<(i64, i64)> = t.keys().map(|k| (k.0, k.1)).collect();
    let policies: BTreeSet<String> = t.keys().map(|k| k.2.clone()).collect();
    let horizons: BTreeSet<i64> = t.keys().map(|k| k.3).collect();
    let order = policy_order(o, &policies);
    let label = |p: &str| crate::forecast::display_name(p, &o.forecasters);
    let against_horizon = horizons.len() > 1;
    let panels: Vec<Panel> = pairs
        .iter()
        .map(|&(g, r)| {
            let title = format!("{g} GPUs, {r} redundant replicas");
            if against_horizon {
                let series = order
                    .iter()
                    .enumerate()
                    .map(|(i, p)| Series {
                        name: label(p),
                        points: t.iter().filter(|(k, _)| k.0 == g && k.1 == r && &k.2 == p).map(|(k, v)| (k.3 as f64, v.0)).collect(),
                        color: i,
                        dashed: p == "oracle" || p == "static",
                        markers: true,
                        line: true,
                    })
                    .filter(|s| !s.points.is_empty())
                    .collect();
                Panel { title, x_label: "placement horizon (steps)".into(), y_label: "mean imbalance".into(), log_x: true, series, ..Default::default() }
            } else {
                // One horizon: the policies side by side, mean and p99.
                let h = *horizons.first().unwrap_or(&0);
                let pick = |f: fn(&(f64, f64)) -> f64| -> Vec<(f64, f64)> {
                    order.iter().enumerate().filter_map(|(i, p)| t.get(&(g, r, p.clone(), h)).map(|v| (i as f64, f(v)))).collect()
                };
                let _ = pick(|v| v.1);
                let series = vec![Series { name: "mean imbalance".into(), points: pick(|v| v.0), color: 0, dashed: false, markers: true, line: false }];
                let title = format!("{title}, re-placed every {h} steps");
                Panel { title, x_label: "policy".into(), y_label: "imbalance".into(), categories: Some(order.iter().map(|p| label(p)).collect()), series, ..Default::default() }
            }
        })
        .collect();
    let height = 60 + 330 * panels.len().max(1) as u32;
    let what = if against_horizon {
        "Mean imbalance (max device load ÷ mean device load) of each policy's plans against the re-placement horizon"
    } else {
        "Mean imbalance (max device load ÷ mean device load) of each policy's plans (the p99 is in the table above)"
    };
    Figure {
        id: "placement".into(),
        title: format!("Expert placement: imbalance per policy (regime {regime})"),
        caption: format!("{what}, per (GPUs, replicas), mean over traces and layers, regime {regime}; 1 is perfect balance. {data_note}"),
        width: 1000,
        height,
        body: Body::Lines(panels),
    }
}

fn placement_table(o: &Outputs, html: &mut String) {
    let (regime, t) = placement_means(o);
    let policies: BTreeSet<String> = t.keys().map(|k| k.2.clone()).collect();
    let order = policy_order(o, &policies);
    let _ = write!(
        html,
        "<p>Mean and p99 imbalance per policy, mean over traces and layers, regime {regime}.</p><table><thead><tr><th>GPUs</th><th>replicas</th><th>horizon</th>"
    );
    for p in &order {
        let _ = write!(html, "<th>{}</th>", esc(&crate::forecast::display_name(p, &o.forecasters)));
    }
    html.push_str("</tr></thead><tbody>");
    let keys: BTreeSet<(i64, i64, i64)> = t.keys().map(|k| (k.0, k.1, k.3)).collect();
    for (g, r, h) in keys {
        let _ = write!(html, "<tr><td>{g}</td><td>{r}</td><td>{h}</td>");
        for p in &order {
            match t.get(&(g, r, p.clone(), h)) {
                Some((m, q)) => {
                    let _ = write!(html, "<td>{m:.4} <span class=dim>(p99 {q:.4})</span></td>");
                }
                None => html.push_str("<td>–</td>"),
            }
        }
        html.push_str("</tr>");
    }
    html.push_str("</tbody></table>");
}

fn sweep_figures(o: &Outputs, regime: &str, data_note: &str) -> Vec<Figure> {
    type Dim = (&'static str, fn(&load::Metric) -> String);
    let dims: [Dim; 4] = [
        ("trace", |m| m.trace.clone()),
        ("origin_stride", |m| m.unit.map(|u| u.origin_stride.to_string()).unwrap_or_default()),
        ("state_window", |m| m.unit.map(|u| u.state_window.to_string()).unwrap_or_default()),
        ("kappa", |m| m.unit.map(|u| u.kappa.to_string()).unwrap_or_default()),
    ];
    let horizons: BTreeSet<i64> = o.metrics.iter().map(|m| m.horizon).collect();
    let mut out = Vec::new();
    for (dim, key) in dims {
        let rows: Vec<&load::Metric> = o.metrics.iter().filter(|m| m.regime == regime).collect();
        let mut values: Vec<String> = rows.iter().map(|m| key(m)).collect::<BTreeSet<_>>().into_iter().collect();
        if values.len() < 2 {
            continue;
        }
        if dim != "trace" {
            values.sort_by(|a, b| a.parse::<f64>().unwrap_or(0.0).total_cmp(&b.parse::<f64>().unwrap_or(0.0)));
        }
        let panels: Vec<Panel> = horizons
            .iter()
            .map(|&h| {
                let mut acc: BTreeMap<(String, usize), Vec<f64>> = BTreeMap::new();
                for m in rows.iter().filter(|m| m.horizon == h) {
                    if let (Some(v), Some(i)) = (m.mae_pp, values.iter().position(|x| *x == key(m))) {
                        acc.entry((m.forecaster.clone(), i)).or_default().push(v);
                    }
                }
                let series = o
                    .forecasters
                    .iter()
                    .enumerate()
                    .map(|(fi, f)| Series {
                        name: crate::forecast::display_name(f, &o.forecasters),
                        points: acc.iter().filter(|(k, _)| &k.0 == f).filter_map(|(k, v)| mean(v).map(|m| (k.1 as f64, m))).collect(),
                        color: if is_oracle(f) { 7 } else { fi },
                        dashed: is_oracle(f),
                        markers: true,
                        line: true,
                    })
                    .filter(|s| !s.points.is_empty())
                    .collect();
                Panel { title: format!("horizon {h}"), x_label: dim.into(), y_label: "mae_pp".into(), categories: Some(values.clone()), series, ..Default::default() }
            })
            .collect();
        let height = 50 + 300 * panels.len() as u32;
        out.push(Figure {
            id: format!("sweep-{}", slug(dim)),
            title: format!("mae_pp against {dim} (regime {regime})"),
            caption: format!("mae_pp at each horizon against the sweep's {dim}, one line per forecaster, mean over every other setting, trace and layer, regime {regime}. {data_note}"),
            width: 900,
            height,
            body: Body::Lines(panels),
        });
    }
    out
}

fn overview(o: &Outputs, states: &BTreeMap<(String, i64, i64), &load::State>, html: &mut String) {
    let _ = write!(
        html,
        "<p>{} of <code>{}</code>, made by <code>{}</code>. {} metric rows, {} state rows, {} placement rows.</p>",
        if o.kind == Kind::Sweep { "The sweep dataset" } else { "The run" },
        esc(&o.dir.display().to_string()),
        esc(&o.command),
        o.metrics.len(),
        o.states.len(),
        o.placement.len()
    );
    let names: BTreeSet<String> = o.metrics.iter().map(|m| m.trace.clone()).collect();
    if !o.metrics.is_empty() {
        for reg in ["all", "stable"] {
            let t = mae_by(o, |m| m.regime == reg);
            if t.is_empty() {
                continue;
            }
            let _ = write!(html, "<h3>Best forecaster per horizon, regime {reg}</h3><p class=dim>mae_pp, mean over every trace and layer{}.</p>", if o.kind == Kind::Sweep { " and unit" } else { "" });
            best_table(o, &t, html, &format!("best-{reg}"));
        }
        if names.len() > 1 {
            for n in &names {
                let t = mae_by(o, |m| m.regime == "all" && &m.trace == n);
                let _ = write!(html, "<h3>Best forecaster per horizon on {}, regime all</h3>", esc(n));
                best_table(o, &t, html, &format!("best-{}", slug(n)));
            }
        }
    }
    if !o.states.is_empty() {
        let _ = write!(html, "<h3>Transition steps</h3><p class=dim>Per trace, layer and window, at kappa {} (– = none).</p>", o.kappa);
        let layers: BTreeSet<i64> = states.keys().map(|k| k.1).collect();
        html.push_str("<table id=transitions><thead><tr><th>trace</th><th>window</th>");
        for l in &layers {
            let _ = write!(html, "<th>L{l}</th>");
        }
        html.push_str("</tr></thead><tbody>");
        let rows: BTreeSet<(String, i64)> = states.keys().map(|k| (k.0.clone(), k.2)).collect();
        for (t, w) in rows {
            let _ = write!(html, "<tr><td>{}</td><td>{w}</td>", esc(&t));
            for l in &layers {
                let c = match states.get(&(t.clone(), *l, w)) {
                    Some(s) => s.transition_step.map(|x| x.to_string()).unwrap_or_else(|| "–".into()),
                    None => String::new(),
                };
                let _ = write!(html, "<td>{c}</td>");
            }
            html.push_str("</tr>");
        }
        html.push_str("</tbody></table>");
    }
}

fn best_table(o: &Outputs, t: &BTreeMap<(String, i64), f64>, html: &mut String, id: &str) {
    let name = |s: &str| esc(&crate::forecast::display_name(s, &o.forecasters));
    let _ = write!(html, "<table id=\"{id}\" class=best><thead><tr><th>horizon</th><th>best</th><th>mae_pp</th><th>runner-up</th><th>mae_pp</th><th>oracle-median</th></tr></thead><tbody>");
    for (h, b, r, or) in best_per_horizon(t) {
        let cell = |x: &Option<(String, f64)>| x.as_ref().map(|(f, v)| (name(f), format!("{v:.4}"))).unwrap_or(("–".into(), "–".into()));
        let (bn, bv) = cell(&b);
        let (rn, rv) = cell(&r);
        let ov = or.map(|v| format!("{v:.4}")).unwrap_or_else(|| "–".into());
        let _ = write!(html, "<tr><td>{h}</td><td class=fc>{bn}</td><td>{bv}</td><td class=fc>{rn}</td><td>{rv}</td><td>{ov}</td></tr>");
    }
    html.push_str("</tbody></table>");
}

const CSS: &str = r#"
:root { color-scheme: light dark; --bg: #ffffff; --fg: #1d1d1f; --dim: #5f6368; --rule: #d0d4d9; --card: #f6f7f9; --link: #0b57d0; --code: #eef0f3; }
@media (prefers-color-scheme: dark) {
  :root { --bg: #15171a; --fg: #e6e6e6; --dim: #a0a6ad; --rule: #3a3f45; --card: #1f2226; --link: #8ab4f8; --code: #2a2e33; }
}
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1360px; padding: 16px 24px 64px; background: var(--bg); color: var(--fg);
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
a { color: var(--link); }
h1 { font-size: 26px; margin: 8px 0 4px; }
h2 { font-size: 21px; margin: 36px 0 8px; padding-top: 8px; border-top: 1px solid var(--rule); }
h3 { font-size: 16px; margin: 20px 0 4px; }
code { background: var(--code); padding: 1px 4px; border-radius: 3px; font-size: 13px; word-break: break-all; }
.dim { color: var(--dim); }
nav { background: var(--card); border: 1px solid var(--rule); border-radius: 6px; padding: 8px 16px; margin: 12px 0; }
nav ol { margin: 4px 0; padding-left: 20px; columns: 2; }
table { border-collapse: collapse; margin: 6px 0 12px; font-size: 13px; }
th, td { border: 1px solid var(--rule); padding: 3px 8px; text-align: right; }
th { background: var(--card); }
td.fc, td:first-child { text-align: left; }
.figs { display: grid; grid-template-columns: repeat(auto-fill, minmax(600px, 1fr)); gap: 14px; }
figure { margin: 0; background: var(--card); border: 1px solid var(--rule); border-radius: 6px; padding: 8px; }
figure.wide { grid-column: 1 / -1; }
figure svg { display: block; max-width: 100%; height: auto; background: #ffffff; border-radius: 3px; }
figcaption { font-size: 13px; color: var(--dim); margin-top: 6px; }
.missing { border: 2px solid #d93025; border-radius: 6px; padding: 8px 16px; background: var(--card); }
"#;

fn page(o: &Outputs, sections: &[(String, String, Vec<usize>, String)], figs: &[Figure], svgs: &[String], missing: &[String]) -> String {
    let mut h = String::with_capacity(svgs.iter().map(|s| s.len()).sum::<usize>() + 65536);
    let title = format!("expertcast report: {}", o.dir.display());
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=en>\n<head>\n<meta charset=utf-8>\n<meta name=viewport content=\"width=device-width, initial-scale=1\">\n\
         <meta name=color-scheme content=\"light dark\">\n<title>{}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<h1>{}</h1>\n\
         <p class=dim>expertcast {} · {} figure(s) · every figure is drawn from the Parquet outputs (and the input traces), nothing is fetched.</p>\n",
        esc(&title),
        esc(&title),
        env!("CARGO_PKG_VERSION"),
        figs.len()
    );
    if !missing.is_empty() {
        h.push_str("<section class=missing id=missing><h2 style=\"border:0;margin-top:8px\">This report is partial</h2><ul>");
        for m in missing {
            let _ = write!(h, "<li>{}</li>", esc(m));
        }
        h.push_str("</ul></section>\n");
    }
    h.push_str("<nav><b>Contents</b><ol>");
    for (id, t, _, _) in sections {
        let _ = write!(h, "<li><a href=\"#{id}\">{}</a></li>", esc(t));
    }
    h.push_str("</ol></nav>\n");
    for (id, t, fi, before) in sections {
        let _ = write!(h, "<section id=\"{id}\"><h2>{}</h2>\n{before}\n", esc(t));
        if !fi.is_empty() {
            h.push_str("<div class=figs>\n");
            for &i in fi {
                let f = &figs[i];
                let wide = if f.width > TRACE_FIG_W { " class=wide" } else { "" };
                let svg = with_view_box(&svgs[i], f.width, f.height);
                let _ = write!(h, "<figure id=\"fig-{}\"{wide}>{svg}<figcaption><b>{}.</b> {}</figcaption></figure>\n", f.id, esc(&f.title), f.caption);
            }
            h.push_str("</div>\n");
        }
        h.push_str("</section>\n");
    }
    h.push_str("</body>\n</html>\n");
    h
}

/// Adds a viewBox (so the figure scales with the page) and an accessible role.
fn with_view_box(svg: &str, w: u32, hgt: u32) -> String {
    let body = svg.trim_start_matches(|c| c != '<');
    let body = if body.starts_with("<?xml") { &body[body.find("?>").map_or(0, |i| i + 2)..] } else { body };
    let body = body.trim_start();
    match body.strip_prefix("<svg") {
        Some(rest) if !rest.contains("viewBox") || rest.find("viewBox") > rest.find('>') => format!("<svg viewBox=\"0 0 {w} {hgt}\" role=img{rest}"),
        Some(rest) => format!("<svg role=img{rest}"),
        None => body.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_views_match_the_window_statistics() {
        // A trace with a transient: the report's s(t) and cells against the pipeline's
        // window statistics (float64 two-pass) and a direct bucket mean.
        let (nt, nl, ne) = (1500usize, 2usize, 5usize);
        let noise = crate::lcg_noise(11, nt * nl * ne);
        let loads: Vec<f64> = (0..nt * nl * ne)
            .map(|i| {
                let (t, e) = (i / (nl * ne), i % ne);
                let burst = if t < 300 { 40.0 * (e as f64) } else { 0.0 };
                100.0 + 10.0 * e as f64 + burst + 30.0 * noise[i]
            })
            .collect();
        let tr = crate::trace::Trace::from_dense(
            "t".into(),
            Path::new("t.npy"),
            0,
            (0..nl as i64).collect(),
            (0..ne as i64).collect(),
            crate::trace::Loads::F64(loads),
        )
        .unwrap();
        let ws = [10usize, 100, 200];
        let stats = crate::stats::layer_stats_cpu(&tr, &ws, None, || {}).unwrap();
        for l in 0..nl {
            let (cells, stds) = layer_views(&tr, l, &ws, 7);
            for (wi, w) in ws.iter().enumerate() {
                let want = &stats.iter().find(|s| s.layer == l && s.window == *w).unwrap().summary.std_mean;
                assert_eq!(stds[wi].len(), want.len());
                for (a, b) in stds[wi].iter().zip(want) {
                    assert!((a - b).abs() < 1e-12, "layer {l} window {w}: {a} vs {b}");
                }
            }
            let series = tr.layer_series(l);
            for e in 0..ne {
                let m = downsample::means(&series[e * nt..(e + 1) * nt], 7);
                for c in 0..7 {
                    assert!((cells[e * 7 + c] - m[c]).abs() < 1e-15);
                }
            }
        }
    }

    #[test]
    fn slugs_and_escapes() {
        assert_eq!(slug("gpt12-e16-top2-s1"), "gpt12-e16-top2-s1");
        assert_eq!(slug("A b/c__d"), "a-b-c-d");
        assert_eq!(esc("<a href=\"x\">&</a>"), "&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;");
    }

    #[test]
    fn best_skips_oracles_and_breaks_ties_by_name() {
        let mut t = BTreeMap::new();
        t.insert(("oracle-median".to_string(), 1), 0.0);
        t.insert(("b".to_string(), 1), 0.5);
        t.insert(("a".to_string(), 1), 0.5);
        t.insert(("c".to_string(), 1), 0.7);
        t.insert(("c".to_string(), 10), 0.2);
        let b = best_per_horizon(&t);
        assert_eq!(b[0], (1, Some(("a".into(), 0.5)), Some(("b".into(), 0.5)), Some(0.0)));
        assert_eq!(b[1], (10, Some(("c".into(), 0.2)), None, None));
    }

    #[test]
    fn view_box_added_once() {
        let s = with_view_box("<svg width=\"10\" height=\"5\" xmlns=\"http://www.w3.org/2000/svg\"><rect/></svg>", 10, 5);
        assert!(s.starts_with("<svg viewBox=\"0 0 10 5\" role=img width=\"10\""), "{s}");
        let s2 = with_view_box("<svg viewBox=\"0 0 1 1\"><rect/></svg>", 10, 5);
        assert_eq!(s2.matches("viewBox").count(), 1);
    }
}
