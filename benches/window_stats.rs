//! CPU window statistics on 20,000 steps × 1,536 series (the paper's 12 layers ×
//! 128 experts), W = 10, 100, 1000. `make bench-peers` runs pandas' rolling
//! var/max/min on the same data in the same run (benches/peers/window_stats_pandas.py).
//!
//! The data tiles the bundled gpt12-e16-top2-s1 trace: series `i` at step `t` is the
//! share of series `i mod 96` (layer-major) at step `(t + 37 i) mod 8001`.

use std::path::Path;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use expertcast::stats::cpu::{outputs, window_stats_many};
use expertcast::trace::{ReadOptions, read_file};

const STEPS: usize = 20_000;
const SERIES: usize = 1_536;

fn bench_data() -> Vec<f64> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/gpt12-e16-top2-s1.parquet");
    let tr = read_file(&path, &ReadOptions::default()).expect("bundled trace").remove(0);
    let (nt, ne) = (tr.steps(), tr.experts());
    let n_src = tr.layers() * ne;
    let mut x = vec![0.0; STEPS * SERIES];
    for i in 0..SERIES {
        let s = i % n_src;
        let (l, e) = (s / ne, s % ne);
        for t in 0..STEPS {
            x[i * STEPS + t] = tr.proportion((t + 37 * i) % nt, l, e);
        }
    }
    x
}

fn window_stats(c: &mut Criterion) {
    let x = bench_data();
    let mut g = c.benchmark_group("window_stats");
    g.sample_size(10);
    g.throughput(Throughput::Elements((STEPS * SERIES) as u64));
    for threads in [1, rayon::current_num_threads()] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        for w in [10usize, 100, 1000] {
            let n = outputs(STEPS, w);
            let (mut m, mut v, mut r) = (vec![0.0; n * SERIES], vec![0.0; n * SERIES], vec![0.0; n * SERIES]);
            g.bench_with_input(BenchmarkId::new(format!("threads={threads}"), format!("W={w}")), &w, |b, &w| {
                b.iter(|| pool.install(|| window_stats_many(&x, STEPS, w, &mut m, &mut v, &mut r)))
            });
        }
        if threads == rayon::current_num_threads() {
            break;
        }
    }
    g.finish();
}

criterion_group!(benches, window_stats);
criterion_main!(benches);
