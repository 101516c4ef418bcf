//! Long-format traces (Parquet and CSV), streamed in Arrow record batches.
//!
//! Two passes over the file: the first learns each trace's shape (step range,
//! layer ids, expert range) and checks every value; the second fills the dense
//! array. Neither holds more than one record batch besides the dense loads, so
//! reading costs about the trace's dense size. A Parquet file of one dense trace
//! whose footer gives the ranges is decoded once instead ([`read_parquet_once`]),
//! with the two passes as its fallback for anything else.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatchReader, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder};

use super::{Loads, Result, Trace, TraceError, bad_value_kind, invalid, stem_name};

const BATCH_ROWS: usize = 64 * 1024;

/// Column names of a long trace (remappable with the `--*-col` flags).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ColumnNames {
    pub step: String,
    pub layer: String,
    pub expert: String,
    pub tokens: String,
    pub trace: String,
}

impl Default for ColumnNames {
    fn default() -> Self {
        ColumnNames {
            step: "step".into(),
            layer: "layer".into(),
            expert: "expert".into(),
            tokens: "tokens".into(),
            trace: "trace".into(),
        }
    }
}

/// Where each needed column sits in the file's schema.
struct Layout {
    step: usize,
    layer: usize,
    expert: usize,
    tokens: usize,
    trace: Option<usize>,
}

impl Layout {
    fn resolve(file: &Path, schema: &Schema, names: &ColumnNames) -> Result<Layout> {
        let find = |name: &str| schema.index_of(name).ok();
        let available = || schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", ");
        let need = |name: &str, flag: &str| {
            find(name).ok_or_else(|| {
                invalid(file, format!("missing column {name:?} (columns are: {}); remap it with {flag}", available()))
            })
        };
        let layout = Layout {
            step: need(&names.step, "--step-col")?,
            layer: need(&names.layer, "--layer-col")?,
            expert: need(&names.expert, "--expert-col")?,
            tokens: need(&names.tokens, "--tokens-col")?,
            trace: find(&names.trace),
        };
        for (idx, want_int) in [(layout.step, true), (layout.layer, true), (layout.expert, true), (layout.tokens, false)] {
            let f = schema.field(idx);
            let ok = if want_int { f.data_type().is_integer() } else { f.data_type().is_numeric() };
            if !ok {
                return Err(invalid(
                    file,
                    format!(
                        "column {:?} has type {}; expected {}",
                        f.name(),
                        f.data_type(),
                        if want_int { "an integer column" } else { "an integer or float column" }
                    ),
                ));
            }
        }
        if let Some(idx) = layout.trace {
            let f = schema.field(idx);
            if !matches!(
                f.data_type(),
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Dictionary(_, _)
            ) {
                return Err(invalid(file, format!("column {:?} has type {}; expected strings", f.name(), f.data_type())));
            }
        }
        Ok(layout)
    }
}

/// One batch's needed columns, cast to uniform types.
struct Cols {
    step: Int64Array,
    layer: Int64Array,
    expert: Int64Array,
    tokens: Float64Array,
    trace: Option<StringArray>,
}

fn cast_col<T: Array + Clone + 'static>(file: &Path, a: &ArrayRef, to: &DataType, name: &str) -> Result<T> {
    let c = arrow::compute::cast(a, to).map_err(|e| invalid(file, format!("column {name:?}: {e}")))?;
    Ok(c.as_any().downcast_ref::<T>().expect("cast gives the asked type").clone())
}

impl Cols {
    fn from_batch(file: &Path, b: &RecordBatch, lay: &Layout, names: &ColumnNames) -> Result<Cols> {
        Ok(Cols {
            step: cast_col(file, b.column(lay.step), &DataType::Int64, &names.step)?,
            layer: cast_col(file, b.column(lay.layer), &DataType::Int64, &names.layer)?,
            expert: cast_col(file, b.column(lay.expert), &DataType::Int64, &names.expert)?,
            tokens: cast_col(file, b.column(lay.tokens), &DataType::Float64, &names.tokens)?,
            trace: match lay.trace {
                Some(i) => Some(cast_col(file, b.column(i), &DataType::Utf8, &names.trace)?),
                None => None,
            },
        })
    }

    fn check_nulls(&self, file: &Path, names: &ColumnNames, row0: u64, unit: &str) -> Result<()> {
        let cols: [(&dyn Array, &str); 4] =
            [(&self.step, &names.step), (&self.layer, &names.layer), (&self.expert, &names.expert), (&self.tokens, &names.tokens)];
        for (a, name) in cols {
            if a.null_count() > 0 {
                let i = (0..a.len()).find(|&i| a.is_null(i)).unwrap_or(0);
                return Err(invalid(file, format!("{unit} {}: column {name:?} is empty (null)", row0 + i as u64 + 1)));
            }
        }
        if let Some(t) = &self.trace {
            if t.null_count() > 0 {
                let i = (0..t.len()).find(|&i| t.is_null(i)).unwrap_or(0);
                return Err(invalid(file, format!("{unit} {}: column {:?} is empty (null)", row0 + i as u64 + 1, names.trace)));
            }
        }
        Ok(())
    }
}

/// Shape of one trace as learnt in the first pass.
#[derive(Debug)]
struct Scan {
    name: String,
    min_step: i64,
    max_step: i64,
    min_expert: i64,
    max_expert: i64,
    /// Ascending; filled from `layer_set` after the first pass.
    layers: Vec<i64>,
    /// The layer ids seen in the first pass (a set: ids in any order cost n log n).
    layer_set: std::collections::BTreeSet<i64>,
    last_layer: Option<i64>,
    rows: u64,
    f32_exact: bool,
}

impl Scan {
    fn new(name: String) -> Scan {
        Scan {
            name,
            min_step: i64::MAX,
            max_step: i64::MIN,
            min_expert: i64::MAX,
            max_expert: i64::MIN,
            layers: Vec::new(),
            layer_set: Default::default(),
            last_layer: None,
            rows: 0,
            f32_exact: true,
        }
    }
}

/// Maps trace names to indices, with a fast path for runs of the same name.
#[derive(Default)]
struct TraceIndex {
    by_name: HashMap<String, usize>,
    last: Option<(String, usize)>,
}

impl TraceIndex {
    fn get(&mut self, name: &str, scans: &mut Vec<Scan>, create: bool) -> Option<usize> {
        if let Some((n, i)) = &self.last {
            if n == name {
                return Some(*i);
            }
        }
        let i = match self.by_name.get(name) {
            Some(&i) => i,
            None if create => {
                scans.push(Scan::new(name.to_string()));
                self.by_name.insert(name.to_string(), scans.len() - 1);
                scans.len() - 1
            }
            None => return None,
        };
        self.last = Some((name.to_string(), i));
        Some(i)
    }
}

/// A source of record batches that can be opened twice.
trait BatchSource {
    /// "row" for Parquet, "line" for CSV (which counts the header).
    fn unit(&self) -> &'static str;
    /// Number of the first data row as reported to users (0 for Parquet rows, 1 for CSV lines).
    fn row_base(&self) -> u64;
    fn open(&self) -> Result<(Layout, Box<dyn Iterator<Item = std::result::Result<RecordBatch, arrow::error::ArrowError>>>)>;
    /// What to tell the user about a batch that failed to decode.
    fn describe(&self, e: arrow::error::ArrowError) -> String {
        format!("cannot decode the file: {e}")
    }
}

/// Pass 1 over one batch: each row's trace, shape and value, checked. `row0` is the
/// number of the batch's first row as reported to users.
#[allow(clippy::too_many_arguments)]
fn scan_batch(
    file: &Path,
    names: &ColumnNames,
    unit: &str,
    lay: &Layout,
    b: &RecordBatch,
    row0: u64,
    scans: &mut Vec<Scan>,
    index: &mut TraceIndex,
    default_name: &str,
) -> Result<()> {
    let c = Cols::from_batch(file, b, lay, names)?;
    c.check_nulls(file, names, row0, unit)?;
    // Without a trace column every row is the file's one trace.
    let only = match &c.trace {
        None => Some(index.get(default_name, scans, true).unwrap()),
        Some(_) => None,
    };
    for i in 0..b.num_rows() {
        let ti = match (&c.trace, only) {
            (_, Some(ti)) => ti,
            (Some(t), None) => index.get(t.value(i), scans, true).unwrap(),
            (None, None) => unreachable!("no trace column means one trace"),
        };
        let s = &mut scans[ti];
        let (step, layer, expert, v) = (c.step.value(i), c.layer.value(i), c.expert.value(i), c.tokens.value(i));
        if !v.is_finite() || v < 0.0 {
            return Err(invalid(
                file,
                format!(
                    "{unit} {}: {} load {v} (step {step}, layer {layer}, expert {expert}); loads must be finite and >= 0",
                    row0 + i as u64 + 1,
                    bad_value_kind(v)
                ),
            ));
        }
        s.rows += 1;
        s.min_step = s.min_step.min(step);
        s.max_step = s.max_step.max(step);
        s.min_expert = s.min_expert.min(expert);
        s.max_expert = s.max_expert.max(expert);
        if s.last_layer != Some(layer) {
            s.layer_set.insert(layer);
            s.last_layer = Some(layer);
        }
        if s.f32_exact && (v as f32) as f64 != v {
            s.f32_exact = false;
        }
    }
    Ok(())
}

/// One trace's dense loads being filled in pass 2, and which cells have a row.
struct Fill {
    steps: usize,
    experts: usize,
    loads: Loads,
    seen: Vec<u64>,
}

/// After pass 1: each trace's layers in order, then its dense array, refusing shapes
/// that cannot fit the rows present.
fn allocate(file: &Path, scans: &mut [Scan]) -> Result<Vec<Fill>> {
    if scans.is_empty() {
        return Err(invalid(file, "the file has a header but no rows"));
    }
    for s in scans.iter_mut() {
        s.layers = std::mem::take(&mut s.layer_set).into_iter().collect();
    }
    // Every cell of a dense trace is a row of the file: a shape that claims many
    // more cells than there are rows (over all traces of the file, so that many
    // small sparse traces cannot add up) is refused before anything is allocated.
    let shape = |s: &Scan| {
        let steps = (s.max_step as i128 - s.min_step as i128 + 1) as u128;
        let experts = (s.max_expert as i128 - s.min_expert as i128 + 1) as u128;
        (steps, experts, steps * experts * s.layers.len() as u128)
    };
    let total_rows: u128 = scans.iter().map(|s| s.rows as u128).sum();
    let total_cells: u128 = scans.iter().map(|s| shape(s).2).sum();
    let budget = 2 * total_rows + (1 << 20);
    let mut fills = Vec::with_capacity(scans.len());
    for s in scans.iter() {
        let (steps, experts, cells) = shape(s);
        let alone = cells > 2 * s.rows as u128 + (1 << 20);
        if alone || (total_cells > budget && cells > 2 * s.rows as u128) {
            let all = if alone {
                String::new()
            } else {
                format!(" (the file's {} traces claim {total_cells} dense cells from {total_rows} rows)", scans.len())
            };
            return Err(invalid(
                file,
                format!(
                    "{}steps run from {} to {} and experts from {} to {}, but there are only {} rows: steps or experts are missing{all}",
                    trace_prefix(s, scans),
                    s.min_step,
                    s.max_step,
                    s.min_expert,
                    s.max_expert,
                    s.rows
                ),
            ));
        }
        let cells = cells as usize;
        let loads = if s.f32_exact { Loads::F32(vec![0.0; cells]) } else { Loads::F64(vec![0.0; cells]) };
        fills.push(Fill { steps: steps as usize, experts: experts as usize, loads, seen: vec![0u64; cells.div_ceil(64)] });
    }
    Ok(fills)
}

/// After pass 2: every (step, layer, expert) must be present; then the traces.
fn finish(file: &Path, scans: &[Scan], fills: Vec<Fill>) -> Result<Vec<Trace>> {
    let mut traces = Vec::with_capacity(scans.len());
    for (s, f) in scans.iter().zip(fills) {
        check_complete(file, s, scans, f.steps, f.experts, &f.seen)?;
        let expert_ids = (s.min_expert..=s.max_expert).collect();
        traces.push(Trace::from_dense(s.name.clone(), file, s.min_step, s.layers.clone(), expert_ids, f.loads)?);
    }
    Ok(traces)
}

fn read_long(file: &Path, names: &ColumnNames, src: &dyn BatchSource) -> Result<Vec<Trace>> {
    let unit = src.unit();
    let batch_err = |e: arrow::error::ArrowError| invalid(file, src.describe(e));
    let default_name = stem_name(file);

    // Pass 1: shapes and values.
    let mut scans: Vec<Scan> = Vec::new();
    let mut index = TraceIndex::default();
    let (lay, batches) = src.open()?;
    let mut row0 = src.row_base();
    for b in batches {
        let b = b.map_err(batch_err)?;
        scan_batch(file, names, unit, &lay, &b, row0, &mut scans, &mut index, &default_name)?;
        row0 += b.num_rows() as u64;
    }
    let mut fills = allocate(file, &mut scans)?;

    // Pass 2: fill, catching duplicates.
    let (lay, batches) = src.open()?;
    let mut row0 = src.row_base();
    let mut index2 = TraceIndex { by_name: index.by_name.clone(), last: None };
    for b in batches {
        let b = b.map_err(batch_err)?;
        let c = Cols::from_batch(file, &b, &lay, names)?;
        let mut last_layer: (i64, usize) = (i64::MIN, 0);
        for i in 0..b.num_rows() {
            let ti = match &c.trace {
                Some(t) => index2.get(t.value(i), &mut scans, false),
                None => index2.get(&default_name, &mut scans, false),
            }
            .ok_or_else(|| invalid(file, "the file changed while it was being read"))?;
            let s = &scans[ti];
            let f = &mut fills[ti];
            let (step, layer, expert) = (c.step.value(i), c.layer.value(i), c.expert.value(i));
            let li = if last_layer.0 == layer {
                last_layer.1
            } else {
                let li = s.layers.binary_search(&layer).map_err(|_| invalid(file, "the file changed while it was being read"))?;
                last_layer = (layer, li);
                li
            };
            let t = (step - s.min_step) as usize;
            let e = (expert - s.min_expert) as usize;
            let idx = (t * s.layers.len() + li) * f.experts + e;
            let (w, bit) = (idx / 64, 1u64 << (idx % 64));
            if f.seen[w] & bit != 0 {
                return Err(invalid(
                    file,
                    format!(
                        "{unit} {}: duplicate row for {}step {step}, layer {layer}, expert {expert}",
                        row0 + i as u64 + 1,
                        trace_prefix(s, &scans)
                    ),
                ));
            }
            f.seen[w] |= bit;
            let v = c.tokens.value(i);
            match &mut f.loads {
                Loads::F32(d) => d[idx] = v as f32,
                Loads::F64(d) => d[idx] = v,
            }
        }
        row0 += b.num_rows() as u64;
    }
    finish(file, &scans, fills)
}

/// [`read_long`] of a Parquet file with several row groups, row groups in parallel
/// (both passes). `None` when anything is wrong with the file (a bad value, a
/// duplicate row, a decoding error, ...): the caller then reads it with
/// [`read_long`], which finds the first problem in file order and says it in the same
/// words as always. Shape problems found after the passes are reported from here,
/// by the same code.
fn read_parquet_parallel(file: &Path, names: &ColumnNames, src: &ParquetSource) -> Option<Result<Vec<Trace>>> {
    use rayon::prelude::*;
    use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
    let meta = src.metadata().ok()?;
    let groups: Vec<u64> = meta.metadata().row_groups().iter().map(|g| g.num_rows().max(0) as u64).collect();
    if groups.len() < 2 || rayon::current_num_threads() < 2 {
        return None;
    }
    let starts: Vec<u64> = groups.iter().scan(0u64, |acc, &n| Some(std::mem::replace(acc, *acc + n))).collect();
    let default_name = stem_name(file);

    // Pass 1, each row group on its own, then merged in file order (a trace's index is
    // its first appearance in the file, as in one pass).
    let local: Vec<Vec<Scan>> = (0..groups.len())
        .into_par_iter()
        .map(|g| {
            let (lay, batches) = src.open_group(&meta, g).ok()?;
            let (mut scans, mut index, mut row0) = (Vec::new(), TraceIndex::default(), starts[g]);
            for b in batches {
                let b = b.ok()?;
                scan_batch(file, names, "row", &lay, &b, row0, &mut scans, &mut index, &default_name).ok()?;
                row0 += b.num_rows() as u64;
            }
            Some(scans)
        })
        .collect::<Option<_>>()?;
    let mut scans: Vec<Scan> = Vec::new();
    let mut index = TraceIndex::default();
    for part in local {
        for p in part {
            let gi = index.get(&p.name, &mut scans, true).unwrap();
            let s = &mut scans[gi];
            s.rows += p.rows;
            s.min_step = s.min_step.min(p.min_step);
            s.max_step = s.max_step.max(p.max_step);
            s.min_expert = s.min_expert.min(p.min_expert);
            s.max_expert = s.max_expert.max(p.max_expert);
            s.layer_set.extend(p.layer_set);
            s.f32_exact &= p.f32_exact;
        }
    }
    let mut fills = match allocate(file, &mut scans) {
        Ok(f) => f,
        Err(e) => return Some(Err(e)),
    };

    // Pass 2: row groups fill disjoint cells; a cell filled twice (a duplicate row)
    // sends the file to the sequential reader for its message.
    const _: () = assert!(std::mem::align_of::<AtomicU64>() == std::mem::align_of::<u64>());
    enum Cells<'a> {
        F32(&'a [AtomicU32]),
        F64(&'a [AtomicU64]),
    }
    let views: Vec<(&[AtomicU64], Cells)> = fills
        .iter_mut()
        .map(|f| {
            // SAFETY: atomics have the size and alignment of the plain integers (checked
            // above for u64; f32 and AtomicU32 are both 4 bytes, 4-aligned), and the
            // vectors are only reached through these views until the pass ends.
            let seen = unsafe { &*(f.seen.as_mut_slice() as *mut [u64] as *const [AtomicU64]) };
            let cells = match &mut f.loads {
                Loads::F32(d) => Cells::F32(unsafe { &*(d.as_mut_slice() as *mut [f32] as *const [AtomicU32]) }),
                Loads::F64(d) => Cells::F64(unsafe { &*(d.as_mut_slice() as *mut [f64] as *const [AtomicU64]) }),
            };
            (seen, cells)
        })
        .collect();
    let filled = (0..groups.len()).into_par_iter().all(|g| {
        let fill = || -> Option<()> {
            let (lay, batches) = src.open_group(&meta, g).ok()?;
            let mut index = TraceIndex { by_name: index.by_name.clone(), last: None };
            let mut dummy = Vec::new();
            for b in batches {
                let b = b.ok()?;
                let c = Cols::from_batch(file, &b, &lay, names).ok()?;
                let mut last_layer: (i64, usize) = (i64::MIN, 0);
                let only = if c.trace.is_none() { Some(index.get(&default_name, &mut dummy, false)?) } else { None };
                for i in 0..b.num_rows() {
                    let ti = match (&c.trace, only) {
                        (_, Some(ti)) => ti,
                        (Some(t), None) => index.get(t.value(i), &mut dummy, false)?,
                        (None, None) => return None,
                    };
                    let s = &scans[ti];
                    let (step, layer, expert) = (c.step.value(i), c.layer.value(i), c.expert.value(i));
                    let li = if last_layer.0 == layer {
                        last_layer.1
                    } else {
                        let li = s.layers.binary_search(&layer).ok()?;
                        last_layer = (layer, li);
                        li
                    };
                    let (t, e) = ((step - s.min_step) as usize, (expert - s.min_expert) as usize);
                    let idx = (t * s.layers.len() + li) * fills_experts(&scans, ti) + e;
                    let (seen, cells) = &views[ti];
                    let bit = 1u64 << (idx % 64);
                    if seen[idx / 64].fetch_or(bit, Relaxed) & bit != 0 {
                        return None;
                    }
                    let v = c.tokens.value(i);
                    match cells {
                        Cells::F32(d) => d[idx].store((v as f32).to_bits(), Relaxed),
                        Cells::F64(d) => d[idx].store(v.to_bits(), Relaxed),
                    }
                }
            }
            Some(())
        };
        fill().is_some()
    });
    drop(views);
    if !filled {
        return None;
    }
    Some(finish(file, &scans, fills))
}

/// Experts of trace `ti` as allocated (max - min + 1).
fn fills_experts(scans: &[Scan], ti: usize) -> usize {
    (scans[ti].max_expert - scans[ti].min_expert + 1) as usize
}

fn trace_prefix(s: &Scan, all: &[Scan]) -> String {
    if all.len() > 1 { format!("trace {:?}: ", s.name) } else { String::new() }
}

/// Names the first missing cell in the most useful terms: a layer with fewer
/// experts, a missing step, or a single missing (step, layer, expert).
fn check_complete(file: &Path, s: &Scan, all: &[Scan], steps: usize, experts: usize, seen: &[u64]) -> Result<()> {
    let nl = s.layers.len();
    let cells = steps * nl * experts;
    let full_words = cells / 64;
    let first_missing = (0..full_words)
        .find(|&w| seen[w] != u64::MAX)
        .map(|w| w * 64 + seen[w].trailing_ones() as usize)
        .or_else(|| (full_words * 64..cells).find(|&i| seen[i / 64] & (1 << (i % 64)) == 0));
    let Some(idx) = first_missing else { return Ok(()) };
    let is_seen = |t: usize, l: usize, e: usize| {
        let i = (t * nl + l) * experts + e;
        seen[i / 64] & (1 << (i % 64)) != 0
    };
    let pre = trace_prefix(s, all);
    // Experts per layer: an expert with no row at any step is absent from that layer.
    let counts: Vec<usize> =
        (0..nl).map(|l| (0..experts).filter(|&e| (0..steps).any(|t| is_seen(t, l, e))).count()).collect();
    if let Some(l) = (0..nl).find(|&l| counts[l] != counts[0]) {
        let (small, big) = if counts[l] < counts[0] { (l, 0) } else { (0, l) };
        let missing = (0..experts).find(|&e| !(0..steps).any(|t| is_seen(t, small, e))).unwrap_or(0);
        return Err(invalid(
            file,
            format!(
                "{pre}layer {} has {} experts but layer {} has {} (expert {} has no rows in layer {}); every layer must have the same experts",
                s.layers[small],
                counts[small],
                s.layers[big],
                counts[big],
                s.min_expert + missing as i64,
                s.layers[small]
            ),
        ));
    }
    let t = idx / (nl * experts);
    let l = (idx / experts) % nl;
    let e = idx % experts;
    let step = s.min_step + t as i64;
    if counts[0] < experts {
        return Err(invalid(
            file,
            format!("{pre}expert {} has no rows in any layer (experts run from {} to {})", s.min_expert + e as i64, s.min_expert, s.max_expert),
        ));
    }
    if (0..nl).all(|l| (0..experts).all(|e| !is_seen(t, l, e))) {
        return Err(invalid(
            file,
            format!("{pre}step {step} is missing (steps run from {} to {} and must be consecutive)", s.min_step, s.max_step),
        ));
    }
    Err(invalid(file, format!("{pre}no row for step {step}, layer {}, expert {}", s.layers[l], s.min_expert + e as i64)))
}

struct ParquetSource<'a> {
    file: &'a Path,
    names: &'a ColumnNames,
    /// The file's bytes when they are in memory (the bundled traces); else it is opened.
    data: Option<bytes::Bytes>,
}

type Batches = Box<dyn Iterator<Item = std::result::Result<RecordBatch, arrow::error::ArrowError>> + Send>;

impl ParquetSource<'_> {
    fn reader<T: parquet::file::reader::ChunkReader + 'static>(
        &self,
        builder: ParquetRecordBatchReaderBuilder<T>,
    ) -> Result<(Layout, Batches)> {
        let full = Layout::resolve(self.file, builder.schema(), self.names)?;
        let mut roots = vec![full.step, full.layer, full.expert, full.tokens];
        roots.extend(full.trace);
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots.iter().copied());
        let reader = builder
            .with_projection(mask)
            .with_batch_size(BATCH_ROWS)
            .build()
            .map_err(|e| invalid(self.file, format!("not a readable Parquet file: {e}")))?;
        // Column positions after projection.
        let lay = Layout::resolve(self.file, &reader.schema(), self.names)?;
        Ok((lay, Box::new(reader)))
    }
    fn not_readable(&self, e: parquet::errors::ParquetError) -> TraceError {
        invalid(self.file, format!("not a readable Parquet file (truncated or corrupt?): {e}"))
    }
    fn file(&self) -> Result<File> {
        File::open(self.file).map_err(|source| TraceError::Io { file: self.file.to_path_buf(), error: source })
    }
    /// The file's footer, read once for [`open_group`](Self::open_group).
    fn metadata(&self) -> Result<ArrowReaderMetadata> {
        let opts = ArrowReaderOptions::default();
        match &self.data {
            Some(b) => ArrowReaderMetadata::load(b, opts),
            None => ArrowReaderMetadata::load(&self.file()?, opts),
        }
        .map_err(|e| self.not_readable(e))
    }
    /// The batches of row group `g` alone.
    fn open_group(&self, meta: &ArrowReaderMetadata, g: usize) -> Result<(Layout, Batches)> {
        match &self.data {
            Some(b) => self.reader(ParquetRecordBatchReaderBuilder::new_with_metadata(b.clone(), meta.clone()).with_row_groups(vec![g])),
            None => self.reader(ParquetRecordBatchReaderBuilder::new_with_metadata(self.file()?, meta.clone()).with_row_groups(vec![g])),
        }
    }
}

impl BatchSource for ParquetSource<'_> {
    fn unit(&self) -> &'static str {
        "row"
    }
    fn row_base(&self) -> u64 {
        0
    }
    fn open(&self) -> Result<(Layout, Box<dyn Iterator<Item = std::result::Result<RecordBatch, arrow::error::ArrowError>>>)> {
        let (lay, batches) = match &self.data {
            Some(b) => self.reader(ParquetRecordBatchReaderBuilder::try_new(b.clone()).map_err(|e| self.not_readable(e))?)?,
            None => self.reader(ParquetRecordBatchReaderBuilder::try_new(self.file()?).map_err(|e| self.not_readable(e))?)?,
        };
        Ok((lay, batches))
    }
}

/// An integer column as stored, read without a widening copy.
enum IntCol {
    I32(Int32Array),
    I64(Int64Array),
}

impl IntCol {
    fn new(a: &ArrayRef) -> Option<IntCol> {
        Some(match a.data_type() {
            DataType::Int32 => IntCol::I32(a.as_any().downcast_ref::<Int32Array>()?.clone()),
            DataType::Int64 => IntCol::I64(a.as_any().downcast_ref::<Int64Array>()?.clone()),
            _ => IntCol::I64(arrow::compute::cast(a, &DataType::Int64).ok()?.as_any().downcast_ref::<Int64Array>()?.clone()),
        })
    }
    /// The values as int64: the column's own when it is int64, else widened into `buf`.
    fn values<'a>(&'a self, buf: &'a mut Vec<i64>) -> &'a [i64] {
        match self {
            IntCol::I32(a) => {
                buf.clear();
                buf.extend(a.values().iter().map(|&v| v as i64));
                buf
            }
            IntCol::I64(a) => a.values(),
        }
    }
}

/// The loads column as stored; integers become float64 as [`Cols`]'s cast makes them.
enum LoadCol {
    F64(Float64Array),
    I64(Int64Array),
}

impl LoadCol {
    fn new(a: &ArrayRef) -> Option<LoadCol> {
        Some(match a.data_type() {
            DataType::Float64 => LoadCol::F64(a.as_any().downcast_ref::<Float64Array>()?.clone()),
            DataType::Int64 => LoadCol::I64(a.as_any().downcast_ref::<Int64Array>()?.clone()),
            _ => LoadCol::F64(arrow::compute::cast(a, &DataType::Float64).ok()?.as_any().downcast_ref::<Float64Array>()?.clone()),
        })
    }
    /// The values as float64: the column's own, or converted into `buf`.
    fn values<'a>(&'a self, buf: &'a mut Vec<f64>) -> &'a [f64] {
        match self {
            LoadCol::F64(a) => a.values(),
            LoadCol::I64(a) => {
                buf.clear();
                buf.extend(a.values().iter().map(|&v| v as f64));
                buf
            }
        }
    }
}

/// Each of the columns `step`, `layer` and `expert`: its smallest and largest value over
/// the file, from the row groups' statistics in the footer. `None` when a row group
/// has none (or they are not integers).
fn footer_range(meta: &ArrowReaderMetadata, name: &str) -> Option<(i64, i64)> {
    use parquet::file::statistics::Statistics;
    let md = meta.metadata();
    let descr = md.file_metadata().schema_descr();
    let leaf = (0..descr.num_columns()).find(|&i| descr.column(i).path().parts() == [name.to_string()])?;
    let mut range: Option<(i64, i64)> = None;
    for g in md.row_groups() {
        let (lo, hi) = match g.column(leaf).statistics()? {
            Statistics::Int32(s) => (*s.min_opt()? as i64, *s.max_opt()? as i64),
            Statistics::Int64(s) => (*s.min_opt()?, *s.max_opt()?),
            _ => return None,
        };
        range = Some(range.map_or((lo, hi), |(a, b)| (a.min(lo), b.max(hi))));
    }
    range
}

/// The common case read with one decoding of the file instead of two: a file of one
/// trace (no trace column) whose footer statistics give the step, layer and expert
/// ranges, as many rows as the dense array of those ranges has cells, and loads that
/// float32 holds exactly. The dense array is allocated from the footer, and the row
/// groups fill it in parallel, every row checked as in the two passes.
///
/// `None` when the file is not such a file or anything is wrong with it (a value out
/// of the footer's ranges, a duplicate row, a bad load, a decoding error, ...): the
/// caller then reads it in two passes, which learn the shape from the rows and name
/// any problem as always. The cells start as a NaN that no load becomes; when every
/// row lies in the ranges and no cell is left with it, the rows (as many as the
/// cells) filled every cell once: no row is a duplicate, the ranges are the trace's
/// shape and nothing is missing, so the result is the two passes' result. (No
/// per-cell mark is set as the rows arrive: an atomic one cost more than the fill.)
fn read_parquet_once(file: &Path, names: &ColumnNames, src: &ParquetSource) -> Option<Result<Vec<Trace>>> {
    use rayon::prelude::*;
    use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
    let meta = src.metadata().ok()?;
    let full = Layout::resolve(file, meta.schema(), names).ok()?;
    if full.trace.is_some() {
        return None;
    }
    let (s0, s1) = footer_range(&meta, &names.step)?;
    let (l0, l1) = footer_range(&meta, &names.layer)?;
    let (e0, e1) = footer_range(&meta, &names.expert)?;
    let span = |lo: i64, hi: i64| (hi as i128 - lo as i128 + 1) as u128;
    let (steps, layers, experts) = (span(s0, s1), span(l0, l1), span(e0, e1));
    let rows: u128 = meta.metadata().row_groups().iter().map(|g| g.num_rows().max(0) as u128).sum();
    if rows == 0 || steps * layers * experts != rows {
        return None;
    }
    // The footer's row count is only a claim until the rows are decoded: a file that
    // claims more rows than its bytes can plausibly hold, or more cells than this
    // machine can allocate, goes to the two passes, which size everything from the
    // rows they decode and name what is wrong.
    let bytes = match &src.data {
        Some(b) => b.len() as u64,
        None => std::fs::metadata(file).ok()?.len(),
    };
    if !plausible_rows(rows, bytes) {
        return None;
    }
    let (steps, layers, experts) = (steps as usize, layers as usize, experts as usize);
    let cells = usize::try_from(rows).ok()?;
    const UNSET: u32 = 0x7fc0_dead;
    let mut loads: Vec<f32> = Vec::new();
    loads.try_reserve_exact(cells).ok()?;
    loads.par_extend(rayon::iter::repeat_n(f32::from_bits(UNSET), cells));
    {
        // SAFETY: AtomicU32 has the size and alignment of f32 (both 4 bytes, 4-aligned),
        // and the vector is reached only through this view while it lives.
        let cells = unsafe { &*(loads.as_mut_slice() as *mut [f32] as *const [AtomicU32]) };
        let groups = meta.metadata().num_row_groups();
        let filled = (0..groups).into_par_iter().all(|g| {
            let fill = || -> Option<()> {
                let (lay, batches) = src.open_group(&meta, g).ok()?;
                // Each batch's columns as int64 and float64 slices (buffers reused).
                let (mut bs, mut bl, mut be, mut bv) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
                for b in batches {
                    let b = b.ok()?;
                    let (step, layer, expert) =
                        (IntCol::new(b.column(lay.step))?, IntCol::new(b.column(lay.layer))?, IntCol::new(b.column(lay.expert))?);
                    let tokens = LoadCol::new(b.column(lay.tokens))?;
                    if (0..b.num_columns()).any(|c| b.column(c).null_count() > 0) {
                        return None;
                    }
                    let (step, layer, expert) = (step.values(&mut bs), layer.values(&mut bl), expert.values(&mut be));
                    let rows = step.iter().zip(layer).zip(expert).zip(tokens.values(&mut bv));
                    for (((&step, &layer), &expert), &v) in rows {
                        let (t, l, e) = (step.wrapping_sub(s0) as u64, layer.wrapping_sub(l0) as u64, expert.wrapping_sub(e0) as u64);
                        if t >= steps as u64 || l >= layers as u64 || e >= experts as u64 {
                            return None;
                        }
                        if !(v.is_finite() && v >= 0.0) || (v as f32) as f64 != v {
                            return None;
                        }
                        let idx = (t as usize * layers + l as usize) * experts + e as usize;
                        cells[idx].store((v as f32).to_bits(), Relaxed);
                    }
                }
                Some(())
            };
            fill().is_some()
        });
        if !filled {
            return None;
        }
    }
    if !loads.par_chunks(1 << 16).all(|c| c.iter().all(|v| v.to_bits() != UNSET)) {
        return None;
    }
    let trace = Trace::from_dense(stem_name(file), file, s0, (l0..=l1).collect(), (e0..=e1).collect(), Loads::F32(loads));
    Some(trace.map(|t| vec![t]))
}

/// Whether a Parquet file of `bytes` bytes can hold `rows` rows of a dense trace.
/// Real traces hold about 0.4–0.7 rows a byte (four columns; the loads hardly
/// compress). The most regular file, constant loads in step, layer, expert order,
/// held 271 rows a byte with zstd (20,000 × 12 × 128, pyarrow's defaults). 1,024 rows
/// a byte is above any of these and far below a forged footer's claim of billions
/// of rows in a small file; a file above it is still read, in the two passes.
fn plausible_rows(rows: u128, bytes: u64) -> bool {
    rows <= 1024 * bytes as u128
}

/// One decoding in parallel for the common file ([`read_parquet_once`]); else row
/// groups in parallel when there are several and threads to read them, else (and
/// for any file with a problem, to name it) one pass after the other.
fn read_parquet_source(file: &Path, names: &ColumnNames, src: &ParquetSource) -> Result<Vec<Trace>> {
    if let Some(r) = read_parquet_once(file, names, src) {
        return r;
    }
    match read_parquet_parallel(file, names, src) {
        Some(r) => r,
        None => read_long(file, names, src),
    }
}

pub(super) fn read_parquet(file: &Path, names: &ColumnNames) -> Result<Vec<Trace>> {
    read_parquet_source(file, names, &ParquetSource { file, names, data: None })
}

/// A Parquet file held in memory; `file` names it in traces and messages.
pub(super) fn read_parquet_bytes(file: &Path, data: &'static [u8], names: &ColumnNames) -> Result<Vec<Trace>> {
    read_parquet_source(file, names, &ParquetSource { file, names, data: Some(bytes::Bytes::from_static(data)) })
}

struct CsvSource<'a> {
    file: &'a Path,
    names: &'a ColumnNames,
    schema: Arc<Schema>,
}

impl BatchSource for CsvSource<'_> {
    fn unit(&self) -> &'static str {
        "line"
    }
    fn row_base(&self) -> u64 {
        1
    }
    fn open(&self) -> Result<(Layout, Box<dyn Iterator<Item = std::result::Result<RecordBatch, arrow::error::ArrowError>>>)> {
        let f = File::open(self.file).map_err(|source| TraceError::Io { file: self.file.to_path_buf(), error: source })?;
        let lay = Layout::resolve(self.file, &self.schema, self.names)?;
        let reader = arrow::csv::ReaderBuilder::new(self.schema.clone())
            .with_header(true)
            .with_batch_size(BATCH_ROWS)
            .build(f)
            .map_err(|e| invalid(self.file, format!("cannot read as CSV: {e}")))?;
        Ok((lay, Box::new(reader)))
    }
    /// Arrow reports "Error while parsing value 'x' as type 'T' for column C at line N",
    /// N counting data rows; say it with the file's line number and the column's name.
    fn describe(&self, e: arrow::error::ArrowError) -> String {
        let msg = e.to_string();
        let parsed = (|| {
            let value = msg.split("parsing value ").nth(1)?.split(" as type").next()?;
            let ty = msg.split("as type '").nth(1)?.split('\'').next()?;
            let col: usize = msg.split("for column ").nth(1)?.split(' ').next()?.parse().ok()?;
            let line: u64 = msg.split(" at line ").nth(1)?.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()?;
            let name = self.schema.fields().get(col)?.name().clone();
            let want = if ty == "Float64" { "a number" } else { "an integer" };
            Some(format!("line {}: column {name:?} holds {value}, which is not {want}", line + 1))
        })();
        parsed.unwrap_or_else(|| format!("cannot read as CSV: {msg}"))
    }
}

pub(super) fn read_csv(file: &Path, names: &ColumnNames) -> Result<Vec<Trace>> {
    let f = File::open(file).map_err(|source| TraceError::Io { file: file.to_path_buf(), error: source })?;
    let (inferred, _) = arrow::csv::reader::Format::default()
        .with_header(true)
        .infer_schema(f, Some(1000))
        .map_err(|e| invalid(file, format!("cannot read as CSV: {e}")))?;
    // The needed columns get fixed types, so that a value that does not parse is
    // reported with its line rather than silently changing a column's type.
    let fields: Vec<Field> = inferred
        .fields()
        .iter()
        .map(|f| {
            let n = f.name();
            let ty = if n == &names.step || n == &names.layer || n == &names.expert {
                DataType::Int64
            } else if n == &names.tokens {
                DataType::Float64
            } else {
                DataType::Utf8
            };
            Field::new(n, ty, true)
        })
        .collect();
    let schema = Arc::new(Schema::new(fields));
    read_long(file, names, &CsvSource { file, names, schema })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int64Array, StringArray};
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::WriterProperties;

    /// Rows `(trace, step, layer, expert, tokens)` as long Parquet, 7 rows a row group.
    fn write(path: &Path, rows: &[(&str, i64, i64, i64, f64)]) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("trace", DataType::Utf8, false),
            Field::new("step", DataType::Int64, false),
            Field::new("layer", DataType::Int64, false),
            Field::new("expert", DataType::Int64, false),
            Field::new("tokens", DataType::Float64, false),
        ]));
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.3))),
                Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.4))),
            ],
        )
        .unwrap();
        let props = WriterProperties::builder().set_max_row_group_size(7).build();
        let mut w = ArrowWriter::try_new(File::create(path).unwrap(), schema, Some(props)).unwrap();
        w.write(&b).unwrap();
        w.close().unwrap();
    }

    /// Two traces interleaved in an order no pass could assume: "b" first, layers
    /// descending, steps shuffled; "a" has a value that is not an f32.
    fn rows() -> Vec<(&'static str, i64, i64, i64, f64)> {
        let mut rows = Vec::new();
        for (i, step) in [12i64, 10, 11].into_iter().enumerate() {
            for layer in [5i64, 2] {
                for expert in 0..3i64 {
                    let v = (step * 100 + layer * 10 + expert) as f64;
                    rows.push(("b", step, layer, expert, v));
                    rows.push(("a", step - 10, layer + 1, expert + 7, if i == 1 && expert == 2 { v + 0.1 } else { v }));
                }
            }
        }
        rows
    }

    fn both(path: &Path) -> (Option<Result<Vec<Trace>>>, Result<Vec<Trace>>) {
        let names = ColumnNames::default();
        let src = ParquetSource { file: path, names: &names, data: None };
        let pool = rayon::ThreadPoolBuilder::new().num_threads(4).build().unwrap();
        (pool.install(|| read_parquet_parallel(path, &names, &src)), read_long(path, &names, &src))
    }

    fn summary(ts: &[Trace]) -> Vec<(String, i64, Vec<i64>, Vec<i64>, Vec<u64>)> {
        ts.iter()
            .map(|t| {
                let loads = (0..t.steps())
                    .flat_map(|s| (0..t.layers()).flat_map(move |l| (0..t.experts()).map(move |e| t.load(s, l, e).to_bits())))
                    .collect();
                (t.name.clone(), t.first_step, t.layer_ids.clone(), t.expert_ids.clone(), loads)
            })
            .collect()
    }

    #[test]
    fn row_groups_in_parallel_read_what_one_pass_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        let rows = rows();
        write(&path, &rows);
        let (par, seq) = both(&path);
        let (par, seq) = (par.expect("several row groups: the parallel reader runs").unwrap(), seq.unwrap());
        assert_eq!(summary(&par), summary(&seq));
        // independently: "b" first (its first row comes first), its shape and a load
        assert_eq!(par.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["b", "a"]);
        assert_eq!((par[0].first_step, par[0].layer_ids.clone(), par[0].expert_ids.clone()), (10, vec![2, 5], vec![0, 1, 2]));
        assert_eq!(par[0].load(2, 1, 1), 1251.0);
        assert_eq!(par[1].load(0, 0, 2), 1022.1); // step 10 - 10, layer 2 + 1, expert 2 + 7
    }

    /// Rows `(step, layer, expert, tokens)` of one trace as Parquet with no trace column
    /// (`step` int64, `layer` and `expert` int32 as `expertcast synth` writes them,
    /// `tokens` int64 when `int_tokens` else float64), 7 rows a row group, with or
    /// without the footer's statistics.
    fn write_one(path: &Path, rows: &[(i64, i64, i64, f64)], int_tokens: bool, stats: bool) {
        use arrow::array::Int32Array;
        use parquet::file::properties::EnabledStatistics;
        let schema = Arc::new(Schema::new(vec![
            Field::new("step", DataType::Int64, false),
            Field::new("layer", DataType::Int32, false),
            Field::new("expert", DataType::Int32, false),
            Field::new("tokens", if int_tokens { DataType::Int64 } else { DataType::Float64 }, false),
        ]));
        let tokens: ArrayRef = if int_tokens {
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.3 as i64)))
        } else {
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.3)))
        };
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.1 as i32))),
                Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.2 as i32))),
                tokens,
            ],
        )
        .unwrap();
        let level = if stats { EnabledStatistics::Chunk } else { EnabledStatistics::None };
        let props = WriterProperties::builder().set_max_row_group_size(7).set_statistics_enabled(level).build();
        let mut w = ArrowWriter::try_new(File::create(path).unwrap(), schema, Some(props)).unwrap();
        w.write(&b).unwrap();
        w.close().unwrap();
    }

    /// Steps 20..23, layers 3 and 4, experts -1..1, in an order no reader could assume
    /// (steps and layers descending, experts rotating); loads `step*100 + layer*10 + expert`.
    fn one_trace_rows() -> Vec<(i64, i64, i64, f64)> {
        let mut rows = Vec::new();
        for step in [23i64, 22, 21, 20] {
            for layer in [4i64, 3] {
                for k in 0..3 {
                    let expert = (k + step) % 3 - 1;
                    rows.push((step, layer, expert, (step * 100 + layer * 10 + expert) as f64));
                }
            }
        }
        rows
    }

    fn once_and_long(path: &Path) -> (Option<Result<Vec<Trace>>>, Result<Vec<Trace>>) {
        let names = ColumnNames::default();
        let src = ParquetSource { file: path, names: &names, data: None };
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        (pool.install(|| read_parquet_once(path, &names, &src)), read_long(path, &names, &src))
    }

    #[test]
    fn one_decoding_reads_what_two_passes_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("one.parquet");
        for int_tokens in [true, false] {
            write_one(&path, &one_trace_rows(), int_tokens, true);
            let (once, long) = once_and_long(&path);
            let (once, long) = (once.expect("a dense file of one trace with statistics").unwrap(), long.unwrap());
            assert_eq!(summary(&once), summary(&long));
            // independently: the shape and loads from the rows' own formula
            let t = &once[0];
            assert_eq!((t.name.as_str(), t.first_step, t.layer_ids.clone(), t.expert_ids.clone()), ("one", 20, vec![3, 4], vec![-1, 0, 1]));
            for (s, l, e) in [(0usize, 0usize, 0usize), (3, 1, 2), (1, 0, 1)] {
                let want = ((20 + s as i64) * 100 + (3 + l as i64) * 10 + (e as i64 - 1)) as f64;
                assert_eq!(t.load(s, l, e), want);
            }
        }
    }

    #[test]
    fn a_footer_claiming_more_rows_than_the_bytes_hold_is_not_trusted() {
        // the bound, by hand
        assert!(plausible_rows(1024 * 1000, 1000));
        assert!(!plausible_rows(1024 * 1000 + 1, 1000));
        assert!(!plausible_rows(1 << 40, 1 << 20));
        // and a real file's claim lies well inside it
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("one.parquet");
        write_one(&path, &one_trace_rows(), true, true);
        let bytes = std::fs::metadata(&path).unwrap().len();
        assert!(plausible_rows(one_trace_rows().len() as u128, bytes));
        assert!(!plausible_rows(1025 * bytes as u128, bytes));
    }

    #[test]
    fn files_one_decoding_cannot_take_go_to_the_two_passes_with_their_messages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("one.parquet");
        let good = one_trace_rows();
        let n = good.len();
        let with = |f: &dyn Fn(&mut Vec<(i64, i64, i64, f64)>)| {
            let mut r = good.clone();
            f(&mut r);
            r
        };
        // (rows, without the footer statistics, what the two passes make of it: "ok" or words of their message)
        let cases: Vec<(Vec<(i64, i64, i64, f64)>, bool, &str)> = vec![
            (good.clone(), true, "ok: no statistics"),
            (with(&|r| r.iter_mut().filter(|x| x.1 == 4).for_each(|x| x.1 = 7)), false, "ok: layers 3 and 7"),
            (with(&|r| r[5].3 += 0.1), false, "ok: a load float32 does not hold"),
            (with(&|r| r[n - 1] = r[0]), false, "duplicate row"),
            (with(&|r| r[9].3 = -2.0), false, "load -2"),
            (with(&|r| r[13].3 = f64::NAN), false, "NaN"),
            (good[..n - 1].to_vec(), false, "no row for"),
        ];
        for (i, (rows, no_stats, want)) in cases.into_iter().enumerate() {
            write_one(&path, &rows, false, !no_stats);
            let (once, long) = once_and_long(&path);
            assert!(once.is_none(), "case {i} ({want}) is not for one decoding");
            let got = read_parquet(&path, &ColumnNames::default());
            match long {
                Ok(t) => {
                    assert!(want.starts_with("ok"), "case {i}: {want}");
                    assert_eq!(summary(&got.unwrap()), summary(&t));
                }
                Err(e) => {
                    assert!(e.to_string().contains(want), "case {i}: {want}: {e}");
                    assert_eq!(got.err().expect(want).to_string(), e.to_string());
                }
            }
        }
        // a trace column: the two passes
        let path = dir.path().join("t.parquet");
        write(&path, &rows());
        assert!(once_and_long(&path).0.is_none());
    }

    #[test]
    fn a_bad_file_read_in_parallel_gets_the_one_pass_message() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        let good = rows();
        let n = good.len();
        let cases: Vec<(&str, Vec<(&str, i64, i64, i64, f64)>)> = vec![
            // the same cell in the first and the last row group
            ("duplicate row", {
                let mut r = good.clone();
                r[n - 1] = r[0];
                r
            }),
            // a later duplicate than one in another row group: the first in file order is named
            ("duplicate row", {
                let mut r = good.clone();
                r[n - 1] = r[1];
                r[20] = r[3];
                r
            }),
            ("load -1", {
                let mut r = good.clone();
                r[30].4 = -1.0;
                r[9].4 = f64::NAN;
                r
            }),
            ("no row for", good[..n - 2].to_vec()),
        ];
        for (want, rows) in cases {
            write(&path, &rows);
            let (par, seq) = both(&path);
            let seq = seq.err().expect(want).to_string();
            if let Some(par) = par {
                assert_eq!(par.err().expect(want).to_string(), seq);
            }
            assert!(seq.contains(want) || want == "load -1" && seq.contains("NaN"), "{want}: {seq}");
        }
    }
}
