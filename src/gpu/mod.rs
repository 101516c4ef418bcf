//! The one place that picks the device (`--device auto|cpu|cuda`).
//!
//! The binary loads the CUDA driver and NVRTC at run time (cudarc's dynamic
//! loading), so one build runs with or without a GPU. `auto` uses a GPU when one
//! is usable and otherwise says in one line why it fell back to the CPU.

mod registry;
pub mod resident;
pub mod timeline;

use std::sync::{Arc, Mutex};

use cudarc::driver::CudaContext;

pub use registry::{Gpu, LSTM, PLACEMENT, SCORE, SHARES, ScoreKernels, Source, WINDOW_STATS, WindowKernels, finish_prefetches, kernel_cache_dir};

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceRequest {
    Auto,
    Cpu,
    Cuda,
}

/// The device a run uses.
#[derive(Clone)]
pub enum Device {
    Cpu,
    Cuda(Arc<Gpu>),
}

impl Device {
    pub fn describe(&self) -> String {
        match self {
            Device::Cpu => "cpu".into(),
            Device::Cuda(g) => format!("cuda:{} ({})", g.ctx.ordinal(), g.name),
        }
    }
    pub fn is_cuda(&self) -> bool {
        matches!(self, Device::Cuda(_))
    }
}

/// `--device cuda` on a machine that cannot run it: a usage error (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("--device cuda: no usable CUDA device: {0}")]
pub struct NoCuda(pub Unavailable);

/// Why no GPU can be used (no driver, no NVRTC, the device would not open).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

/// Opens GPU 0, or says why not. Never panics, also when the driver library is absent.
pub fn probe_cuda() -> Result<Device, Unavailable> {
    probe_cuda_at(0)
}

/// How many CUDA devices the driver sees (0 without a driver).
pub fn cuda_device_count() -> usize {
    // SAFETY: only loads and unloads a shared library to see whether it exists.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return 0;
    }
    std::panic::catch_unwind(|| CudaContext::device_count().map(|n| n.max(0) as usize).unwrap_or(0)).unwrap_or(0)
}

/// GPUs opened so far in this process, by ordinal: a sweep's units (each a whole
/// run) then share one context, its kernels compiled once and its pinned staging
/// buffers.
static OPENED: Mutex<Vec<(usize, Arc<Gpu>)>> = Mutex::new(Vec::new());

/// Opens GPU `ordinal` (or hands back the one this process opened), or says why not.
pub fn probe_cuda_at(ordinal: usize) -> Result<Device, Unavailable> {
    // SAFETY: only loads and unloads a shared library to see whether it exists.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(Unavailable("the CUDA driver library (libcuda.so) was not found".into()));
    }
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(Unavailable("NVRTC (libnvrtc.so) was not found; add the CUDA toolkit's lib64 to LD_LIBRARY_PATH".into()));
    }
    let mut opened_before = OPENED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, g)) = opened_before.iter().find(|(o, _)| *o == ordinal) {
        return Ok(Device::Cuda(g.clone()));
    }
    let opened = std::panic::catch_unwind(|| CudaContext::new(ordinal));
    match opened {
        Ok(Ok(ctx)) => {
            let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
            let g = Arc::new(Gpu::new(ctx, name));
            opened_before.push((ordinal, g.clone()));
            Ok(Device::Cuda(g))
        }
        Ok(Err(e)) => Err(Unavailable(format!("the CUDA driver could not open device {ordinal}: {e}"))),
        Err(_) => Err(Unavailable("the CUDA driver library could not be used".into())),
    }
}

/// Resolves the request into a device plus, for `auto` on the CPU, the reason.
pub fn choose(req: DeviceRequest) -> Result<(Device, Option<String>), NoCuda> {
    choose_at(req, 0)
}

/// [`choose`] with GPU `ordinal`.
pub fn choose_at(req: DeviceRequest, ordinal: usize) -> Result<(Device, Option<String>), NoCuda> {
    match req {
        DeviceRequest::Cpu => Ok((Device::Cpu, None)),
        DeviceRequest::Cuda => probe_cuda_at(ordinal).map(|d| (d, None)).map_err(NoCuda),
        DeviceRequest::Auto => match probe_cuda_at(ordinal) {
            Ok(d) => Ok((d, None)),
            Err(why) => Ok((Device::Cpu, Some(format!("device auto: using the CPU ({why})")))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_always_available_and_auto_never_fails() {
        assert!(matches!(choose(DeviceRequest::Cpu), Ok((Device::Cpu, None))));
        let (dev, note) = choose(DeviceRequest::Auto).unwrap();
        // Without a GPU, auto explains its fallback in one line.
        if !dev.is_cuda() {
            let note = note.unwrap();
            assert!(note.starts_with("device auto: using the CPU (") && !note.contains('\n'), "{note}");
        }
    }
}
