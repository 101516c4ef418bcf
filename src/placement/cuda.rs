//! Placement's realized imbalance on the GPU (`kernels/placement.cu`): a layer's
//! shares are on the GPU once, as float64 (the forecast stage's copy, left there, or
//! copied up); each batch of plans goes up as slot lists (an expert and its replica
//! count, 4 bytes a slot) and comes back as each step's imbalance, each layer on a
//! stream of its own. The kernel repeats the CPU's operations one for one, so the values
//! have the CPU path's bits and `placement.parquet` is the same file either way.
//! The plans themselves are made on the CPU.

use std::sync::Arc;

use anyhow::Context;
use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};

use super::{Placement, StepImbalances};
use crate::gpu::Gpu;

/// Most slots (experts + redundant replicas) a plan may have: the kernel stages a
/// job's slots in 48 kB of shared memory.
const MAX_SLOTS: usize = 12 * 1024;
/// A slot that holds nothing (kernels/placement.cu skips it).
const EMPTY: u32 = u32::MAX;
/// Steps a block evaluates (one a thread).
const BLOCK: u32 = 128;
/// Most doubles a batch's output holds (256 MB); larger batches are split.
const MAX_OUT: usize = 32 << 20;

/// Whether plans of `experts` experts with `replicas` redundant replicas fit the
/// kernel (else the CPU evaluates them): expert ids and replica counts must fit 16
/// bits and a plan's slots the shared memory.
pub fn fits(experts: usize, replicas: usize) -> bool {
    experts < (1 << 16) && replicas + 1 < (1 << 16) && experts + replicas <= MAX_SLOTS
}

/// The placement kernel of one GPU. Each layer put on it gets a stream of its own,
/// so that the layers of a group, on several threads, copy and score their batches
/// side by side.
pub struct PlacementGpu {
    ctx: Arc<CudaContext>,
    func: CudaFunction,
}

impl PlacementGpu {
    pub fn new(gpu: &Arc<Gpu>) -> anyhow::Result<PlacementGpu> {
        let func = gpu.get_or_load_func(&crate::gpu::PLACEMENT, &[], "placement_imbalance")?;
        func.set_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, (MAX_SLOTS * 4) as i32)
            .context("setting the shared memory of placement_imbalance")?;
        Ok(PlacementGpu { ctx: gpu.ctx.clone(), func })
    }

    /// Puts a layer's shares (step-major, `experts` a row) on the GPU.
    pub fn layer(&self, shares: &[f64], experts: usize) -> anyhow::Result<LayerOnGpu<'_>> {
        let stream = self.ctx.new_stream().context("creating a CUDA stream for placement")?;
        let _span = crate::profile::span(|| "placement: a layer's shares to the GPU".into());
        let d = stream.clone_htod(shares).context("copying the layer's shares to the GPU for placement")?;
        Ok(LayerOnGpu { gpu: self, stream, shares: OnDevice::Own(d), experts, steps: shares.len() / experts.max(1) })
    }

    /// A layer's shares already on this GPU (`steps × experts`, step-major, at the
    /// front of `shares`): the forecast stage's copy, which need not go up again.
    pub fn layer_on_device<'a>(&'a self, shares: &'a CudaSlice<f64>, steps: usize, experts: usize) -> anyhow::Result<LayerOnGpu<'a>> {
        assert!(shares.len() >= steps * experts, "a layer's shares on the GPU");
        let stream = self.ctx.new_stream().context("creating a CUDA stream for placement")?;
        Ok(LayerOnGpu { gpu: self, stream, shares: OnDevice::Lent(shares), experts, steps })
    }
}

/// Shares on the GPU: copied up for placement, or lent by the forecast stage.
enum OnDevice<'a> {
    Own(CudaSlice<f64>),
    Lent(&'a CudaSlice<f64>),
}

/// One layer's shares on the GPU, ready to score plans on.
pub struct LayerOnGpu<'a> {
    gpu: &'a PlacementGpu,
    stream: Arc<CudaStream>,
    shares: OnDevice<'a>,
    experts: usize,
    steps: usize,
}

/// The batches one launch each takes: runs of jobs whose plans have the same
/// devices and most slots per device, cut so that a batch's output holds at most
/// [`MAX_OUT`] doubles. Each is (jobs, devices, slots per device). The caller
/// orders the jobs by shape first, so that each shape is one run.
fn batches(jobs: &[(&Placement, usize)], h: usize) -> Vec<(std::ops::Range<usize>, usize, usize)> {
    let shape = |pl: &Placement| (pl.gpus(), pl.most_per_device());
    let most = (MAX_OUT / h.max(1)).max(1);
    let mut out = Vec::new();
    let mut from = 0;
    while from < jobs.len() {
        let s = shape(jobs[from].0);
        let mut to = from + 1;
        while to < jobs.len() && to - from < most && shape(jobs[to].0) == s {
            to += 1;
        }
        out.push((from..to, s.0, s.1));
        from = to;
    }
    out
}

impl StepImbalances for LayerOnGpu<'_> {
    /// Jobs of the same shape go in one batch wherever they are in `jobs` (taken in a
    /// stable order of shapes); each job's values land at its own place.
    fn steps(&self, jobs: &[(&Placement, usize)], h: usize) -> anyhow::Result<Vec<f64>> {
        let mut order: Vec<usize> = (0..jobs.len()).collect();
        order.sort_by_key(|&j| (jobs[j].0.gpus(), jobs[j].0.most_per_device()));
        let sorted: Vec<(&Placement, usize)> = order.iter().map(|&j| jobs[j]).collect();
        let mut out = vec![0.0; jobs.len() * h];
        for (range, g, slots) in batches(&sorted, h) {
            let batch = &sorted[range.clone()];
            assert!(h > 0 && g * slots <= MAX_SLOTS, "placement_imbalance: {g} × {slots} slots, {h} steps");
            let mut packed: Vec<u32> = Vec::with_capacity(batch.len() * g * slots);
            let mut starts: Vec<i32> = Vec::with_capacity(batch.len());
            for &(pl, from) in batch {
                assert!(pl.experts() == self.experts && from + h <= self.steps, "a plan of this layer");
                for d in 0..g {
                    // A device with fewer slots (the static plan's, when G does not
                    // divide E) is padded with empty ones, which the kernel skips.
                    let dev = pl.device(d);
                    packed.extend(dev.iter().map(|&e| e | ((pl.replicas(e as usize) as u32) << 16)));
                    packed.extend(std::iter::repeat_n(EMPTY, slots - dev.len()));
                }
                starts.push(from as i32);
            }
            let values = {
                let _span = crate::profile::span(|| format!("placement: a batch of {} plans on the GPU", batch.len()));
                let st = &self.stream;
                let d_slots = st.clone_htod(&packed).context("copying plans to the GPU")?;
                let d_first = st.clone_htod(&starts).context("copying plans to the GPU")?;
                // SAFETY: the kernel writes every value (each job's steps 0 .. h).
                let mut d_out: CudaSlice<f64> = unsafe { st.alloc(batch.len() * h) }.context("allocating placement's output on the GPU")?;
                let (e, gi, si, hi) = (self.experts as i32, g as i32, slots as i32, h as i32);
                let cfg = LaunchConfig {
                    grid_dim: (batch.len() as u32, (h as u32).div_ceil(BLOCK), 1),
                    block_dim: (BLOCK, 1, 1),
                    shared_mem_bytes: (g * slots * 4) as u32,
                };
                let shares = match &self.shares {
                    OnDevice::Own(s) => s,
                    OnDevice::Lent(s) => *s,
                };
                let mut b = st.launch_builder(&self.gpu.func);
                b.arg(shares).arg(&e).arg(&d_first).arg(&d_slots).arg(&gi).arg(&si).arg(&hi).arg(&mut d_out);
                // SAFETY: shares hold steps × E doubles and every job's steps first ..
                // first + h are below `steps` (asserted); slots hold jobs × G × S entries
                // with experts below E and counts at least 1 (a placement's); shared
                // memory is G × S × 4 bytes, within the 48 kB set as the kernel's maximum
                // (`fits`); out holds jobs × h doubles.
                unsafe { b.launch(cfg) }.context("launching placement_imbalance")?;
                st.clone_dtoh(&d_out).context("copying imbalances from the GPU")?
            };
            for (k, v) in range.zip(values.chunks(h)) {
                let j = order[k];
                out[j * h..(j + 1) * h].copy_from_slice(v);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::{plan, static_plan};

    #[test]
    fn batches_split_where_the_shape_changes_and_at_the_output_limit() {
        let w: Vec<f64> = (0..16).map(|e| 1.0 + e as f64).collect();
        let (a, b, c) = (static_plan(16, 4), static_plan(16, 8), plan(&w, 4, 4));
        let jobs = vec![(&a, 0), (&a, 5), (&b, 0), (&b, 1), (&b, 2), (&c, 3), (&a, 1)];
        assert_eq!(batches(&jobs, 10), vec![(0..2, 4, 4), (2..5, 8, 2), (5..6, 4, 5), (6..7, 4, 4)]);
        // At most MAX_OUT doubles a batch: with h = MAX_OUT / 2, two jobs a batch.
        assert_eq!(batches(&jobs[2..5], MAX_OUT / 2), vec![(0..2, 8, 2), (2..3, 8, 2)]);
        assert!(batches(&[], 10).is_empty());
    }
}
