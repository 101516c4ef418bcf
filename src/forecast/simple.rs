//! The baseline forecasters: `last`, `mean`, `sw-avg` and `ema`.

use super::{DeviceModel, Emit, FitContext, Fitted, Forecaster, Known, LayerView, Param, canonical};

pub static LAST: Known = Known { name: "last", doc: "p[o-1] for every future step", params: &[], build: |_| Ok(Box::new(Last)) };

pub static EMA: Known = Known {
    name: "ema",
    doc: "exponential moving average e(o-1) for every future step",
    params: &[Param { key: "alpha", default: "0.3", doc: "smoothing weight in (0, 1]" }],
    build: |p| Ok(Box::new(Ema { alpha: p.f64_in("alpha", 0.0, 1.0)? })),
};

/// `impl Forecaster` for a forecaster that needs no fit: its fitted model is itself.
macro_rules! stateless {
    ($t:ty, $history:expr, $spec:expr $(; $($extra:tt)*)?) => {
        impl Forecaster for $t {
            $($($extra)*)?
            fn spec(&self) -> String {
                let spec: fn(&$t) -> String = $spec;
                spec(self)
            }
            fn history(&self) -> usize {
                let history: fn(&$t) -> usize = $history;
                history(self)
            }
            fn fit(&self, _history: &LayerView, _ctx: &FitContext) -> anyhow::Result<Box<dyn Fitted + '_>> {
                Ok(Box::new(*self))
            }
        }
    };
}
pub(super) use stateless;

/// A stateless forecaster whose one parameter is its window length `w` (default 100)
/// and which needs `w` steps of history: its [`Known`] entry `$known`, its struct
/// `$t { w }` and its `impl Forecaster`. The caller writes `impl Fitted for $t`.
macro_rules! windowed {
    ($(#[$attr:meta])* $known:ident, $t:ident, $name:literal, $doc:literal $(; $($extra:tt)*)?) => {
        pub static $known: Known = Known {
            name: $name,
            doc: $doc,
            params: &[Param { key: "w", default: "100", doc: "window length (steps)" }],
            build: |p| Ok(Box::new($t { w: p.usize("w", 1)? })),
        };

        $(#[$attr])*
        #[derive(Debug, Clone, Copy)]
        pub struct $t {
            pub w: usize,
        }

        stateless!($t, |f| f.w, |f| canonical($name, &[("w", f.w.to_string())]) $(; $($extra)*)?);
    };
}
pub(super) use windowed;

/// `last`: `p[o-1]` for every future step.
#[derive(Debug, Clone, Copy)]
pub struct Last;

stateless!(Last, |_| 1, |_| "last".into();
    fn on_device(&self) -> Option<DeviceModel> {
        Some(DeviceModel::Last)
    }
);

impl Fitted for Last {
    fn flat(&self) -> bool {
        true
    }
    fn predict(&self, h: &LayerView, origin: usize, out: &mut [f64]) -> usize {
        let row = h.row(origin - 1);
        out.chunks_mut(h.experts()).for_each(|o| o.copy_from_slice(row));
        0
    }
}

/// Mean of each expert's share over `p[o-w ..= o-1]`.
fn window_mean(h: &LayerView, origin: usize, w: usize, into: &mut [f64]) {
    into.iter_mut().for_each(|v| *v = 0.0);
    for t in origin - w..origin {
        into.iter_mut().zip(h.row(t)).for_each(|(a, b)| *a += b);
    }
    into.iter_mut().for_each(|v| *v /= w as f64);
}

windowed!(
    /// `mean:w=W`: the mean of `p[o-W .. o-1]` for every future step.
    MEAN, WindowMean, "mean", "mean of p[o-w .. o-1] for every future step";
    fn on_device(&self) -> Option<DeviceModel> {
        Some(DeviceModel::Mean { w: self.w })
    }
);

impl Fitted for WindowMean {
    fn flat(&self) -> bool {
        true
    }
    fn predict(&self, h: &LayerView, origin: usize, out: &mut [f64]) -> usize {
        let ne = h.experts();
        let (first, rest) = out.split_at_mut(ne);
        window_mean(h, origin, self.w, first);
        rest.chunks_mut(ne).for_each(|o| o.copy_from_slice(first));
        0
    }
}

windowed!(
    /// `sw-avg:w=W`, the paper's sliding-window average: step `o+k` is the mean of the
    /// `W` most recent values, actual values before `o` and its own predictions from
    /// `o` on.
    SW_AVG, SlidingWindowAverage, "sw-avg", "the paper's sliding-window average, fed its own predictions";
    fn on_device(&self) -> Option<DeviceModel> {
        Some(DeviceModel::SwAvg { w: self.w })
    }
);

impl Fitted for SlidingWindowAverage {
    /// Origins in chunks, each chunk's in parallel, so that memory holds one chunk's
    /// predictions.
    fn predict_origins(&self, layer: &LayerView, origins: &[usize], lens: &[usize], emit: &mut Emit<'_>) -> anyhow::Result<()> {
        use rayon::prelude::*;
        const CHUNK: usize = 16;
        let ne = layer.experts();
        // Buffers reused from chunk to chunk; predict writes every value.
        let mut outs: Vec<Vec<f64>> = vec![Vec::new(); CHUNK];
        for (c, (os, ls)) in origins.chunks(CHUNK).zip(lens.chunks(CHUNK)).enumerate() {
            outs.par_iter_mut().zip(os).zip(ls).for_each(|((out, &o), &len)| {
                out.resize(len * ne, 0.0);
                self.predict(&layer.until(o), o, out);
            });
            for (i, (out, &len)) in outs.iter_mut().zip(ls).enumerate() {
                emit(c * CHUNK + i, &mut out[..len * ne], None, 0);
            }
        }
        Ok(())
    }
    fn predict(&self, h: &LayerView, origin: usize, out: &mut [f64]) -> usize {
        let (ne, w) = (h.experts(), self.w);
        let (mut ring, mut sum) = (vec![0.0; w * ne], vec![0.0; ne]);
        self.window(h, origin, &mut ring, &mut sum);
        sw_avg_run(&mut ring, &mut sum, w, ne, out);
        0
    }
    /// Origins in parallel, each origin's rows made, renormalised and scored one
    /// after another (`sw_avg_scored`), so that no origin's 2,000 rows go to memory.
    fn score_origins(
        &self,
        layer: &LayerView,
        origins: &[usize],
        horizons: &[usize],
        real: bool,
        sums: &mut [(f64, f64)],
        done: &(dyn Fn(u64) + Sync),
    ) -> Option<()> {
        use rayon::prelude::*;
        let (ne, nt, w, nh) = (layer.experts(), layer.steps(), self.w, horizons.len());
        let max_h = *horizons.last()?;
        let scratch = || SwAvgRows { ring: vec![0.0; w * ne], sum: vec![0.0; ne] };
        sums.par_chunks_mut(nh).zip(origins).for_each_init(scratch, |s, (out, &o)| {
            self.window(layer, o, &mut s.ring, &mut s.sum);
            sw_avg_scored(layer, o, horizons, max_h.min(nt - o), real, s, out);
            done(ne as u64);
        });
        Some(())
    }
}

impl SlidingWindowAverage {
    /// Fills `ring` with the `w` steps before `origin` and `sum` with each expert's
    /// sum of them. `ring[j * ne + e]` holds expert e's value that leaves the window
    /// j steps after it entered; all experts advance together, a step (a row of the
    /// prediction) at a time, and each expert's sums run in the same order as one
    /// expert at a time would.
    fn window(&self, h: &LayerView, origin: usize, ring: &mut [f64], sum: &mut [f64]) {
        let ne = h.experts();
        sum.iter_mut().for_each(|s| *s = 0.0);
        for (j, t) in (origin - self.w..origin).enumerate() {
            let slot = &mut ring[j * ne..(j + 1) * ne];
            slot.copy_from_slice(h.row(t));
            sum.iter_mut().zip(slot.iter()).for_each(|(s, v)| *s += v);
        }
    }
}

/// One origin's window (`ring`, `sum`: see `SlidingWindowAverage::window`).
struct SwAvgRows {
    ring: Vec<f64>,
    sum: Vec<f64>,
}

crate::simd::avx2_twin!(
    /// [`sw_avg_run`] for `steps` rows, each row renormalised if `real` and
    /// scored against the layer from `origin` on as soon as it is made: the same
    /// operations in the same order as predicting every row, renormalising them and
    /// scoring them ([`crate::eval`]'s `origin_sums_rows`), so the same bits.
    fn sw_avg_scored(
        layer: &LayerView,
        origin: usize,
        horizons: &[usize],
        steps: usize,
        real: bool,
        s: &mut SwAvgRows,
        out: &mut [(f64, f64)],
    ) => sw_avg_scored_inner
);

#[inline(always)]
fn sw_avg_scored_inner(layer: &LayerView, origin: usize, horizons: &[usize], steps: usize, real: bool, s: &mut SwAvgRows, out: &mut [(f64, f64)]) {
    use crate::eval::Scale;
    let (ring, sum) = (&mut s.ring[..], &mut s.sum[..]);
    let ne = layer.experts();
    let w = ring.len() / ne;
    let mut run = crate::eval::Running::new(horizons);
    let mut head = 0;
    for k in 0..steps {
        if run.done() {
            break;
        }
        // The step's row goes into the window (unnormalised, as sw_avg_step makes it)
        // and its clipped sum is taken as it is made; then the row is read back from
        // the window, renormalised and scored in one pass.
        let slot = &mut ring[head * ne..(head + 1) * ne];
        let clipped = sw_avg_step_summed(sum, w, slot);
        let scale = if !real {
            Scale::AsMade
        } else if clipped > 0.0 {
            Scale::By(1.0 / clipped)
        } else {
            Scale::Uniform(1.0 / ne as f64)
        };
        run.add_scaled(k, slot, scale, layer.row(origin + k), out);
        head = if head + 1 == w { 0 } else { head + 1 };
    }
}

crate::simd::avx2_twin!(
    /// Fills `out` from the window `ring` (oldest first) and its per-expert `sum`.
    fn sw_avg_run(ring: &mut [f64], sum: &mut [f64], w: usize, ne: usize, out: &mut [f64]) => sw_avg_run_inner
);

#[inline(always)]
fn sw_avg_run_inner(ring: &mut [f64], sum: &mut [f64], w: usize, ne: usize, out: &mut [f64]) {
    let mut head = 0;
    for row in out.chunks_mut(ne) {
        sw_avg_step(ring, sum, &mut head, w, row);
    }
}

/// Makes the next `row` from the window: each expert's mean (the sum times `1 / w`,
/// as the GPU kernel `sw_avg_score` makes it), which then replaces the window's
/// oldest value (`ring`'s row `head`).
#[inline(always)]
fn sw_avg_step(ring: &mut [f64], sum: &mut [f64], head: &mut usize, w: usize, row: &mut [f64]) {
    let ne = row.len();
    let slot = &mut ring[*head * ne..(*head + 1) * ne];
    let inv = 1.0 / w as f64;
    for e in 0..ne {
        let pred = sum[e] * inv;
        row[e] = pred;
        sum[e] += pred - slot[e];
        slot[e] = pred;
    }
    *head = if *head + 1 == w { 0 } else { *head + 1 };
}

/// [`sw_avg_step`] with the row made in the window's oldest row `slot` itself (the
/// window's new value): returns the row's sum of values clipped at 0, in the lanes
/// and order of [`crate::simd::lane_sum_by`] (so [`super::renormalize`]'s sum, bit for
/// bit).
#[inline(always)]
fn sw_avg_step_summed(sum: &mut [f64], w: usize, slot: &mut [f64]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx2() {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { sw_avg_step_summed_avx2(sum, w, slot) };
    }
    sw_avg_step_summed_lanes(sum, w, slot)
}

/// [`sw_avg_step_summed`] as plain Rust.
#[inline(always)]
fn sw_avg_step_summed_lanes(sum: &mut [f64], w: usize, slot: &mut [f64]) -> f64 {
    use crate::simd::{LANES as L, fold_lanes};
    let ne = slot.len();
    let inv = 1.0 / w as f64;
    let clip = |v: f64| if v >= 0.0 { v } else { 0.0 };
    let mut c = [0.0f64; L];
    let full = ne / L * L;
    for i in (0..full).step_by(L) {
        let (s, o): (&mut [f64; L], &mut [f64; L]) = ((&mut sum[i..i + L]).try_into().unwrap(), (&mut slot[i..i + L]).try_into().unwrap());
        for j in 0..L {
            let pred = s[j] * inv;
            s[j] += pred - o[j];
            o[j] = pred;
            c[j] += clip(pred);
        }
    }
    for j in 0..ne - full {
        let pred = sum[full + j] * inv;
        sum[full + j] += pred - slot[full + j];
        slot[full + j] = pred;
        c[j] += clip(pred);
    }
    fold_lanes(c)
}

/// [`sw_avg_step_summed`] with the eight lanes in two AVX2 registers, each lane's
/// operations those of [`sw_avg_step_summed_lanes`] in the same order (the
/// compiler left that loop scalar); the last `ne mod 8` experts one by one, as there.
///
/// # Safety
/// The CPU must have AVX2; called from code compiled for it, into which it is inlined.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn sw_avg_step_summed_avx2(sum: &mut [f64], w: usize, slot: &mut [f64]) -> f64 {
    use crate::simd::{LANES as L, fold_lanes};
    let ne = slot.len();
    assert_eq!(sum.len(), ne, "a sum per expert");
    let full = ne / L * L;
    let inv = 1.0 / w as f64;
    let mut c = [0.0f64; L];
    // SAFETY: the caller's (AVX2); loads and stores at i + 8 <= full <= ne of both
    // rows, and of four f64 into c at 0 or 4.
    unsafe {
        use std::arch::x86_64::*;
        let (vinv, zero) = (_mm256_set1_pd(inv), _mm256_setzero_pd());
        let mut lanes = [zero; 2];
        let (ps, po) = (sum.as_mut_ptr(), slot.as_mut_ptr());
        for i in (0..full).step_by(L) {
            for (h, lane) in lanes.iter_mut().enumerate() {
                let (s, o) = (_mm256_loadu_pd(ps.add(i + 4 * h)), _mm256_loadu_pd(po.add(i + 4 * h)));
                let pred = _mm256_mul_pd(s, vinv);
                _mm256_storeu_pd(ps.add(i + 4 * h), _mm256_add_pd(s, _mm256_sub_pd(pred, o)));
                _mm256_storeu_pd(po.add(i + 4 * h), pred);
                // pred >= 0 (ordered: NaN is not) keeps pred, else +0.0: clip(pred)
                *lane = _mm256_add_pd(*lane, _mm256_and_pd(pred, _mm256_cmp_pd::<_CMP_GE_OQ>(pred, zero)));
            }
        }
        _mm256_storeu_pd(c.as_mut_ptr(), lanes[0]);
        _mm256_storeu_pd(c.as_mut_ptr().add(4), lanes[1]);
    }
    for j in 0..ne - full {
        let pred = sum[full + j] * inv;
        sum[full + j] += pred - slot[full + j];
        slot[full + j] = pred;
        c[j] += if pred >= 0.0 { pred } else { 0.0 };
    }
    fold_lanes(c)
}

/// `ema:alpha=A`: `e(0) = p(0)`, `e(t) = A p(t) + (1 - A) e(t-1)`; predicts `e(o-1)`.
#[derive(Debug, Clone, Copy)]
pub struct Ema {
    pub alpha: f64,
}

impl Ema {
    /// Advances the average `e` (the value at `from - 1`) through steps `from .. to`.
    fn advance(&self, h: &LayerView, e: &mut [f64], from: usize, to: usize) {
        for t in from..to {
            if t == 0 {
                e.copy_from_slice(h.row(0));
            } else {
                e.iter_mut().zip(h.row(t)).for_each(|(a, p)| *a = self.alpha * p + (1.0 - self.alpha) * *a);
            }
        }
    }
}

stateless!(Ema, |_| 1, |f| canonical("ema", &[("alpha", f.alpha.to_string())]);
    fn on_device(&self) -> Option<DeviceModel> {
        Some(DeviceModel::Ema { alpha: self.alpha })
    }
);

impl Fitted for Ema {
    fn predict(&self, h: &LayerView, origin: usize, out: &mut [f64]) -> usize {
        let mut e = vec![0.0; h.experts()];
        self.advance(h, &mut e, 0, origin);
        out.chunks_mut(h.experts()).for_each(|o| o.copy_from_slice(&e));
        0
    }
    fn flat(&self) -> bool {
        true
    }
    /// One pass over the layer for all origins instead of one per origin.
    fn predict_origins(&self, layer: &LayerView, origins: &[usize], _lens: &[usize], emit: &mut Emit<'_>) -> anyhow::Result<()> {
        let mut e = vec![0.0; layer.experts()];
        let mut done = 0;
        for (i, &o) in origins.iter().enumerate() {
            assert!(o >= done, "origins must ascend");
            self.advance(&layer.until(o), &mut e, done, o);
            done = o;
            emit(i, &mut e.clone(), None, 0);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_step_in_avx2_registers_has_the_bits_of_the_lanes() {
        for ne in [0, 1, 7, 8, 13, 16, 67] {
            let sum: Vec<f64> = crate::lcg_noise(3 + ne as u64, ne).iter().map(|u| u * 40.0 - 5.0).collect();
            let slot: Vec<f64> = crate::lcg_noise(11 + ne as u64, ne).iter().map(|u| u - 0.2).collect();
            let (mut s1, mut o1, mut s2, mut o2) = (sum.clone(), slot.clone(), sum.clone(), slot.clone());
            let a = sw_avg_step_summed(&mut s1, 37, &mut o1);
            let b = sw_avg_step_summed_lanes(&mut s2, 37, &mut o2);
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!((a.to_bits(), bits(&s1), bits(&o1)), (b.to_bits(), bits(&s2), bits(&o2)), "{ne} experts");
            // independently: the step as sw_avg_step makes it, and renormalize's sum
            let (mut s3, mut o3, mut row) = (sum.clone(), slot.clone(), vec![0.0; ne]);
            let mut head = 0;
            sw_avg_step(&mut o3, &mut s3, &mut head, 1, &mut row);
            let (mut s4, mut o4) = (sum.clone(), slot.clone());
            sw_avg_step_summed_lanes(&mut s4, 1, &mut o4);
            assert_eq!((bits(&s4), bits(&o4)), (bits(&s3), bits(&row)), "{ne} experts");
            let want = crate::simd::lane_sum_by(&row, |v| if v >= 0.0 { v } else { 0.0 });
            assert_eq!(sw_avg_step_summed(&mut sum.clone(), 1, &mut slot.clone()).to_bits(), want.to_bits(), "{ne} experts");
        }
    }

    // Two experts, 4 steps: e0 = .5, .2, .4, .1 ; e1 = 1 - e0
    const P: [f64; 8] = [0.5, 0.5, 0.2, 0.8, 0.4, 0.6, 0.1, 0.9];

    fn predict(f: &dyn Forecaster, origin: usize, len: usize) -> Vec<f64> {
        let v = LayerView::new(&P, 2);
        let mut out = vec![f64::NAN; len * 2];
        f.fit(&v.until(origin), &FitContext::cpu()).unwrap().predict(&v.until(origin), origin, &mut out);
        out
    }

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12)
    }

    #[test]
    fn last_repeats_the_previous_step() {
        assert_eq!(predict(&Last, 3, 2), vec![0.4, 0.6, 0.4, 0.6]);
    }

    #[test]
    fn mean_averages_the_window() {
        // mean of .2, .4 and .8, .6
        assert!(close(&predict(&WindowMean { w: 2 }, 3, 2), &[0.3, 0.7, 0.3, 0.7]));
    }

    #[test]
    fn sw_avg_feeds_its_own_predictions_back() {
        // e0, w = 2, origin 4: history .4, .1 -> .25; then mean(.1, .25) = .175;
        // then mean(.25, .175) = .2125
        let out = predict(&SlidingWindowAverage { w: 2 }, 4, 3);
        let e0: Vec<f64> = out.iter().step_by(2).copied().collect();
        assert!(close(&e0, &[0.25, 0.175, 0.2125]), "{e0:?}");
        let e1: Vec<f64> = out.iter().skip(1).step_by(2).copied().collect();
        assert!(close(&e1, &[0.75, 0.825, 0.7875]), "{e1:?}");
    }

    #[test]
    fn ema_follows_its_recursion() {
        // alpha .5: e0 = .5, .35, .375, .2375
        let f = Ema { alpha: 0.5 };
        assert!(close(&predict(&f, 4, 1), &[0.2375, 0.7625]));
        assert!(close(&predict(&f, 1, 1), &[0.5, 0.5]));
        // forecast_layer over several origins agrees with one origin at a time
        let v = LayerView::new(&P, 2);
        let mut got = Vec::new();
        f.predict_origins(&v, &[1, 2, 4], &[1, 2, 1], &mut |i, out, _, _| got.push((i, out.to_vec()))).unwrap();
        // one row each: the model is flat
        assert!(close(&got[1].1, &predict(&f, 2, 1)));
        assert!(close(&got[2].1, &predict(&f, 4, 1)));
        assert_eq!(predict(&f, 2, 2)[..2], predict(&f, 2, 2)[2..]);
    }
}
