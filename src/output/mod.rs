//! The outputs: row types, Parquet schemas and batches of the files of
//! docs/reference.md ("Output directory"), and the [`Sink`]s a run writes them to:
//! a run's directory ([`RunDir`]) or a sweep's hive dataset ([`hive::HiveSink`]).
//!
//! Each file is written to a hidden temporary file of its own (a random name created
//! with `O_EXCL`, so never through an existing file or link) and renamed when
//! complete, so a reader never sees half a file. A run's directory is locked while a
//! process writes it, and its old `manifest.json` goes before anything else changes:
//! a directory with a manifest holds one complete run.
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
use arrow::array::{Array, ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_writer::ArrowRowGroupWriterFactory;
use parquet::file::writer::SerializedFileWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
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
    Placement,
}

impl Table {
    pub const ALL: [Table; 6] = [Table::LayerStats, Table::WindowStats, Table::States, Table::Metrics, Table::Forecasts, Table::Placement];

    /// The file's name in a run's directory.
    pub fn file_name(self) -> &'static str {
        match self {
            Table::LayerStats => "layer_stats.parquet",
            Table::WindowStats => "window_stats.parquet",
            Table::States => "states.parquet",
            Table::Metrics => "metrics.parquet",
            Table::Forecasts => "forecasts.parquet",
            Table::Placement => "placement.parquet",
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
            Table::Placement => placement_schema(),
        }
    }
}

/// Where a run's tables go. The pipeline calls [`write`](Sink::write) with batches of
/// a table's schema in output order, then [`finish`](Sink::finish) once with the
/// manifest; until then nothing is published.
pub trait Sink {
    fn write(&mut self, table: Table, batch: &RecordBatch) -> anyhow::Result<()>;
    fn finish(&mut self, manifest: &serde_json::Value) -> anyhow::Result<()>;
    /// No more rows of `table` will come: a sink may finish encoding it now, while
    /// the run goes on. Writing `table` afterwards is an error.
    fn end(&mut self, _table: Table) -> anyhow::Result<()> {
        Ok(())
    }
}

/// A run's output directory: one Parquet file per table, `manifest.json` last. The
/// directory, its lock and its temporary files are created when the first table
/// arrives (the pipeline has read and checked every input by then, so bad input
/// leaves nothing); at that moment the old manifest is removed, so a run killed
/// midway leaves a directory without one. Tables of an earlier run that this run
/// does not write are removed before the new manifest appears.
pub struct RunDir {
    dir: PathBuf,
    tables: Vec<Table>,
    files: Option<Vec<(Table, AtomicParquet)>>,
    lock: Option<FileLock>,
}

/// The file that locks a run's directory while a process writes it.
pub const LOCK_FILE: &str = ".expertcast.lock";
/// The file whose presence marks a complete run.
pub const MANIFEST: &str = "manifest.json";

impl RunDir {
    /// A sink for `tables` in `dir`; nothing is created yet.
    pub fn new(dir: &Path, tables: &[Table]) -> RunDir {
        RunDir { dir: dir.to_path_buf(), tables: tables.to_vec(), files: None, lock: None }
    }

    /// Refuses, before anything is read or written, a directory that cannot be one
    /// (`--out` is a file or under one) and inputs that writing the run would
    /// replace (an input at `OUT/metrics.parquet`).
    pub fn check(&self, inputs: &[PathBuf]) -> Result<(), crate::UsageError> {
        check_out_dir(&self.dir)?;
        let Ok(dir) = self.dir.canonicalize() else { return Ok(()) };
        let names: Vec<&str> = Table::ALL.iter().map(|t| t.file_name()).chain([MANIFEST, LOCK_FILE]).collect();
        for input in inputs {
            let Some(name) = input.file_name() else { continue };
            let parent = folder_of(input);
            let same_dir = parent.canonicalize().is_ok_and(|p| p == dir);
            if same_dir && names.iter().any(|n| name == *n) {
                return Err(crate::UsageError(format!(
                    "{}: this input is in --out {} under a name the run writes; it would be replaced. Move it or choose another --out",
                    input.display(),
                    self.dir.display()
                )));
            }
        }
        Ok(())
    }

    fn files(&mut self) -> anyhow::Result<&mut Vec<(Table, AtomicParquet)>> {
        if self.files.is_none() {
            create_out_dir(&self.dir)?;
            self.lock = Some(lock_dir(&self.dir)?);
            remove_if_present(&self.dir.join(MANIFEST))?;
            for name in Table::ALL.iter().map(|t| t.file_name()).chain([MANIFEST]) {
                remove_temps(&self.dir, name)?;
            }
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

    fn end(&mut self, table: Table) -> anyhow::Result<()> {
        if let Some((_, w)) = self.files.as_mut().and_then(|f| f.iter_mut().find(|(t, _)| *t == table)) {
            w.end();
        }
        Ok(())
    }

    fn finish(&mut self, manifest: &serde_json::Value) -> anyhow::Result<()> {
        let mut files = std::mem::take(self.files()?);
        files.sort_by_key(|(t, _)| *t);
        for (_, w) in files {
            w.finish()?;
        }
        for t in Table::ALL.iter().filter(|t| !self.tables.contains(t)) {
            remove_if_present(&self.dir.join(t.file_name()))?;
        }
        // Manifest last: its presence marks a complete run.
        write_atomic(&self.dir, MANIFEST, serde_json::to_string_pretty(manifest)?.as_bytes())
    }
}

/// `--out` must be a directory or not exist yet, below directories only.
pub fn check_out_dir(dir: &Path) -> Result<(), crate::UsageError> {
    let bad = |m: String| Err(crate::UsageError(format!("--out {}: {m}", dir.display())));
    for d in dir.ancestors().filter(|d| !d.as_os_str().is_empty()) {
        match std::fs::metadata(d) {
            Ok(m) if m.is_dir() => return Ok(()),
            Ok(_) if d == dir => return bad("is a file, not a directory".into()),
            Ok(_) => return bad(format!("{} is a file, not a directory", d.display())),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => continue,
            Err(e) => return bad(e.to_string()),
        }
    }
    Ok(())
}

/// Creates `dir` (and its parents); a directory that cannot be made there is a
/// usage error (exit 2): a file in the way, no permission, a read-only file system.
pub fn create_out_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| out_error(dir, "cannot create the directory", e))
}

/// An I/O error on the output directory: the user's to fix (exit 2) when it is one
/// of permissions or of what stands in the way, else an internal one.
fn out_error(path: &Path, what: &str, e: std::io::Error) -> anyhow::Error {
    use std::io::ErrorKind::*;
    let msg = format!("{}: {what}: {e}", path.display());
    if e.raw_os_error() == Some(libc::ELOOP) {
        return crate::UsageError(format!("{}: {what}: it is a symbolic link, which expertcast never writes through", path.display())).into();
    }
    match e.kind() {
        PermissionDenied | NotADirectory | AlreadyExists | ReadOnlyFilesystem | IsADirectory | StorageFull | QuotaExceeded => {
            crate::UsageError(msg).into()
        }
        _ => anyhow::Error::new(e).context(format!("{}: {what}", path.display())),
    }
}

/// An exclusive `flock` on a lock file, held until dropped; the file is removed
/// (while still locked) when it is.
pub struct FileLock {
    file: File,
    path: PathBuf,
}

impl FileLock {
    /// Locks `path` (created if missing, never through a link); `wait`: block until
    /// free, else `None` when another process holds it. A lock file removed by its
    /// holder between our open and our lock is opened again, so two processes never
    /// both hold a lock on one path.
    pub fn acquire(path: &Path, wait: bool) -> anyhow::Result<Option<FileLock>> {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        loop {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)
                .map_err(|e| out_error(path, "cannot open the lock file", e))?;
            if wait {
                file.lock().map_err(|e| out_error(path, "cannot lock", e))?;
            } else {
                match file.try_lock() {
                    Ok(()) => {}
                    Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
                    Err(std::fs::TryLockError::Error(e)) => return Err(out_error(path, "cannot lock", e)),
                }
            }
            let held = file.metadata().map_err(|e| out_error(path, "cannot stat the lock file", e))?;
            match std::fs::symlink_metadata(path) {
                Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => return Ok(Some(FileLock { file, path: path.to_path_buf() })),
                _ => continue,
            }
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = self.file.unlock();
    }
}

/// Locks `dir` for a run ([`LOCK_FILE`]); another process holding it is a usage error.
pub fn lock_dir(dir: &Path) -> anyhow::Result<FileLock> {
    let path = dir.join(LOCK_FILE);
    FileLock::acquire(&path, false)?.ok_or_else(|| {
        crate::UsageError(format!(
            "{} is being written by another expertcast process (it holds {}); wait for it or choose another --out",
            dir.display(),
            path.display()
        ))
        .into()
    })
}

/// Waits for and takes the lock of [`lock_dir`].
pub fn lock_dir_wait(dir: &Path) -> anyhow::Result<FileLock> {
    Ok(FileLock::acquire(&dir.join(LOCK_FILE), true)?.expect("a waiting lock is always taken"))
}

/// Removes the temporary files of `name` in `dir` (`.NAME.*.tmp`) that a killed
/// process left. Call it only while holding the lock that covers `name`'s writers.
pub fn remove_temps(dir: &Path, name: &str) -> anyhow::Result<()> {
    let prefix = format!(".{name}.");
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    for e in entries.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(&prefix) && n.ends_with(".tmp") {
            remove_if_present(&e.path())?;
        }
    }
    Ok(())
}

fn remove_if_present(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(out_error(path, "cannot remove", e)),
        _ => Ok(()),
    }
}

/// A new temporary file in `dir` for `name`: `.NAME.RANDOM.tmp`, created with
/// `O_EXCL` (so never an existing file or link), deleted when its path is dropped.
fn temp_file(dir: &Path, name: &str) -> anyhow::Result<(File, tempfile::TempPath)> {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        // As any new file (0666 less the umask), not tempfile's private 0600.
        .permissions(std::fs::Permissions::from_mode(0o666))
        .tempfile_in(dir)
        .map_err(|e| out_error(dir, &format!("cannot create a temporary file for {name}"), e))?;
    Ok(t.into_parts())
}

/// Rows of a row group (as the one-writer path had them).
const ROW_GROUP: usize = 1 << 20;
/// Row groups gathered before they are encoded together (every (group, column) on
/// its own thread). A table that arrives in one burst, as the layer summaries do, is
/// then encoded in one round instead of one group (one thread a column) at a time:
/// at paper scale (3.6 M rows) the table was done about 400 ms after it arrived,
/// the longest part of a GPU run after the input's hash.
const GROUPS_AT_ONCE: usize = 4;
/// Rows the column writers encode at a time (parquet's default), the unit in which a
/// row group's pieces are cut ([`aligned_pieces`]).
const WRITE_BATCH: usize = 1024;

/// A Parquet file that appears under its final name only once [`finish`](Self::finish)
/// succeeds; dropped unfinished, it leaves nothing behind.
///
/// Rows are encoded on a thread of the file's own while the caller goes on (a run's
/// layer summaries, 3.6 M rows at paper scale, are encoded while the forecasts are
/// made). They are gathered into row groups of 2^20 rows; whole row groups are
/// encoded as soon as they are complete (up to four together when more wait), every
/// (row group, column) on its own thread, and appended in order. Row groups are cut
/// at the same rows whatever the timing, so the bytes depend on neither the threads
/// nor the pace of [`write`](Self::write).
pub struct AtomicParquet {
    tx: Option<std::sync::mpsc::Sender<RecordBatch>>,
    worker: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
    /// Set when the file is dropped unfinished: the worker stops encoding.
    abandoned: Arc<std::sync::atomic::AtomicBool>,
    tmp: Option<tempfile::TempPath>,
    dest: PathBuf,
}

/// The worker's side of an [`AtomicParquet`]: the writer and the rows not yet encoded.
struct Encoder {
    writer: SerializedFileWriter<File>,
    factory: ArrowRowGroupWriterFactory,
    schema: SchemaRef,
    pending: Vec<RecordBatch>,
    pending_rows: usize,
}

impl AtomicParquet {
    pub fn create(dir: &Path, name: &str, schema: SchemaRef) -> anyhow::Result<Self> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let dest = dir.join(name);
        let (f, tmp) = temp_file(dir, name)?;
        // Dictionaries only for text columns (trace and forecaster names repeat);
        // numbers rarely repeat, and trying a dictionary on them first costs time.
        // zstd at level 1: whole floats hardly compressed at any level (the bundled
        // run's layer summaries, before byte-stream split: 5.31 MB at level 1, 5.11
        // MB at 3; at paper scale 64.5 MB against 65.6 MB), and level 3 took about 1.5
        // times as long.
        let mut props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(1)?))
            .set_max_row_group_size(ROW_GROUP)
            .set_write_batch_size(WRITE_BATCH)
            .set_dictionary_enabled(false);
        for f in schema.fields().iter() {
            let path = || parquet::schema::types::ColumnPath::from(f.name().as_str());
            props = match f.data_type() {
                DataType::Utf8 => props.set_column_dictionary_enabled(path(), true),
                // Steps, origins and horizons ascend in runs: as deltas they take
                // almost nothing (the bundled layer summaries' steps: 3 kB instead of
                // 308 kB).
                DataType::Int32 | DataType::Int64 => props.set_column_encoding(path(), Encoding::DELTA_BINARY_PACKED),
                // Each float's bytes apart (signs and exponents together) compress
                // where whole floats did not: the bundled layer summaries' variances
                // 13 % smaller, and zstd is faster on them.
                DataType::Float64 => props.set_column_encoding(path(), Encoding::BYTE_STREAM_SPLIT),
                _ => props,
            };
        }
        let (writer, factory) = ArrowWriter::try_new(f, schema.clone(), Some(props.build()))?.into_serialized_writer()?;
        let mut enc = Encoder { writer, factory, schema, pending: Vec::new(), pending_rows: 0 };
        let (tx, rx) = std::sync::mpsc::channel::<RecordBatch>();
        let abandoned = Arc::new(AtomicBool::new(false));
        let stop = abandoned.clone();
        let worker = std::thread::Builder::new()
            .name(format!("write {name}"))
            .spawn(move || -> anyhow::Result<()> {
                while let Ok(batch) = rx.recv() {
                    enc.push(batch);
                    // Whatever else has arrived is encoded with it.
                    while let Ok(more) = rx.try_recv() {
                        enc.push(more);
                    }
                    if stop.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                    if enc.pending_rows >= GROUPS_AT_ONCE * ROW_GROUP {
                        enc.flush(false)?;
                    }
                }
                if stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                enc.flush(true)?;
                enc.writer.close()?;
                Ok(())
            })
            .with_context(|| format!("starting the writer of {}", dest.display()))?;
        Ok(AtomicParquet { tx: Some(tx), worker: Some(worker), abandoned, tmp: Some(tmp), dest })
    }

    /// Hands `batch` to the file's writer. An error of an earlier batch's encoding
    /// is returned here or by [`finish`](Self::finish).
    pub fn write(&mut self, batch: &RecordBatch) -> anyhow::Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let tx = self.tx.as_ref().context("rows written after the table was ended")?;
        if tx.send(batch.clone()).is_err() {
            // The worker stopped: it failed, and says why when joined.
            self.tx = None;
            return Err(self.join().err().unwrap_or_else(|| anyhow::anyhow!("the writer stopped early")));
        }
        Ok(())
    }

    /// No more batches: the worker encodes the rest and closes the file now (an
    /// error of its shows at [`finish`](Self::finish)).
    pub fn end(&mut self) {
        self.tx = None;
    }

    /// Waits for the worker and returns its outcome.
    fn join(&mut self) -> anyhow::Result<()> {
        let worker = self.worker.take().expect("joined once");
        worker
            .join()
            .map_err(|_| anyhow::anyhow!("the writer panicked"))?
            .with_context(|| format!("writing {}", self.dest.display()))
    }

    /// Closes the file and renames it to its final name (replacing what is there:
    /// a link there is replaced, not followed).
    pub fn finish(mut self) -> anyhow::Result<PathBuf> {
        self.tx = None;
        self.join()?;
        let tmp = self.tmp.take().expect("finish once");
        tmp.persist(&self.dest).map_err(|e| out_error(&self.dest, "cannot rename the finished file to", e.error))?;
        Ok(self.dest.clone())
    }
}

impl Drop for AtomicParquet {
    /// Unfinished: the worker stops at its next batch and the temporary file goes.
    fn drop(&mut self) {
        self.abandoned.store(true, std::sync::atomic::Ordering::Relaxed);
        self.tx = None;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

impl Encoder {
    fn push(&mut self, batch: RecordBatch) {
        self.pending_rows += batch.num_rows();
        self.pending.push(batch);
    }

    /// Encodes the gathered rows' whole row groups (up to [`GROUPS_AT_ONCE`] at a
    /// time) and, when `all`, the rest. A row group is a list of slices of the
    /// batches as they came: nothing is copied before the encoding.
    fn flush(&mut self, all: bool) -> anyhow::Result<()> {
        if self.pending_rows == 0 {
            return Ok(());
        }
        let cut = if all { self.pending_rows } else { self.pending_rows / ROW_GROUP * ROW_GROUP };
        let (mut groups, mut group, mut group_rows, mut taken) = (Vec::new(), Vec::new(), 0, 0);
        let mut rest = Vec::new();
        for batch in self.pending.drain(..) {
            let mut at = 0;
            while at < batch.num_rows() {
                if taken == cut {
                    rest.push(batch.slice(at, batch.num_rows() - at));
                    break;
                }
                let n = (batch.num_rows() - at).min(ROW_GROUP - group_rows).min(cut - taken);
                group.push(batch.slice(at, n));
                (at, group_rows, taken) = (at + n, group_rows + n, taken + n);
                if group_rows == ROW_GROUP || taken == cut {
                    groups.push(std::mem::take(&mut group));
                    group_rows = 0;
                }
            }
        }
        self.pending = rest;
        self.pending_rows -= cut;
        for some in groups.chunks(GROUPS_AT_ONCE) {
            self.encode(some)?;
        }
        Ok(())
    }

    /// Encodes `groups` (each one row group, in slices), every (row group, column) on
    /// its own thread, and appends them in order.
    fn encode(&mut self, groups: &[Vec<RecordBatch>]) -> anyhow::Result<()> {
        use parquet::arrow::arrow_writer::compute_leaves;
        use rayon::prelude::*;
        let writer = &mut self.writer;
        let first = writer.flushed_row_groups().len();
        let fields = self.schema.fields();
        let tasks: Vec<(usize, usize)> = (0..groups.len()).flat_map(|g| (0..fields.len()).map(move |c| (g, c))).collect();
        let mut writers: Vec<Option<_>> = Vec::with_capacity(tasks.len());
        for g in 0..groups.len() {
            let ws = self.factory.create_column_writers(first + g)?;
            anyhow::ensure!(ws.len() == fields.len(), "a flat schema has one column writer per field");
            writers.extend(ws.into_iter().map(Some));
        }
        let chunks: Vec<parquet::errors::Result<_>> = tasks
            .par_iter()
            .zip(writers.par_iter_mut())
            .map(|(&(g, c), w)| {
                let mut w = w.take().expect("one task per writer");
                for piece in aligned_pieces(&groups[g], c)? {
                    for leaf in compute_leaves(&fields[c], &piece)? {
                        w.write(&leaf)?;
                    }
                }
                w.close()
            })
            .collect();
        let mut chunks = chunks.into_iter();
        for _ in groups {
            let mut rg = writer.next_row_group()?;
            for _ in 0..fields.len() {
                chunks.next().expect("a chunk per task")?.append_to_row_group(&mut rg)?;
            }
            rg.close()?;
        }
        Ok(())
    }
}

/// Column `c` of a row group's `slices`, cut into pieces that each start a whole
/// number of [`WRITE_BATCH`]es from the group's start: the column writer encodes a
/// piece [`WRITE_BATCH`] rows at a time from its start and checks its page limits
/// after each, so these pieces make the pages (and the bytes) of the group written
/// as one array. A piece is a slice of one batch where it can be, and only the rows
/// that straddle two batches (fewer than [`WRITE_BATCH`]) are copied.
fn aligned_pieces(slices: &[RecordBatch], c: usize) -> Result<Vec<ArrayRef>, arrow::error::ArrowError> {
    let join = |parts: &mut Vec<ArrayRef>| -> Result<ArrayRef, arrow::error::ArrowError> {
        let refs: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
        let joined = if refs.len() == 1 { parts[0].clone() } else { arrow::compute::concat(&refs)? };
        parts.clear();
        Ok(joined)
    };
    let (mut out, mut carry, mut carried) = (Vec::new(), Vec::new(), 0);
    for col in slices.iter().map(|s| s.column(c)) {
        let (n, mut at) = (col.len(), 0);
        if carried > 0 {
            at = (WRITE_BATCH - carried).min(n);
            carry.push(col.slice(0, at));
            carried += at;
            if carried == WRITE_BATCH {
                out.push(join(&mut carry)?);
                carried = 0;
            }
        }
        if at < n {
            let whole = (n - at) / WRITE_BATCH * WRITE_BATCH;
            if whole > 0 {
                out.push(col.slice(at, whole));
                at += whole;
            }
            if at < n {
                carry.push(col.slice(at, n - at));
                carried = n - at;
            }
        }
    }
    if carried > 0 {
        out.push(join(&mut carry)?);
    }
    Ok(out)
}

/// The folder that holds `path`: its parent, or "." for a bare file name (whose
/// parent is the empty path, which joined to a name would mean "/name").
pub fn folder_of(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// Writes `bytes` to `dir/name` atomically, through a temporary file of its own.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let (mut f, tmp) = temp_file(dir, name)?;
    f.write_all(bytes).map_err(|e| out_error(&tmp, "cannot write", e))?;
    drop(f);
    tmp.persist(dir.join(name)).map_err(|e| out_error(&dir.join(name), "cannot rename to", e.error))?;
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

/// `placement.parquet` (with `--placement-gpus`).
pub fn placement_schema() -> SchemaRef {
    let m = |n| (n, F64, true);
    let keys = [("trace", STR, false), ("layer", I32, false), ("policy", STR, false), ("gpus", I32, false), ("replicas", I32, false)];
    let more = [("horizon", I32, false), ("regime", STR, false), ("origins", I64, false)];
    schema(&[&keys[..], &more[..], &[m("imbalance_mean"), m("imbalance_p99"), m("imbalance_max"), m("moved_replicas_mean")]].concat())
}

/// Column builders, one call per column, in schema order.
pub fn strs(v: impl IntoIterator<Item = impl AsRef<str>>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(v))
}
/// An int32 column; the values were checked to fit when the input was read and
/// the plan resolved, so one that does not is a bug, not bad input.
pub fn i32s(v: impl IntoIterator<Item = i64>) -> ArrayRef {
    Arc::new(Int32Array::from_iter_values(v.into_iter().map(|x| i32::try_from(x).expect("int32 column value checked on input"))))
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

    /// Rows `from .. from + n` of `schema`'s columns: `v` the row, `t` a text and
    /// `x` a float made from it.
    fn ints(schema: &SchemaRef, from: i64, n: usize) -> RecordBatch {
        let v = from..from + n as i64;
        let cols: Vec<ArrayRef> = (schema.fields().iter())
            .map(|f| match f.name().as_str() {
                "v" => Arc::new(Int64Array::from_iter_values(v.clone())) as ArrayRef,
                "t" => strs(v.clone().map(|i| format!("trace-{}", i / 5000))),
                "x" => f64s(v.clone().map(|i| (i as f64 * 0.37).sin())),
                other => unreachable!("no test column {other}"),
            })
            .collect();
        RecordBatch::try_new(schema.clone(), cols).unwrap()
    }

    /// The file's `v` column holds 0, 1, ... `total - 1`, in order.
    fn assert_rows_in_order(path: &Path, total: usize) {
        let f = File::open(path).unwrap();
        let mut want = 0i64;
        for batch in parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f).unwrap().build().unwrap() {
            let batch = batch.unwrap();
            let col = batch.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            for v in col.values() {
                assert_eq!(*v, want);
                want += 1;
            }
        }
        assert_eq!(want, total as i64);
    }

    /// The worker cuts row groups at the same rows whatever the batches and their
    /// pace: one batch, or many of uneven sizes with pauses (so that the worker
    /// encodes some groups before the rest arrive), give the same bytes, and the
    /// file reads back as 2^20-row groups holding every value in order.
    #[test]
    fn row_groups_do_not_depend_on_the_pace_of_writes() {
        use parquet::file::reader::FileReader;
        let dir = tempfile::tempdir().unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false), Field::new("t", DataType::Utf8, false), Field::new("x", DataType::Float64, false)]));
        let total = 2 * ROW_GROUP + 12_345;
        let mut one = AtomicParquet::create(dir.path(), "one.parquet", schema.clone()).unwrap();
        one.write(&ints(&schema, 0, total)).unwrap();
        one.finish().unwrap();
        let mut many = AtomicParquet::create(dir.path(), "many.parquet", schema.clone()).unwrap();
        let (mut at, mut k) = (0usize, 0usize);
        while at < total {
            let n = [1, 700_001, 3, 65_536, 999_999][k % 5].min(total - at);
            many.write(&ints(&schema, at as i64, n)).unwrap();
            if k % 3 == 0 {
                std::thread::sleep(std::time::Duration::from_millis(30));
            }
            (at, k) = (at + n, k + 1);
        }
        many.finish().unwrap();
        let a = std::fs::read(dir.path().join("one.parquet")).unwrap();
        let b = std::fs::read(dir.path().join("many.parquet")).unwrap();
        assert!(a == b, "the same rows in other batches gave other bytes");
        let f = File::open(dir.path().join("many.parquet")).unwrap();
        let reader = parquet::file::reader::SerializedFileReader::new(f).unwrap();
        let groups: Vec<i64> = reader.metadata().row_groups().iter().map(|g| g.num_rows()).collect();
        assert_eq!(groups, vec![ROW_GROUP as i64, ROW_GROUP as i64, 12_345]);
        assert_rows_in_order(&dir.path().join("many.parquet"), total);
        // Nothing but the two files: no temporary file is left.
        let mut names: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        assert_eq!(names, ["many.parquet", "one.parquet"]);
    }

    /// More than [`GROUPS_AT_ONCE`] row groups arrive before the end, so the worker
    /// encodes whole groups and keeps the rest (a batch cut across the groups' end)
    /// for later: the same bytes as one batch, and every row in order.
    #[test]
    fn groups_encoded_before_the_end_keep_the_rest_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false), Field::new("x", DataType::Float64, false)]));
        let total = GROUPS_AT_ONCE * ROW_GROUP + 777_777;
        let mut one = AtomicParquet::create(dir.path(), "one.parquet", schema.clone()).unwrap();
        one.write(&ints(&schema, 0, total)).unwrap();
        one.finish().unwrap();
        let mut many = AtomicParquet::create(dir.path(), "many.parquet", schema.clone()).unwrap();
        // 1,500,001-row batches: the fourth group's end falls inside the third batch
        let mut at = 0;
        while at < total {
            let n = 1_500_001.min(total - at);
            many.write(&ints(&schema, at as i64, n)).unwrap();
            at += n;
        }
        many.finish().unwrap();
        let a = std::fs::read(dir.path().join("one.parquet")).unwrap();
        let b = std::fs::read(dir.path().join("many.parquet")).unwrap();
        assert!(a == b, "the same rows in other batches gave other bytes");
        assert_rows_in_order(&dir.path().join("many.parquet"), total);
    }

    /// A file dropped unfinished (a run that fails midway) leaves nothing, even with
    /// rows still being encoded.
    #[test]
    fn an_unfinished_file_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let mut w = AtomicParquet::create(dir.path(), "x.parquet", schema.clone()).unwrap();
        w.write(&ints(&schema, 0, ROW_GROUP + 5)).unwrap();
        w.write(&ints(&schema, 0, 5)).unwrap();
        drop(w);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// A table ended early is encoded then, with the same bytes as one finished at
    /// the end; rows after the end are refused; ended but dropped unfinished, it
    /// still leaves nothing.
    #[test]
    fn an_ended_table_has_the_bytes_of_one_finished_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let mut at_end = AtomicParquet::create(dir.path(), "a.parquet", schema.clone()).unwrap();
        at_end.write(&ints(&schema, 0, 1000)).unwrap();
        at_end.write(&ints(&schema, 1000, 234)).unwrap();
        at_end.finish().unwrap();
        let mut ended = AtomicParquet::create(dir.path(), "b.parquet", schema.clone()).unwrap();
        ended.write(&ints(&schema, 0, 1000)).unwrap();
        ended.write(&ints(&schema, 1000, 234)).unwrap();
        ended.end();
        let err = ended.write(&ints(&schema, 0, 1)).unwrap_err();
        assert!(err.to_string().contains("after the table was ended"), "{err}");
        ended.finish().unwrap();
        let (a, b) = (std::fs::read(dir.path().join("a.parquet")).unwrap(), std::fs::read(dir.path().join("b.parquet")).unwrap());
        assert!(a == b, "ending a table early changed its bytes");
        let mut dropped = AtomicParquet::create(dir.path(), "c.parquet", schema.clone()).unwrap();
        dropped.write(&ints(&schema, 0, 10)).unwrap();
        dropped.end();
        drop(dropped);
        let mut names: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        assert_eq!(names, ["a.parquet", "b.parquet"]);
    }

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
            ("placement.parquet", placement_schema()),
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
