//! One registry of our CUDA kernels per GPU: every `kernels/*.cu` file is embedded
//! in the binary, compiled with NVRTC for the device's own architecture the first
//! time one of its functions is asked for (once per set of compile options), and
//! kept loaded, the way candle's `get_or_load_func` serves its kernels.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, PinnedHostSlice};
use cudarc::nvrtc::{CompileOptions, compile_ptx_with_opts};

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

type ModuleKey = (&'static str, Vec<String>);

/// One GPU: its context, the modules compiled for it and the statistics stage's
/// pinned staging buffers.
pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub name: String,
    modules: Mutex<HashMap<ModuleKey, Arc<CudaModule>>>,
    /// Pinned staging buffers of the statistics stage's input, kept for the next call
    /// (see `stats::cuda`): pinning costs about 0.5 ms a MB on the H200's host.
    pub(crate) staging: Mutex<Vec<PinnedHostSlice<f32>>>,
}

impl Gpu {
    pub fn new(ctx: Arc<CudaContext>, name: String) -> Gpu {
        Gpu { ctx, name, modules: Mutex::new(HashMap::new()), staging: Mutex::new(Vec::new()) }
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
        let opts = CompileOptions { arch: Some(arch), name: Some(src.file.into()), options: options.to_vec(), ..Default::default() };
        let ptx = compile_ptx_with_opts(src.code, opts)
            .with_context(|| format!("compiling kernels/{} ({}) with NVRTC", src.file, options.join(" ")))?;
        self.ctx.load_module(ptx).with_context(|| format!("loading kernels/{}", src.file))
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
