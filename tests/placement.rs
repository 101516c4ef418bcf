//! Expert placement through the built binary on the bundled traces: the file's
//! columns and rows, the `static` policy recomputed independently in float64 from the
//! raw Parquet input, `oracle` never worse than `static`, a sweep's placement table,
//! and the refusals (exit 2, nothing written).

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use common::*;

const TRACES: [(&str, usize, usize); 3] =
    [("gpt12-e16-top2-s1", 8001, 16), ("gpt12-e16-top2-s2", 6001, 16), ("gpt12-e64-top2-s1", 3001, 64)];

/// One default run with placement on 4 and 8 GPUs, 0 and 8 redundant replicas.
fn placement_run() -> &'static PathBuf {
    static OUT: OnceLock<PathBuf> = OnceLock::new();
    OUT.get_or_init(|| {
        let out = tempfile::tempdir().unwrap().keep().join("out");
        let args = ["run", "--out", out.to_str().unwrap(), "--quiet", "--placement-gpus", "8", "--placement-gpus", "4"];
        let o = expertcast(&[&args[..], &["--placement-replicas", "0", "--placement-replicas", "8"]].concat());
        assert!(o.status.success(), "placement run failed: {}", stderr(&o));
        out
    })
}

const POLICIES: [&str; 8] =
    ["static", "reactive:w=100", "last", "mean:w=100", "sw-avg:w=100", "ema:alpha=0.3", "oracle-median", "oracle"];

#[test]
fn the_file_has_a_row_per_trace_layer_policy_shape_and_regime() {
    let b = read_all(&placement_run().join("placement.parquet"));
    assert_eq!(
        column_names(&b),
        [
            "trace", "layer", "policy", "gpus", "replicas", "horizon", "regime", "origins", "imbalance_mean", "imbalance_p99",
            "imbalance_max", "moved_replicas_mean"
        ]
    );
    assert_eq!(b.num_rows(), 3 * 6 * POLICIES.len() * 2 * 2 * 2);
    let policy = col_str(&b, "policy");
    for p in POLICIES {
        assert_eq!(policy.iter().filter(|x| *x == p).count(), 3 * 6 * 8, "{p}");
    }
    let (moved, imb, p99, max) = (col_f64(&b, "moved_replicas_mean"), col_f64(&b, "imbalance_mean"), col_f64(&b, "imbalance_p99"), col_f64(&b, "imbalance_max"));
    let (gpus, origins) = (col_i64(&b, "gpus"), col_i64(&b, "origins"));
    for i in 0..b.num_rows() {
        assert!(col_i64(&b, "horizon")[i] == 100);
        if origins[i] == 0 {
            assert!(imb[i].is_nan() && moved[i].is_nan());
            continue;
        }
        // 1 is perfect balance, G everything on one device.
        assert!(imb[i] >= 1.0 - 1e-12 && imb[i] <= p99[i] + 1e-12 && p99[i] <= max[i] + 1e-12 && max[i] <= gpus[i] as f64 + 1e-12, "row {i}");
        if policy[i] == "static" {
            assert_eq!(moved[i], 0.0);
        }
    }
    // The manifest records the settings.
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(placement_run().join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["config"]["placement"]["gpus"], serde_json::json!([4, 8]));
    assert_eq!(m["config"]["placement"]["replicas"], serde_json::json!([0, 8]));
}

/// numpy's default quantile, written out.
fn quantile(mut v: Vec<f64>, q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let pos = q * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(v.len() - 1);
    v[lo] + (pos - lo as f64) * (v[hi] - v[lo])
}

#[test]
fn static_matches_a_float64_recomputation_from_the_raw_input() {
    let b = read_all(&placement_run().join("placement.parquet"));
    let (trace, layer, policy, regime) = (col_str(&b, "trace"), col_i64(&b, "layer"), col_str(&b, "policy"), col_str(&b, "regime"));
    let (gpus, replicas, origins) = (col_i64(&b, "gpus"), col_i64(&b, "replicas"), col_i64(&b, "origins"));
    let (imb, p99, max) = (col_f64(&b, "imbalance_mean"), col_f64(&b, "imbalance_p99"), col_f64(&b, "imbalance_max"));
    let mut checked = 0;
    for (name, steps, experts) in TRACES {
        let r = Reference::load(&bundled(name));
        assert_eq!((r.steps, r.experts), (steps, experts));
        for l in 0..6 {
            for g in [4usize, 8] {
                // Origins 100, 200, ... (the default start: mean:w=100's history) with
                // 100 steps ahead; expert e on device e mod G.
                let mut values = Vec::new();
                let mut n = 0;
                for o in (100..steps).step_by(100).filter(|o| o + 100 <= steps) {
                    n += 1;
                    for t in o..o + 100 {
                        let mut loads = vec![0.0; g];
                        (0..experts).for_each(|e| loads[e % g] += r.p(t, l, e));
                        let total: f64 = loads.iter().sum();
                        values.push(loads.iter().cloned().fold(f64::MIN, f64::max) / (total / g as f64));
                    }
                }
                let mean = values.iter().sum::<f64>() / values.len() as f64;
                let hi = values.iter().cloned().fold(f64::MIN, f64::max);
                let q = quantile(values, 0.99);
                for i in 0..b.num_rows() {
                    if trace[i] == name && layer[i] == l as i64 && policy[i] == "static" && gpus[i] == g as i64 && regime[i] == "all" {
                        // The static plan has no replicas: R changes nothing.
                        let _ = replicas[i];
                        assert_eq!(origins[i], n);
                        assert!((imb[i] - mean).abs() < 1e-12 * mean, "{name} L{l} G{g}: {} vs {mean}", imb[i]);
                        assert!((p99[i] - q).abs() < 1e-12 * q && (max[i] - hi).abs() < 1e-12 * hi);
                        checked += 1;
                    }
                }
            }
        }
    }
    assert_eq!(checked, 3 * 6 * 2 * 2);
}

#[test]
fn the_oracle_is_never_worse_than_static() {
    let b = read_all(&placement_run().join("placement.parquet"));
    let (trace, layer, policy, regime) = (col_str(&b, "trace"), col_i64(&b, "layer"), col_str(&b, "policy"), col_str(&b, "regime"));
    let (gpus, replicas, origins, imb) = (col_i64(&b, "gpus"), col_i64(&b, "replicas"), col_i64(&b, "origins"), col_f64(&b, "imbalance_mean"));
    let mut by_key: HashMap<(String, i64, i64, i64, String), HashMap<String, f64>> = HashMap::new();
    for i in (0..b.num_rows()).filter(|&i| origins[i] > 0) {
        by_key.entry((trace[i].clone(), layer[i], gpus[i], replicas[i], regime[i].clone())).or_default().insert(policy[i].clone(), imb[i]);
    }
    assert!(by_key.len() >= 3 * 6 * 2 * 2, "every (trace, layer, G, R) has origins in regime all");
    let mut better = 0;
    for (k, p) in &by_key {
        let (o, s) = (p["oracle"], p["static"]);
        assert!(o <= s * (1.0 + 1e-12), "{k:?}: oracle {o} > static {s}");
        better += usize::from(o < s);
    }
    // And it does better somewhere: replicas alone balance a skewed layer.
    assert!(better > by_key.len() / 2, "oracle better than static in only {better} of {}", by_key.len());
}

/// `reactive:w=100` (the mean of the last 100 actual shares, computed by the
/// placement code) and the forecaster `mean:w=100` (computed by the forecaster) are
/// the same weights by two paths, equal up to rounding (the forecaster's are
/// renormalised): their plans agree but where rounding tips a near-tie (then the
/// cell differs from that origin on: 128 of 144 cells equal when this was written).
#[test]
fn reactive_equals_the_window_mean_forecaster() {
    let b = read_all(&placement_run().join("placement.parquet"));
    let (trace, layer, policy, regime) = (col_str(&b, "trace"), col_i64(&b, "layer"), col_str(&b, "policy"), col_str(&b, "regime"));
    let (gpus, replicas, imb, moved) = (col_i64(&b, "gpus"), col_i64(&b, "replicas"), col_f64(&b, "imbalance_mean"), col_f64(&b, "moved_replicas_mean"));
    let key = |i: usize| (trace[i].clone(), layer[i], gpus[i], replicas[i], regime[i].clone());
    let mean: HashMap<_, (f64, f64)> = (0..b.num_rows()).filter(|&i| policy[i] == "mean:w=100").map(|i| (key(i), (imb[i], moved[i]))).collect();
    let (mut n, mut same) = (0, 0);
    for i in (0..b.num_rows()).filter(|&i| policy[i] == "reactive:w=100" && !imb[i].is_nan()) {
        let (m, mv) = mean[&key(i)];
        assert!((imb[i] - m).abs() < 1e-3 * m, "{:?}: {} vs {m}", key(i), imb[i]);
        same += usize::from((imb[i] - m).abs() < 1e-12 * m && moved[i] == mv);
        n += 1;
    }
    println!("reactive:w=100 equal to mean:w=100 in {same} of {n} cells");
    assert!(n >= 3 * 6 * 4 && same * 5 >= n * 4, "equal in only {same} of {n}");
}

#[test]
fn shapes_that_do_not_fit_are_refused_before_anything_is_written() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    let o = out.to_str().unwrap();
    let cases: [(&[&str], &[&str]); 6] = [
        (&["--placement-gpus", "3"], &["gpt12-e16-top2-s1", "has 16 experts", "--placement-gpus 3 does not divide"]),
        (&["--placement-gpus", "4", "--placement-replicas", "2"], &["gpt12-e16-top2-s1", "= 18"]),
        (&["--placement-gpus", "32"], &["more devices than the 16 replicas"]),
        (&["--placement-gpus", "0"], &["--placement-gpus 0"]),
        (&["--placement-replicas", "4"], &["--placement-replicas needs --placement-gpus"]),
        (&["--placement-gpus", "-4"], &["invalid value '-4' for '--placement-gpus"]),
    ];
    for (extra, want) in cases {
        let out_o = expertcast(&[&["run", "--out", o, "--quiet"][..], extra].concat());
        let err = stderr(&out_o);
        assert_eq!(out_o.status.code(), Some(2), "{extra:?}: {err}");
        for w in want {
            assert!(err.contains(w), "{extra:?}: message should contain {w:?}: {err}");
        }
        assert!(!out.exists(), "{extra:?}: nothing may be written");
    }
}

#[test]
fn a_sweep_writes_a_placement_table() {
    let d = tempfile::tempdir().unwrap();
    let trace = bundled("gpt12-e16-top2-s2");
    let cfg = d.path().join("sweep.toml");
    let toml = format!(
        "traces = [{:?}]\nout = \"out\"\nhorizons = [1, 100]\norigin_stride = [500]\nforecasters = [\"last\"]\nplacement_gpus = [4]\nplacement_replicas = [0, 4]\n",
        trace.to_str().unwrap()
    );
    std::fs::write(&cfg, toml).unwrap();
    // --threads sizes the global pool after planning: planning must not have started it.
    let o = expertcast(&["sweep", cfg.to_str().unwrap(), "--quiet", "--device", "cpu", "--threads", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let dir = d.path().join("out/placement/trace=gpt12-e16-top2-s2");
    let part = std::fs::read_dir(&dir).unwrap().next().unwrap().unwrap().path();
    let b = read_all(&part);
    // static, reactive:w=100, last, oracle × R 0 and 4 × 2 regimes × 6 layers
    assert_eq!(b.num_rows(), 4 * 2 * 2 * 6);
    let names = column_names(&b);
    assert!(names.contains(&"unit".to_string()) && names.contains(&"origin_stride".to_string()) && !names.contains(&"trace".to_string()));
    // Placement settings without placement_gpus are refused, naming the file.
    std::fs::write(&cfg, format!("traces = [{:?}]\nplacement_replicas = [4]\n", trace.to_str().unwrap())).unwrap();
    let o = expertcast(&["sweep", cfg.to_str().unwrap(), "--quiet"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("sweep.toml") && stderr(&o).contains("need placement_gpus"), "{}", stderr(&o));
}

#[test]
fn the_summary_shows_placement_per_shape() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    let o = expertcast(&["run", "-f", "last", "-f", "oracle-median", "--placement-gpus", "4", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("Expert placement (mean imbalance, regime stable"), "{stdout}");
    // One row for G = 4, R = 0, whose best real forecaster is `last` (oracle-median reads the future).
    let row = stdout.lines().find(|l| l.split_whitespace().take(2).collect::<Vec<_>>() == ["4", "0"]).expect("a row for G = 4, R = 0");
    assert_eq!(row.split_whitespace().nth(3), Some("last"), "{row}");
}

/// A forecaster scored on the CPU keeps its predictions for placement when the scored
/// horizons cover the interval; otherwise placement predicts again. Both must give
/// the same file.
#[test]
fn placement_from_kept_predictions_equals_predicting_again() {
    let d = tempfile::tempdir().unwrap();
    let trace = bundled("gpt12-e16-top2-s2");
    let run = |name: &str, horizon: &str| {
        let out = d.path().join(name);
        let args = ["run", trace.to_str().unwrap(), "--device", "cpu", "-f", "sw-avg:w=100", "-f", "last", "--origin-stride", "300"];
        let more = ["--horizon", "1", "--horizon", horizon, "--placement-gpus", "4", "--placement-replicas", "4", "--out", out.to_str().unwrap()];
        let o = expertcast(&[&args[..], &more[..]].concat());
        assert!(o.status.success(), "{}", stderr(&o));
        (read_all(&out.join("placement.parquet")), stderr(&o))
    };
    let ((kept, said_kept), (again, said_again)) = (run("kept", "100"), run("again", "10"));
    assert!(said_kept.contains("placement: 12 of 12 (layer, forecaster) predictions kept"), "{said_kept}");
    assert!(said_again.contains("placement: 0 of 12 (layer, forecaster) predictions kept"), "{said_again}");
    assert_eq!(kept.num_rows(), 5 * 6 * 2); // static, reactive, sw-avg, last, oracle
    assert_eq!(kept, again);
}

/// Several re-placement intervals in one run: each is scored on its own, and an
/// interval's rows are those of a run with that interval alone (the first interval
/// reuses the forecast stage's predictions, the others predict again). The sweep key
/// takes a list, and the report draws imbalance against the interval.
#[test]
fn several_placement_horizons_score_each_as_alone() {
    let d = tempfile::tempdir().unwrap();
    let trace = bundled("gpt12-e16-top2-s2");
    let run = |name: &str, hs: &[&str]| -> PathBuf {
        let out = d.path().join(name);
        let mut args = vec!["run", trace.to_str().unwrap(), "--quiet", "-f", "last", "-f", "sw-avg:w=100", "--horizon", "1", "--horizon", "200"];
        args.extend(["--placement-gpus", "4", "--out", out.to_str().unwrap()]);
        for h in hs {
            args.extend(["--placement-horizon", h]);
        }
        let o = expertcast(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        out
    };
    let both = read_all(&run("both", &["200", "50", "200"]).join("placement.parquet"));
    let rows = |b: &arrow::array::RecordBatch, h: i64| -> Vec<String> {
        let (p, l, r, hz) = (col_str(b, "policy"), col_i64(b, "layer"), col_str(b, "regime"), col_i64(b, "horizon"));
        let (m, q, mv) = (col_f64(b, "imbalance_mean"), col_f64(b, "imbalance_p99"), col_f64(b, "moved_replicas_mean"));
        let mut v: Vec<String> = (0..b.num_rows()).filter(|&i| hz[i] == h).map(|i| format!("{} {} {} {:?} {:?} {:?}", l[i], p[i], r[i], m[i], q[i], mv[i])).collect();
        v.sort();
        v
    };
    // 5 policies (static, reactive, last, sw-avg, oracle) × 6 layers × 2 regimes per interval.
    assert_eq!(both.num_rows(), 2 * 5 * 6 * 2);
    for h in [50, 200] {
        let alone = read_all(&run(&format!("h{h}"), &[&h.to_string()]).join("placement.parquet"));
        assert_eq!(rows(&both, h), rows(&alone, h), "interval {h}");
        assert_eq!(rows(&both, h).len(), 60);
    }
    // The report draws the policies against the interval.
    let dir = d.path().join("both");
    let o = expertcast(&["report", dir.to_str().unwrap(), "--svg", d.path().join("svg").to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let svg = std::fs::read_to_string(d.path().join("svg/placement.svg")).unwrap();
    assert!(svg.contains("placement horizon (steps)"), "the x axis should be the interval");
    // The sweep key takes a list.
    let cfg = d.path().join("sweep.toml");
    std::fs::write(&cfg, format!("traces = [{:?}]\nout = \"sw\"\nforecasters = [\"last\"]\nhorizons = [1]\norigin_stride = [500]\nplacement_gpus = [4]\nplacement_horizon = [50, 200]\n", trace)).unwrap();
    let o = expertcast(&["sweep", cfg.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let part = std::fs::read_dir(d.path().join("sw/placement/trace=gpt12-e16-top2-s2")).unwrap().next().unwrap().unwrap().path();
    let hz: std::collections::BTreeSet<i64> = col_i64(&read_all(&part), "horizon").into_iter().collect();
    assert_eq!(hz.into_iter().collect::<Vec<_>>(), vec![50, 200]);
}
