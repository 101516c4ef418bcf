//! The built binary on the bundled real traces, its files checked against
//! independent float64 computations from the raw Parquet input.

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

use common::*;

/// One default run on the three bundled traces, shared by the tests below.
fn default_run() -> &'static PathBuf {
    static OUT: OnceLock<PathBuf> = OnceLock::new();
    OUT.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let out = dir.join("out");
        let o = expertcast(&["run", "--out", out.to_str().unwrap(), "--stats-detail", "expert"]);
        assert!(o.status.success(), "default run failed: {}", stderr(&o));
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(stdout.contains("Best forecaster per horizon"), "{stdout}");
        assert!(stdout.contains("Transition steps per layer"), "{stdout}");
        out
    })
}

const TRACES: [(&str, usize, usize); 3] =
    [("gpt12-e16-top2-s1", 8001, 16), ("gpt12-e16-top2-s2", 6001, 16), ("gpt12-e64-top2-s1", 3001, 64)];

#[test]
fn files_have_the_spec_columns_and_row_counts() {
    let out = default_run();
    let ls = read_all(&out.join("layer_stats.parquet"));
    assert_eq!(
        column_names(&ls),
        ["trace", "layer", "window_size", "step", "var_mean", "var_max", "range_mean", "range_max"]
    );
    let want: usize = TRACES.iter().map(|(_, t, _)| 6 * [10, 100, 200].iter().map(|w| t - w + 1).sum::<usize>()).sum();
    assert_eq!(ls.num_rows(), want);

    let ws = read_all(&out.join("window_stats.parquet"));
    assert_eq!(column_names(&ws), ["trace", "layer", "expert", "window_size", "step", "mean", "variance", "range"]);
    let want: usize =
        TRACES.iter().map(|(_, t, e)| 6 * e * [10, 100, 200].iter().map(|w| t - w + 1).sum::<usize>()).sum();
    assert_eq!(ws.num_rows(), want);

    let st = read_all(&out.join("states.parquet"));
    assert_eq!(column_names(&st), ["trace", "layer", "window_size", "kappa", "transition_step", "final_std"]);
    assert_eq!(st.num_rows(), 3 * 6 * 3); // windows 10, 100, 200 (the state window 100 among them)

    let m = read_all(&out.join("metrics.parquet"));
    assert_eq!(
        column_names(&m),
        ["trace", "layer", "forecaster", "horizon", "regime", "origins", "mae_pp", "rmse_pp", "tv_pct", "fallbacks"]
    );
    assert_eq!(m.num_rows(), 3 * 6 * 5 * 5 * 2);
    let specs = col_str(&m, "forecaster");
    for f in ["last", "mean:w=100", "sw-avg:w=100", "ema:alpha=0.3", "oracle-median"] {
        assert!(specs.iter().any(|s| s == f), "{f}");
    }

    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(manifest["inputs"].as_array().unwrap().len(), 3);
    assert_eq!(manifest["inputs"][0]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(manifest["config"]["origin_start"], 100);
    for stage in ["read", "stats", "states", "forecast"] {
        assert!(manifest["seconds"][stage].as_f64().unwrap() >= 0.0, "{stage}");
    }
    // No temporary files are left behind.
    for e in std::fs::read_dir(out).unwrap() {
        let n = e.unwrap().file_name().into_string().unwrap();
        assert!(!n.starts_with('.'), "leftover {n}");
    }
}

#[test]
fn window_statistics_match_a_float64_two_pass_reference() {
    let out = default_run();
    let r = Reference::load(&bundled("gpt12-e16-top2-s2"));
    let ls = read_all(&out.join("layer_stats.parquet"));
    let (tr, layer, win, step) = (col_str(&ls, "trace"), col_i64(&ls, "layer"), col_i64(&ls, "window_size"), col_i64(&ls, "step"));
    let (vm, vx, rm, rx) = (col_f64(&ls, "var_mean"), col_f64(&ls, "var_max"), col_f64(&ls, "range_mean"), col_f64(&ls, "range_max"));
    let mut checked = 0;
    for i in 0..ls.num_rows() {
        if tr[i] != "gpt12-e16-top2-s2" || (step[i] % 397 != 0 && step[i] != 6000) {
            continue;
        }
        let (l, w, t) = (layer[i] as usize, win[i] as usize, (step[i] - r.first_step) as usize);
        let per: Vec<(f64, f64, f64)> = (0..r.experts).map(|e| r.window(l, e, w, t)).collect();
        let mean_var = per.iter().map(|x| x.1).sum::<f64>() / r.experts as f64;
        let max_var = per.iter().map(|x| x.1).fold(f64::MIN, f64::max);
        let mean_range = per.iter().map(|x| x.2).sum::<f64>() / r.experts as f64;
        let max_range = per.iter().map(|x| x.2).fold(f64::MIN, f64::max);
        assert!((vm[i] - mean_var).abs() < 1e-9, "var_mean l={l} w={w} t={t}");
        assert!((vx[i] - max_var).abs() < 1e-9, "var_max l={l} w={w} t={t}");
        assert!((rm[i] - mean_range).abs() < 1e-9, "range_mean l={l} w={w} t={t}");
        assert!((rx[i] - max_range).abs() < 1e-9, "range_max l={l} w={w} t={t}");
        checked += 1;
    }
    assert!(checked > 200, "{checked}");

    // The per-expert detail too.
    let ws = read_all(&out.join("window_stats.parquet"));
    let (tr, layer, ex, win, step) =
        (col_str(&ws, "trace"), col_i64(&ws, "layer"), col_i64(&ws, "expert"), col_i64(&ws, "window_size"), col_i64(&ws, "step"));
    let (mean, var, range) = (col_f64(&ws, "mean"), col_f64(&ws, "variance"), col_f64(&ws, "range"));
    let mut checked = 0;
    for i in (0..ws.num_rows()).step_by(911) {
        if tr[i] != "gpt12-e16-top2-s2" {
            continue;
        }
        let (m, v, rg) = r.window(layer[i] as usize, ex[i] as usize, win[i] as usize, (step[i] - r.first_step) as usize);
        assert!((mean[i] - m).abs() < 1e-9 && (var[i] - v).abs() < 1e-9 && (range[i] - rg).abs() < 1e-9, "row {i}");
        checked += 1;
    }
    assert!(checked > 100, "{checked}");
}

/// `s(t)` of a layer at window `w`, and the transition step by SPEC.md's rule.
fn reference_transition(r: &Reference, l: usize, w: usize, kappa: f64) -> (Option<i64>, f64) {
    let s: Vec<f64> =
        (w - 1..r.steps).map(|t| (0..r.experts).map(|e| r.window(l, e, w, t).1.sqrt()).sum::<f64>() / r.experts as f64).collect();
    let n = s.len();
    let mut tail = s[n - (n / 10).max(1)..].to_vec();
    tail.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let k = tail.len();
    let fin = if k % 2 == 1 { tail[k / 2] } else { (tail[k / 2 - 1] + tail[k / 2]) / 2.0 };
    // Brute force: the first t from which every later value is within the limit.
    let first = (0..n).find(|&i| s[i..].iter().all(|&x| x <= (1.0 + kappa) * fin));
    (first.map(|i| r.first_step + (w - 1 + i) as i64), fin)
}

#[test]
fn transition_steps_match_the_spec_rule() {
    let out = default_run();
    let r = Reference::load(&bundled("gpt12-e16-top2-s2"));
    let st = read_all(&out.join("states.parquet"));
    let (tr, layer, win, ts, fs) =
        (col_str(&st, "trace"), col_i64(&st, "layer"), col_i64(&st, "window_size"), col_i64(&st, "transition_step"), col_f64(&st, "final_std"));
    let mut checked = 0;
    for i in 0..st.num_rows() {
        if tr[i] != "gpt12-e16-top2-s2" || win[i] != 100 || layer[i] > 1 {
            continue;
        }
        let (want, fin) = reference_transition(&r, layer[i] as usize, 100, 0.5);
        assert_eq!(Some(ts[i]).filter(|&x| x != i64::MIN), want, "layer {}", layer[i]);
        assert!((fs[i] - fin).abs() < 1e-9);
        checked += 1;
    }
    assert_eq!(checked, 2);
    // The bundled runs settle: every layer of every trace has a transition at W = 100.
    for i in 0..st.num_rows() {
        if win[i] == 100 {
            assert!(ts[i] != i64::MIN, "{} layer {} never settles", tr[i], layer[i]);
        }
    }
}

#[test]
fn metrics_match_hand_scored_forecasts() {
    let out = default_run();
    let r = Reference::load(&bundled("gpt12-e16-top2-s2"));
    let m = read_all(&out.join("metrics.parquet"));
    let (tr, layer, f, h, reg, org, mae, rmse, tv) = (
        col_str(&m, "trace"),
        col_i64(&m, "layer"),
        col_str(&m, "forecaster"),
        col_i64(&m, "horizon"),
        col_str(&m, "regime"),
        col_i64(&m, "origins"),
        col_f64(&m, "mae_pp"),
        col_f64(&m, "rmse_pp"),
        col_f64(&m, "tv_pct"),
    );
    let row = |fc: &str, hz: i64, regime: &str, l: i64| {
        (0..m.num_rows())
            .find(|&i| tr[i] == "gpt12-e16-top2-s2" && f[i] == fc && h[i] == hz && reg[i] == regime && layer[i] == l)
            .unwrap()
    };
    let l = 3usize;
    let origins: Vec<usize> = (100..r.steps).step_by(100).collect();
    // last, h = 10: predict p[o-1] for p[o .. o+9].
    let (mut a, mut s, mut n) = (0.0, 0.0, 0usize);
    let mut scored = 0;
    for &o in origins.iter().filter(|&&o| o + 10 <= r.steps) {
        scored += 1;
        for k in 0..10 {
            for e in 0..r.experts {
                let d = r.p(o - 1, l, e) - r.p(o + k, l, e);
                a += d.abs();
                s += d * d;
                n += 1;
            }
        }
    }
    let i = row("last", 10, "all", l as i64);
    assert_eq!(org[i], scored);
    assert!((mae[i] - 100.0 * a / n as f64).abs() < 1e-9);
    assert!((rmse[i] - 100.0 * (s / n as f64).sqrt()).abs() < 1e-9);
    assert!((tv[i] - 100.0 * 0.5 * a / (n / r.experts) as f64).abs() < 1e-9);

    // mean:w=100, h = 1000, stable origins only (from the layer's transition step).
    let (tstep, _) = reference_transition(&r, l, 100, 0.5);
    let from = (tstep.unwrap() - r.first_step) as usize;
    let (mut a, mut n, mut scored) = (0.0, 0usize, 0);
    for &o in origins.iter().filter(|&&o| o + 1000 <= r.steps && o >= from) {
        scored += 1;
        for e in 0..r.experts {
            let mean = (o - 100..o).map(|t| r.p(t, l, e)).sum::<f64>() / 100.0;
            for k in 0..1000 {
                a += (mean - r.p(o + k, l, e)).abs();
                n += 1;
            }
        }
    }
    let i = row("mean:w=100", 1000, "stable", l as i64);
    assert_eq!(org[i], scored);
    assert!((mae[i] - 100.0 * a / n as f64).abs() < 1e-9);

    // The oracle is a floor: no real forecaster beats it at h = 1000 on average.
    let avg = |fc: &str| {
        let v: Vec<f64> = (0..m.num_rows()).filter(|&i| f[i] == fc && h[i] == 1000 && reg[i] == "all").map(|i| mae[i]).collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    for fc in ["last", "mean:w=100", "sw-avg:w=100", "ema:alpha=0.3"] {
        assert!(avg("oracle-median") < avg(fc), "{fc}");
    }
}

#[test]
fn independent_reader_opens_every_file() {
    let out = default_run();
    let py = std::env::var("EXPERTCAST_PYTHON").unwrap_or_else(|_| "python3".into());
    let o = std::process::Command::new(&py)
        .arg(root().join("tests/interop.py"))
        .arg(out)
        .arg(root().join("datasets"))
        .output()
        .unwrap_or_else(|e| panic!("cannot start {py} ({e}); run the tests with `make test`"));
    assert!(
        o.status.success(),
        "pyarrow check failed (run the tests with `make test`, which installs pyarrow):\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("interop: all files ok"));
}

#[test]
fn csv_npy_and_parquet_inputs_give_identical_results() {
    // The first 400 steps of a bundled trace, written as CSV and as .npy.
    let r = Reference::load(&bundled("gpt12-e16-top2-s1"));
    let d = tempfile::tempdir().unwrap();
    let steps = 400;
    let loads = |t: usize, l: usize, e: usize| (r.p(t, l, e) * 16384.0).round();
    let rows = grid(steps as i64, 6, 16, |t, l, e| loads(t as usize, l as usize, e as usize));
    write_csv(&d.path().join("cut.csv"), &rows);
    write_parquet(&d.path().join("cut.parquet"), &rows);
    let data: Vec<u8> = rows.iter().flat_map(|row| (row.3 as i64).to_le_bytes()).collect();
    write_npy(&d.path().join("cut.npy"), "<i8", &[steps, 6, 16], &data);
    let mut metrics = Vec::new();
    for ext in ["csv", "parquet", "npy"] {
        let input = d.path().join(format!("cut.{ext}"));
        let out = d.path().join(format!("out-{ext}"));
        let o = expertcast(&[
            "run", input.to_str().unwrap(), "--out", out.to_str().unwrap(), "--quiet", "--horizon", "1", "--horizon", "50",
            "--origin-stride", "25",
        ]);
        assert!(o.status.success(), "{ext}: {}", stderr(&o));
        let m = read_all(&out.join("metrics.parquet"));
        metrics.push((col_f64(&m, "mae_pp"), col_i64(&m, "origins")));
    }
    assert_eq!(metrics[0].1, metrics[1].1);
    for k in 1..3 {
        for (a, b) in metrics[0].0.iter().zip(&metrics[k].0) {
            assert!(a == b || (a.is_nan() && b.is_nan()), "{a} vs {b}");
        }
    }
}

#[test]
fn several_traces_in_one_file_and_saved_forecasts() {
    let d = tempfile::tempdir().unwrap();
    // Two traces in one CSV through a trace column, rows interleaved.
    let mut s = String::from("trace,step,layer,expert,tokens\n");
    for t in 0..30 {
        for name in ["a", "b"] {
            for e in 0..2 {
                let v = if name == "a" { 1 + (t + e) % 3 } else { 2 + e };
                s.push_str(&format!("{name},{t},0,{e},{v}\n"));
            }
        }
    }
    let input = d.path().join("two.csv");
    std::fs::write(&input, s).unwrap();
    let out = d.path().join("out");
    let o = expertcast(&[
        "run", input.to_str().unwrap(), "--out", out.to_str().unwrap(), "--quiet", "-f", "last", "--window", "5",
        "--state-window", "5", "--horizon", "2", "--origin-stride", "10", "--save-forecasts",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m = read_all(&out.join("metrics.parquet"));
    let traces = col_str(&m, "trace");
    assert!(traces.contains(&"a".to_string()) && traces.contains(&"b".to_string()));
    // Trace b is constant (1/3, 2/3): `last` is exact.
    let mae = col_f64(&m, "mae_pp");
    let i = (0..m.num_rows()).find(|&i| traces[i] == "b").unwrap();
    assert_eq!(mae[i], 0.0);
    let fc = read_all(&out.join("forecasts.parquet"));
    assert_eq!(column_names(&fc), ["trace", "layer", "expert", "forecaster", "origin", "k", "predicted", "actual", "stderr"]);
    assert!(col_f64(&fc, "stderr").iter().all(|v| v.is_nan()), "`last` has no standard errors: stderr is null");
    // origins 1, 11, 21 (start 1 for `last`), 2 steps, 2 experts, 2 traces
    assert_eq!(fc.num_rows(), 3 * 2 * 2 * 2);
    let (org, k, pred, act) = (col_i64(&fc, "origin"), col_i64(&fc, "k"), col_f64(&fc, "predicted"), col_f64(&fc, "actual"));
    let fct = col_str(&fc, "trace");
    for i in 0..fc.num_rows() {
        assert!([1, 11, 21].contains(&org[i]) && k[i] < 2);
        if fct[i] == "b" {
            assert!((pred[i] - act[i]).abs() < 1e-15);
        }
    }
}

#[test]
fn arima_forecasts_carry_standard_errors_and_a_fallback_summary() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    let trace = bundled("gpt12-e16-top2-s2");
    let o = expertcast(&[
        "run", trace.to_str().unwrap(), "--out", out.to_str().unwrap(), "-f", "arima:p=1,d=1,q=1,n=400", "--horizon", "5",
        "--origin-start", "3000", "--origin-stride", "1000", "--save-forecasts",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // 6 layers x 16 experts x 4 origins (3000, 4000, 5000 and 6000, the last step,
    // which has one step left to forecast and so is not scored at horizon 5)
    assert!(stderr(&o).contains("arima:p=1,d=1,q=1,n=400,method=css-ml,mean=auto,opt=lm,warm=false: 0 of the 288 series forecasts scored at horizon 5 fell back"), "{}", stderr(&o));
    let fc = read_all(&out.join("forecasts.parquet"));
    assert_eq!(fc.num_rows(), 6 * 16 * (3 * 5 + 1));
    let (se, k, pred) = (col_f64(&fc, "stderr"), col_i64(&fc, "k"), col_f64(&fc, "predicted"));
    let (layer, expert, origin) = (col_i64(&fc, "layer"), col_i64(&fc, "expert"), col_i64(&fc, "origin"));
    let mut by_series: std::collections::BTreeMap<(i64, i64, i64), Vec<(i64, f64)>> = Default::default();
    for i in 0..fc.num_rows() {
        assert!(se[i] > 0.0 && se[i] < 0.5 && pred[i].is_finite(), "row {i}: stderr {} predicted {}", se[i], pred[i]);
        by_series.entry((layer[i], expert[i], origin[i])).or_default().push((k[i], se[i]));
    }
    for (key, mut v) in by_series {
        v.sort_by_key(|x| x.0);
        // an integrated (d = 1) forecast only grows more uncertain with the step ahead
        for w in v.windows(2) {
            assert!(w[1].1 >= w[0].1 * (1.0 - 1e-12), "{key:?}: {:?}", v);
        }
    }
    let m = read_all(&out.join("metrics.parquet"));
    assert!(col_i64(&m, "fallbacks").iter().all(|&f| f == 0));
}

#[test]
fn synth_writes_a_trace_that_run_reads() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("syn.parquet");
    let o = expertcast(&[
        "synth", "--out", f.to_str().unwrap(), "--steps", "600", "--layers", "3", "--experts", "8", "--tokens-per-step",
        "500", "--top-k", "2", "--seed", "9",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = Reference::load(&f);
    assert_eq!((r.steps, r.layers, r.experts), (600, 3, 8));
    // Shares of each (step, layer) sum to 1: the loads to tokens × top-k, checked raw.
    let raw = read_all(&f);
    let tok = col_i64(&raw, "tokens");
    assert_eq!(tok.len(), 600 * 3 * 8);
    for c in tok.chunks(8) {
        assert_eq!(c.iter().sum::<i64>(), 1000);
    }
    let out = d.path().join("out");
    let o = expertcast(&["run", f.to_str().unwrap(), "--out", out.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Bad settings are usage errors.
    for bad in [vec!["--top-k", "9", "--experts", "8"], vec!["--phi", "1.5"], vec!["--steps", "0"]] {
        let mut a = vec!["synth", "--out", f.to_str().unwrap()];
        a.extend(bad.iter());
        assert_eq!(expertcast(&a).status.code(), Some(2), "{bad:?}");
    }
}
