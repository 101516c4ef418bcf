//! What a new user meets first: the README's snippets run against real outputs, an
//! installed binary away from its source tree, the common flags and their messages.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn every_readme_snippet_runs_against_real_outputs() {
    let work = tempfile::tempdir().unwrap();
    copy_dir(&root().join("datasets"), &work.path().join("datasets"));
    let py = std::env::var("EXPERTCAST_PYTHON").unwrap_or_else(|_| "python3".into());
    let o = Command::new(&py)
        .arg(root().join("tests/readme.py"))
        .arg(root().join("README.md"))
        .arg(bin())
        .arg(work.path())
        .output()
        .unwrap_or_else(|e| panic!("cannot start {py} ({e}); run the tests with `make test`"));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "README snippets failed (run the tests with `make test`, which installs duckdb and polars):\n{out}\n{}",
        stderr(&o)
    );
    assert!(out.contains("readme: ") && out.contains("sql: ") && out.contains("python: ") && out.contains("sh: "), "{out}");
}

/// Runs a copy of the binary with `dir` as its working directory.
fn run_in(binary: &Path, dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(binary).args(args).current_dir(dir).output().expect("the copied binary runs")
}

#[test]
fn an_installed_binary_runs_its_defaults_from_any_directory() {
    let home = tempfile::tempdir().unwrap();
    let installed: PathBuf = home.path().join("bin/expertcast");
    std::fs::create_dir_all(installed.parent().unwrap()).unwrap();
    std::fs::copy(bin(), &installed).unwrap();
    let work = home.path().join("work");
    std::fs::create_dir_all(&work).unwrap();

    // No path of the source tree inside the binary.
    let bytes = std::fs::read(&installed).unwrap();
    let tree = root().canonicalize().unwrap().to_string_lossy().into_owned();
    assert!(!bytes.windows(tree.len()).any(|w| w == tree.as_bytes()), "the binary holds the path {tree}");

    let o = run_in(&installed, &work, &["run", "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(work.join("expertcast-out/manifest.json")).unwrap()).unwrap();
    let paths: Vec<&str> = m["inputs"].as_array().unwrap().iter().map(|i| i["path"].as_str().unwrap()).collect();
    assert_eq!(
        paths,
        ["<bundled>/gpt12-e16-top2-s1.parquet", "<bundled>/gpt12-e16-top2-s2.parquet", "<bundled>/gpt12-e64-top2-s1.parquet"]
    );
    // The bundled bytes are the files in datasets/.
    for i in m["inputs"].as_array().unwrap() {
        let file = i["path"].as_str().unwrap().trim_start_matches("<bundled>/");
        assert_eq!(i["bytes"].as_u64().unwrap(), std::fs::metadata(root().join("datasets").join(file)).unwrap().len());
    }
    // The same results as the binary in its tree.
    let direct = tempfile::tempdir().unwrap();
    let o = expertcast(&["run", "--quiet", "--out", direct.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    for f in ["metrics.parquet", "states.parquet", "layer_stats.parquet"] {
        assert_eq!(read_all(&work.join("expertcast-out").join(f)), read_all(&direct.path().join(f)), "{f}");
    }

    let o = run_in(&installed, &work, &["bench", "--help"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(help.contains("--stage lstm") && help.contains("--stage arima"), "{help}");
}

#[test]
fn bench_says_there_is_no_gpu_before_building_its_data() {
    let t = std::time::Instant::now();
    let o = expertcast(&["bench", "--device", "cpu"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("no GPU is in use") && stderr(&o).contains("--cpu"), "{}", stderr(&o));
    assert!(!String::from_utf8_lossy(&o.stdout).contains("bench data"));
    // Building the 614 MB of data would take seconds; the refusal takes none.
    assert!(t.elapsed().as_secs_f64() < 5.0, "{:?}", t.elapsed());
}

/// `bench --stage run` runs the whole default pipeline from both input formats: on a
/// small shape on the CPU, every run scores 2 layers × 5 forecasters × 5 horizons ×
/// 2 regimes.
#[test]
fn bench_stage_run_times_the_whole_default_run_from_both_formats() {
    let o = expertcast(&["bench", "--stage", "run", "--steps", "2500", "--layers", "2", "--experts", "8", "--runs", "2", "--device", "cpu"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for ext in ["npy", "parquet"] {
        assert!(out.contains(&format!("{ext}: best ")), "{out}");
    }
    assert_eq!(out.matches("; 100 metric rows)").count(), 4, "{out}");
}

/// A small trace (400 steps, 1 layer, 3 experts, smooth and positive) in a scratch
/// folder, run with `args`: the folder (kept alive), the output directory and the
/// process's output.
fn run_small(args: &[&str]) -> (tempfile::TempDir, PathBuf, std::process::Output) {
    let d = tempfile::tempdir().unwrap();
    let trace = d.path().join("small.parquet");
    write_parquet(&trace, &grid(400, 1, 3, |t, _, e| 100.0 + 10.0 * ((t as f64) * 0.05 + e as f64).sin() + e as f64));
    let out = d.path().join("out");
    let mut all = vec!["run", trace.to_str().unwrap(), "--out", out.to_str().unwrap()];
    all.extend(args);
    let o = expertcast(&all);
    (d, out, o)
}

#[test]
fn add_forecaster_extends_the_defaults_and_the_summary_keeps_its_floor() {
    let (_d, out, o) = run_small(&["-a", "arima:n=200", "--horizon", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut got = col_str(&read_all(&out.join("metrics.parquet")), "forecaster");
    got.dedup();
    let arima = "arima:p=5,d=1,q=5,n=200,method=css-ml,mean=auto,opt=lm,warm=false";
    assert_eq!(got, ["last", "mean:w=100", "sw-avg:w=100", "ema:alpha=0.3", "oracle-median", arima]);
    // ARIMA(5,1,5) needs 111 steps: the first origin moves there for every forecaster.
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["config"]["origin_start"], 111);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("oracle-median") && stdout.contains("runner-up"), "{stdout}");
    // The long spec is shortened in the table and spelled out below it.
    assert!(stdout.contains(&format!("  arima:n=200 = {arima}")), "{stdout}");
    assert!(stdout.lines().all(|l| l.len() < 120 || l.contains(" = ")), "{stdout}");

    // -a of a default is a duplicate, and says why.
    let (_d, _, o) = run_small(&["-a", "mean"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("mean:w=100 is given twice") && stderr(&o).contains("-a adds"), "{}", stderr(&o));
}

#[test]
fn an_origin_before_a_forecasters_history_is_refused() {
    let (_d, out, o) = run_small(&["-f", "mean:w=100", "--origin-start", "50"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--origin-start 50: mean:w=100: needs 100 steps of history"), "{}", stderr(&o));
    assert!(!out.exists());
    let (_d, _, o) = run_small(&["-f", "arima:n=100"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("n=100 is below the 111 observations"), "{}", stderr(&o));
}

#[test]
fn saved_forecasts_are_announced_with_their_row_count() {
    let (_d, out, o) = run_small(&["--save-forecasts", "--horizon", "5", "--horizon", "50"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows = read_all(&out.join("forecasts.parquet")).num_rows();
    // origins 100, 200, 300 with 50 steps ahead each, 3 experts, 5 forecasters
    assert_eq!(rows, 3 * 50 * 3 * 5);
    assert_eq!(rows, 2250);
    assert!(stderr(&o).contains("forecasts.parquet gets 2,250 rows (about 4 kB"), "{}", stderr(&o));
}

/// A window longer than the trace is allowed: it has no rows in the statistics
/// tables, and the other windows' rows start where they should.
#[test]
fn a_window_longer_than_the_trace_has_no_rows() {
    let (_d, out, o) = run_small(&["-w", "10", "-w", "100", "-w", "600", "--stats-detail", "expert", "-f", "last"]);
    assert!(o.status.success(), "{}", stderr(&o));
    for (table, per_window) in [("layer_stats.parquet", 1), ("window_stats.parquet", 3)] {
        let b = read_all(&out.join(table));
        let (windows, steps) = (col_i64(&b, "window_size"), col_i64(&b, "step"));
        for (w, rows) in [(10, 391), (100, 301), (600, 0)] {
            let mine: Vec<i64> = windows.iter().zip(&steps).filter(|&(&x, _)| x == w).map(|(_, &s)| s).collect();
            assert_eq!(mine.len(), rows * per_window, "{table} window {w}");
            // 400 steps labelled 0..399: a window's first row is its step w - 1.
            assert!(mine.iter().all(|&s| s >= w - 1 && s < 400), "{table} window {w}");
            assert_eq!(mine.iter().min().copied(), (rows > 0).then_some(w - 1), "{table} window {w}");
        }
    }
}
