//! The paper's learned forecaster: an LSTM defined in burn ([`net`], the reference
//! and the checkpoint format), trained and run by our kernels: CUDA on a GPU
//! ([`kernel`]), Rust on the CPU ([`cpu`]); burn's autodiff (burn-cuda or ndarray)
//! for sizes the GPU kernels do not take and on request.
//!
//! Two modes:
//! - `joint` (the paper's): a step's input is every expert's share of a layer, the
//!   output every expert's share for the next `k` steps;
//! - `global`: one model shared by every expert series, each series on its own
//!   scale, predicting its next `k` steps; it serves any number of experts.
//!
//! Every window is normalised by its own mean and standard deviation per series
//! ([`data`]), so the network predicts deviations from the recent level.
//! Multi-step output is `direct` (k steps at once; beyond `k` the window's level,
//! a predicted deviation of 0), `hold` (beyond `k` the k-th step held) or
//! `recursive` (each block of k predictions is fed back as input).
//!
//! Training reads every `stride`-th window of each series (neighbouring windows share
//! all but one step). Without `model=`, a run trains one model per layer on the
//! `train` steps before the layer's first scored origin only (never on a scored
//! step), then forecasts every origin in large batches. With `model=DIR` it applies a checkpoint written
//! by `expertcast lstm train` (weights in burn's named MessagePack record, the
//! config and training report in `lstm.json` beside them).

pub mod cpu;
pub mod data;
pub mod kernel;
pub mod net;
pub mod train;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, bail};
use burn::backend::{Autodiff, NdArray};
use burn::module::Module;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use burn::tensor::backend::Backend;

use super::{CheckError, Emit, FitContext, Fitted, Forecaster, Known, LayerView, Param, ParamError, Params, canonical, fallback};
use crate::gpu::Device;
use data::{Sample, Windows};
use net::Net;
pub use train::TrainReport;

/// burn's CPU backend.
pub type CpuBackend = NdArray<f32>;
/// burn's CUDA backend.
pub type CudaBackend = burn::backend::Cuda<f32, i32>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Joint,
    Global,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Multi {
    /// k steps at once; beyond k, the window's level (a predicted deviation of 0).
    Direct,
    /// k steps at once; beyond k, the k-th step held.
    Hold,
    /// Each block of k predictions fed back as input until the horizon.
    Recursive,
}

impl Mode {
    fn parse(s: &str) -> Result<Mode, ParamError> {
        match s {
            "joint" => Ok(Mode::Joint),
            "global" => Ok(Mode::Global),
            _ => Err(ParamError(format!("mode={s} must be joint or global"))),
        }
    }
    pub fn as_str(&self) -> &'static str {
        match self {
            Mode::Joint => "joint",
            Mode::Global => "global",
        }
    }
}

impl Multi {
    fn parse(s: &str) -> Result<Multi, ParamError> {
        match s {
            "direct" => Ok(Multi::Direct),
            "hold" => Ok(Multi::Hold),
            "recursive" => Ok(Multi::Recursive),
            _ => Err(ParamError(format!("multi={s} must be direct, hold or recursive"))),
        }
    }
    pub fn as_str(&self) -> &'static str {
        match self {
            Multi::Direct => "direct",
            Multi::Hold => "hold",
            Multi::Recursive => "recursive",
        }
    }
}

/// Everything that defines a model and its training. Its flags (`lstm train`) and
/// the `lstm` spec's parameters share one set of defaults, the spec's.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, clap::Args)]
pub struct LstmConfig {
    /// joint: every expert's share of a layer in and out; global: one model for every series.
    #[arg(long, value_enum, default_value = default_of("mode"))]
    pub mode: Mode,
    /// Steps of input a forecast reads.
    #[arg(long, default_value = default_of("lookback"))]
    pub lookback: usize,
    /// Hidden units per LSTM layer.
    #[arg(long, default_value = default_of("hidden"))]
    pub hidden: usize,
    /// LSTM layers.
    #[arg(long, default_value = default_of("layers"))]
    pub layers: usize,
    /// Steps the network writes at once.
    #[arg(long, default_value = default_of("k"))]
    pub k: usize,
    /// Beyond k steps (stored with a model; a run may override it).
    #[arg(long, value_enum, default_value = default_of("multi"))]
    pub multi: Multi,
    /// Adam learning rate.
    #[arg(long, default_value = default_of("lr"))]
    pub lr: f64,
    /// Most training epochs.
    #[arg(long, default_value = default_of("epochs"))]
    pub epochs: usize,
    /// Epochs without a better validation loss before training stops.
    #[arg(long, default_value = default_of("patience"))]
    pub patience: usize,
    /// Windows per training batch.
    #[arg(long, default_value = default_of("batch"))]
    pub batch: usize,
    /// Seed of the initial weights and the shuffling.
    #[arg(long, default_value = default_of("seed"))]
    pub seed: u64,
    /// Share of each layer's windows (the latest) held out to pick the best epoch.
    #[arg(long, default_value = default_of("val"))]
    pub val: f64,
    /// Train (and validate) on every stride-th window of each series: neighbouring
    /// windows share all but one step, so a stride cuts the cost far more than the
    /// information.
    #[arg(long, default_value = default_of("stride"))]
    #[serde(default = "one")]
    pub stride: usize,
}

fn one() -> usize {
    1
}

impl LstmConfig {
    pub fn validate(&self) -> Result<(), ParamError> {
        let checks = [
            (self.lookback >= 2, "lookback must be at least 2"),
            (self.hidden >= 1, "hidden must be at least 1"),
            (self.layers >= 1, "layers must be at least 1"),
            (self.k >= 1, "k must be at least 1"),
            (self.epochs >= 1, "epochs must be at least 1"),
            (self.patience >= 1, "patience must be at least 1"),
            (self.batch >= 1, "batch must be at least 1"),
            (self.stride >= 1, "stride must be at least 1"),
            (self.lr > 0.0 && self.lr.is_finite(), "lr must be a positive number"),
            ((0.0..0.9).contains(&self.val), "val must be in [0, 0.9)"),
        ];
        match checks.iter().find(|c| !c.0) {
            Some((_, msg)) => Err(ParamError(msg.to_string())),
            None => Ok(()),
        }
    }
}

/// Which implementation trains and runs the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum GpuEngine {
    /// Our kernels: on a GPU kernels/lstm.cu for the sizes they take (burn-cuda
    /// otherwise), on the CPU [`cpu`] (Rust, rayon).
    #[default]
    Kernels,
    /// burn always (burn-cuda, or burn's ndarray backend on the CPU), for comparison.
    Burn,
}

/// A saved model: `DIR/lstm.json` and `DIR/weights.mpk`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    pub format: String,
    pub version: u32,
    pub config: LstmConfig,
    /// Experts a step of input holds (`joint` mode); any in `global` mode.
    pub experts: Option<usize>,
    pub normalisation: String,
    pub trained_on: Vec<String>,
    pub report: TrainReport,
}

const FORMAT: &str = "expertcast-lstm";
pub const NORMALISATION: &str = "per window and series: (p - mean) / max(std, 1e-5) over the lookback window, clipped to ±10";

fn recorder() -> NamedMpkFileRecorder<FullPrecisionSettings> {
    NamedMpkFileRecorder::<FullPrecisionSettings>::new()
}

impl Checkpoint {
    /// Reads `DIR/lstm.json`, with errors naming the file.
    pub fn read(dir: &Path) -> anyhow::Result<Checkpoint> {
        let f = dir.join("lstm.json");
        let text = std::fs::read_to_string(&f).with_context(|| format!("cannot read LSTM checkpoint {}", f.display()))?;
        let c: Checkpoint = serde_json::from_str(&text).with_context(|| format!("{}: not an expertcast LSTM checkpoint", f.display()))?;
        if c.format != FORMAT || c.version != 1 {
            bail!("{}: format {:?} version {} is not {FORMAT} version 1", f.display(), c.format, c.version);
        }
        c.config.validate().map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
        if !dir.join("weights.mpk").is_file() {
            bail!("{}: the weights file weights.mpk is missing beside it", f.display());
        }
        Ok(c)
    }

    fn load<B: Backend>(&self, dir: &Path, device: &B::Device) -> anyhow::Result<Net<B>> {
        let d_in = self.experts.unwrap_or(1);
        let net = Net::<B>::init(d_in, self.config.hidden, self.config.layers, d_in * self.config.k, 0, device);
        net.load_file(dir.join("weights"), &recorder(), device)
            .with_context(|| format!("cannot load LSTM weights {}", dir.join("weights.mpk").display()))
    }
}

/// Writes a trained network and its checkpoint description into `dir`.
pub fn save<B: Backend>(net: &Net<B>, ck: &Checkpoint, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    net.clone()
        .save_file(dir.join("weights"), &recorder())
        .with_context(|| format!("cannot write {}", dir.join("weights.mpk").display()))?;
    crate::output::write_atomic(dir, "lstm.json", (serde_json::to_string_pretty(ck)? + "\n").as_bytes())
}

/// Per layer, the windows `(layer, first t, last t)` whose targets end by `end`
/// (exclusive), split into training and the latest `val` share for validation;
/// every `stride`-th window of each.
fn split(win: &Windows, ends: &[usize], val: f64, stride: usize) -> (Vec<Sample>, Vec<Sample>) {
    let (mut tr, mut va) = (Vec::new(), Vec::new());
    for (l, &end) in ends.iter().enumerate() {
        let from = win.lookback;
        if end < from + win.k {
            continue;
        }
        let to = end - win.k;
        let n = to + 1 - from;
        let n_val = if n >= 20 { (n as f64 * val).round() as usize } else { 0 };
        let cut = to + 1 - n_val;
        let every = |s: &Sample, first: usize| (s.t as usize - first) % stride == 0;
        tr.extend(win.samples(&[(l, from, cut - 1)]).into_iter().filter(|s| every(s, from)));
        if n_val > 0 {
            va.extend(win.samples(&[(l, cut, to)]).into_iter().filter(|s| every(s, cut)));
        }
    }
    (tr, va)
}

/// Trains on the first `ends[l]` steps of every layer of `win` with our kernels: on
/// the CPU in Rust, on a GPU in CUDA (burn-cuda for sizes they do not take).
pub fn fit(win: &Windows, ends: &[usize], cfg: &LstmConfig, device: &Device, on_batch: &mut train::OnBatch<'_>) -> anyhow::Result<(Trained, TrainReport)> {
    fit_with(win, ends, cfg, device, GpuEngine::Kernels, on_batch)
}

/// [`fit`] with the GPU implementation chosen.
pub fn fit_with(
    win: &Windows,
    ends: &[usize],
    cfg: &LstmConfig,
    device: &Device,
    engine: GpuEngine,
    on_batch: &mut train::OnBatch<'_>,
) -> anyhow::Result<(Trained, TrainReport)> {
    let (tr, va) = split(win, ends, cfg.val, cfg.stride);
    if tr.is_empty() {
        bail!(
            "no training window: the LSTM needs at least lookback + k = {} steps of history before the first origin",
            win.lookback + win.k
        );
    }
    Ok(match device {
        Device::Cpu if engine == GpuEngine::Kernels => {
            let net = Net::<CpuBackend>::init(win.d_in(), cfg.hidden, cfg.layers, win.d_out(), cfg.seed, &Default::default());
            let mut l = cpu::CpuLearner { engine: cpu::CpuEngine::from_net(&net), lookback: win.lookback, lr: cfg.lr };
            let (best, r) = train::train(&mut l, win, &tr, &va, cfg, on_batch)?;
            l.engine.set_params(&best)?;
            (Trained::CpuKernel(Mutex::new(l.engine)), r)
        }
        Device::Cpu => {
            let dev = Default::default();
            let mut l = train::BurnLearner::<Autodiff<CpuBackend>, ()>::new(win, cfg, &dev);
            let (net, r) = train::train(&mut l, win, &tr, &va, cfg, on_batch)?;
            (Trained::Cpu(net), r)
        }
        Device::Cuda(g) if kernel::supports(win.d_in(), cfg.hidden) && engine == GpuEngine::Kernels => {
            let net = Net::<CpuBackend>::init(win.d_in(), cfg.hidden, cfg.layers, win.d_out(), cfg.seed, &Default::default());
            let mut l = kernel::KernelLearner { engine: kernel::Engine::from_net(&net, g, kernel::ROWS)?, lookback: win.lookback, lr: cfg.lr };
            let (best, r) = train::train(&mut l, win, &tr, &va, cfg, on_batch)?;
            l.engine.set_params(&best)?;
            (Trained::Kernel(Mutex::new(l.engine)), r)
        }
        Device::Cuda(g) => {
            let dev = burn::backend::cuda::CudaDevice::new(g.ordinal());
            let mut l = train::BurnLearner::<Autodiff<CudaBackend>, ()>::new(win, cfg, &dev);
            let (net, r) = train::train(&mut l, win, &tr, &va, cfg, on_batch)?;
            drop(l);
            (Trained::Cuda(net, dev.clone()), r)
        }
    })
}

/// Trains one model on every layer of `traces` (all windows of every layer, the
/// latest `val` share of each held out): `expertcast lstm train`. Returns the model
/// and the checkpoint that describes it.
pub fn fit_traces(
    traces: &[crate::trace::Trace],
    cfg: &LstmConfig,
    device: &Device,
    engine: GpuEngine,
    on_batch: &mut train::OnBatch<'_>,
) -> anyhow::Result<(Trained, Checkpoint)> {
    cfg.validate()?;
    let experts = traces.first().map_or(0, |t| t.experts());
    if cfg.mode == Mode::Joint
        && let Some(t) = traces.iter().find(|t| t.experts() != experts)
    {
        return Err(crate::UsageError(format!(
            "{}: {} experts a layer, but {} has {experts}; a joint-mode model needs one expert count (use --mode global)",
            t.source.display(),
            t.experts(),
            traces[0].source.display()
        ))
        .into());
    }
    let shares: Vec<Vec<f64>> = traces.iter().flat_map(|t| (0..t.layers()).map(move |l| t.layer_proportions(l))).collect();
    let experts_of = traces.iter().flat_map(|t| std::iter::repeat_n(t.experts(), t.layers()));
    let views: Vec<LayerView> = shares.iter().zip(experts_of).map(|(p, e)| LayerView::new(p, e)).collect();
    let ends: Vec<usize> = views.iter().map(|v| v.steps()).collect();
    let win = Windows { layers: views, mode: cfg.mode, lookback: cfg.lookback, k: cfg.k };
    let (trained, report) = fit_with(&win, &ends, cfg, device, engine, on_batch)?;
    let ck = checkpoint(cfg, experts, traces.iter().map(|t| t.name.clone()).collect(), report);
    Ok((trained, ck))
}

/// A trained network on its device.
pub enum Trained {
    /// burn's ndarray backend.
    Cpu(Net<CpuBackend>),
    /// Our CPU kernels.
    CpuKernel(Mutex<cpu::CpuEngine>),
    /// burn-cuda (sizes the kernels do not take).
    Cuda(Net<CudaBackend>, burn::backend::cuda::CudaDevice),
    /// Our kernels.
    Kernel(Mutex<kernel::Engine>),
}

impl Trained {
    pub fn predict(&self, win: &Windows, samples: &[Sample], len: usize, multi: Multi) -> anyhow::Result<Vec<f64>> {
        let d = win.d_in();
        match self {
            Trained::Cpu(n) => train::predict(&mut train::burn_forward(n, d, &Default::default()), win, samples, len, multi),
            Trained::Cuda(n, dev) => train::predict(&mut train::burn_forward(n, d, dev), win, samples, len, multi),
            Trained::Kernel(e) => {
                let mut e = e.lock().expect("engine");
                train::predict(&mut |x: Vec<f32>, n, steps, carry| e.predict(&x, n, steps, carry), win, samples, len, multi)
            }
            Trained::CpuKernel(e) => {
                let mut e = e.lock().expect("engine");
                train::predict(&mut |x: Vec<f32>, n, steps, carry| e.predict(&x, n, steps, carry), win, samples, len, multi)
            }
        }
    }
    pub fn save(&self, ck: &Checkpoint, dir: &Path) -> anyhow::Result<()> {
        match self {
            Trained::Cpu(n) => save(n, ck, dir),
            Trained::Cuda(n, _) => save(n, ck, dir),
            Trained::Kernel(e) => save(&e.lock().expect("engine").to_net::<CpuBackend>(&Default::default())?, ck, dir),
            Trained::CpuKernel(e) => save(&e.lock().expect("engine").to_net::<CpuBackend>(&Default::default()), ck, dir),
        }
    }
    /// A checkpoint read from `dir` onto `device`.
    pub fn load(ck: &Checkpoint, dir: &Path, device: &Device) -> anyhow::Result<Trained> {
        Trained::from_net(ck.load::<CpuBackend>(dir, &Default::default())?, ck, dir, device, GpuEngine::Kernels)
    }
    /// Checkpoint `ck` of `dir`, whose network `net` has been read on the CPU, onto
    /// `device`.
    pub fn from_net(net: Net<CpuBackend>, ck: &Checkpoint, dir: &Path, device: &Device, engine: GpuEngine) -> anyhow::Result<Trained> {
        Ok(match device {
            Device::Cpu if engine == GpuEngine::Kernels => Trained::CpuKernel(Mutex::new(cpu::CpuEngine::from_net(&net))),
            Device::Cpu => Trained::Cpu(net),
            Device::Cuda(g) if kernel::supports(ck.experts.unwrap_or(1), ck.config.hidden) && engine == GpuEngine::Kernels => {
                Trained::Kernel(Mutex::new(kernel::Engine::from_net(&net, g, kernel::ROWS)?))
            }
            Device::Cuda(g) => {
                // burn-cuda reads the record itself (a network moves between devices of
                // one backend only).
                let dev = burn::backend::cuda::CudaDevice::new(g.ordinal());
                Trained::Cuda(ck.load::<CudaBackend>(dir, &dev)?, dev)
            }
        })
    }
}

/// Builds the checkpoint description of a model trained on `traces`.
pub fn checkpoint(cfg: &LstmConfig, experts: usize, traces: Vec<String>, report: TrainReport) -> Checkpoint {
    Checkpoint {
        format: FORMAT.into(),
        version: 1,
        config: cfg.clone(),
        experts: (cfg.mode == Mode::Joint).then_some(experts),
        normalisation: NORMALISATION.into(),
        trained_on: traces,
        report,
    }
}

/// `lstm:...` in a run.
pub struct LstmForecaster {
    pub cfg: LstmConfig,
    /// Steps before the first origin a run trains on (without `model=`).
    pub train: usize,
    pub model: Option<(PathBuf, Checkpoint)>,
    /// The checkpoint's network, read once and shared by every layer's fit.
    loaded: OnceLock<Result<Mutex<Net<CpuBackend>>, String>>,
}

/// The spec parameters of `lstm`: the one source of the LSTM's defaults
/// ([`LstmConfig::default`] and `lstm train`'s flags read them).
const PARAMS: &[Param] = &[
    Param { key: "model", default: "", doc: "checkpoint directory from `expertcast lstm train` (else train per layer on the run's trace)" },
    Param { key: "mode", default: "global", doc: "joint (all experts of a layer in, all out) or global (one model for every series)" },
    Param { key: "lookback", default: "100", doc: "input steps" },
    Param { key: "hidden", default: "32", doc: "hidden units per layer" },
    Param { key: "layers", default: "1", doc: "LSTM layers" },
    Param { key: "k", default: "10", doc: "steps predicted at once" },
    Param { key: "multi", default: "direct", doc: "beyond k steps: direct (the window's level), hold (the k-th step) or recursive (feed predictions back)" },
    Param { key: "lr", default: "0.002", doc: "Adam learning rate" },
    Param { key: "epochs", default: "15", doc: "most training epochs" },
    Param { key: "patience", default: "3", doc: "epochs without a better validation loss before stopping" },
    Param { key: "batch", default: "256", doc: "windows per training batch" },
    Param { key: "seed", default: "0", doc: "seed of the initial weights and the shuffling" },
    Param { key: "val", default: "0.1", doc: "latest share of training windows held out to pick the best epoch" },
    Param { key: "stride", default: "32", doc: "train on every stride-th window of each series" },
    Param { key: "train", default: "2000", doc: "steps before the first origin to train on (without model=)" },
];

pub static LSTM: Known = Known {
    name: "lstm",
    doc: "LSTM (our CPU or CUDA kernels; burn the reference) on the run's device, trained before the first origin or loaded with model=",
    params: PARAMS,
    build: |p| build(p).map(|f| Box::new(f) as Box<dyn Forecaster>),
};

/// The default of LSTM parameter `key` (for `lstm train`'s flags).
pub fn default_of(key: &str) -> &'static str {
    super::default_of("lstm", key)
}

const ARCH_KEYS: &[&str] = &["mode", "lookback", "hidden", "layers", "k", "lr", "epochs", "patience", "batch", "seed", "val", "stride", "train"];

/// The network's settings from spec parameters.
fn config(p: &Params) -> Result<LstmConfig, ParamError> {
    let lr: f64 = p.get("lr").parse().map_err(|_| ParamError(format!("lr={} is not a number", p.get("lr"))))?;
    let val: f64 = p.get("val").parse().map_err(|_| ParamError(format!("val={} is not a number", p.get("val"))))?;
    let cfg = LstmConfig {
        mode: Mode::parse(p.get("mode"))?,
        lookback: p.usize("lookback", 2)?,
        hidden: p.usize("hidden", 1)?,
        layers: p.usize("layers", 1)?,
        k: p.usize("k", 1)?,
        multi: Multi::parse(p.get("multi"))?,
        lr,
        epochs: p.usize("epochs", 1)?,
        patience: p.usize("patience", 1)?,
        batch: p.usize("batch", 1)?,
        seed: p.usize("seed", 0)? as u64,
        val,
        stride: p.usize("stride", 1)?,
    };
    cfg.validate()?;
    Ok(cfg)
}

/// Builds the forecaster from parsed spec parameters.
fn build(p: &Params) -> Result<LstmForecaster, ParamError> {
    let multi = Multi::parse(p.get("multi"))?;
    let model = p.get("model");
    if !model.is_empty() {
        if let Some(k) = p.given_keys().iter().find(|k| ARCH_KEYS.contains(k)) {
            return Err(ParamError(format!("{k} comes from the checkpoint given by model=; only multi= may be set with it")));
        }
        let dir = PathBuf::from(model);
        let mut ck = Checkpoint::read(&dir).map_err(|e| ParamError(format!("{e:#}")))?;
        ck.config.multi = multi;
        return Ok(LstmForecaster { cfg: ck.config.clone(), train: 0, model: Some((dir, ck)), loaded: OnceLock::new() });
    }
    let cfg = config(p)?;
    let train = p.usize("train", 1)?;
    if train < cfg.lookback + cfg.k {
        return Err(ParamError(format!("train={train} must be at least lookback + k = {}", cfg.lookback + cfg.k)));
    }
    Ok(LstmForecaster { cfg, train, model: None, loaded: OnceLock::new() })
}

impl Default for LstmConfig {
    /// The defaults of the `lstm` spec's parameters.
    fn default() -> Self {
        config(&super::Params::defaults(&LSTM)).expect("the LSTM's defaults are valid")
    }
}

impl LstmForecaster {
    fn layer_windows<'a>(&self, layer: &LayerView<'a>) -> Windows<'a> {
        Windows { layers: vec![*layer], mode: self.cfg.mode, lookback: self.cfg.lookback, k: self.cfg.k }
    }

    /// The checkpoint's network on the CPU, read from disk the first time.
    fn checkpoint_net(&self, dir: &Path, ck: &Checkpoint) -> anyhow::Result<Net<CpuBackend>> {
        let loaded = self.loaded.get_or_init(|| ck.load::<CpuBackend>(dir, &Default::default()).map(Mutex::new).map_err(|e| format!("{e:#}")));
        match loaded {
            Ok(net) => Ok(net.lock().expect("checkpoint").clone()),
            Err(e) => Err(anyhow::anyhow!("{e}")),
        }
    }
}

impl Forecaster for LstmForecaster {
    fn spec(&self) -> String {
        let c = &self.cfg;
        if let Some((dir, _)) = &self.model {
            return canonical("lstm", &[("model", dir.display().to_string()), ("multi", c.multi.as_str().into())]);
        }
        canonical(
            "lstm",
            &[
                ("mode", c.mode.as_str().into()),
                ("lookback", c.lookback.to_string()),
                ("hidden", c.hidden.to_string()),
                ("layers", c.layers.to_string()),
                ("k", c.k.to_string()),
                ("multi", c.multi.as_str().into()),
                ("lr", c.lr.to_string()),
                ("epochs", c.epochs.to_string()),
                ("patience", c.patience.to_string()),
                ("batch", c.batch.to_string()),
                ("seed", c.seed.to_string()),
                ("val", c.val.to_string()),
                ("stride", c.stride.to_string()),
                ("train", self.train.to_string()),
            ],
        )
    }

    fn history(&self) -> usize {
        if self.model.is_some() { self.cfg.lookback } else { self.train }
    }

    /// Origins before the lookback fall back.
    fn can_fall_back(&self) -> bool {
        true
    }

    /// Trained by the run: one training window before the first origin is enough.
    fn check_start(&self, start: usize) -> Result<(), CheckError> {
        let need = self.cfg.lookback + self.cfg.k;
        if self.model.is_none() && start < need {
            return Err(CheckError::NoTrainingWindow { start, need });
        }
        Ok(())
    }

    fn check_experts(&self, experts: usize) -> Result<(), CheckError> {
        match &self.model {
            Some((dir, ck)) => match ck.experts {
                Some(e) if e != experts => Err(CheckError::Experts { model: dir.display().to_string(), trained: e, experts }),
                _ => Ok(()),
            },
            None => Ok(()),
        }
    }

    /// Loads the checkpoint onto the run's device, or trains on the last `train`
    /// steps of `history` (never on a scored step).
    fn fit(&self, history: &LayerView, ctx: &FitContext) -> anyhow::Result<Box<dyn Fitted + '_>> {
        let experts = history.experts();
        let device = &ctx.device;
        let trained = match &self.model {
            Some((dir, ck)) => {
                self.check_experts(experts)?;
                Trained::from_net(self.checkpoint_net(dir, ck)?, ck, dir, device, GpuEngine::Kernels)?
            }
            None => {
                let recent = history.since(history.steps().saturating_sub(self.train));
                let win = self.layer_windows(&recent);
                let msg = ctx.messages.clone();
                let mut on_batch = |done: usize, total: usize, epoch: usize, loss: Option<f64>| {
                    if let Some(m) = &msg
                        && (done % 20 == 0 || done == total)
                    {
                        m(format!("lstm training: epoch {}, batch {done}/{total}, loss {}", epoch + 1, loss.map_or("-".into(), |l| format!("{l:.4}"))));
                    }
                };
                fit(&win, &[recent.steps()], &self.cfg, device, &mut on_batch)?.0
            }
        };
        Ok(Box::new(FittedLstm { f: self, trained }))
    }
}

/// A trained (or loaded) LSTM and the forecaster it belongs to.
struct FittedLstm<'a> {
    f: &'a LstmForecaster,
    trained: Trained,
}

impl Fitted for FittedLstm<'_> {
    fn predict(&self, history: &LayerView, origin: usize, out: &mut [f64]) -> usize {
        let len = out.len() / history.experts();
        let mut fb = 0;
        let mut emit = |_: usize, pred: &mut [f64], _: Option<&[f64]>, f: usize| {
            out.copy_from_slice(pred);
            fb = f;
        };
        match self.predict_origins(history, &[origin], &[len], &mut emit) {
            Ok(()) => fb,
            Err(_) => fallback::layer(history, origin, out),
        }
    }

    /// Every origin with a full lookback window in one batch; earlier ones fall back.
    fn predict_origins(&self, layer: &LayerView, origins: &[usize], lens: &[usize], emit: &mut Emit<'_>) -> anyhow::Result<()> {
        let (cfg, experts) = (&self.f.cfg, layer.experts());
        let win = self.f.layer_windows(layer);
        let len = lens.iter().copied().max().unwrap_or(0);
        let usable: Vec<usize> = (0..origins.len()).filter(|&i| origins[i] >= cfg.lookback).collect();
        let samples: Vec<Sample> = usable.iter().flat_map(|&i| win.samples(&[(0, origins[i], origins[i])])).collect();
        let pred = if len > 0 { self.trained.predict(&win, &samples, len, cfg.multi)? } else { Vec::new() };
        let per_origin = len * experts;
        let mut out = Vec::new();
        let mut next = 0;
        for (i, (&o, &n)) in origins.iter().zip(lens).enumerate() {
            out.clear();
            out.resize(n * experts, 0.0);
            if next < usable.len() && usable[next] == i {
                let block = &pred[next * per_origin..(next + 1) * per_origin];
                match cfg.mode {
                    // Step-major already.
                    Mode::Joint => out.copy_from_slice(&block[..n * experts]),
                    // Expert-major blocks of `len` steps.
                    Mode::Global => {
                        for e in 0..experts {
                            for s in 0..n {
                                out[s * experts + e] = block[e * len + s];
                            }
                        }
                    }
                }
                next += 1;
                emit(i, &mut out, None, 0);
            } else {
                let fb = fallback::layer(&layer.until(o), o, &mut out);
                emit(i, &mut out, None, fb);
            }
        }
        Ok(())
    }
}
