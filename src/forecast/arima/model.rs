//! ARMA(p, q) on a (differenced) series: conditional sum of squares, exact Gaussian
//! likelihood through a Kalman filter, and forecasts.
//!
//! State space (Harvey): `x_t = Z α_t`, `α_{t+1} = T α_t + R η_t`, `η ~ N(0, σ²)`,
//! with `r = max(p, q + 1)` states, `T` holding the AR coefficients in its first
//! column and ones above the diagonal, `R = (1, θ_1, ..., θ_{r-1})`, `Z = e_1`. The
//! initial state covariance is the stationary one, the solution of
//! `P = T P T' + R R'` (per unit σ²), so the likelihood is exact.

/// Coefficients of an ARMA model of `x_t - mean`.
#[derive(Debug, Clone, PartialEq)]
pub struct Arma {
    pub ar: Vec<f64>,
    pub ma: Vec<f64>,
    pub mean: f64,
}

/// R's `partrans`: unconstrained values to the coefficients of a stationary AR
/// polynomial (tanh to partial autocorrelations, then Durbin-Levinson).
pub fn partrans(raw: &[f64]) -> Vec<f64> {
    let mut new: Vec<f64> = raw.iter().map(|v| v.tanh()).collect();
    let mut work = new.clone();
    for j in 1..new.len() {
        let a = new[j];
        for k in 0..j {
            work[k] -= a * new[j - k - 1];
        }
        new[..j].copy_from_slice(&work[..j]);
    }
    new
}

/// The inverse of [`partrans`]: coefficients of a stationary AR polynomial to the
/// unconstrained values (step-down recursion to the partial autocorrelations, then
/// atanh). `None` when the polynomial is not stationary.
pub fn invtrans(coefs: &[f64]) -> Option<Vec<f64>> {
    let mut a = coefs.to_vec();
    let mut raw = vec![0.0; a.len()];
    for k in (0..a.len()).rev() {
        let pk = a[k];
        if !(pk.abs() < 1.0) {
            return None;
        }
        raw[k] = pk.atanh();
        let prev: Vec<f64> = (0..k).map(|j| (a[j] + pk * a[k - 1 - j]) / (1.0 - pk * pk)).collect();
        a.truncate(k);
        a.copy_from_slice(&prev);
    }
    Some(raw)
}

/// Residuals of the conditional sum of squares: zero before `p`, then
/// `e_t = x_t - mean - Σ φ_i (x_{t-i} - mean) - Σ θ_j e_{t-j}`. Returns
/// `(sum of squares, number of residuals)`.
pub fn css(x: &[f64], m: &Arma) -> (f64, usize) {
    let mut e = Vec::new();
    css_residuals(x, m, &mut e);
    (e.iter().map(|v| v * v).sum(), e.len())
}

/// The CSS residuals `e_p .. e_{n-1}` into `out` (cleared first).
pub fn css_residuals(x: &[f64], m: &Arma, out: &mut Vec<f64>) {
    let mut outs = [std::mem::take(out)];
    css_residuals_lanes(x, std::slice::from_ref(m), &mut outs);
    *out = std::mem::take(&mut outs[0]);
}

struct Ss {
    r: usize,
    t: Vec<f64>, // r × r, row-major
    rr: Vec<f64>,
}

impl Ss {
    fn new(m: &Arma) -> Ss {
        let r = m.ar.len().max(m.ma.len() + 1);
        let mut t = vec![0.0; r * r];
        for (i, phi) in m.ar.iter().enumerate() {
            t[i * r] = *phi;
        }
        for i in 0..r - 1 {
            t[i * r + i + 1] = 1.0;
        }
        let mut rv = vec![0.0; r];
        rv[0] = 1.0;
        for (j, th) in m.ma.iter().enumerate() {
            rv[j + 1] = *th;
        }
        let mut rr = vec![0.0; r * r];
        for i in 0..r {
            for j in 0..r {
                rr[i * r + j] = rv[i] * rv[j];
            }
        }
        Ss { r, t, rr }
    }

    /// P ← T P T' + R R', in O(r²): T is a companion matrix (first column φ, ones
    /// above the diagonal), so (T P)[i][j] = φ_i P[0][j] + P[i+1][j].
    fn predict_cov(&self, p: &mut [f64], tmp: &mut [f64]) {
        let r = self.r;
        let phi = |i: usize| self.t[i * r];
        for i in 0..r {
            for j in 0..r {
                let below = if i + 1 < r { p[(i + 1) * r + j] } else { 0.0 };
                tmp[i * r + j] = phi(i) * p[j] + below;
            }
        }
        for i in 0..r {
            for j in 0..r {
                let right = if j + 1 < r { tmp[i * r + j + 1] } else { 0.0 };
                p[i * r + j] = tmp[i * r] * phi(j) + right + self.rr[i * r + j];
            }
        }
    }

    fn predict_mean(&self, a: &mut [f64], _tmp: &mut [f64]) {
        let r = self.r;
        let a0 = a[0];
        for i in 0..r {
            let below = if i + 1 < r { a[i + 1] } else { 0.0 };
            a[i] = self.t[i * r] * a0 + below;
        }
    }

    /// The stationary covariance, the solution of `P = T P T' + RR'`. `None` if singular.
    ///
    /// With T a companion matrix, `(T P T')_ij = φ_i φ_j P_00 + φ_i P_0,j+1 + φ_j P_0,i+1
    /// + P_i+1,j+1`, so every entry is an affine function of the first row
    /// `u = P_0,·`, built from the bottom-right corner up; the first row's own
    /// equations are then r linear equations in u. O(r³) instead of the O(r⁶) of
    /// solving the Kronecker system.
    fn stationary_cov(&self) -> Option<Vec<f64>> {
        let r = self.r;
        let phi: Vec<f64> = (0..r).map(|i| self.t[i * r]).collect();
        let w = r + 1; // [constant, coefficients of u_0 .. u_{r-1}]
        let mut c = vec![0.0; r * r * w];
        for i in (0..r).rev() {
            for j in (0..r).rev() {
                let at = (i * r + j) * w;
                if i + 1 < r && j + 1 < r {
                    let below = ((i + 1) * r + j + 1) * w;
                    for k in 0..w {
                        c[at + k] = c[below + k];
                    }
                }
                c[at] += self.rr[i * r + j];
                c[at + 1] += phi[i] * phi[j];
                if j + 1 < r {
                    c[at + 1 + j + 1] += phi[i];
                }
                if i + 1 < r {
                    c[at + 1 + i + 1] += phi[j];
                }
            }
        }
        // u_j = c[0][j](u): (I - C) u = const
        let mut a = vec![0.0; r * r];
        let mut b = vec![0.0; r];
        for j in 0..r {
            let at = j * w;
            b[j] = c[at];
            for k in 0..r {
                a[j * r + k] = if j == k { 1.0 } else { 0.0 } - c[at + 1 + k];
            }
        }
        solve(&mut a, &mut b, r)?;
        let mut p = vec![0.0; r * r];
        for (ij, v) in p.iter_mut().enumerate() {
            let at = ij * w;
            *v = c[at] + (0..r).map(|k| c[at + 1 + k] * b[k]).sum::<f64>();
        }
        p.iter().all(|v| v.is_finite()).then_some(p)
    }
}

/// Gaussian elimination with partial pivoting; `b` becomes the solution.
fn solve(a: &mut [f64], b: &mut [f64], n: usize) -> Option<()> {
    for c in 0..n {
        let piv = (c..n).max_by(|&i, &j| a[i * n + c].abs().total_cmp(&a[j * n + c].abs()))?;
        if a[piv * n + c].abs() < 1e-12 {
            return None;
        }
        if piv != c {
            for k in 0..n {
                a.swap(c * n + k, piv * n + k);
            }
            b.swap(c, piv);
        }
        for i in c + 1..n {
            let f = a[i * n + c] / a[c * n + c];
            if f != 0.0 {
                for k in c..n {
                    a[i * n + k] -= f * a[c * n + k];
                }
                b[i] -= f * b[c];
            }
        }
    }
    for c in (0..n).rev() {
        let s: f64 = (c + 1..n).map(|k| a[c * n + k] * b[k]).sum();
        b[c] = (b[c] - s) / a[c * n + c];
    }
    Some(())
}

/// The Kalman filter's sums over a series, per unit σ², and its final predicted state.
#[derive(Debug, Clone)]
pub struct Filtered {
    /// Σ v_t² / F_t
    pub sumsq: f64,
    /// Σ ln F_t
    pub sumlog: f64,
    pub n: usize,
    state: Vec<f64>,
    cov: Vec<f64>,
}

impl Filtered {
    /// Exact log-likelihood at the variance `sigma2`.
    pub fn loglik(&self, sigma2: f64) -> f64 {
        let n = self.n as f64;
        -0.5 * (n * (2.0 * std::f64::consts::PI * sigma2).ln() + self.sumlog + self.sumsq / sigma2)
    }
    /// The variance that maximises the likelihood.
    pub fn sigma2(&self) -> f64 {
        self.sumsq / self.n as f64
    }
    /// Log-likelihood with σ² at its maximum (the concentrated likelihood).
    pub fn loglik_concentrated(&self) -> f64 {
        self.loglik(self.sigma2())
    }
}

/// Once the predicted state covariance changes by less than this between steps
/// (largest absolute entry, per unit σ²), the filter has reached its steady state:
/// the gain is frozen and each further step costs O(r) instead of O(r²).
pub const STEADY_TOL: f64 = 1e-13;

/// Runs the Kalman filter over `x`. `None` when the model is not stationary enough
/// for a stationary start or the filter breaks down.
pub fn filter(x: &[f64], m: &Arma) -> Option<Filtered> {
    filter_with(x, m, None)
}

/// The filter, also writing the standardised innovations `v_t / √F_t` to `resid`.
pub fn filter_with(x: &[f64], m: &Arma, mut resid: Option<&mut Vec<f64>>) -> Option<Filtered> {
    let ss = Ss::new(m);
    let r = ss.r;
    let mut p = ss.stationary_cov()?;
    let mut a = vec![0.0; r];
    let mut tmp = vec![0.0; r * r];
    let mut prev = vec![0.0; r * r];
    let mut col = vec![0.0; r];
    let mut steady = false;
    let (mut sumsq, mut sumlog) = (0.0, 0.0);
    if let Some(out) = resid.as_deref_mut() {
        out.clear();
    }
    let (mut f, mut lnf, mut sqf) = (0.0, 0.0, 0.0);
    for &y in x {
        let v = (y - m.mean) - a[0];
        if !steady {
            f = p[0];
            if !(f > 0.0) || !f.is_finite() {
                return None;
            }
            lnf = f.ln();
            sqf = f.sqrt();
            col.iter_mut().enumerate().for_each(|(i, c)| *c = p[i * r]);
        }
        sumsq += v * v / f;
        sumlog += lnf;
        if let Some(out) = resid.as_deref_mut() {
            out.push(v / sqf);
        }
        // update: a += P[:,0] v / F ; P -= P[:,0] P[0,:] / F (frozen once steady)
        let g = v / f;
        for i in 0..r {
            a[i] += col[i] * g;
        }
        ss.predict_mean(&mut a, &mut tmp);
        if !steady {
            prev.copy_from_slice(&p);
            for i in 0..r {
                for j in 0..r {
                    p[i * r + j] -= col[i] * col[j] / f;
                }
            }
            ss.predict_cov(&mut p, &mut tmp);
            steady = p.iter().zip(&prev).all(|(a, b)| (a - b).abs() < STEADY_TOL);
        }
    }
    if !sumsq.is_finite() || !sumlog.is_finite() {
        return None;
    }
    Some(Filtered { sumsq, sumlog, n: x.len(), state: a, cov: p })
}

/// Residuals whose sum of squares is `(Π F_t)^{1/n} Σ v_t² / F_t`, which the
/// concentrated likelihood decreases in: least squares on them is maximum likelihood.
/// Up to [`LANES`] models at once through [`chandrasekhar_lanes`]; `ok[l]` says
/// whether model `l`'s residuals could be computed.
pub fn ml_residuals_lanes(x: &[f64], ms: &[Arma], outs: &mut [Vec<f64>], ok: &mut [bool]) {
    let mut sums = [None; LANES];
    chandrasekhar_lanes(x, ms, outs, &mut sums);
    for ((o, s), k) in outs.iter_mut().zip(sums).zip(ok.iter_mut()) {
        *k = match s {
            Some((_, sumlog)) => {
                let scale = (sumlog / (2.0 * x.len() as f64)).exp();
                o.iter_mut().for_each(|v| *v *= scale);
                true
            }
            None => false,
        };
    }
}

/// The same innovations `v_t` and variances `F_t` as [`filter`], by the Chandrasekhar
/// recursions (Morf, Sidhu and Kailath 1974; Herbst 2015) for a time-invariant system:
/// instead of `P_t` they carry its increment `P_{t+1} - P_t = W_t M_t W_t'`, which has
/// rank one when the filter starts from the stationary covariance
/// (`W_1 = K_1`, `M_1 = -F_1`). Each step then costs O(r) instead of O(r²):
/// `F_{t+1} = F_t + M_t (Z W_t)²`, `K_{t+1} = (K_t F_t + T W_t M_t Z W_t) / F_{t+1}`,
/// `M_{t+1} = M_t + M_t² (Z W_t)² / F_t`, `W_{t+1} = T W_t - K_{t+1} Z W_t`,
/// with the prediction-form gain `K_t = T P_t Z' / F_t`. Writes `v_t / √F_t` to
/// `resid` when given; returns `(Σ v²/F, Σ ln F)`.
pub fn chandrasekhar(x: &[f64], m: &Arma, resid: Option<&mut Vec<f64>>) -> Option<(f64, f64)> {
    let mut outs = [Vec::new()];
    let mut sums = [None];
    chandrasekhar_lanes(x, std::slice::from_ref(m), &mut outs, &mut sums);
    if let Some(out) = resid {
        *out = std::mem::take(&mut outs[0]);
    }
    sums[0]
}

/// Lanes evaluated together: independent recurrences side by side hide each other's
/// latency (and vectorise).
pub const LANES: usize = 4;

/// [`chandrasekhar`] for up to [`LANES`] models of the same orders at once: `outs[l]`
/// gets model `l`'s standardised innovations and `sums[l]` its `(Σ v²/F, Σ ln F)`
/// (`None` where it fails). The gains of all lanes freeze together once every lane
/// has reached its steady state, so a lane's result matches a lone run's to ~1e-16.
pub fn chandrasekhar_lanes(x: &[f64], ms: &[Arma], outs: &mut [Vec<f64>], sums: &mut [Option<(f64, f64)>]) {
    const L: usize = LANES;
    let nl = ms.len();
    assert!(nl >= 1 && nl <= L && outs.len() >= nl && sums.len() >= nl);
    let r = ms[0].ar.len().max(ms[0].ma.len() + 1);
    sums[..nl].iter_mut().for_each(|s| *s = None);
    if r >= MAXR {
        return;
    }
    let z = [0.0; L];
    let (mut phi, mut k, mut w, mut a, mut tw) = ([z; MAXR], [z; MAXR], [z; MAXR], [z; MAXR], [z; MAXR]);
    let (mut f, mut mm, mut mean) = ([1.0; L], z, z);
    let mut alive = [false; L];
    for (l, m) in ms.iter().enumerate() {
        let ss = Ss::new(m);
        let Some(p0) = ss.stationary_cov() else { continue };
        if !(p0[0] > 0.0) || !p0[0].is_finite() {
            continue;
        }
        alive[l] = true;
        mean[l] = m.mean;
        f[l] = p0[0];
        mm[l] = -p0[0];
        for i in 0..r {
            phi[i][l] = m.ar.get(i).copied().unwrap_or(0.0);
            // K_1 = T P_1 e_1 / F_1
            k[i][l] = (phi[i][l] * p0[0] + if i + 1 < r { p0[(i + 1) * r] } else { 0.0 }) / p0[0];
            w[i][l] = k[i][l];
        }
    }
    let n = x.len();
    let mut res = vec![z; n];
    let (mut sumsq, mut sumlog, mut prod) = (z, z, [1.0; L]);
    let mut finv = [0.0; L];
    let mut sqinv = [0.0; L];
    for l in 0..L {
        finv[l] = 1.0 / f[l];
        sqinv[l] = finv[l].sqrt();
    }
    // Unused lanes copy lane 0, so that they never hold the others back.
    for l in nl..L {
        (phi[..r].iter_mut()).for_each(|v| v[l] = v[0]);
        (k[..r].iter_mut()).for_each(|v| v[l] = v[0]);
        (w[..r].iter_mut()).for_each(|v| v[l] = v[0]);
        (f[l], mm[l], mean[l], finv[l], sqinv[l]) = (f[0], mm[0], mean[0], finv[0], sqinv[0]);
    }
    let mut steady = false;
    for (t, &y) in x.iter().enumerate() {
        let mut v = z;
        for l in 0..L {
            v[l] = (y - mean[l]) - a[0][l];
            sumsq[l] += v[l] * v[l] * finv[l];
            prod[l] *= f[l];
            res[t][l] = v[l] * sqinv[l];
        }
        if prod.iter().any(|p| *p > 1e200) {
            for l in 0..L {
                sumlog[l] += prod[l].ln();
                prod[l] = 1.0;
            }
        }
        // a ← T a + K v
        let a0 = a[0];
        for i in 0..r {
            for l in 0..L {
                a[i][l] = phi[i][l] * a0[l] + a[i + 1][l] + k[i][l] * v[l];
            }
        }
        if steady {
            continue;
        }
        let w0 = w[0];
        let (mut dm, mut fnew, mut fninv, mut c) = (z, z, z, z);
        for l in 0..L {
            dm[l] = mm[l] * w0[l] * w0[l];
            fnew[l] = f[l] + dm[l];
            if !(fnew[l] > 0.0) || !fnew[l].is_finite() {
                alive[l] = false;
                fnew[l] = 1.0;
            }
            fninv[l] = 1.0 / fnew[l];
            c[l] = mm[l] * w0[l];
        }
        for i in 0..r {
            for l in 0..L {
                tw[i][l] = phi[i][l] * w0[l] + w[i + 1][l];
            }
        }
        for i in 0..r {
            for l in 0..L {
                k[i][l] = (k[i][l] * f[l] + tw[i][l] * c[l]) * fninv[l];
                w[i][l] = tw[i][l] - k[i][l] * w0[l];
            }
        }
        let mut ww = z;
        for i in 0..r {
            for l in 0..L {
                ww[l] += w[i][l] * w[i][l];
            }
        }
        for l in 0..L {
            mm[l] += mm[l] * dm[l] * finv[l];
            f[l] = fnew[l];
            finv[l] = fninv[l];
            sqinv[l] = fninv[l].sqrt();
        }
        // The gains freeze once every lane's covariance increment is negligible.
        steady = (0..L).all(|l| dm[l].abs() < 1e-16 * fnew[l] && (mm[l] * ww[l]).abs() < 1e-16 * fnew[l]);
    }
    for l in 0..nl {
        sumlog[l] += prod[l].ln();
        let out = &mut outs[l];
        out.clear();
        if alive[l] && sumsq[l].is_finite() && sumlog[l].is_finite() {
            out.extend(res.iter().map(|v| v[l]));
            sums[l] = Some((sumsq[l], sumlog[l]));
        }
    }
}

/// [`css_residuals`] for up to [`LANES`] models of the same orders at once.
pub fn css_residuals_lanes(x: &[f64], ms: &[Arma], outs: &mut [Vec<f64>]) {
    const L: usize = LANES;
    let nl = ms.len();
    assert!(nl >= 1 && nl <= L && outs.len() >= nl);
    let (p, q) = (ms[0].ar.len(), ms[0].ma.len());
    outs[..nl].iter_mut().for_each(|o| o.clear());
    if x.len() <= p {
        return;
    }
    let z = [0.0; L];
    let (mut phi, mut th, mut mu) = (vec![z; p], vec![z; q], z);
    for (l, m) in ms.iter().enumerate() {
        mu[l] = m.mean;
        (0..p).for_each(|i| phi[i][l] = m.ar[i]);
        (0..q).for_each(|j| th[j][l] = m.ma[j]);
    }
    let mut e = vec![z; x.len() - p];
    for t in p..x.len() {
        let k = t - p;
        let mut v = z;
        for l in 0..L {
            v[l] = x[t] - mu[l];
        }
        for i in 0..p {
            let xl = x[t - 1 - i];
            for l in 0..L {
                v[l] -= phi[i][l] * (xl - mu[l]);
            }
        }
        // θ_j e_{t-j} for j ≥ 2 first, θ_1 e_{t-1} last: a short chain between steps
        for j in 1..q.min(k) {
            for l in 0..L {
                v[l] -= th[j][l] * e[k - 1 - j][l];
            }
        }
        if q >= 1 && k >= 1 {
            for l in 0..L {
                v[l] -= th[0][l] * e[k - 1][l];
            }
        }
        e[k] = v;
    }
    for (l, out) in outs[..nl].iter_mut().enumerate() {
        out.extend(e.iter().map(|v| v[l]));
    }
}

/// Upper bound (exclusive, with one padding slot) of the state dimension of the fast paths.
const MAXR: usize = 24;

/// Forecasts of the next `h` values after the filtered sample, with their standard
/// errors at variance `sigma2`.
pub fn forecast(f: &Filtered, m: &Arma, h: usize, sigma2: f64) -> (Vec<f64>, Vec<f64>) {
    let ss = Ss::new(m);
    let (mut a, mut p) = (f.state.clone(), f.cov.clone());
    let mut tmp = vec![0.0; ss.r * ss.r];
    let (mut mean, mut se) = (Vec::with_capacity(h), Vec::with_capacity(h));
    for _ in 0..h {
        mean.push(m.mean + a[0]);
        se.push((p[0] * sigma2).max(0.0).sqrt());
        ss.predict_mean(&mut a, &mut tmp);
        ss.predict_cov(&mut p, &mut tmp);
    }
    (mean, se)
}

/// Standard errors of forecasts 1..=h of the series whose `d`-th difference the
/// model describes, at variance `sigma2`, given the filtered sample (the `d` last
/// levels are known). The level error at step h is `Σ_m w_{h-1-m} Z(α_m - a_m)`
/// with `w` the integration weights `C(m+d-1, d-1)`; in terms of `g_m = Σ_k
/// w_{m-k} Z T^k` its variance per σ² is `g_{h-1} P g_{h-1}' + Σ_{m<h-1} (g_m R)²`,
/// where `P` is the final predicted state covariance. O(h r²); for `d = 0` it
/// equals [`forecast`]'s standard errors.
pub fn level_stderr(f: &Filtered, m: &Arma, d: usize, h: usize, sigma2: f64) -> Vec<f64> {
    let ss = Ss::new(m);
    let r = ss.r;
    let rv: Vec<f64> = (0..r).map(|i| if i == 0 { 1.0 } else { m.ma.get(i - 1).copied().unwrap_or(0.0) }).collect();
    let mut u = vec![0.0; r]; // Z T^k
    u[0] = 1.0;
    let mut sums = vec![vec![0.0; r]; d]; // nested running sums of u: the last is g
    let mut noise = 0.0; // Σ_{m < k} (g_m R)²
    let mut out = Vec::with_capacity(h);
    for _ in 0..h {
        let mut g = u.clone();
        for s in sums.iter_mut() {
            s.iter_mut().zip(&g).for_each(|(a, b)| *a += b);
            g.copy_from_slice(s);
        }
        let mut gpg = 0.0;
        for i in 0..r {
            let row: f64 = (0..r).map(|j| f.cov[i * r + j] * g[j]).sum();
            gpg += g[i] * row;
        }
        out.push(((gpg + noise) * sigma2).max(0.0).sqrt());
        let gr: f64 = g.iter().zip(&rv).map(|(a, b)| a * b).sum();
        noise += gr * gr;
        // u ← u T: (uT)_0 = Σ u_i φ_i, (uT)_j = u_{j-1}
        let first: f64 = (0..r).map(|i| u[i] * ss.t[i * r]).sum();
        for j in (1..r).rev() {
            u[j] = u[j - 1];
        }
        u[0] = first;
    }
    out
}

/// Point forecasts only: the state mean runs forward, no covariance.
pub fn forecast_mean(f: &Filtered, m: &Arma, h: usize) -> Vec<f64> {
    let ss = Ss::new(m);
    let mut a = f.state.clone();
    let mut tmp = vec![0.0; ss.r];
    (0..h)
        .map(|_| {
            let v = m.mean + a[0];
            ss.predict_mean(&mut a, &mut tmp);
            v
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partrans_of_one_is_tanh_and_two_follow_durbin_levinson() {
        assert_eq!(partrans(&[0.5]), vec![0.5f64.tanh()]);
        // two PACFs a1, a2: phi1 = a1 - a2 a1, phi2 = a2
        let (a1, a2) = (0.3f64.tanh(), (-0.2f64).tanh());
        let v = partrans(&[0.3, -0.2]);
        assert!((v[0] - (a1 - a2 * a1)).abs() < 1e-15 && (v[1] - a2).abs() < 1e-15);
    }

    #[test]
    fn invtrans_undoes_partrans() {
        let raw = [0.3, -1.2, 0.05, 2.0];
        let back = invtrans(&partrans(&raw)).unwrap();
        raw.iter().zip(&back).for_each(|(a, b)| assert!((a - b).abs() < 1e-12, "{a} vs {b}"));
        // AR(1) with phi = 1 is not stationary
        assert!(invtrans(&[1.0]).is_none());
        assert!(invtrans(&[0.5, 0.6]).is_none()); // 1 - .5z - .6z² has a root inside
    }

    #[test]
    fn css_residuals_by_hand() {
        // AR(1) phi .5, MA(1) theta .2, mean 1: x = 1, 2, 0, 3
        // e1 = (2-1) - .5 (1-1) = 1 ; e2 = (0-1) - .5 (2-1) - .2 * 1 = -1.7 ;
        // e3 = (3-1) - .5 (0-1) - .2 * -1.7 = 2.84
        let m = Arma { ar: vec![0.5], ma: vec![0.2], mean: 1.0 };
        let (ssq, n) = css(&[1.0, 2.0, 0.0, 3.0], &m);
        assert_eq!(n, 3);
        assert!((ssq - (1.0 + 1.7 * 1.7 + 2.84 * 2.84)).abs() < 1e-12);
    }

    #[test]
    fn chandrasekhar_recursions_give_the_dense_filter_innovations() {
        // ARMA(3, 4), ARMA(5, 5) near the invertibility boundary, and white noise
        let x = crate::lcg_noise(12345, 500);
        for m in [
            Arma { ar: vec![0.5, -0.2, 0.1], ma: vec![0.4, 0.3, -0.2, 0.1], mean: 0.05 },
            Arma { ar: vec![0.3, 0.1, -0.2, 0.05, 0.1], ma: vec![-0.95, 0.1, 0.0, 0.05, -0.1], mean: 0.0 },
            Arma { ar: vec![], ma: vec![], mean: 0.0 },
        ] {
            let mut dense = Vec::new();
            let f = filter_with(&x, &m, Some(&mut dense)).unwrap();
            let mut fast = Vec::new();
            let (sumsq, sumlog) = chandrasekhar(&x, &m, Some(&mut fast)).unwrap();
            assert!(((sumsq - f.sumsq) / f.sumsq).abs() < 1e-10, "{sumsq} vs {}", f.sumsq);
            assert!((sumlog - f.sumlog).abs() < 1e-10 * (1.0 + f.sumlog.abs()), "{sumlog} vs {}", f.sumlog);
            for (a, b) in fast.iter().zip(&dense) {
                assert!((a - b).abs() < 1e-10, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn lanes_give_each_model_its_lone_result() {
        let x: Vec<f64> = (0..300).map(|t| ((t * 37 % 101) as f64 / 101.0 - 0.5) + 0.3 * ((t as f64) * 0.1).sin()).collect();
        let ms: Vec<Arma> = (0..3)
            .map(|i| Arma { ar: vec![0.3 - 0.1 * i as f64, 0.1], ma: vec![-0.5 + 0.2 * i as f64], mean: 0.01 * i as f64 })
            .collect();
        let mut outs = vec![Vec::new(); 3];
        let mut sums = vec![None; 3];
        chandrasekhar_lanes(&x, &ms, &mut outs, &mut sums);
        let mut css_outs = vec![Vec::new(); 3];
        css_residuals_lanes(&x, &ms, &mut css_outs);
        for (l, m) in ms.iter().enumerate() {
            let mut alone = Vec::new();
            let (a, b) = (chandrasekhar(&x, m, Some(&mut alone)).unwrap(), sums[l].unwrap());
            assert!((a.0 - b.0).abs() < 1e-12 * a.0 && (a.1 - b.1).abs() < 1e-12 * (1.0 + a.1.abs()));
            alone.iter().zip(&outs[l]).for_each(|(a, b)| assert!((a - b).abs() < 1e-12));
            css_residuals(&x, m, &mut alone);
            assert_eq!(alone, css_outs[l]);
        }
        // the CSS residuals by their definition, summed in the textbook order
        let m = &ms[1];
        let mut e = vec![0.0; x.len()];
        for t in 2..x.len() {
            let mut v = x[t] - m.mean - m.ar[0] * (x[t - 1] - m.mean) - m.ar[1] * (x[t - 2] - m.mean);
            if t > 2 {
                v -= m.ma[0] * e[t - 1];
            }
            e[t] = v;
            assert!((v - css_outs[1][t - 2]).abs() < 1e-15);
        }
    }

    #[test]
    fn ar1_stationary_variance_and_white_noise_likelihood() {
        // AR(1): stationary variance 1 / (1 - phi^2)
        let ss = Ss::new(&Arma { ar: vec![0.6], ma: vec![], mean: 0.0 });
        let p = ss.stationary_cov().unwrap();
        assert!((p[0] - 1.0 / (1.0 - 0.36)).abs() < 1e-12);
        // white noise: loglik = sum of N(0, s2) log densities
        let x = [0.5, -1.0, 2.0];
        let f = filter(&x, &Arma { ar: vec![], ma: vec![], mean: 0.0 }).unwrap();
        let s2 = 1.7;
        let want: f64 = x.iter().map(|v| -0.5 * ((2.0 * std::f64::consts::PI * s2).ln() + v * v / s2)).sum();
        assert!((f.loglik(s2) - want).abs() < 1e-12);
    }
}
