//! Reading a run's or a sweep's outputs back for the report: the Parquet tables as
//! plain rows, the manifest, and what is missing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use arrow::array::{Array, ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::DataType;

use crate::UsageError;
use crate::output::{MANIFEST, Table};

/// A run's directory or a sweep's dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Run,
    Sweep,
}

/// The settings of the sweep unit a row came from (`None` for a run).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct UnitKey {
    pub origin_stride: i64,
    pub state_window: i64,
    pub kappa: f64,
}

#[derive(Debug, Clone)]
pub struct Metric {
    pub trace: String,
    pub layer: i64,
    pub forecaster: String,
    pub horizon: i64,
    pub regime: String,
    pub mae_pp: Option<f64>,
    pub unit: Option<UnitKey>,
}

#[derive(Debug, Clone)]
pub struct State {
    pub trace: String,
    pub layer: i64,
    pub window: i64,
    pub kappa: f64,
    pub transition_step: Option<i64>,
    pub final_std: Option<f64>,
    pub unit: Option<UnitKey>,
}

#[derive(Debug, Clone)]
pub struct Placed {
    pub trace: String,
    pub layer: i64,
    pub policy: String,
    pub gpus: i64,
    pub replicas: i64,
    pub horizon: i64,
    pub regime: String,
    pub imbalance_mean: Option<f64>,
    pub imbalance_p99: Option<f64>,
}

/// An input trace file as the manifest names it.
#[derive(Debug, Clone)]
pub struct TraceFile {
    /// As written in the manifest (`<bundled>/FILE` for a bundled trace).
    pub path: String,
    /// Its size when the run read it, when the manifest has it.
    pub bytes: Option<u64>,
    /// The trace names it holds, when the manifest has them.
    pub traces: Vec<String>,
}

/// Everything the report is made from.
#[derive(Debug)]
pub struct Outputs {
    pub kind: Kind,
    pub dir: PathBuf,
    pub metrics: Vec<Metric>,
    pub states: Vec<State>,
    pub placement: Vec<Placed>,
    pub files: Vec<TraceFile>,
    /// The command that produced the data, for captions.
    pub command: String,
    /// The forecaster specs in the run's order.
    pub forecasters: Vec<String>,
    /// The windows of the window statistics.
    pub windows: Vec<i64>,
    pub state_window: i64,
    pub kappa: f64,
    pub column_names: crate::trace::ColumnNames,
    pub format: Option<crate::trace::Format>,
    /// What the report cannot show, one sentence each.
    pub missing: Vec<String>,
}

fn usage(msg: String) -> anyhow::Error {
    UsageError(msg).into()
}

/// Reads `dir`: a run's output directory (`manifest.json` with the tables beside it)
/// or a sweep's (`manifest.json` with `units`, tables as `TABLE/trace=NAME/part-*.parquet`).
pub fn load(dir: &Path) -> anyhow::Result<Outputs> {
    if !dir.is_dir() {
        return Err(usage(format!("{}: not a directory (give the --out directory of `expertcast run` or of a sweep)", dir.display())));
    }
    let manifest_path = dir.join(MANIFEST);
    let manifest: Option<serde_json::Value> = match std::fs::read(&manifest_path) {
        Ok(b) => Some(serde_json::from_slice(&b).map_err(|e| usage(format!("{}: not valid JSON ({e})", manifest_path.display())))?),
        Err(_) => None,
    };
    let sweep = dir.join("units").is_dir() || manifest.as_ref().is_some_and(|m| m.get("units").is_some());
    let have_table = |t: Table| if sweep { dir.join(t.name()).is_dir() } else { dir.join(t.file_name()).is_file() };
    let tables = [Table::Metrics, Table::States, Table::Placement, Table::LayerStats];
    if manifest.is_none() && !tables.iter().any(|t| have_table(*t)) {
        return Err(usage(format!(
            "{}: no expertcast outputs here (neither {MANIFEST} nor metrics/states/placement Parquet files); \
             give the --out directory of `expertcast run` or of a sweep",
            dir.display()
        )));
    }
    let mut missing = Vec::new();
    let Some(manifest) = manifest else {
        return Err(usage(format!(
            "{}: {MANIFEST} is missing, so the run did not finish (it is written last); run it again",
            manifest_path.display()
        )));
    };
    let kind = if sweep { Kind::Sweep } else { Kind::Run };
    let strs = |v: Option<&serde_json::Value>| -> Vec<String> {
        v.and_then(|v| v.as_array()).map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect()).unwrap_or_default()
    };
    let ints = |v: Option<&serde_json::Value>| -> Vec<i64> {
        v.and_then(|v| v.as_array()).map(|a| a.iter().filter_map(|x| x.as_i64()).collect()).unwrap_or_default()
    };
    let mut out = Outputs {
        kind,
        dir: dir.to_path_buf(),
        metrics: Vec::new(),
        states: Vec::new(),
        placement: Vec::new(),
        files: Vec::new(),
        command: String::new(),
        forecasters: Vec::new(),
        windows: Vec::new(),
        state_window: crate::pipeline::plan::STATE_WINDOW as i64,
        kappa: crate::pipeline::plan::KAPPA,
        column_names: Default::default(),
        format: None,
        missing: Vec::new(),
    };
    match kind {
        Kind::Run => {
            let cfg = manifest.get("config");
            let c = |k: &str| cfg.and_then(|c| c.get(k));
            out.command = strs(manifest.get("command_line"))
                .iter()
                .enumerate()
                .map(|(i, a)| if i == 0 { "expertcast".to_string() } else { shell_quote(a) })
                .collect::<Vec<_>>()
                .join(" ");
            out.forecasters = strs(c("forecasters"));
            out.windows = ints(c("windows"));
            out.state_window = c("state_window").and_then(|v| v.as_i64()).unwrap_or(out.state_window);
            out.kappa = c("kappa").and_then(|v| v.as_f64()).unwrap_or(out.kappa);
            if let Some(cols) = c("columns") {
                let get = |k: &str, d: &str| cols.get(k).and_then(|v| v.as_str()).unwrap_or(d).to_string();
                let d = crate::trace::ColumnNames::default();
                out.column_names =
                    crate::trace::ColumnNames { step: get("step", &d.step), layer: get("layer", &d.layer), expert: get("expert", &d.expert), tokens: get("tokens", &d.tokens), trace: get("trace", &d.trace) };
            }
            out.format = match c("format").and_then(|v| v.as_str()) {
                Some("parquet") => Some(crate::trace::Format::Parquet),
                Some("csv") => Some(crate::trace::Format::Csv),
                Some("npy") => Some(crate::trace::Format::Npy),
                _ => None,
            };
            for input in manifest.get("inputs").and_then(|v| v.as_array()).into_iter().flatten() {
                out.files.push(TraceFile {
                    path: input.get("path").and_then(|v| v.as_str()).unwrap_or_default().to_string(),
                    bytes: input.get("bytes").and_then(|v| v.as_u64()),
                    traces: input
                        .get("traces")
                        .and_then(|v| v.as_array())
                        .map(|a| a.iter().filter_map(|t| t.get("name").and_then(|n| n.as_str()).map(String::from)).collect())
                        .unwrap_or_default(),
                });
            }
            let placement_asked = c("placement").is_some_and(|p| !p.is_null());
            for t in [Table::Metrics, Table::States] {
                if !have_table(t) {
                    missing.push(format!("{} is missing", dir.join(t.file_name()).display()));
                }
            }
            if placement_asked && !have_table(Table::Placement) {
                missing.push(format!("{} is missing (the run asked for placement)", dir.join(Table::Placement.file_name()).display()));
            }
            let read = |t: Table| -> anyhow::Result<Vec<(RecordBatch, Option<String>)>> {
                if have_table(t) { Ok(read_parquet(&dir.join(t.file_name()))?.into_iter().map(|b| (b, None)).collect()) } else { Ok(Vec::new()) }
            };
            out.metrics = metrics(&read(Table::Metrics)?)?;
            out.states = states(&read(Table::States)?)?;
            out.placement = placed(&read(Table::Placement)?)?;
        }
        Kind::Sweep => {
            out.command = match manifest.get("config").and_then(|v| v.as_str()) {
                Some(c) => format!("expertcast sweep {}", shell_quote(c)),
                None => "expertcast sweep".into(),
            };
            out.forecasters = strs(manifest.get("forecasters"));
            out.windows = ints(manifest.get("windows"));
            let units = manifest.get("units").and_then(|v| v.as_array()).cloned().unwrap_or_default();
            let mut files: BTreeMap<String, ()> = BTreeMap::new();
            let mut not_done: BTreeMap<String, usize> = BTreeMap::new();
            for u in &units {
                let status = u.get("status").and_then(|v| v.as_str()).unwrap_or("pending");
                if status != "done" {
                    *not_done.entry(status.to_string()).or_default() += 1;
                }
                if let Some(f) = u.get("trace_file").and_then(|v| v.as_str()) {
                    files.insert(f.to_string(), ());
                }
            }
            // A marker newer than the manifest (a shard still running) counts too.
            for u in &units {
                let id = u.get("id").and_then(|v| v.as_str()).unwrap_or_default();
                let listed = u.get("status").and_then(|v| v.as_str()) == Some("done");
                if listed {
                    continue;
                }
                if let Ok(b) = std::fs::read(dir.join("units").join(format!("{id}.json")))
                    && serde_json::from_slice::<serde_json::Value>(&b).ok().and_then(|m| m.get("status").and_then(|s| s.as_str()).map(String::from)).as_deref()
                        == Some("done")
                {
                    let status = u.get("status").and_then(|v| v.as_str()).unwrap_or("pending").to_string();
                    if let Some(n) = not_done.get_mut(&status) {
                        *n -= 1;
                    }
                }
            }
            for (status, n) in not_done {
                if n > 0 {
                    missing.push(format!("{n} of the sweep's {} units are {status} (their rows are not in the dataset yet)", units.len()));
                }
            }
            out.files = files.into_keys().map(|path| TraceFile { path, bytes: None, traces: Vec::new() }).collect();
            let read = |t: Table| -> anyhow::Result<Vec<(RecordBatch, Option<String>)>> { read_hive(&dir.join(t.name())) };
            if !have_table(Table::Metrics) {
                missing.push(format!("{} is missing", dir.join(Table::Metrics.name()).display()));
            }
            out.metrics = metrics(&read(Table::Metrics)?)?;
            out.states = states(&read(Table::States)?)?;
            out.placement = placed(&read(Table::Placement)?)?;
            if let Some(s) = out.states.iter().filter_map(|s| s.unit).map(|u| u.state_window).min() {
                out.state_window = s;
            }
            if let Some(k) = out.states.iter().filter_map(|s| s.unit).map(|u| u.kappa).min_by(f64::total_cmp) {
                out.kappa = k;
            }
        }
    }
    if out.windows.is_empty() {
        let mut w: Vec<i64> = out.states.iter().map(|s| s.window).collect();
        w.sort_unstable();
        w.dedup();
        out.windows = w;
    }
    if out.metrics.is_empty() && out.states.is_empty() && out.placement.is_empty() {
        return Err(usage(format!("{}: the outputs hold no rows (metrics, states and placement are all empty or missing)", dir.display())));
    }
    out.missing = missing;
    Ok(out)
}

/// POSIX shell quoting for a word of a command shown to the user.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./:=,@+%".contains(&b)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn read_parquet(path: &Path) -> anyhow::Result<Vec<RecordBatch>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .map_err(|e| usage(format!("{}: not a readable Parquet file ({e})", path.display())))?
        .with_batch_size(65536)
        .build()?;
    reader.collect::<Result<Vec<_>, _>>().map_err(|e| usage(format!("{}: the Parquet file is corrupt ({e})", path.display())))
}

/// Every `trace=NAME/part-*.parquet` under a sweep's table directory, with the
/// trace name from the partition (percent-decoded).
fn read_hive(table_dir: &Path) -> anyhow::Result<Vec<(RecordBatch, Option<String>)>> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(table_dir) else { return Ok(out) };
    let mut parts: Vec<(String, PathBuf)> = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(v) = name.strip_prefix("trace=") else { continue };
        let trace = percent_decode(v);
        for f in std::fs::read_dir(e.path()).into_iter().flatten().flatten() {
            let fname = f.file_name().to_string_lossy().to_string();
            if fname.starts_with("part-") && fname.ends_with(".parquet") {
                parts.push((trace.clone(), f.path()));
            }
        }
    }
    parts.sort();
    for (trace, p) in parts {
        for b in read_parquet(&p)? {
            out.push((b, Some(trace.clone())));
        }
    }
    Ok(out)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(hi), Some(lo)) = ((b[i + 1] as char).to_digit(16), (b[i + 2] as char).to_digit(16))
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Typed access to a batch's columns by name.
struct Cols<'a> {
    batch: &'a RecordBatch,
    trace: Option<&'a str>,
}

impl Cols<'_> {
    fn col(&self, name: &str) -> anyhow::Result<&ArrayRef> {
        self.batch.column_by_name(name).with_context(|| format!("the column {name:?} is missing"))
    }
    fn strs(&self, name: &str) -> anyhow::Result<Vec<String>> {
        if name == "trace"
            && let Some(t) = self.trace
        {
            return Ok(vec![t.to_string(); self.batch.num_rows()]);
        }
        let c = arrow::compute::cast(self.col(name)?, &DataType::Utf8)?;
        let a = c.as_any().downcast_ref::<StringArray>().context("string column")?;
        Ok((0..a.len()).map(|i| a.value(i).to_string()).collect())
    }
    fn i64s(&self, name: &str) -> anyhow::Result<Vec<Option<i64>>> {
        let c = arrow::compute::cast(self.col(name)?, &DataType::Int64)?;
        let a = c.as_any().downcast_ref::<Int64Array>().context("integer column")?;
        Ok((0..a.len()).map(|i| a.is_valid(i).then(|| a.value(i))).collect())
    }
    fn f64s(&self, name: &str) -> anyhow::Result<Vec<Option<f64>>> {
        let c = arrow::compute::cast(self.col(name)?, &DataType::Float64)?;
        let a = c.as_any().downcast_ref::<Float64Array>().context("float column")?;
        Ok((0..a.len()).map(|i| a.is_valid(i).then(|| a.value(i))).collect())
    }
    fn units(&self) -> anyhow::Result<Vec<Option<UnitKey>>> {
        if self.trace.is_none() {
            return Ok(vec![None; self.batch.num_rows()]);
        }
        let (s, w, k) = (self.i64s("origin_stride")?, self.i64s("state_window")?, self.f64s("kappa")?);
        Ok((0..s.len()).map(|i| Some(UnitKey { origin_stride: s[i].unwrap_or(0), state_window: w[i].unwrap_or(0), kappa: k[i].unwrap_or(0.0) })).collect())
    }
}

fn metrics(batches: &[(RecordBatch, Option<String>)]) -> anyhow::Result<Vec<Metric>> {
    let mut out = Vec::new();
    for (b, t) in batches {
        let c = Cols { batch: b, trace: t.as_deref() };
        let (tr, l, f, h, r, m, u) = (c.strs("trace")?, c.i64s("layer")?, c.strs("forecaster")?, c.i64s("horizon")?, c.strs("regime")?, c.f64s("mae_pp")?, c.units()?);
        for i in 0..b.num_rows() {
            out.push(Metric {
                trace: tr[i].clone(),
                layer: l[i].unwrap_or(0),
                forecaster: f[i].clone(),
                horizon: h[i].unwrap_or(0),
                regime: r[i].clone(),
                mae_pp: m[i],
                unit: u[i],
            });
        }
    }
    Ok(out)
}

fn states(batches: &[(RecordBatch, Option<String>)]) -> anyhow::Result<Vec<State>> {
    let mut out = Vec::new();
    for (b, t) in batches {
        let c = Cols { batch: b, trace: t.as_deref() };
        let (tr, l, w, k, s, f, u) = (c.strs("trace")?, c.i64s("layer")?, c.i64s("window_size")?, c.f64s("kappa")?, c.i64s("transition_step")?, c.f64s("final_std")?, c.units()?);
        for i in 0..b.num_rows() {
            out.push(State {
                trace: tr[i].clone(),
                layer: l[i].unwrap_or(0),
                window: w[i].unwrap_or(0),
                kappa: k[i].unwrap_or(0.0),
                transition_step: s[i],
                final_std: f[i],
                unit: u[i],
            });
        }
    }
    Ok(out)
}

fn placed(batches: &[(RecordBatch, Option<String>)]) -> anyhow::Result<Vec<Placed>> {
    let mut out = Vec::new();
    for (b, t) in batches {
        let c = Cols { batch: b, trace: t.as_deref() };
        let (tr, l, p, g, r) = (c.strs("trace")?, c.i64s("layer")?, c.strs("policy")?, c.i64s("gpus")?, c.i64s("replicas")?);
        let (h, re, m, p99) = (c.i64s("horizon")?, c.strs("regime")?, c.f64s("imbalance_mean")?, c.f64s("imbalance_p99")?);
        for i in 0..b.num_rows() {
            out.push(Placed {
                trace: tr[i].clone(),
                layer: l[i].unwrap_or(0),
                policy: p[i].clone(),
                gpus: g[i].unwrap_or(0),
                replicas: r[i].unwrap_or(0),
                horizon: h[i].unwrap_or(0),
                regime: re[i].clone(),
                imbalance_mean: m[i],
                imbalance_p99: p99[i],
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hive_names_decode() {
        assert_eq!(percent_decode("a%2Fb%20c"), "a/b c");
        assert_eq!(percent_decode("plain-name_1.x"), "plain-name_1.x");
        assert_eq!(percent_decode("bad%zz"), "bad%zz");
        assert_eq!(percent_decode("end%2"), "end%2");
        for s in ["gpt12/e16 top2", "x%y", "ünï"] {
            assert_eq!(percent_decode(&crate::output::hive::hive_value(s)), s);
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("--out"), "--out");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
