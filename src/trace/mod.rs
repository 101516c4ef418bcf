//! Reading, validating and normalising expert-load traces.
//!
//! A trace is `load[t, l, e] >= 0` (docs/reference.md, "Trace"). Inputs are long Parquet or
//! CSV files (`step`, `layer`, `expert`, `tokens`, optional `trace`) or dense
//! `[steps, layers, experts]` NumPy arrays. Every problem with an input is a
//! [`TraceError`] naming the file and the row, step, layer or expert at fault.

mod columnar;
mod npy;

use std::path::{Path, PathBuf};

pub use columnar::ColumnNames;

/// Errors in an input trace. Each one is the user's to fix, so the binary exits
/// with status 2 on any of them.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("{file}: {msg}")]
    Invalid { file: PathBuf, msg: String },
    /// The OS error is in the message and not also the error's source, so that a
    /// chain printed whole (`{:#}`) does not say it twice.
    #[error("{file}: cannot read: {error}")]
    Io { file: PathBuf, error: std::io::Error },
}

pub type Result<T> = std::result::Result<T, TraceError>;

pub(crate) fn invalid(file: &Path, msg: impl Into<String>) -> TraceError {
    TraceError::Invalid { file: file.to_path_buf(), msg: msg.into() }
}

/// Input format of a trace file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Parquet,
    Csv,
    Npy,
}

impl Format {
    /// The format implied by a file's extension.
    pub fn from_path(path: &Path) -> Result<Format> {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        match ext.as_str() {
            "parquet" | "pq" => Ok(Format::Parquet),
            "csv" => Ok(Format::Csv),
            "npy" => Ok(Format::Npy),
            _ => Err(invalid(
                path,
                format!(
                    "unknown file extension {:?}: expected .parquet, .csv or .npy (or pass --format)",
                    if ext.is_empty() { "(none)".to_string() } else { format!(".{ext}") }
                ),
            )),
        }
    }
}

/// Dense load storage, `[t][l][e]` row-major. Loads are kept as `f32` whenever every
/// value is exactly representable (integer counts below 2^24, or a float32 input), so
/// that a trace costs its dense float32 size; otherwise `f64`.
#[derive(Debug, Clone)]
pub enum Loads {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl Loads {
    #[inline]
    pub fn get(&self, i: usize) -> f64 {
        match self {
            Loads::F32(v) => v[i] as f64,
            Loads::F64(v) => v[i],
        }
    }
    pub fn len(&self) -> usize {
        match self {
            Loads::F32(v) => v.len(),
            Loads::F64(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One validated trace held densely in memory.
#[derive(Debug, Clone)]
pub struct Trace {
    /// Name used in every output row (the `trace` column, else the file stem).
    pub name: String,
    /// File the trace came from.
    pub source: PathBuf,
    /// Value of the `step` column for index `t = 0`; steps are consecutive.
    pub first_step: i64,
    /// Layer ids as in the input (index `l` ↔ `layer_ids[l]`).
    pub layer_ids: Vec<i64>,
    /// Expert ids as in the input, the same for every layer.
    pub expert_ids: Vec<i64>,
    steps: usize,
    loads: Loads,
    /// `sum_e load[t, l, e]`, `[t][l]`, in f64.
    totals: Vec<f64>,
    /// This trace's number in the process (a clone keeps it: the loads are the same),
    /// by which a GPU keeps its loads for a run ([`crate::gpu::resident`]).
    id: u64,
}

impl Trace {
    /// Builds a trace from dense loads `[steps][layers][experts]`, checking every
    /// value and every layer's per-step total. `file` is used in error messages.
    pub fn from_dense(
        name: String,
        file: &Path,
        first_step: i64,
        layer_ids: Vec<i64>,
        expert_ids: Vec<i64>,
        loads: Loads,
    ) -> Result<Trace> {
        let (nl, ne) = (layer_ids.len(), expert_ids.len());
        if nl == 0 || ne == 0 || loads.is_empty() {
            return Err(invalid(file, "the trace holds no loads"));
        }
        // The output files keep ids in int32 columns: refuse what would not fit there
        // rather than merge two ids into one.
        for (what, ids) in [("layer", &layer_ids), ("expert", &expert_ids)] {
            if let Some(id) = ids.iter().find(|&&id| i32::try_from(id).is_err()) {
                return Err(invalid(file, format!("{what} id {id} is outside the int32 range of the output files (-2147483648 to 2147483647)")));
            }
        }
        assert_eq!(loads.len() % (nl * ne), 0, "dense loads must be steps × layers × experts");
        let steps = loads.len() / (nl * ne);
        // Blocks of steps in parallel, each (step, layer) summed in expert order; the
        // first problem in file order is reported (each block stops at its first).
        use rayon::prelude::*;
        const BLOCK: usize = 1024;
        let mut totals = vec![0.0f64; steps * nl];
        let check = |t: usize, l: usize| -> std::result::Result<f64, TraceError> {
            let base = (t * nl + l) * ne;
            let mut s = 0.0;
            for e in 0..ne {
                let v = loads.get(base + e);
                if !v.is_finite() || v < 0.0 {
                    return Err(invalid(
                        file,
                        format!("{} load {v} at step {}, layer {}, expert {}", bad_value_kind(v), first_step + t as i64, layer_ids[l], expert_ids[e]),
                    ));
                }
                s += v;
            }
            if !s.is_finite() {
                return Err(invalid(
                    file,
                    format!(
                        "layer {}'s loads at step {} sum to more than the largest float64 (1.8e308): scale the loads down",
                        layer_ids[l],
                        first_step + t as i64
                    ),
                ));
            }
            if s <= 0.0 {
                return Err(invalid(
                    file,
                    format!("layer {} has a total load of 0 at step {}: its proportions are undefined", layer_ids[l], first_step + t as i64),
                ));
            }
            Ok(s)
        };
        let problems: Vec<Option<TraceError>> = totals
            .par_chunks_mut(BLOCK * nl)
            .enumerate()
            .map(|(b, out)| {
                for (i, tot) in out.iter_mut().enumerate() {
                    match check(b * BLOCK + i / nl, i % nl) {
                        Ok(s) => *tot = s,
                        Err(e) => return Some(e),
                    }
                }
                None
            })
            .collect();
        if let Some(e) = problems.into_iter().flatten().next() {
            return Err(e);
        }
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Trace { name, source: file.to_path_buf(), first_step, layer_ids, expert_ids, steps, loads, totals, id })
    }

    pub fn steps(&self) -> usize {
        self.steps
    }
    pub fn layers(&self) -> usize {
        self.layer_ids.len()
    }
    pub fn experts(&self) -> usize {
        self.expert_ids.len()
    }
    /// The step label of index `t`.
    pub fn step_at(&self, t: usize) -> i64 {
        self.first_step + t as i64
    }
    /// Raw load at `(t, l, e)`.
    pub fn load(&self, t: usize, l: usize, e: usize) -> f64 {
        self.loads.get((t * self.layers() + l) * self.experts() + e)
    }
    /// `p[t, l, e] = load / sum_e load`.
    #[inline]
    pub fn proportion(&self, t: usize, l: usize, e: usize) -> f64 {
        let nl = self.layers();
        self.loads.get((t * nl + l) * self.experts() + e) / self.totals[t * nl + l]
    }
    /// The shares of every expert of layer `l` at step `t`, into `out` (`E` values).
    pub fn step_shares(&self, t: usize, l: usize, out: &mut [f64]) {
        let ne = self.experts().min(out.len());
        self.step_shares_from(t, l, 0, &mut out[..ne]);
    }
    /// This trace's number in the process, the same for its clones.
    pub fn id(&self) -> u64 {
        self.id
    }
    /// The dense loads, `[t][l][e]`, when they are float32.
    pub fn loads_f32(&self) -> Option<&[f32]> {
        match &self.loads {
            Loads::F32(v) => Some(v),
            Loads::F64(_) => None,
        }
    }
    /// Each (step, layer)'s total load, `[t][l]`: the divisor of every share.
    pub fn totals(&self) -> &[f64] {
        &self.totals
    }
    /// The shares of experts `e0 .. e0 + out.len()` of layer `l` at step `t`.
    pub fn step_shares_from(&self, t: usize, l: usize, e0: usize, out: &mut [f64]) {
        let (ne, nl) = (self.experts(), self.layers());
        let total = self.totals[t * nl + l];
        let base = (t * nl + l) * ne + e0;
        for (j, o) in out.iter_mut().enumerate() {
            *o = self.loads.get(base + j) / total;
        }
    }
    /// Proportions of layer `l`, step-major: `out[t * E + e]`.
    pub fn layer_proportions(&self, l: usize) -> Vec<f64> {
        let mut out = Vec::new();
        self.layer_proportions_into(l, &mut out);
        out
    }
    /// [`layer_proportions`](Self::layer_proportions) into `out` (resized), so that a
    /// buffer can serve layer after layer without being allocated and freed again.
    pub fn layer_proportions_into(&self, l: usize, out: &mut Vec<f64>) {
        use rayon::prelude::*;
        const STEPS: usize = 1024;
        let ne = self.experts();
        let n = self.steps * ne;
        out.truncate(n);
        // A new buffer grows in parallel: zeroing (and faulting in) a paper-scale
        // layer's 100 MB on one thread was most of a run's first fill.
        if out.len() < n {
            let more = n - out.len();
            out.par_extend(rayon::iter::repeat_n(0.0, more));
        }
        // Blocks of steps in parallel (each row is computed alone: the same bits).
        out.par_chunks_mut(STEPS * ne).enumerate().for_each(|(c, block)| {
            for (k, row) in block.chunks_mut(ne).enumerate() {
                self.step_shares(c * STEPS + k, l, row);
            }
        });
    }
    /// Proportions of layer `l`, series-major: `out[e * T + t]`.
    pub fn layer_series(&self, l: usize) -> Vec<f64> {
        self.layer_series_on(l, true)
    }
    /// [`layer_series`](Self::layer_series) on the calling thread alone, for callers
    /// that already give each layer a thread (on rayon, a thread waiting for its
    /// tiles could start another layer meanwhile, and hold two layers' series).
    pub fn layer_series_here(&self, l: usize) -> Vec<f64> {
        self.layer_series_on(l, false)
    }
    fn layer_series_on(&self, l: usize, parallel: bool) -> Vec<f64> {
        // A new vector each time: kept from layer to layer, it made the statistics
        // stage twice as slow (glibc then maps and unmaps the stage's smaller buffers
        // afresh, page faults and all).
        let mut out = Vec::new();
        match &self.loads {
            Loads::F32(v) => self.series_of(l, &mut out, parallel, |i| v[i] as f64),
            Loads::F64(v) => self.series_of(l, &mut out, parallel, |i| v[i]),
        }
        out
    }
    /// Tiles of consecutive steps in parallel: a tile reads its steps' rows of the
    /// layer whole (a row is contiguous in the loads) and writes each expert's run of
    /// the tile's steps into that expert's series; each value is `step_shares`'s one
    /// division. (Blocks of a few experts reading every step's row, as before, read a
    /// paper-scale layer's loads with a 6 kB stride: a TLB miss and half a cache line
    /// wasted per value read, a fifth of a CPU run's statistics stage.)
    fn series_of(&self, l: usize, out: &mut Vec<f64>, parallel: bool, load: impl Fn(usize) -> f64 + Sync) {
        use rayon::prelude::*;
        /// `out`'s buffer, written by the tiles at disjoint places.
        struct Series(*mut f64);
        // SAFETY: the tiles write disjoint elements (below), and `out` outlives them.
        unsafe impl Sync for Series {}
        impl Series {
            fn at(&self, i: usize) -> *mut f64 {
                // SAFETY: callers pass indices below `out`'s length.
                unsafe { self.0.add(i) }
            }
        }
        let (nl, ne, nt) = (self.layers(), self.experts(), self.steps);
        out.resize(nt * ne, 0.0);
        // About 32 k values a tile: its rows (256 kB at most) stay in cache.
        let tile = (32768 / ne.max(1)).clamp(8, 1024);
        let dst = Series(out.as_mut_ptr());
        let dst = &dst;
        let fill = |c: usize| {
            for t in c * tile..((c + 1) * tile).min(nt) {
                let total = self.totals[t * nl + l];
                let base = (t * nl + l) * ne;
                for e in 0..ne {
                    // SAFETY: e < ne and t < nt, so e * nt + t < out.len(); step t
                    // belongs to tile c alone, so no other task writes this element.
                    unsafe { *dst.at(e * nt + t) = load(base + e) / total };
                }
            }
        };
        if parallel {
            (0..nt.div_ceil(tile)).into_par_iter().for_each(fill);
        } else {
            (0..nt.div_ceil(tile)).for_each(fill);
        }
    }
    /// Bytes held by the dense loads.
    pub fn dense_bytes(&self) -> usize {
        match &self.loads {
            Loads::F32(v) => v.len() * 4,
            Loads::F64(v) => v.len() * 8,
        }
    }
}

pub(crate) fn bad_value_kind(v: f64) -> &'static str {
    if v.is_nan() {
        "NaN"
    } else if v.is_infinite() {
        "infinite"
    } else {
        "negative"
    }
}

/// How to read the inputs of a run.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// Overrides the format chosen by extension.
    pub format: Option<Format>,
    pub columns: ColumnNames,
}

/// Reads one input file, which may hold several traces (a `trace` column).
pub fn read_file(path: &Path, opts: &ReadOptions) -> Result<Vec<Trace>> {
    let format = match opts.format {
        Some(f) => f,
        None => Format::from_path(path)?,
    };
    let meta = std::fs::metadata(path).map_err(|source| TraceError::Io { file: path.to_path_buf(), error: source })?;
    if meta.is_dir() {
        return Err(invalid(path, "is a directory, not a trace file"));
    }
    if meta.len() == 0 {
        return Err(invalid(path, "the file is empty"));
    }
    guarded(path, || match format {
        Format::Parquet => columnar::read_parquet(path, &opts.columns),
        Format::Csv => columnar::read_csv(path, &opts.columns),
        Format::Npy => npy::read_npy(path).map(|t| vec![t]),
    })
}

thread_local! {
    /// Set while this thread runs a decoder under [`guarded`].
    static DECODING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `read` on `file`, turning a panic inside a decoder (the parquet crate panics
/// on some corrupt files instead of returning an error) into an error that names
/// the file: exit 2, not a crash.
fn guarded<T>(file: &Path, read: impl FnOnce() -> Result<T>) -> Result<T> {
    let before = DECODING.with(|d| d.replace(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(read));
    DECODING.with(|d| d.set(before));
    r.unwrap_or_else(|p| {
        let msg = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_default();
        Err(invalid(file, format!("the file is corrupt: its decoder failed ({msg})")))
    })
}

/// Installs a panic hook that keeps quiet about panics [`guarded`] turns into
/// errors (their message is in the error), and reports every other as before.
pub fn quiet_decoder_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !DECODING.with(|d| d.get()) {
            previous(info);
        }
    }));
}

/// Reads every input of a run; trace names must be unique across files.
pub fn read_all(paths: &[PathBuf], opts: &ReadOptions) -> Result<Vec<Trace>> {
    let inputs: Vec<Input> = paths.iter().cloned().map(Input::File).collect();
    read_inputs(&inputs, opts)
}

/// Inputs of at most this many bytes together are read side by side.
const SIDE_BY_SIDE_INPUT_BYTES: u64 = 256 << 20;

/// Reads every input of a run, files or bundled traces; trace names must be unique.
pub fn read_inputs(inputs: &[Input], opts: &ReadOptions) -> Result<Vec<Trace>> {
    use rayon::prelude::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    // Small inputs side by side (a small file is decoded on one thread; a big one's
    // row groups or chunks are already read in parallel, and several at once would
    // each hold their decoding buffers). The errors and name clashes are then taken in
    // the inputs' order, as if read one after the other; inputs after one that failed
    // are not read.
    let bytes: u64 = inputs.iter().map(|i| i.size_hint()).sum();
    let failed = AtomicUsize::new(usize::MAX);
    let read_one = |(k, input): (usize, &Input)| -> Option<Result<Vec<Trace>>> {
        if k > failed.load(Ordering::Relaxed) {
            return None;
        }
        let r = match input {
            Input::File(p) => read_file(p, opts),
            Input::Bundled(b) => guarded(&input.path(), || columnar::read_parquet_bytes(&input.path(), b.bytes, &opts.columns)),
        };
        if r.is_err() {
            failed.fetch_min(k, Ordering::Relaxed);
        }
        Some(r)
    };
    let read: Vec<Option<Result<Vec<Trace>>>> = if bytes <= SIDE_BY_SIDE_INPUT_BYTES {
        inputs.par_iter().enumerate().with_max_len(1).map(read_one).collect()
    } else {
        inputs.iter().enumerate().map(read_one).collect()
    };
    let mut out: Vec<Trace> = Vec::new();
    // Every input before the first that failed was read, so the loop returns on that
    // one (or on an earlier name clash) before it reaches one that was not.
    for (input, traces) in inputs.iter().zip(read) {
        let p = input.path();
        let Some(traces) = traces else { unreachable!("{} was not read, yet no input before it failed", p.display()) };
        for t in traces? {
            if let Some(prev) = out.iter().find(|o| o.name == t.name) {
                return Err(invalid(
                    &p,
                    format!(
                        "trace name {:?} is also used by {}; rename one of the files or use a trace column",
                        t.name,
                        prev.source.display()
                    ),
                ));
            }
            out.push(t);
        }
    }
    Ok(out)
}

/// A trace bundled with the project (`datasets/`), compiled into the binary so that a
/// copied or installed binary runs its defaults from any directory.
#[derive(Debug)]
pub struct BundledTrace {
    /// File name in `datasets/`.
    pub file: &'static str,
    pub bytes: &'static [u8],
}

/// The traces `run` uses when given none, in name order.
pub static BUNDLED: &[BundledTrace] = &[
    BundledTrace { file: "gpt12-e16-top2-s1.parquet", bytes: include_bytes!("../../datasets/gpt12-e16-top2-s1.parquet") },
    BundledTrace { file: "gpt12-e16-top2-s2.parquet", bytes: include_bytes!("../../datasets/gpt12-e16-top2-s2.parquet") },
    BundledTrace { file: "gpt12-e64-top2-s1.parquet", bytes: include_bytes!("../../datasets/gpt12-e64-top2-s1.parquet") },
];

/// How the bundled traces are named in traces, messages and the manifest.
pub const BUNDLED_PREFIX: &str = "<bundled>";

/// One input of a run: a file, or a trace compiled into the binary.
#[derive(Debug, Clone)]
pub enum Input {
    File(PathBuf),
    Bundled(&'static BundledTrace),
}

impl Input {
    /// Every bundled trace.
    pub fn bundled() -> Vec<Input> {
        BUNDLED.iter().map(Input::Bundled).collect()
    }
    /// The bundled trace whose file name is `file`.
    pub fn bundled_named(file: &str) -> Option<Input> {
        BUNDLED.iter().find(|b| b.file == file).map(Input::Bundled)
    }
    /// The file's path, or `<bundled>/FILE` for a bundled trace.
    pub fn path(&self) -> PathBuf {
        match self {
            Input::File(p) => p.clone(),
            Input::Bundled(b) => Path::new(BUNDLED_PREFIX).join(b.file),
        }
    }
    /// The input's size in bytes as far as its metadata says (0 when it cannot be
    /// read: reading the file then says why).
    fn size_hint(&self) -> u64 {
        match self {
            Input::File(p) => std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
            Input::Bundled(b) => b.bytes.len() as u64,
        }
    }
    /// The input's bytes on disk (or in the binary) and their SHA-256, read now.
    pub fn size_and_sha256(&self) -> Result<(u64, String)> {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        let n = match self {
            Input::File(p) => {
                let f = std::fs::File::open(p).map_err(|source| TraceError::Io { file: p.clone(), error: source })?;
                hash_all(f, &mut h, HASH_READ).map_err(|source| TraceError::Io { file: p.clone(), error: source })?
            }
            Input::Bundled(b) => {
                h.update(b.bytes);
                b.bytes.len() as u64
            }
        };
        Ok((n, format!("{:x}", h.finalize())))
    }
}

/// Bytes a read of [`Input::size_and_sha256`] asks for: few enough calls that the
/// hash, not the reading, sets the pace, and few enough pages that a small file's
/// hash is not mostly the buffer's page faults (dev-2c, a 614 MB file from the page
/// cache, hashed beside the run's reading: 550-640 ms with 256 kB reads and with
/// 4 MB; a 4 MB buffer took a sixth of the bundled run's page faults).
const HASH_READ: usize = 256 << 10;

/// Feeds all of `r` to `h`, `chunk` bytes a read; the bytes read.
fn hash_all(mut r: impl std::io::Read, h: &mut sha2::Sha256, chunk: usize) -> std::io::Result<u64> {
    use sha2::Digest;
    let mut buf = vec![0u8; chunk];
    let mut n = 0u64;
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(n),
            Ok(k) => {
                h.update(&buf[..k]);
                n += k as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The file stem used as a trace's name when the file has no trace column.
pub(crate) fn stem_name(path: &Path) -> String {
    path.file_stem().and_then(|s| s.to_str()).unwrap_or("trace").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FIPS 180-2's third SHA-256 example (a million 'a'), read in pieces that do not
    /// divide it, in pieces larger than it, and short reads of a reader that gives
    /// at most 1000 bytes a call.
    #[test]
    fn hashing_in_pieces_gives_the_fips_digest() {
        use sha2::Digest;
        struct Trickle<'a>(&'a [u8]);
        impl std::io::Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let k = buf.len().min(self.0.len()).min(1000);
                buf[..k].copy_from_slice(&self.0[..k]);
                self.0 = &self.0[k..];
                Ok(k)
            }
        }
        let a = vec![b'a'; 1_000_000];
        for chunk in [4096, 7777, 1 << 21] {
            for trickle in [false, true] {
                let mut h = sha2::Sha256::new();
                let n = if trickle { hash_all(Trickle(&a), &mut h, chunk) } else { hash_all(&a[..], &mut h, chunk) }.unwrap();
                assert_eq!(n, 1_000_000);
                assert_eq!(format!("{:x}", h.finalize()), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
            }
        }
    }

    fn tiny() -> Trace {
        // 2 steps, 2 layers, 2 experts
        let loads = vec![1.0, 3.0, 2.0, 2.0, 0.0, 4.0, 5.0, 15.0];
        Trace::from_dense("t".into(), Path::new("x"), 10, vec![0, 1], vec![0, 1], Loads::F32(loads)).unwrap()
    }

    #[test]
    fn proportions_are_shares_of_the_layer_total() {
        let t = tiny();
        assert_eq!(t.proportion(0, 0, 0), 0.25);
        assert_eq!(t.proportion(0, 1, 1), 0.5);
        assert_eq!(t.proportion(1, 0, 1), 1.0);
        assert_eq!(t.proportion(1, 1, 0), 0.25);
        assert_eq!(t.layer_proportions(1), vec![0.5, 0.5, 0.25, 0.75]);
        assert_eq!(t.layer_series(1), vec![0.5, 0.25, 0.5, 0.75]);
        let mut row = [0.0; 2];
        t.step_shares(1, 0, &mut row);
        assert_eq!(row, [0.0, 1.0]);
        assert_eq!(t.step_at(1), 11);
    }

    #[test]
    fn layer_series_of_many_experts_in_blocks_are_the_shares() {
        // 19 experts over 7 steps (one tile), and 128 experts over 1,000 steps (tiles
        // of 256 steps, the last one short), 2 layers; float32 and float64 loads from
        // their indices, so each share is a known quotient.
        for (nt, ne) in [(7, 19), (1000, 128)] {
            let nl = 2;
            let raw = |i: usize| (i % 23 + 1) as f64;
            for loads in [Loads::F32((0..nt * nl * ne).map(|i| raw(i) as f32).collect()), Loads::F64((0..nt * nl * ne).map(raw).collect())] {
                let t = Trace::from_dense("t".into(), Path::new("x"), 0, vec![0, 1], (0..ne as i64).collect(), loads).unwrap();
                for l in 0..nl {
                    let s = t.layer_series(l);
                    assert_eq!(s.len(), nt * ne);
                    for (step, e) in (0..nt).flat_map(|t| (0..ne).map(move |e| (t, e))) {
                        let total: f64 = (0..ne).map(|j| raw((step * nl + l) * ne + j)).sum();
                        let want = raw((step * nl + l) * ne + e) / total;
                        assert_eq!(s[e * nt + step].to_bits(), want.to_bits(), "T {nt} E {ne}: step {step}, layer {l}, expert {e}");
                    }
                }
            }
        }
    }

    #[test]
    fn zero_total_is_an_error_naming_layer_and_step() {
        let loads = vec![1.0, 3.0, 0.0, 0.0];
        let err = Trace::from_dense("t".into(), Path::new("f.npy"), 0, vec![0, 7], vec![0, 1], Loads::F32(loads))
            .unwrap_err()
            .to_string();
        assert!(err.contains("f.npy") && err.contains("layer 7") && err.contains("step 0"), "{err}");
    }

    #[test]
    fn the_binary_bundles_every_trace_of_datasets() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".parquet"))
            .collect();
        on_disk.sort();
        let bundled: Vec<&str> = BUNDLED.iter().map(|b| b.file).collect();
        assert_eq!(bundled, on_disk);
        for b in BUNDLED {
            assert_eq!(b.bytes, std::fs::read(dir.join(b.file)).unwrap().as_slice(), "{}", b.file);
        }
        let from_binary = read_inputs(&Input::bundled(), &ReadOptions::default()).unwrap();
        let from_files: Vec<PathBuf> = on_disk.iter().map(|f| dir.join(f)).collect();
        let from_files = read_all(&from_files, &ReadOptions::default()).unwrap();
        assert_eq!(from_binary.len(), from_files.len());
        for (a, b) in from_binary.iter().zip(&from_files) {
            assert_eq!((&a.name, a.steps(), &a.layer_ids, &a.expert_ids), (&b.name, b.steps(), &b.layer_ids, &b.expert_ids));
            assert_eq!(a.layer_proportions(0), b.layer_proportions(0));
        }
        assert_eq!(from_binary[0].source, Path::new("<bundled>/gpt12-e16-top2-s1.parquet"));
    }

    /// The files are read side by side, but a run fails as if they were read one
    /// after the other: on the first bad file (or repeated trace name) in the
    /// inputs' order, whichever decoder finishes first; good reads keep that order.
    #[test]
    fn inputs_read_side_by_side_fail_in_the_inputs_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, text).unwrap();
            p
        };
        let grid = |v: &str| format!("step,layer,expert,tokens\n0,0,0,1\n0,0,1,3\n1,0,0,{v}\n1,0,1,2\n");
        let good = file("good.csv", &grid("2"));
        let other = file("other.csv", &grid("5"));
        let again = file("again/good.csv", &grid("2"));
        let negative = file("negative.csv", &grid("-1"));
        let empty = file("empty.csv", "");
        let pool = rayon::ThreadPoolBuilder::new().num_threads(4).build().unwrap();
        let read = |paths: &[&PathBuf]| {
            let paths: Vec<PathBuf> = paths.iter().map(|p| p.to_path_buf()).collect();
            pool.install(|| read_all(&paths, &ReadOptions::default()))
        };
        let fails_on = |paths: &[&PathBuf], want: &str| {
            let err = read(paths).unwrap_err().to_string();
            assert!(err.contains(want), "{paths:?}: {err}");
        };
        fails_on(&[&good, &negative, &empty], "negative.csv");
        fails_on(&[&good, &empty, &negative], "empty.csv");
        fails_on(&[&empty, &good, &negative], "empty.csv");
        fails_on(&[&good, &again, &negative], "is also used by");
        fails_on(&[&negative, &good, &again], "negative.csv");
        let ok = read(&[&other, &good]).unwrap();
        assert_eq!(ok.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["other", "good"]);
        assert_eq!(ok[0].proportion(1, 0, 0), 5.0 / 7.0);
    }

    #[test]
    fn negative_and_nan_loads_are_errors() {
        for (v, word) in [(-1.0, "negative"), (f64::NAN, "NaN"), (f64::INFINITY, "infinite")] {
            let loads = vec![1.0, 3.0, v, 1.0];
            let err = Trace::from_dense("t".into(), Path::new("f"), 5, vec![0], vec![0, 1], Loads::F64(loads))
                .unwrap_err()
                .to_string();
            assert!(err.contains(word) && err.contains("step 6") && err.contains("expert 0"), "{err}");
        }
    }
}
