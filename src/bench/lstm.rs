//! `expertcast bench --stage lstm`: LSTM training and inference throughput in
//! windows per second, at the sizes `benches/peers/lstm_torch.py` gives PyTorch's
//! `nn.LSTM` (cuDNN): input 1, hidden 64, 2 layers, sequence 100, training batch
//! 4,096 (forward, backward and an Adam step), inference batch 65,536.
//!
//! `--lstm-impl kernel` (default) is our kernels: `kernels/lstm.cu` on a GPU, the
//! Rust kernels (`forecast::lstm::cpu`) on the CPU; `burn` our network in burn (one
//! product a step for all four gates); `stock` burn's `nn::Lstm` with the same
//! head, for comparison. `--lstm-input` sets the inputs a step (1: global mode).

use std::time::Instant;

use burn::backend::Autodiff;
use burn::module::{AutodiffModule, Module};
use burn::nn::{Linear, LinearConfig, Lstm, LstmConfig};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::forecast::lstm::cpu::CpuEngine;
use crate::forecast::lstm::kernel::{self, Engine};
use crate::forecast::lstm::net::Net;
use crate::forecast::lstm::{CpuBackend, CudaBackend};
use crate::gpu::{self, Device, DeviceRequest, Gpu};

#[derive(clap::Args, Debug, Clone)]
pub struct LstmBenchArgs {
    /// Windows per training batch.
    #[arg(long = "lstm-batch", default_value_t = 4096)]
    pub lstm_batch: usize,
    /// Windows per inference batch.
    #[arg(long = "lstm-infer-batch", default_value_t = 65_536)]
    pub infer_batch: usize,
    /// Sequence length (lookback).
    #[arg(long = "lstm-seq", default_value_t = 100)]
    pub seq: usize,
    /// Inputs a step (1: global mode; the experts of a layer: joint mode).
    #[arg(long = "lstm-input", default_value_t = 1)]
    pub input: usize,
    #[arg(long = "lstm-hidden", default_value_t = 64)]
    pub lstm_hidden: usize,
    #[arg(long = "lstm-layers", default_value_t = 2)]
    pub lstm_layers: usize,
    /// Timed training steps (after 3 warm-up steps); inference batches likewise.
    #[arg(long = "lstm-steps", default_value_t = 20)]
    pub timed: usize,
    /// kernel (ours: kernels/lstm.cu on a GPU, the Rust kernels on the CPU), burn
    /// (our fused-gate network in burn) or stock (burn's nn::Lstm).
    #[arg(long = "lstm-impl", default_value = "kernel")]
    pub imp: String,
    /// Sequences a block of our kernels (a multiple of 4).
    #[arg(long = "lstm-rows", default_value_t = kernel::ROWS)]
    pub rows: usize,
}

/// The model under test: ours or burn's stock LSTM with a linear head.
#[derive(Module, Debug)]
pub struct Stock<B: Backend> {
    lstm: Vec<Lstm<B>>,
    head: Linear<B>,
}

impl<B: Backend> Stock<B> {
    fn new(d_in: usize, hidden: usize, layers: usize, device: &B::Device) -> Self {
        let lstm = (0..layers).map(|l| LstmConfig::new(if l == 0 { d_in } else { hidden }, hidden, true).init(device)).collect();
        Stock { lstm, head: LinearConfig::new(hidden, 1).init(device) }
    }
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 2> {
        let mut seq = x;
        let mut last = None;
        for l in &self.lstm {
            let (out, state) = l.forward(seq, None);
            seq = out;
            last = Some(state.hidden);
        }
        self.head.forward(last.expect("a layer"))
    }
}

trait Model<B: Backend>: Module<B> {
    fn predict(&self, x: Tensor<B, 3>) -> Tensor<B, 2>;
}
impl<B: Backend> Model<B> for Net<B> {
    fn predict(&self, x: Tensor<B, 3>) -> Tensor<B, 2> {
        self.forward(x, None).0
    }
}
impl<B: Backend> Model<B> for Stock<B> {
    fn predict(&self, x: Tensor<B, 3>) -> Tensor<B, 2> {
        self.forward(x)
    }
}

fn random<B: Backend, const D: usize>(shape: [usize; D], rng: &mut StdRng, device: &B::Device) -> Tensor<B, D> {
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    Tensor::from_data(TensorData::new(v, shape), device)
}

fn sync<B: Backend>(device: &B::Device) -> anyhow::Result<()> {
    B::sync(device).map_err(|e| anyhow::anyhow!("synchronising the device: {e:?}"))
}

fn run<B, M>(model: M, a: &LstmBenchArgs, device: &B::Device) -> anyhow::Result<(f64, f64)>
where
    B: AutodiffBackend,
    M: Model<B> + AutodiffModule<B>,
    M::InnerModule: Model<B::InnerBackend>,
{
    let mut rng = StdRng::seed_from_u64(1);
    let x = random::<B, 3>([a.lstm_batch, a.seq, a.input], &mut rng, device);
    let y = random::<B, 2>([a.lstm_batch, 1], &mut rng, device);
    let mut optim = AdamConfig::new().init();
    let mut model = model;
    let mut step = |model: M| {
        let loss = (model.predict(x.clone()) - y.clone()).powi_scalar(2).mean();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        optim.step(1e-3, model, grads)
    };
    for _ in 0..3 {
        model = step(model);
    }
    sync::<B>(device)?;
    let t = Instant::now();
    for _ in 0..a.timed {
        model = step(model);
    }
    sync::<B>(device)?;
    let train = (a.timed * a.lstm_batch) as f64 / t.elapsed().as_secs_f64();

    let valid = model.valid();
    let xi = random::<B::InnerBackend, 3>([a.infer_batch, a.seq, a.input], &mut rng, device);
    for _ in 0..2 {
        let _ = valid.predict(xi.clone());
    }
    sync::<B::InnerBackend>(device)?;
    let t = Instant::now();
    for _ in 0..a.timed {
        let _ = valid.predict(xi.clone());
    }
    sync::<B::InnerBackend>(device)?;
    let infer = (a.timed * a.infer_batch) as f64 / t.elapsed().as_secs_f64();
    Ok((train, infer))
}

/// Our kernels: the windows are uploaded once, as PyTorch's are created on the GPU.
fn on_kernel(a: &LstmBenchArgs, gpu: &Gpu) -> anyhow::Result<(f64, f64)> {
    let net = Net::<CpuBackend>::init(a.input, a.lstm_hidden, a.lstm_layers, 1, 0, &Default::default());
    let mut e = Engine::from_net(&net, gpu, a.rows)?;
    let mut rng = StdRng::seed_from_u64(1);
    let mut r = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect() };
    let (x, y) = (r(a.lstm_batch * a.seq * a.input), r(a.lstm_batch));
    e.upload(&x, Some(&y), a.lstm_batch, a.seq, true)?;
    for _ in 0..3 {
        e.step_uploaded(a.lstm_batch, a.seq, 1e-3, 1.0)?;
    }
    e.sync()?;
    let t = Instant::now();
    for _ in 0..a.timed {
        e.step_uploaded(a.lstm_batch, a.seq, 1e-3, 1.0)?;
    }
    e.sync()?;
    let train = (a.timed * a.lstm_batch) as f64 / t.elapsed().as_secs_f64();
    let xi = r(a.infer_batch * a.seq * a.input);
    e.upload(&xi, None, a.infer_batch, a.seq, false)?;
    e.forward_uploaded(a.infer_batch, a.seq)?;
    let t = Instant::now();
    for _ in 0..a.timed {
        e.forward_uploaded(a.infer_batch, a.seq)?;
    }
    let infer = (a.timed * a.infer_batch) as f64 / t.elapsed().as_secs_f64();
    Ok((train, infer))
}

/// Our CPU kernels (Rust, rayon over blocks of sequences).
fn on_cpu_kernel(a: &LstmBenchArgs) -> anyhow::Result<(f64, f64)> {
    let net = Net::<CpuBackend>::init(a.input, a.lstm_hidden, a.lstm_layers, 1, 0, &Default::default());
    let mut e = CpuEngine::from_net(&net);
    let mut rng = StdRng::seed_from_u64(1);
    let mut r = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect() };
    let (x, y) = (r(a.lstm_batch * a.seq * a.input), r(a.lstm_batch));
    for _ in 0..3 {
        e.train_step(&x, &y, a.lstm_batch, a.seq, 1e-3, 1.0)?;
    }
    let t = Instant::now();
    for _ in 0..a.timed {
        e.train_step(&x, &y, a.lstm_batch, a.seq, 1e-3, 1.0)?;
    }
    let train = (a.timed * a.lstm_batch) as f64 / t.elapsed().as_secs_f64();
    let xi = r(a.infer_batch * a.seq * a.input);
    e.predict(&xi, a.infer_batch, a.seq, false)?;
    let t = Instant::now();
    for _ in 0..a.timed {
        e.predict(&xi, a.infer_batch, a.seq, false)?;
    }
    let infer = (a.timed * a.infer_batch) as f64 / t.elapsed().as_secs_f64();
    Ok((train, infer))
}

fn on<B: AutodiffBackend>(a: &LstmBenchArgs, device: &B::Device) -> anyhow::Result<(f64, f64)> {
    match a.imp.as_str() {
        "burn" => run::<B, _>(Net::<B>::init(a.input, a.lstm_hidden, a.lstm_layers, 1, 0, device), a, device),
        "stock" => run::<B, _>(Stock::<B>::new(a.input, a.lstm_hidden, a.lstm_layers, device), a, device),
        other => anyhow::bail!("--lstm-impl {other}: must be kernel, burn or stock"),
    }
}

pub fn bench_lstm(a: &LstmBenchArgs, device: DeviceRequest) -> anyhow::Result<()> {
    let (dev, note) = gpu::choose(device)?;
    if let Some(n) = note {
        eprintln!("expertcast: {n}");
    }
    let (train, infer) = match &dev {
        Device::Cpu if a.imp == "kernel" => on_cpu_kernel(a)?,
        Device::Cuda(g) if a.imp == "kernel" => on_kernel(a, g)?,
        Device::Cpu => on::<Autodiff<CpuBackend>>(a, &Default::default())?,
        Device::Cuda(g) => on::<Autodiff<CudaBackend>>(a, &burn::backend::cuda::CudaDevice::new(g.ordinal()))?,
    };
    println!(
        "lstm bench ({} on {}): input {}, hidden {}, {} layers, sequence {}: training {:.4} M windows/s (batch {}, {:.2} ms a step), inference {:.4} M windows/s (batch {})",
        a.imp,
        dev.describe(),
        a.input,
        a.lstm_hidden,
        a.lstm_layers,
        a.seq,
        train / 1e6,
        a.lstm_batch,
        1e3 * a.lstm_batch as f64 / train,
        infer / 1e6,
        a.infer_batch
    );
    println!(
        "{{\"impl\": \"{}\", \"device\": \"{}\", \"train_windows_per_s\": {train:.1}, \"infer_windows_per_s\": {infer:.1}}}",
        a.imp,
        dev.describe()
    );
    Ok(())
}
