//! The LSTM on our own CUDA kernels (`kernels/lstm.cu` through cudarc's NVRTC):
//! a fused forward and backward pass per layer, the head, the loss and Adam, with
//! the same parameters, initial weights and update rule as the burn network
//! ([`super::net::Net`]), which stays the CPU path, the reference the kernels are
//! tested against, and the checkpoint format.
//!
//! Parameters live in one flat buffer, tensor by tensor in the order of `Net`:
//! per layer `w_ih [d, 4H]`, `w_hh [H, 4H]`, `bias [4H]`; then `head_w [H, out]`,
//! `head_b [out]`.

use std::sync::Arc;

use anyhow::{Context, bail};
use burn::module::Param;
use burn::prelude::*;
use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};

use super::net::{Cell, Net};
use crate::gpu::{Gpu, LSTM};

/// Sequences per block by default (`-DR` of kernels/lstm.cu, a multiple of 4;
/// `expertcast bench --lstm-rows` measures others).
pub const ROWS: usize = 8;
/// Largest hidden size the kernels take (a thread holds a column of W_hh in registers).
pub const MAX_HIDDEN: usize = 128;
/// Largest input width (joint mode: experts a layer).
pub const MAX_INPUT: usize = 256;

/// The LSTM functions for one layer size, from the GPU's kernel registry.
struct LstmKernels {
    fwd: CudaFunction,
    bwd: CudaFunction,
    sum_partials: CudaFunction,
    transpose: CudaFunction,
    head_fwd: CudaFunction,
    head_bwd_h: CudaFunction,
    head_bwd_w: CudaFunction,
    seg_sqnorm: CudaFunction,
    sum_into: CudaFunction,
    adam: CudaFunction,
}

/// The kernels for a layer of `d` inputs and `h` units with `rows` sequences a
/// block, compiled once per GPU and size.
fn kernels(gpu: &Gpu, d: usize, h: usize, rows: usize) -> anyhow::Result<Arc<LstmKernels>> {
    let options = [format!("-DD={d}"), format!("-DH={h}"), format!("-DR={rows}"), "--use_fast_math".into()];
    let f = |n: &str| gpu.get_or_load_func(&LSTM, &options, n);
    Ok(Arc::new(LstmKernels {
        fwd: f("lstm_fwd")?,
        bwd: f("lstm_bwd")?,
        sum_partials: f("sum_partials")?,
        transpose: f("transpose")?,
        head_fwd: f("head_fwd")?,
        head_bwd_h: f("head_bwd_h")?,
        head_bwd_w: f("head_bwd_w")?,
        seg_sqnorm: f("seg_sqnorm")?,
        sum_into: f("sum_into")?,
        adam: f("adam")?,
    }))
}

fn grid(n: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (n.div_ceil(256).max(1) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

/// Per-batch-size work buffers.
struct Work {
    batch: usize,
    steps: usize,
    x: CudaSlice<f32>,
    y: CudaSlice<f32>,
    target: CudaSlice<f32>,
    dy: CudaSlice<f32>,
    /// Squared error of every output of the batch.
    se: CudaSlice<f32>,
    dh_last: CudaSlice<f32>,
    /// Per layer: h and c sequences, activations (training only), final h and c.
    hs: Vec<CudaSlice<f32>>,
    cs: Vec<CudaSlice<f32>>,
    acts: Vec<CudaSlice<f32>>,
    h_last: Vec<CudaSlice<f32>>,
    c_last: Vec<CudaSlice<f32>>,
    /// Gradient w.r.t. each layer's input sequence (layers 1..).
    dx: Vec<CudaSlice<f32>>,
    partial: CudaSlice<f32>,
    train: bool,
}

/// A network on the GPU with its optimiser state.
pub struct Engine {
    stream: Arc<CudaStream>,
    layer_k: Vec<Arc<LstmKernels>>,
    /// Sequences a block.
    rows: usize,
    d_in: usize,
    hidden: usize,
    d_out: usize,
    /// (offset, len) of every tensor in the flat buffers.
    tensors: Vec<(usize, usize)>,
    params: CudaSlice<f32>,
    grads: CudaSlice<f32>,
    m: CudaSlice<f32>,
    v: CudaSlice<f32>,
    seg_start: CudaSlice<i32>,
    seg_of: CudaSlice<i32>,
    sqnorm: CudaSlice<f32>,
    loss: CudaSlice<f32>,
    wt: Vec<(CudaSlice<f32>, CudaSlice<f32>)>,
    step: i32,
    work: Option<Work>,
}

/// Whether the kernels take a network of these sizes.
pub fn supports(d_in: usize, hidden: usize) -> bool {
    hidden <= MAX_HIDDEN && d_in <= MAX_INPUT && hidden >= 1
}

impl Engine {
    /// Uploads `net` onto `gpu`, its kernels running `rows` sequences a block
    /// ([`ROWS`] unless measuring).
    pub fn from_net<B: Backend>(net: &Net<B>, gpu: &Gpu, rows: usize) -> anyhow::Result<Engine> {
        let hidden = net.hidden();
        let d_in = net.cells[0].w_ih.dims()[0];
        let d_out = net.head_w.dims()[1];
        if !supports(d_in, hidden) {
            bail!("the LSTM kernels take hidden <= {MAX_HIDDEN} and inputs <= {MAX_INPUT} (got {hidden}, {d_in})");
        }
        if rows == 0 || rows % 4 != 0 {
            bail!("the LSTM kernels run a multiple of 4 sequences a block (got {rows})");
        }
        let stream = gpu.ctx.new_stream().context("creating a CUDA stream for the LSTM")?;
        let mut flat = Vec::new();
        let mut tensors = Vec::new();
        let mut push = |v: Vec<f32>| {
            tensors.push((flat.len(), v.len()));
            flat.extend(v);
        };
        let mut layer_k = Vec::new();
        for (l, c) in net.cells.iter().enumerate() {
            push(super::train::to_f32(c.w_ih.val()));
            push(super::train::to_f32(c.w_hh.val()));
            push(super::train::to_f32(c.bias.val()));
            layer_k.push(kernels(gpu, if l == 0 { d_in } else { hidden }, hidden, rows)?);
        }
        push(super::train::to_f32(net.head_w.val()));
        push(super::train::to_f32(net.head_b.val()));
        let n = flat.len();
        let mut starts: Vec<i32> = tensors.iter().map(|t| t.0 as i32).collect();
        starts.push(n as i32);
        let mut seg_of = vec![0i32; n];
        for (s, &(o, len)) in tensors.iter().enumerate() {
            seg_of[o..o + len].iter_mut().for_each(|v| *v = s as i32);
        }
        let wt = net
            .cells
            .iter()
            .enumerate()
            .map(|(l, _)| {
                let d = if l == 0 { d_in } else { hidden };
                Ok((stream.alloc_zeros::<f32>(d * 4 * hidden)?, stream.alloc_zeros::<f32>(hidden * 4 * hidden)?))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Engine {
            params: stream.clone_htod(&flat)?,
            grads: stream.alloc_zeros(n)?,
            m: stream.alloc_zeros(n)?,
            v: stream.alloc_zeros(n)?,
            seg_start: stream.clone_htod(&starts)?,
            seg_of: stream.clone_htod(&seg_of)?,
            sqnorm: stream.alloc_zeros(tensors.len())?,
            loss: stream.alloc_zeros(1)?,
            wt,
            stream,
            layer_k,
            rows,
            d_in,
            hidden,
            d_out,
            tensors,
            step: 0,
            work: None,
        })
    }

    /// The parameters as a burn network on `device`.
    pub fn to_net<B: Backend>(&self, device: &B::Device) -> anyhow::Result<Net<B>> {
        let flat = self.stream.clone_dtoh(&self.params)?;
        let t = |i: usize| flat[self.tensors[i].0..self.tensors[i].0 + self.tensors[i].1].to_vec();
        let g = 4 * self.hidden;
        let layers = self.layer_k.len();
        let cells = (0..layers)
            .map(|l| {
                let d = if l == 0 { self.d_in } else { self.hidden };
                Cell {
                    w_ih: Param::from_tensor(Tensor::from_data(TensorData::new(t(3 * l), [d, g]), device)),
                    w_hh: Param::from_tensor(Tensor::from_data(TensorData::new(t(3 * l + 1), [self.hidden, g]), device)),
                    bias: Param::from_tensor(Tensor::from_data(TensorData::new(t(3 * l + 2), [g]), device)),
                }
            })
            .collect();
        Ok(Net {
            cells,
            head_w: Param::from_tensor(Tensor::from_data(TensorData::new(t(3 * layers), [self.hidden, self.d_out]), device)),
            head_b: Param::from_tensor(Tensor::from_data(TensorData::new(t(3 * layers + 1), [self.d_out]), device)),
        })
    }

    fn ensure_work(&mut self, batch: usize, steps: usize, train: bool) -> anyhow::Result<()> {
        if let Some(w) = &self.work
            && w.batch >= batch
            && w.steps == steps
            && (w.train || !train)
        {
            return Ok(());
        }
        let s = &self.stream;
        let (h, g, layers) = (self.hidden, 4 * self.hidden, self.layer_k.len());
        let seq = batch * steps;
        let per = |n: usize| -> anyhow::Result<Vec<CudaSlice<f32>>> { (0..layers).map(|_| Ok(s.alloc_zeros::<f32>(n.max(1))?)).collect() };
        let blocks = batch.div_ceil(self.rows);
        let widest = self.d_in.max(h);
        self.work = Some(Work {
            batch,
            steps,
            x: s.alloc_zeros(seq * self.d_in)?,
            y: s.alloc_zeros(batch * self.d_out)?,
            target: s.alloc_zeros(batch * self.d_out)?,
            dy: s.alloc_zeros(batch * self.d_out)?,
            se: s.alloc_zeros(batch * self.d_out)?,
            dh_last: s.alloc_zeros(batch * h)?,
            hs: per(seq * h)?,
            cs: per(if train { seq * h } else { 1 })?,
            acts: per(if train { seq * g } else { 1 })?,
            h_last: per(batch * h)?,
            c_last: per(batch * h)?,
            dx: per(if train { seq * h } else { 1 })?,
            partial: s.alloc_zeros(if train { blocks * (widest * g + h * g + g) } else { 1 })?,
            train,
        });
        Ok(())
    }

    /// Whether the work buffers hold `n` windows of `steps` steps (with the training
    /// buffers when `train`): every launch below relies on it, so the `// SAFETY:`
    /// comments hold on every public path.
    fn check_work(&self, n: usize, steps: usize, train: bool) -> anyhow::Result<()> {
        match &self.work {
            Some(w) if n <= w.batch && steps == w.steps && (w.train || !train) => Ok(()),
            Some(w) => bail!(
                "the LSTM's work buffers hold {} windows of {} steps{}, not {n} of {steps}{}: upload them first",
                w.batch,
                w.steps,
                if w.train { " for training" } else { "" },
                if train { " for training" } else { "" }
            ),
            None => bail!("no windows uploaded to the LSTM's work buffers"),
        }
    }

    /// Runs every layer forward on the `n` windows in `work.x` (`steps` long) from
    /// the state `state` (per layer h and c, `[n, H]`), keeping what backward needs
    /// when `train`; then the head into `work.y`, and with `target` the loss and dy.
    fn forward(&mut self, n: usize, steps: usize, train: bool, state: Option<&[(CudaSlice<f32>, CudaSlice<f32>)]>, target: bool) -> anyhow::Result<()> {
        self.check_work(n, steps, train)?;
        let rows = self.rows;
        let w = self.work.as_mut().expect("work buffers");
        let (h, g) = (self.hidden, 4 * self.hidden);
        let (ni, ti) = (n as i32, steps as i32);
        let null: u64 = 0;
        let layers = self.layer_k.len();
        for l in 0..layers {
            let k = &self.layer_k[l];
            let (o_ih, _) = self.tensors[3 * l];
            let (o_hh, _) = self.tensors[3 * l + 1];
            let (o_b, _) = self.tensors[3 * l + 2];
            let d = if l == 0 { self.d_in } else { h };
            let (below, rest) = w.hs.split_at_mut(l);
            let input = if l == 0 { w.x.slice(..) } else { below[l - 1].slice(..) };
            let cfg = LaunchConfig { grid_dim: (n.div_ceil(rows) as u32, 1, 1), block_dim: (g as u32, 1, 1), shared_mem_bytes: 0 };
            let w_ih = self.params.slice(o_ih..o_ih + d * g);
            let w_hh = self.params.slice(o_hh..o_hh + h * g);
            let bias = self.params.slice(o_b..o_b + g);
            let mut b = self.stream.launch_builder(&k.fwd);
            b.arg(&input).arg(&w_ih).arg(&w_hh).arg(&bias);
            match state {
                Some(s) => b.arg(&s[l].0).arg(&s[l].1),
                None => b.arg(&null).arg(&null),
            };
            // The top layer's sequence is only needed for training (backward reads it).
            let keep_seq = train || l + 1 < layers;
            if keep_seq {
                b.arg(&mut rest[0]);
            } else {
                b.arg(&null);
            }
            if train {
                b.arg(&mut w.cs[l]).arg(&mut w.acts[l]);
            } else {
                b.arg(&null).arg(&null);
            }
            b.arg(&mut w.h_last[l]).arg(&mut w.c_last[l]).arg(&ni).arg(&ti);
            // SAFETY: every buffer holds n × steps rows of its width (ensure_work sized
            // them for at least n); the kernel guards rows >= n.
            unsafe { b.launch(cfg) }.with_context(|| format!("launching lstm_fwd (layer {l}, {n} windows × {steps} steps)"))?;
        }
        let top = &self.layer_k[layers - 1];
        let (o_w, _) = self.tensors[3 * layers];
        let (o_b, _) = self.tensors[3 * layers + 1];
        let (hi, oi) = (h as i32, self.d_out as i32);
        let head_w = self.params.slice(o_w..o_w + h * self.d_out);
        let head_b = self.params.slice(o_b..o_b + self.d_out);
        let mut b = self.stream.launch_builder(&top.head_fwd);
        b.arg(&w.h_last[layers - 1]).arg(&head_w).arg(&head_b).arg(&ni).arg(&hi).arg(&oi).arg(&mut w.y);
        if target {
            b.arg(&w.target).arg(&mut w.dy).arg(&mut w.se);
        } else {
            b.arg(&null).arg(&null).arg(&null);
        }
        // SAFETY: y, target, dy and se hold n × d_out floats, h_last n × H.
        unsafe { b.launch(grid(n * self.d_out)) }.context("launching head_fwd")?;
        if target {
            let m = (n * self.d_out) as i32;
            let mut b = self.stream.launch_builder(&top.sum_into);
            b.arg(&w.se).arg(&m).arg(&mut self.loss);
            let one = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (1024, 1, 1), shared_mem_bytes: 0 };
            // SAFETY: se holds m floats, loss one.
            unsafe { b.launch(one) }.context("launching sum_into")?;
        }
        Ok(())
    }

    /// Gradients of the loss on the `n` windows in the work buffers into `grads`
    /// (after [`Self::forward`] with `train` and a target).
    fn backward(&mut self, n: usize) -> anyhow::Result<()> {
        let steps = self.work.as_ref().map_or(0, |w| w.steps);
        self.check_work(n, steps, true)?;
        let w = self.work.as_mut().expect("work buffers");
        let (h, g) = (self.hidden, 4 * self.hidden);
        let layers = self.layer_k.len();
        let (ni, hi, oi, ti) = (n as i32, h as i32, self.d_out as i32, w.steps as i32);
        let top = self.layer_k[layers - 1].clone();
        let (o_w, _) = self.tensors[3 * layers];
        let (o_b, _) = self.tensors[3 * layers + 1];
        {
            let head_w = self.params.slice(o_w..o_w + h * self.d_out);
            let mut b = self.stream.launch_builder(&top.head_bwd_h);
            b.arg(&w.dy).arg(&head_w).arg(&ni).arg(&hi).arg(&oi).arg(&mut w.dh_last);
            // SAFETY: dy is n × d_out, dh_last n × H.
            unsafe { b.launch(grid(n * h)) }.context("launching head_bwd_h")?;
        }
        {
            let (mut gw, mut gb) = self.grads.split_at_mut(o_b);
            let mut gw = gw.slice_mut(o_w..o_w + h * self.d_out);
            let mut gb = gb.slice_mut(..self.d_out);
            let cfg = LaunchConfig { grid_dim: (((h + 1) * self.d_out) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
            let mut b = self.stream.launch_builder(&top.head_bwd_w);
            b.arg(&w.h_last[layers - 1]).arg(&w.dy).arg(&ni).arg(&hi).arg(&oi).arg(&mut gw).arg(&mut gb);
            // SAFETY: one block per (k, o) with k <= H; h_last is n × H, dy n × d_out.
            unsafe { b.launch(cfg) }.context("launching head_bwd_w")?;
        }
        let null: u64 = 0;
        for l in (0..layers).rev() {
            let k = self.layer_k[l].clone();
            let d = if l == 0 { self.d_in } else { h };
            let (o_ih, _) = self.tensors[3 * l];
            let (o_hh, _) = self.tensors[3 * l + 1];
            // Transposed weights for dx and the recurrent gradient.
            let (wt_ih, wt_hh) = &mut self.wt[l];
            for (o, rows, dst) in [(o_ih, d, wt_ih), (o_hh, h, wt_hh)] {
                let src = self.params.slice(o..o + rows * g);
                let (r, c) = (rows as i32, g as i32);
                let mut b = self.stream.launch_builder(&k.transpose);
                b.arg(&src).arg(&r).arg(&c).arg(dst);
                // SAFETY: src is rows × G, dst G × rows.
                unsafe { b.launch(grid(rows * g)) }.context("launching transpose")?;
            }
            let blocks = n.div_ceil(self.rows);
            let cfg = LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (g as u32, 1, 1), shared_mem_bytes: 0 };
            // dx[i] is the gradient w.r.t. hs[i]: written by layer i + 1, read by layer i.
            let (dx_lo, dx_hi) = w.dx.split_at_mut(l);
            let input = if l == 0 { w.x.slice(..) } else { w.hs[l - 1].slice(..) };
            let mut b = self.stream.launch_builder(&k.bwd);
            b.arg(&input).arg(&w.hs[l]).arg(&w.cs[l]).arg(&w.acts[l]).arg(&self.wt[l].0).arg(&self.wt[l].1);
            if l + 1 < layers {
                b.arg(&dx_hi[0]).arg(&null);
            } else {
                b.arg(&null).arg(&w.dh_last);
            }
            if l > 0 {
                b.arg(&mut dx_lo[l - 1]);
            } else {
                b.arg(&null);
            }
            b.arg(&mut w.partial).arg(&ni).arg(&ti);
            // SAFETY: sequences are n × steps rows; partial holds blocks × (D G + H G + G).
            unsafe { b.launch(cfg) }.with_context(|| format!("launching lstm_bwd (layer {l})"))?;
            let len = d * g + h * g + g;
            let mut out = self.grads.slice_mut(o_ih..o_ih + len);
            let (bi, li) = (blocks as i32, len as i32);
            let mut b = self.stream.launch_builder(&k.sum_partials);
            b.arg(&w.partial).arg(&bi).arg(&li).arg(&mut out);
            // SAFETY: partial holds blocks × len floats; out len floats.
            unsafe { b.launch(grid(len)) }.context("launching sum_partials")?;
        }
        Ok(())
    }

    /// Copies `n` windows (and targets) into the work buffers.
    pub fn upload(&mut self, x: &[f32], y: Option<&[f32]>, n: usize, steps: usize, train: bool) -> anyhow::Result<()> {
        if x.len() != n * steps * self.d_in {
            bail!("{} input values for {n} windows of {steps} steps × {} inputs", x.len(), self.d_in);
        }
        if let Some(y) = y
            && y.len() != n * self.d_out
        {
            bail!("{} targets for {n} windows of {} outputs", y.len(), self.d_out);
        }
        self.ensure_work(n, steps, train)?;
        let w = self.work.as_mut().expect("work buffers");
        self.stream.memcpy_htod(x, &mut w.x.slice_mut(..x.len())).context("copying windows to the GPU")?;
        if let Some(y) = y {
            self.stream.memcpy_htod(y, &mut w.target.slice_mut(..y.len())).context("copying targets to the GPU")?;
        }
        Ok(())
    }

    /// Loss (mean squared error) and gradients of `n` windows (`x`: n × steps × d_in,
    /// `y`: n × d_out), without updating: for tests against burn's autodiff.
    pub fn loss_and_grads(&mut self, x: &[f32], y: &[f32], n: usize, steps: usize) -> anyhow::Result<(f64, Vec<f32>)> {
        self.upload(x, Some(y), n, steps, true)?;
        self.stream.memset_zeros(&mut self.loss)?;
        self.forward(n, steps, true, None, true)?;
        self.backward(n)?;
        let loss = self.stream.clone_dtoh(&self.loss)?[0] as f64 / (n * self.d_out) as f64;
        Ok((loss, self.stream.clone_dtoh(&self.grads)?))
    }

    /// One Adam step (burn's update, each tensor's gradient clipped to norm `clip`)
    /// on `n` windows; the summed squared error accumulates on the device.
    pub fn train_step(&mut self, x: &[f32], y: &[f32], n: usize, steps: usize, lr: f64, clip: f32) -> anyhow::Result<()> {
        self.upload(x, Some(y), n, steps, true)?;
        self.step_uploaded(n, steps, lr, clip)
    }

    /// [`Self::train_step`] on the windows already uploaded.
    pub fn step_uploaded(&mut self, n: usize, steps: usize, lr: f64, clip: f32) -> anyhow::Result<()> {
        self.forward(n, steps, true, None, true)?;
        self.backward(n)?;
        // seg_sqnorm writes every segment's squared norm (one block each).
        let segs = self.tensors.len();
        let k = self.layer_k[0].clone();
        let cfg = LaunchConfig { grid_dim: (segs as u32, 1, 1), block_dim: (1024, 1, 1), shared_mem_bytes: 0 };
        let mut b = self.stream.launch_builder(&k.seg_sqnorm);
        b.arg(&self.grads).arg(&self.seg_start).arg(&mut self.sqnorm);
        // SAFETY: seg_start holds segs + 1 offsets into grads; sqnorm segs floats.
        unsafe { b.launch(cfg) }.context("launching seg_sqnorm")?;
        self.step += 1;
        let n_p = self.params.len() as i32;
        let (lr, b1, b2, eps) = (lr as f32, 0.9f32, 0.999f32, 1e-5f32);
        let mut b = self.stream.launch_builder(&k.adam);
        b.arg(&mut self.params).arg(&self.grads).arg(&mut self.m).arg(&mut self.v).arg(&self.seg_of).arg(&self.sqnorm);
        b.arg(&n_p).arg(&lr).arg(&b1).arg(&b2).arg(&eps).arg(&clip).arg(&self.step);
        // SAFETY: params, grads, m, v and seg_of hold n_p values.
        unsafe { b.launch(grid(n_p as usize)) }.context("launching adam")?;
        Ok(())
    }

    /// The summed squared error since the last call (and resets it).
    pub fn take_loss(&mut self) -> anyhow::Result<f64> {
        let v = self.stream.clone_dtoh(&self.loss)?[0] as f64;
        self.stream.memset_zeros(&mut self.loss)?;
        Ok(v)
    }

    /// Head outputs for `n` windows (`n × d_out`), continuing from the state of the
    /// previous call when `carry` (recursive forecasting).
    pub fn predict(&mut self, x: &[f32], n: usize, steps: usize, carry: bool) -> anyhow::Result<Vec<f32>> {
        let state = if carry {
            self.check_work(n, self.work.as_ref().map_or(0, |w| w.steps), false)?;
            let w = self.work.as_ref().expect("checked");
            Some(w.h_last.iter().zip(&w.c_last).map(|(h, c)| Ok((self.stream.clone_dtod(h)?, self.stream.clone_dtod(c)?))).collect::<anyhow::Result<Vec<_>>>()?)
        } else {
            None
        };
        self.upload(x, None, n, steps, false)?;
        self.forward(n, steps, false, state.as_deref(), false)?;
        let w = self.work.as_ref().expect("work buffers");
        Ok(self.stream.clone_dtoh(&w.y.slice(..n * self.d_out))?)
    }
}

impl Engine {
    /// The forward pass (no state kept) on the windows already uploaded, waiting
    /// for the device: for benchmarks.
    pub fn forward_uploaded(&mut self, n: usize, steps: usize) -> anyhow::Result<()> {
        self.forward(n, steps, false, None, false)?;
        self.sync()
    }
    /// Waits for the engine's stream.
    pub fn sync(&self) -> anyhow::Result<()> {
        self.stream.synchronize().context("synchronising the LSTM stream")
    }

    /// Summed squared error on `n` windows, without updating.
    pub fn sse(&mut self, x: &[f32], y: &[f32], n: usize, steps: usize) -> anyhow::Result<f64> {
        let before = self.take_loss()?;
        self.upload(x, Some(y), n, steps, false)?;
        self.forward(n, steps, false, None, true)?;
        let v = self.take_loss()?;
        // Put back a running total taken above (none at the end of an epoch).
        if before != 0.0 {
            self.stream.memcpy_htod(&[before as f32], &mut self.loss)?;
        }
        Ok(v)
    }
    /// The parameters, flat, on the host.
    pub fn params_host(&self) -> anyhow::Result<Vec<f32>> {
        Ok(self.stream.clone_dtoh(&self.params)?)
    }
    /// Replaces the parameters (from [`Self::params_host`]).
    pub fn set_params(&mut self, p: &[f32]) -> anyhow::Result<()> {
        if p.len() != self.params.len() {
            bail!("{} parameters for a network of {}", p.len(), self.params.len());
        }
        self.stream.memcpy_htod(p, &mut self.params)?;
        Ok(())
    }
}

/// Training on the kernels.
pub struct KernelLearner {
    pub engine: Engine,
    pub lookback: usize,
    pub lr: f64,
}

impl super::train::Learner for KernelLearner {
    type Snapshot = Vec<f32>;
    fn step(&mut self, x: Vec<f32>, y: Vec<f32>, n: usize) -> anyhow::Result<()> {
        self.engine.train_step(&x, &y, n, self.lookback, self.lr, 1.0)
    }
    fn take_sse(&mut self) -> anyhow::Result<f64> {
        self.engine.take_loss()
    }
    fn sse(&mut self, x: Vec<f32>, y: Vec<f32>, n: usize) -> anyhow::Result<f64> {
        self.engine.sse(&x, &y, n, self.lookback)
    }
    fn snapshot(&mut self) -> anyhow::Result<Vec<f32>> {
        self.engine.params_host()
    }
}
