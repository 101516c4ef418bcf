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

/// Residuals of the conditional sum of squares: zero before `p`, then
/// `e_t = x_t - mean - Σ φ_i (x_{t-i} - mean) - Σ θ_j e_{t-j}`. Returns
/// `(sum of squares, number of residuals)`.
pub fn css(x: &[f64], m: &Arma) -> (f64, usize) {
    let (p, q) = (m.ar.len(), m.ma.len());
    let mut e = vec![0.0; x.len()];
    let mut ssq = 0.0;
    for t in p..x.len() {
        let mut v = x[t] - m.mean;
        for (i, phi) in m.ar.iter().enumerate() {
            v -= phi * (x[t - i - 1] - m.mean);
        }
        for j in 0..q.min(t - p) {
            v -= m.ma[j] * e[t - j - 1];
        }
        e[t] = v;
        ssq += v * v;
    }
    (ssq, x.len().saturating_sub(p))
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

    /// The stationary covariance: solves (I - T⊗T) vec P = vec RR'. `None` if singular.
    fn stationary_cov(&self) -> Option<Vec<f64>> {
        let r = self.r;
        let n = r * r;
        let mut a = vec![0.0; n * n];
        let mut b = self.rr.clone();
        for i in 0..r {
            for j in 0..r {
                let row = i * r + j;
                a[row * n + row] += 1.0;
                for k in 0..r {
                    for l in 0..r {
                        a[row * n + k * r + l] -= self.t[i * r + k] * self.t[j * r + l];
                    }
                }
            }
        }
        solve(&mut a, &mut b, n)?;
        Some(b)
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

/// Runs the Kalman filter over `x`. `None` when the model is not stationary enough
/// for a stationary start or the filter breaks down.
pub fn filter(x: &[f64], m: &Arma) -> Option<Filtered> {
    let ss = Ss::new(m);
    let r = ss.r;
    let mut p = ss.stationary_cov()?;
    let mut a = vec![0.0; r];
    let mut tmp = vec![0.0; r * r];
    let (mut sumsq, mut sumlog) = (0.0, 0.0);
    for &y in x {
        let v = (y - m.mean) - a[0];
        let f = p[0];
        if !(f > 0.0) || !f.is_finite() {
            return None;
        }
        sumsq += v * v / f;
        sumlog += f.ln();
        // update: a += P[:,0] v / F ; P -= P[:,0] P[0,:] / F
        let col: Vec<f64> = (0..r).map(|i| p[i * r]).collect();
        for i in 0..r {
            a[i] += col[i] * v / f;
            for j in 0..r {
                p[i * r + j] -= col[i] * col[j] / f;
            }
        }
        ss.predict_mean(&mut a, &mut tmp);
        ss.predict_cov(&mut p, &mut tmp);
    }
    Some(Filtered { sumsq, sumlog, n: x.len(), state: a, cov: p })
}

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
