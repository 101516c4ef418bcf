//! Sweeps: traces × a grid of settings, each combination a unit run through the
//! pipeline, results collected as a hive-partitioned Parquet dataset.
//!
//! A unit is one trace file with one origin stride, state window and kappa (windows,
//! horizons and forecasters are all computed inside a unit). Its id hashes everything
//! that determines its results, so a changed config never reuses stale results. A
//! unit is a [`RunPlan`] built from the grid and run by the pipeline into a
//! [`HiveSink`], which splits its tables by trace into
//! `OUT/TABLE/trace=NAME/part-ID.parquet` (temporary name, then rename); only then
//! is `OUT/units/ID.json` written: a unit with that marker saying "done" is finished
//! and skipped by a rerun, so a killed sweep resumes where it stopped. A failing unit
//! gets a marker with its error and does not stop the others (a rerun retries it).
//! [`shard`] (`--shard I/N`, Slurm's array variables, or Kubernetes' completion
//! index) picks every N-th unit of the sorted plan.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::UsageError;
use crate::gpu::DeviceRequest;
use crate::output::hive::{HiveSink, UnitColumns};
use crate::output::write_atomic;
use crate::pipeline::{self, RunPlan, Work, plan as defaults};
use crate::trace::Input;

/// The config file. Paths are relative to the config file's directory. Every key but
/// `traces` defaults to `run`'s default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SweepConfig {
    /// Trace files and globs.
    pub traces: Vec<String>,
    /// Output directory.
    pub out: PathBuf,
    pub windows: Vec<usize>,
    pub horizons: Vec<usize>,
    /// One unit per value.
    pub origin_stride: Vec<usize>,
    /// One unit per value.
    pub state_window: Vec<usize>,
    /// One unit per value.
    pub kappa: Vec<f64>,
    /// Forecaster specs; `key=[a,b,c]` expands to one forecaster per value.
    pub forecasters: Vec<String>,
    /// Device counts placement is scored on (none: no placement).
    pub placement_gpus: Vec<usize>,
    /// Redundant replica counts placement is scored with.
    pub placement_replicas: Vec<usize>,
    /// Steps a placement plan is held: a number or a list (each scored on its own).
    pub placement_horizon: OneOrMany,
    /// The window of the `reactive` placement policy.
    pub placement_reactive_window: usize,
    /// Write `OUT/report.html` (`expertcast report OUT`) once every unit is done.
    pub report: bool,
}

impl Default for SweepConfig {
    fn default() -> Self {
        let Work { windows, horizons, forecasters, .. } = Work::default();
        SweepConfig {
            traces: Vec::new(),
            out: PathBuf::from("sweep-out"),
            windows,
            horizons,
            origin_stride: vec![defaults::ORIGIN_STRIDE],
            state_window: vec![defaults::STATE_WINDOW],
            kappa: vec![defaults::KAPPA],
            forecasters,
            placement_gpus: Vec::new(),
            placement_replicas: vec![0],
            placement_horizon: OneOrMany::One(crate::placement::HORIZON),
            placement_reactive_window: crate::placement::REACTIVE_WINDOW,
            report: false,
        }
    }
}

/// A key that takes a number or a list of numbers.
#[derive(Debug, Clone, PartialEq)]
pub enum OneOrMany {
    One(usize),
    Many(Vec<usize>),
}

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number of steps (100) or a list of them ([50, 100])")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<OneOrMany, E> {
                usize::try_from(v).map(OneOrMany::One).map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<OneOrMany, E> {
                usize::try_from(v).map(OneOrMany::One).map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(v), &self))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut v = Vec::new();
                while let Some(x) = seq.next_element::<usize>()? {
                    v.push(x);
                }
                Ok(OneOrMany::Many(v))
            }
        }
        d.deserialize_any(V)
    }
}

impl OneOrMany {
    pub fn to_vec(&self) -> Vec<usize> {
        match self {
            OneOrMany::One(v) => vec![*v],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// One unit of work.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Unit {
    pub id: String,
    pub trace_file: PathBuf,
    pub origin_stride: usize,
    pub state_window: usize,
    pub kappa: f64,
}

/// The resolved plan: every unit of the sweep, sorted, and the shared settings.
#[derive(Debug, Clone)]
pub struct Plan {
    pub units: Vec<Unit>,
    pub out: PathBuf,
    /// Every unit's windows, horizons and canonical forecaster specs.
    pub work: Work,
    /// The SHA-256 of every trace file, with what it was computed for.
    pub hashes: BTreeMap<PathBuf, Hashed>,
    /// The config's `report` key.
    pub report: bool,
}

/// A trace file's SHA-256 and the size, modification time and inode it was computed
/// for: `OUT/.trace-hashes.json` keeps them, so a sweep re-planned by every shard and
/// every resume reads each unchanged file once, not every time.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Hashed {
    pub bytes: u64,
    pub mtime_ns: i128,
    pub inode: u64,
    pub sha256: String,
}

const HASH_CACHE: &str = ".trace-hashes.json";

/// `OUT/.trace-hashes.json`, or nothing when it is missing or unreadable (every
/// hash is then computed again).
fn read_hash_cache(out: &Path) -> BTreeMap<PathBuf, Hashed> {
    std::fs::read_to_string(out.join(HASH_CACHE)).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default()
}

/// The content hash of each of `files`, from `out`'s cache where the file's size,
/// modification time and inode are those it was hashed at, else computed now.
fn content_hashes(files: &[PathBuf], out: &Path) -> crate::trace::Result<BTreeMap<PathBuf, Hashed>> {
    use rayon::prelude::*;
    use std::os::unix::fs::MetadataExt;
    let cache = read_hash_cache(out);
    let hash = |f: &PathBuf| -> crate::trace::Result<Hashed> {
        let io = |source| crate::trace::TraceError::Io { file: f.clone(), error: source };
        let m = std::fs::metadata(f).map_err(io)?;
        let (bytes, mtime_ns, inode) = (m.len(), m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128, m.ino());
        let key = f.canonicalize().map_err(io)?;
        Ok(match cache.get(&key) {
            Some(h) if (h.bytes, h.mtime_ns, h.inode) == (bytes, mtime_ns, inode) => h.clone(),
            _ => Hashed { bytes, mtime_ns, inode, sha256: Input::File(f.clone()).size_and_sha256()?.1 },
        })
    };
    // Files hashed in parallel on a pool of their own (the global pool is sized later,
    // by `--threads`), one after another if that pool cannot be had; the first
    // problem in file order is the one reported.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(files.len()).max(1);
    let hashed: Vec<crate::trace::Result<Hashed>> = match rayon::ThreadPoolBuilder::new().num_threads(threads).build() {
        Ok(pool) => pool.install(|| files.par_iter().map(hash).collect()),
        Err(_) => files.iter().map(hash).collect(),
    };
    files.iter().cloned().zip(hashed).map(|(f, h)| Ok((f, h?))).collect()
}

/// Saves the plan's hashes in `OUT/.trace-hashes.json` (merged with what is there,
/// keyed by canonical path).
fn save_hashes(plan: &Plan) -> anyhow::Result<()> {
    let lock = crate::output::lock_dir_wait(&plan.out)?;
    crate::output::remove_temps(&plan.out, HASH_CACHE)?;
    let mut cache = read_hash_cache(&plan.out);
    for (f, h) in &plan.hashes {
        if let Ok(key) = f.canonicalize() {
            cache.insert(key, h.clone());
        }
    }
    write_atomic(&plan.out, HASH_CACHE, serde_json::to_string(&cache)?.as_bytes())?;
    drop(lock);
    Ok(())
}

/// Removes what a killed run of `unit` left half-written (its parts' and marker's
/// temporary files); called while holding the unit's claim.
fn remove_unit_temps(plan: &Plan, unit: &Unit) -> anyhow::Result<()> {
    for table in crate::output::hive::TABLES {
        for dir in std::fs::read_dir(plan.out.join(table.name())).into_iter().flatten().flatten() {
            crate::output::remove_temps(&dir.path(), &format!("part-{}.parquet", unit.id))?;
        }
    }
    crate::output::remove_temps(&plan.out.join("units"), &format!("{}.json", unit.id))
}

/// Splits `s` on commas outside square brackets.
fn split_top(s: &str) -> Vec<&str> {
    let (mut depth, mut start, mut parts) = (0i32, 0, Vec::new());
    for (i, c) in s.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// Expands `NAME:k=[a,b],j=c` into `NAME:k=a,j=c` and `NAME:k=b,j=c`.
pub fn expand_spec(spec: &str) -> Result<Vec<String>, String> {
    let Some((name, rest)) = spec.split_once(':') else { return Ok(vec![spec.trim().to_string()]) };
    let mut combos: Vec<Vec<String>> = vec![Vec::new()];
    for kv in split_top(rest) {
        let (k, v) = kv.split_once('=').ok_or_else(|| format!("{kv:?} is not key=value"))?;
        let v = v.trim();
        let values: Vec<String> = if let Some(inner) = v.strip_prefix('[') {
            let inner = inner.strip_suffix(']').ok_or_else(|| format!("{v:?}: a list needs its closing ]"))?;
            let vals: Vec<String> = inner.split(',').map(|x| x.trim().to_string()).filter(|x| !x.is_empty()).collect();
            if vals.is_empty() {
                return Err(format!("{v:?}: an empty list"));
            }
            vals
        } else {
            vec![v.to_string()]
        };
        combos = combos.into_iter().flat_map(|c| values.iter().map(move |x| [c.clone(), vec![format!("{}={x}", k.trim())]].concat())).collect();
    }
    Ok(combos.into_iter().map(|c| format!("{}:{}", name.trim(), c.join(","))).collect())
}

fn usage(path: &Path, msg: impl std::fmt::Display) -> anyhow::Error {
    UsageError(format!("{}: {msg}", path.display())).into()
}

/// Reads and checks a config, resolving globs and expanding lists.
pub fn plan(config: &Path) -> anyhow::Result<Plan> {
    let text = std::fs::read_to_string(config).map_err(|e| usage(config, format!("cannot read: {e}")))?;
    let cfg: SweepConfig = toml::from_str(&text).map_err(|e| usage(config, e.to_string().trim_end()))?;
    let base = crate::output::folder_of(config);
    let mut files = Vec::new();
    for pat in &cfg.traces {
        // The config's folder is taken literally (a `[` in it is no pattern).
        let full = if Path::new(pat).is_absolute() { pat.clone() } else { format!("{}/{pat}", glob::Pattern::escape(&base.to_string_lossy())) };
        let mut matched: Vec<PathBuf> = glob::glob(&full)
            .map_err(|e| usage(config, format!("traces: bad pattern {pat:?}: {e}")))?
            .filter_map(|p| p.ok())
            .collect();
        if matched.is_empty() {
            return Err(usage(config, format!("traces: {pat:?} matches no file (relative to {})", base.display())));
        }
        matched.sort();
        files.extend(matched);
    }
    files.sort();
    files.dedup();
    if files.is_empty() {
        return Err(usage(config, "traces: no trace file given"));
    }
    // A trace is named by its file's stem (unless a Parquet file has a trace column),
    // and the dataset is partitioned by that name: two files of one stem would merge.
    let mut by_stem: BTreeMap<String, &PathBuf> = BTreeMap::new();
    for f in &files {
        let stem = f.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
        let folder = format!("trace={}", crate::output::hive::hive_value(&stem));
        if folder.len() > 255 {
            return Err(usage(config, format!("traces: {}: the trace name makes a folder name of {} bytes (at most 255); shorten the file name", f.display(), folder.len())));
        }
        if let Some(other) = by_stem.insert(stem.clone(), f) {
            return Err(usage(
                config,
                format!("traces: {} and {} would both be trace {stem:?}; trace names must be unique across files (rename one)", other.display(), f.display()),
            ));
        }
    }
    // Units are identified by content: the same file name and size is not the same trace.
    let out = lexical_clean(&base.join(&cfg.out));
    let hashes = content_hashes(&files, &out).map_err(|e| usage(config, format!("traces: {e}")))?;
    let check = |ok: bool, what: &str| if ok { Ok(()) } else { Err(usage(config, what.to_string())) };
    check(!cfg.windows.is_empty() && !cfg.windows.contains(&0), "windows: at least one, each at least 1")?;
    check(!cfg.horizons.is_empty() && !cfg.horizons.contains(&0), "horizons: at least one, each at least 1")?;
    check(!cfg.origin_stride.is_empty() && !cfg.origin_stride.contains(&0), "origin_stride: at least one, each at least 1")?;
    check(!cfg.state_window.is_empty() && !cfg.state_window.contains(&0), "state_window: at least one, each at least 1")?;
    check(!cfg.kappa.is_empty() && cfg.kappa.iter().all(|k| k.is_finite() && *k >= 0.0), "kappa: at least one, each finite and >= 0")?;
    let mut forecasters = Vec::new();
    for (i, f) in cfg.forecasters.iter().enumerate() {
        for spec in expand_spec(f).map_err(|e| usage(config, format!("forecasters[{i}] {f:?}: {e}")))? {
            let parsed = crate::forecast::parse_spec(&spec).map_err(|e| usage(config, format!("forecasters[{i}]: {e}")))?;
            let spec = parsed.spec();
            if forecasters.contains(&spec) {
                return Err(usage(config, format!("forecasters[{i}]: {spec} is listed twice")));
            }
            forecasters.push(spec);
        }
    }
    check(!forecasters.is_empty(), "forecasters: at least one")?;
    let placement = (!cfg.placement_gpus.is_empty()).then(|| crate::placement::PlacementConfig {
        gpus: pipeline::plan::sorted_unique(&cfg.placement_gpus),
        replicas: pipeline::plan::sorted_unique(&cfg.placement_replicas),
        horizons: pipeline::plan::sorted_unique(&cfg.placement_horizon.to_vec()),
        reactive_window: cfg.placement_reactive_window,
    });
    if let Some(p) = &placement {
        // The flags' messages, with the config's key names.
        p.validate().map_err(|e| {
            let m = e.0.replace("--placement-gpus", "placement_gpus").replace("--placement-replicas", "placement_replicas");
            usage(config, m.replace("--placement-horizon", "placement_horizon").replace("--placement-reactive-window", "placement_reactive_window"))
        })?;
    } else if cfg.placement_replicas != [0]
        || cfg.placement_horizon.to_vec() != [crate::placement::HORIZON]
        || cfg.placement_reactive_window != crate::placement::REACTIVE_WINDOW
    {
        return Err(usage(config, "placement_replicas, placement_horizon and placement_reactive_window need placement_gpus"));
    }
    let mut units = Vec::new();
    for f in &files {
        let sha256 = &hashes[f].sha256;
        for &stride in &cfg.origin_stride {
            for &sw in &cfg.state_window {
                for &kappa in &cfg.kappa {
                    let mut h = Sha256::new();
                    let key = serde_json::json!({
                        "trace": f.file_name().map(|n| n.to_string_lossy().to_string()), "sha256": sha256,
                        "stride": stride, "state_window": sw, "kappa": kappa,
                        "windows": cfg.windows, "horizons": cfg.horizons, "forecasters": forecasters,
                    });
                    let mut key = key;
                    if let Some(p) = &placement {
                        // Only with placement, so that the ids of other sweeps stay as they were.
                        key["placement"] = serde_json::to_value(p)?;
                    }
                    h.update(key.to_string().as_bytes());
                    let id: String = h.finalize().iter().take(6).map(|b| format!("{b:02x}")).collect();
                    units.push(Unit { id, trace_file: f.clone(), origin_stride: stride, state_window: sw, kappa });
                }
            }
        }
    }
    Ok(Plan { units, out, hashes, work: Work { windows: cfg.windows, horizons: cfg.horizons, forecasters, placement }, report: cfg.report })
}

/// `datasets/../sweep-out` as `sweep-out`, the way the path is shown and recorded:
/// `..` cancels the folder name before it, unless that is a symbolic link (whose
/// `..` is its target's parent, not the folder the link sits in).
fn lexical_clean(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_)))
                    && !std::fs::symlink_metadata(&out).is_ok_and(|m| m.file_type().is_symlink()) =>
            {
                out.pop();
            }
            c => out.push(c),
        }
    }
    if out.as_os_str().is_empty() { PathBuf::from(".") } else { out }
}

/// `(index, count)` of this process's shard: from `--shard I/N`, else Slurm's array
/// variables, else Kubernetes' `JOB_COMPLETION_INDEX` with `EXPERTCAST_SHARD_COUNT`.
pub fn shard(flag: Option<&str>, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<(usize, usize)> {
    let parse = |v: &str, what: &str| v.trim().parse::<usize>().map_err(|_| UsageError(format!("{what}: {v:?} is not a whole number")));
    let (i, n) = if let Some(s) = flag {
        let (i, n) = s.split_once('/').ok_or_else(|| UsageError(format!("--shard {s}: expected I/N, e.g. 0/4")))?;
        (parse(i, "--shard")?, parse(n, "--shard")?)
    } else if let (Some(id), Some(count)) = (env("SLURM_ARRAY_TASK_ID"), env("SLURM_ARRAY_TASK_COUNT")) {
        let min = env("SLURM_ARRAY_TASK_MIN").map(|m| parse(&m, "SLURM_ARRAY_TASK_MIN")).transpose()?.unwrap_or(0);
        let step = env("SLURM_ARRAY_TASK_STEP").map(|m| parse(&m, "SLURM_ARRAY_TASK_STEP")).transpose()?.unwrap_or(1).max(1);
        let id = parse(&id, "SLURM_ARRAY_TASK_ID")?;
        let off = id.checked_sub(min).filter(|o| o % step == 0).ok_or_else(|| {
            UsageError(format!("SLURM_ARRAY_TASK_ID {id} is not MIN {min} plus a multiple of STEP {step}: use a range array (--array=0-N or 0-N:S), or --shard I/N"))
        })?;
        (off / step, parse(&count, "SLURM_ARRAY_TASK_COUNT")?)
    } else if let Some(idx) = env("JOB_COMPLETION_INDEX") {
        let count = env("EXPERTCAST_SHARD_COUNT")
            .ok_or_else(|| UsageError("JOB_COMPLETION_INDEX is set but EXPERTCAST_SHARD_COUNT is not: set it to the Job's completions".into()))?;
        (parse(&idx, "JOB_COMPLETION_INDEX")?, parse(&count, "EXPERTCAST_SHARD_COUNT")?)
    } else {
        (0, 1)
    };
    if n == 0 || i >= n {
        return Err(UsageError(format!(
            "shard {i}/{n}: the index must be below the count, which must be at least 1 (a Slurm array must be a range: --array=0-N or 0-N:S)"
        ))
        .into());
    }
    Ok((i, n))
}

/// The status recorded for a unit, if any.
pub fn status(plan: &Plan, unit: &Unit) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(plan.out.join("units").join(format!("{}.json", unit.id))).ok()?;
    serde_json::from_str(&text).ok()
}

pub fn is_done(plan: &Plan, unit: &Unit) -> bool {
    status(plan, unit).is_some_and(|s| s["status"] == "done")
}

/// The GPU ordinals `--devices` names (`all`: every device the driver sees).
pub fn parse_devices(s: &str, count: usize) -> Result<Vec<usize>, UsageError> {
    if s.trim() == "all" {
        return Ok((0..count).collect());
    }
    let mut v = Vec::new();
    for part in s.split(',') {
        let d: usize = part.trim().parse().map_err(|_| UsageError(format!("--devices {s}: {part:?} is not a GPU ordinal")))?;
        if d >= count {
            return Err(UsageError(format!("--devices {s}: GPU {d} does not exist ({count} visible)")));
        }
        if !v.contains(&d) {
            v.push(d);
        }
    }
    Ok(v)
}

/// The plan of one unit: the grid's settings for its trace file, run defaults else.
fn unit_plan(plan: &Plan, unit: &Unit, device: DeviceRequest, gpu: usize) -> RunPlan {
    let mut rp = RunPlan::new(vec![Input::File(unit.trace_file.clone())]);
    rp.work = plan.work.clone();
    rp.origin_stride = unit.origin_stride;
    rp.state_window = unit.state_window;
    rp.kappa = unit.kappa;
    rp.device = device;
    rp.gpu = gpu;
    rp
}

/// Runs one unit through the pipeline into the dataset; returns its seconds per stage.
fn run_unit(plan: &Plan, unit: &Unit, device: DeviceRequest, gpu: usize) -> anyhow::Result<serde_json::Value> {
    let rp = unit_plan(plan, unit, device, gpu);
    let cols = UnitColumns { id: unit.id.clone(), origin_stride: unit.origin_stride, state_window: unit.state_window, kappa: unit.kappa };
    let mut sink = HiveSink::new(plan.out.clone(), cols);
    let report = pipeline::run(&rp, &mut sink, &pipeline::Silent)?;
    Ok(serde_json::to_value(&report.seconds)?)
}

fn write_marker(plan: &Plan, unit: &Unit, value: serde_json::Value) -> anyhow::Result<()> {
    write_atomic(&plan.out.join("units"), &format!("{}.json", unit.id), serde_json::to_string_pretty(&value)?.as_bytes())
}

/// How one unit of a shard ended.
#[derive(Debug)]
pub enum Outcome {
    /// Its marker said "done" already.
    Skipped,
    /// Another process was running it.
    Elsewhere,
    Done,
    Failed(String),
}

/// A shard's units by outcome.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub done: usize,
    pub skipped: usize,
    /// Running in another process (a concurrent shard).
    pub elsewhere: usize,
    pub failed: usize,
}

/// The GPU ordinals a sweep spreads its units over (none with `--device cpu`).
pub fn gpus(device: DeviceRequest, devices: &str) -> anyhow::Result<Vec<usize>> {
    if device == DeviceRequest::Cpu {
        return Ok(Vec::new());
    }
    let v = parse_devices(devices, crate::gpu::cuda_device_count())?;
    if v.is_empty() && device == DeviceRequest::Cuda {
        return Err(crate::gpu::NoCuda(crate::gpu::Unavailable("no GPU visible to the driver".into())).into());
    }
    Ok(v)
}

/// Runs `units` with `jobs` workers: worker `w` runs units one after another on GPU
/// `gpus[w mod count]`, and the workers share the CPU thread pool, so GPU and CPU
/// stages of different units overlap. Each unit's marker is written as it ends, then
/// `on_unit` is told.
pub fn run_units(
    plan: &Plan,
    units: &[&Unit],
    device: DeviceRequest,
    gpus: &[usize],
    jobs: usize,
    on_unit: &(dyn Fn(&Unit, &Outcome) + Sync),
) -> anyhow::Result<Counts> {
    crate::output::create_out_dir(&plan.out.join("units"))?;
    save_hashes(plan)?;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let counts = std::sync::Mutex::new(Counts::default());
    let marker_error: std::sync::Mutex<Option<anyhow::Error>> = std::sync::Mutex::new(None);
    std::thread::scope(|scope| {
        for w in 0..jobs.max(1) {
            let (next, counts, marker_error) = (&next, &counts, &marker_error);
            scope.spawn(move || {
                let gpu = if gpus.is_empty() { 0 } else { gpus[w % gpus.len()] };
                loop {
                    let k = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some(u) = units.get(k) else { break };
                    // Claimed with a lock, so no two processes run a unit at once.
                    let lock = plan.out.join("units").join(format!(".{}.lock", u.id));
                    let claim = match crate::output::FileLock::acquire(&lock, false) {
                        Ok(Some(c)) => c,
                        Ok(None) => {
                            counts.lock().unwrap().elsewhere += 1;
                            on_unit(u, &Outcome::Elsewhere);
                            continue;
                        }
                        Err(e) => {
                            marker_error.lock().unwrap().get_or_insert(e);
                            break;
                        }
                    };
                    if let Err(e) = remove_unit_temps(plan, u) {
                        marker_error.lock().unwrap().get_or_insert(e);
                        break;
                    }
                    if is_done(plan, u) {
                        counts.lock().unwrap().skipped += 1;
                        on_unit(u, &Outcome::Skipped);
                        continue;
                    }
                    let t = Instant::now();
                    let info = serde_json::json!({"id": u.id, "trace_file": u.trace_file, "origin_stride": u.origin_stride, "state_window": u.state_window, "kappa": u.kappa, "gpu": (!gpus.is_empty()).then_some(gpu)});
                    let (marker, outcome) = match run_unit(plan, u, device, gpu) {
                        Ok(stages) => {
                            counts.lock().unwrap().done += 1;
                            (serde_json::json!({"status": "done", "seconds": t.elapsed().as_secs_f64(), "stages": stages, "unit": info}), Outcome::Done)
                        }
                        Err(e) => {
                            counts.lock().unwrap().failed += 1;
                            let msg = format!("{e:#}");
                            (serde_json::json!({"status": "failed", "error": msg, "unit": info}), Outcome::Failed(msg))
                        }
                    };
                    if let Err(e) = write_marker(plan, u, marker) {
                        marker_error.lock().unwrap().get_or_insert(e);
                    }
                    drop(claim);
                    on_unit(u, &outcome);
                }
            });
        }
    });
    if let Some(e) = marker_error.into_inner().unwrap() {
        return Err(e);
    }
    Ok(counts.into_inner().unwrap())
}

/// `OUT/manifest.json`: every unit of the sweep (all shards) with its status now, and
/// the shared settings.
pub fn write_manifest(plan: &Plan, config: &Path) -> anyhow::Result<()> {
    // One writer at a time, each reading every marker after the last one wrote: the
    // manifest written last is the newest state, whatever the order shards end in.
    let lock = crate::output::lock_dir_wait(&plan.out)?;
    crate::output::remove_temps(&plan.out, crate::output::MANIFEST)?;
    let units: Vec<serde_json::Value> = plan
        .units
        .iter()
        .map(|u| {
            let s = status(plan, u);
            serde_json::json!({
                "id": u.id, "trace_file": u.trace_file, "origin_stride": u.origin_stride, "state_window": u.state_window,
                "kappa": u.kappa, "status": s.as_ref().map_or("pending".into(), |s| s["status"].clone()),
                "error": s.as_ref().and_then(|s| s.get("error").cloned()),
            })
        })
        .collect();
    let manifest = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"), "config": config, "windows": plan.work.windows, "horizons": plan.work.horizons,
        "forecasters": plan.work.forecasters, "units": units,
    });
    write_atomic(&plan.out, crate::output::MANIFEST, serde_json::to_string_pretty(&manifest)?.as_bytes())?;
    drop(lock);
    Ok(())
}

/// Removes the parts and markers of units that are not in `plan` (left by an earlier
/// version of the config), so the dataset holds this config's results only. Returns
/// how many units' files went.
pub fn remove_stale(plan: &Plan) -> anyhow::Result<usize> {
    let ids: std::collections::BTreeSet<&str> = plan.units.iter().map(|u| u.id.as_str()).collect();
    let mut gone = std::collections::BTreeSet::new();
    let mut remove = |path: PathBuf, id: &str| -> anyhow::Result<()> {
        if !ids.contains(id) {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            gone.insert(id.to_string());
        }
        Ok(())
    };
    let entries = |dir: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(dir).map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default()
    };
    for table in crate::output::hive::TABLES {
        for part_dir in entries(&plan.out.join(table.name())) {
            for f in entries(&part_dir) {
                let name = f.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
                if let Some(id) = name.strip_prefix("part-").and_then(|n| n.strip_suffix(".parquet")) {
                    remove(f.clone(), id)?;
                }
            }
        }
    }
    for f in entries(&plan.out.join("units")) {
        let name = f.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        if let Some(id) = name.strip_suffix(".json") {
            remove(f.clone(), id)?;
        }
    }
    Ok(gone.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_in_specs_expand_to_every_combination() {
        assert_eq!(expand_spec("last").unwrap(), vec!["last"]);
        assert_eq!(expand_spec("sw-avg:w=[10,100,500]").unwrap(), vec!["sw-avg:w=10", "sw-avg:w=100", "sw-avg:w=500"]);
        assert_eq!(
            expand_spec("arima:p=[1,2],d=1,q=[0,1]").unwrap(),
            vec!["arima:p=1,d=1,q=0", "arima:p=1,d=1,q=1", "arima:p=2,d=1,q=0", "arima:p=2,d=1,q=1"]
        );
        assert!(expand_spec("mean:w=[10,20").is_err());
        assert!(expand_spec("mean:w=[]").is_err());
    }

    #[test]
    fn shards_come_from_the_flag_slurm_or_kubernetes() {
        let none = |_: &str| None;
        assert_eq!(shard(Some("2/4"), &none).unwrap(), (2, 4));
        assert_eq!(shard(None, &none).unwrap(), (0, 1));
        assert!(shard(Some("4/4"), &none).is_err());
        assert!(shard(Some("1"), &none).is_err());
        let slurm = |k: &str| match k {
            "SLURM_ARRAY_TASK_ID" => Some("3".to_string()),
            "SLURM_ARRAY_TASK_COUNT" => Some("4".to_string()),
            "SLURM_ARRAY_TASK_MIN" => Some("1".to_string()),
            _ => None,
        };
        assert_eq!(shard(None, &slurm).unwrap(), (2, 4));
        let k8s = |k: &str| match k {
            "JOB_COMPLETION_INDEX" => Some("1".to_string()),
            "EXPERTCAST_SHARD_COUNT" => Some("3".to_string()),
            _ => None,
        };
        assert_eq!(shard(None, &k8s).unwrap(), (1, 3));
        let k8s_no_count = |k: &str| (k == "JOB_COMPLETION_INDEX").then(|| "1".to_string());
        assert!(shard(None, &k8s_no_count).is_err());
        // the flag wins over the environment
        assert_eq!(shard(Some("0/2"), &slurm).unwrap(), (0, 2));
        // --array=0-6:2 runs tasks 0, 2, 4, 6 (count 4): shards 0, 1, 2, 3
        for (id, want) in [("0", 0), ("2", 1), ("4", 2), ("6", 3)] {
            let stepped = |k: &str| match k {
                "SLURM_ARRAY_TASK_ID" => Some(id.to_string()),
                "SLURM_ARRAY_TASK_COUNT" => Some("4".to_string()),
                "SLURM_ARRAY_TASK_MIN" => Some("0".to_string()),
                "SLURM_ARRAY_TASK_STEP" => Some("2".to_string()),
                _ => None,
            };
            assert_eq!(shard(None, &stepped).unwrap(), (want, 4), "task {id}");
        }
        // a task off the step, or past the count (an array given as a list), is refused
        let off = |k: &str| match k {
            "SLURM_ARRAY_TASK_ID" => Some("3".to_string()),
            "SLURM_ARRAY_TASK_COUNT" => Some("4".to_string()),
            "SLURM_ARRAY_TASK_STEP" => Some("2".to_string()),
            _ => None,
        };
        assert!(shard(None, &off).is_err());
        let list = |k: &str| match k {
            "SLURM_ARRAY_TASK_ID" => Some("8".to_string()),
            "SLURM_ARRAY_TASK_COUNT" => Some("3".to_string()),
            "SLURM_ARRAY_TASK_MIN" => Some("1".to_string()),
            _ => None,
        };
        assert!(shard(None, &list).unwrap_err().to_string().contains("must be a range"));
    }

    #[test]
    fn content_hashes_come_from_the_cache_only_for_an_unchanged_file() {
        let d = tempfile::tempdir().unwrap();
        let (f, out) = (d.path().join("t.csv"), d.path().join("out"));
        std::fs::create_dir(&out).unwrap();
        std::fs::write(&f, "abc").unwrap();
        let files = [f.clone()];
        let first = content_hashes(&files, &out).unwrap();
        // sha256("abc"), computed independently (FIPS 180-2, appendix B.1)
        assert_eq!(first[&f].sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        // A cache entry that matches the file's size, mtime and inode is used as is ...
        let mut cached = first.clone();
        cached.get_mut(&f).unwrap().sha256 = "from-the-cache".into();
        let plan = Plan { units: Vec::new(), out: out.clone(), work: Work::default(), hashes: cached, report: false };
        save_hashes(&plan).unwrap();
        assert_eq!(content_hashes(&files, &out).unwrap()[&f].sha256, "from-the-cache");
        // ... and one for a file rewritten since (same size, new content) is not.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&f, "abd").unwrap();
        let again = content_hashes(&files, &out).unwrap();
        assert_ne!(again[&f].sha256, "from-the-cache");
        assert_ne!(again[&f].sha256, first[&f].sha256);
    }

    #[test]
    fn devices_are_all_or_a_list_of_visible_ordinals() {
        assert_eq!(parse_devices("all", 2).unwrap(), vec![0, 1]);
        assert_eq!(parse_devices("all", 0).unwrap(), Vec::<usize>::new());
        assert_eq!(parse_devices("1,0,1", 2).unwrap(), vec![1, 0]);
        assert!(parse_devices("2", 2).is_err());
        assert!(parse_devices("x", 2).is_err());
    }

    #[test]
    fn output_paths_are_shown_without_dot_dot() {
        assert_eq!(lexical_clean(Path::new("datasets/../sweep-out")), PathBuf::from("sweep-out"));
        assert_eq!(lexical_clean(Path::new("./a/./b/../c")), PathBuf::from("a/c"));
        assert_eq!(lexical_clean(Path::new("../x")), PathBuf::from("../x"));
        assert_eq!(lexical_clean(Path::new("/a/../b")), PathBuf::from("/b"));
        assert_eq!(lexical_clean(Path::new("a/..")), PathBuf::from("."));
        // through a symbolic link, `..` is left for the system to resolve
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("real")).unwrap();
        std::os::unix::fs::symlink(d.path().join("real"), d.path().join("link")).unwrap();
        let via = d.path().join("link/../out");
        assert_eq!(lexical_clean(&via), via);
    }
}
