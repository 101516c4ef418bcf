//! Window statistics over every layer and expert of a trace, and the states
//! (transient, stable) derived from them. docs/reference.md, "Window statistics" and "States".

pub mod cpu;
pub mod cuda;
pub mod states;

use rayon::prelude::*;

use crate::trace::Trace;

/// The five layer summaries of a (layer, window), each a `V` holding one value per
/// step: host vectors ([`LayerStats`]) or device buffers ([`cuda::DeviceSummaries`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Summaries<V> {
    /// Mean over experts of the window variance.
    pub var_mean: V,
    /// Max over experts of the window variance.
    pub var_max: V,
    pub range_mean: V,
    pub range_max: V,
    /// Mean over experts of the window standard deviation: `s(t)` of the states rule.
    pub std_mean: V,
}

impl<V> Summaries<V> {
    /// Builds each summary from its index in [`all`](Self::all)'s order.
    pub fn from_fn(mut f: impl FnMut(usize) -> V) -> Self {
        Summaries { var_mean: f(0), var_max: f(1), range_mean: f(2), range_max: f(3), std_mean: f(4) }
    }
    /// [`from_fn`](Self::from_fn) for a builder that can fail.
    pub fn try_from_fn<E>(mut f: impl FnMut(usize) -> Result<V, E>) -> Result<Self, E> {
        Ok(Summaries { var_mean: f(0)?, var_max: f(1)?, range_mean: f(2)?, range_max: f(3)?, std_mean: f(4)? })
    }
    /// The five in declaration order.
    pub fn all(&self) -> [&V; 5] {
        [&self.var_mean, &self.var_max, &self.range_mean, &self.range_max, &self.std_mean]
    }
    /// [`all`](Self::all), to change.
    pub fn all_mut(&mut self) -> [&mut V; 5] {
        [&mut self.var_mean, &mut self.var_max, &mut self.range_mean, &mut self.range_max, &mut self.std_mean]
    }
}

/// Layer summaries for one (layer, window): index `i` is step index `t = window - 1 + i`.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerStats {
    pub layer: usize,
    pub window: usize,
    pub summary: Summaries<Vec<f64>>,
}

impl LayerStats {
    fn zeros(layer: usize, window: usize, n: usize) -> LayerStats {
        let mut s = LayerStats { layer, window, summary: Summaries::from_fn(|_| vec![0.0; n]) };
        s.reset(layer);
        s
    }
    /// Back to [`zeros`](Self::zeros)'s values, for `layer`.
    fn reset(&mut self, layer: usize) {
        self.layer = layer;
        // The maxima (var_max, range_max) start at −∞, the sums at 0.
        for (k, v) in self.summary.all_mut().into_iter().enumerate() {
            v.fill(if k == 1 || k == 3 { f64::NEG_INFINITY } else { 0.0 });
        }
    }
    fn add(&mut self, var: &[f64], range: &[f64]) {
        summaries_add(&mut self.summary, var, range);
    }
    fn merge(&mut self, o: &LayerStats) {
        let (s, o) = (&mut self.summary, &o.summary);
        for i in 0..s.var_mean.len() {
            s.var_mean[i] += o.var_mean[i];
            s.var_max[i] = s.var_max[i].max(o.var_max[i]);
            s.range_mean[i] += o.range_mean[i];
            s.range_max[i] = s.range_max[i].max(o.range_max[i]);
            s.std_mean[i] += o.std_mean[i];
        }
    }
    fn finish(&mut self, experts: usize) {
        let k = 1.0 / experts as f64;
        let s = &mut self.summary;
        for v in [&mut s.var_mean, &mut s.range_mean, &mut s.std_mean] {
            v.iter_mut().for_each(|x| *x *= k);
        }
    }
}

crate::simd::avx2_twin!(
    /// Adds one expert's window variances and ranges to a layer's summaries (four
    /// steps to an AVX2 register where the CPU has it; each step's operations are
    /// the same either way).
    fn summaries_add(s: &mut Summaries<Vec<f64>>, var: &[f64], range: &[f64]) => summaries_add_inner
);

#[inline(always)]
fn summaries_add_inner(s: &mut Summaries<Vec<f64>>, var: &[f64], range: &[f64]) {
    // Slices of one length, so that the loop has no bounds checks to keep it scalar.
    let n = var.len();
    let (range, vm, vx) = (&range[..n], &mut s.var_mean[..n], &mut s.var_max[..n]);
    let (rm, rx, sm) = (&mut s.range_mean[..n], &mut s.range_max[..n], &mut s.std_mean[..n]);
    for i in 0..n {
        vm[i] += var[i];
        vx[i] = vx[i].max(var[i]);
        rm[i] += range[i];
        rx[i] = rx[i].max(range[i]);
        sm[i] += var[i].sqrt();
    }
}

/// Per-expert window statistics of one (layer, expert, window).
#[derive(Debug, Clone)]
pub struct ExpertStats {
    pub layer: usize,
    pub expert: usize,
    pub window: usize,
    pub mean: Vec<f64>,
    pub var: Vec<f64>,
    pub range: Vec<f64>,
}

/// Blocks of experts a layer's summaries are summed in (fixed, so that the sums do
/// not depend on the number of threads or their scheduling).
const BLOCKS: usize = 16;

/// Bytes the layers worked on side by side may take together (each its series, its
/// output series, one block's partial summaries and the total): a paper-scale layer
/// (100,000 steps, 128 experts) takes about 156 MB, so on a machine of more than
/// three threads such layers go one at a time, each over every thread.
const SIDE_BY_SIDE_BYTES: usize = 512 << 20;

/// Computes the layer summaries of every (layer, window) on the CPU: a layer at a time
/// with its experts in parallel or, when that keeps the threads as busy and they fit
/// in [`SIDE_BY_SIDE_BYTES`] together, layers side by side, a thread each (the same
/// bits either way). When `detail` is given, layers go one at a time and
/// it receives each layer's per-expert statistics (in expert, then window order)
/// before the next layer starts, so the detail never has to be held whole.
/// `on_layer` is called once a layer is done, from any thread.
pub fn layer_stats_cpu(
    trace: &Trace,
    windows: &[usize],
    mut detail: Option<&mut dyn FnMut(Vec<ExpertStats>) -> anyhow::Result<()>>,
    on_layer: impl Fn() + Sync,
) -> anyhow::Result<Vec<LayerStats>> {
    let (nt, ne, nl) = (trace.steps(), trace.experts(), trace.layers());
    // Experts in a fixed number of blocks, each summed in expert order, the blocks
    // then merged in block order: the same bits whatever the threads.
    let block = ne.div_ceil(BLOCKS).max(1);
    let n_blocks = ne.div_ceil(block);
    let threads = rayon::current_num_threads().max(1);
    // Layers side by side, one thread each, when that takes no more rounds of layer
    // work than a layer at a time over its own tasks does (a task takes at least four
    // experts, so a small layer has few: side by side, ⌈L / threads⌉ rounds of a
    // layer's work; a layer at a time, L · ⌈tasks / threads⌉ / tasks), and the layers
    // fit: a layer at a time also leaves its blocks' merge to one thread, and its
    // blocks' partial summaries to the caches. A layer alone holds its series, its
    // thread's scratch (four interleaved series) and per window twelve output series
    // (four experts'), one block's partial summaries and the total (five each).
    let layer_tasks = n_blocks.div_ceil(4usize.div_ceil(block));
    let alone_bytes = 8 * (nt * ne + 4 * nt + windows.iter().map(|&w| 22 * cpu::outputs(nt, w)).sum::<usize>());
    let side_by_side = detail.is_none()
        && threads > 1
        && nl.div_ceil(threads) * layer_tasks <= nl * layer_tasks.div_ceil(threads)
        && threads.min(nl) * alone_bytes <= SIDE_BY_SIDE_BYTES;
    let job = LayerJob { trace, windows, block, n_blocks, keep: detail.is_some(), workers: (0..threads).map(|_| Default::default()).collect() };
    if side_by_side {
        let done: Vec<Vec<LayerStats>> = (0..nl)
            .into_par_iter()
            .map(|l| {
                // The series on this thread alone (on rayon, waiting for its tiles
                // could start another layer here and hold two series), then the
                // worker's lock: nothing below runs rayon while it is held.
                let series = trace.layer_series_here(l);
                let worker = rayon::current_thread_index().unwrap_or(0) % job.workers.len();
                let mut guard = job.workers[worker].lock().unwrap_or_else(|e| e.into_inner());
                let total = job.layer_alone(l, &series, &mut guard);
                drop(guard);
                on_layer();
                total
            })
            .collect();
        return Ok(done.into_iter().flatten().collect());
    }
    // Else a layer at a time, its experts in parallel. Buffers made once for the whole
    // trace, not once a block and layer (that was most of the stage's time on small
    // traces, in page faults): each block's partial summaries, and each worker
    // thread's scratch and output series.
    let mut accs = job.partials();
    let mut out = Vec::with_capacity(nl * windows.len());
    for l in 0..nl {
        let (total, mut kept) = job.layer(l, &mut accs);
        if let Some(d) = detail.as_mut() {
            kept.sort_by_key(|k| (k.expert, windows.iter().position(|&w| w == k.window)));
            d(kept)?;
        }
        out.extend(total);
        on_layer();
    }
    Ok(out)
}

/// What [`layer_stats_cpu`]'s layers share.
struct LayerJob<'a> {
    trace: &'a Trace,
    windows: &'a [usize],
    /// Experts in a block, and blocks in a layer.
    block: usize,
    n_blocks: usize,
    /// Whether each expert's statistics are kept (`--stats-detail expert`).
    keep: bool,
    /// One per worker thread, taken by that thread only.
    workers: Vec<std::sync::Mutex<Worker>>,
}

impl LayerJob<'_> {
    /// [`layer`](Self::layer) on this thread alone, for a layer's `series`: the same
    /// operations in the same order (each block's experts summed in order from zero,
    /// the blocks merged in order), with one block's partial summaries at a time.
    fn layer_alone(&self, l: usize, series: &[f64], w: &mut Worker) -> Vec<LayerStats> {
        let (windows, block) = (self.windows, self.block);
        let (nt, ne) = (self.trace.steps(), self.trace.experts());
        let Worker { scratch: s, bufs, acc } = w;
        if bufs.len() != windows.len() {
            *bufs = windows.iter().map(|&w| four_outputs(cpu::outputs(nt, w))).collect();
        }
        if acc.len() != windows.len() {
            *acc = windows.iter().map(|&w| LayerStats::zeros(l, w, cpu::outputs(nt, w))).collect();
        }
        acc.iter_mut().for_each(|a| a.reset(l));
        let mut total: Vec<LayerStats> = windows.iter().map(|&w| LayerStats::zeros(l, w, cpu::outputs(nt, w))).collect();
        for (g, quad) in series.chunks(4 * nt).enumerate() {
            let k = quad.len() / nt;
            for (wi, &w) in windows.iter().enumerate() {
                let out = &mut bufs[wi];
                quad_stats(quad, nt, w, out, s);
                for (j, [_, v, r]) in out[..k].iter().enumerate() {
                    let e = 4 * g + j;
                    acc[wi].add(v, r);
                    if (e + 1) % block == 0 || e + 1 == ne {
                        // The block is whole: the first is taken as it is, the others merged.
                        if e < block {
                            for (t, a) in total[wi].summary.all_mut().into_iter().zip(acc[wi].summary.all()) {
                                t.copy_from_slice(a);
                            }
                        } else {
                            total[wi].merge(&acc[wi]);
                        }
                        acc[wi].reset(l);
                    }
                }
            }
        }
        total.iter_mut().for_each(|s| s.finish(ne));
        total
    }

    /// Each block's partial summaries of one layer, per window.
    fn partials(&self) -> Vec<Vec<LayerStats>> {
        let nt = self.trace.steps();
        (0..self.n_blocks).map(|_| self.windows.iter().map(|&w| LayerStats::zeros(0, w, cpu::outputs(nt, w))).collect()).collect()
    }

    /// Layer `l`'s summaries (one per window) and, if kept, its experts' statistics;
    /// `accs` are its blocks' partial summaries ([`partials`](Self::partials)).
    fn layer(&self, l: usize, accs: &mut [Vec<LayerStats>]) -> (Vec<LayerStats>, Vec<ExpertStats>) {
        let (trace, windows, block, keep) = (self.trace, self.windows, self.block, self.keep);
        let (nt, ne) = (trace.steps(), trace.experts());
        let series = trace.layer_series(l);
        // A task takes whole blocks, at least four experts, so that experts go four at
        // a time (cpu::window_series4, the same bits as one at a time) even where a
        // block is one expert; each expert is added to its own block's summaries, in
        // expert order.
        let per_task = 4usize.div_ceil(block);
        let kept: Vec<Vec<ExpertStats>> = accs
            .par_chunks_mut(per_task)
            .zip(series.par_chunks(nt * block * per_task))
            .enumerate()
            .map(|(t, (acc, xs))| {
                acc.iter_mut().flatten().for_each(|a| a.reset(l));
                let worker = rayon::current_thread_index().unwrap_or(0) % self.workers.len();
                // Only this thread takes its worker's lock, and it runs no other rayon
                // task while it holds it (nothing below waits on rayon), so it never waits.
                let mut guard = self.workers[worker].lock().unwrap_or_else(|e| e.into_inner());
                let Worker { scratch: s, bufs, .. } = &mut *guard;
                if !keep && bufs.len() != windows.len() {
                    *bufs = windows.iter().map(|&w| four_outputs(cpu::outputs(nt, w))).collect();
                }
                let mut kept = Vec::new();
                for (g, quad) in xs.chunks(4 * nt).enumerate() {
                    let (i0, k) = (4 * g, quad.len() / nt);
                    let e0 = t * per_task * block + i0;
                    for (wi, &w) in windows.iter().enumerate() {
                        let mut out = if keep { four_outputs(cpu::outputs(nt, w)) } else { std::mem::take(&mut bufs[wi]) };
                        quad_stats(quad, nt, w, &mut out, s);
                        for (j, [_, v, r]) in out[..k].iter().enumerate() {
                            acc[(i0 + j) / block][wi].add(v, r);
                        }
                        if keep {
                            for (j, [m, v, r]) in out.into_iter().take(k).enumerate() {
                                kept.push(ExpertStats { layer: l, expert: e0 + j, window: w, mean: m, var: v, range: r });
                            }
                        } else {
                            bufs[wi] = out;
                        }
                    }
                }
                kept
            })
            .collect();
        let mut blocks = accs.iter();
        let mut total = blocks.next().cloned().unwrap_or_else(|| windows.iter().map(|&w| LayerStats::zeros(l, w, cpu::outputs(nt, w))).collect());
        for a in blocks {
            total.iter_mut().zip(a).for_each(|(x, y)| x.merge(y));
        }
        total.iter_mut().for_each(|s| s.finish(ne));
        (total, kept.into_iter().flatten().collect())
    }
}

/// Four experts' output series (mean, variance, range) of `n` values each.
fn four_outputs(n: usize) -> [[Vec<f64>; 3]; 4] {
    std::array::from_fn(|_| std::array::from_fn(|_| vec![0.0; n]))
}

/// The window statistics of up to four experts' series (`quad`, each `nt` steps)
/// into the first of `out`: four at a time where there are four
/// ([`cpu::window_series4`], the same bits as one at a time).
fn quad_stats(quad: &[f64], nt: usize, w: usize, out: &mut [[Vec<f64>; 3]; 4], s: &mut cpu::Scratch) {
    if quad.len() == 4 * nt {
        let x: [&[f64]; 4] = std::array::from_fn(|j| &quad[j * nt..(j + 1) * nt]);
        cpu::window_series4(x, w, out, s);
    } else {
        for (x, [m, v, r]) in quad.chunks(nt).zip(out.iter_mut()) {
            cpu::window_series(x, w, m, v, r, s);
        }
    }
}

/// One worker thread's buffers for [`layer_stats_cpu`].
#[derive(Default)]
struct Worker {
    scratch: cpu::Scratch,
    /// Per window, four experts' output series (mean, variance, range).
    bufs: Vec<[[Vec<f64>; 3]; 4]>,
    /// Per window, one block's partial summaries ([`LayerJob::layer_alone`]).
    acc: Vec<LayerStats>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::Loads;
    use std::path::Path;

    #[test]
    fn layer_summaries_have_the_same_bits_whatever_the_threads() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/gpt12-e64-top2-s1.parquet");
        let t = crate::trace::read_file(&path, &Default::default()).unwrap().remove(0);
        let with = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| layer_stats_cpu(&t, &[10, 100], None, || {}).unwrap())
        };
        let one = with(1);
        for threads in [2, 3, 8] {
            let many = with(threads);
            for (a, b) in one.iter().zip(&many) {
                let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&a.summary.var_mean), bits(&b.summary.var_mean), "{threads} threads");
                assert_eq!(bits(&a.summary.std_mean), bits(&b.summary.std_mean), "{threads} threads");
                assert_eq!(bits(&a.summary.range_mean), bits(&b.summary.range_mean), "{threads} threads");
            }
        }
    }

    /// The summaries have the bits of the plainest code of their documented order:
    /// one expert at a time (`cpu::window_series`), experts added in order within
    /// blocks of ⌈E/16⌉, blocks merged in order; for expert counts that make blocks
    /// of one (tasks of four blocks), of two, of four, of seven and a short last block,
    /// a layer at a time (one thread) and layers side by side (two); windows of 1, 7
    /// and 50 steps and one longer than the trace (no outputs).
    #[test]
    fn layer_summaries_have_the_bits_of_the_block_order() {
        let mut state = 0x9e3779b97f4a7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let windows = [1, 7, 50, 301];
        for ne in [1usize, 5, 16, 20, 64, 100] {
            let (nt, nl) = (300, 2);
            let loads: Vec<f32> = (0..nt * nl * ne).map(|_| (next() * 1000.0).floor() as f32 + 1.0).collect();
            let t = Trace::from_dense("t".into(), Path::new("x"), 0, (0..nl as i64).collect(), (0..ne as i64).collect(), Loads::F32(loads)).unwrap();
            // One thread: a layer at a time, its experts in parallel; two: the two
            // layers side by side, a thread each.
            let got: Vec<Vec<LayerStats>> = [1, 2]
                .map(|threads| {
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                    pool.install(|| layer_stats_cpu(&t, &windows, None, || {}).unwrap())
                })
                .into();
            let block = ne.div_ceil(BLOCKS);
            let mut want = Vec::new();
            for l in 0..nl {
                let series = t.layer_series(l);
                for &w in &windows {
                    let n = cpu::outputs(nt, w);
                    let mut total: Option<LayerStats> = None;
                    for b in series.chunks(nt * block) {
                        let mut acc = LayerStats::zeros(l, w, n);
                        for x in b.chunks(nt) {
                            let (mut m, mut v, mut r) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
                            cpu::window_series(x, w, &mut m, &mut v, &mut r, &mut cpu::Scratch::default());
                            acc.add(&v, &r);
                        }
                        match total.as_mut() {
                            None => total = Some(acc),
                            Some(s) => s.merge(&acc),
                        }
                    }
                    let mut total = total.unwrap();
                    total.finish(ne);
                    want.push(total);
                }
            }
            let bits = |s: &LayerStats| s.summary.all().map(|v| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
            for (threads, got) in [1, 2].iter().zip(&got) {
                assert_eq!(got.len(), want.len());
                for (a, b) in got.iter().zip(&want) {
                    assert_eq!((a.layer, a.window), (b.layer, b.window));
                    assert!(bits(a) == bits(b), "{ne} experts, {threads} threads, layer {} window {}: other bits", a.layer, a.window);
                }
            }
        }
    }

    #[test]
    fn layer_summaries_average_and_max_over_experts() {
        // One layer, two experts, 3 steps. Shares: e0 = .5, .25, .75 ; e1 = .5, .75, .25
        let loads = vec![1.0, 1.0, 1.0, 3.0, 3.0, 1.0];
        let t = Trace::from_dense("t".into(), Path::new("x"), 0, vec![0], vec![0, 1], Loads::F32(loads)).unwrap();
        let mut seen = Vec::new();
        let mut cb = |d: Vec<ExpertStats>| {
            seen.extend(d);
            Ok(())
        };
        let s = layer_stats_cpu(&t, &[2], Some(&mut cb), || {}).unwrap();
        assert_eq!(s.len(), 1);
        // windows {.5,.25}: var .015625, range .25 ; {.25,.75}: var .0625, range .5 (both experts alike)
        assert_eq!(s[0].summary.var_mean, vec![0.015625, 0.0625]);
        assert_eq!(s[0].summary.var_max, vec![0.015625, 0.0625]);
        assert_eq!(s[0].summary.range_mean, vec![0.25, 0.5]);
        assert_eq!(s[0].summary.range_max, vec![0.25, 0.5]);
        assert_eq!(s[0].summary.std_mean, vec![0.125, 0.25]);
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].expert, 0);
        assert_eq!(seen[0].mean, vec![0.375, 0.5]);
        assert_eq!(seen[1].mean, vec![0.625, 0.5]);
    }
}
