//! Our CUDA kernels, compiled once per context with NVRTC and kept loaded.
//!
//! Each `kernels/*.cu` file is embedded with `include_str!` and compiled for the
//! device's own architecture the first time a kernel of it is asked for.

use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{Context, anyhow};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, PinnedHostSlice};
use cudarc::nvrtc::{CompileOptions, compile_ptx_with_opts};

/// Source of the window-statistics kernels (`window_stats_short`, `window_stats_mid`,
/// `window_stats_long`, `layer_summary`).
pub const WINDOW_STATS_CU: &str = include_str!("../../kernels/window_stats.cu");

/// The loaded kernels of one context.
pub struct Kernels {
    _module: Arc<CudaModule>,
    /// Windows of at most 4 steps.
    pub window_stats_short: CudaFunction,
    /// Windows of 5 to 128 steps (dynamic shared memory).
    pub window_stats_mid: CudaFunction,
    /// Longer windows (dynamic shared memory).
    pub window_stats_long: CudaFunction,
    pub layer_summary: CudaFunction,
}

/// One GPU: its context and, once compiled, its kernels.
pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub name: String,
    kernels: OnceLock<Result<Kernels, String>>,
    /// Pinned staging buffers of the statistics stage's input, kept for the next call
    /// (see `stats::cuda`): pinning costs about 0.5 ms a MB on the H200's host.
    pub(crate) staging: Mutex<Vec<PinnedHostSlice<f32>>>,
}

impl Gpu {
    pub fn new(ctx: Arc<CudaContext>, name: String) -> Gpu {
        Gpu { ctx, name, kernels: OnceLock::new(), staging: Mutex::new(Vec::new()) }
    }

    /// The kernels, compiled and loaded on first use. Also makes the context current
    /// on the calling thread: a process opens each GPU once and may use it from any
    /// thread, and some driver calls (a kernel's attributes and occupancy) do not bind
    /// the context themselves.
    pub fn kernels(&self) -> anyhow::Result<&Kernels> {
        self.ctx.bind_to_thread().context("making the GPU's context current on this thread")?;
        self.kernels.get_or_init(|| self.load().map_err(|e| format!("{e:#}"))).as_ref().map_err(|e| anyhow!("{e}"))
    }

    fn load(&self) -> anyhow::Result<Kernels> {
        let (major, minor) = self.ctx.compute_capability().context("reading the GPU's compute capability")?;
        let arch: &'static str = Box::leak(format!("sm_{major}{minor}").into_boxed_str());
        let opts = CompileOptions { arch: Some(arch), name: Some("window_stats.cu".into()), ..Default::default() };
        let ptx = compile_ptx_with_opts(WINDOW_STATS_CU, opts).context("compiling kernels/window_stats.cu with NVRTC")?;
        let module = self.ctx.load_module(ptx).context("loading kernels/window_stats.cu")?;
        Ok(Kernels {
            window_stats_short: module.load_function("window_stats_short").context("loading kernel window_stats_short")?,
            window_stats_mid: module.load_function("window_stats_mid").context("loading kernel window_stats_mid")?,
            window_stats_long: module.load_function("window_stats_long").context("loading kernel window_stats_long")?,
            layer_summary: module.load_function("layer_summary").context("loading kernel layer_summary")?,
            _module: module,
        })
    }
}
