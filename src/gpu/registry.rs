//! One registry of our CUDA kernels per GPU: every `kernels/*.cu` file is embedded
//! in the binary, compiled with NVRTC for the device's own architecture the first
//! time one of its functions is asked for (once per set of compile options), and
//! kept loaded, the way candle's `get_or_load_func` serves its kernels.
//!
//! The compiled PTX is also kept on disk ([`kernel_cache_dir`]), keyed by the
//! source, the compile options, the GPU's architecture and the versions of NVRTC
//! and the driver, so a new process loads it instead of paying NVRTC's compile
//! (about 0.3 s a module) again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, PinnedHostSlice};
use cudarc::nvrtc::{CompileOptions, Ptx, compile_ptx_with_opts};

/// A CUDA source file of `kernels/`, embedded in the binary.
#[derive(Debug)]
pub struct Source {
    pub file: &'static str,
    pub code: &'static str,
}

/// The window-statistics kernels (`window_stats_short`, `_mid`, `_long`,
/// `layer_summary`).
pub static WINDOW_STATS: Source = Source { file: "window_stats.cu", code: include_str!("../../kernels/window_stats.cu") };

/// The LSTM kernels, compiled per network size (`-DD=`, `-DH=`, `-DR=`).
pub static LSTM: Source = Source { file: "lstm.cu", code: include_str!("../../kernels/lstm.cu") };

/// The scoring kernels of the rolling-origin protocol (`score_flat`,
/// `sw_avg_score`, `oracle_chunk_sort` and `oracle_select`, and the flat rows: `flat_rows`, `ema_chunk`, `ema_carry`,
/// `renorm_rows`).
pub static SCORE: Source = Source { file: "score.cu", code: include_str!("../../kernels/score.cu") };

/// A trace's shares made from its loads on the GPU (`shares_steps_f64`,
/// `shares_series_f32`; see `gpu::resident`).
pub static SHARES: Source = Source { file: "shares.cu", code: include_str!("../../kernels/shares.cu") };

/// Expert placement's realized imbalance (`placement_imbalance`).
pub static PLACEMENT: Source = Source { file: "placement.cu", code: include_str!("../../kernels/placement.cu") };

/// The window-statistics functions of one GPU.
pub struct WindowKernels {
    /// Windows of at most 4 steps.
    pub window_stats_short: CudaFunction,
    /// Windows of 5 to 128 steps (dynamic shared memory).
    pub window_stats_mid: CudaFunction,
    /// Longer windows (dynamic shared memory).
    pub window_stats_long: CudaFunction,
    pub layer_summary: CudaFunction,
}

/// The scoring functions of one GPU (kernels/score.cu).
pub struct ScoreKernels {
    pub score_flat: CudaFunction,
    pub sw_avg_score: CudaFunction,
    pub oracle_chunk_sort: CudaFunction,
    pub oracle_select: CudaFunction,
    pub flat_rows: CudaFunction,
    pub ema_chunk: CudaFunction,
    pub ema_carry: CudaFunction,
    pub renorm_rows: CudaFunction,
}

type ModuleKey = (&'static str, Vec<String>);

/// One GPU: its context, the modules compiled for it, the statistics stage's
/// pinned staging buffers and the loads of the runs' traces.
pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub name: String,
    modules: Mutex<HashMap<ModuleKey, Arc<CudaModule>>>,
    /// Pinned staging buffers of the statistics stage's input, kept for the next call
    /// (see `stats::cuda`): pinning costs about 0.5 ms a MB on the H200's host.
    pub(crate) staging: Mutex<Vec<PinnedHostSlice<f32>>>,
    /// Loads of the traces of runs now, kept for their stages (see `gpu::resident`).
    pub(crate) resident: Mutex<Vec<Arc<super::resident::DeviceLoads>>>,
}

impl Gpu {
    pub fn new(ctx: Arc<CudaContext>, name: String) -> Gpu {
        Gpu { ctx, name, modules: Mutex::new(HashMap::new()), staging: Mutex::new(Vec::new()), resident: Mutex::new(Vec::new()) }
    }

    /// The device's ordinal.
    pub fn ordinal(&self) -> usize {
        self.ctx.ordinal()
    }

    /// Function `func` of `src` compiled with the NVRTC `options` (macros such as
    /// `-DH=64`). The module is compiled and loaded the first time, then served from
    /// the registry. Also makes the context current on the calling thread: a process
    /// opens each GPU once and may use it from any thread, and some driver calls (a
    /// kernel's attributes and occupancy) do not bind the context themselves.
    pub fn get_or_load_func(&self, src: &'static Source, options: &[String], func: &str) -> anyhow::Result<CudaFunction> {
        self.ctx.bind_to_thread().context("making the GPU's context current on this thread")?;
        let key = (src.file, options.to_vec());
        let cached = self.modules.lock().unwrap_or_else(|e| e.into_inner()).get(&key).cloned();
        let module = match cached {
            Some(m) => m,
            None => {
                // Compiled without the lock, so other kernels stay available meanwhile;
                // if two threads compile one module, the first to finish is kept.
                let m = self.compile(src, options)?;
                self.modules.lock().unwrap_or_else(|e| e.into_inner()).entry(key).or_insert(m).clone()
            }
        };
        module.load_function(func).with_context(|| format!("loading kernel {func} of kernels/{}", src.file))
    }

    fn compile(&self, src: &'static Source, options: &[String]) -> anyhow::Result<Arc<CudaModule>> {
        let (major, minor) = self.ctx.compute_capability().context("reading the GPU's compute capability")?;
        let arch: &'static str = Box::leak(format!("sm_{major}{minor}").into_boxed_str());
        let cached = kernel_cache_dir().map(|d| d.join(format!("{}-{}.ptx", src.file.trim_end_matches(".cu"), cache_key(src, options, arch))));
        if let Some(path) = &cached
            && let Ok(text) = std::fs::read_to_string(path)
            && let Ok(m) = self.ctx.load_module(Ptx::from_src(text))
        {
            return Ok(m);
        }
        let opts = CompileOptions { arch: Some(arch), name: Some(src.file.into()), options: options.to_vec(), ..Default::default() };
        let ptx = compile_ptx_with_opts(src.code, opts)
            .with_context(|| format!("compiling kernels/{} ({}) with NVRTC", src.file, options.join(" ")))?;
        if let Some(path) = &cached {
            store_ptx(path, &ptx.to_src());
        }
        self.ctx.load_module(ptx).with_context(|| format!("loading kernels/{}", src.file))
    }

    /// The scoring kernels.
    pub fn score_kernels(&self) -> anyhow::Result<ScoreKernels> {
        let f = |name: &str| self.get_or_load_func(&SCORE, &[], name);
        Ok(ScoreKernels {
            score_flat: f("score_flat")?,
            sw_avg_score: f("sw_avg_score")?,
            oracle_chunk_sort: f("oracle_chunk_sort")?,
            oracle_select: f("oracle_select")?,
            flat_rows: f("flat_rows")?,
            ema_chunk: f("ema_chunk")?,
            ema_carry: f("ema_carry")?,
            renorm_rows: f("renorm_rows")?,
        })
    }

    /// The window-statistics kernels.
    pub fn window_kernels(&self) -> anyhow::Result<WindowKernels> {
        let f = |name: &str| self.get_or_load_func(&WINDOW_STATS, &[], name);
        Ok(WindowKernels {
            window_stats_short: f("window_stats_short")?,
            window_stats_mid: f("window_stats_mid")?,
            window_stats_long: f("window_stats_long")?,
            layer_summary: f("layer_summary")?,
        })
    }
}

/// Where compiled kernels are kept between processes: `$EXPERTCAST_KERNEL_CACHE`
/// (`off` or an empty value: nowhere), else `$XDG_CACHE_HOME/expertcast/kernels`,
/// else `$HOME/.cache/expertcast/kernels`. A cache that cannot be read or written
/// only costs the compile.
pub fn kernel_cache_dir() -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    if let Some(v) = std::env::var_os("EXPERTCAST_KERNEL_CACHE") {
        return (!v.is_empty() && v != "off").then(|| PathBuf::from(v));
    }
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => PathBuf::from(std::env::var_os("HOME").filter(|v| !v.is_empty())?).join(".cache"),
    };
    Some(base.join("expertcast").join("kernels"))
}

/// The cache key of a module: SHA-256 of everything its PTX depends on.
fn cache_key(src: &Source, options: &[String], arch: &str) -> String {
    use sha2::{Digest, Sha256};
    let (mut driver, mut major, mut minor) = (0i32, 0i32, 0i32);
    // SAFETY: both write one int each through valid pointers; the libraries are
    // loaded (a context exists, and NVRTC is asked for before any compile).
    unsafe {
        let _ = cudarc::driver::sys::cuDriverGetVersion(&mut driver);
        let _ = cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor);
    }
    let mut h = Sha256::new();
    for part in [src.code, &options.join("\u{1f}"), arch, &format!("driver {driver} nvrtc {major}.{minor}")] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    h.finalize().iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// Writes `text` to `path` through a temporary file renamed into place, so that a
/// reader never sees half a file; errors are ignored (the next process compiles).
fn store_ptx(path: &std::path::Path, text: &str) {
    let Some(dir) = path.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    if let Ok(mut tmp) = tempfile::NamedTempFile::new_in(dir) {
        use std::io::Write;
        if tmp.write_all(text.as_bytes()).is_ok() {
            let _ = tmp.persist(path);
        }
    }
}
