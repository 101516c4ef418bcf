//! The rolling-origin protocol and its metrics (docs/reference.md, "Forecasting protocol"
//! and "Metrics").
//!
//! Every forecaster of a run is scored on the same origins `start, start +
//! stride, ...`; horizon `h` on the origins with `o + h <= T`. For horizon `h` the
//! first `h` predicted steps are scored:
//! `mae_pp = 100 · mean |p̂ − p|`, `rmse_pp = 100 · sqrt(mean (p̂ − p)²)` over every
//! (origin, expert, step), and `tv_pct = 100 · mean over (origin, step) of
//! ½ Σ_e |p̂ − p|`.

use crate::forecast::{FitContext, Forecaster, LayerView, renormalize};

pub mod cuda;

/// Which origins a score covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Regime {
    All,
    /// Origins at or after the layer's transition step.
    Stable,
}

impl Regime {
    pub fn as_str(&self) -> &'static str {
        match self {
            Regime::All => "all",
            Regime::Stable => "stable",
        }
    }
}

/// How forecasts are made and scored.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Protocol {
    /// Ascending, distinct horizons.
    pub horizons: Vec<usize>,
    pub stride: usize,
    /// The first origin (step index).
    pub start: usize,
    /// Clip at 0 and renormalise real forecasts.
    pub renormalize: bool,
}

impl Protocol {
    pub fn max_horizon(&self) -> usize {
        *self.horizons.last().expect("at least one horizon")
    }
    /// Origins for a trace of `steps` steps: every origin with at least one step to score.
    pub fn origins(&self, steps: usize) -> Vec<usize> {
        (self.start.max(1)..steps).step_by(self.stride).collect()
    }
}

/// The default first origin: the longest history any forecaster needs (at least 1).
pub fn default_start(forecasters: &[Box<dyn Forecaster>]) -> usize {
    forecasters.iter().map(|f| f.history()).max().unwrap_or(1).max(1)
}

/// One row of `metrics.parquet` for a (layer, forecaster).
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    pub horizon: usize,
    pub regime: Regime,
    pub origins: u64,
    /// `None` when no origin was scored.
    pub mae_pp: Option<f64>,
    pub rmse_pp: Option<f64>,
    pub tv_pct: Option<f64>,
    pub fallbacks: u64,
}

#[derive(Default, Clone)]
struct Acc {
    abs: f64,
    sq: f64,
    cells: u64,
    steps: u64,
    origins: u64,
    fallbacks: u64,
}

impl Acc {
    fn score(&self, horizon: usize, regime: Regime) -> Score {
        let has = self.cells > 0;
        Score {
            horizon,
            regime,
            origins: self.origins,
            mae_pp: has.then(|| 100.0 * self.abs / self.cells as f64),
            rmse_pp: has.then(|| 100.0 * (self.sq / self.cells as f64).sqrt()),
            tv_pct: has.then(|| 100.0 * 0.5 * self.abs / self.steps as f64),
            fallbacks: self.fallbacks,
        }
    }
}

/// Forecasts kept for `forecasts.parquet`: each origin's prediction as it came,
/// without the columns that follow from the origin and the layer (expert, step
/// ahead, actual value), which [`SavedForecasts::rows`] rebuilds while writing.
/// That keeps 8 bytes a row in memory (16 with standard errors) instead of 56.
#[derive(Debug, Default, Clone)]
pub struct SavedForecasts {
    /// Origin (step index) and steps predicted, per origin.
    origins: Vec<(usize, usize)>,
    /// Step-major predictions of every origin, one after another.
    predicted: Vec<f64>,
    /// The model's standard errors laid out like `predicted` (NaN: none), or empty
    /// when the forecaster gave none at all.
    stderr: Vec<f64>,
}

/// One row of `forecasts.parquet` for a layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SavedRow {
    pub expert: usize,
    /// Origin as a step index.
    pub origin: usize,
    pub k: usize,
    pub predicted: f64,
    pub actual: f64,
    /// The model's standard error of `predicted` (ARIMA), before renormalisation.
    pub stderr: Option<f64>,
}

impl SavedForecasts {
    /// Room for `rows` predictions (see [`saved_rows`]), so that keeping them never
    /// holds twice their size while a vector grows.
    pub fn with_capacity(rows: usize) -> SavedForecasts {
        SavedForecasts { predicted: Vec::with_capacity(rows), ..Default::default() }
    }
    /// Keeps origin `origin`'s `len` steps: `pred` holds them, or one row that holds
    /// for each of them (a [flat](crate::forecast::Fitted::flat) model's).
    fn push(&mut self, layer: &LayerView, origin: usize, len: usize, pred: &[f64], se: Option<&[f64]>) {
        let before = self.predicted.len();
        self.origins.push((origin, len));
        if pred.len() == len * layer.experts() {
            self.predicted.extend_from_slice(pred);
        } else {
            (0..len).for_each(|_| self.predicted.extend_from_slice(pred));
        }
        match se {
            Some(se) => {
                self.stderr.resize(before, f64::NAN);
                self.stderr.extend_from_slice(se);
            }
            None if !self.stderr.is_empty() => self.stderr.resize(self.predicted.len(), f64::NAN),
            None => {}
        }
    }
    pub fn len(&self) -> usize {
        self.predicted.len()
    }
    pub fn is_empty(&self) -> bool {
        self.predicted.is_empty()
    }
    /// The rows in file order (origin, then step ahead, then expert); `layer` is the
    /// layer the forecasts were made on.
    pub fn rows<'a>(&'a self, layer: &'a LayerView<'a>) -> impl Iterator<Item = SavedRow> + 'a {
        let ne = layer.experts();
        let mut first = 0;
        self.origins.iter().flat_map(move |&(origin, len)| {
            let base = first;
            first += len * ne;
            (0..len * ne).map(move |j| {
                let (k, e) = (j / ne, j % ne);
                SavedRow {
                    expert: e,
                    origin,
                    k,
                    predicted: self.predicted[base + j],
                    actual: layer.at(origin + k, e),
                    stderr: self.stderr.get(base + j).copied().filter(|v| v.is_finite()),
                }
            })
        })
    }
}

/// Rows `forecasts.parquet` gets from one (layer, forecaster): every origin's
/// forecast up to the largest horizon or the trace's end, for every expert.
pub fn saved_rows(proto: &Protocol, steps: usize, experts: usize) -> u64 {
    proto.origins(steps).iter().map(|&o| (proto.max_horizon().min(steps - o) * experts) as u64).sum()
}

/// Scores one forecaster on one layer. `stable_from` is the layer's transition
/// step index (`None`: no stable origins). Returns one score per horizon and
/// regime, horizons ascending, `all` before `stable`.
pub fn evaluate_layer(
    layer: &LayerView,
    f: &dyn Forecaster,
    proto: &Protocol,
    stable_from: Option<usize>,
    save: Option<&mut SavedForecasts>,
) -> anyhow::Result<Vec<Score>> {
    evaluate_layer_progress(layer, f, proto, stable_from, save, &FitContext::cpu(), &|_| {}, None)
}

/// What [`evaluate_layer_progress`] keeps for expert placement: for each origin, the
/// mean of its first `steps` predicted rows as they were scored (renormalised for a
/// real forecaster), so that placement need not predict (or fit) again.
pub struct KeptMeans<'a> {
    pub steps: usize,
    /// One row of `experts` values per origin, in origin order (left empty for a
    /// forecaster asked once per horizon).
    pub means: &'a mut Vec<Vec<f64>>,
}

/// The mean of the first `steps` rows of `pred` (`experts` a row; one row: a flat
/// forecast).
pub fn mean_of_rows(pred: &[f64], experts: usize, steps: usize) -> Vec<f64> {
    let rows: Vec<&[f64]> = pred.chunks(experts).take(steps.max(1)).collect();
    let mut m = vec![0.0; experts];
    for row in &rows {
        m.iter_mut().zip(*row).for_each(|(a, &x)| *a += x);
    }
    m.iter_mut().for_each(|a| *a /= rows.len() as f64);
    m
}

/// Running error sums kept in the eight lanes of [`crate::simd`]: element `i` of every
/// step's row adds `|p̂ − p|` to `abs[i mod 8]` and `(p̂ − p)²` to `sq[i mod 8]`, step
/// after step, and the lanes are added pairwise only when a total is read off
/// ([`ErrLanes::sums`]). The same bits whatever the threads or the CPU.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ErrLanes {
    abs: [f64; crate::simd::LANES],
    sq: [f64; crate::simd::LANES],
}

impl ErrLanes {
    /// `(Σ |err|, Σ err²)` of every step added so far.
    #[inline(always)]
    pub(crate) fn sums(&self) -> (f64, f64) {
        use crate::simd::fold_lanes;
        (fold_lanes(self.abs), fold_lanes(self.sq))
    }
}

/// Adds one step's errors (`pred` against `actual`, cut to the shorter) to `acc`, in
/// plain Rust: the reference every faster path has the bits of.
#[inline(always)]
fn add_step_error_lanes(pred: &[f64], actual: &[f64], acc: &mut ErrLanes) {
    use crate::simd::LANES as L;
    let n = pred.len().min(actual.len());
    let (pred, actual) = (&pred[..n], &actual[..n]);
    let full = n / L * L;
    for i in (0..full).step_by(L) {
        let p: &[f64; L] = pred[i..i + L].try_into().unwrap();
        let y: &[f64; L] = actual[i..i + L].try_into().unwrap();
        for j in 0..L {
            let d = p[j] - y[j];
            acc.abs[j] += d.abs();
            acc.sq[j] += d * d;
        }
    }
    for (j, (p, y)) in pred[full..].iter().zip(&actual[full..]).enumerate() {
        let d = p - y;
        acc.abs[j] += d.abs();
        acc.sq[j] += d * d;
    }
}

/// A row's last `n mod 8` values padded with zeros to eight: a padded lane adds
/// `|0 − 0| = 0` and `0²`, which leaves it as it was.
#[inline(always)]
fn padded_tail(row: &[f64], full: usize, n: usize) -> [f64; 8] {
    let mut t = [0.0; 8];
    t[..n - full].copy_from_slice(&row[full..n]);
    t
}

/// Adds the errors of `steps` steps one after another: step `k`'s prediction
/// `pred[k * pstride..][..n]` (`pstride` 0: one flat row for every step) against
/// `actual[k * n..][..n]`. The same operations in the same order as
/// [`add_step_error_lanes`] step after step, so the same bits; the lanes stay in registers
/// for the whole span instead of going to memory and back at every step (which,
/// with a layer of 16 experts, took more than the step's own arithmetic).
#[inline(always)]
pub(crate) fn add_span_error(pred: &[f64], pstride: usize, actual: &[f64], n: usize, steps: usize, acc: &mut ErrLanes) {
    assert!(actual.len() >= steps * n && (steps == 0 || pred.len() >= (steps - 1) * pstride + n), "a span's rows");
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx2() {
        // SAFETY: the CPU has AVX2 (checked just above); the rows are in bounds (asserted).
        return unsafe { add_span_error_avx2(pred, pstride, actual, n, steps, acc) };
    }
    add_span_error_lanes(pred, pstride, actual, n, steps, acc)
}

/// [`add_span_error`] as plain Rust: [`add_step_error_lanes`] step after step.
#[inline(always)]
fn add_span_error_lanes(pred: &[f64], pstride: usize, actual: &[f64], n: usize, steps: usize, acc: &mut ErrLanes) {
    for k in 0..steps {
        add_step_error_lanes(&pred[k * pstride..k * pstride + n], &actual[k * n..(k + 1) * n], acc);
    }
}

/// [`add_span_error`] with the eight lanes in two AVX2 registers each, the same
/// operations on each lane in the same order (so the same bits), written out because
/// the compiler's own vectorisation reversed lanes and reloaded constants inside the
/// loop. The lanes are loaded before the first step and stored after the last.
///
/// # Safety
/// The CPU must have AVX2, and the function is called from code compiled for AVX2
/// (an [`avx2_twin`](crate::simd::avx2_twin)), into which it is inlined; `actual`
/// holds `steps` rows of `n` and `pred` its last row at `(steps - 1) * pstride`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn add_span_error_avx2(pred: &[f64], pstride: usize, actual: &[f64], n: usize, steps: usize, acc: &mut ErrLanes) {
    let full = n / 8 * 8;
    // SAFETY: the caller's (AVX2, the rows in bounds); the loads are at i + 8 <= full
    // <= n of a row, or of eight-value arrays, the stores of four f64 into an [f64; 8]
    // at 0 or 4.
    unsafe {
        use std::arch::x86_64::*;
        const { assert!(crate::simd::LANES == 8) };
        let abs = _mm256_castsi256_pd(_mm256_set1_epi64x(i64::MAX));
        let (pa, ps) = (acc.abs.as_mut_ptr(), acc.sq.as_mut_ptr());
        let (mut a0, mut a1, mut s0, mut s1) = (_mm256_loadu_pd(pa), _mm256_loadu_pd(pa.add(4)), _mm256_loadu_pd(ps), _mm256_loadu_pd(ps.add(4)));
        // A macro, not a closure: a closure is a function of its own, not compiled for
        // AVX2, and its intrinsics would be calls.
        macro_rules! eight {
            ($p:expr, $y:expr) => {{
                let (p, y): (*const f64, *const f64) = ($p, $y);
                let (d0, d1) = (_mm256_sub_pd(_mm256_loadu_pd(p), _mm256_loadu_pd(y)), _mm256_sub_pd(_mm256_loadu_pd(p.add(4)), _mm256_loadu_pd(y.add(4))));
                a0 = _mm256_add_pd(a0, _mm256_and_pd(d0, abs));
                a1 = _mm256_add_pd(a1, _mm256_and_pd(d1, abs));
                s0 = _mm256_add_pd(s0, _mm256_mul_pd(d0, d0));
                s1 = _mm256_add_pd(s1, _mm256_mul_pd(d1, d1));
            }};
        }
        for k in 0..steps {
            let (prow, yrow) = (&pred[k * pstride..k * pstride + n], &actual[k * n..(k + 1) * n]);
            let (p, y) = (prow.as_ptr(), yrow.as_ptr());
            for i in (0..full).step_by(8) {
                eight!(p.add(i), y.add(i));
            }
            if full < n {
                let (tp, ty) = (padded_tail(prow, full, n), padded_tail(yrow, full, n));
                eight!(tp.as_ptr(), ty.as_ptr());
            }
        }
        _mm256_storeu_pd(pa, a0);
        _mm256_storeu_pd(pa.add(4), a1);
        _mm256_storeu_pd(ps, s0);
        _mm256_storeu_pd(ps.add(4), s1);
    }
}

/// [`add_span_error`] of two flat predictions at once, each against its own `steps`
/// rows of `n`: their additions side by side, step after step (two independent
/// chains instead of one), the lanes in registers for the whole span; each pair's
/// bits those of [`add_step_error_lanes`].
#[inline(always)]
fn add_span_error2(p0: &[f64], y0: &[f64], p1: &[f64], y1: &[f64], n: usize, steps: usize, acc: [&mut ErrLanes; 2]) {
    assert!(p0.len() == n && p1.len() == n && y0.len() >= steps * n && y1.len() >= steps * n, "two flat rows and their spans");
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx2() {
        // SAFETY: the CPU has AVX2 (checked just above); the rows are in bounds (asserted).
        return unsafe { add_span_error2_avx2(p0, y0, p1, y1, n, steps, acc) };
    }
    add_span_error2_lanes(p0, y0, p1, y1, n, steps, acc)
}

/// [`add_span_error2`] as plain Rust: [`add_step_error_lanes`] of each pair, step
/// after step.
#[inline(always)]
fn add_span_error2_lanes(p0: &[f64], y0: &[f64], p1: &[f64], y1: &[f64], n: usize, steps: usize, acc: [&mut ErrLanes; 2]) {
    let [a0, a1] = acc;
    for k in 0..steps {
        add_step_error_lanes(p0, &y0[k * n..(k + 1) * n], a0);
        add_step_error_lanes(p1, &y1[k * n..(k + 1) * n], a1);
    }
}

/// [`add_span_error2`] in AVX2 registers: [`add_span_error_avx2`]'s loop for two
/// pairs at once.
///
/// # Safety
/// As [`add_span_error_avx2`]; `p0` and `p1` hold `n` values, `y0` and `y1` `steps`
/// rows of `n`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn add_span_error2_avx2(p0: &[f64], y0: &[f64], p1: &[f64], y1: &[f64], n: usize, steps: usize, acc: [&mut ErrLanes; 2]) {
    let full = n / 8 * 8;
    // SAFETY: as in add_span_error_avx2, for both pairs.
    unsafe {
        use std::arch::x86_64::*;
        let abs = _mm256_castsi256_pd(_mm256_set1_epi64x(i64::MAX));
        let [c0, c1] = acc;
        macro_rules! load {
            ($v:expr) => {{
                let v: &[f64; 8] = $v;
                [_mm256_loadu_pd(v.as_ptr()), _mm256_loadu_pd(v.as_ptr().add(4))]
            }};
        }
        let (mut a, mut s, mut b, mut t) = (load!(&c0.abs), load!(&c0.sq), load!(&c1.abs), load!(&c1.sq));
        macro_rules! eight {
            ($pp:expr, $py:expr, $qp:expr, $qy:expr) => {{
                let (pp, py, qp, qy): (*const f64, *const f64, *const f64, *const f64) = ($pp, $py, $qp, $qy);
                for h in 0..2 {
                    let d = _mm256_sub_pd(_mm256_loadu_pd(pp.add(4 * h)), _mm256_loadu_pd(py.add(4 * h)));
                    let e = _mm256_sub_pd(_mm256_loadu_pd(qp.add(4 * h)), _mm256_loadu_pd(qy.add(4 * h)));
                    a[h] = _mm256_add_pd(a[h], _mm256_and_pd(d, abs));
                    b[h] = _mm256_add_pd(b[h], _mm256_and_pd(e, abs));
                    s[h] = _mm256_add_pd(s[h], _mm256_mul_pd(d, d));
                    t[h] = _mm256_add_pd(t[h], _mm256_mul_pd(e, e));
                }
            }};
        }
        let (pp, qp) = (p0.as_ptr(), p1.as_ptr());
        let tails = (full < n).then(|| (padded_tail(p0, full, n), padded_tail(p1, full, n)));
        for k in 0..steps {
            let (r0, r1) = (&y0[k * n..(k + 1) * n], &y1[k * n..(k + 1) * n]);
            let (py, qy) = (r0.as_ptr(), r1.as_ptr());
            for i in (0..full).step_by(8) {
                eight!(pp.add(i), py.add(i), qp.add(i), qy.add(i));
            }
            if let Some((tp, tq)) = &tails {
                let (ty, tz) = (padded_tail(r0, full, n), padded_tail(r1, full, n));
                eight!(tp.as_ptr(), ty.as_ptr(), tq.as_ptr(), tz.as_ptr());
            }
        }
        macro_rules! store {
            ($v:expr, $out:expr) => {{
                let (v, out): ([__m256d; 2], &mut [f64; 8]) = ($v, $out);
                _mm256_storeu_pd(out.as_mut_ptr(), v[0]);
                _mm256_storeu_pd(out.as_mut_ptr().add(4), v[1]);
            }};
        }
        store!(a, &mut c0.abs);
        store!(s, &mut c0.sq);
        store!(b, &mut c1.abs);
        store!(t, &mut c1.sq);
    }
}

/// How a row is turned into the prediction that is scored ([`Running::add_scaled`]):
/// as it was made, clipped at 0 and multiplied by a row's `1 / Σ` (renormalised, as
/// [`renormalize`] does it), or one value for every expert (a row that summed to 0).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Scale {
    AsMade,
    By(f64),
    Uniform(f64),
}

impl Scale {
    #[inline(always)]
    fn apply(self, v: f64) -> f64 {
        match self {
            Scale::AsMade => v,
            Scale::By(inv) => (if v >= 0.0 { v } else { 0.0 }) * inv,
            Scale::Uniform(u) => u,
        }
    }
}

/// [`add_step_error_lanes`] of `scale` applied to each of `pred`'s values.
#[inline(always)]
fn add_scaled_step_error(pred: &[f64], scale: Scale, actual: &[f64], acc: &mut ErrLanes) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx2() {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { add_scaled_step_error_avx2(pred, scale, actual, acc) };
    }
    add_scaled_step_error_lanes(pred, scale, actual, acc)
}

/// [`add_scaled_step_error`] as plain Rust.
#[inline(always)]
fn add_scaled_step_error_lanes(pred: &[f64], scale: Scale, actual: &[f64], acc: &mut ErrLanes) {
    use crate::simd::LANES as L;
    let n = pred.len().min(actual.len());
    for (i, (&p, &y)) in pred[..n].iter().zip(&actual[..n]).enumerate() {
        let d = scale.apply(p) - y;
        acc.abs[i % L] += d.abs();
        acc.sq[i % L] += d * d;
    }
}

/// [`add_scaled_step_error`] in AVX2 registers, each lane's operations those of
/// [`add_scaled_step_error_lanes`] in the same order; the last `n mod 8` values (if
/// any) as there, one by one.
///
/// # Safety
/// The CPU must have AVX2. Called from code compiled for AVX2 (an
/// [`avx2_twin`](crate::simd::avx2_twin)), into which it is inlined.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn add_scaled_step_error_avx2(pred: &[f64], scale: Scale, actual: &[f64], acc: &mut ErrLanes) {
    let n = pred.len().min(actual.len());
    let full = n / 8 * 8;
    // SAFETY: as in add_span_error_avx2.
    unsafe {
        use std::arch::x86_64::*;
        let abs = _mm256_castsi256_pd(_mm256_set1_epi64x(i64::MAX));
        let zero = _mm256_setzero_pd();
        let (inv, uniform) = match scale {
            Scale::By(x) => (_mm256_set1_pd(x), zero),
            Scale::Uniform(u) => (zero, _mm256_set1_pd(u)),
            Scale::AsMade => (zero, zero),
        };
        let (pa, ps) = (acc.abs.as_mut_ptr(), acc.sq.as_mut_ptr());
        let (mut a0, mut a1, mut s0, mut s1) = (_mm256_loadu_pd(pa), _mm256_loadu_pd(pa.add(4)), _mm256_loadu_pd(ps), _mm256_loadu_pd(ps.add(4)));
        // A macro, not a closure (see add_span_error_avx2).
        macro_rules! four {
            ($p:expr, $y:expr) => {{
                let p = _mm256_loadu_pd($p);
                let v = match scale {
                    Scale::AsMade => p,
                    // p >= 0 (ordered: NaN is not) keeps p, else +0.0: clip(p)
                    Scale::By(_) => _mm256_mul_pd(_mm256_and_pd(p, _mm256_cmp_pd::<_CMP_GE_OQ>(p, zero)), inv),
                    Scale::Uniform(_) => uniform,
                };
                _mm256_sub_pd(v, _mm256_loadu_pd($y))
            }};
        }
        let (p, y) = (pred.as_ptr(), actual.as_ptr());
        for i in (0..full).step_by(8) {
            let (d0, d1) = (four!(p.add(i), y.add(i)), four!(p.add(i + 4), y.add(i + 4)));
            a0 = _mm256_add_pd(a0, _mm256_and_pd(d0, abs));
            a1 = _mm256_add_pd(a1, _mm256_and_pd(d1, abs));
            s0 = _mm256_add_pd(s0, _mm256_mul_pd(d0, d0));
            s1 = _mm256_add_pd(s1, _mm256_mul_pd(d1, d1));
        }
        _mm256_storeu_pd(pa, a0);
        _mm256_storeu_pd(pa.add(4), a1);
        _mm256_storeu_pd(ps, s0);
        _mm256_storeu_pd(ps.add(4), s1);
    }
    for j in 0..n - full {
        let d = scale.apply(pred[full + j]) - actual[full + j];
        acc.abs[j] += d.abs();
        acc.sq[j] += d * d;
    }
}

crate::simd::avx2_twin!(
    /// One origin's error sums `(Σ |err|, Σ err²)` over its first `h` steps, for each
    /// horizon `h` in `horizons` (ascending) that its `steps` reach: running sums over
    /// the steps ahead, read off at each horizon. `pred` holds the `steps` predicted
    /// rows, or one row that holds for every step (a flat forecast).
    fn origin_sums(layer: &LayerView, origin: usize, horizons: &[usize], steps: usize, pred: &[f64], out: &mut [(f64, f64)]) => origin_sums_inner
);

/// An origin's running error sums over its steps ahead, read off into `out[i]` when
/// step `horizons[i]` is added.
pub(crate) struct Running<'a> {
    horizons: &'a [usize],
    next: usize,
    acc: ErrLanes,
}

impl<'a> Running<'a> {
    pub(crate) fn new(horizons: &'a [usize]) -> Self {
        debug_assert!(horizons.first().is_none_or(|&h| h >= 1) && horizons.is_sorted_by(|a, b| a < b), "horizons from 1, ascending");
        Running { horizons, next: 0, acc: ErrLanes::default() }
    }
    /// Whether every horizon has been read off.
    pub(crate) fn done(&self) -> bool {
        self.next == self.horizons.len()
    }
    /// Adds step `k`'s prediction, `scale` applied to `pred`'s values, against the
    /// actual `row` of the layer.
    #[inline(always)]
    pub(crate) fn add_scaled(&mut self, k: usize, pred: &[f64], scale: Scale, actual: &[f64], out: &mut [(f64, f64)]) {
        add_scaled_step_error(pred, scale, actual, &mut self.acc);
        self.read_off(k, out);
    }
    /// The next horizon to read off (`usize::MAX` once all are): the steps before
    /// it can be added as one span without looking ([`add_span_error`]).
    #[inline(always)]
    fn next_end(&self) -> usize {
        self.horizons.get(self.next).copied().unwrap_or(usize::MAX)
    }
    /// Adds `origin`'s steps `k..steps` (of `pred`: one flat row, or a row for each
    /// step from 0) against the layer's rows from `origin + k`, a span from horizon to
    /// horizon ([`add_span_error`]: the same additions in the same order as step by
    /// step), reading the sums off at each.
    #[inline(always)]
    fn add_until(&mut self, layer: &LayerView, origin: usize, mut k: usize, steps: usize, pred: &[f64], out: &mut [(f64, f64)]) {
        let ne = layer.experts();
        let flat = pred.len() == ne;
        while k < steps && !self.done() {
            let end = self.next_end().min(steps);
            let (p, stride) = if flat { (pred, 0) } else { (&pred[k * ne..end * ne], ne) };
            add_span_error(p, stride, &layer.raw()[(origin + k) * ne..(origin + end) * ne], ne, end - k, &mut self.acc);
            k = end;
            self.read_off(k - 1, out);
        }
    }
    /// Reads the sums off into `out` at each horizon that ends with step `k`.
    #[inline(always)]
    fn read_off(&mut self, k: usize, out: &mut [(f64, f64)]) {
        // The lanes added up only under the test (written as a loop's condition, the
        // compiler hoisted the adding above it, into every step).
        if self.horizons.get(self.next) == Some(&(k + 1)) {
            let sums = self.acc.sums();
            while self.horizons.get(self.next) == Some(&(k + 1)) {
                out[self.next] = sums;
                self.next += 1;
            }
        }
    }
}

#[inline(always)]
fn origin_sums_inner(layer: &LayerView, origin: usize, horizons: &[usize], steps: usize, pred: &[f64], out: &mut [(f64, f64)]) {
    Running::new(horizons).add_until(layer, origin, 0, steps, pred, out);
}

crate::simd::avx2_twin!(
    /// [`origin_sums`] of two origins' flat predictions at once (`o[i]`, `steps[i]`,
    /// `pred[i]`, `out[i]`): the two origins' steps side by side while both have steps
    /// and horizons left ([`add_span_error2`]), then each alone; each origin's sums are
    /// those of [`origin_sums`], bit for bit.
    fn origin_sums_pair(layer: &LayerView, o: [usize; 2], horizons: &[usize], steps: [usize; 2], pred: [&[f64]; 2], out: [&mut [(f64, f64)]; 2]) => origin_sums_pair_inner
);

#[inline(always)]
fn origin_sums_pair_inner(layer: &LayerView, o: [usize; 2], horizons: &[usize], steps: [usize; 2], pred: [&[f64]; 2], out: [&mut [(f64, f64)]; 2]) {
    let ne = layer.experts();
    assert!(pred[0].len() == ne && pred[1].len() == ne, "flat predictions: one row each");
    let [out0, out1] = out;
    let (mut r0, mut r1) = (Running::new(horizons), Running::new(horizons));
    let both = steps[0].min(steps[1]);
    let rows = |o: usize, k: usize, end: usize| &layer.raw()[(o + k) * ne..(o + end) * ne];
    // From horizon to horizon (of either origin), a span of steps at a time.
    let mut k = 0;
    while k < both && !r0.done() && !r1.done() {
        let end = r0.next_end().min(r1.next_end()).min(both);
        add_span_error2(pred[0], rows(o[0], k, end), pred[1], rows(o[1], k, end), ne, end - k, [&mut r0.acc, &mut r1.acc]);
        k = end;
        r0.read_off(k - 1, out0);
        r1.read_off(k - 1, out1);
    }
    r0.add_until(layer, o[0], k, steps[0], pred[0], out0);
    r1.add_until(layer, o[1], k, steps[1], pred[1], out1);
}

crate::simd::avx2_twin!(
    /// [`origin_sums`] of a prediction of whole rows, each row renormalised first if
    /// `real` (in place, while it is in cache; rows past the last horizon too, so that
    /// saved forecasts are renormalised).
    fn origin_sums_rows(layer: &LayerView, origin: usize, horizons: &[usize], pred: &mut [f64], real: bool, out: &mut [(f64, f64)]) => origin_sums_rows_inner
);

#[inline(always)]
fn origin_sums_rows_inner(layer: &LayerView, origin: usize, horizons: &[usize], pred: &mut [f64], real: bool, out: &mut [(f64, f64)]) {
    let ne = layer.experts();
    let steps = pred.len() / ne;
    let mut run = Running::new(horizons);
    // Toward the next horizon, up to ROWS_AT_ONCE rows at a time (still in cache
    // when they are added): renormalised, then added, the same additions in the same
    // order as row by row (a read-off where no horizon ends reads nothing).
    const ROWS_AT_ONCE: usize = 64;
    let mut k = 0;
    while k < steps && !run.done() {
        let end = run.next_end().min(steps).min(k + ROWS_AT_ONCE);
        let span = &mut pred[k * ne..end * ne];
        if real {
            renormalize(span, ne);
        }
        add_span_error(span, ne, &layer.raw()[(origin + k) * ne..(origin + end) * ne], ne, end - k, &mut run.acc);
        k = end;
        run.read_off(k - 1, out);
    }
    if real {
        renormalize(&mut pred[k * ne..steps * ne], ne);
    }
}

/// [`evaluate_layer`] fitting with `ctx`, calling `done(experts)` as each origin's
/// forecast of every expert series arrives (for a progress bar of series forecasts
/// per second), and keeping each origin's mean prediction in `keep` when given. The
/// forecaster is fitted once, on the steps before the first origin.
///
/// Each origin's error sums are taken in one pass over its steps ahead and read off
/// at every horizon; a [flat](crate::forecast::Fitted::flat) forecast is scored
/// from its one row, origins in parallel. The origins' sums are then added in
/// origin order, so the bits do not depend on the threads.
pub fn evaluate_layer_progress(
    layer: &LayerView,
    f: &dyn Forecaster,
    proto: &Protocol,
    stable_from: Option<usize>,
    mut save: Option<&mut SavedForecasts>,
    ctx: &FitContext,
    done: &(dyn Fn(u64) + Sync),
    mut keep: Option<KeptMeans>,
) -> anyhow::Result<Vec<Score>> {
    use rayon::prelude::*;
    let nt = layer.steps();
    let ne = layer.experts();
    let origins = proto.origins(nt);
    let horizons = &proto.horizons;
    let nh = horizons.len();
    // sums[i * nh + hi]: origin i's error sums at horizon hi; fbs likewise its fallbacks.
    let mut sums = vec![(0.0, 0.0); origins.len() * nh];
    let mut fbs = vec![0usize; origins.len() * nh];
    let real = f.is_real() && proto.renormalize;
    let fitted = match origins.first() {
        Some(&first) => Some(f.fit(&layer.until(first), ctx)?),
        None => None,
    };
    // Scores flat rows (`rows[i]`: origin os[i]'s) at horizons `hs` (indices from hi0).
    // Two origins at a time (origin_sums_pair), an odd last one alone.
    let score_flat = |rows: &[f64], os: &[usize], hs: &[usize], hi0: usize, sums: &mut [(f64, f64)]| {
        let steps = |o: usize| hs.last().copied().unwrap_or(0).min(nt - o);
        let sums = &mut sums[..os.len() * nh];
        sums.par_chunks_mut(2 * nh).zip(rows.par_chunks(2 * ne)).zip(os.par_chunks(2)).for_each(|((out, row), os)| {
            if let [o0, o1] = *os {
                let (out0, out1) = out.split_at_mut(nh);
                let (row0, row1) = row.split_at(ne);
                let outs = [&mut out0[hi0..hi0 + hs.len()], &mut out1[hi0..hi0 + hs.len()]];
                origin_sums_pair(layer, [o0, o1], hs, [steps(o0), steps(o1)], [row0, row1], outs);
            } else {
                origin_sums(layer, os[0], hs, steps(os[0]), row, &mut out[hi0..hi0 + hs.len()]);
            }
        });
    };
    let max_len = |o: usize| proto.max_horizon().min(nt - o);

    if let Some(fitted) = fitted.as_deref() {
        let flat = fitted.flat();
        if f.horizon_dependent() {
            // Asked once for every horizon: each horizon's origins (those with
            // o + h <= T, a prefix of the ascending origins) with exactly h steps,
            // one horizon after another, so the oracle buckets each expert once.
            let counts: Vec<usize> = horizons.iter().map(|&h| origins.iter().take_while(|&&o| o + h <= nt).count()).collect();
            let starts: Vec<usize> = counts.iter().scan(0, |at, &c| Some(std::mem::replace(at, *at + c))).collect();
            let os: Vec<usize> = counts.iter().flat_map(|&c| origins[..c].iter().copied()).collect();
            let lens: Vec<usize> = counts.iter().zip(horizons).flat_map(|(&c, &h)| std::iter::repeat_n(h, c)).collect();
            let mut rows = Vec::with_capacity(if flat { os.len() * ne } else { 0 });
            fitted.predict_origins(layer, &os, &lens, &mut |k, pred, _, fb| {
                // Window k's horizon: the last to start at or before it (one with no
                // origins starts where the next does).
                let hi = starts.partition_point(|&at| at <= k) - 1;
                let i = k - starts[hi];
                if hi == 0 {
                    done(ne as u64);
                }
                fbs[i * nh + hi] = fb;
                if flat {
                    rows.extend_from_slice(pred);
                    return;
                }
                let mut one = [(0.0, 0.0)];
                origin_sums_rows(layer, os[k], &[lens[k]], pred, real, &mut one);
                sums[i * nh + hi] = one[0];
            })?;
            if flat {
                if real {
                    renormalize(&mut rows, ne);
                }
                for (hi, (&h, (&c, &at))) in horizons.iter().zip(counts.iter().zip(&starts)).enumerate() {
                    score_flat(&rows[at * ne..(at + c) * ne], &os[at..at + c], &[h], hi, &mut sums[..c * nh]);
                }
            }
            if let Some(s) = save.as_deref_mut() {
                let lens: Vec<usize> = origins.iter().map(|&o| max_len(o)).collect();
                fitted.predict_origins(layer, &origins, &lens, &mut |i, pred, se, _| s.push(layer, origins[i], lens[i], pred, se))?;
            }
        } else {
            let lens: Vec<usize> = origins.iter().map(|&o| max_len(o)).collect();
            if let Some(k) = keep.as_mut() {
                k.means.clear();
                k.means.resize(origins.len(), Vec::new());
            }
            // A model that scores its rows as it makes them, when they are not kept.
            let scored = !flat && save.is_none() && keep.is_none() && fitted.score_origins(layer, &origins, horizons, real, &mut sums, done).is_some();
            let mut rows = Vec::with_capacity(if flat { origins.len() * ne } else { 0 });
            if !scored {
                fitted.predict_origins(layer, &origins, &lens, &mut |i, pred, se, fb| {
                    done(ne as u64);
                    let o = origins[i];
                    fbs[i * nh..(i + 1) * nh].iter_mut().for_each(|v| *v = fb);
                    if flat {
                        if real {
                            renormalize(pred, ne);
                        }
                        rows.extend_from_slice(pred);
                    } else {
                        origin_sums_rows(layer, o, horizons, pred, real, &mut sums[i * nh..(i + 1) * nh]);
                    }
                    // After renormalisation, as scored.
                    if let Some(k) = keep.as_mut() {
                        k.means[i] = mean_of_rows(pred, ne, k.steps);
                    }
                    if let Some(s) = save.as_deref_mut() {
                        s.push(layer, o, lens[i], pred, se);
                    }
                })?;
            }
            if flat {
                score_flat(&rows, &origins, horizons, 0, &mut sums);
            }
        }
    }

    Ok(scores_from_sums(&origins, horizons, nt, ne, &sums, &fbs, stable_from))
}

/// The scores of one (layer, forecaster) from each origin's error sums at each
/// horizon (`sums[i * nh + hi]`, `fbs` likewise its fallbacks), added in origin order
/// for every horizon the origin reaches: one score per horizon and regime, horizons
/// ascending, `all` before `stable`.
pub fn scores_from_sums(
    origins: &[usize],
    horizons: &[usize],
    nt: usize,
    ne: usize,
    sums: &[(f64, f64)],
    fbs: &[usize],
    stable_from: Option<usize>,
) -> Vec<Score> {
    let nh = horizons.len();
    let mut acc = vec![[Acc::default(), Acc::default()]; nh];
    let is_stable = |o: usize| stable_from.is_some_and(|s| o >= s);
    for (i, &o) in origins.iter().enumerate() {
        for (hi, &h) in horizons.iter().enumerate().take_while(|&(_, &h)| o + h <= nt) {
            let (abs, sq) = sums[i * nh + hi];
            for (r, a) in acc[hi].iter_mut().enumerate() {
                if r == 1 && !is_stable(o) {
                    continue;
                }
                a.abs += abs;
                a.sq += sq;
                a.cells += (h * ne) as u64;
                a.steps += h as u64;
                a.origins += 1;
                a.fallbacks += fbs[i * nh + hi] as u64;
            }
        }
    }
    let mut out = Vec::with_capacity(2 * nh);
    for (hi, &h) in horizons.iter().enumerate() {
        out.push(acc[hi][0].score(h, Regime::All));
        out.push(acc[hi][1].score(h, Regime::Stable));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::{Last, OracleMedian, WindowMean};

    // Two experts, 5 steps: e0 = .5 .2 .4 .1 .3
    const P: [f64; 10] = [0.5, 0.5, 0.2, 0.8, 0.4, 0.6, 0.1, 0.9, 0.3, 0.7];

    fn proto(h: &[usize], start: usize, stride: usize) -> Protocol {
        Protocol { horizons: h.to_vec(), stride, start, renormalize: true }
    }

    #[test]
    fn origins_follow_start_and_stride() {
        assert_eq!(proto(&[1], 2, 2).origins(7), vec![2, 4, 6]);
        assert_eq!(proto(&[1], 0, 3).origins(7), vec![1, 4]);
    }

    #[test]
    fn last_scored_by_hand() {
        let v = LayerView::new(&P, 2);
        // origins 2 and 4 (start 2, stride 2); horizons 1 and 2; e1 mirrors e0.
        // o=2: pred p[1] = .2 ; actual .4 (err .2), .1 (err .1)
        // o=4: pred p[3] = .1 ; actual .3 (err .2), and no step 5
        let s = evaluate_layer(&v, &Last, &proto(&[1, 2], 2, 2), Some(3), None).unwrap();
        let h1 = &s[0];
        assert_eq!((h1.horizon, h1.regime, h1.origins), (1, Regime::All, 2));
        assert!((h1.mae_pp.unwrap() - 20.0).abs() < 1e-9);
        assert!((h1.rmse_pp.unwrap() - 20.0).abs() < 1e-9);
        // tv per (origin, step) = (.2 + .2) / 2
        assert!((h1.tv_pct.unwrap() - 20.0).abs() < 1e-9);
        // horizon 2: origin 2 only, errors .2 .2 .1 .1
        let h2 = &s[2];
        assert_eq!((h2.horizon, h2.origins), (2, 1));
        assert!((h2.mae_pp.unwrap() - 15.0).abs() < 1e-9);
        assert!((h2.rmse_pp.unwrap() - 100.0 * 0.025f64.sqrt()).abs() < 1e-9);
        assert!((h2.tv_pct.unwrap() - 15.0).abs() < 1e-9);
        // stable from step 3: origin 4 only, at h = 1; none at h = 2
        assert_eq!((s[1].regime, s[1].origins), (Regime::Stable, 1));
        assert!((s[1].mae_pp.unwrap() - 20.0).abs() < 1e-9);
        assert_eq!((s[3].origins, s[3].mae_pp), (0, None));
    }

    #[test]
    fn horizons_past_the_end_score_fewer_origins() {
        let v = LayerView::new(&P, 2);
        let s = evaluate_layer(&v, &WindowMean { w: 1 }, &proto(&[1, 4], 1, 1), None, None).unwrap();
        assert_eq!(s[0].origins, 4); // origins 1..=4
        assert_eq!(s[2].origins, 1); // only origin 1 has 4 steps ahead
        assert_eq!(s[1].origins, 0);
        assert_eq!(s[1].mae_pp, None);
    }

    #[test]
    fn a_window_median_is_scored_by_hand() {
        // median:w=3 on two experts, e0 = .1 .9 .3 .5 .2 .4 (e1 = 1 - e0); origins 3 and
        // 5, horizon 1: e0 predicted .3 (median .1 .9 .3) vs .5, then .3 (median .3 .5 .2)
        // vs .4, and e1 mirrors it: errors .2, .2, .1, .1.
        let p = [0.1, 0.9, 0.9, 0.1, 0.3, 0.7, 0.5, 0.5, 0.2, 0.8, 0.4, 0.6];
        let v = LayerView::new(&p, 2);
        let f = crate::forecast::parse_spec("median:w=3").unwrap();
        let s = evaluate_layer(&v, f.as_ref(), &proto(&[1], 3, 2), None, None).unwrap();
        assert_eq!(s[0].origins, 2);
        assert!((s[0].mae_pp.unwrap() - 15.0).abs() < 1e-9, "{:?}", s[0]);
    }

    #[test]
    fn step_errors_in_lanes_have_their_bits_on_every_path() {
        let mut rng = 0x2545f4914f6cdd1du64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng >> 11) as f64 / (1u64 << 53) as f64 * if rng & 1 == 0 { 1.0 } else { 1e-7 }
        };
        let bits = |acc: &ErrLanes| (acc.abs.map(f64::to_bits), acc.sq.map(f64::to_bits));
        for n in [0, 1, 7, 8, 9, 16, 64, 127, 128, 131] {
            // five steps' rows of two (prediction, actual) pairs
            let rows: Vec<[Vec<f64>; 4]> = (0..5).map(|_| std::array::from_fn(|_| (0..n).map(|_| next()).collect())).collect();
            // independently: element i of each step into lane i mod 8, step after step
            let mut want = [ErrLanes::default(), ErrLanes::default()];
            for r in &rows {
                for (j, w) in want.iter_mut().enumerate() {
                    for i in 0..n {
                        let d = r[2 * j][i] - r[2 * j + 1][i];
                        w.abs[i % 8] += d.abs();
                        w.sq[i % 8] += d * d;
                    }
                }
            }
            let (mut one, mut lanes, mut span) = ([ErrLanes::default(); 2], [ErrLanes::default(); 2], [ErrLanes::default(); 2]);
            for r in &rows {
                add_span_error(&r[0], 0, &r[1], n, 1, &mut one[0]);
                add_span_error(&r[2], 0, &r[3], n, 1, &mut one[1]);
                add_step_error_lanes(&r[0], &r[1], &mut lanes[0]);
                add_step_error_lanes(&r[2], &r[3], &mut lanes[1]);
            }
            // the same steps as spans of rows (steps 0-1, then 2-4)
            let cat = |c: usize| -> Vec<f64> { rows.iter().flat_map(|r| r[c].iter().copied()).collect() };
            let mut plain = [ErrLanes::default(); 2];
            for j in 0..2 {
                let (p, y) = (cat(2 * j), cat(2 * j + 1));
                add_span_error(&p, n, &y, n, 2, &mut span[j]);
                add_span_error(&p[2 * n..], n, &y[2 * n..], n, 3, &mut span[j]);
                add_span_error(&p, n, &y, n, 0, &mut span[j]);
                add_span_error_lanes(&p, n, &y, n, 1, &mut plain[j]);
                add_span_error_lanes(&p[n..], n, &y[n..], n, 4, &mut plain[j]);
            }
            for j in 0..2 {
                assert_eq!(bits(&one[j]), bits(&want[j]), "n = {n}");
                assert_eq!(bits(&lanes[j]), bits(&want[j]), "n = {n}");
                assert_eq!(bits(&span[j]), bits(&want[j]), "n = {n}");
                assert_eq!(bits(&plain[j]), bits(&want[j]), "n = {n}");
                // and the totals against float64 sums in plain order, closely
                let plain_a: f64 = rows.iter().flat_map(|r| r[2 * j].iter().zip(&r[2 * j + 1]).map(|(p, y)| (p - y).abs())).sum();
                let (a, _) = one[j].sums();
                assert!((a - plain_a).abs() <= 1e-12 * plain_a.max(1e-300), "n = {n}");
            }
        }
        // Flat predictions (one row for every step) as spans, one origin alone and
        // two side by side: the bits of each step added in turn, from independent sums.
        for n in [1, 7, 8, 9, 16, 64, 131] {
            let flat: [Vec<f64>; 2] = std::array::from_fn(|_| (0..n).map(|_| next()).collect());
            let ys: [Vec<f64>; 2] = std::array::from_fn(|_| (0..6 * n).map(|_| next()).collect());
            let mut want = [ErrLanes::default(), ErrLanes::default()];
            for (j, w) in want.iter_mut().enumerate() {
                for (i, y) in ys[j].iter().enumerate() {
                    let d = flat[j][i % n] - y;
                    w.abs[i % n % 8] += d.abs();
                    w.sq[i % n % 8] += d * d;
                }
            }
            let (mut alone, mut pair) = ([ErrLanes::default(); 2], [ErrLanes::default(); 2]);
            for j in 0..2 {
                add_span_error(&flat[j], 0, &ys[j], n, 4, &mut alone[j]);
                add_span_error(&flat[j], 0, &ys[j][4 * n..], n, 2, &mut alone[j]);
            }
            let [p0, p1] = &mut pair;
            add_span_error2(&flat[0], &ys[0], &flat[1], &ys[1], n, 1, [&mut *p0, &mut *p1]);
            add_span_error2(&flat[0], &ys[0][n..], &flat[1], &ys[1][n..], n, 5, [&mut *p0, &mut *p1]);
            add_span_error2(&flat[0], &ys[0], &flat[1], &ys[1], n, 0, [p0, p1]);
            let (mut alone_plain, mut pair_plain) = ([ErrLanes::default(); 2], [ErrLanes::default(); 2]);
            for j in 0..2 {
                add_span_error_lanes(&flat[j], 0, &ys[j], n, 6, &mut alone_plain[j]);
            }
            let [q0, q1] = &mut pair_plain;
            add_span_error2_lanes(&flat[0], &ys[0], &flat[1], &ys[1], n, 6, [q0, q1]);
            for j in 0..2 {
                assert_eq!(bits(&alone[j]), bits(&want[j]), "flat, n = {n}");
                assert_eq!(bits(&pair[j]), bits(&want[j]), "flat pair, n = {n}");
                assert_eq!(bits(&alone_plain[j]), bits(&want[j]), "flat, plain, n = {n}");
                assert_eq!(bits(&pair_plain[j]), bits(&want[j]), "flat pair, plain, n = {n}");
            }
        }
        // a longer prediction than actual row is cut to the shorter
        let mut acc = ErrLanes::default();
        add_step_error_lanes(&[0.5; 12], &[0.25; 9], &mut acc);
        assert_eq!(acc.sums(), (9.0 * 0.25, 9.0 * 0.0625));
    }

    #[test]
    fn sw_avg_scored_as_made_by_hand() {
        // sw-avg:w=2 from origin 2: e0 sees .5 .2 -> .35, then (.2 + .35) / 2 = .275;
        // e1 mirrors it (rows sum to 1, so renormalising changes nothing). Actual e0
        // at steps 2 and 3: .4 and .1, errors .05 and .175 on both experts.
        let v = LayerView::new(&P, 2);
        let f = crate::forecast::parse_spec("sw-avg:w=2").unwrap();
        let s = evaluate_layer(&v, f.as_ref(), &proto(&[1, 2], 2, 10), None, None).unwrap();
        assert!((s[0].mae_pp.unwrap() - 5.0).abs() < 1e-9, "{:?}", s[0]);
        assert!((s[2].mae_pp.unwrap() - 11.25).abs() < 1e-9, "{:?}", s[2]);
        assert!((s[2].tv_pct.unwrap() - 11.25).abs() < 1e-9, "{:?}", s[2]);
    }

    #[test]
    fn two_origins_side_by_side_have_the_bits_of_each_alone() {
        // 131 experts (16 lanes' worth and three over), origins whose steps ahead end at
        // different places (one cut by the trace's end), horizons past both.
        let (nt, ne) = (300, 131);
        let p: Vec<f64> = crate::lcg_noise(0xAB, nt * ne).iter().map(|u| u / ne as f64).collect();
        let v = LayerView::new(&p, ne);
        let preds: Vec<Vec<f64>> = (0..2).map(|i| crate::lcg_noise(7 + i, ne).iter().map(|u| u * 2.0 / ne as f64).collect()).collect();
        let hs = [1, 2, 40, 100, 250];
        for (o, steps) in [([10, 60], [250, 240]), ([150, 200], [150, 100]), ([100, 280], [100, 20]), ([5, 5], [0, 3])] {
            let mut pair = [vec![(f64::NAN, f64::NAN); hs.len()], vec![(f64::NAN, f64::NAN); hs.len()]];
            let [a, b] = &mut pair;
            origin_sums_pair(&v, o, &hs, steps, [&preds[0], &preds[1]], [a, b]);
            for j in 0..2 {
                let mut alone = vec![(f64::NAN, f64::NAN); hs.len()];
                origin_sums(&v, o[j], &hs, steps[j], &preds[j], &mut alone);
                let bits = |x: &[(f64, f64)]| x.iter().map(|(a, s)| (a.to_bits(), s.to_bits())).collect::<Vec<_>>();
                assert_eq!(bits(&pair[j]), bits(&alone), "origins {o:?}, steps {steps:?}, origin {j}");
                // independently: the sums at each horizon reached, in float64 in plain order
                for (hi, &h) in hs.iter().enumerate().filter(|&(_, &h)| h <= steps[j]) {
                    let (mut wa, mut ws) = (0.0, 0.0);
                    for k in 0..h {
                        for e in 0..ne {
                            let d = preds[j][e] - v.row(o[j] + k)[e];
                            (wa, ws) = (wa + d.abs(), ws + d * d);
                        }
                    }
                    assert!((pair[j][hi].0 - wa).abs() <= 1e-12 * wa && (pair[j][hi].1 - ws).abs() <= 1e-12 * ws, "h {h}");
                }
            }
        }
    }

    #[test]
    fn rows_scored_as_made_have_the_bits_of_rows_kept() {
        // Saving the forecasts makes sw-avg predict every origin's rows and score them
        // afterwards; without, each row is scored as it is made.
        // Experts: fewer than a lane group, two groups, two and three over.
        for ne in [5, 16, 19] {
            let nt = 400;
            let mut p: Vec<f64> = crate::lcg_noise(0x5EED, nt * ne).iter().map(|u| 0.6 + u).collect();
            for row in p.chunks_mut(ne) {
                let t: f64 = row.iter().sum();
                row.iter_mut().for_each(|v| *v /= t);
            }
            let v = LayerView::new(&p, ne);
            for spec in ["sw-avg:w=3", "sw-avg:w=50"] {
                let f = crate::forecast::parse_spec(spec).unwrap();
                for renormalize in [true, false] {
                    let pr = Protocol { horizons: vec![1, 7, 50, 300], stride: 13, start: 60, renormalize };
                    let fused = evaluate_layer(&v, f.as_ref(), &pr, Some(200), None).unwrap();
                    let mut saved = SavedForecasts::default();
                    let kept = evaluate_layer(&v, f.as_ref(), &pr, Some(200), Some(&mut saved)).unwrap();
                    assert!(!saved.is_empty());
                    let bits = |s: &[Score]| s.iter().map(|x| (x.origins, x.mae_pp.map(f64::to_bits), x.rmse_pp.map(f64::to_bits), x.tv_pct.map(f64::to_bits))).collect::<Vec<_>>();
                    assert_eq!(bits(&fused), bits(&kept), "{spec} renormalize {renormalize}, {ne} experts");
                    assert!(fused.iter().any(|x| x.mae_pp.is_some()) && fused.iter().any(|x| x.mae_pp.is_none()));
                }
            }
        }
    }

    #[test]
    fn scaled_step_errors_have_the_bits_of_scaling_then_scoring() {
        // Values of both signs, a -0.0 and a NaN among them (clipped to 0 when
        // renormalised); every scale; rows of every tail length.
        for n in [0, 1, 7, 8, 9, 16, 23, 64, 131] {
            let mut pred: Vec<f64> = crate::lcg_noise(n as u64, n).iter().map(|u| u - 0.3).collect();
            let actual: Vec<f64> = crate::lcg_noise(1000 + n as u64, n).iter().map(|u| u - 0.3).collect();
            if n > 9 {
                (pred[3], pred[9]) = (-0.0, f64::NAN);
            }
            for scale in [Scale::AsMade, Scale::By(1.7), Scale::Uniform(0.25)] {
                // independently: the scaled row made first, then scored as any row
                let row: Vec<f64> = pred.iter().map(|&v| scale.apply(v)).collect();
                let (mut want, mut avx, mut lanes) = (ErrLanes::default(), ErrLanes::default(), ErrLanes::default());
                for _ in 0..3 {
                    add_step_error_lanes(&row, &actual, &mut want);
                    add_scaled_step_error(&pred, scale, &actual, &mut avx);
                    add_scaled_step_error_lanes(&pred, scale, &actual, &mut lanes);
                }
                let bits = |a: &ErrLanes| (a.abs.map(f64::to_bits), a.sq.map(f64::to_bits));
                if matches!(scale, Scale::AsMade) && n > 9 {
                    assert!(want.sums().0.is_nan()); // the NaN is scored as made
                }
                assert_eq!(bits(&avx), bits(&want), "n = {n}, {scale:?}");
                assert_eq!(bits(&lanes), bits(&want), "n = {n}, {scale:?}");
            }
        }
        // By: the clip as renormalize has it
        let mut r = vec![-0.5, 0.25, f64::NAN, 0.75];
        crate::forecast::renormalize(&mut r, 4);
        let scaled: Vec<f64> = [-0.5, 0.25, f64::NAN, 0.75].iter().map(|&v| Scale::By(1.0).apply(v)).collect();
        assert_eq!(r.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), scaled.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
    }

    #[test]
    fn oracle_uses_the_median_of_each_horizon() {
        let v = LayerView::new(&P, 2);
        // origin 1, h = 3: e0 future .2 .4 .1 -> median .2, errors 0 .2 .1 -> mean .1
        let s = evaluate_layer(&v, &OracleMedian, &proto(&[3], 1, 10), None, None).unwrap();
        assert!((s[0].mae_pp.unwrap() - 10.0).abs() < 1e-9);
    }

    /// `oracle-median` as a run takes it (every horizon's windows in one call:
    /// shared buckets, one-step windows from their row, short ones sorted) scores
    /// bit for bit as each window's own sorted medians do, for horizons of one step to
    /// more than a stride and than the buckets' count, strides from 1 to more than
    /// the horizons, and origins with too few steps left for the longest horizons.
    #[test]
    fn oracle_horizons_taken_together_score_as_each_window_sorted() {
        use crate::forecast::{Emit, FitContext, Fitted, Forecaster, column_medians};
        /// The oracle with each window's medians taken by sorting it alone.
        #[derive(Clone, Copy)]
        struct Sorted;
        impl Forecaster for Sorted {
            fn spec(&self) -> String {
                "sorted".into()
            }
            fn history(&self) -> usize {
                0
            }
            fn is_real(&self) -> bool {
                false
            }
            fn horizon_dependent(&self) -> bool {
                true
            }
            fn fit(&self, _: &LayerView, _: &FitContext) -> anyhow::Result<Box<dyn Fitted + '_>> {
                Ok(Box::new(Sorted))
            }
        }
        impl Fitted for Sorted {
            fn predict(&self, _: &LayerView, _: usize, _: &mut [f64]) -> usize {
                unreachable!("predict_origins is overridden")
            }
            fn flat(&self) -> bool {
                true
            }
            fn predict_origins(&self, layer: &LayerView, origins: &[usize], lens: &[usize], emit: &mut Emit<'_>) -> anyhow::Result<()> {
                // Its fallbacks say which window a row was (origin + horizon), so
                // that the scores show where each window's row was filed.
                for (i, (&o, &l)) in origins.iter().zip(lens).enumerate() {
                    emit(i, &mut column_medians(layer, o, o + l), None, o + l);
                }
                Ok(())
            }
        }
        // Shares with ties, a transient start and a slow drift (medians that move
        // down as well as up from window to window).
        let (nt, ne) = (9000, 5);
        let mut s = 7u64;
        let p: Vec<f64> = (0..nt * ne)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let (t, e) = (i / ne, i % ne);
                let drift = 0.2 * (1.0 + (t as f64 / 700.0 + e as f64).sin());
                if i % 11 == 0 { 0.25 } else if t < 500 { (s % 1000) as f64 / 1000.0 } else { drift + (s % 100) as f64 * 1e-4 }
            })
            .collect();
        let v = LayerView::new(&p, ne);
        // (The second set shares no buckets: every window is sorted alone.)
        for (horizons, (stride, start)) in [vec![1, 2, 10, 64, 65, 100, 101, 1000, 2000, 5000], vec![1, 2, 10, 64]]
            .into_iter()
            .flat_map(|h| [(1, 8900), (7, 3), (100, 100), (250, 40), (3000, 5)].map(|s| (h.clone(), s)))
        {
            let proto = Protocol { horizons: horizons.clone(), stride, start, renormalize: true };
            let got = evaluate_layer(&v, &OracleMedian, &proto, Some(nt / 3), None).unwrap();
            let want = evaluate_layer(&v, &Sorted, &proto, Some(nt / 3), None).unwrap();
            assert_eq!(got.len(), 2 * horizons.len());
            for (g, w) in got.iter().zip(&want) {
                let bits = |x: Option<f64>| x.map(f64::to_bits);
                assert!(
                    (g.horizon, g.origins) == (w.horizon, w.origins)
                        && bits(g.mae_pp) == bits(w.mae_pp)
                        && bits(g.rmse_pp) == bits(w.rmse_pp)
                        && bits(g.tv_pct) == bits(w.tv_pct),
                    "stride {stride}, start {start}: {g:?} vs {w:?}"
                );
                let filed: u64 = proto
                    .origins(nt)
                    .iter()
                    .filter(|&&o| o + w.horizon <= nt && (w.regime == Regime::All || o >= nt / 3))
                    .map(|&o| (o + w.horizon) as u64)
                    .sum();
                assert_eq!(w.fallbacks, filed, "stride {stride}, start {start}: {w:?}");
            }
        }
    }

    #[test]
    fn saved_standard_errors_stay_with_their_rows() {
        let v = LayerView::new(&P, 2);
        let mut saved = SavedForecasts::default();
        saved.push(&v, 1, 1, &[0.5, 0.5], None);
        saved.push(&v, 2, 1, &[0.3, 0.7], Some(&[0.01, f64::INFINITY]));
        saved.push(&v, 3, 1, &[0.2, 0.8], None);
        let se: Vec<Option<f64>> = saved.rows(&v).map(|r| r.stderr).collect();
        assert_eq!(se, vec![None, None, Some(0.01), None, None, None]);
        let actual: Vec<f64> = saved.rows(&v).map(|r| r.actual).collect();
        assert_eq!(actual, vec![0.2, 0.8, 0.4, 0.6, 0.1, 0.9]);
    }

    #[test]
    fn saved_forecasts_hold_prediction_and_actual() {
        let v = LayerView::new(&P, 2);
        let mut saved = SavedForecasts::default();
        let p = proto(&[2], 3, 10);
        evaluate_layer(&v, &Last, &p, None, Some(&mut saved)).unwrap();
        assert_eq!(saved.len(), 4);
        assert_eq!(saved_rows(&p, 5, 2), 4);
        let rows: Vec<SavedRow> = saved.rows(&v).collect();
        assert_eq!(rows.iter().map(|r| r.k).collect::<Vec<_>>(), vec![0, 0, 1, 1]);
        assert_eq!(rows.iter().map(|r| r.expert).collect::<Vec<_>>(), vec![0, 1, 0, 1]);
        assert_eq!(rows.iter().map(|r| r.origin).collect::<Vec<_>>(), vec![3; 4]);
        assert_eq!(rows.iter().map(|r| r.predicted).collect::<Vec<_>>(), vec![0.4, 0.6, 0.4, 0.6]);
        assert_eq!(rows.iter().map(|r| r.actual).collect::<Vec<_>>(), vec![0.1, 0.9, 0.3, 0.7]);
        assert!(rows.iter().all(|r| r.stderr.is_none()));
    }
}
