//! `expertcast bench`: throughput of the window-statistics stage against its ceiling.
//!
//! On a GPU it measures, in one process: the device-to-device copy bandwidth (the
//! ceiling), the `window_stats` kernel per window (bytes counted as one read of the
//! input plus one write of each output: mean, variance, range), the layer-summary
//! kernel, and the whole statistics stage of a run with host copies included. The
//! CPU path is measured beside it on the same data. `benches/peers/window_stats_torch.py`
//! runs PyTorch's `unfold` on the same data for comparison.

pub mod arima;
pub mod lstm;
pub mod run;

use std::time::Instant;

use anyhow::Context;
use cudarc::driver::CudaSlice;

use crate::UsageError;
use crate::gpu::{self, Device, DeviceRequest, Gpu};
use crate::stats::{self, cpu, cuda};
use crate::trace::{Input, Loads, ReadOptions, Trace, read_inputs};

/// Which stage `expertcast bench` measures.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Window statistics (GPU kernels, or the CPU path with --cpu).
    Window,
    /// ARIMA fitting on the CPU (the --arima-* flags).
    Arima,
    /// LSTM training and inference throughput (the --lstm-* flags).
    Lstm,
    /// The whole default run on a synthetic trace of --steps × --layers × --experts,
    /// from .npy and from Parquet, per stage (best of --runs).
    Run,
}

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// The stage to measure.
    #[arg(long, value_enum, default_value_t = Stage::Window)]
    pub stage: Stage,
    /// Worker threads for CPU stages (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub arima: arima::ArimaBenchArgs,
    #[command(flatten)]
    pub lstm: lstm::LstmBenchArgs,
    /// Steps of the benchmark trace.
    #[arg(long, default_value_t = 100_000)]
    pub steps: usize,
    /// MoE layers of the benchmark trace.
    #[arg(long, default_value_t = 12)]
    pub layers: usize,
    /// Experts per layer.
    #[arg(long, default_value_t = 128)]
    pub experts: usize,
    /// Windows to measure (repeatable).
    #[arg(long = "window", default_values_t = [10usize, 100, 1000])]
    pub windows: Vec<usize>,
    /// Runs of each input (--stage run).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Timed repetitions of each kernel (after one warm-up).
    #[arg(long, default_value_t = 20)]
    pub reps: usize,
    /// Also time the CPU window statistics on the same data.
    #[arg(long)]
    pub cpu: bool,
    /// Where the stage runs: auto uses a GPU when one is usable.
    #[arg(long, value_enum, default_value_t = DeviceRequest::Auto)]
    pub device: DeviceRequest,
}

/// The benchmark trace: loads tiled from the bundled gpt12-e16-top2-s1 trace, so that
/// series `s` at step `t` is series `s mod 96` of it at step `(t + 37 s) mod 8001`
/// (the rule benches/peers/*.py use too).
pub fn bench_trace(steps: usize, layers: usize, experts: usize) -> anyhow::Result<Trace> {
    let bundled = Input::bundled_named("gpt12-e16-top2-s1.parquet").expect("a bundled trace");
    let src = read_inputs(&[bundled], &ReadOptions::default())?.remove(0);
    let (t0, n_src, ne0) = (src.steps(), src.layers() * src.experts(), src.experts());
    let mut loads = vec![0f32; steps * layers * experts];
    for t in 0..steps {
        for l in 0..layers {
            for e in 0..experts {
                let s = l * experts + e;
                let k = s % n_src;
                loads[(t * layers + l) * experts + e] = src.load((t + 37 * s) % t0, k / ne0, k % ne0) as f32;
            }
        }
    }
    Ok(Trace::from_dense(
        "bench".into(),
        std::path::Path::new("bench"),
        0,
        (0..layers as i64).collect(),
        (0..experts as i64).collect(),
        Loads::F32(loads),
    )?)
}

fn events_ms(gpu: &Gpu, reps: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let stream = gpu.ctx.default_stream();
    f()?; // warm-up (and compile)
    stream.synchronize()?;
    let start = gpu.ctx.new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))?;
    let stop = gpu.ctx.new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))?;
    start.record(&stream)?;
    for _ in 0..reps {
        f()?;
    }
    stop.record(&stream)?;
    stop.synchronize()?;
    Ok(start.elapsed_ms(&stop)? as f64 / reps as f64)
}

pub fn bench(args: &BenchArgs) -> anyhow::Result<()> {
    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new().num_threads(n).build_global().context("starting the thread pool")?;
    }
    if args.stage == Stage::Arima {
        return arima::bench_arima(&args.arima);
    }
    if args.stage == Stage::Lstm {
        return lstm::bench_lstm(&args.lstm, args.device);
    }
    if args.stage == Stage::Run {
        return run::bench_run(args);
    }
    // The device first: a machine without a GPU hears so before any data is built.
    let (device, note) = gpu::choose(args.device)?;
    if !device.is_cuda() && !args.cpu {
        let why = note.map(|n| format!(" ({n})")).unwrap_or_default();
        return Err(UsageError(format!("bench --stage window measures the GPU kernels and no GPU is in use{why}; pass --cpu to measure the CPU path")).into());
    }
    if let Some(n) = note {
        eprintln!("expertcast: {n}");
    }
    let t = Instant::now();
    let tr = bench_trace(args.steps, args.layers, args.experts)?;
    let (nt, series) = (tr.steps(), tr.layers() * tr.experts());
    println!(
        "bench data: {} steps × {} layers × {} experts = {} series, float32 ({:.1} MB), built in {:.1} s",
        nt,
        tr.layers(),
        tr.experts(),
        series,
        (series * nt * 4) as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    if let Device::Cuda(g) = &device {
        bench_gpu(g, &tr, args)?;
    }
    if args.cpu {
        let t = Instant::now();
        let s = stats::layer_stats_cpu(&tr, &args.windows, None, || {})?;
        println!(
            "cpu stage ({} threads): all windows {:?}, layer summaries: {:.1} ms ({} summaries)",
            rayon::current_num_threads(),
            args.windows,
            t.elapsed().as_secs_f64() * 1e3,
            s.len()
        );
    }
    Ok(())
}

fn bench_gpu(g: &Gpu, tr: &Trace, args: &BenchArgs) -> anyhow::Result<()> {
    let (nt, nl, ne) = (tr.steps(), tr.layers(), tr.experts());
    let series = nl * ne;
    println!("device: {} ({} SMs)", g.name, g.ctx.attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?);
    let stream = g.ctx.default_stream();
    let mut host = vec![0f32; series * nt];
    for s in 0..series {
        for t in 0..nt {
            host[s * nt + t] = tr.proportion(t, s / ne, s % ne) as f32;
        }
    }
    let x: CudaSlice<f32> = stream.clone_htod(&host).context("copying the bench data")?;

    // Ceiling: a device-to-device copy of the input (bytes read + written).
    let mut y: CudaSlice<f32> = stream.alloc_zeros(series * nt)?;
    let ms = events_ms(g, args.reps, || Ok(stream.memcpy_dtod(&x, &mut y)?))?;
    let copy_gbs = 2.0 * (series * nt * 4) as f64 / (ms * 1e-3) / 1e9;
    println!("device-to-device copy of {:.1} MB: {ms:.3} ms, {copy_gbs:.0} GB/s (read + write)", (series * nt * 4) as f64 / 1e6);
    drop(y);

    println!("{:>6} {:>10} {:>10} {:>8} {:>12} {:>14}", "W", "kernel ms", "GB/s", "% copy", "summary ms", "chunk×warps");
    for &w in &args.windows {
        let n = cpu::outputs(nt, w);
        let mut out = cuda::DeviceOutputs {
            mean: Some(stream.alloc_zeros(series * n)?),
            var: stream.alloc_zeros(series * n)?,
            range: stream.alloc_zeros(series * n)?,
        };
        let ms = events_ms(g, args.reps, || cuda::launch_window_stats(g, &stream, &x, nt, series, series, w, &mut out))?;
        let bytes = (series * nt * 4 + 3 * series * n * 4) as f64;
        let gbs = bytes / (ms * 1e-3) / 1e9;
        let mut sums = cuda::DeviceSummaries::alloc(&stream, nl * n)?;
        let sms = events_ms(g, args.reps, || cuda::launch_layer_summary(g, &stream, &out, n, nl, ne, &mut sums))?;
        let geo = cuda::launch_geometry(g, w, nt, series, series)?;
        let k = g.window_kernels()?;
        let f = cuda::kernel_for(&k, w);
        let regs = f.get_attribute(cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_NUM_REGS)?;
        println!(
            "{w:>6} {ms:>10.3} {gbs:>10.0} {:>7.1}% {sms:>12.3} {:>14} {regs:>5} regs, {} warps/block, {} B smem",
            100.0 * gbs / copy_gbs,
            format!("{}×{}", geo.chunk, series * n.div_ceil(geo.chunk)),
            geo.warps_per_block,
            geo.smem_bytes
        );
    }

    // The whole statistics stage of a run: shares prepared on the host, copied,
    // all windows, summaries back (what `expertcast run --device cuda` does).
    for _ in 0..2 {
        let t = Instant::now();
        let s = cuda::layer_stats_cuda(g, tr, &args.windows, None, || {})?;
        println!(
            "run stage on the GPU, host copies included: all windows {:?}, layer summaries back: {:.1} ms ({} summaries)",
            args.windows,
            t.elapsed().as_secs_f64() * 1e3,
            s.len()
        );
    }
    Ok(())
}
