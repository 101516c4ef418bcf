//! The LSTM forecaster on burn's CPU backend: it learns a simulated AR(2) process,
//! checkpoints round-trip exactly, no scored step reaches training, bad configs
//! fail clearly.

mod common;

use common::*;
use expertcast::eval::{Protocol, Regime, evaluate_layer};
use expertcast::forecast::lstm::data::Windows;
use expertcast::forecast::lstm::{self, LstmConfig, Mode, Multi, Trained};
use expertcast::forecast::{FitContext, LayerView, parse_spec};
use expertcast::gpu::Device;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Normal};

/// Two experts whose shares are 0.5 ± 0.05·x with x an AR(2) process
/// x_t = 0.6 x_{t-1} + 0.3 x_{t-2} + ε (stationary; the best one-step predictor
/// has 24% of the process variance as its error).
fn ar2_layer(steps: usize, seed: u64) -> Vec<f64> {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = Normal::new(0.0, 1.0).unwrap();
    let (mut x1, mut x2) = (0.0, 0.0);
    let mut p = Vec::with_capacity(2 * steps);
    for t in 0..steps + 200 {
        let x = 0.6 * x1 + 0.3 * x2 + n.sample(&mut rng);
        (x2, x1) = (x1, x);
        if t >= 200 {
            let s = 0.5 + 0.05 * x / 2.0;
            p.extend([s, 1.0 - s]);
        }
    }
    p
}

const SMALL: &str = "mode=joint,lookback=20,hidden=16,layers=1,k=1,epochs=12,batch=64,lr=0.01,seed=1,stride=1,train=1200";

fn mae_h1(layer: &LayerView, spec: &str, start: usize) -> f64 {
    let f = parse_spec(spec).unwrap();
    let proto = Protocol { horizons: vec![1], stride: 3, start, renormalize: true };
    let scores = evaluate_layer(layer, f.as_ref(), &proto, None, None).unwrap();
    let s = scores.iter().find(|s| s.regime == Regime::All).unwrap();
    assert_eq!(s.fallbacks, 0, "{spec}");
    s.mae_pp.unwrap()
}

#[test]
fn learns_an_ar2_process_and_beats_the_window_mean_by_20_percent_at_h1() {
    let p = ar2_layer(2400, 7);
    let layer = LayerView::new(&p, 2);
    let lstm = mae_h1(&layer, &format!("lstm:{SMALL}"), 1200);
    let mean = mae_h1(&layer, "mean:w=100", 1200);
    // The true AR(2) one-step predictor, as the reference floor.
    let mut abs = 0.0;
    let mut n = 0;
    for o in (1200..2400).step_by(3) {
        let x = |t: usize| (p[2 * t] - 0.5) * 40.0;
        let pred = 0.5 + (0.6 * x(o - 1) + 0.3 * x(o - 2)) / 40.0;
        abs += 2.0 * (pred - p[2 * o]).abs();
        n += 2;
    }
    let best = 100.0 * abs / n as f64;
    eprintln!("mae_pp at h=1: lstm {lstm:.4}, mean:w=100 {mean:.4}, true AR(2) predictor {best:.4}");
    assert!(lstm < 0.8 * mean, "lstm {lstm} vs mean:w=100 {mean}: less than 20% better");
    assert!(lstm < 1.1 * best, "lstm {lstm} vs the true predictor {best}");
}

fn small_cfg(mode: Mode) -> LstmConfig {
    LstmConfig { mode, lookback: 12, hidden: 8, layers: 2, k: 3, epochs: 2, batch: 32, lr: 0.01, seed: 3, ..Default::default() }
}

#[test]
fn a_saved_checkpoint_predicts_exactly_what_the_trained_model_did() {
    let p = ar2_layer(400, 1);
    let layer = LayerView::new(&p, 2);
    for mode in [Mode::Joint, Mode::Global] {
        let cfg = small_cfg(mode);
        let win = Windows { layers: vec![layer], mode, lookback: cfg.lookback, k: cfg.k };
        let (trained, report) = lstm::fit(&win, &[300], &cfg, &Device::Cpu, &mut |_, _, _, _| {}).unwrap();
        assert!(report.train_loss.is_finite() && report.epochs_run >= 1);
        let samples = win.samples(&[(0, 300, 390)]);
        let before = trained.predict(&win, &samples, 7, Multi::Recursive).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ck = lstm::checkpoint(&cfg, 2, vec!["ar2".into()], report);
        trained.save(&ck, dir.path()).unwrap();
        let read = lstm::Checkpoint::read(dir.path()).unwrap();
        assert_eq!(read.config, cfg);
        let loaded = Trained::load(&read, dir.path(), &Device::Cpu).unwrap();
        let after = loaded.predict(&win, &samples, 7, Multi::Recursive).unwrap();
        assert_eq!(before, after, "{mode:?}");
        // Direct, hold and recursive agree on the first k steps (same network output).
        let direct = loaded.predict(&win, &samples, 7, Multi::Direct).unwrap();
        let hold = loaded.predict(&win, &samples, 7, Multi::Hold).unwrap();
        let w = if mode == Mode::Joint { 2 } else { 1 };
        let (mut x, mut norms) = (Vec::new(), Vec::new());
        for (s, sample) in samples.iter().enumerate() {
            let (a, b, h) = (&before[s * 7 * w..], &direct[s * 7 * w..], &hold[s * 7 * w..]);
            assert_eq!(a[..cfg.k * w], b[..cfg.k * w]);
            assert_eq!(a[..cfg.k * w], h[..cfg.k * w]);
            // Hold repeats the k-th step; direct gives the window's mean beyond k.
            assert_eq!(h[(cfg.k - 1) * w..cfg.k * w], h[6 * w..7 * w]);
            norms.clear();
            win.fill(sample, &mut x, None, &mut norms);
            let level: Vec<f64> = norms.iter().map(|n| n.0).collect();
            assert_eq!(b[6 * w..7 * w], level[..]);
        }
    }
}

#[test]
fn no_scored_step_reaches_training_or_inference() {
    // The same trace, and one whose steps from 700 on are poisoned: forecasts from
    // origins up to 700 must be identical (and two trainings are deterministic).
    let p = ar2_layer(1000, 2);
    let mut poisoned = p.clone();
    for (i, v) in poisoned[2 * 700..].iter_mut().enumerate() {
        *v = if i % 2 == 0 { 0.99 } else { 0.01 };
    }
    let f = parse_spec("lstm:lookback=16,hidden=8,layers=1,k=4,epochs=3,batch=32,train=500,seed=5").unwrap();
    let origins = [600, 650, 700];
    let lens = [50, 50, 50];
    let run = |p: &[f64]| {
        let layer = LayerView::new(p, 2);
        let mut out = Vec::new();
        let fitted = f.fit(&layer.until(origins[0]), &FitContext::cpu()).unwrap();
        fitted
            .predict_origins(&layer, &origins, &lens, &mut |_, pred: &mut [f64], _, fb| {
                assert_eq!(fb, 0);
                out.extend_from_slice(pred);
            })
            .unwrap();
        out
    };
    let a = run(&p);
    let b = run(&poisoned);
    assert_eq!(a.len(), 300);
    assert_eq!(a, b);
    // And the forecasts do depend on the history: a later origin differs.
    assert_ne!(a[..100], a[200..]);
}

#[test]
fn the_binary_trains_saves_and_scores_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("ar.parquet");
    let p = ar2_layer(900, 3);
    write_parquet(&src, &grid(900, 2, 2, |t, l, e| {
        let i = 2 * (t as usize) + e as usize;
        1000.0 * if l == 0 { p[i] } else { p[(i + 2) % p.len()] }
    }));
    let model = dir.path().join("model");
    let o = expertcast(&[
        "lstm", "train", src.to_str().unwrap(), "-o", model.to_str().unwrap(), "--device", "cpu", "--mode", "joint", "--lookback", "16",
        "--hidden", "8", "--layers", "1", "--k", "2", "--epochs", "2", "--batch", "64",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("trained on"), "{}", stderr(&o));
    assert!(model.join("weights.mpk").is_file() && model.join("lstm.json").is_file());
    let out = dir.path().join("out");
    let spec = format!("lstm:model={}", model.display());
    let run = |o: &std::path::Path| {
        expertcast(&[
            "run", src.to_str().unwrap(), "-o", o.to_str().unwrap(), "--device", "cpu", "-q", "-f", &spec, "-f", "mean:w=100",
            "--horizon", "1", "--horizon", "10", "--origin-stride", "50",
        ])
    };
    let r = run(&out);
    assert!(r.status.success(), "{}", stderr(&r));
    let m = read_all(&out.join("metrics.parquet"));
    let f = col_str(&m, "forecaster");
    assert!(f.contains(&format!("{spec},multi=direct")), "{f:?}");
    // The same checkpoint scores the same again.
    let out2 = dir.path().join("out2");
    assert!(run(&out2).status.success());
    assert_eq!(read_all(&out.join("metrics.parquet")), read_all(&out2.join("metrics.parquet")));

    // A joint checkpoint of 2 experts refuses a 3-expert trace before writing anything.
    let three = dir.path().join("three.parquet");
    write_parquet(&three, &grid(300, 1, 3, |t, _, e| 10.0 + ((t as i32 + e) % 3) as f64));
    let bad = dir.path().join("bad");
    let r = expertcast(&["run", three.to_str().unwrap(), "-o", bad.to_str().unwrap(), "-q", "-f", &spec]);
    assert_eq!(r.status.code(), Some(2), "{}", stderr(&r));
    assert!(stderr(&r).contains("three.parquet") && stderr(&r).contains("trained on 2 experts"), "{}", stderr(&r));
    assert!(!bad.join("layer_stats.parquet").exists());
}

#[test]
fn bad_lstm_configs_fail_clearly() {
    for (spec, want) in [
        ("lstm:mode=both", "mode=both must be joint or global"),
        ("lstm:multi=sideways", "multi=sideways must be direct, hold or recursive"),
        ("lstm:lookback=1", "lookback=1 must be at least 2"),
        ("lstm:lr=-1", "lr must be a positive number"),
        ("lstm:val=0.95", "val must be in [0, 0.9)"),
        ("lstm:lookback=100,train=50", "train=50 must be at least lookback + k = 110"),
        ("lstm:model=no/such/dir", "cannot read LSTM checkpoint no/such/dir/lstm.json"),
        ("lstm:hidden=0", "hidden=0 must be at least 1"),
    ] {
        let e = parse_spec(spec).err().unwrap_or_else(|| panic!("{spec} parsed")).to_string();
        assert!(e.contains(want), "{spec}: {e}");
    }
    // Architecture comes from a checkpoint, not from the spec beside it.
    let dir = tempfile::tempdir().unwrap();
    let p = ar2_layer(200, 4);
    let layer = LayerView::new(&p, 2);
    let cfg = small_cfg(Mode::Joint);
    let win = Windows { layers: vec![layer], mode: Mode::Joint, lookback: cfg.lookback, k: cfg.k };
    let (t, r) = lstm::fit(&win, &[200], &LstmConfig { epochs: 1, ..cfg.clone() }, &Device::Cpu, &mut |_, _, _, _| {}).unwrap();
    t.save(&lstm::checkpoint(&cfg, 2, vec![], r), dir.path()).unwrap();
    let e = parse_spec(&format!("lstm:model={},hidden=9", dir.path().display())).err().unwrap().to_string();
    assert!(e.contains("hidden comes from the checkpoint"), "{e}");
    // Too little history before the first origin to train on.
    let f = parse_spec("lstm:lookback=50,k=10,train=60").unwrap();
    let e = f.fit(&layer.until(55), &FitContext::cpu()).err().unwrap().to_string();
    assert!(e.contains("no training window"), "{e}");
    // A run whose first origin leaves no training window is refused before it reads
    // or writes anything (exit 2), naming the flag and the forecaster.
    let out = dir.path().join("early");
    let o = expertcast(&[
        "run", "datasets/gpt12-e16-top2-s1.parquet", "-o", out.to_str().unwrap(), "-q", "--device", "cpu",
        "-f", "lstm:lookback=50,k=10,train=60", "--origin-start", "59",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--origin-start 59") && stderr(&o).contains("at least lookback + k = 60"), "{}", stderr(&o));
    assert!(!out.exists(), "nothing written");
    // At exactly lookback + k there is one window, and the check lets it through.
    assert_eq!(f.check_start(60), Ok(()));
    // A checkpoint needs no training window.
    let g = parse_spec(&format!("lstm:model={}", dir.path().display())).unwrap();
    assert_eq!(g.check_start(1), Ok(()));
    // The CLI: bad values exit 2 naming the flag.
    let o = expertcast(&["lstm", "train", "datasets/gpt12-e16-top2-s1.parquet", "-o", "/nonexistent/x", "--k", "0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("k must be at least 1"), "{}", stderr(&o));
}

/// Our CPU kernels train for real: a small global-mode LSTM trained on the CPU on
/// every layer of one bundled trace (gpt12-e16-top2-s1) beats `sw-avg:w=100` at
/// h = 1 on another (gpt12-e64-top2-s1, 64 experts a layer), scored through a
/// checkpoint as a user would (`lstm train`, then `lstm:model=DIR`), and so does the
/// linear baseline fitted on the same trace.
#[test]
fn a_small_lstm_trained_on_the_cpu_beats_the_window_average_on_another_trace() {
    use expertcast::forecast::linear::{self, LinearConfig};
    use expertcast::forecast::lstm::GpuEngine;
    use expertcast::trace::{self, ReadOptions};
    let train = trace::read_all(&[bundled("gpt12-e16-top2-s1")], &ReadOptions::default()).unwrap();
    let test = trace::read_all(&[bundled("gpt12-e64-top2-s1")], &ReadOptions::default()).unwrap();
    let cfg = LstmConfig { mode: Mode::Global, lookback: 50, hidden: 16, layers: 1, k: 5, epochs: 3, stride: 64, seed: 5, ..Default::default() };
    let t0 = std::time::Instant::now();
    let (trained, ck) = lstm::fit_traces(&train, &cfg, &Device::Cpu, GpuEngine::Kernels, &mut |_, _, _, _| {}).unwrap();
    assert!(matches!(trained, Trained::CpuKernel(_)), "the CPU path trains on our kernels");
    eprintln!("trained on {} windows in {:.1} s: {:?}", ck.report.train_windows, t0.elapsed().as_secs_f64(), ck.report);
    let dir = tempfile::tempdir().unwrap();
    trained.save(&ck, dir.path()).unwrap();
    let lin = linear::fit_traces(&train, &LinearConfig { lookback: 50, k: 5, lambda: 1e-3 }).unwrap();
    let lin_dir = tempfile::tempdir().unwrap();
    lin.save(lin_dir.path()).unwrap();
    let t = &test[0];
    let pooled = |spec: &str| {
        let f = parse_spec(spec).unwrap();
        let proto = Protocol { horizons: vec![1], stride: 10, start: 500, renormalize: true };
        let (mut sum, mut n) = (0.0, 0.0);
        for l in 0..t.layers() {
            let p = t.layer_proportions(l);
            let layer = LayerView::new(&p, t.experts());
            let s = evaluate_layer(&layer, f.as_ref(), &proto, None, None).unwrap();
            let s = s.iter().find(|s| s.regime == Regime::All).unwrap();
            assert_eq!(s.fallbacks, 0, "{spec}");
            sum += s.mae_pp.unwrap() * s.origins as f64;
            n += s.origins as f64;
        }
        sum / n
    };
    let lstm = pooled(&format!("lstm:model={}", dir.path().display()));
    let linear = pooled(&format!("linear:model={}", lin_dir.path().display()));
    let swavg = pooled("sw-avg:w=100");
    eprintln!("h = 1 mae_pp on gpt12-e64-top2-s1: lstm {lstm:.4}, linear {linear:.4}, sw-avg:w=100 {swavg:.4}");
    assert!(lstm < 0.9 * swavg, "lstm {lstm} vs sw-avg:w=100 {swavg}");
    assert!(linear < 0.9 * swavg, "linear {linear} vs sw-avg:w=100 {swavg}");
}
