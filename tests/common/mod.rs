//! Helpers shared by the integration tests: run the built binary, write small
//! traces, and read the bundled traces independently of expertcast's reader.
#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// The repository root (`EXPERTCAST_ROOT` overrides it where the tests run from a
/// copy of the tree, as on the GPU machine).
pub fn root() -> PathBuf {
    std::env::var_os("EXPERTCAST_ROOT").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// The binary under test (`EXPERTCAST_BIN` overrides it likewise).
pub fn bin() -> PathBuf {
    std::env::var_os("EXPERTCAST_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_expertcast")))
}

pub fn bundled(name: &str) -> PathBuf {
    root().join("datasets").join(format!("{name}.parquet"))
}

/// Runs `expertcast ARGS` from the repository root.
pub fn expertcast(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .current_dir(root())
        .output()
        .expect("the binary runs")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// One long-format row: step, layer, expert, tokens.
pub type Row = (i64, i32, i32, f64);

/// A full trace of `steps × layers × experts` rows with loads from `load(t, l, e)`.
pub fn grid(steps: i64, layers: i32, experts: i32, load: impl Fn(i64, i32, i32) -> f64) -> Vec<Row> {
    let mut v = Vec::new();
    for t in 0..steps {
        for l in 0..layers {
            for e in 0..experts {
                v.push((t, l, e, load(t, l, e)));
            }
        }
    }
    v
}

pub fn write_parquet_batch(path: &Path, batch: &RecordBatch) {
    let mut w = ArrowWriter::try_new(File::create(path).unwrap(), batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

/// Writes rows as long Parquet: step int64, layer int32, expert int32, tokens float64.
pub fn write_parquet(path: &Path, rows: &[Row]) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("step", DataType::Int64, false),
        Field::new("layer", DataType::Int32, false),
        Field::new("expert", DataType::Int32, false),
        Field::new("tokens", DataType::Float64, false),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
        Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.1))),
        Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.2))),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.3))),
    ];
    write_parquet_batch(path, &RecordBatch::try_new(schema, cols).unwrap());
}

/// Writes a `.npy` file (format 1.0) holding `data`, the raw little-endian values.
pub fn write_npy(path: &Path, descr: &str, shape: &[usize], data: &[u8]) {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({},), }}", dims.join(", "));
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(h.len() as u16).to_le_bytes());
    bytes.extend_from_slice(h.as_bytes());
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).unwrap();
}

pub fn write_csv(path: &Path, rows: &[Row]) {
    let mut s = String::from("step,layer,expert,tokens\n");
    for r in rows {
        s.push_str(&format!("{},{},{},{}\n", r.0, r.1, r.2, r.3));
    }
    std::fs::write(path, s).unwrap();
}

/// A bundled trace read with the parquet crate alone: `p[t][l][e]` in f64.
pub struct Reference {
    pub steps: usize,
    pub layers: usize,
    pub experts: usize,
    pub first_step: i64,
    pub p: Vec<f64>,
}

impl Reference {
    pub fn load(path: &Path) -> Reference {
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap()).unwrap().build().unwrap();
        let mut rows: Vec<(i64, i64, i64, f64)> = Vec::new();
        for b in reader {
            let b = b.unwrap();
            let col = |n: &str| b.column(b.schema().index_of(n).unwrap()).clone();
            let as_i64 = |a: ArrayRef| -> Vec<i64> {
                let c = arrow::compute::cast(&a, &DataType::Int64).unwrap();
                c.as_any().downcast_ref::<Int64Array>().unwrap().values().to_vec()
            };
            let tok = arrow::compute::cast(&col("tokens"), &DataType::Float64).unwrap();
            let tok = tok.as_any().downcast_ref::<Float64Array>().unwrap();
            let (s, l, e) = (as_i64(col("step")), as_i64(col("layer")), as_i64(col("expert")));
            for i in 0..b.num_rows() {
                rows.push((s[i], l[i], e[i], tok.value(i)));
            }
        }
        let first_step = rows.iter().map(|r| r.0).min().unwrap();
        let steps = (rows.iter().map(|r| r.0).max().unwrap() - first_step + 1) as usize;
        let layers = (rows.iter().map(|r| r.1).max().unwrap() + 1) as usize;
        let experts = (rows.iter().map(|r| r.2).max().unwrap() + 1) as usize;
        let mut load = vec![0.0; steps * layers * experts];
        for r in &rows {
            load[((r.0 - first_step) as usize * layers + r.1 as usize) * experts + r.2 as usize] = r.3;
        }
        let mut p = load.clone();
        for c in p.chunks_mut(experts) {
            let s: f64 = c.iter().sum();
            c.iter_mut().for_each(|x| *x /= s);
        }
        Reference { steps, layers, experts, first_step, p }
    }
    pub fn p(&self, t: usize, l: usize, e: usize) -> f64 {
        self.p[(t * self.layers + l) * self.experts + e]
    }
    /// Float64 two-pass (mean, population variance, range) of the window ending at `t`.
    pub fn window(&self, l: usize, e: usize, w: usize, t: usize) -> (f64, f64, f64) {
        let x: Vec<f64> = (t + 1 - w..=t).map(|s| self.p(s, l, e)).collect();
        let m = x.iter().sum::<f64>() / w as f64;
        let v = x.iter().map(|a| (a - m) * (a - m)).sum::<f64>() / w as f64;
        let hi = x.iter().cloned().fold(f64::MIN, f64::max);
        let lo = x.iter().cloned().fold(f64::MAX, f64::min);
        (m, v, hi - lo)
    }
}

/// Reads a whole Parquet file into one batch.
pub fn read_all(path: &Path) -> RecordBatch {
    let b = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap()).unwrap();
    let schema = b.schema().clone();
    let batches: Vec<RecordBatch> = b.build().unwrap().map(|b| b.unwrap()).collect();
    arrow::compute::concat_batches(&schema, &batches).unwrap()
}

pub fn col_i64(b: &RecordBatch, name: &str) -> Vec<i64> {
    let a = arrow::compute::cast(b.column(b.schema().index_of(name).unwrap()), &DataType::Int64).unwrap();
    let a = a.as_any().downcast_ref::<Int64Array>().unwrap();
    (0..a.len()).map(|i| if a.is_null(i) { i64::MIN } else { a.value(i) }).collect()
}

pub fn col_f64(b: &RecordBatch, name: &str) -> Vec<f64> {
    let a = b.column(b.schema().index_of(name).unwrap());
    let a = a.as_any().downcast_ref::<Float64Array>().unwrap();
    (0..a.len()).map(|i| if a.is_null(i) { f64::NAN } else { a.value(i) }).collect()
}

pub fn col_str(b: &RecordBatch, name: &str) -> Vec<String> {
    let a = b.column(b.schema().index_of(name).unwrap());
    let a = a.as_any().downcast_ref::<StringArray>().unwrap();
    (0..a.len()).map(|i| a.value(i).to_string()).collect()
}

pub fn column_names(b: &RecordBatch) -> Vec<String> {
    b.schema().fields().iter().map(|f| f.name().clone()).collect()
}
