//! The LSTM on the CPU without burn: the same fused forward pass, backward through
//! time, head, squared-error loss and Adam as `kernels/lstm.cu`, in Rust, with
//! rayon over blocks of [`ROWS`] sequences and loops over the 4H gate columns that
//! the compiler vectorises (an AVX2 copy is chosen where the CPU has it).
//!
//! Parameters live in one flat buffer in the order of [`Net`] (per layer `w_ih
//! [d, 4H]`, `w_hh [H, 4H]`, `bias [4H]`; then `head_w [H, out]`, `head_b [out]`),
//! as on the GPU. A batch is cut into blocks of [`ROWS`] sequences whatever the
//! thread count, and the blocks' gradients are added in block order, so a training
//! run gives the same bits on 1 or 64 threads. burn's autodiff
//! ([`super::train::BurnLearner`]) stays the reference the tests compare against.

use anyhow::bail;
use burn::module::Param;
use burn::prelude::*;
use rayon::prelude::*;

use super::net::{Cell, Net};

/// Sequences a block (a rayon task).
pub const ROWS: usize = 8;

/// `exp(x)` for f32 in a form the compiler vectorises: `2^n · p(r)` with `n =
/// round(x / ln 2)`, `r = x - n ln 2` and a degree-6 polynomial (relative error
/// below 2e-7 on the clamped range).
#[inline(always)]
fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // Round to nearest by the 1.5 · 2^23 trick (no libm call).
    const MAGIC: f32 = 12_582_912.0;
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (0.166_666_67 + r * (0.041_666_668 + r * (0.008_333_452 + r * 0.001_388_89)))));
    let bits = ((t.to_bits() as i32 - MAGIC.to_bits() as i32 + 127) << 23) as u32;
    p * f32::from_bits(bits)
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

#[inline(always)]
fn tanh(x: f32) -> f32 {
    // 1 - 2 / (e^{2x} + 1): exact limits ±1, absolute error a few 1e-8.
    1.0 - 2.0 / (exp(2.0 * x) + 1.0)
}

/// `y += a · x`.
#[inline(always)]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// `Σ a_i b_i` in eight lanes (lane `i mod 8`, then pairwise), which vectorises.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for j in 0..8 {
            acc[j] += x[j] * y[j];
        }
    }
    for (j, (x, y)) in ra.iter().zip(rb).enumerate() {
        acc[j] += x * y;
    }
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
}

/// The sizes of a network.
#[derive(Debug, Clone, Copy)]
struct Dims {
    d_in: usize,
    hidden: usize,
    layers: usize,
    d_out: usize,
}

impl Dims {
    fn d(&self, l: usize) -> usize {
        if l == 0 { self.d_in } else { self.hidden }
    }
}

/// What one block of sequences gives back.
struct BlockOut {
    /// Head outputs, `rows × out`.
    y: Vec<f32>,
    sse: f64,
    /// Gradients of every parameter (flat), training only.
    grads: Vec<f32>,
    /// Final `(h, c)` of every layer, `rows × H` each.
    last: Vec<(Vec<f32>, Vec<f32>)>,
}

/// A block's inputs.
struct Block<'a> {
    rows: usize,
    steps: usize,
    x: &'a [f32],
    target: Option<&'a [f32]>,
    /// Per layer `(h, c)`, `rows × H`, to start from (zeros when `None`).
    state: Option<Vec<(&'a [f32], &'a [f32])>>,
    /// Windows in the whole batch (the loss is their mean).
    batch: usize,
    grads: bool,
}

/// Forward (and with `b.grads` backward) through one block of sequences.
#[inline(always)]
fn run_block_impl(dims: Dims, tensors: &[(usize, usize)], p: &[f32], b: &Block) -> BlockOut {
    let (h, o_n) = (dims.hidden, dims.d_out);
    let g = 4 * h;
    let (rows, steps) = (b.rows, b.steps);
    let slice = |i: usize| &p[tensors[i].0..tensors[i].0 + tensors[i].1];
    // Forward, keeping every layer's sequences when training.
    let mut seqs: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = Vec::with_capacity(dims.layers); // hs, cs, acts
    let mut last = Vec::with_capacity(dims.layers);
    let mut gates = vec![0.0f32; rows * g];
    for l in 0..dims.layers {
        let d = dims.d(l);
        let (w_ih, w_hh, bias) = (slice(3 * l), slice(3 * l + 1), slice(3 * l + 2));
        let input: &[f32] = if l == 0 { b.x } else { &seqs[l - 1].0 };
        let keep = b.grads || l + 1 < dims.layers;
        let mut hs = if keep { vec![0.0f32; rows * steps * h] } else { Vec::new() };
        let mut cs = if b.grads { vec![0.0f32; rows * steps * h] } else { Vec::new() };
        let mut acts = if b.grads { vec![0.0f32; rows * steps * g] } else { Vec::new() };
        let (mut hc, mut cc) = match &b.state {
            Some(s) => (s[l].0.to_vec(), s[l].1.to_vec()),
            None => (vec![0.0f32; rows * h], vec![0.0f32; rows * h]),
        };
        for t in 0..steps {
            for r in 0..rows {
                gates[r * g..(r + 1) * g].copy_from_slice(bias);
            }
            for k in 0..d {
                let w = &w_ih[k * g..(k + 1) * g];
                for r in 0..rows {
                    axpy(&mut gates[r * g..(r + 1) * g], input[(r * steps + t) * d + k], w);
                }
            }
            for k in 0..h {
                let w = &w_hh[k * g..(k + 1) * g];
                for r in 0..rows {
                    axpy(&mut gates[r * g..(r + 1) * g], hc[r * h + k], w);
                }
            }
            for r in 0..rows {
                let a = &mut gates[r * g..(r + 1) * g];
                // Gates i, f and o through the sigmoid, g through tanh (separate loops
                // so that each vectorises).
                a[..2 * h].iter_mut().for_each(|v| *v = sigmoid(*v));
                a[2 * h..3 * h].iter_mut().for_each(|v| *v = tanh(*v));
                a[3 * h..].iter_mut().for_each(|v| *v = sigmoid(*v));
                let (ig, rest) = a.split_at(h);
                let (fg, rest) = rest.split_at(h);
                let (gg, og) = rest.split_at(h);
                let (hr, cr) = (&mut hc[r * h..(r + 1) * h], &mut cc[r * h..(r + 1) * h]);
                let (ig, fg, gg, og, hr, cr) = (&ig[..h], &fg[..h], &gg[..h], &og[..h], &mut hr[..h], &mut cr[..h]);
                for k in 0..h {
                    let c = fg[k] * cr[k] + ig[k] * gg[k];
                    cr[k] = c;
                    hr[k] = og[k] * tanh(c);
                }
                let at = (r * steps + t) * h;
                if keep {
                    hs[at..at + h].copy_from_slice(hr);
                }
                if b.grads {
                    cs[at..at + h].copy_from_slice(cr);
                    acts[(r * steps + t) * g..(r * steps + t + 1) * g].copy_from_slice(a);
                }
            }
        }
        seqs.push((hs, cs, acts));
        last.push((hc, cc));
    }
    // The head.
    let (head_w, head_b) = (slice(3 * dims.layers), slice(3 * dims.layers + 1));
    let top = &last[dims.layers - 1].0;
    let mut y = vec![0.0f32; rows * o_n];
    for r in 0..rows {
        let yr = &mut y[r * o_n..(r + 1) * o_n];
        yr.copy_from_slice(head_b);
        for k in 0..h {
            axpy(yr, top[r * h + k], &head_w[k * o_n..(k + 1) * o_n]);
        }
    }
    let mut sse = 0.0f64;
    let mut dy = Vec::new();
    if let Some(target) = b.target {
        let scale = 2.0 / (b.batch as f32 * o_n as f32);
        dy = y.iter().zip(target).map(|(y, t)| (y - t) * scale).collect();
        for (y, t) in y.iter().zip(target) {
            let d = (y - t) as f64;
            sse += d * d;
        }
    }
    if !b.grads {
        return BlockOut { y, sse, grads: Vec::new(), last };
    }
    let mut grads = vec![0.0f32; p.len()];
    // Head gradients, and the gradient of the top layer's last h.
    {
        let (ow, ob) = (tensors[3 * dims.layers].0, tensors[3 * dims.layers + 1].0);
        for r in 0..rows {
            let dyr = &dy[r * o_n..(r + 1) * o_n];
            for k in 0..h {
                axpy(&mut grads[ow + k * o_n..ow + (k + 1) * o_n], top[r * h + k], dyr);
            }
            axpy(&mut grads[ob..ob + o_n], 1.0, dyr);
        }
    }
    let mut dh_last = vec![0.0f32; rows * h];
    for r in 0..rows {
        for k in 0..h {
            dh_last[r * h + k] = dot(&dy[r * o_n..(r + 1) * o_n], &head_w[k * o_n..(k + 1) * o_n]);
        }
    }
    // Backward through time, top layer first; `dseq` is the gradient of the loss
    // with respect to every h of the layer being walked (from the layer above).
    let mut dseq: Option<Vec<f32>> = None;
    let mut dg = vec![0.0f32; rows * g];
    for l in (0..dims.layers).rev() {
        let d = dims.d(l);
        let input: &[f32] = if l == 0 { b.x } else { &seqs[l - 1].0 };
        let (hs, cs, acts) = (&seqs[l].0, &seqs[l].1, &seqs[l].2);
        let (o_ih, o_hh, o_b) = (tensors[3 * l].0, tensors[3 * l + 1].0, tensors[3 * l + 2].0);
        let (w_ih, w_hh) = (slice(3 * l), slice(3 * l + 1));
        let (h0, c0) = match &b.state {
            Some(s) => (Some(s[l].0), Some(s[l].1)),
            None => (None, None),
        };
        let mut dx = if l > 0 { vec![0.0f32; rows * steps * d] } else { Vec::new() };
        let mut dhr = vec![0.0f32; rows * h];
        let mut dcs = vec![0.0f32; rows * h];
        let zeros = vec![0.0f32; h];
        for t in (0..steps).rev() {
            for r in 0..rows {
                let bt = r * steps + t;
                let a = &acts[bt * g..(bt + 1) * g];
                let dgr = &mut dg[r * g..(r + 1) * g];
                // The gradient reaching h_t: through h_{t+1} (dhr), from the layer
                // above, and from the head at the last step of the top layer.
                let dh = &mut dhr[r * h..(r + 1) * h];
                if let Some(ds) = &dseq {
                    axpy(dh, 1.0, &ds[bt * h..(bt + 1) * h]);
                }
                if l + 1 == dims.layers && t + 1 == steps {
                    axpy(dh, 1.0, &dh_last[r * h..(r + 1) * h]);
                }
                let c = &cs[bt * h..(bt + 1) * h];
                let cp: &[f32] = if t > 0 {
                    &cs[(bt - 1) * h..bt * h]
                } else {
                    match c0 {
                        Some(c0) => &c0[r * h..(r + 1) * h],
                        None => &zeros,
                    }
                };
                let dcr = &mut dcs[r * h..(r + 1) * h];
                let (ig, fg, gg, og) = (&a[..h], &a[h..2 * h], &a[2 * h..3 * h], &a[3 * h..]);
                let (dgi, rest) = dgr.split_at_mut(h);
                let (dgf, rest) = rest.split_at_mut(h);
                let (dgg, dgo) = rest.split_at_mut(h);
                let (c, cp, dh, fg, ig, gg, og) = (&c[..h], &cp[..h], &dh[..h], &fg[..h], &ig[..h], &gg[..h], &og[..h]);
                let (dcr, dgi, dgf, dgg, dgo) = (&mut dcr[..h], &mut dgi[..h], &mut dgf[..h], &mut dgg[..h], &mut dgo[..h]);
                for k in 0..h {
                    let tc = tanh(c[k]);
                    let dc = dcr[k] + dh[k] * og[k] * (1.0 - tc * tc);
                    dcr[k] = dc * fg[k];
                    dgi[k] = dc * gg[k] * ig[k] * (1.0 - ig[k]);
                    dgf[k] = dc * cp[k] * fg[k] * (1.0 - fg[k]);
                    dgg[k] = dc * ig[k] * (1.0 - gg[k] * gg[k]);
                    dgo[k] = dh[k] * tc * og[k] * (1.0 - og[k]);
                }
            }
            // Weight gradients: dW_hh[k] += h_{t-1}[k] dg, dW_ih[k] += x_t[k] dg, db += dg.
            for k in 0..h {
                let row = &mut grads[o_hh + k * g..o_hh + (k + 1) * g];
                for r in 0..rows {
                    let hp = if t > 0 { hs[(r * steps + t - 1) * h + k] } else { h0.map_or(0.0, |h0| h0[r * h + k]) };
                    axpy(row, hp, &dg[r * g..(r + 1) * g]);
                }
            }
            for k in 0..d {
                let row = &mut grads[o_ih + k * g..o_ih + (k + 1) * g];
                for r in 0..rows {
                    axpy(row, input[(r * steps + t) * d + k], &dg[r * g..(r + 1) * g]);
                }
            }
            for r in 0..rows {
                axpy(&mut grads[o_b..o_b + g], 1.0, &dg[r * g..(r + 1) * g]);
            }
            // The recurrent gradient and the input's: dot products of dg with the
            // rows of w_hh and w_ih (gate columns contiguous).
            for r in 0..rows {
                let dgr = &dg[r * g..(r + 1) * g];
                for k in 0..h {
                    dhr[r * h + k] = dot(dgr, &w_hh[k * g..(k + 1) * g]);
                }
                if l > 0 {
                    let bt = r * steps + t;
                    for k in 0..d {
                        dx[bt * d + k] = dot(dgr, &w_ih[k * g..(k + 1) * g]);
                    }
                }
            }
        }
        dseq = (l > 0).then_some(dx);
    }
    BlockOut { y, sse, grads, last }
}

crate::simd::avx2_twin!(
    fn run_block(dims: Dims, tensors: &[(usize, usize)], p: &[f32], b: &Block) -> BlockOut => run_block_impl
);

/// A network on the CPU with its Adam state.
pub struct CpuEngine {
    dims: Dims,
    /// (offset, len) of every tensor in the flat buffers.
    tensors: Vec<(usize, usize)>,
    params: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
    step: i32,
    /// Summed squared error of the training steps since the last `take_loss`.
    sse: f64,
    /// The final state of the last `predict`, for `carry`.
    state: Option<(usize, Vec<(Vec<f32>, Vec<f32>)>)>,
}

impl CpuEngine {
    pub fn from_net<B: Backend>(net: &Net<B>) -> CpuEngine {
        let hidden = net.hidden();
        let d_in = net.cells[0].w_ih.dims()[0];
        let d_out = net.head_w.dims()[1];
        let mut params = Vec::new();
        let mut tensors = Vec::new();
        let mut push = |v: Vec<f32>| {
            tensors.push((params.len(), v.len()));
            params.extend(v);
        };
        for c in &net.cells {
            push(super::train::to_f32(c.w_ih.val()));
            push(super::train::to_f32(c.w_hh.val()));
            push(super::train::to_f32(c.bias.val()));
        }
        push(super::train::to_f32(net.head_w.val()));
        push(super::train::to_f32(net.head_b.val()));
        let n = params.len();
        CpuEngine {
            dims: Dims { d_in, hidden, layers: net.cells.len(), d_out },
            tensors,
            params,
            m: vec![0.0; n],
            v: vec![0.0; n],
            step: 0,
            sse: 0.0,
            state: None,
        }
    }

    /// The parameters as a burn network on `device`.
    pub fn to_net<B: Backend>(&self, device: &B::Device) -> Net<B> {
        let t = |i: usize| self.params[self.tensors[i].0..self.tensors[i].0 + self.tensors[i].1].to_vec();
        let Dims { hidden, layers, d_out, .. } = self.dims;
        let g = 4 * hidden;
        let cells = (0..layers)
            .map(|l| Cell {
                w_ih: Param::from_tensor(Tensor::from_data(TensorData::new(t(3 * l), [self.dims.d(l), g]), device)),
                w_hh: Param::from_tensor(Tensor::from_data(TensorData::new(t(3 * l + 1), [hidden, g]), device)),
                bias: Param::from_tensor(Tensor::from_data(TensorData::new(t(3 * l + 2), [g]), device)),
            })
            .collect();
        Net {
            cells,
            head_w: Param::from_tensor(Tensor::from_data(TensorData::new(t(3 * layers), [hidden, d_out]), device)),
            head_b: Param::from_tensor(Tensor::from_data(TensorData::new(t(3 * layers + 1), [d_out]), device)),
        }
    }

    pub fn params(&self) -> &[f32] {
        &self.params
    }

    pub fn set_params(&mut self, p: &[f32]) -> anyhow::Result<()> {
        if p.len() != self.params.len() {
            bail!("{} parameters for a network of {}", p.len(), self.params.len());
        }
        self.params.copy_from_slice(p);
        Ok(())
    }

    fn check(&self, x: &[f32], y: Option<&[f32]>, n: usize, steps: usize) -> anyhow::Result<()> {
        if x.len() != n * steps * self.dims.d_in {
            bail!("{} input values for {n} windows of {steps} steps × {} inputs", x.len(), self.dims.d_in);
        }
        if let Some(y) = y
            && y.len() != n * self.dims.d_out
        {
            bail!("{} targets for {n} windows of {} outputs", y.len(), self.dims.d_out);
        }
        Ok(())
    }

    /// Runs every block of `n` windows (in parallel), in block order.
    fn run(&self, x: &[f32], y: Option<&[f32]>, n: usize, steps: usize, grads: bool, state: Option<&[(Vec<f32>, Vec<f32>)]>) -> Vec<BlockOut> {
        let (d_in, d_out, h) = (self.dims.d_in, self.dims.d_out, self.dims.hidden);
        let blocks = n.div_ceil(ROWS);
        (0..blocks)
            .into_par_iter()
            .map(|i| {
                let (lo, hi) = (i * ROWS, ((i + 1) * ROWS).min(n));
                let block = Block {
                    rows: hi - lo,
                    steps,
                    x: &x[lo * steps * d_in..hi * steps * d_in],
                    target: y.map(|y| &y[lo * d_out..hi * d_out]),
                    state: state.map(|s| s.iter().map(|(hh, cc)| (&hh[lo * h..hi * h], &cc[lo * h..hi * h])).collect()),
                    batch: n,
                    grads,
                };
                run_block(self.dims, &self.tensors, &self.params, &block)
            })
            .collect()
    }

    /// Loss (mean squared error) and the gradients of `n` windows (`x`: n × steps ×
    /// d_in, `y`: n × d_out), without updating.
    pub fn loss_and_grads(&self, x: &[f32], y: &[f32], n: usize, steps: usize) -> anyhow::Result<(f64, Vec<f32>)> {
        self.check(x, Some(y), n, steps)?;
        let outs = self.run(x, Some(y), n, steps, true, None);
        let mut grads = vec![0.0f32; self.params.len()];
        let mut sse = 0.0;
        for o in &outs {
            axpy(&mut grads, 1.0, &o.grads);
            sse += o.sse;
        }
        Ok((sse / (n * self.dims.d_out) as f64, grads))
    }

    /// One Adam step (burn's update, each tensor's gradient clipped to norm `clip`)
    /// on `n` windows; the summed squared error accumulates for [`Self::take_loss`].
    pub fn train_step(&mut self, x: &[f32], y: &[f32], n: usize, steps: usize, lr: f64, clip: f32) -> anyhow::Result<()> {
        let (loss, grads) = self.loss_and_grads(x, y, n, steps)?;
        self.sse += loss * (n * self.dims.d_out) as f64;
        self.step += 1;
        let (lr, b1, b2, eps) = (lr as f32, 0.9f32, 0.999f32, 1e-5f32);
        let bc2 = (1.0 - b2.powi(self.step)).sqrt();
        let cf = bc2 / (1.0 - b1.powi(self.step));
        for &(o, len) in &self.tensors {
            let g = &grads[o..o + len];
            let sq: f64 = g.iter().map(|&v| (v as f64) * (v as f64)).sum();
            let coef = (clip / ((sq.sqrt() as f32) + f32::MIN_POSITIVE)).min(1.0);
            for i in o..o + len {
                let gi = grads[i] * coef;
                let mi = b1 * self.m[i] + (1.0 - b1) * gi;
                let vi = b2 * self.v[i] + (1.0 - b2) * gi * gi;
                self.m[i] = mi;
                self.v[i] = vi;
                self.params[i] -= lr * (mi * cf / (vi.sqrt() + eps * bc2));
            }
        }
        Ok(())
    }

    /// The summed squared error of the training steps since the last call.
    pub fn take_loss(&mut self) -> f64 {
        std::mem::take(&mut self.sse)
    }

    /// Summed squared error on `n` windows, without updating.
    pub fn sse(&self, x: &[f32], y: &[f32], n: usize, steps: usize) -> anyhow::Result<f64> {
        self.check(x, Some(y), n, steps)?;
        Ok(self.run(x, Some(y), n, steps, false, None).iter().map(|o| o.sse).sum())
    }

    /// Head outputs for `n` windows (`n × d_out`), continuing from the final state
    /// of the previous call when `carry` (recursive forecasting).
    pub fn predict(&mut self, x: &[f32], n: usize, steps: usize, carry: bool) -> anyhow::Result<Vec<f32>> {
        self.check(x, None, n, steps)?;
        let state = match (carry, self.state.take()) {
            (false, _) => None,
            (true, Some((m, s))) if m == n => Some(s),
            (true, _) => bail!("no state of {n} windows to continue from"),
        };
        let outs = self.run(x, None, n, steps, false, state.as_deref());
        let h = self.dims.hidden;
        let mut last: Vec<(Vec<f32>, Vec<f32>)> = (0..self.dims.layers).map(|_| (Vec::with_capacity(n * h), Vec::with_capacity(n * h))).collect();
        let mut y = Vec::with_capacity(n * self.dims.d_out);
        for o in outs {
            y.extend(o.y);
            for (l, (hh, cc)) in o.last.into_iter().enumerate() {
                last[l].0.extend(hh);
                last[l].1.extend(cc);
            }
        }
        self.state = Some((n, last));
        Ok(y)
    }
}

/// Training on the CPU kernels.
pub struct CpuLearner {
    pub engine: CpuEngine,
    pub lookback: usize,
    pub lr: f64,
}

impl super::train::Learner for CpuLearner {
    type Snapshot = Vec<f32>;
    fn step(&mut self, x: Vec<f32>, y: Vec<f32>, n: usize) -> anyhow::Result<()> {
        self.engine.train_step(&x, &y, n, self.lookback, self.lr, 1.0)
    }
    fn take_sse(&mut self) -> anyhow::Result<f64> {
        Ok(self.engine.take_loss())
    }
    fn sse(&mut self, x: Vec<f32>, y: Vec<f32>, n: usize) -> anyhow::Result<f64> {
        self.engine.sse(&x, &y, n, self.lookback)
    }
    fn snapshot(&mut self) -> anyhow::Result<Vec<f32>> {
        Ok(self.engine.params.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};
    use burn::module::AutodiffModule;

    type A = Autodiff<NdArray<f32>>;

    fn noise(seed: u64, m: usize) -> Vec<f32> {
        let mut s = seed | 1;
        (0..m)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    #[test]
    fn exp_sigmoid_and_tanh_match_std_closely() {
        let mut worst = (0.0f64, 0.0f64, 0.0f64);
        for i in -20000..=20000 {
            let x = i as f32 / 1000.0;
            let e = (x as f64).exp();
            worst.0 = worst.0.max(((exp(x) as f64) - e).abs() / e);
            worst.1 = worst.1.max((sigmoid(x) as f64 - 1.0 / (1.0 + (-(x as f64)).exp())).abs());
            worst.2 = worst.2.max((tanh(x) as f64 - (x as f64).tanh()).abs());
        }
        assert!(worst.0 < 5e-7 && worst.1 < 2e-7 && worst.2 < 3e-7, "{worst:?}");
        assert_eq!(tanh(40.0), 1.0);
        assert_eq!(tanh(-40.0), -1.0);
        assert!(sigmoid(-100.0) < 1e-37 && sigmoid(100.0) == 1.0);
    }

    /// The loss, every parameter's gradient, the forward outputs (also continuing a
    /// state) and an Adam step against burn's autodiff and optimiser, on shapes that
    /// are not multiples of the block.
    #[test]
    fn cpu_kernels_match_burn_autodiff() {
        use burn::optim::grad_clipping::GradientClippingConfig;
        use burn::optim::{AdamConfig, GradientsParams, Optimizer};
        let dev = Default::default();
        for (n, steps, d_in, hidden, layers, d_out) in [(37, 13, 3, 16, 2, 4), (20, 30, 16, 24, 2, 160), (9, 5, 1, 8, 3, 1)] {
            let (x, y) = (noise(12345 + n as u64, n * steps * d_in), noise(999 + n as u64, n * d_out));
            let net: Net<A> = Net::init(d_in, hidden, layers, d_out, 7, &dev);
            let xt = Tensor::<A, 3>::from_data(TensorData::new(x.clone(), [n, steps, d_in]), &dev);
            let yt = Tensor::<A, 2>::from_data(TensorData::new(y.clone(), [n, d_out]), &dev);
            let (yp, _) = net.forward(xt, None);
            let loss = (yp - yt).powi_scalar(2).mean();
            let want_loss = super::super::train::to_f32(loss.clone().inner())[0] as f64;
            let grads = loss.backward();
            let mut want = Vec::new();
            for c in &net.cells {
                want.extend(super::super::train::to_f32(c.w_ih.grad(&grads).unwrap()));
                want.extend(super::super::train::to_f32(c.w_hh.grad(&grads).unwrap()));
                want.extend(super::super::train::to_f32(c.bias.grad(&grads).unwrap()));
            }
            want.extend(super::super::train::to_f32(net.head_w.grad(&grads).unwrap()));
            want.extend(super::super::train::to_f32(net.head_b.grad(&grads).unwrap()));

            let mut e = CpuEngine::from_net(&net.valid());
            let (got_loss, got) = e.loss_and_grads(&x, &y, n, steps).unwrap();
            assert_eq!(got.len(), want.len());
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!((got_loss - want_loss).abs() <= 1e-5 * want_loss.abs().max(1.0), "loss {got_loss} vs {want_loss}");
            assert!(worst <= 1e-6 + 1e-4 * scale, "gradients differ by {worst} (largest {scale})");
            // Every gradient counts: a zeroed tensor would show.
            assert!(got.iter().filter(|v| **v != 0.0).count() > got.len() * 9 / 10);

            // Forward, and forward continuing the state, against burn.
            let inner = net.valid();
            let mut f = super::super::train::burn_forward(&inner, d_in, &dev);
            let x2 = noise(77, n * 4 * d_in);
            let a1 = f(x.clone(), n, steps, false).unwrap();
            let a2 = f(x2.clone(), n, 4, true).unwrap();
            let b1 = e.predict(&x, n, steps, false).unwrap();
            let b2 = e.predict(&x2, n, 4, true).unwrap();
            for (a, b) in a1.iter().chain(&a2).zip(b1.iter().chain(&b2)) {
                assert!((a - b).abs() < 1e-5, "forward {a} vs {b}");
            }

            // Two Adam steps (clipped at norm 1) against burn's optimiser.
            let mut optim = AdamConfig::new().with_grad_clipping(Some(GradientClippingConfig::Norm(1.0))).init();
            let mut model = net;
            for _ in 0..2 {
                let xt = Tensor::<A, 3>::from_data(TensorData::new(x.clone(), [n, steps, d_in]), &dev);
                let yt = Tensor::<A, 2>::from_data(TensorData::new(y.clone(), [n, d_out]), &dev);
                let (yp, _) = model.forward(xt, None);
                let loss = (yp - yt).powi_scalar(2).mean();
                let g = GradientsParams::from_grads(loss.backward(), &model);
                model = optim.step(0.01, model, g);
                e.train_step(&x, &y, n, steps, 0.01, 1.0).unwrap();
            }
            let want = CpuEngine::from_net(&model.valid()).params().to_vec();
            let worst = e.params().iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-5, "after two Adam steps the parameters differ by {worst}");
        }
    }

    /// A batch gives the same bits whatever the number of threads.
    #[test]
    fn training_is_the_same_on_one_thread_or_several() {
        let dev = Default::default();
        let (n, steps) = (45, 12);
        let net: Net<NdArray<f32>> = Net::init(4, 8, 2, 6, 3, &dev);
        let (x, y) = (noise(5, n * steps * 4), noise(6, n * 6));
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let mut e = CpuEngine::from_net(&net);
                for _ in 0..3 {
                    e.train_step(&x, &y, n, steps, 0.01, 1.0).unwrap();
                }
                e.params().to_vec()
            })
        };
        let (a, b) = (run(1), run(3));
        assert!(a.iter().zip(&b).all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}
