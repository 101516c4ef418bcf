//! Window statistics on the GPU: `kernels/window_stats.cu` through cudarc.
//!
//! The window kernels read float32 shares, series-major, in groups of layers sized
//! to fit the device's free memory. The trace's loads go up once
//! ([`crate::gpu::resident`], kept for the forecast stage) and a kernel makes each
//! group's shares from them. A trace whose loads are float64, or too big to keep,
//! has its shares prepared on the host instead: a piece (at most 16 MiB) at a time
//! into one of two pinned staging buffers, copied asynchronously, so that preparing
//! a piece overlaps copying the last one. Two CUDA streams alternate between groups,
//! so that one group's preparation and copies overlap the kernels of the other.
//! Layer summaries are reduced on the GPU; only they cross PCIe unless the
//! per-expert detail is asked for.

use std::sync::Arc;

use anyhow::{Context, bail};
use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
use cudarc::driver::{CudaSlice, CudaStream, LaunchConfig, PinnedHostSlice, PushKernelArg};
use rayon::prelude::*;

use super::{ExpertStats, LayerStats, Summaries, cpu};
use crate::gpu::Gpu;
use crate::trace::Trace;

/// Launch geometry of the window-statistics kernel of one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Outputs per warp.
    pub chunk: usize,
    pub warps_per_block: usize,
    pub blocks: usize,
    pub smem_bytes: usize,
}

/// Windows up to this length run `window_stats_short` (each window gathered from
/// shared memory); longer ones `window_stats_mid` up to [`MID_MAX_WINDOW`], then
/// `window_stats_long` (both O(1) work per output).
pub const SHORT_MAX_WINDOW: usize = 4;
pub const MID_MAX_WINDOW: usize = 128;

/// The kernel that computes window `w`.
pub fn kernel_for(k: &crate::gpu::WindowKernels, w: usize) -> &cudarc::driver::CudaFunction {
    if w <= SHORT_MAX_WINDOW {
        &k.window_stats_short
    } else if w <= MID_MAX_WINDOW {
        &k.window_stats_mid
    } else {
        &k.window_stats_long
    }
}

/// Outputs per span of `window_stats_mid` / `_long` (`SPAN` of kernels/window_stats.cu).
/// Chunks are whole spans, so that only a series' first and last spans are partial.
const SPAN: usize = 128;

/// Positions of the rings of `window_stats_mid` / `_long` for window `w`: `RING(W)` of
/// kernels/window_stats.cu, a multiple of the span that is at least `w - 1 + SPAN`.
fn ring(w: usize) -> usize {
    ((w.max(1) - 1) / SPAN + 2) * SPAN
}

/// Shared memory the kernel needs per warp for window `w`: `SHORT_SMEM_FLOATS` and
/// `SPAN_SMEM_FLOATS(W)` of kernels/window_stats.cu, in bytes.
pub fn smem_per_warp(w: usize) -> usize {
    let r = ring(w);
    let floats = if w <= SHORT_MAX_WINDOW {
        32 + 128
    } else if w <= MID_MAX_WINDOW {
        4 * (r + r / 32)
    } else {
        r + r / 32 + 4 * (SPAN + SPAN / 32) + 4 * (r / SPAN)
    };
    4 * floats
}

/// The largest window whose warp fits in `bytes` of shared memory.
pub fn max_window_for(bytes: usize) -> usize {
    // smem_per_warp grows with w: the last w that fits, by bisection.
    let (mut lo, mut hi) = (SHORT_MAX_WINDOW, 1 << 20);
    while lo + 1 < hi {
        let mid = (lo + hi) / 2;
        if smem_per_warp(mid) <= bytes { lo = mid } else { hi = mid }
    }
    lo
}

/// The largest window the kernel can run on `gpu` (its shared memory per block).
pub fn max_window(gpu: &Gpu) -> anyhow::Result<usize> {
    let optin = gpu
        .ctx
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
        .context("reading the GPU's shared memory per block")?;
    Ok(max_window_for(optin as usize))
}

/// Warps a block and dynamic shared memory a block for window `w`: up to 8 warps
/// within 96 KiB; two or three such blocks fill a multiprocessor as far as the
/// kernels' registers allow (W = 1000 on an H200: 1.032 ms with 8 warps a block, 1.075 ms
/// with the 5 that a 48 KiB budget gave).
pub fn block_shape(w: usize) -> (usize, usize) {
    let wpb = (96 * 1024 / smem_per_warp(w).max(1)).clamp(1, 8);
    (wpb, wpb * smem_per_warp(w))
}

/// Chooses chunk length and block shape. Chunks are whole spans of at least 8 W
/// outputs (so the W - 1 warm-up steps cost at most about 1/8), and enough
/// (series, chunk) warps to give every multiprocessor several, also for a small
/// trace. Between that many chunks a series and 3/4 as many (1/4 as many for
/// `window_stats_long`, W > 128, whose warm-up is W - 1 steps), the count is taken
/// that finishes soonest by a simple model: waves of `blocks_per_sm` resident
/// blocks on each of `sms` multiprocessors, each wave as long as a chunk and its
/// warm-up. Paper-scale bench, H200: W = 1000 gets 4 chunks a series (2.9 waves),
/// 0.906 ms instead of 0.923 ms with 11 (8 full waves; 0.958 ms with the 13 of the
/// 8 W minimum); W = 300, 11 instead of 30 chunks, 0.891 instead of 0.945 ms.
/// W = 10 / 100 keep 3/4: down to 1/4 they took 0.806 / 0.812 ms instead of
/// 0.800 / 0.802 ms.
pub fn geometry(w: usize, steps: usize, series: usize, sms: usize, blocks_per_sm: usize) -> Geometry {
    let n = cpu::outputs(steps, w).max(1);
    let want_warps = 16 * 32 * sms.max(1);
    let want_chunks = want_warps.div_ceil(series.max(1));
    let whole = |c: usize| c.next_multiple_of(SPAN).min(n);
    let (warps_per_block, smem_bytes) = block_shape(w);
    let chunk0 = whole((8 * w).max(n.div_ceil(want_chunks)).max(32));
    let c0 = n.div_ceil(chunk0);
    let resident = (sms * blocks_per_sm * warps_per_block).max(1);
    let warm = if w > SHORT_MAX_WINDOW { (w - 1).next_multiple_of(SPAN) } else { 0 };
    let cost = |chunk: usize| (series * n.div_ceil(chunk)).div_ceil(resident) * (chunk + warm);
    // Fewer chunks than c0 are longer than chunk0; on a tie the shortest wins. The
    // long kernel's warm-up is long enough to look down to c0 / 4.
    let fewest = if w > MID_MAX_WINDOW { c0 / 4 } else { c0 - c0 / 4 };
    let fewer = (fewest.max(1)..c0).rev().map(|c| whole(n.div_ceil(c)));
    let chunk = std::iter::once(chunk0).chain(fewer).min_by_key(|&c| cost(c)).unwrap_or(chunk0);
    let warps = series * n.div_ceil(chunk);
    Geometry { chunk, warps_per_block, blocks: warps.div_ceil(warps_per_block), smem_bytes }
}

/// Blocks of the kernel of window `w` that fit on one multiprocessor at once
/// (registers and shared memory), as the driver computes it.
pub fn blocks_per_sm(gpu: &Gpu, w: usize) -> anyhow::Result<usize> {
    let k = gpu.window_kernels()?;
    let (wpb, smem) = block_shape(w);
    let f = kernel_for(&k, w);
    f.set_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem as i32)
        .context("setting the shared memory of window_stats")?;
    let b = f
        .occupancy_max_active_blocks_per_multiprocessor(32 * wpb as u32, smem, None)
        .context("reading the occupancy of window_stats")?;
    Ok((b as usize).max(1))
}

/// The geometry [`launch_window_stats`] uses on `gpu`: chunks planned for
/// `plan_series` series, blocks for the `series` launched.
pub fn launch_geometry(gpu: &Gpu, w: usize, steps: usize, series: usize, plan_series: usize) -> anyhow::Result<Geometry> {
    let sms = gpu.ctx.attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as usize;
    let mut g = geometry(w, steps, plan_series.max(series), sms, blocks_per_sm(gpu, w)?);
    g.blocks = (series * cpu::outputs(steps, w).max(1).div_ceil(g.chunk)).div_ceil(g.warps_per_block);
    Ok(g)
}

/// Per-expert outputs of one window on the device, `[series][n]`.
pub struct DeviceOutputs {
    pub mean: Option<CudaSlice<f32>>,
    pub var: CudaSlice<f32>,
    pub range: CudaSlice<f32>,
}

/// Launches `window_stats` on `stream` for `series` series of `steps` steps held
/// series-major in `x`. Outputs are written into `out`, whose slices hold at least
/// `series * outputs(steps, w)` values. Chunks are planned for `plan_series` series
/// (the whole trace when it goes in groups of layers): the rounding of a series'
/// results depends on its chunks, so every group gets the same ones.
#[allow(clippy::too_many_arguments)]
pub fn launch_window_stats(
    gpu: &Gpu,
    stream: &Arc<CudaStream>,
    x: &CudaSlice<f32>,
    steps: usize,
    series: usize,
    plan_series: usize,
    w: usize,
    out: &mut DeviceOutputs,
) -> anyhow::Result<()> {
    let n = cpu::outputs(steps, w);
    if n == 0 || series == 0 {
        return Ok(());
    }
    let longest = max_window(gpu)?;
    if w > longest {
        bail!("window {w} is longer than the GPU kernel's shared memory allows ({longest} steps)");
    }
    assert!(x.len() >= series * steps, "input holds series × steps values");
    assert!(out.var.len() >= series * n && out.range.len() >= series * n, "outputs hold series × n values");
    if let Some(m) = &out.mean {
        assert!(m.len() >= series * n);
    }
    let k = gpu.window_kernels()?;
    let g = launch_geometry(gpu, w, steps, series, plan_series)?;
    let f = kernel_for(&k, w);
    let cfg = LaunchConfig {
        grid_dim: (g.blocks as u32, 1, 1),
        block_dim: (32 * g.warps_per_block as u32, 1, 1),
        shared_mem_bytes: g.smem_bytes as u32,
    };
    let (t, s, wi, chunk) = (steps as i32, series as i32, w as i32, g.chunk as i32);
    let null: u64 = 0;
    let mut b = stream.launch_builder(f);
    b.arg(x).arg(&t).arg(&s).arg(&wi).arg(&chunk);
    match out.mean.as_mut() {
        Some(m) => b.arg(m),
        None => b.arg(&null),
    };
    b.arg(&mut out.var).arg(&mut out.range);
    // SAFETY: x holds series × steps floats and each output series × n (asserted
    // above), all allocated by cudarc (256-byte aligned, as the float4 stores need);
    // the grid covers exactly series × ceil(n / chunk) warps (extra warps of the last
    // block return at once), and each warp's shared memory is smem_per_warp(w) bytes,
    // the smem_bytes / warps_per_block given here.
    unsafe { b.launch(cfg) }.with_context(|| format!("launching window_stats (W = {w}, {series} series × {steps} steps)"))?;
    Ok(())
}

/// Device buffers of the five layer summaries, `[layer][n]` each.
pub type DeviceSummaries = Summaries<CudaSlice<f32>>;

impl DeviceSummaries {
    pub fn alloc(stream: &Arc<CudaStream>, len: usize) -> anyhow::Result<Self> {
        Ok(Summaries::try_from_fn(|_| stream.alloc_zeros(len))?)
    }
}

/// Launches `layer_summary`: per layer and output, the reductions over its experts.
pub fn launch_layer_summary(
    gpu: &Gpu,
    stream: &Arc<CudaStream>,
    out: &DeviceOutputs,
    n: usize,
    layers: usize,
    experts: usize,
    sums: &mut DeviceSummaries,
) -> anyhow::Result<()> {
    if n == 0 || layers == 0 {
        return Ok(());
    }
    assert!(out.var.len() >= layers * experts * n && sums.var_mean.len() >= layers * n);
    let k = gpu.window_kernels()?;
    let cfg = LaunchConfig { grid_dim: (n.div_ceil(256) as u32, layers as u32, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    let (ni, ei) = (n as i32, experts as i32);
    let mut b = stream.launch_builder(&k.layer_summary);
    b.arg(&out.var).arg(&out.range).arg(&ni).arg(&ei);
    b.arg(&mut sums.var_mean).arg(&mut sums.var_max).arg(&mut sums.range_mean).arg(&mut sums.range_max).arg(&mut sums.std_mean);
    // SAFETY: var and range hold layers × experts × n floats, each summary layers × n
    // (asserted above); the grid has one thread per (output, layer), extra threads
    // return at once.
    unsafe { b.launch(cfg) }.context("launching layer_summary")?;
    Ok(())
}

/// Window statistics of `series` series (series-major in `x`), on the GPU, back on
/// the host: `(mean, var, range)`, each `[series][n]`. For tests and benchmarks.
pub fn window_stats_host(gpu: &Gpu, x: &[f32], steps: usize, w: usize) -> anyhow::Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    window_stats_host_planned(gpu, x, steps, w, x.len() / steps.max(1))
}

/// [`window_stats_host`] with chunks planned for `plan_series` series, as a group of
/// a larger trace gets them (more series: fewer, longer chunks).
pub fn window_stats_host_planned(
    gpu: &Gpu,
    x: &[f32],
    steps: usize,
    w: usize,
    plan_series: usize,
) -> anyhow::Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let series = x.len() / steps.max(1);
    let n = cpu::outputs(steps, w);
    let stream = gpu.ctx.default_stream();
    let dx = stream.clone_htod(x)?;
    // Poisoned outputs: any value the kernel fails to write shows up as NaN.
    let poison = vec![f32::NAN; (series * n).max(1)];
    let mut out = DeviceOutputs { mean: Some(stream.clone_htod(&poison)?), var: stream.clone_htod(&poison)?, range: stream.clone_htod(&poison)? };
    launch_window_stats(gpu, &stream, &dx, steps, series, plan_series, w, &mut out)?;
    let get = |d: &CudaSlice<f32>| -> anyhow::Result<Vec<f32>> {
        let mut v = stream.clone_dtoh(d)?;
        v.truncate(series * n);
        Ok(v)
    };
    let r = (get(out.mean.as_ref().unwrap())?, get(&out.var)?, get(&out.range)?);
    stream.synchronize()?;
    Ok(r)
}

/// Pinned host memory that the host reads or writes in cache (not write-combined).
fn pinned_cached(gpu: &Gpu, len: usize) -> anyhow::Result<PinnedHostSlice<f32>> {
    // SAFETY: callers write the buffer in full (a device-to-host copy, or the host
    // before a copy to the device) before anything reads it.
    Ok(unsafe { gpu.ctx.alloc_pinned_with_flags::<f32>(len.max(1), 0) }?)
}

/// Two pinned staging buffers of `len` floats: the ones the last call on `gpu` left
/// when they have that length (a sweep's traces and the bench's passes usually do),
/// else new ones; kept buffers of another length are freed.
pub(crate) fn take_staging(gpu: &Gpu, len: usize) -> anyhow::Result<[PinnedHostSlice<f32>; 2]> {
    let mut kept = std::mem::take(&mut *gpu.staging.lock().unwrap_or_else(|e| e.into_inner()));
    kept.retain(|b| b.len() == len);
    let mut next = || kept.pop().map_or_else(|| pinned_cached(gpu, len), Ok);
    Ok([next()?, next()?])
}

/// Hands staging buffers back to `gpu` for its next call (at most two are kept: 32
/// MiB of pinned memory a GPU at most, until the `Gpu` is dropped).
pub(crate) fn keep_staging(gpu: &Gpu, bufs: [PinnedHostSlice<f32>; 2]) {
    let mut kept = gpu.staging.lock().unwrap_or_else(|e| e.into_inner());
    for b in bufs {
        if kept.len() < 2 {
            kept.push(b);
        }
    }
}

/// Steps a task of the host preparation fills, for all the experts of a piece.
const FILL_STEPS: usize = 2048;
/// Most bytes of one of the two pinned staging buffers of the input (and of the
/// summaries on their way back). 16 MiB: a run pins them once, at about 0.5 ms a MB
/// (64 MiB buffers cost the paper-scale run 40 ms), and the fill, not the copy,
/// bounds the pieces' pace.
pub(crate) const STAGE_BYTES: usize = 16 << 20;

/// One stream with its buffers for a group of layers.
struct Slot {
    stream: Arc<CudaStream>,
    d_in: CudaSlice<f32>,
    out: DeviceOutputs,
    /// Per window: device summaries (copied back once the group is done).
    sums: Vec<DeviceSummaries>,
    /// Per window: pinned host copies of mean, var, range (detail only).
    detail: Vec<Vec<PinnedHostSlice<f32>>>,
    /// The layers whose results are in flight on this stream.
    pending: Option<Vec<usize>>,
}

/// [`super::layer_stats_cpu`] on the GPU: the same summaries (within 1e-6) and, when
/// `detail` is given, the same per-expert statistics layer by layer.
pub fn layer_stats_cuda(
    gpu: &Gpu,
    trace: &Trace,
    windows: &[usize],
    detail: Option<&mut dyn FnMut(Vec<ExpertStats>) -> anyhow::Result<()>>,
    on_layer: impl FnMut(),
) -> anyhow::Result<Vec<LayerStats>> {
    layer_stats_cuda_grouped(gpu, trace, windows, detail, on_layer, None)
}

/// [`layer_stats_cuda`] with at most `max_group` layers on the GPU at a time (by
/// default as many as a quarter of the free device memory holds), so that tests can
/// drive the multi-group, two-stream path on small traces.
pub fn layer_stats_cuda_grouped(
    gpu: &Gpu,
    trace: &Trace,
    windows: &[usize],
    mut detail: Option<&mut dyn FnMut(Vec<ExpertStats>) -> anyhow::Result<()>>,
    mut on_layer: impl FnMut(),
    max_group: Option<usize>,
) -> anyhow::Result<Vec<LayerStats>> {
    let (nt, nl, ne) = (trace.steps(), trace.layers(), trace.experts());
    let keep = detail.is_some();
    let ns: Vec<usize> = windows.iter().map(|&w| cpu::outputs(nt, w)).collect();
    let n_max = ns.iter().copied().max().unwrap_or(0);
    // Device bytes per layer: input, per-expert outputs (one window at a time), summaries.
    let per_layer = 4 * (ne * nt + (2 + keep as usize) * ne * n_max + 5 * ns.iter().sum::<usize>());
    // The loads go up once (kept for the forecast stage), and each group's shares are
    // made on the device; else (float64 loads, too little memory) on the host.
    let resident = gpu.resident(trace)?;
    let (free, _) = gpu.ctx.mem_get_info().context("reading the GPU's free memory")?;
    let group = ((free / 4) / per_layer.max(1)).clamp(1, nl).min(max_group.unwrap_or(nl).max(1));
    let n_groups = nl.div_ceil(group);
    let slots_needed = n_groups.min(2);
    let span = crate::profile::span(|| "stats: device buffers".into());

    let mut slots: Vec<Slot> = Vec::with_capacity(slots_needed);
    for _ in 0..slots_needed {
        let stream = gpu.ctx.new_stream().context("creating a CUDA stream")?;
        let series = group * ne;
        let mut sums = Vec::new();
        let mut det = Vec::new();
        for &n in &ns {
            sums.push(DeviceSummaries::alloc(&stream, (group * n).max(1))?);
            if keep {
                det.push((0..3).map(|_| pinned_cached(gpu, series * n)).collect::<Result<_, _>>()?);
            }
        }
        slots.push(Slot {
            d_in: stream.alloc_zeros((series * nt).max(1))?,
            out: DeviceOutputs {
                mean: if keep { Some(stream.alloc_zeros((series * n_max).max(1))?) } else { None },
                var: stream.alloc_zeros((series * n_max).max(1))?,
                range: stream.alloc_zeros((series * n_max).max(1))?,
            },
            sums,
            detail: det,
            stream,
            pending: None,
        });
    }

    drop(span);
    // Two pinned staging buffers of a layer's shares (or of as many of its experts'
    // rows as fit STAGE_BYTES, a divisor of E so that every piece fills a buffer),
    // shared by the slots: pinning costs about 0.5 ms a MB on the H200's host (the
    // whole paper-scale input at once: 330 ms to pin and 95 ms to free, for an
    // 11 ms copy), so the buffers are kept on `gpu` for the next call.
    let stage_rows = (1..=ne).rev().find(|r| ne % r == 0 && r * nt * 4 <= STAGE_BYTES).unwrap_or(1);
    // With the loads on the device the buffers only bring the summaries back: the
    // upload's buffers, of STAGE_BYTES, serve.
    let stage_len = if resident.is_some() { STAGE_BYTES / 4 } else { stage_rows * nt };
    // Cached (not write-combined): the fill writes many rows at once; each is
    // written in full from the trace before every copy to the device.
    let span = crate::profile::span(|| "stats: pinned staging".into());
    let mut stage = take_staging(gpu, stage_len)?;
    drop(span);
    let mut staged = 0usize;
    let mut results: Vec<Option<Vec<LayerStats>>> = vec![None; nl];
    let mut collect = |slot: &mut Slot,
                       results: &mut Vec<Option<Vec<LayerStats>>>,
                       detail: &mut Option<&mut dyn FnMut(Vec<ExpertStats>) -> anyhow::Result<()>>,
                       stage: &mut [PinnedHostSlice<f32>; 2]|
     -> anyhow::Result<()> {
        let Some(layers) = slot.pending.take() else { return Ok(()) };
        let span = crate::profile::span(|| "stats: wait for the group's kernels".into());
        slot.stream.synchronize().context("waiting for the window statistics kernels")?;
        drop(span);
        let _span = crate::profile::span(|| "stats: summaries to the host".into());
        // The group's summaries, per window the 5 arrays of layers × n values, come
        // back through a pinned staging buffer (free now: the group's input is on the
        // device), a piece of at most the buffer at a time, and are widened to
        // float64 straight into each layer's vectors, a layer per task. (Pageable
        // copies, into new vectors, took 75 ms for the paper-scale 72 MB on the H200.)
        let cap = stage[0].len().max(1);
        // wide[wi][k][gi]: window wi's summary k of the group's layer gi.
        let mut wide: Vec<Vec<Vec<Vec<f64>>>> =
            ns.iter().map(|&n| (0..5).map(|_| (0..layers.len()).map(|_| Vec::with_capacity(n)).collect()).collect()).collect();
        for (wi, &n) in ns.iter().enumerate() {
            let total = layers.len() * n;
            for (k, d) in slot.sums[wi].all().into_iter().enumerate() {
                for at in (0..total).step_by(cap) {
                    let len = cap.min(total - at);
                    // A slice of exactly the piece's length: cudarc copies as many
                    // values as the destination holds. Into pinned memory the copy is
                    // asynchronous (and a plain slice records no event): wait for it.
                    let host = &mut stage[0].as_mut_slice()?[..len];
                    slot.stream.memcpy_dtoh(&d.slice(at..at + len), host).context("copying layer summaries to the host")?;
                    slot.stream.synchronize().context("waiting for layer summaries to reach the host")?;
                    let host = &*host;
                    wide[wi][k].par_iter_mut().enumerate().for_each(|(gi, v)| {
                        let (a, b) = ((gi * n).max(at), ((gi + 1) * n).min(at + len));
                        if a < b {
                            v.extend(host[a - at..b - at].iter().map(|&x| x as f64));
                        }
                    });
                }
            }
        }
        let stats: Vec<Vec<LayerStats>> = (0..layers.len())
            .map(|gi| {
                windows
                    .iter()
                    .enumerate()
                    .map(|(wi, &w)| {
                        let summary = Summaries::from_fn(|k| std::mem::take(&mut wide[wi][k][gi]));
                        LayerStats { layer: layers[gi], window: w, summary }
                    })
                    .collect()
            })
            .collect();
        for ((gi, &l), per_window) in layers.iter().enumerate().zip(stats) {
            if let Some(d) = detail.as_mut() {
                let mut ex = Vec::with_capacity(ne * windows.len());
                for e in 0..ne {
                    for (wi, &w) in windows.iter().enumerate() {
                        let n = ns[wi];
                        let s = gi * ne + e;
                        let h = &slot.detail[wi];
                        let part = |k: usize| -> anyhow::Result<Vec<f64>> {
                            Ok(h[k].as_slice()?[s * n..(s + 1) * n].iter().map(|&v| v as f64).collect())
                        };
                        ex.push(ExpertStats { layer: l, expert: e, window: w, mean: part(0)?, var: part(1)?, range: part(2)? });
                    }
                }
                d(ex)?;
            }
            results[l] = Some(per_window);
            on_layer();
        }
        Ok(())
    };

    for g in 0..n_groups {
        let layers: Vec<usize> = (g * group..((g + 1) * group).min(nl)).collect();
        let slot = &mut slots[g % slots_needed];
        collect(slot, &mut results, &mut detail, &mut stage)?;
        let series = layers.len() * ne;
        let st = slot.stream.clone();
        // Shares as float32, series-major, a piece at a time into one of the two
        // pinned staging buffers and copied on the group's stream: the next piece is
        // prepared while the last one copies (`as_mut_slice` waits for a buffer's
        // previous copy). Each task takes FILL_STEPS steps of all the piece's rows:
        // the trace holds a step's loads together, so a task reads each of its steps'
        // loads once, and its rows' segments stay in cache (tasks per expert, each
        // reading every step, spent most of their time on TLB misses: 117 ms for the
        // paper-scale input on 16 cores).
        let span = crate::profile::span(|| format!("stats: fill and copy {} layers", layers.len()));
        if let Some(r) = &resident {
            r.series_f32(gpu, &st, layers[0], layers.len(), &mut slot.d_in)?;
        }
        let pieces = layers.iter().enumerate().flat_map(|(gi, &l)| (0..ne).step_by(stage_rows).map(move |e0| (gi, l, e0)));
        for (gi, l, e0) in pieces.take_while(|_| stage_len > 0 && resident.is_none()) {
            let buf = &mut stage[staged % 2];
            staged += 1;
            let host = buf.as_mut_slice()?;
            let mut tiles: Vec<Vec<&mut [f32]>> = (0..nt.div_ceil(FILL_STEPS)).map(|_| Vec::with_capacity(stage_rows)).collect();
            for row in host.chunks_mut(nt) {
                for (k, seg) in row.chunks_mut(FILL_STEPS).enumerate() {
                    tiles[k].push(seg);
                }
            }
            tiles.into_par_iter().enumerate().for_each(|(k, mut segs)| {
                let mut shares = vec![0.0; segs.len()];
                for dt in 0..segs.first().map_or(0, |s| s.len()) {
                    trace.step_shares_from(k * FILL_STEPS + dt, l, e0, &mut shares);
                    for (seg, p) in segs.iter_mut().zip(&shares) {
                        seg[dt] = *p as f32;
                    }
                }
            });
            let at = (gi * ne + e0) * nt;
            st.memcpy_htod(&*buf, &mut slot.d_in.slice_mut(at..at + stage_len)).context("copying shares to the GPU")?;
        }
        drop(span);
        for (wi, &w) in windows.iter().enumerate() {
            let n = ns[wi];
            if n == 0 {
                continue;
            }
            crate::gpu::timeline::kernels(&st, || format!("window statistics of layers {layers:?}, window {w}"), || -> anyhow::Result<()> {
                launch_window_stats(gpu, &st, &slot.d_in, nt, series, nl * ne, w, &mut slot.out)?;
                launch_layer_summary(gpu, &st, &slot.out, n, layers.len(), ne, &mut slot.sums[wi])
            })?;
            if keep {
                let h = &mut slot.detail[wi];
                let outs = [slot.out.mean.as_ref().unwrap(), &slot.out.var, &slot.out.range];
                for (d, hh) in outs.into_iter().zip(h.iter_mut()) {
                    st.memcpy_dtoh(&d.slice(..series * n), hh).context("copying window statistics to the host")?;
                }
            }
        }
        slot.pending = Some(layers);
    }
    for slot in slots.iter_mut() {
        collect(slot, &mut results, &mut detail, &mut stage)?;
    }
    // Every stream is done with the staging buffers (and their events say so).
    keep_staging(gpu, stage);
    // Windows with no output (trace shorter than the window) give empty summaries.
    Ok(results.into_iter().flatten().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_window_is_the_last_that_fits() {
        // 227 KiB per block (H100, H200), 163 KiB (A100), 99 KiB (consumer parts), 48 KiB.
        for bytes in [232_448, 166_912, 101_376, 49_152] {
            let w = max_window_for(bytes);
            assert!(smem_per_warp(w) <= bytes, "{bytes}: W = {w} needs {}", smem_per_warp(w));
            assert!(smem_per_warp(w + 1) > bytes, "{bytes}: W = {} also fits", w + 1);
        }
        // H200: rings of 54,144 positions (54,144 × 34 / 32 + 528 = 58,056 floats of
        // the 58,112 that fit; 54,272 would need 58,192).
        assert_eq!(max_window_for(232_448), 54_016);
        // W = 1000: a raw ring of 1,152 positions + 36 pad words, max / min suffixes of
        // two padded spans (4 × 132), and block totals and group suffixes (max / min) of
        // 9 blocks (4 × 9); 8 warps: the 56,064 bytes the harness reports.
        assert_eq!(8 * smem_per_warp(1000), 56_064);
    }

    #[test]
    fn chunks_are_whole_spans_and_fill_whole_waves() {
        // The paper-scale bench on an H200: 132 multiprocessors, 3 blocks each of
        // window_stats_mid, 2 of window_stats_long.
        let (steps, series) = (100_000, 12 * 128);
        for (w, bps, chunk) in [(10, 3, 3072), (100, 3, 3072), (300, 2, 9088), (1000, 2, 24_832)] {
            let g = geometry(w, steps, series, 132, bps);
            assert_eq!(g.chunk, chunk, "W = {w}");
            let n = steps - w + 1;
            let warps = series * n.div_ceil(g.chunk);
            assert_eq!(g.blocks, warps.div_ceil(g.warps_per_block));
            assert_eq!(g.warps_per_block, 8);
            assert_eq!(g.smem_bytes, 8 * smem_per_warp(w));
        }
        // W = 1000: 4 chunks a series, 6,144 warps = 2.9 waves of 132 × 2 × 8, each
        // 24,832 + 1,024 steps long (the model's 77,568 against 80,896 for 11
        // chunks in 8 full waves); W = 300: 11 chunks, 8 full waves.
        assert_eq!(series * 99_001usize.div_ceil(24_832), 6144);
        assert_eq!(series * 99_701usize.div_ceil(9088), 8 * 132 * 2 * 8);
        // Any shape: whole spans of at least 8 W outputs, or the whole series.
        for (w, steps, series, sms, bps) in [(5, 40, 3, 1, 1), (129, 10_000, 96, 132, 2), (33, 777, 1, 80, 3), (1000, 1000, 4, 132, 2)] {
            let g = geometry(w, steps, series, sms, bps);
            let n = steps - w + 1;
            assert!(g.chunk == n || g.chunk % SPAN == 0, "{w} {steps}: chunk {}", g.chunk);
            assert!(g.chunk >= (8 * w).min(n), "{w} {steps}: chunk {}", g.chunk);
        }
    }

    #[test]
    fn ring_holds_a_window_and_a_span() {
        for w in [5, 10, 128, 129, 130, 255, 256, 257, 1000, 51_968] {
            let r = ring(w);
            assert_eq!(r % 128, 0);
            assert!(r >= w - 1 + 128 && r <= w - 1 + 256, "W = {w}: ring {r}");
        }
    }
}
