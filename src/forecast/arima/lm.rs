//! Levenberg-Marquardt for the small nonlinear least-squares problems of ARIMA
//! fitting: both the CSS objective and (through `model::ml_residuals_lanes`) the exact
//! concentrated likelihood are sums of squared residuals of at most ~20 parameters.
//!
//! Hand-written because argmin 0.11 has no Levenberg-Marquardt, its Gauss-Newton
//! needs a matrix inverse that its `Vec` backend lacks, and Nelder-Mead (argmin's,
//! kept as the fallback) needs several times the evaluations: `expertcast bench
//! arima --optimizer` measures both (BENCHMARKS.md). The Jacobian is taken by forward
//! differences, the damping is Marquardt's (scaled by diag JᵀJ) with Nielsen's update,
//! and each step tries four dampings side by side (one batched evaluation) and keeps
//! the best.

/// The outcome of a minimisation.
#[derive(Debug, Clone)]
pub struct Minimum {
    pub x: Vec<f64>,
    /// Sum of squared residuals at `x`.
    pub ssq: f64,
    /// Residual evaluations used.
    pub evals: usize,
    /// Whether a convergence test was met (rather than the iteration limit).
    pub converged: bool,
}

/// Settings of [`minimize`].
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub max_iter: usize,
    /// Stop when an accepted step lowers the sum of squares by less than this, relatively.
    pub ftol: f64,
    /// Stop when every step component is below `xtol × (|x_i| + scale_i)`.
    pub xtol: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { max_iter: 200, ftol: 1e-10, xtol: 1e-9 }
    }
}

/// Damping factors (times the current λ) tried side by side at each step.
const TRIAL_DAMPING: [f64; 4] = [0.05, 1.0, 8.0, 64.0];

/// A residual vector as a function of the parameters.
pub trait Residuals {
    /// Fills `out` with the residuals at `x`; false when they cannot be computed there.
    fn eval(&mut self, x: &[f64], out: &mut Vec<f64>) -> bool;
    /// Evaluates several points (the Jacobian's difference points); override to
    /// evaluate them together.
    fn eval_many(&mut self, xs: &[Vec<f64>], outs: &mut [Vec<f64>], ok: &mut [bool]) {
        for ((x, o), k) in xs.iter().zip(outs.iter_mut()).zip(ok.iter_mut()) {
            *k = self.eval(x, o);
        }
    }
}

impl<F: FnMut(&[f64], &mut Vec<f64>) -> bool> Residuals for F {
    fn eval(&mut self, x: &[f64], out: &mut Vec<f64>) -> bool {
        self(x, out)
    }
}

/// Minimises `Σ r_i(x)²`, where `residuals.eval(x, out)` fills `out` and returns false
/// when the residuals cannot be computed at `x` (such points are rejected). `scale`
/// holds a typical magnitude of each parameter (for the difference steps).
pub fn minimize(mut residuals: impl Residuals, start: &[f64], scale: &[f64], settings: Settings) -> Option<Minimum> {
    let k = start.len();
    let mut x = start.to_vec();
    let mut r = Vec::new();
    let mut evals = 1;
    if !residuals.eval(&x, &mut r) {
        return None;
    }
    let mut ssq = sumsq(&r)?;
    if k == 0 {
        return Some(Minimum { x, ssq, evals, converged: true });
    }
    let n = r.len();
    let mut jac = vec![0.0; n * k]; // column-major: jac[j * n + i] = ∂r_i/∂x_j
    let (mut lambda, mut nu) = (1e-3, 2.0);
    let (mut a, mut g) = (vec![0.0; k * k], vec![0.0; k]);
    let mut converged = false;
    let eps = f64::EPSILON.sqrt();
    let mut points = vec![x.clone(); k];
    let mut outs = vec![Vec::with_capacity(n); k];
    let mut oks = vec![false; k];
    'outer: for _ in 0..settings.max_iter {
        // Jacobian by forward (or, where that point is rejected, backward) differences,
        // the k forward points evaluated together.
        let steps: Vec<f64> = (0..k).map(|j| eps * (x[j].abs() + scale[j])).collect();
        for (j, pt) in points.iter_mut().enumerate() {
            pt.copy_from_slice(&x);
            pt[j] += steps[j];
        }
        evals += k;
        residuals.eval_many(&points, &mut outs, &mut oks);
        for j in 0..k {
            let good = |ok: bool, o: &Vec<f64>| ok && o.len() == n && o.iter().all(|v| v.is_finite());
            let mut h = steps[j];
            if !good(oks[j], &outs[j]) {
                points[j][j] = x[j] - steps[j];
                evals += 1;
                let ok = residuals.eval(&points[j], &mut outs[j]);
                if !good(ok, &outs[j]) {
                    return None;
                }
                h = -steps[j];
            }
            let inv = 1.0 / h;
            for ((d, a), b) in jac[j * n..(j + 1) * n].iter_mut().zip(&outs[j]).zip(&r) {
                *d = (a - b) * inv;
            }
        }
        for j in 0..k {
            let cj = &jac[j * n..(j + 1) * n];
            g[j] = dot(cj, &r);
            for l in 0..=j {
                let v = dot(cj, &jac[l * n..(l + 1) * n]);
                a[j * k + l] = v;
                a[l * k + j] = v;
            }
        }
        if g.iter().all(|v| v.abs() <= 1e-14 * ssq.max(1e-300)) {
            converged = true;
            break;
        }
        // Damped steps until one lowers the sum of squares. Several dampings are tried
        // together (one `eval_many`, which costs about one evaluation when the
        // residuals evaluate points side by side); the best decrease wins.
        loop {
            let lams: Vec<f64> = TRIAL_DAMPING.iter().map(|f| f * lambda).collect();
            let mut cand = Vec::with_capacity(lams.len());
            for &lam in &lams {
                let mut m = a.clone();
                for j in 0..k {
                    m[j * k + j] += lam * a[j * k + j].max(1e-12 * (1.0 + a[j * k + j]));
                }
                let mut st: Vec<f64> = g.iter().map(|v| -v).collect();
                if cholesky_solve(&mut m, &mut st, k) {
                    cand.push((lam, st));
                }
            }
            if cand.is_empty() {
                lambda *= 64.0 * nu;
                nu *= 2.0;
                if lambda > 1e16 {
                    break 'outer;
                }
                continue;
            }
            let pts: Vec<Vec<f64>> = cand.iter().map(|(_, st)| x.iter().zip(st).map(|(a, b)| a + b).collect()).collect();
            let mut touts = vec![Vec::with_capacity(n); pts.len()];
            let mut toks = vec![false; pts.len()];
            evals += pts.len();
            residuals.eval_many(&pts, &mut touts, &mut toks);
            let mut best: Option<(usize, f64)> = None;
            for (c, (ok, o)) in toks.iter().zip(&touts).enumerate() {
                if let (true, Some(v)) = (*ok && o.len() == n, sumsq(o)) {
                    if v < ssq && best.is_none_or(|(_, b)| v < b) {
                        best = Some((c, v));
                    }
                }
            }
            let tiny = |st: &[f64]| (0..k).all(|j| st[j].abs() <= settings.xtol * (x[j].abs() + scale[j]));
            match best {
                Some((c, new)) => {
                    let (lam, st) = &cand[c];
                    // predicted reduction: δᵀ(λDδ - g) for the damped system
                    let pred: f64 = (0..k).map(|j| st[j] * (lam * a[j * k + j] * st[j] - g[j])).sum();
                    let rho = if pred > 0.0 { (ssq - new) / pred } else { 0.0 };
                    let small_step = tiny(st);
                    let small_gain = ssq - new <= settings.ftol * ssq;
                    x.copy_from_slice(&pts[c]);
                    r = std::mem::take(&mut touts[c]);
                    ssq = new;
                    lambda = lam * (1.0 / 3.0f64).max(1.0 - (2.0 * rho - 1.0).powi(3));
                    nu = 2.0;
                    if small_step || small_gain {
                        converged = true;
                        break 'outer;
                    }
                    break;
                }
                None => {
                    if cand.iter().all(|(_, st)| tiny(st)) {
                        // no decrease even for a negligible step: at the minimum
                        converged = true;
                        break 'outer;
                    }
                    lambda *= 64.0 * nu;
                    nu *= 2.0;
                    if lambda > 1e16 {
                        converged = true;
                        break 'outer;
                    }
                }
            }
        }
    }
    Some(Minimum { x, ssq, evals, converged })
}

fn sumsq(r: &[f64]) -> Option<f64> {
    let s = dot(r, r);
    s.is_finite().then_some(s)
}

/// Dot product with eight independent partial sums, so that it vectorises instead of
/// waiting on one chain of additions.
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f64 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f64>() + tail
}

/// Solves `m x = b` for a symmetric positive definite `m` (k × k, overwritten);
/// `b` becomes `x`. False when `m` is not positive definite.
pub(crate) fn cholesky_solve(m: &mut [f64], b: &mut [f64], k: usize) -> bool {
    for j in 0..k {
        let mut d = m[j * k + j];
        for l in 0..j {
            d -= m[j * k + l] * m[j * k + l];
        }
        if !(d > 0.0) {
            return false;
        }
        let d = d.sqrt();
        m[j * k + j] = d;
        for i in j + 1..k {
            let mut v = m[i * k + j];
            for l in 0..j {
                v -= m[i * k + l] * m[j * k + l];
            }
            m[i * k + j] = v / d;
        }
    }
    for i in 0..k {
        let s: f64 = (0..i).map(|l| m[i * k + l] * b[l]).sum();
        b[i] = (b[i] - s) / m[i * k + i];
    }
    for i in (0..k).rev() {
        let s: f64 = (i + 1..k).map(|l| m[l * k + i] * b[l]).sum();
        b[i] = (b[i] - s) / m[i * k + i];
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_an_exponential_decay_exactly() {
        // y = 2 exp(-0.5 t) at t = 0..10; start far away
        let t: Vec<f64> = (0..10).map(|v| v as f64).collect();
        let y: Vec<f64> = t.iter().map(|t| 2.0 * (-0.5 * t).exp()).collect();
        let res = |x: &[f64], out: &mut Vec<f64>| {
            out.clear();
            out.extend(t.iter().zip(&y).map(|(t, y)| x[0] * (-x[1] * t).exp() - y));
            true
        };
        let m = minimize(res, &[1.0, 0.1], &[1.0, 1.0], Settings::default()).unwrap();
        assert!(m.converged);
        assert!((m.x[0] - 2.0).abs() < 1e-7 && (m.x[1] - 0.5).abs() < 1e-7, "{:?}", m.x);
        assert!(m.ssq < 1e-14);
    }

    #[test]
    fn rosenbrock_as_least_squares() {
        // r = (10 (x1 - x0²), 1 - x0): minimum at (1, 1)
        let res = |x: &[f64], out: &mut Vec<f64>| {
            out.clear();
            out.extend([10.0 * (x[1] - x[0] * x[0]), 1.0 - x[0]]);
            true
        };
        let m = minimize(res, &[-1.2, 1.0], &[1.0, 1.0], Settings::default()).unwrap();
        assert!((m.x[0] - 1.0).abs() < 1e-6 && (m.x[1] - 1.0).abs() < 1e-6, "{:?}", m.x);
    }

    #[test]
    fn linear_least_squares_matches_the_normal_equations() {
        // y = a + b t: by hand for t = 0,1,2,3 and y = 1,3,2,5: b = 1.1, a = 1.1
        let (t, y) = ([0.0, 1.0, 2.0, 3.0], [1.0, 3.0, 2.0, 5.0]);
        let res = |x: &[f64], out: &mut Vec<f64>| {
            out.clear();
            out.extend(t.iter().zip(&y).map(|(t, y)| x[0] + x[1] * t - y));
            true
        };
        let m = minimize(res, &[0.0, 0.0], &[1.0, 1.0], Settings::default()).unwrap();
        assert!((m.x[0] - 1.1).abs() < 1e-6 && (m.x[1] - 1.1).abs() < 1e-6, "{:?}", m.x);
        // rejected regions are avoided: x[1] may not exceed 1 (start inside)
        let bounded = |x: &[f64], out: &mut Vec<f64>| {
            out.clear();
            out.extend(t.iter().zip(&y).map(|(t, y)| x[0] + x[1] * t - y));
            x[1] <= 1.0
        };
        let m = minimize(bounded, &[0.0, 0.0], &[1.0, 1.0], Settings::default()).unwrap();
        assert!(m.x[1] <= 1.0);
    }
}
