//! Concurrency, crashes and hostile file systems: concurrent runs into one `--out`,
//! a re-run killed with SIGKILL at random points, links planted where outputs go,
//! an input where an output goes, concurrent and duplicate sweep shards, an edited
//! sweep config, and traces that share a file name. Each asserts that no file
//! outside `--out` changes and that a reader never sees a mixed or corrupt set.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const S1: &str = "gpt12-e16-top2-s1";
const S2: &str = "gpt12-e16-top2-s2";

/// The arguments of a quick run of `trace` into `out`.
fn run_args(trace: &Path, out: &Path) -> Vec<String> {
    ["run", trace.to_str().unwrap(), "--out", out.to_str().unwrap(), "--quiet", "--window", "10", "--horizon", "10", "-f", "last"]
        .map(String::from)
        .to_vec()
}

/// Checks `dir` as a reader would: if it has a manifest, every table the manifest's
/// run writes is there, readable, and holds the manifest's traces only. Returns the
/// traces, or `None` for a directory without a manifest (an incomplete run).
fn complete_run(dir: &Path) -> Option<BTreeSet<String>> {
    let text = std::fs::read_to_string(dir.join("manifest.json")).ok()?;
    let m: serde_json::Value = serde_json::from_str(&text).expect("the manifest is whole JSON");
    let traces: BTreeSet<String> =
        m["inputs"].as_array().unwrap().iter().flat_map(|i| i["traces"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap().to_string())).collect();
    for table in ["layer_stats", "states", "metrics"] {
        let b = read_all(&dir.join(format!("{table}.parquet")));
        let got: BTreeSet<String> = col_str(&b, "trace").into_iter().collect();
        assert_eq!(got, traces, "{table}.parquet holds other traces than the manifest in {}", dir.display());
    }
    Some(traces)
}

#[test]
fn concurrent_runs_into_one_directory_never_mix() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    for round in 0..4 {
        let spawn = |trace: &str| Command::new(bin()).args(run_args(&bundled(trace), &out)).stderr(Stdio::piped()).spawn().unwrap();
        let (a, b) = (spawn(S1), spawn(S2));
        let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
        for o in [&a, &b] {
            let code = o.status.code();
            // Either it ran, or it found the directory locked by the other: exit 2.
            assert!(code == Some(0) || (code == Some(2) && stderr(o).contains("another expertcast process")), "round {round}: {code:?} {}", stderr(o));
        }
        assert!(a.status.success() || b.status.success(), "round {round}: one of the two must run");
        let traces = complete_run(&out).expect("a finished run leaves a manifest");
        assert_eq!(traces.len(), 1, "round {round}: {traces:?}");
        let names: Vec<String> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "round {round}: temporary files left: {names:?}");
    }
}

#[test]
fn a_rerun_killed_at_any_point_never_leaves_a_mixed_directory() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    let o = expertcast(&run_args(&bundled(S1), &out).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    // Re-run on the other trace (with per-expert detail, so a table more), killed
    // with SIGKILL at pseudo-random points (fixed seed).
    let mut s = 99u64;
    let mut seen_incomplete = false;
    for _ in 0..6 {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let ms = 20 + (s >> 33) % 900;
        let mut args = run_args(&bundled(S2), &out);
        args.extend(["--stats-detail", "expert"].map(String::from));
        let mut child = Command::new(bin()).args(&args).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(ms));
        let _ = child.kill();
        let _ = child.wait();
        match complete_run(&out) {
            Some(traces) => assert!(traces.len() == 1, "{traces:?}"),
            None => seen_incomplete = true,
        }
    }
    // And a run that ends leaves a complete directory of its own trace only, without
    // the temporary files a killed run left.
    std::fs::write(out.join(".metrics.parquet.left1.tmp"), "partial").unwrap();
    let o = expertcast(&run_args(&bundled(S2), &out).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(complete_run(&out).unwrap(), BTreeSet::from([S2.to_string()]));
    // The earlier run's window_stats.parquet (not written by this one) is gone.
    assert!(!out.join("window_stats.parquet").exists());
    let left: Vec<String> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n.ends_with(".tmp")).collect();
    assert!(left.is_empty(), "{left:?}");
    let _ = seen_incomplete;
}

#[test]
fn links_planted_in_the_output_directory_are_never_followed() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let victim = d.path().join("victim.txt");
    std::fs::write(&victim, "keep me").unwrap();
    // At the names of the old temporary files, of the outputs and of the lock.
    for name in [".states.parquet.tmp", ".manifest.json.tmp", "metrics.parquet", "manifest.json", ".expertcast.lock"] {
        std::os::unix::fs::symlink(&victim, out.join(name)).unwrap();
    }
    let o = expertcast(&run_args(&bundled(S1), &out).iter().map(String::as_str).collect::<Vec<_>>());
    // The lock file is a link: refused (exit 2), or run; either way the victim stays.
    assert!(matches!(o.status.code(), Some(0) | Some(2)), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
    std::fs::remove_file(out.join(".expertcast.lock")).unwrap();
    let o = expertcast(&run_args(&bundled(S1), &out).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
    // The links at output names were replaced by the outputs, not written through.
    assert!(!std::fs::symlink_metadata(out.join("metrics.parquet")).unwrap().file_type().is_symlink());
    complete_run(&out).unwrap();
    // Outputs get the permissions of any new file (0666 less the umask), not the
    // private 0600 of a temporary file.
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(d.path().join("fresh"), "").unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    for f in ["metrics.parquet", "manifest.json"] {
        assert_eq!(mode(&out.join(f)), mode(&d.path().join("fresh")), "{f}");
    }
}

#[test]
fn an_input_where_an_output_goes_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let input = out.join("metrics.parquet");
    std::fs::copy(bundled(S1), &input).unwrap();
    let before = std::fs::read(&input).unwrap();
    // Also through a relative path with `..` in it.
    let roundabout = out.join("..").join("out").join("metrics.parquet");
    for p in [&input, &roundabout] {
        let o = expertcast(&run_args(p, &out).iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("would be replaced"), "{}", stderr(&o));
    }
    assert_eq!(std::fs::read(&input).unwrap(), before);
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1, "nothing written");
}

/// A sweep of `traces` (paths) into `out` with the simple forecasters.
fn sweep_config(dir: &Path, traces: &[PathBuf], out: &Path, forecasters: &str) -> PathBuf {
    let cfg = dir.join("sweep.toml");
    let list: Vec<String> = traces.iter().map(|t| format!("{:?}", t.display().to_string())).collect();
    let text = format!(
        "traces = [{}]\nout = {:?}\nwindows = [10]\nhorizons = [10]\norigin_stride = [500, 1000]\nforecasters = [{forecasters}]\n",
        list.join(", "),
        out.display().to_string()
    );
    std::fs::write(&cfg, text).unwrap();
    cfg
}

/// Every Parquet part under a sweep's `out` (relative path → bytes), and no temporary files.
fn parts(out: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut m = std::collections::BTreeMap::new();
    let mut stack = vec![out.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(out).unwrap().display().to_string();
            assert!(!rel.ends_with(".tmp"), "temporary file left: {rel}");
            if p.is_dir() {
                stack.push(p);
            } else if rel.ends_with(".parquet") {
                m.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    m
}

#[test]
fn concurrent_and_duplicate_shards_give_the_sequential_result() {
    let d = tempfile::tempdir().unwrap();
    let traces = [bundled(S1), bundled(S2)];
    let seq = d.path().join("seq");
    let o = expertcast(&["sweep", sweep_config(d.path(), &traces, &seq, "\"last\", \"mean:w=10\"").to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let want = parts(&seq);

    let conc = d.path().join("conc");
    let cfg = sweep_config(d.path(), &traces, &conc, "\"last\", \"mean:w=10\"");
    // Shards 0/2 and 1/2 twice each, and two unsharded processes, all at once.
    let shards = [Some("0/2"), Some("1/2"), Some("0/2"), Some("1/2"), None, None];
    let children: Vec<_> = shards
        .iter()
        .map(|s| {
            let mut c = Command::new(bin());
            c.args(["sweep", cfg.to_str().unwrap(), "--quiet"]).stderr(Stdio::piped());
            if let Some(s) = s {
                c.args(["--shard", s]);
            }
            c.spawn().unwrap()
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert_eq!(parts(&conc), want);
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(conc.join("manifest.json")).unwrap()).unwrap();
    assert!(manifest["units"].as_array().unwrap().iter().all(|u| u["status"] == "done"), "{manifest}");
}

#[test]
fn an_edited_config_replaces_the_results_of_the_old_one() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    let traces = [bundled(S1)];
    let o = expertcast(&["sweep", sweep_config(d.path(), &traces, &out, "\"last\"").to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = expertcast(&["sweep", sweep_config(d.path(), &traces, &out, "\"mean:w=10\"").to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("removed the results of 2 unit(s)"), "{}", stderr(&o));
    let mut forecasters = BTreeSet::new();
    for (rel, _) in parts(&out).iter().filter(|(k, _)| k.starts_with("metrics/")) {
        forecasters.extend(col_str(&read_all(&out.join(rel)), "forecaster"));
    }
    assert_eq!(forecasters, BTreeSet::from(["mean:w=10".to_string()]));
    assert_eq!(std::fs::read_dir(out.join("units")).unwrap().count(), 2, "the two new units' markers only");
    // states/ has one kappa column (its own), so dataset readers accept it.
    let (rel, _) = parts(&out).into_iter().find(|(k, _)| k.starts_with("states/")).unwrap();
    let b = read_all(&out.join(rel));
    assert_eq!(b.schema().fields().iter().filter(|f| f.name() == "kappa").count(), 1);
}

#[test]
fn sweep_traces_are_told_apart_by_content_not_name() {
    let d = tempfile::tempdir().unwrap();
    // Two files of one name in two folders would be one trace name: refused.
    for seed in ["seed1", "seed2"] {
        std::fs::create_dir(d.path().join(seed)).unwrap();
    }
    let a = d.path().join("seed1").join("load.parquet");
    let b = d.path().join("seed2").join("load.parquet");
    std::fs::copy(bundled(S1), &a).unwrap();
    std::fs::copy(bundled(S2), &b).unwrap();
    let out = d.path().join("out");
    let o = expertcast(&["sweep", sweep_config(d.path(), &[a.clone(), b], &out, "\"last\"").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("trace names must be unique"), "{}", stderr(&o));
    assert!(!out.exists());
    // A file rewritten in place (same name) is a new unit.
    let cfg = sweep_config(d.path(), std::slice::from_ref(&a), &out, "\"last\"");
    let ids = || {
        let o = expertcast(&["sweep", cfg.to_str().unwrap(), "--dry-run"]);
        assert!(o.status.success(), "{}", stderr(&o));
        String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.starts_with("  ")).map(|l| l.split_whitespace().next().unwrap().to_string()).collect::<Vec<_>>()
    };
    let before = ids();
    std::fs::copy(bundled(S2), &a).unwrap();
    let after = ids();
    assert_eq!(before.len(), 2);
    assert!(before.iter().all(|id| !after.contains(id)), "{before:?} {after:?}");
}

#[test]
fn a_config_folder_with_brackets_is_taken_literally() {
    let d = tempfile::tempdir().unwrap();
    // exp[1]/t.parquet must not match exp1/t.parquet.
    let (lit, other) = (d.path().join("exp[1]"), d.path().join("exp1"));
    std::fs::create_dir(&lit).unwrap();
    std::fs::create_dir(&other).unwrap();
    std::fs::copy(bundled(S1), other.join("t.parquet")).unwrap();
    std::fs::write(lit.join("sweep.toml"), "traces = [\"t.parquet\"]\nout = \"out\"\n").unwrap();
    let o = expertcast(&["sweep", lit.join("sweep.toml").to_str().unwrap(), "--dry-run"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("matches no file"), "{}", stderr(&o));
    std::fs::copy(bundled(S1), lit.join("t.parquet")).unwrap();
    let o = expertcast(&["sweep", lit.join("sweep.toml").to_str().unwrap(), "--dry-run"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("exp[1]/t.parquet"), "{}", String::from_utf8_lossy(&o.stdout));
}

#[test]
fn a_closed_pipe_ends_the_dry_run_quietly() {
    // `expertcast sweep --dry-run | head -1`: the process is ended by SIGPIPE, no panic.
    let d = tempfile::tempdir().unwrap();
    let cfg = sweep_config(d.path(), &[bundled(S1), bundled(S2)], &d.path().join("out"), "\"last\"");
    let mut child = Command::new(bin()).args(["sweep", cfg.to_str().unwrap(), "--dry-run"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
}

#[test]
fn thread_counts_give_the_same_bytes() {
    // Every reduction runs in a fixed order: 1, 2 and 3 threads write the same files.
    let d = tempfile::tempdir().unwrap();
    let mut files: Vec<std::collections::BTreeMap<String, Vec<u8>>> = Vec::new();
    for threads in ["1", "2", "3"] {
        let out = d.path().join(format!("t{threads}"));
        let o = expertcast(&[
            "run", bundled("gpt12-e64-top2-s1").to_str().unwrap(), "--out", out.to_str().unwrap(), "--quiet", "--threads", threads,
            "--stats-detail", "expert", "--origin-stride", "500", "-a", "arima:p=1,d=1,q=1,n=200",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        files.push(parts(&out));
    }
    assert_eq!(files[0].len(), 4, "{:?}", files[0].keys());
    assert!(files[1] == files[0] && files[2] == files[0], "the files differ between thread counts");
}
