//! The rolling-origin protocol on the GPU (`kernels/score.cu`): a layer's shares go
//! up once, as float64 (or are made there from the trace's loads, kept on the GPU:
//! [`Scorer::load_resident`]), and every forecaster that has a [`DeviceModel`] is scored
//! there; only each origin's error sums at each horizon come back (a few kB), and
//! [`super::scores_from_sums`] adds them on the host in origin order, as the CPU
//! path does.
//!
//! - [`DeviceModel::Last`], [`DeviceModel::Mean`], [`DeviceModel::Ema`]: the one
//!   row each origin's forecast is, made on the device (`flat_rows`: the CPU's
//!   operations in its order, so its bits; `ema_chunk` and `ema_carry`: a chunked
//!   scan, within about 1e-16 relative of the CPU's sequential average), renormalised there
//!   (`renorm_rows`: the sum in the block's order), then scored (`score_flat`).
//! - [`DeviceModel::HostRows`] (`median`, and the others when placement keeps their
//!   rows): the one row each origin's forecast is, made and renormalised on the host
//!   with the CPU path's bits, then scored on the device (`score_flat`).
//! - [`DeviceModel::SwAvg`]: predicted, renormalised and scored on the device
//!   (`sw_avg_score`); the recursion has the CPU's bits, the renormalising sums run
//!   in the block's order.
//! - [`DeviceModel::OracleMedian`]: the medians are taken on the device
//!   (`oracle_chunk_sort` sorts each expert's chunks between origins once,
//!   `oracle_select` finds each median's values by rank among them: the CPU's values
//!   exactly) and scored there.
//!
//! The sums differ from the CPU path's only in the order of their additions
//! (float64 throughout): metrics agree to about 1e-13 relative (SPEC: 1e-6). Each
//! sum runs in a fixed order, so a run gives the same bits every time.

use std::sync::Arc;

use anyhow::Context;
use cudarc::driver::{CudaSlice, CudaStream, LaunchConfig, PushKernelArg};

use super::{Protocol, Score, scores_from_sums};
use crate::forecast::{DeviceModel, FitContext, Forecaster, LayerView, renormalize};
use crate::gpu::{Gpu, ScoreKernels};

/// Most experts `sw_avg_score` holds (4 per thread, 1024 threads a block).
const SW_MAX_EXPERTS: usize = 4 * 1024;
/// The longest origin stride `oracle_chunk_sort` sorts (a chunk is the steps between
/// two origins, sorted in one warp's shared memory: 8 bytes a step, rounded up to a
/// power of two, within the 48 kB a block has without opting in).
const ORACLE_MAX_STRIDE: usize = 4096;

/// A flat model's row for each origin (`origins × experts`, renormalised if the
/// forecast is real) and each origin's fallbacks at each horizon (`origins × nh`).
pub type HostRows = (Vec<f64>, Vec<usize>);

/// Fits `f` (a [`DeviceModel::HostRows`] forecaster) on `layer` and predicts the
/// one row of every origin of `proto`, as the CPU path does.
pub fn host_rows(layer: &LayerView, f: &dyn Forecaster, proto: &Protocol, ctx: &FitContext, done: &(dyn Fn(u64) + Sync)) -> anyhow::Result<HostRows> {
    let (nt, ne) = (layer.steps(), layer.experts());
    let origins = proto.origins(nt);
    let nh = proto.horizons.len();
    let mut fbs = vec![0usize; origins.len() * nh];
    let Some(&first) = origins.first() else { return Ok((Vec::new(), fbs)) };
    let fitted = f.fit(&layer.until(first), ctx)?;
    anyhow::ensure!(fitted.flat() && !f.horizon_dependent(), "{} does not predict one row per origin", f.spec());
    let lens: Vec<usize> = origins.iter().map(|&o| proto.max_horizon().min(nt - o)).collect();
    let mut rows = Vec::with_capacity(origins.len() * ne);
    fitted.predict_origins(layer, &origins, &lens, &mut |i, pred, _, fb| {
        done(ne as u64);
        fbs[i * nh..(i + 1) * nh].iter_mut().for_each(|v| *v = fb);
        rows.extend_from_slice(&pred[..ne]);
    })?;
    if f.is_real() && proto.renormalize {
        renormalize(&mut rows, ne);
    }
    Ok((rows, fbs))
}

/// A GPU's scoring state: two slots, each a stream with a layer's shares on the
/// device and scratch buffers. [`load`](Scorer::load) puts the next layer in the
/// other slot, so its copy runs while the kernels of the layer before still run
/// (they were only [`enqueue`](Scorer::enqueue)d); [`finish`](Scorer::finish) waits
/// for a forecaster's sums. A slot's shares stay for the next layer in it unless
/// [`take_loaded`](Scorer::take_loaded) hands them to placement.
pub struct Scorer {
    gpu: Arc<Gpu>,
    k: ScoreKernels,
    slots: [Slot; 2],
    /// The slot of the layer loaded last.
    cur: usize,
    /// The stream of a scoring's small inputs (origins, horizons, host-made rows): a
    /// copy from pageable memory first waits for everything before it on its stream,
    /// so on the layer's stream it would wait for the kernels enqueued before it.
    /// (cudarc's events make the kernels wait for these copies.)
    up: Arc<CudaStream>,
}

struct Slot {
    stream: Arc<CudaStream>,
    p: Option<CudaSlice<f64>>,
    /// Shape of the layer in `p`.
    shape: (usize, usize),
    scratch: Option<CudaSlice<f64>>,
    /// `oracle-median`'s sorted chunks (a layer's size).
    sorted: Option<CudaSlice<f64>>,
}

/// A forecaster's scoring, enqueued on its layer's stream: what
/// [`Scorer::finish`] needs, and the device inputs its kernels read (kept alive
/// until then, so that dropping them does not wait for the kernels).
pub struct Pending {
    slot: usize,
    origins: Vec<usize>,
    horizons: Vec<usize>,
    shape: (usize, usize),
    stable_from: Option<usize>,
    fbs: Vec<usize>,
    out: Option<CudaSlice<f64>>,
    _inputs: Vec<CudaSlice<i32>>,
    _rows: Option<CudaSlice<f64>>,
    /// `ema`'s chunk ends (kept, as the rows are, until the stream is done with them).
    _ends: Option<CudaSlice<f64>>,
}

/// Whether `model` can run on the device for a layer of `experts` experts under
/// `proto` (else the forecaster runs on the CPU path).
pub fn fits(model: DeviceModel, experts: usize, proto: &Protocol) -> bool {
    match model {
        DeviceModel::HostRows | DeviceModel::Last | DeviceModel::Mean { .. } | DeviceModel::Ema { .. } => true,
        DeviceModel::SwAvg { .. } => experts <= SW_MAX_EXPERTS,
        DeviceModel::OracleMedian => proto.stride <= ORACLE_MAX_STRIDE,
    }
}

/// Makes `buf` hold at least `len` doubles (at least one), reusing it while it is big
/// enough; the old buffer is freed before a new one is allocated.
fn hold(stream: &Arc<CudaStream>, buf: &mut Option<CudaSlice<f64>>, len: usize, what: &str) -> anyhow::Result<()> {
    if buf.as_ref().is_none_or(|b| b.len() < len.max(1)) {
        *buf = None;
        *buf = Some(stream.alloc_zeros(len.max(1)).with_context(|| format!("allocating {what} on the GPU"))?);
    }
    Ok(())
}

fn block_for(experts: usize, per_thread: usize) -> u32 {
    (experts.div_ceil(per_thread).clamp(32, 1024).div_ceil(32) * 32) as u32
}

impl Scorer {
    pub fn new(gpu: &Arc<Gpu>) -> anyhow::Result<Scorer> {
        let k = gpu.score_kernels()?;
        let slot = || -> anyhow::Result<Slot> {
            Ok(Slot { stream: gpu.ctx.new_stream().context("creating a CUDA stream")?, p: None, shape: (0, 0), scratch: None, sorted: None })
        };
        let up = gpu.ctx.new_stream().context("creating a CUDA stream")?;
        Ok(Scorer { gpu: gpu.clone(), k, slots: [slot()?, slot()?], cur: 1, up })
    }

    /// Puts `layer`'s shares on the device, in the other slot than the last layer's
    /// (in its buffer when that is big enough), and returns the slot. The copy waits
    /// for nothing of the other slot: the last layer's kernels go on meanwhile.
    pub fn load(&mut self, layer: &LayerView) -> anyhow::Result<usize> {
        let (nt, ne) = (layer.steps(), layer.experts());
        let slot = self.next_slot(nt, ne)?;
        let p = slot.p.as_mut().unwrap();
        slot.stream.memcpy_htod(layer.raw(), &mut p.slice_mut(..nt * ne)).context("copying the layer's shares to the GPU")?;
        Ok(self.cur)
    }

    /// [`load`](Self::load) with the layer's shares made on the device from the
    /// trace's loads there (the same bits as the host's shares), instead of copied up.
    pub fn load_resident(&mut self, loads: &crate::gpu::resident::DeviceLoads, l: usize) -> anyhow::Result<usize> {
        let gpu = self.gpu.clone();
        let slot = self.next_slot(loads.steps, loads.experts)?;
        loads.steps_f64(&gpu, &slot.stream, l, slot.p.as_mut().unwrap())?;
        Ok(self.cur)
    }

    /// The other slot than the last layer's, made current, with a buffer of at least
    /// a `steps × experts` layer, for that layer.
    fn next_slot(&mut self, nt: usize, ne: usize) -> anyhow::Result<&mut Slot> {
        self.cur ^= 1;
        let slot = &mut self.slots[self.cur];
        hold(&slot.stream, &mut slot.p, nt * ne, "the layer's shares")?;
        slot.shape = (nt, ne);
        Ok(slot)
    }

    /// Hands over the shares of the layer in `slot` on the device (`steps × experts`
    /// at the front; the slot's next [`load`](Self::load) allocates anew), so that
    /// placement scores its plans on them instead of copying the layer up again.
    /// Call it once that layer's scorings are [`finish`](Self::finish)ed.
    pub fn take_loaded(&mut self, slot: usize) -> Option<CudaSlice<f64>> {
        self.slots[slot].shape = (0, 0);
        self.slots[slot].p.take()
    }

    /// Bytes of the device buffer that holds the layer in `slot` (it may be larger
    /// than the layer: a buffer is reused while it is big enough).
    pub fn loaded_bytes(&self, slot: usize) -> usize {
        self.slots[slot].p.as_ref().map_or(0, |p| 8 * p.len())
    }

    fn scratch(&mut self, len: usize) -> anyhow::Result<()> {
        let slot = &mut self.slots[self.cur];
        hold(&slot.stream, &mut slot.scratch, len, "scoring scratch")
    }

    /// Scores `f` (whose device model is `model`) on the layer loaded last, `layer`
    /// being the same layer on the host: one score per horizon and regime, as
    /// [`super::evaluate_layer`] gives them. A [`DeviceModel::HostRows`] model's rows
    /// may come made already ([`host_rows`], on other threads).
    #[allow(clippy::too_many_arguments)]
    pub fn score(
        &mut self,
        layer: &LayerView,
        f: &dyn Forecaster,
        model: DeviceModel,
        proto: &Protocol,
        stable_from: Option<usize>,
        ctx: &FitContext,
        done: &(dyn Fn(u64) + Sync),
        rows: Option<HostRows>,
    ) -> anyhow::Result<Vec<Score>> {
        let pending = self.enqueue((layer.steps(), layer.experts()), Some(layer), f, model, proto, stable_from, ctx, done, rows)?;
        self.finish(pending)
    }

    /// [`score`](Self::score)'s first half: the kernels go on the loaded layer's
    /// stream and this returns at once. `shape` is the loaded layer's (steps,
    /// experts); `layer`, its shares on the host, is needed only by a
    /// [`DeviceModel::HostRows`] model whose `rows` are not given.
    #[allow(clippy::too_many_arguments)]
    pub fn enqueue(
        &mut self,
        shape: (usize, usize),
        layer: Option<&LayerView>,
        f: &dyn Forecaster,
        model: DeviceModel,
        proto: &Protocol,
        stable_from: Option<usize>,
        ctx: &FitContext,
        done: &(dyn Fn(u64) + Sync),
        rows: Option<HostRows>,
    ) -> anyhow::Result<Pending> {
        let (nt, ne) = shape;
        let cur = self.cur;
        assert_eq!(self.slots[cur].shape, (nt, ne), "the layer scored is the layer loaded");
        let origins = proto.origins(nt);
        let horizons = &proto.horizons;
        let nh = horizons.len();
        let fbs = vec![0usize; origins.len() * nh];
        let mut pending = Pending {
            slot: cur,
            origins,
            horizons: horizons.clone(),
            shape: (nt, ne),
            stable_from,
            fbs,
            out: None,
            _inputs: Vec::new(),
            _rows: None,
            _ends: None,
        };
        let origins = &pending.origins;
        if origins.is_empty() {
            return Ok(pending);
        }
        let real = f.is_real() && proto.renormalize;
        let st = self.slots[cur].stream.clone();
        let d_origins = self.up.clone_htod(&origins.iter().map(|&o| o as i32).collect::<Vec<_>>())?;
        let d_horizons = self.up.clone_htod(&horizons.iter().map(|&h| h as i32).collect::<Vec<_>>())?;
        let mut d_out: CudaSlice<f64> = st.alloc_zeros(origins.len() * nh * 2)?;
        let (t, e, no, nhi) = (nt as i32, ne as i32, origins.len() as i32, nh as i32);
        match model {
            DeviceModel::HostRows => {
                let (rows, fb) = match (rows, layer) {
                    (Some(r), _) => r,
                    (None, Some(layer)) => host_rows(layer, f, proto, ctx, done)?,
                    (None, None) => anyhow::bail!("{}: host rows without the layer's shares on the host", f.spec()),
                };
                pending.fbs = fb;
                let d_rows = self.up.clone_htod(&rows)?;
                let p = self.slots[cur].p.as_ref().expect("a layer is loaded");
                crate::gpu::timeline::kernels(&st, || format!("{}: score", f.spec()), || {
                    self.launch_flat(&st, p, &d_origins, &d_rows, &d_horizons, &mut d_out, (t, e, no, nhi), 1, false)
                })?;
                pending._rows = Some(d_rows);
            }
            DeviceModel::Last | DeviceModel::Mean { .. } | DeviceModel::Ema { .. } => {
                let mut d_rows: CudaSlice<f64> = st.alloc_zeros(origins.len() * ne)?;
                let p = self.slots[cur].p.as_ref().expect("a layer is loaded");
                let no = origins.len() as u32;
                let block = block_for(ne, 1);
                let label = f.spec();
                // `ema` as a chunked scan (kernels/score.cu): every chunk's own average
                // at once, then the chunks' carries in order; both kernels are given
                // this chunk length.
                const EMA_CHUNK: usize = 256;
                let last = *origins.last().expect("origins");
                let mut ends: Option<CudaSlice<f64>> = match model {
                    DeviceModel::Ema { .. } if last > 0 => Some(st.alloc_zeros(last.div_ceil(EMA_CHUNK) * ne)?),
                    _ => None,
                };
                crate::gpu::timeline::kernels(&st, || format!("{label}: rows"), || -> anyhow::Result<()> {
                    match model {
                        DeviceModel::Ema { alpha } => {
                            if let Some(ends) = ends.as_mut() {
                                let chunks = last.div_ceil(EMA_CHUNK);
                                let threads = (ne.clamp(32, 128).div_ceil(32) * 32) as u32;
                                let grid_x = ne.div_ceil(threads as usize) as u32;
                                let (li, ci) = (last as i32, EMA_CHUNK as i32);
                                let cfg = LaunchConfig { grid_dim: (grid_x, chunks.min(65_535) as u32, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
                                let mut b = st.launch_builder(&self.k.ema_chunk);
                                b.arg(p).arg(&e).arg(&d_origins).arg(&no).arg(&li).arg(&ci).arg(&alpha).arg(&mut d_rows).arg(&mut *ends);
                                // SAFETY: p holds T × E doubles and the last origin is at
                                // most T; rows n_origins × E, ends chunks × E; origins ascend.
                                unsafe { b.launch(cfg) }.context("launching ema_chunk")?;
                                let cfg = LaunchConfig { grid_dim: (grid_x, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
                                let mut b = st.launch_builder(&self.k.ema_carry);
                                b.arg(&e).arg(&d_origins).arg(&no).arg(&li).arg(&ci).arg(&alpha).arg(&*ends).arg(&mut d_rows);
                                // SAFETY: as above; one thread an expert.
                                unsafe { b.launch(cfg) }.context("launching ema_carry")?;
                            }
                        }
                        _ => {
                            let (kind, w) = match model {
                                DeviceModel::Mean { w } => (1i32, w),
                                _ => (0, 1),
                            };
                            anyhow::ensure!(origins[0] >= w, "{label} needs {w} steps before its first origin {}", origins[0]);
                            let wi = w as i32;
                            let cfg = LaunchConfig { grid_dim: (no, 1, 1), block_dim: (block, 1, 1), shared_mem_bytes: 0 };
                            let mut b = st.launch_builder(&self.k.flat_rows);
                            b.arg(p).arg(&t).arg(&e).arg(&d_origins).arg(&kind).arg(&wi).arg(&mut d_rows);
                            // SAFETY: p holds T × E doubles, rows n_origins × E; every
                            // origin is at least W (and 1) and below T.
                            unsafe { b.launch(cfg) }.context("launching flat_rows")?;
                        }
                    }
                    if real {
                        let cfg = LaunchConfig { grid_dim: (no, 1, 1), block_dim: (block, 1, 1), shared_mem_bytes: 0 };
                        let mut b = st.launch_builder(&self.k.renorm_rows);
                        b.arg(&mut d_rows).arg(&e);
                        // SAFETY: rows holds n_origins × E doubles; blocks are whole warps.
                        unsafe { b.launch(cfg) }.context("launching renorm_rows")?;
                    }
                    Ok(())
                })?;
                crate::gpu::timeline::kernels(&st, || format!("{label}: score"), || {
                    self.launch_flat(&st, p, &d_origins, &d_rows, &d_horizons, &mut d_out, (t, e, no as i32, nhi), 1, false)
                })?;
                pending._rows = Some(d_rows);
                pending._ends = ends;
                done((origins.len() * ne) as u64);
            }
            DeviceModel::SwAvg { w } => {
                anyhow::ensure!(origins[0] >= w, "sw-avg:w={w} needs {w} steps before its first origin {}", origins[0]);
                self.scratch(origins.len() * w * ne)?;
                let slot = &mut self.slots[cur];
                let ring = slot.scratch.as_mut().unwrap();
                let p = slot.p.as_ref().expect("a layer is loaded");
                let (wi, renorm) = (w as i32, real as i32);
                let cfg = LaunchConfig { grid_dim: (origins.len() as u32, 1, 1), block_dim: (block_for(ne, 4), 1, 1), shared_mem_bytes: 0 };
                let mut b = st.launch_builder(&self.k.sw_avg_score);
                b.arg(p).arg(&t).arg(&e).arg(&d_origins).arg(&wi).arg(&d_horizons).arg(&nhi).arg(&renorm).arg(ring).arg(&mut d_out);
                // SAFETY: p holds T × E doubles, ring n_origins × W × E, out n_origins ×
                // nh × 2; every origin is at least W and below T; a block covers E
                // experts at 4 a thread (E <= 4096, checked by `fits`).
                crate::gpu::timeline::kernels(&st, || format!("{}: predict and score", f.spec()), || unsafe { b.launch(cfg) })
                    .context("launching sw_avg_score")?;
                done((origins.len() * ne) as u64);
            }
            DeviceModel::OracleMedian => {
                // The origins are the protocol's grid: b, b + c, ...
                let (b, c) = (origins[0], proto.stride);
                anyhow::ensure!(c <= ORACLE_MAX_STRIDE, "oracle-median's origin stride {c} is longer than the GPU kernel takes");
                debug_assert!(origins.iter().enumerate().all(|(i, &o)| o == b + i * c));
                let chunks = (nt - b) / c;
                let cpow = c.next_power_of_two().max(32);
                let warps = (48 * 1024 / (8 * cpow)).clamp(1, 8);
                self.scratch(nh * origins.len() * ne)?;
                let slot = &mut self.slots[cur];
                hold(&slot.stream, &mut slot.sorted, nt * ne, "oracle-median's sorted chunks")?;
                let (bi, ci, cpi, chi) = (b as i32, c as i32, cpow as i32, chunks as i32);
                if chunks > 0 {
                    let cfg = LaunchConfig {
                        grid_dim: (chunks as u32, ne.div_ceil(warps) as u32, 1),
                        block_dim: (32 * warps as u32, 1, 1),
                        shared_mem_bytes: (8 * cpow * warps) as u32,
                    };
                    let p = slot.p.as_ref().expect("a layer is loaded");
                    let mut k = st.launch_builder(&self.k.oracle_chunk_sort);
                    k.arg(p).arg(&t).arg(&e).arg(&bi).arg(&ci).arg(&cpi).arg(&chi).arg(slot.sorted.as_mut().unwrap());
                    // SAFETY: p holds T × E doubles; chunk q < chunks covers steps b + q·c ..
                    // b + (q + 1)·c <= T; sorted holds T × E >= chunks × E × c doubles;
                    // shared memory is warps × cpow doubles (<= 48 kB: c <= 4096).
                    crate::gpu::timeline::kernels(&st, || format!("{}: sort chunks", f.spec()), || unsafe { k.launch(cfg) })
                        .context("launching oracle_chunk_sort")?;
                }
                let (p, sorted, med) = (slot.p.as_ref().unwrap(), slot.sorted.as_ref().unwrap(), slot.scratch.as_mut().unwrap());
                let cfg = LaunchConfig { grid_dim: (origins.len() as u32, ne.div_ceil(8) as u32, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
                let mut k = st.launch_builder(&self.k.oracle_select);
                k.arg(p).arg(sorted).arg(&t).arg(&e).arg(&bi).arg(&ci).arg(&no).arg(&d_horizons).arg(&nhi).arg(&mut *med);
                // SAFETY: origin i is b + i·c (the protocol's grid); its horizon h is
                // taken only when o + h <= T, so its whole chunks i .. i + h / c − 1 are
                // below `chunks` and its last steps below T; med holds nh × n_origins × E.
                crate::gpu::timeline::kernels(&st, || format!("{}: medians", f.spec()), || unsafe { k.launch(cfg) })
                    .context("launching oracle_select")?;
                let slot = &self.slots[cur];
                let (med, p) = (slot.scratch.as_ref().unwrap(), slot.p.as_ref().unwrap());
                crate::gpu::timeline::kernels(&st, || format!("{}: score", f.spec()), || {
                    self.launch_flat(&st, p, &d_origins, med, &d_horizons, &mut d_out, (t, e, no, nhi), nh as u32, true)
                })?;
                done((origins.len() * ne) as u64);
            }
        }
        pending.out = Some(d_out);
        pending._inputs = vec![d_origins, d_horizons];
        Ok(pending)
    }

    /// [`score`](Self::score)'s second half: waits for `pending`'s kernels and adds
    /// the error sums in origin order.
    pub fn finish(&self, pending: Pending) -> anyhow::Result<Vec<Score>> {
        let (nt, ne) = pending.shape;
        let sums: Vec<(f64, f64)> = match &pending.out {
            Some(d_out) => {
                let host = self.slots[pending.slot].stream.clone_dtoh(d_out).context("copying error sums from the GPU")?;
                host.chunks(2).map(|c| (c[0], c[1])).collect()
            }
            None => Vec::new(),
        };
        Ok(scores_from_sums(&pending.origins, &pending.horizons, nt, ne, &sums, &pending.fbs, pending.stable_from))
    }

    #[allow(clippy::too_many_arguments)]
    fn launch_flat(
        &self,
        stream: &Arc<CudaStream>,
        p: &CudaSlice<f64>,
        origins: &CudaSlice<i32>,
        rows: &CudaSlice<f64>,
        horizons: &CudaSlice<i32>,
        out: &mut CudaSlice<f64>,
        (t, e, no, nh): (i32, i32, i32, i32),
        grid_y: u32,
        per_horizon: bool,
    ) -> anyhow::Result<()> {
        let ph = per_horizon as i32;
        let cfg = LaunchConfig { grid_dim: (no as u32, grid_y, 1), block_dim: (block_for((e as usize).min(256), 1), 1, 1), shared_mem_bytes: 0 };
        let mut b = stream.launch_builder(&self.k.score_flat);
        b.arg(p).arg(&t).arg(&e).arg(origins).arg(&no).arg(rows).arg(horizons).arg(&nh).arg(&ph).arg(out);
        // SAFETY: p holds T × E doubles; rows grid_y × n_origins × E; out n_origins ×
        // nh × 2; blocks are whole warps and each thread strides over the experts.
        unsafe { b.launch(cfg) }.context("launching score_flat")?;
        Ok(())
    }

    /// The GPU this scorer runs on.
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }
}
