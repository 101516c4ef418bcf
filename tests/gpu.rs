//! GPU kernels against their CPU twins. Run on a machine with a CUDA device:
//! `cargo test --release --test gpu -- --ignored`.

mod common;

use expertcast::gpu::{Device, probe_cuda};
use expertcast::stats::{self, cpu, cuda};
use expertcast::trace::{ReadOptions, read_file};

fn gpu() -> std::sync::Arc<expertcast::gpu::Gpu> {
    match probe_cuda() {
        Ok(Device::Cuda(g)) => g,
        Ok(Device::Cpu) => unreachable!(),
        Err(why) => panic!("no CUDA device: {why}"),
    }
}

/// Fresh random shares each run (the seed is printed so a failure can be replayed).
fn random_series(series: usize, steps: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..series * steps)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            // a drifting level plus noise, like an expert's share
            let level = 0.05 + 0.03 * ((i % steps) as f32 / steps as f32);
            level + ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.04
        })
        .collect()
}

fn seed() -> u64 {
    let s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    eprintln!("seed {s}");
    s
}

/// Compares the kernel with the float64 CPU path on the same float32 inputs.
fn check(series: usize, steps: usize, w: usize, seed: u64) {
    let g = gpu();
    let x = random_series(series, steps, seed);
    let (m, v, r) = cuda::window_stats_host(&g, &x, steps, w).unwrap();
    let n = cpu::outputs(steps, w);
    assert_eq!(m.len(), series * n);
    let mut s = cpu::Scratch::default();
    let mut worst = 0.0f64;
    for k in 0..series {
        let xs: Vec<f64> = x[k * steps..(k + 1) * steps].iter().map(|&a| a as f64).collect();
        let (mut cm, mut cv, mut cr) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        cpu::window_series(&xs, w, &mut cm, &mut cv, &mut cr, &mut s);
        for i in 0..n {
            for (gpu_v, cpu_v, what) in [(m[k * n + i], cm[i], "mean"), (v[k * n + i], cv[i], "var"), (r[k * n + i], cr[i], "range")] {
                let d = (gpu_v as f64 - cpu_v).abs();
                assert!(d < 1e-6, "{what} series {k} output {i} (S={series} T={steps} W={w}): gpu {gpu_v} cpu {cpu_v}");
                worst = worst.max(d);
            }
        }
    }
    eprintln!("S={series} T={steps} W={w}: worst |gpu - cpu| = {worst:.3e}");
}

#[test]
#[ignore = "needs a CUDA device"]
fn awkward_shapes_match_the_cpu() {
    let sd = seed();
    for (series, steps, w) in [
        (1, 1000, 37),   // one series
        (3, 5, 10),      // T < W: no outputs
        (3, 10, 10),     // T = W: one output
        (7, 1000, 1),    // W = 1
        (33, 3001, 100), // sizes that are not multiples of the block or the warp
        (4, 1100, 1000), // a window longer than a warp's chunk of outputs
        (5, 20_000, 1000),
        (130, 777, 33),
    ] {
        check(series, steps, w, sd);
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn long_series_stay_within_1e6() {
    let sd = seed();
    check(3, 100_000, 10, sd);
    check(3, 100_000, 1000, sd);
    check(2, 100_000, 4096, sd);
}

#[test]
#[ignore = "needs a CUDA device"]
fn layer_summaries_and_detail_match_the_cpu_on_bundled_traces() {
    let g = gpu();
    for name in ["gpt12-e16-top2-s2", "gpt12-e64-top2-s1"] {
        let tr = read_file(&common::bundled(name), &ReadOptions::default()).unwrap().remove(0);
        let windows = [1, 10, 100, 200, 1000, 5000];
        let mut cpu_detail = Vec::new();
        let mut cd = |d: Vec<stats::ExpertStats>| {
            cpu_detail.extend(d);
            Ok(())
        };
        let want = stats::layer_stats_cpu(&tr, &windows, Some(&mut cd), || {}).unwrap();
        let mut gpu_detail = Vec::new();
        let mut gd = |d: Vec<stats::ExpertStats>| {
            gpu_detail.extend(d);
            Ok(())
        };
        let got = cuda::layer_stats_cuda(&g, &tr, &windows, Some(&mut gd), || {}).unwrap();
        // Groups of 1 and of 4 layers (the last group smaller): both streams, buffers
        // reused across groups, give the same summaries as one group.
        for group in [1, 4] {
            let again = cuda::layer_stats_cuda_grouped(&g, &tr, &windows, None, || {}, Some(group)).unwrap();
            assert_eq!(again, got, "{name}: groups of {group} layers");
        }
        assert_eq!(want.len(), got.len());
        for (a, b) in want.iter().zip(&got) {
            assert_eq!((a.layer, a.window), (b.layer, b.window));
            for (x, y, what) in [
                (&a.var_mean, &b.var_mean, "var_mean"),
                (&a.var_max, &b.var_max, "var_max"),
                (&a.range_mean, &b.range_mean, "range_mean"),
                (&a.range_max, &b.range_max, "range_max"),
                (&a.std_mean, &b.std_mean, "std_mean"),
            ] {
                assert_eq!(x.len(), y.len(), "{what}");
                for i in 0..x.len() {
                    assert!((x[i] - y[i]).abs() < 1e-6, "{name} {what} layer {} W {} i {i}: {} vs {}", a.layer, a.window, x[i], y[i]);
                }
            }
        }
        assert_eq!(cpu_detail.len(), gpu_detail.len());
        for (a, b) in cpu_detail.iter().zip(&gpu_detail) {
            assert_eq!((a.layer, a.expert, a.window), (b.layer, b.expert, b.window));
            for i in 0..a.mean.len() {
                assert!((a.mean[i] - b.mean[i]).abs() < 1e-6);
                assert!((a.var[i] - b.var[i]).abs() < 1e-6);
                assert!((a.range[i] - b.range[i]).abs() < 1e-6);
            }
        }
        eprintln!("{name}: {} summaries, {} expert series match", got.len(), gpu_detail.len());
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn run_on_cuda_writes_what_the_cpu_run_writes() {
    let d = tempfile::tempdir().unwrap();
    let mut tables = Vec::new();
    for dev in ["cpu", "cuda"] {
        let out = d.path().join(dev);
        let o = common::expertcast(&["run", "--device", dev, "--out", out.to_str().unwrap(), "--quiet", "-f", "last"]);
        assert!(o.status.success(), "{dev}: {}", common::stderr(&o));
        let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
        assert!(m["stats_device"].as_str().unwrap().starts_with(dev), "{m}");
        tables.push((common::read_all(&out.join("layer_stats.parquet")), common::read_all(&out.join("states.parquet"))));
    }
    let (a, b) = (&tables[0].0, &tables[1].0);
    assert_eq!(a.num_rows(), b.num_rows());
    for c in ["var_mean", "var_max", "range_mean", "range_max"] {
        let (x, y) = (common::col_f64(a, c), common::col_f64(b, c));
        for i in 0..x.len() {
            assert!((x[i] - y[i]).abs() < 1e-6, "{c} row {i}");
        }
    }
    // Transition steps from the GPU's summaries agree with the CPU's.
    assert_eq!(common::col_i64(&tables[0].1, "transition_step"), common::col_i64(&tables[1].1, "transition_step"));
}

#[test]
#[ignore = "needs a CUDA device"]
fn sweep_over_every_gpu_matches_the_cpu_sweep() {
    use common::*;
    let d = tempfile::tempdir().unwrap();
    let cfg = |name: &str| {
        let p = d.path().join(format!("{name}.toml"));
        let text = format!(
            "traces = [{:?}]\nout = {:?}\nwindows = [10, 100]\nhorizons = [1, 100]\norigin_stride = [250, 500]\nforecasters = [\"last\", \"mean:w=100\"]\n",
            root().join("datasets/gpt12-e*.parquet").display().to_string(),
            d.path().join(name).display().to_string()
        );
        std::fs::write(&p, text).unwrap();
        p
    };
    let (gpu_cfg, cpu_cfg) = (cfg("gpu"), cfg("cpu"));
    let g = expertcast(&["sweep", gpu_cfg.to_str().unwrap(), "--device", "cuda", "--devices", "all", "--jobs", "3"]);
    assert!(g.status.success(), "{}", stderr(&g));
    assert!(stderr(&g).contains("3 unit(s) at a time over GPU(s)"), "{}", stderr(&g));
    let c = expertcast(&["sweep", cpu_cfg.to_str().unwrap(), "--device", "cpu", "--quiet"]);
    assert!(c.status.success(), "{}", stderr(&c));
    let mut compared = 0;
    for table in ["layer_stats", "states", "metrics"] {
        for part in std::fs::read_dir(d.path().join("cpu").join(table)).unwrap() {
            let part = part.unwrap().path();
            for f in std::fs::read_dir(&part).unwrap() {
                let f = f.unwrap().path();
                let rel = f.strip_prefix(d.path().join("cpu")).unwrap();
                let (a, b) = (read_all(&f), read_all(&d.path().join("gpu").join(rel)));
                assert_eq!(a.num_rows(), b.num_rows(), "{}", rel.display());
                for (i, field) in a.schema().fields().iter().enumerate() {
                    if field.data_type() == &arrow::datatypes::DataType::Float64 {
                        let (x, y) = (col_f64(&a, field.name()), col_f64(&b, field.name()));
                        for (p, q) in x.iter().zip(&y) {
                            assert!((p - q).abs() <= 1e-6 || (p.is_nan() && q.is_nan()), "{} {}: {p} vs {q}", rel.display(), field.name());
                        }
                    } else {
                        assert_eq!(a.column(i), b.column(i), "{} {}", rel.display(), field.name());
                    }
                }
                compared += 1;
            }
        }
    }
    // 3 traces x 2 strides x 3 tables
    assert_eq!(compared, 18);
}
