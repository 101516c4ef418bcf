//! Training (burn autodiff, Adam, mean squared error on normalised targets, the
//! best epoch on held-out windows kept) and batched inference, generic over the
//! backend.

use anyhow::bail;
use burn::module::AutodiffModule;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::optim::grad_clipping::GradientClippingConfig;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use super::data::{Sample, Windows};
use super::net::Net;
use super::{LstmConfig, Multi};

/// Windows per inference batch.
const INFER_BATCH: usize = 16_384;

/// What training did.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct TrainReport {
    pub train_windows: usize,
    pub val_windows: usize,
    pub epochs_run: usize,
    pub best_epoch: usize,
    pub train_loss: f64,
    pub val_loss: Option<f64>,
    pub seconds: f64,
}

/// Progress of training: `(batches done, batches in all, epoch, last epoch's
/// training loss)`.
pub type OnBatch<'a> = dyn FnMut(usize, usize, usize, Option<f64>) + 'a;

/// A tensor's values as f32, on the host.
pub(crate) fn to_f32<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec::<f32>().expect("f32 tensor data")
}

/// What a training loop needs from a network on some device.
pub trait Learner {
    type Snapshot;
    /// One optimiser step on `n` windows (inputs `x`, targets `y`), adding the
    /// batch's summed squared error to a running total.
    fn step(&mut self, x: Vec<f32>, y: Vec<f32>, n: usize) -> anyhow::Result<()>;
    /// The running total since the last call.
    fn take_sse(&mut self) -> anyhow::Result<f64>;
    /// Summed squared error on `n` windows, without updating.
    fn sse(&mut self, x: Vec<f32>, y: Vec<f32>, n: usize) -> anyhow::Result<f64>;
    /// The current parameters.
    fn snapshot(&mut self) -> anyhow::Result<Self::Snapshot>;
}

fn host_batch(win: &Windows, samples: &[Sample]) -> (Vec<f32>, Vec<f32>) {
    let (mut x, mut y, mut norms) = (Vec::new(), Vec::new(), Vec::new());
    for s in samples {
        win.fill(s, &mut x, Some(&mut y), &mut norms);
    }
    (x, y)
}

/// burn's autodiff: the CPU path, and burn-cuda for sizes the kernels do not take.
pub struct BurnLearner<B: AutodiffBackend, O> {
    model: Option<Net<B>>,
    optim: O,
    lr: f64,
    dims: (usize, usize, usize),
    device: B::Device,
    sum: Option<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> BurnLearner<B, ()> {
    pub fn new(win: &Windows, cfg: &LstmConfig, device: &B::Device) -> BurnLearner<B, impl Optimizer<Net<B>, B>> {
        BurnLearner {
            model: Some(Net::init(win.d_in(), cfg.hidden, cfg.layers, win.d_out(), cfg.seed, device)),
            optim: AdamConfig::new().with_grad_clipping(Some(GradientClippingConfig::Norm(1.0))).init(),
            lr: cfg.lr,
            dims: (win.lookback, win.d_in(), win.d_out()),
            device: device.clone(),
            sum: None,
        }
    }
}

impl<B: AutodiffBackend, O: Optimizer<Net<B>, B>> Learner for BurnLearner<B, O> {
    type Snapshot = Net<B::InnerBackend>;
    fn step(&mut self, x: Vec<f32>, y: Vec<f32>, n: usize) -> anyhow::Result<()> {
        let (l, d_in, d_out) = self.dims;
        let x = Tensor::<B, 3>::from_data(TensorData::new(x, [n, l, d_in]), &self.device);
        let y = Tensor::<B, 2>::from_data(TensorData::new(y, [n, d_out]), &self.device);
        let model = self.model.take().expect("a model");
        let (yp, _) = model.forward(x, None);
        let loss = (yp - y).powi_scalar(2).mean();
        let sse = loss.clone().inner() * ((n * d_out) as f32);
        self.sum = Some(match self.sum.take() {
            Some(s) => s + sse,
            None => sse,
        });
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        self.model = Some(self.optim.step(self.lr, model, grads));
        Ok(())
    }
    fn take_sse(&mut self) -> anyhow::Result<f64> {
        Ok(self.sum.take().map_or(0.0, |s| to_f32(s)[0] as f64))
    }
    fn sse(&mut self, x: Vec<f32>, y: Vec<f32>, n: usize) -> anyhow::Result<f64> {
        let (l, d_in, d_out) = self.dims;
        let net = self.model.as_ref().expect("a model").valid();
        let x = Tensor::<B::InnerBackend, 3>::from_data(TensorData::new(x, [n, l, d_in]), &self.device);
        let y = Tensor::<B::InnerBackend, 2>::from_data(TensorData::new(y, [n, d_out]), &self.device);
        let (yp, _) = net.forward(x, None);
        Ok(to_f32((yp - y).powi_scalar(2).sum())[0] as f64)
    }
    fn snapshot(&mut self) -> anyhow::Result<Self::Snapshot> {
        Ok(self.model.as_ref().expect("a model").valid())
    }
}

/// Trains on `train`, scoring each epoch on `val` (when not empty) and keeping the
/// best epoch; stops after `cfg.patience` epochs without a better validation loss.
pub fn train<L: Learner>(
    learner: &mut L,
    win: &Windows,
    train: &[Sample],
    val: &[Sample],
    cfg: &LstmConfig,
    on_batch: &mut OnBatch<'_>,
) -> anyhow::Result<(L::Snapshot, TrainReport)> {
    let t0 = std::time::Instant::now();
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0x9e37_79b9_7f4a_7c15);
    let mut order = train.to_vec();
    let per_epoch = order.len().div_ceil(cfg.batch);
    let total = per_epoch * cfg.epochs;
    let mut best: Option<(f64, L::Snapshot, usize)> = None;
    let mut report = TrainReport { train_windows: train.len(), val_windows: val.len(), ..Default::default() };
    let mut last_loss = None;
    let (mut done, mut since_best) = (0, 0);
    let cells = |n: usize| (n * win.d_out()).max(1) as f64;
    for epoch in 0..cfg.epochs {
        order.shuffle(&mut rng);
        for chunk in order.chunks(cfg.batch) {
            let (x, y) = host_batch(win, chunk);
            learner.step(x, y, chunk.len())?;
            done += 1;
            on_batch(done, total, epoch, last_loss);
        }
        let train_loss = learner.take_sse()? / cells(order.len());
        if !train_loss.is_finite() {
            bail!("the training loss is not finite at epoch {} (try a smaller lr)", epoch + 1);
        }
        last_loss = Some(train_loss);
        report.epochs_run = epoch + 1;
        report.train_loss = train_loss;
        let score = if val.is_empty() {
            train_loss
        } else {
            let mut sse = 0.0;
            for chunk in val.chunks(INFER_BATCH) {
                let (x, y) = host_batch(win, chunk);
                sse += learner.sse(x, y, chunk.len())?;
            }
            sse / cells(val.len())
        };
        if best.as_ref().is_none_or(|b| score < b.0) {
            best = Some((score, learner.snapshot()?, epoch + 1));
            since_best = 0;
        } else {
            since_best += 1;
            if since_best >= cfg.patience {
                break;
            }
        }
    }
    let (score, net, epoch) = best.expect("at least one epoch");
    report.best_epoch = epoch;
    report.val_loss = (!val.is_empty()).then_some(score);
    report.seconds = t0.elapsed().as_secs_f64();
    Ok((net, report))
}

/// A network's forward pass on `n` windows of `steps` steps (`x`: n × steps × d_in),
/// continuing the previous call's state when `carry`; returns the head's output
/// (`n × d_out`).
pub type Forward<'a> = dyn FnMut(Vec<f32>, usize, usize, bool) -> anyhow::Result<Vec<f32>> + 'a;

/// [`Forward`] for a burn network.
pub fn burn_forward<'a, B: Backend>(net: &'a Net<B>, d_in: usize, device: &'a B::Device) -> impl FnMut(Vec<f32>, usize, usize, bool) -> anyhow::Result<Vec<f32>> + 'a {
    let mut state = None;
    move |x, n, steps, carry| {
        let x = Tensor::<B, 3>::from_data(TensorData::new(x, [n, steps, d_in]), device);
        let (y, s) = net.forward(x, if carry { state.take() } else { None });
        state = Some(s);
        Ok(to_f32(y))
    }
}

/// Predicts `len` steps after each sample's window, in share units: per sample
/// `len × width` numbers (step-major). Beyond `k` steps `direct` gives the
/// window's level and `hold` the k-th step; `recursive` feeds each block of `k`
/// predictions back as input, continuing the network's state, until `len` steps
/// are predicted.
pub fn predict(forward: &mut Forward<'_>, win: &Windows, samples: &[Sample], len: usize, multi: Multi) -> anyhow::Result<Vec<f64>> {
    let (k, w) = (win.k, win.width());
    let clip = super::data::CLIP as f32;
    let mut out = Vec::with_capacity(samples.len() * len * w);
    for chunk in samples.chunks(INFER_BATCH) {
        let n = chunk.len();
        let (mut x, mut norms) = (Vec::new(), Vec::new());
        for s in chunk {
            win.fill(s, &mut x, None, &mut norms);
        }
        let mut blocks = vec![forward(x, n, win.lookback, false)?];
        if multi == Multi::Recursive {
            while blocks.len() * k < len {
                // The block's k steps (k × width per window) as the next input.
                let input: Vec<f32> = blocks.last().expect("a block").iter().map(|v| v.clamp(-clip, clip)).collect();
                blocks.push(forward(input, n, k, true)?);
            }
        }
        for (i, norm) in norms.chunks(w).enumerate() {
            for step in 0..len {
                let (b, j) = match multi {
                    Multi::Direct if step >= k => {
                        out.extend(norm.iter().map(|&(level, _)| level));
                        continue;
                    }
                    Multi::Direct | Multi::Hold => (0, step.min(k - 1)),
                    Multi::Recursive => (step / k, step % k),
                };
                let row = &blocks[b][i * k * w + j * w..i * k * w + (j + 1) * w];
                out.extend(row.iter().zip(norm).map(|(&z, &(level, scale))| level + scale * z as f64));
            }
        }
    }
    Ok(out)
}
