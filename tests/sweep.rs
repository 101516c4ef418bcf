//! `expertcast sweep`: results equal direct runs, shards add up to the whole sweep, a
//! sweep killed with SIGKILL at random points resumes to the uninterrupted result,
//! and pyarrow reads the hive-partitioned output as one table.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

/// A small sweep over the two gpt12-e16 traces: 2 files × 2 strides = 4 units.
fn config(dir: &Path, out: &Path) -> PathBuf {
    let cfg = dir.join("sweep.toml");
    let text = format!(
        "traces = [{:?}, {:?}]\nout = {:?}\nwindows = [10]\nhorizons = [1, 10]\norigin_stride = [500, 1000]\n\
         forecasters = [\"last\", \"mean:w=[10,100]\"]\n",
        bundled("gpt12-e16-top2-s1").display().to_string(),
        bundled("gpt12-e16-top2-s2").display().to_string(),
        out.display().to_string(),
    );
    std::fs::write(&cfg, text).unwrap();
    cfg
}

/// Every Parquet file under `dir` (relative path → contents).
fn tables(dir: &Path) -> BTreeMap<String, arrow::array::RecordBatch> {
    let mut out = BTreeMap::new();
    for table in ["metrics", "states", "layer_stats"] {
        for part in std::fs::read_dir(dir.join(table)).unwrap() {
            let part = part.unwrap().path();
            for f in std::fs::read_dir(&part).unwrap() {
                let f = f.unwrap().path();
                let rel = f.strip_prefix(dir).unwrap().display().to_string();
                assert!(!rel.contains(".tmp"), "temporary file left: {rel}");
                out.insert(rel, read_all(&f));
            }
        }
    }
    out
}

/// A config named by its bare file name, from its own folder, finds its traces there
/// (its parent is the empty path, which once made them relative to "/").
#[test]
fn a_config_named_from_its_own_folder_finds_its_traces() {
    let d = tempfile::tempdir().unwrap();
    std::fs::copy(bundled("gpt12-e16-top2-s2"), d.path().join("t.parquet")).unwrap();
    std::fs::write(d.path().join("s.toml"), "traces = [\"t.parquet\"]\nout = \"o\"\n").unwrap();
    let o = std::process::Command::new(bin()).args(["sweep", "s.toml", "--dry-run"]).current_dir(d.path()).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let plan = String::from_utf8_lossy(&o.stdout);
    assert!(plan.contains("1 unit(s) (1 trace file(s))"), "{plan}");
}

fn sweep(args: &[&str]) -> std::process::Output {
    expertcast(&[&["sweep"], args].concat())
}

#[test]
fn sweep_results_equal_direct_runs_and_shards_add_up() {
    let d = tempfile::tempdir().unwrap();
    let full = d.path().join("full");
    let cfg = config(d.path(), &full);
    let dry = sweep(&[cfg.to_str().unwrap(), "--dry-run"]);
    assert!(dry.status.success(), "{}", stderr(&dry));
    let plan = String::from_utf8_lossy(&dry.stdout).to_string();
    assert!(plan.contains("4 unit(s) (2 trace file(s))") && plan.contains("mean:w=10 mean:w=100"), "{plan}");
    assert!(!full.exists(), "a dry run writes nothing");

    let o = sweep(&[cfg.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let all = tables(&full);
    // 3 tables × 2 traces × 2 units (strides)
    assert_eq!(all.len(), 12, "{:?}", all.keys().collect::<Vec<_>>());
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(full.join("manifest.json")).unwrap()).unwrap();
    let units = manifest["units"].as_array().unwrap();
    assert_eq!(units.len(), 4);
    assert!(units.iter().all(|u| u["status"] == "done"));
    // Each unit's marker has its seconds per stage, none longer than the unit.
    for u in units {
        let path = full.join("units").join(format!("{}.json", u["id"].as_str().unwrap()));
        let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let total = m["seconds"].as_f64().unwrap();
        for stage in ["read", "stats", "states", "forecast"] {
            let t = m["stages"][stage].as_f64().unwrap_or_else(|| panic!("{}: no {stage} seconds: {m}", path.display()));
            assert!((0.0..=total).contains(&t), "{}: {stage} {t} s of {total} s", path.display());
        }
    }

    // One unit against `expertcast run` with the same settings.
    let unit = units.iter().find(|u| u["origin_stride"] == 1000 && u["trace_file"].as_str().unwrap().contains("s2")).unwrap();
    let id = unit["id"].as_str().unwrap();
    let direct = d.path().join("direct");
    let r = expertcast(&[
        "run", bundled("gpt12-e16-top2-s2").to_str().unwrap(), "--out", direct.to_str().unwrap(), "--quiet", "--window", "10",
        "--horizon", "1", "--horizon", "10", "--origin-stride", "1000", "-f", "last", "-f", "mean:w=10", "-f", "mean:w=100",
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    let want = read_all(&direct.join("metrics.parquet"));
    let got = &all[&format!("metrics/trace=gpt12-e16-top2-s2/part-{id}.parquet")];
    assert_eq!(got.num_rows(), want.num_rows());
    for col in ["layer", "horizon", "origins", "fallbacks"] {
        assert_eq!(col_i64(got, col), col_i64(&want, col), "{col}");
    }
    assert_eq!(col_str(got, "forecaster"), col_str(&want, "forecaster"));
    for col in ["mae_pp", "rmse_pp", "tv_pct"] {
        let (a, b) = (col_f64(got, col), col_f64(&want, col));
        assert!(a.iter().zip(&b).all(|(x, y)| x == y || (x.is_nan() && y.is_nan())), "{col}");
    }
    assert!(col_i64(got, "origin_stride").iter().all(|&s| s == 1000));
    assert!(col_str(got, "unit").iter().all(|u| u == id));

    // Shards: 0/2 by flag, 1/2 through Slurm's variables, into one directory.
    let sharded = d.path().join("sharded");
    let cfg2 = config(d.path(), &sharded);
    let a = sweep(&[cfg2.to_str().unwrap(), "--quiet", "--shard", "0/2", "--jobs", "2"]);
    assert!(a.status.success(), "{}", stderr(&a));
    let b = std::process::Command::new(bin())
        .args(["sweep", cfg2.to_str().unwrap(), "--quiet"])
        .env("SLURM_ARRAY_TASK_ID", "2")
        .env("SLURM_ARRAY_TASK_MIN", "1")
        .env("SLURM_ARRAY_TASK_COUNT", "2")
        .output()
        .unwrap();
    assert!(b.status.success(), "{}", stderr(&b));
    assert_eq!(tables(&sharded), all, "the union of the shards is the whole sweep");

    // A rerun of a finished sweep runs nothing.
    let again = sweep(&[cfg.to_str().unwrap()]);
    assert!(stderr(&again).contains("0 unit(s) run, 4 already done"), "{}", stderr(&again));

    // pyarrow reads each table as one hive-partitioned dataset.
    let py = std::env::var("EXPERTCAST_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = "import sys, pyarrow.dataset as ds\n\
                  t = ds.dataset(sys.argv[1] + '/metrics', format='parquet', partitioning='hive').to_table()\n\
                  print(t.num_rows, sorted(set(t.column('trace').to_pylist())))\n";
    let p = std::process::Command::new(&py).args(["-c", script, full.to_str().unwrap()]).output().unwrap();
    assert!(p.status.success(), "{}", stderr(&p));
    let rows: usize = all.iter().filter(|(k, _)| k.starts_with("metrics/")).map(|(_, b)| b.num_rows()).sum();
    assert_eq!(String::from_utf8_lossy(&p.stdout).trim(), format!("{rows} ['gpt12-e16-top2-s1', 'gpt12-e16-top2-s2']"));
}

#[test]
fn a_killed_sweep_resumes_to_the_uninterrupted_result() {
    let d = tempfile::tempdir().unwrap();
    let clean = d.path().join("clean");
    let o = sweep(&[config(d.path(), &clean).to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let want = tables(&clean);

    let killed = d.path().join("killed");
    let cfg = config(d.path(), &killed);
    // SIGKILL at pseudo-random points (fixed seed), then finish.
    let mut s = 12345u64;
    for _ in 0..4 {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let ms = 50 + (s >> 33) % 700;
        let mut child = std::process::Command::new(bin()).args(["sweep", cfg.to_str().unwrap(), "--quiet"]).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(ms));
        let _ = child.kill(); // SIGKILL on Unix
        let _ = child.wait();
    }
    let o = sweep(&[cfg.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(tables(&killed), want);
}

#[test]
fn bad_configs_name_the_file_and_exit_2() {
    let d = tempfile::tempdir().unwrap();
    for (text, want) in [
        ("traces = [\"*.nothing\"]\n", "matches no file"),
        ("traces = []\nwindow = [3]\n", "unknown field `window`"),
        ("traces = [\"x\"]\nforecasters = [\"mean:w=[1,0]\"]\n", "forecasters[0]"),
    ] {
        let cfg = d.path().join("bad.toml");
        std::fs::write(&cfg, text).unwrap();
        std::fs::write(d.path().join("x"), "").unwrap();
        let o = sweep(&[cfg.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{text}: {}", stderr(&o));
        assert!(stderr(&o).contains("bad.toml") && stderr(&o).contains(want), "{text}: {}", stderr(&o));
    }
}
