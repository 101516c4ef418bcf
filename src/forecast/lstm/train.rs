//! Training (burn autodiff, Adam, mean squared error on normalised targets, the
//! best epoch on held-out windows kept) and batched inference, generic over the
//! backend.

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

fn batch<B: Backend>(win: &Windows, samples: &[Sample], with_y: bool, device: &B::Device) -> (Tensor<B, 3>, Option<Tensor<B, 2>>, Vec<(f64, f64)>) {
    let (mut x, mut y, mut norms) = (Vec::new(), Vec::new(), Vec::new());
    for s in samples {
        win.fill(s, &mut x, with_y.then_some(&mut y), &mut norms);
    }
    let n = samples.len();
    let x = Tensor::from_data(TensorData::new(x, [n, win.lookback, win.d_in()]), device);
    let y = with_y.then(|| Tensor::from_data(TensorData::new(y, [n, win.d_out()]), device));
    (x, y, norms)
}

fn to_f32<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec::<f32>().expect("f32 tensor data")
}

/// Mean squared error of `net` on `samples` (no gradients).
fn loss_of<B: Backend>(net: &Net<B>, win: &Windows, samples: &[Sample], batch_size: usize, device: &B::Device) -> f64 {
    let mut total = 0.0;
    for chunk in samples.chunks(batch_size.max(1)) {
        let (x, y, _) = batch::<B>(win, chunk, true, device);
        let (yp, _) = net.forward(x, None);
        let se = (yp - y.expect("targets")).powi_scalar(2).sum();
        total += to_f32(se)[0] as f64;
    }
    total / (samples.len() * win.d_out()).max(1) as f64
}

/// Trains a fresh network on `train`, scoring each epoch on `val` (when not empty)
/// and keeping the best epoch; stops after `cfg.patience` epochs without a better
/// validation loss.
pub fn train<B: AutodiffBackend>(
    win: &Windows,
    train: &[Sample],
    val: &[Sample],
    cfg: &LstmConfig,
    device: &B::Device,
    on_batch: &mut OnBatch<'_>,
) -> (Net<B::InnerBackend>, TrainReport) {
    let t0 = std::time::Instant::now();
    let mut model: Net<B> = Net::init(win.d_in(), cfg.hidden, cfg.layers, win.d_out(), cfg.seed, device);
    let mut optim = AdamConfig::new().with_grad_clipping(Some(GradientClippingConfig::Norm(1.0))).init();
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0x9e37_79b9_7f4a_7c15);
    let mut order = train.to_vec();
    let per_epoch = order.len().div_ceil(cfg.batch);
    let total = per_epoch * cfg.epochs;
    let mut best: Option<(f64, Net<B::InnerBackend>, usize)> = None;
    let mut report = TrainReport { train_windows: train.len(), val_windows: val.len(), ..Default::default() };
    let mut last_loss = None;
    let mut done = 0;
    let mut since_best = 0;
    for epoch in 0..cfg.epochs {
        order.shuffle(&mut rng);
        let mut sum: Option<Tensor<B::InnerBackend, 1>> = None;
        for chunk in order.chunks(cfg.batch) {
            let (x, y, _) = batch::<B>(win, chunk, true, device);
            let (yp, _) = model.forward(x, None);
            let loss = (yp - y.expect("targets")).powi_scalar(2).mean();
            let l = loss.clone().inner() * (chunk.len() as f32);
            sum = Some(match sum {
                Some(s) => s + l,
                None => l,
            });
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(cfg.lr, model, grads);
            done += 1;
            on_batch(done, total, epoch, last_loss);
        }
        let train_loss = sum.map_or(f64::NAN, |s| to_f32(s)[0] as f64 / order.len().max(1) as f64);
        last_loss = Some(train_loss);
        report.epochs_run = epoch + 1;
        report.train_loss = train_loss;
        let valid = model.valid();
        let score = if val.is_empty() { train_loss } else { loss_of(&valid, win, val, INFER_BATCH, device) };
        if !val.is_empty() {
            report.val_loss = Some(score);
        }
        if best.as_ref().is_none_or(|b| score < b.0) {
            best = Some((score, valid, epoch + 1));
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
    if !val.is_empty() {
        report.val_loss = Some(score);
    }
    report.seconds = t0.elapsed().as_secs_f64();
    (net, report)
}

/// Predicts `len` steps after each sample's window, in share units: per sample
/// `len × width` numbers (step-major). `direct` holds the k-th predicted step
/// beyond `k`; `recursive` feeds each block of `k` predictions back as input,
/// continuing the network's state, until `len` steps are predicted.
pub fn predict<B: Backend>(net: &Net<B>, win: &Windows, samples: &[Sample], len: usize, multi: Multi, device: &B::Device) -> Vec<f64> {
    let (k, w) = (win.k, win.width());
    let mut out = Vec::with_capacity(samples.len() * len * w);
    for chunk in samples.chunks(INFER_BATCH) {
        let n = chunk.len();
        let (x, _, norms) = batch::<B>(win, chunk, false, device);
        let (y, mut state) = net.forward(x, None);
        let mut blocks = vec![to_f32(y.clone())];
        if multi == Multi::Recursive {
            let mut prev = y;
            while blocks.len() * k < len {
                let input = prev.reshape([n, k, w]).clamp(-super::data::CLIP as f32, super::data::CLIP as f32);
                let (y, s) = net.forward(input, Some(state));
                state = s;
                blocks.push(to_f32(y.clone()));
                prev = y;
            }
        }
        for (i, norm) in norms.chunks(w).enumerate() {
            for step in 0..len {
                let (b, j) = match multi {
                    Multi::Direct => (0, step.min(k - 1)),
                    Multi::Recursive => (step / k, step % k),
                };
                let row = &blocks[b][i * k * w + j * w..i * k * w + (j + 1) * w];
                out.extend(row.iter().zip(norm).map(|(&z, &(level, scale))| level + scale * z as f64));
            }
        }
    }
    out
}
