//! The outputs: row types, Parquet schemas and batches of the files of
//! docs/reference.md ("Output directory"), and the [`Sink`]s a run writes them to:
//! a run's directory ([`RunDir`]) or a sweep's hive dataset ([`hive::HiveSink`]).
//!
//! Each file is written to a hidden temporary name and renamed when complete, so a
//! reader never sees half a file.
//!
//! ```
//! use std::sync::Arc;
//! use arrow::array::{Int64Array, RecordBatch};
//! use arrow::datatypes::{DataType, Field, Schema};
//! use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
//! let dir = tempfile::tempdir().unwrap();
//! let schema = Arc::new(Schema::new(vec![Field::new("step", DataType::Int64, false)]));
//! let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![1, 2]))]).unwrap();
//! let mut w = expertcast::output::AtomicParquet::create(dir.path(), "x.parquet", schema).unwrap();
//! w.write(&batch).unwrap();
//! w.finish().unwrap();
//! let f = std::fs::File::open(dir.path().join("x.parquet")).unwrap();
//! let back: Vec<_> = ParquetRecordBatchReaderBuilder::try_new(f).unwrap().build().unwrap().collect();
//! assert_eq!(back[0].as_ref().unwrap(), &batch);
//! ```

pub mod hive;
mod rows;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use arrow::array::{ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

pub use rows::*;

/// The tables of a run, in the order their files are published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Table {
    LayerStats,
    WindowStats,
    States,
    Metrics,
    Forecasts,
}

impl Table {
    /// The file's name in a run's directory.
    pub fn file_name(self) -> &'static str {
        match self {
            Table::LayerStats => "layer_stats.parquet",
            Table::WindowStats => "window_stats.parquet",
            Table::States => "states.parquet",
            Table::Metrics => "metrics.parquet",
            Table::Forecasts => "forecasts.parquet",
        }
    }
    /// The table's name in a sweep's dataset (its folder).
    pub fn name(self) -> &'static str {
        self.file_name().trim_end_matches(".parquet")
    }
    pub fn schema(self) -> SchemaRef {
        match self {
            Table::LayerStats => layer_stats_schema(),
            Table::WindowStats => window_stats_schema(),
            Table::States => states_schema(),
            Table::Metrics => metrics_schema(),
            Table::Forecasts => forecasts_schema(),
        }
    }
}

/// Where a run's tables go. The pipeline calls [`write`](Sink::write) with batches of
/// a table's schema in output order, then [`finish`](Sink::finish) once with the
/// manifest; until then nothing is published.
pub trait Sink {
    fn write(&mut self, table: Table, batch: &RecordBatch) -> anyhow::Result<()>;
    fn finish(&mut self, manifest: &serde_json::Value) -> anyhow::Result<()>;
}

/// A run's output directory: one Parquet file per table, `manifest.json` last. The
/// directory and its temporary files are created when the first table arrives (the
/// pipeline has read and checked every input by then, so bad input leaves nothing).
pub struct RunDir {
    dir: PathBuf,
    tables: Vec<Table>,
    files: Option<Vec<(Table, AtomicParquet)>>,
}

impl RunDir {
    /// A sink for `tables` in `dir`; nothing is created yet.
    pub fn new(dir: &Path, tables: &[Table]) -> RunDir {
        RunDir { dir: dir.to_path_buf(), tables: tables.to_vec(), files: None }
    }

    fn files(&mut self) -> anyhow::Result<&mut Vec<(Table, AtomicParquet)>> {
        if self.files.is_none() {
            std::fs::create_dir_all(&self.dir).with_context(|| format!("cannot create {}", self.dir.display()))?;
            let mut files = Vec::new();
            for &t in &self.tables {
                files.push((t, AtomicParquet::create(&self.dir, t.file_name(), t.schema())?));
            }
            self.files = Some(files);
        }
        Ok(self.files.as_mut().expect("just created"))
    }
}

impl Sink for RunDir {
    fn write(&mut self, table: Table, batch: &RecordBatch) -> anyhow::Result<()> {
        let (_, w) = self.files()?.iter_mut().find(|(t, _)| *t == table).with_context(|| format!("{} was not opened", table.file_name()))?;
        w.write(batch)
    }
    fn finish(&mut self, manifest: &serde_json::Value) -> anyhow::Result<()> {
        let mut files = std::mem::take(self.files()?);
        files.sort_by_key(|(t, _)| *t);
        for (_, w) in files {
            w.finish()?;
        }
        // Manifest last: its presence marks a complete run.
        write_atomic(&self.dir, "manifest.json", serde_json::to_string_pretty(manifest)?.as_bytes())
    }
}

/// A Parquet file that appears under its final name only once [`finish`](Self::finish)
/// succeeds; dropped unfinished, it leaves nothing behind.
pub struct AtomicParquet {
    writer: Option<ArrowWriter<File>>,
    tmp: PathBuf,
    dest: PathBuf,
}

impl AtomicParquet {
    pub fn create(dir: &Path, name: &str, schema: SchemaRef) -> anyhow::Result<Self> {
        let dest = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp"));
        let f = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
            .set_max_row_group_size(1 << 20)
            .build();
        let writer = ArrowWriter::try_new(f, schema, Some(props))?;
        Ok(AtomicParquet { writer: Some(writer), tmp, dest })
    }
    pub fn write(&mut self, batch: &RecordBatch) -> anyhow::Result<()> {
        self.writer.as_mut().expect("not finished").write(batch).with_context(|| format!("writing {}", self.dest.display()))
    }
    pub fn finish(mut self) -> anyhow::Result<PathBuf> {
        self.writer.take().expect("finish once").close().with_context(|| format!("writing {}", self.dest.display()))?;
        std::fs::rename(&self.tmp, &self.dest).with_context(|| format!("renaming to {}", self.dest.display()))?;
        Ok(self.dest.clone())
    }
}

impl Drop for AtomicParquet {
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `bytes` to `dir/name` atomically.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join(name)).with_context(|| format!("cannot rename {}", tmp.display()))?;
    Ok(())
}

/// A schema from `(name, type, nullable)` columns.
fn schema(cols: &[(&str, DataType, bool)]) -> SchemaRef {
    Arc::new(Schema::new(cols.iter().map(|(n, t, null)| Field::new(*n, t.clone(), *null)).collect::<Vec<_>>()))
}

use DataType::{Float64 as F64, Int32 as I32, Int64 as I64, Utf8 as STR};

/// `layer_stats.parquet`.
pub fn layer_stats_schema() -> SchemaRef {
    let v = |n| (n, F64, false);
    schema(&[("trace", STR, false), ("layer", I32, false), ("window_size", I32, false), ("step", I64, false), v("var_mean"), v("var_max"), v("range_mean"), v("range_max")])
}

/// `window_stats.parquet` (with `--stats-detail expert`).
pub fn window_stats_schema() -> SchemaRef {
    let v = |n| (n, F64, false);
    let ids = [("trace", STR, false), ("layer", I32, false), ("expert", I32, false), ("window_size", I32, false), ("step", I64, false)];
    schema(&[&ids[..], &[v("mean"), v("variance"), v("range")]].concat())
}

/// `states.parquet`.
pub fn states_schema() -> SchemaRef {
    schema(&[("trace", STR, false), ("layer", I32, false), ("window_size", I32, false), ("kappa", F64, false), ("transition_step", I64, true), ("final_std", F64, true)])
}

/// `metrics.parquet`.
pub fn metrics_schema() -> SchemaRef {
    let m = |n| (n, F64, true);
    let keys = [("trace", STR, false), ("layer", I32, false), ("forecaster", STR, false), ("horizon", I32, false), ("regime", STR, false)];
    schema(&[&keys[..], &[("origins", I64, false), m("mae_pp"), m("rmse_pp"), m("tv_pct"), ("fallbacks", I64, false)]].concat())
}

/// `forecasts.parquet` (with `--save-forecasts`).
pub fn forecasts_schema() -> SchemaRef {
    let ids = [("trace", STR, false), ("layer", I32, false), ("expert", I32, false), ("forecaster", STR, false), ("origin", I64, false)];
    schema(&[&ids[..], &[("k", I32, false), ("predicted", F64, false), ("actual", F64, false), ("stderr", F64, true)]].concat())
}

/// Column builders, one call per column, in schema order.
pub fn strs(v: impl IntoIterator<Item = impl AsRef<str>>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(v))
}
pub fn i32s(v: impl IntoIterator<Item = i64>) -> ArrayRef {
    Arc::new(Int32Array::from_iter_values(v.into_iter().map(|x| x as i32)))
}
pub fn i64s(v: impl IntoIterator<Item = i64>) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(v))
}
pub fn opt_i64s(v: impl IntoIterator<Item = Option<i64>>) -> ArrayRef {
    Arc::new(Int64Array::from_iter(v))
}
pub fn f64s(v: impl IntoIterator<Item = f64>) -> ArrayRef {
    Arc::new(Float64Array::from_iter_values(v))
}
pub fn opt_f64s(v: impl IntoIterator<Item = Option<f64>>) -> ArrayRef {
    Arc::new(Float64Array::from_iter(v))
}

pub fn batch(schema: &SchemaRef, cols: Vec<ArrayRef>) -> anyhow::Result<RecordBatch> {
    Ok(RecordBatch::try_new(schema.clone(), cols)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file tables of docs/reference.md and README.md list every column of every
    /// schema, in order, so the docs cannot drift from the files.
    #[test]
    fn the_docs_list_every_column_in_order() {
        let docs = [("docs/reference.md", include_str!("../../docs/reference.md")), ("README.md", include_str!("../../README.md"))];
        let schemas = [
            ("layer_stats.parquet", layer_stats_schema()),
            ("window_stats.parquet", window_stats_schema()),
            ("states.parquet", states_schema()),
            ("metrics.parquet", metrics_schema()),
            ("forecasts.parquet", forecasts_schema()),
        ];
        for (doc, text) in docs {
            for (file, schema) in &schemas {
                let want: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                let row = text
                    .lines()
                    .find(|l| l.starts_with(&format!("| `{file}`")))
                    .unwrap_or_else(|| panic!("{doc} has no table row for {file}"));
                let cols = row.trim_end_matches('|').rsplit('|').next().unwrap().trim();
                assert_eq!(cols, want.join(", "), "{doc}, {file}");
            }
        }
    }
}
