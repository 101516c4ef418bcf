//! A trace's loads kept on the GPU for a run: they go up once, and the statistics
//! stage and the forecast stage make every share they need there
//! (`kernels/shares.cu`: float32 series for the window kernels, a layer's float64
//! steps for the scoring kernels) instead of making them on the host and copying
//! them up, stage by stage and layer by layer. Each share is the host's one float64
//! division with the host's total, so the GPU's shares have the host's bits and
//! every output is what the host-made shares gave.
//!
//! Loads go up through the two pinned staging buffers of the statistics stage, a
//! piece at a time, the host filling one while the other copies (a copy from
//! pageable memory runs at a third of the speed). A run's statistics stage has the
//! GPU keep each trace's loads ([`Gpu::keep`]), within a quarter of the device
//! memory free when each goes up, and its forecast stage releases them
//! ([`Gpu::release`]; the run does too, however it ends). A trace that does not
//! fit, or whose loads are float64, has its shares made on the host as before.

use std::sync::Arc;

use anyhow::Context;
use cudarc::driver::{CudaEvent, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};
use rayon::prelude::*;

use super::{Gpu, SHARES};
use crate::trace::Trace;

/// A trace's loads on a GPU, `[t][l][e]` float32, and each (step, layer)'s total,
/// `[t][l]` float64.
pub struct DeviceLoads {
    trace: u64,
    pub steps: usize,
    pub layers: usize,
    pub experts: usize,
    pub loads: CudaSlice<f32>,
    pub totals: CudaSlice<f64>,
}

impl DeviceLoads {
    fn bytes(&self) -> usize {
        4 * self.loads.len() + 8 * self.totals.len()
    }

    /// Enqueues layer `l`'s shares, float64, step-major (`out[t * E + e]`), into the
    /// front of `out` on `stream`.
    pub fn steps_f64(&self, gpu: &Gpu, stream: &Arc<CudaStream>, l: usize, out: &mut CudaSlice<f64>) -> anyhow::Result<()> {
        let f = gpu.get_or_load_func(&SHARES, &[], "shares_steps_f64")?;
        let n = self.steps * self.experts;
        assert!(l < self.layers && out.len() >= n, "layer {l} of {} into {} of {n} values", self.layers, out.len());
        let (t, nl, ne, li) = (self.steps as i64, self.layers as i32, self.experts as i32, l as i32);
        let cfg = LaunchConfig { grid_dim: (n.div_ceil(256).clamp(1, 4096) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        let mut b = stream.launch_builder(&f);
        b.arg(&self.loads).arg(&self.totals).arg(&t).arg(&nl).arg(&ne).arg(&li).arg(out);
        // SAFETY: loads holds T × L × E floats and totals T × L doubles (checked when
        // they went up), out at least T × E (asserted); the kernel's grid-stride loop
        // covers indices below T × E in 64 bits.
        super::timeline::kernels(stream, || format!("shares of layer {l}"), || unsafe { b.launch(cfg) }).context("launching shares_steps_f64")?;
        Ok(())
    }

    /// Enqueues layers `l0 .. l0 + n`'s shares, float32, series-major (`out[(g * E
    /// + e) * T + t]` for layer `l0 + g`), into the front of `out` on `stream`.
    pub fn series_f32(&self, gpu: &Gpu, stream: &Arc<CudaStream>, l0: usize, n: usize, out: &mut CudaSlice<f32>) -> anyhow::Result<()> {
        if n == 0 {
            return Ok(());
        }
        let f = gpu.get_or_load_func(&SHARES, &[], "shares_series_f32")?;
        assert!(l0 + n <= self.layers && out.len() >= n * self.experts * self.steps, "layers {l0}..{} of {}", l0 + n, self.layers);
        anyhow::ensure!(
            self.steps < i32::MAX as usize && self.experts.div_ceil(32) <= 65_535 && n <= 65_535,
            "a trace of {} steps × {} experts is beyond the share kernel's grid",
            self.steps,
            self.experts
        );
        let (t, nl, ne, l0i) = (self.steps as i32, self.layers as i32, self.experts as i32, l0 as i32);
        let cfg = LaunchConfig {
            grid_dim: (self.steps.div_ceil(32) as u32, self.experts.div_ceil(32) as u32, n as u32),
            block_dim: (32, 8, 1),
            shared_mem_bytes: 0,
        };
        let mut b = stream.launch_builder(&f);
        b.arg(&self.loads).arg(&self.totals).arg(&t).arg(&nl).arg(&ne).arg(&l0i).arg(out);
        // SAFETY: loads holds T × L × E floats, totals T × L doubles, out at least n ×
        // E × T floats (asserted); every block's threads check t < T and e < E, and
        // l0 + n <= L; offsets are computed in 64 bits.
        super::timeline::kernels(stream, || format!("shares of layers {l0}..{}", l0 + n), || unsafe { b.launch(cfg) })
            .context("launching shares_series_f32")?;
        Ok(())
    }
}

impl Gpu {
    /// The loads of `trace` on this GPU: those [`keep`](Self::keep) holds, else put
    /// there now for the caller alone (freed when the last `Arc` goes). `None` when
    /// its loads are float64 or would take more than a quarter of the device memory
    /// free now: its shares are then made on the host.
    pub fn resident(&self, trace: &Trace) -> anyhow::Result<Option<Arc<DeviceLoads>>> {
        let held = self.resident.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = held.iter().find(|r| r.trace == trace.id()) {
            return Ok(Some(r.clone()));
        }
        drop(held);
        self.upload_if_room(trace)
    }

    /// [`resident`](Self::resident), and the loads held for the run's next stages
    /// until [`release`](Self::release).
    pub fn keep(&self, trace: &Trace) -> anyhow::Result<Option<Arc<DeviceLoads>>> {
        let mut held = self.resident.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = held.iter().find(|r| r.trace == trace.id()) {
            return Ok(Some(r.clone()));
        }
        let r = self.upload_if_room(trace)?;
        held.extend(r.clone());
        Ok(r)
    }

    fn upload_if_room(&self, trace: &Trace) -> anyhow::Result<Option<Arc<DeviceLoads>>> {
        let Some(loads) = trace.loads_f32() else { return Ok(None) };
        let bytes = 4 * loads.len() + 8 * trace.totals().len();
        let (free, _) = self.ctx.mem_get_info().context("reading the GPU's free memory")?;
        if bytes > free / 4 {
            return Ok(None);
        }
        let _span = crate::profile::span(|| format!("loads of {} to the GPU ({} MB)", trace.name, bytes >> 20));
        let r = self.upload(trace, loads).with_context(|| format!("copying the loads of {} to the GPU", trace.name))?;
        Ok(Some(Arc::new(r)))
    }

    /// Frees the loads of `trace` on this GPU, if it holds them (once the kernels
    /// that read them are done: the device memory is freed on its stream).
    pub fn release(&self, trace: &Trace) {
        self.resident.lock().unwrap_or_else(|e| e.into_inner()).retain(|r| r.trace != trace.id());
    }

    /// Bytes of loads this GPU holds for runs now.
    pub fn resident_bytes(&self) -> usize {
        self.resident.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|r| r.bytes()).sum()
    }

    fn upload(&self, trace: &Trace, loads: &[f32]) -> anyhow::Result<DeviceLoads> {
        let stream = self.ctx.new_stream()?;
        let totals = stream.clone_htod(trace.totals())?;
        // SAFETY: every element is written by the copies below before any kernel reads it.
        let mut d: CudaSlice<f32> = unsafe { stream.alloc(loads.len().max(1)) }?;
        let piece = crate::stats::cuda::STAGE_BYTES / 4;
        let mut stage = crate::stats::cuda::take_staging(self, piece)?;
        let copied = (|| -> anyhow::Result<()> {
            let [a, b] = &mut stage;
            let bufs = [a.as_mut_slice()?, b.as_mut_slice()?];
            // A buffer is filled again once its last copy is done (its event).
            let mut copying: [Option<CudaEvent>; 2] = [None, None];
            for (k, chunk) in loads.chunks(piece).enumerate() {
                let i = k % 2;
                if let Some(e) = copying[i].take() {
                    e.synchronize()?;
                }
                let host = &mut bufs[i][..chunk.len()];
                host.par_chunks_mut(1 << 16).zip(chunk.par_chunks(1 << 16)).for_each(|(h, c)| h.copy_from_slice(c));
                let at = k * piece;
                // A plain slice of pinned memory: the copy is asynchronous and records
                // nothing, hence the event.
                stream.memcpy_htod(&*host, &mut d.slice_mut(at..at + chunk.len()))?;
                copying[i] = Some(stream.record_event(None)?);
            }
            stream.synchronize()?;
            Ok(())
        })();
        if copied.is_ok() {
            crate::stats::cuda::keep_staging(self, stage);
        } else {
            // Copies may still read the buffers: wait for them before they are freed.
            let _ = stream.synchronize();
        }
        copied?;
        Ok(DeviceLoads { trace: trace.id(), steps: trace.steps(), layers: trace.layers(), experts: trace.experts(), loads: d, totals })
    }
}
