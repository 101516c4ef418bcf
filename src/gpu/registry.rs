//! One registry of our CUDA kernels per GPU: every `kernels/*.cu` file is embedded
//! in the binary, compiled with NVRTC for the device's own architecture the first
//! time one of its functions is asked for (once per set of compile options), and
//! kept loaded, the way candle's `get_or_load_func` serves its kernels.
//!
//! NVRTC compiles straight to the device's machine code (CUBIN), so loading a module
//! costs no further compile in the driver. The CUBIN is also kept on disk, checked by
//! its SHA-256 when read back ([`kernel_cache_dir`]), keyed by the source, the compile options, the GPU's
//! architecture and the versions of NVRTC and the driver, so a new process loads it
//! instead of paying NVRTC's compile again. A run asks for the modules it will use as
//! soon as its input is read and the GPU open ([`Gpu::prefetch`]), each on a thread of
//! its own, so a fresh machine compiles them side by side.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::Context;
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, PinnedHostSlice};
use cudarc::nvrtc::Ptx;

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

/// A module being made or made: the first thread to ask for it compiles it (or loads
/// it from the disk cache) and any other thread asking meanwhile waits for that.
type ModuleCell = Arc<OnceLock<Result<Arc<CudaModule>, String>>>;

/// One GPU: its context, the modules compiled for it, the statistics stage's
/// pinned staging buffers and the loads of the runs' traces.
pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub name: String,
    modules: Mutex<HashMap<ModuleKey, ModuleCell>>,
    /// Where compiled modules are kept between processes ([`kernel_cache_dir`]).
    cache: Option<std::path::PathBuf>,
    /// How many modules NVRTC compiled for this registry ([`Gpu::compiles`]).
    compiles: std::sync::atomic::AtomicUsize,
    /// Pinned staging buffers of the statistics stage's input, kept for the next call
    /// (see `stats::cuda`): pinning costs about 0.5 ms a MB on the H200's host.
    pub(crate) staging: Mutex<Vec<PinnedHostSlice<f32>>>,
    /// Loads of the traces of runs now, kept for their stages (see `gpu::resident`).
    pub(crate) resident: Mutex<Vec<Arc<super::resident::DeviceLoads>>>,
}

impl Gpu {
    pub fn new(ctx: Arc<CudaContext>, name: String) -> Gpu {
        Gpu::with_kernel_cache(ctx, name, kernel_cache_dir())
    }

    /// [`Gpu::new`] keeping compiled modules in `cache` (`None`: nowhere) instead of
    /// [`kernel_cache_dir`]; a registry of its own over the same context.
    pub fn with_kernel_cache(ctx: Arc<CudaContext>, name: String, cache: Option<std::path::PathBuf>) -> Gpu {
        Gpu {
            ctx,
            name,
            modules: Mutex::new(HashMap::new()),
            cache,
            compiles: std::sync::atomic::AtomicUsize::new(0),
            staging: Mutex::new(Vec::new()),
            resident: Mutex::new(Vec::new()),
        }
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
        let module = self.module(src, options)?;
        module.load_function(func).with_context(|| format!("loading kernel {func} of kernels/{}", src.file))
    }

    /// The module of `src` compiled with `options`: from the registry, else from the
    /// disk cache, else compiled by NVRTC. Two threads asking for one module at once
    /// make it once. A module that could not be made is not remembered, so the next
    /// call tries again (and reports the error again).
    pub fn module(&self, src: &'static Source, options: &[String]) -> anyhow::Result<Arc<CudaModule>> {
        self.ctx.bind_to_thread().context("making the GPU's context current on this thread")?;
        let key: ModuleKey = (src.file, options.to_vec());
        let cell = self.modules.lock().unwrap_or_else(|e| e.into_inner()).entry(key.clone()).or_default().clone();
        match cell.get_or_init(|| self.make(src, options).map_err(|e| format!("{e:#}"))) {
            Ok(m) => Ok(m.clone()),
            Err(why) => {
                let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
                if modules.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                    modules.remove(&key);
                }
                Err(anyhow::anyhow!("{why}"))
            }
        }
    }

    /// Starts making the modules of `sources` (default options) on threads of their
    /// own and returns at once; the kernels' first users then find them made, or wait
    /// for the one thread making theirs. Errors are left for those users to meet.
    pub fn prefetch(self: &Arc<Self>, sources: &[&'static Source]) {
        for &src in sources {
            // Made or being made already (a sweep's later units): nothing to start.
            if self.modules.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&(src.file, Vec::new())) {
                continue;
            }
            let gpu = Arc::clone(self);
            let spawned = std::thread::Builder::new().name(format!("kernels {}", src.file)).spawn(move || {
                let _ = gpu.module(src, &[]);
            });
            // Without a thread the first user makes the module itself.
            if let Ok(handle) = spawned {
                PREFETCHING.lock().unwrap_or_else(|e| e.into_inner()).push(handle);
            }
        }
    }

    fn make(&self, src: &'static Source, options: &[String]) -> anyhow::Result<Arc<CudaModule>> {
        let (major, minor) = self.ctx.compute_capability().context("reading the GPU's compute capability")?;
        let arch = format!("sm_{major}{minor}");
        let stem = src.file.trim_end_matches(".cu");
        let cached = self.cache.as_ref().map(|d| d.join(format!("{stem}-{}.cubin", cache_key(src, options, &arch))));
        if let Some(path) = &cached
            && let Some(image) = load_cached(path)
            && let Ok(m) = self.ctx.load_module(Ptx::from_binary(image))
        {
            return Ok(m);
        }
        let image = {
            let _span = crate::profile::span(|| format!("kernels: {} compiled by NVRTC", src.file));
            self.compiles.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            nvrtc_cubin(src, options, &arch)?
        };
        if let Some(path) = &cached {
            store(path, &image);
        }
        let _span = crate::profile::span(|| format!("kernels: {} loaded", src.file));
        self.ctx.load_module(Ptx::from_binary(image)).with_context(|| format!("loading kernels/{}", src.file))
    }

    /// How many modules NVRTC has compiled for this registry (the rest came from the
    /// disk cache or were made already).
    pub fn compiles(&self) -> usize {
        self.compiles.load(std::sync::atomic::Ordering::Relaxed)
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

/// The threads [`Gpu::prefetch`] started, until [`finish_prefetches`] joins them.
static PREFETCHING: Mutex<Vec<std::thread::JoinHandle<()>>> = Mutex::new(Vec::new());

/// Waits for every module [`Gpu::prefetch`] started to be made. A process calls it
/// before it exits, also after an error (a bad input found while the kernels
/// compile): exiting tears down NVRTC's library state, which a compile still running
/// on another thread may be using.
pub fn finish_prefetches() {
    let started = std::mem::take(&mut *PREFETCHING.lock().unwrap_or_else(|e| e.into_inner()));
    for handle in started {
        let _ = handle.join();
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

/// The cache key of a module: SHA-256 of everything its CUBIN depends on.
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

/// Compiles `src` with NVRTC for the real architecture `arch` (`sm_90`) and returns
/// the CUBIN: the device's machine code, which the driver loads without compiling.
/// A compile error carries NVRTC's log.
fn nvrtc_cubin(src: &Source, options: &[String], arch: &str) -> anyhow::Result<Vec<u8>> {
    use cudarc::nvrtc::{result, sys};
    use std::ffi::{CStr, CString};

    /// Destroys the program however the compile ends.
    struct Program(sys::nvrtcProgram);
    impl Drop for Program {
        fn drop(&mut self) {
            // SAFETY: made by create_program and destroyed only here.
            let _ = unsafe { result::destroy_program(self.0) };
        }
    }

    let what = || format!("kernels/{} ({})", src.file, options.join(" "));
    let code = CString::new(src.code).with_context(|| format!("{} holds a NUL byte", what()))?;
    let name = CString::new(src.file).with_context(|| format!("{} holds a NUL byte", what()))?;
    let prog = Program(result::create_program(&code, Some(&name)).map_err(|e| anyhow::anyhow!("NVRTC could not take {}: {e:?}", what()))?);
    let mut opts = vec![format!("--gpu-architecture={arch}")];
    opts.extend(options.iter().cloned());
    // SAFETY: `prog` is a live program; `code` and `name` outlive it.
    if let Err(e) = unsafe { result::compile_program(prog.0, &opts) } {
        // SAFETY: as above.
        let log = unsafe { result::get_program_log(prog.0) }
            .map(|l| {
                let bytes: Vec<u8> = l.iter().map(|&c| c as u8).collect();
                CStr::from_bytes_until_nul(&bytes).map_or_else(|_| String::from_utf8_lossy(&bytes).into_owned(), |c| c.to_string_lossy().into_owned())
            })
            .unwrap_or_default();
        anyhow::bail!("NVRTC could not compile {} for {arch}: {e:?}\n{}", what(), log.trim_end());
    }
    let mut size = 0usize;
    // SAFETY: the program compiled; NVRTC writes one usize.
    unsafe { sys::nvrtcGetCUBINSize(prog.0, &mut size) }.result().map_err(|e| anyhow::anyhow!("NVRTC gave no CUBIN for {}: {e:?}", what()))?;
    anyhow::ensure!(size > 0, "NVRTC gave an empty CUBIN for {} ({arch})", what());
    let mut image = vec![0u8; size];
    // SAFETY: the program compiled; NVRTC writes `size` bytes into a buffer of that size.
    unsafe { sys::nvrtcGetCUBIN(prog.0, image.as_mut_ptr().cast()) }.result().map_err(|e| anyhow::anyhow!("NVRTC gave no CUBIN for {}: {e:?}", what()))?;
    Ok(image)
}

/// A cache file is the CUBIN followed by its SHA-256 ([`store`]).
const DIGEST: usize = 32;

/// The CUBIN kept at `path`, if the file is whole: an ELF image whose SHA-256 is the
/// one stored after it. The driver is given only the image's address, not its length,
/// and reads past the end of a cut-short image (the H200's driver crashed or hung on
/// one), so an empty, cut-short or altered file is never handed to it; the module is
/// compiled again and the file replaced.
fn load_cached(path: &std::path::Path) -> Option<Vec<u8>> {
    use sha2::{Digest, Sha256};
    let mut bytes = std::fs::read(path).ok()?;
    // An ELF64 header is 64 bytes.
    if bytes.len() < 64 + DIGEST {
        return None;
    }
    let digest = bytes.split_off(bytes.len() - DIGEST);
    (bytes.starts_with(b"\x7fELF") && Sha256::digest(&bytes).as_slice() == digest.as_slice()).then_some(bytes)
}

/// Writes the CUBIN `image` and its SHA-256 to `path` through a temporary file,
/// synced and then renamed into place, so that a reader never sees half a file;
/// errors are ignored (the next process compiles).
fn store(path: &std::path::Path, image: &[u8]) {
    use sha2::{Digest, Sha256};
    use std::io::Write;
    let Some(dir) = path.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    if let Ok(mut tmp) = tempfile::NamedTempFile::new_in(dir)
        && tmp.write_all(image).is_ok()
        && tmp.write_all(&Sha256::digest(image)).is_ok()
        && tmp.as_file().sync_all().is_ok()
    {
        let _ = tmp.persist(path);
    }
}
