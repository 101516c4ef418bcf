//! Window statistics on the CPU: O(1) amortised work per output whatever the window.
//!
//! Mean and population variance slide with Welford's add-one/drop-one update and are
//! re-anchored by an exact two-pass computation every `max(16 W, 4096)` outputs, so
//! rounding cannot drift over long series while the re-anchoring costs at most 1/16
//! of an output each. Max and min use van Herk/Gil-Werman: per block of `W` steps a
//! prefix and a suffix extremum, then `max(suffix[s], prefix[s + W - 1])`, three
//! comparisons per output for any `W`.

use rayon::prelude::*;

/// Scratch buffers for one series (reused across series on a thread).
#[derive(Default)]
pub struct Scratch {
    pre_max: Vec<[f64; 1]>,
    suf_max: Vec<[f64; 1]>,
    pre_min: Vec<[f64; 1]>,
    suf_min: Vec<[f64; 1]>,
    // The same for four series at once, and the four series step-interleaved.
    pre_max4: Vec<[f64; 4]>,
    suf_max4: Vec<[f64; 4]>,
    pre_min4: Vec<[f64; 4]>,
    suf_min4: Vec<[f64; 4]>,
    quad: Vec<[f64; 4]>,
}

/// Number of outputs of a window of `w` over `steps` values (none when `steps < w`).
pub fn outputs(steps: usize, w: usize) -> usize {
    if steps >= w { steps - w + 1 } else { 0 }
}

#[inline(always)]
fn two_pass(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let m = x.iter().sum::<f64>() / n;
    let m2 = x.iter().map(|v| (v - m) * (v - m)).sum::<f64>();
    (m, m2)
}

/// Trailing-window mean, population variance and range of `x` for window `w`.
/// Output `i` covers `x[i ..= i + w - 1]`; each output slice has
/// [`outputs`]`(x.len(), w)` elements.
pub fn window_series(x: &[f64], w: usize, mean: &mut [f64], var: &mut [f64], range: &mut [f64], s: &mut Scratch) {
    assert!(w >= 1, "window must be at least 1");
    let n = outputs(x.len(), w);
    assert!(mean.len() == n && var.len() == n && range.len() == n, "output slices must hold {n} values");
    if n == 0 {
        return;
    }
    let (x1, _) = x.as_chunks::<1>();
    mean_var_lanes(x1, [x], w, [mean], [var]);
    let buf = [&mut s.pre_max, &mut s.suf_max, &mut s.pre_min, &mut s.suf_min];
    range_in_blocks(x1, w, [range], buf, |x, r, b| extremes_lanes(x, w, r, b));
}

/// [`window_series`] of four series of equal length at once, into `out[j] = [mean,
/// var, range]` of series `j`: their update chains run side by side (four independent
/// chains instead of one, in one AVX2 register where the CPU has it), each series'
/// operations the same, in the same order, as [`window_series`]'s, so the same bits.
pub fn window_series4(x: [&[f64]; 4], w: usize, out: &mut [[Vec<f64>; 3]; 4], s: &mut Scratch) {
    assert!(w >= 1, "window must be at least 1");
    let t = x[0].len();
    assert!(x.iter().all(|x| x.len() == t), "series of equal length");
    let n = outputs(t, w);
    assert!(out.iter().flatten().all(|o| o.len() == n), "output slices must hold {n} values");
    if n == 0 {
        return;
    }
    // The four series step-interleaved, so that each step's four values are one load.
    s.quad.clear();
    s.quad.extend((0..t).map(|i| [x[0][i], x[1][i], x[2][i], x[3][i]]));
    let [a, b, c, d] = out.each_mut().map(|o| o.each_mut().map(|v| &mut v[..]));
    let ([am, av, ar], [bm, bv, br], [cm, cv, cr], [dm, dv, dr]) = (a, b, c, d);
    let (mean, var, range) = ([am, bm, cm, dm], [av, bv, cv, dv], [ar, br, cr, dr]);
    let buf = [&mut s.pre_max4, &mut s.suf_max4, &mut s.pre_min4, &mut s.suf_min4];
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx2() {
        // SAFETY (both): the CPU has AVX2 (checked just above).
        unsafe { avx2::mean_var4(&s.quad, x, w, mean, var) };
        range_in_blocks(&s.quad, w, range, buf, |x, r, b| unsafe { avx2::extremes4(x, w, r, b) });
        return;
    }
    mean_var_lanes(&s.quad, x, w, mean, var);
    range_in_blocks(&s.quad, w, range, buf, |x, r, b| extremes_lanes(x, w, r, b));
}

/// The larger of two values as AVX2's `max` takes it (`b` unless `a > b`), so that one
/// series at a time and four in a register compare alike.
#[inline(always)]
fn mx(a: f64, b: f64) -> f64 {
    if a > b { a } else { b }
}

/// The smaller, as AVX2's `min` (`b` unless `a < b`).
#[inline(always)]
fn mn(a: f64, b: f64) -> f64 {
    if a < b { a } else { b }
}

/// [`mean_var_lanes`] and [`extremes_lanes`] for four series in AVX2 registers: the
/// same operations on each lane, in the same order.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::two_pass;
    use std::arch::x86_64::*;

    // Loads and stores of four f64 (functions, not closures: a closure here is not
    // compiled for AVX2 and was not inlined).
    #[inline(always)]
    fn load(a: &[f64; 4]) -> __m256d {
        // SAFETY: four f64 in a [f64; 4]; called only from the AVX2 functions below.
        unsafe { _mm256_loadu_pd(a.as_ptr()) }
    }
    #[inline(always)]
    fn store(a: &mut [f64; 4], v: __m256d) {
        // SAFETY: as `load`.
        unsafe { _mm256_storeu_pd(a.as_mut_ptr(), v) }
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn mean_var4(q: &[[f64; 4]], x: [&[f64]; 4], w: usize, mean: [&mut [f64]; 4], var: [&mut [f64]; 4]) {
        let wf = w as f64;
        let n = mean[0].len();
        let anchor_every = (16 * w).max(4096);
        let [m0, m1, m2, m3] = mean.map(|v| &mut v[..n]);
        let [v0, v1, v2, v3] = var.map(|v| &mut v[..n]);
        let (mut m, mut s) = ([0.0; 4], [0.0; 4]);
        for j in 0..4 {
            (m[j], s[j]) = two_pass(&x[j][..w]);
        }
        (m0[0], m1[0], m2[0], m3[0]) = (m[0], m[1], m[2], m[3]);
        (v0[0], v1[0], v2[0], v3[0]) = (s[0] / wf, s[1] / wf, s[2] / wf, s[3] / wf);
        let (wv, zero) = (_mm256_set1_pd(wf), _mm256_setzero_pd());
        let (mut mv, mut sv) = (load(&m), load(&s));
        let (xo, xn) = (&q[..n - 1], &q[w..w + n - 1]);
        let (mut om, mut ov) = ([0.0; 4], [0.0; 4]);
        for i in 1..n {
            if i % anchor_every == 0 {
                for j in 0..4 {
                    (m[j], s[j]) = two_pass(&x[j][i..i + w]);
                }
                (mv, sv) = (load(&m), load(&s));
            } else {
                let (o, a) = (load(&xo[i - 1]), load(&xn[i - 1]));
                let d = _mm256_sub_pd(a, o);
                let m_new = _mm256_add_pd(mv, _mm256_div_pd(d, wv));
                sv = _mm256_add_pd(sv, _mm256_mul_pd(d, _mm256_add_pd(_mm256_sub_pd(a, m_new), _mm256_sub_pd(o, mv))));
                mv = m_new;
            }
            // max(s, 0) as `f64::max` takes it for s not NaN and not -0 (s never is).
            let vv = _mm256_div_pd(_mm256_max_pd(sv, zero), wv);
            store(&mut om, mv);
            store(&mut ov, vv);
            (m0[i], m1[i], m2[i], m3[i]) = (om[0], om[1], om[2], om[3]);
            (v0[i], v1[i], v2[i], v3[i]) = (ov[0], ov[1], ov[2], ov[3]);
        }
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn extremes4(x: &[[f64; 4]], w: usize, range: [&mut [f64]; 4], buf: [&mut Vec<[f64; 4]>; 4]) {
        let t = x.len();
        let [pmax, smax, pmin, smin] = buf.map(|b| {
            b.resize(t, [0.0; 4]);
            &mut b[..t]
        });
        let mut b = 0;
        while b < t {
            let end = (b + w).min(t);
            let (mut hi, mut lo) = (load(&x[b]), load(&x[b]));
            store(&mut pmax[b], hi);
            store(&mut pmin[b], lo);
            for i in b + 1..end {
                let v = load(&x[i]);
                (hi, lo) = (_mm256_max_pd(hi, v), _mm256_min_pd(lo, v));
                store(&mut pmax[i], hi);
                store(&mut pmin[i], lo);
            }
            let (mut hi, mut lo) = (load(&x[end - 1]), load(&x[end - 1]));
            store(&mut smax[end - 1], hi);
            store(&mut smin[end - 1], lo);
            for i in (b..end - 1).rev() {
                let v = load(&x[i]);
                (hi, lo) = (_mm256_max_pd(hi, v), _mm256_min_pd(lo, v));
                store(&mut smax[i], hi);
                store(&mut smin[i], lo);
            }
            b = end;
        }
        let n = t - w + 1;
        let [r0, r1, r2, r3] = range.map(|r| &mut r[..n]);
        let mut r = [0.0; 4];
        for i in 0..n {
            let hi = _mm256_max_pd(load(&smax[i]), load(&pmax[i + w - 1]));
            let lo = _mm256_min_pd(load(&smin[i]), load(&pmin[i + w - 1]));
            store(&mut r, _mm256_sub_pd(hi, lo));
            (r0[i], r1[i], r2[i], r3[i]) = (r[0], r[1], r[2], r[3]);
        }
    }
}

/// Mean and population variance of every window of `L` series, given both
/// step-interleaved (`q[t][j]`) and as series (`x[j]`, for the re-anchoring), the same
/// operations per series whatever `L`.
#[inline(always)]
fn mean_var_lanes<const L: usize>(q: &[[f64; L]], x: [&[f64]; L], w: usize, mean: [&mut [f64]; L], var: [&mut [f64]; L]) {
    let wf = w as f64;
    let n = mean[0].len();
    let anchor_every = (16 * w).max(4096);
    let (mut m, mut m2) = ([0.0; L], [0.0; L]);
    for j in 0..L {
        (m[j], m2[j]) = two_pass(&x[j][..w]);
        mean[j][0] = m[j];
        var[j][0] = m2[j] / wf;
    }
    // xo[i - 1] leaves and xn[i - 1] enters at output i.
    let (xo, xn) = (&q[..n - 1], &q[w..w + n - 1]);
    for i in 1..n {
        if i % anchor_every == 0 {
            for j in 0..L {
                (m[j], m2[j]) = two_pass(&x[j][i..i + w]);
            }
        } else {
            for j in 0..L {
                let (o, a) = (xo[i - 1][j], xn[i - 1][j]);
                let d = a - o;
                let m_new = m[j] + d / wf;
                m2[j] += d * ((a - m_new) + (o - m[j]));
                m[j] = m_new;
            }
        }
        for j in 0..L {
            mean[j][i] = m[j];
            var[j][i] = m2[j].max(0.0) / wf;
        }
    }
}

/// The range of window `w` over `x`, `extremes` (one of the functions below) taken a
/// block of outputs at a time: a block of `B` outputs reads `B + W - 1` steps and
/// fills its prefix and suffix extrema, about 2,000 steps (256 kB for four series),
/// which stay in cache; one span over a paper-scale series (100,000 steps, 13 MB of
/// buffers for four series) went to memory for every value. Max and min are exact,
/// so the blocks give the bits of one span.
fn range_in_blocks<const L: usize>(
    x: &[[f64; L]],
    w: usize,
    mut range: [&mut [f64]; L],
    mut buf: [&mut Vec<[f64; L]>; 4],
    mut extremes: impl FnMut(&[[f64; L]], [&mut [f64]; L], [&mut Vec<[f64; L]>; 4]),
) {
    let n = x.len() - w + 1;
    let block = (2048 / w).max(1) * w;
    let mut s = 0;
    while s < n {
        let m = block.min(n - s);
        extremes(&x[s..s + m + w - 1], range.each_mut().map(|r| &mut r[s..s + m]), buf.each_mut().map(|b| &mut **b));
        s += m;
    }
}

/// The range of every window of `L` step-interleaved series (`x[t][j]`: series `j`
/// at step `t`) into `range[j]`, the same comparisons per series whatever `L`, with
/// `buf` as prefix/suffix maxima and minima.
#[inline(always)]
fn extremes_lanes<const L: usize>(x: &[[f64; L]], w: usize, range: [&mut [f64]; L], buf: [&mut Vec<[f64; L]>; 4]) {
    let t = x.len();
    let [pmax, smax, pmin, smin] = buf.map(|b| {
        b.resize(t, [0.0; L]);
        &mut b[..t]
    });
    let mut b = 0;
    while b < t {
        let end = (b + w).min(t);
        pmax[b] = x[b];
        pmin[b] = x[b];
        for i in b + 1..end {
            for j in 0..L {
                pmax[i][j] = mx(pmax[i - 1][j], x[i][j]);
                pmin[i][j] = mn(pmin[i - 1][j], x[i][j]);
            }
        }
        smax[end - 1] = x[end - 1];
        smin[end - 1] = x[end - 1];
        for i in (b..end - 1).rev() {
            for j in 0..L {
                smax[i][j] = mx(smax[i + 1][j], x[i][j]);
                smin[i][j] = mn(smin[i + 1][j], x[i][j]);
            }
        }
        b = end;
    }
    let n = t - w + 1;
    let range = range.map(|r| &mut r[..n]);
    for i in 0..n {
        for j in 0..L {
            let hi = mx(smax[i][j], pmax[i + w - 1][j]);
            let lo = mn(smin[i][j], pmin[i + w - 1][j]);
            range[j][i] = hi - lo;
        }
    }
}

/// [`window_series`] over many series of equal length, in parallel with rayon.
/// `series` is series-major (`series[k * steps + t]`); each output is
/// `[k * n + i]` with `n = outputs(steps, w)`.
pub fn window_stats_many(series: &[f64], steps: usize, w: usize, mean: &mut [f64], var: &mut [f64], range: &mut [f64]) {
    let n = outputs(steps, w);
    if n == 0 || steps == 0 {
        return;
    }
    series
        .par_chunks(steps)
        .zip(mean.par_chunks_mut(n))
        .zip(var.par_chunks_mut(n))
        .zip(range.par_chunks_mut(n))
        .for_each_init(Scratch::default, |s, (((x, m), v), r)| window_series(x, w, m, v, r, s));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The float64 two-pass reference of docs/reference.md, written the slow way.
    fn reference(x: &[f64], w: usize) -> Vec<(f64, f64, f64)> {
        (0..outputs(x.len(), w))
            .map(|i| {
                let win = &x[i..i + w];
                let m = win.iter().sum::<f64>() / w as f64;
                let v = win.iter().map(|a| (a - m).powi(2)).sum::<f64>() / w as f64;
                let hi = win.iter().cloned().fold(f64::MIN, f64::max);
                let lo = win.iter().cloned().fold(f64::MAX, f64::min);
                (m, v, hi - lo)
            })
            .collect()
    }

    fn run(x: &[f64], w: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let n = outputs(x.len(), w);
        let (mut m, mut v, mut r) = (vec![f64::NAN; n], vec![f64::NAN; n], vec![f64::NAN; n]);
        window_series(x, w, &mut m, &mut v, &mut r, &mut Scratch::default());
        (m, v, r)
    }

    #[test]
    fn hand_derived_window_of_three() {
        // x = 1, 2, 4, 8, 3: windows {1,2,4}, {2,4,8}, {4,8,3}
        let (m, v, r) = run(&[1.0, 2.0, 4.0, 8.0, 3.0], 3);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(m[0], 7.0 / 3.0) && close(m[1], 14.0 / 3.0) && close(m[2], 5.0));
        // population variance of {1,2,4}: mean 7/3, squares (16+1+25)/9 / 3 = 42/27
        assert!(close(v[0], 42.0 / 27.0), "{}", v[0]);
        // {2,4,8}: mean 14/3, deviations -8/3, -2/3, 10/3 -> (64+4+100)/9/3 = 168/27
        assert!(close(v[1], 168.0 / 27.0), "{}", v[1]);
        // {4,8,3}: mean 5, deviations -1, 3, -2 -> 14/3
        assert!(close(v[2], 14.0 / 3.0), "{}", v[2]);
        assert_eq!(r, vec![3.0, 6.0, 5.0]);
    }

    #[test]
    fn window_of_one_and_whole_series() {
        let x = [0.3, 0.1, 0.6];
        let (m, v, r) = run(&x, 1);
        assert_eq!(m, x.to_vec());
        assert_eq!(v, vec![0.0; 3]);
        assert_eq!(r, vec![0.0; 3]);
        let (m, v, r) = run(&x, 3);
        assert_eq!(m.len(), 1);
        assert!((m[0] - 1.0 / 3.0).abs() < 1e-15);
        // deviations -1/30, -7/30, 8/30: (1 + 49 + 64) / 900 / 3
        assert!((v[0] - 114.0 / 2700.0).abs() < 1e-15, "{}", v[0]);
        assert!((r[0] - 0.5).abs() < 1e-15);
        assert_eq!(run(&x, 4).0.len(), 0);
    }

    #[test]
    fn matches_two_pass_reference_on_long_random_series() {
        // A proportion-like series: 1/16 plus noise, 100,000 steps, deterministic LCG.
        let x: Vec<f64> = crate::lcg_noise(0x9E3779B97F4A7C15, 100_000).iter().map(|u| 0.0625 + u * 0.05).collect();
        for w in [1, 2, 7, 10, 100, 1000, 4097] {
            let (m, v, r) = run(&x, w);
            let want = reference(&x, w);
            for (i, (wm, wv, wr)) in want.iter().enumerate() {
                assert!((m[i] - wm).abs() < 1e-9, "mean w={w} i={i}");
                assert!((v[i] - wv).abs() < 1e-9, "var w={w} i={i}: {} vs {wv}", v[i]);
                assert_eq!(r[i], *wr, "range w={w} i={i}");
            }
        }
    }

    #[test]
    fn four_series_at_once_have_the_bits_of_one_at_a_time() {
        // Long enough to re-anchor (every 4096 outputs at these windows) and for the
        // range's blocks of outputs (2,048 / W whole windows, at least one:
        // range_in_blocks).
        let t = 9000;
        let xs: Vec<Vec<f64>> = (0..4).map(|k| crate::lcg_noise(100 + k, t).iter().map(|u| 0.05 + u * 0.04).collect()).collect();
        for w in [1, 3, 100, 200, 2049] {
            let n = outputs(t, w);
            let mut o: [[Vec<f64>; 3]; 4] = std::array::from_fn(|_| std::array::from_fn(|_| vec![f64::NAN; n]));
            let x = [&xs[0][..], &xs[1][..], &xs[2][..], &xs[3][..]];
            window_series4(x, w, &mut o, &mut Scratch::default());
            for k in 0..4 {
                let (m, v, r) = run(&xs[k], w);
                let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&o[k][0]), bits(&m), "mean w={w} series {k}");
                assert_eq!(bits(&o[k][1]), bits(&v), "var w={w} series {k}");
                assert_eq!(bits(&o[k][2]), bits(&r), "range w={w} series {k}");
            }
        }
    }

    #[test]
    fn many_series_agree_with_one_at_a_time() {
        let steps = 50;
        let series: Vec<f64> = (0..steps * 5).map(|i| ((i * 37) % 101) as f64 / 101.0).collect();
        let w = 8;
        let n = outputs(steps, w);
        let (mut m, mut v, mut r) = (vec![0.0; 5 * n], vec![0.0; 5 * n], vec![0.0; 5 * n]);
        window_stats_many(&series, steps, w, &mut m, &mut v, &mut r);
        for k in 0..5 {
            let (m1, v1, r1) = run(&series[k * steps..(k + 1) * steps], w);
            assert_eq!(&m[k * n..(k + 1) * n], &m1[..]);
            assert_eq!(&v[k * n..(k + 1) * n], &v1[..]);
            assert_eq!(&r[k * n..(k + 1) * n], &r1[..]);
        }
    }
}
