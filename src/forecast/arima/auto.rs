//! `arima-auto`: order selection in the manner of R's `auto.arima` as statsforecast's
//! `AutoARIMA` implements it (non-seasonal): KPSS tests choose `d`, then a stepwise
//! search over (p, q, constant) by AICc, with CSS fits standing in for maximum
//! likelihood on long series (the "approximation"), and finally the best orders
//! refitted by CSS-ML until one has every AR and MA root outside 1.01.

use super::{Fit, Method, Optimizer, Order, Tuning, difference, fit_tuned, fit_with};

/// Search bounds and switches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AutoSettings {
    pub max_p: usize,
    pub max_q: usize,
    pub max_d: usize,
    pub start_p: usize,
    pub start_q: usize,
    /// Most models the stepwise search fits.
    pub max_models: usize,
    /// CSS fits during the search: `None` = when the series is longer than 150.
    pub approximation: Option<bool>,
}

impl Default for AutoSettings {
    fn default() -> Self {
        AutoSettings { max_p: 5, max_q: 5, max_d: 2, start_p: 2, start_q: 2, max_models: 94, approximation: Some(false) }
    }
}

/// The chosen model, fitted by CSS-ML.
#[derive(Debug, Clone)]
pub struct Choice {
    pub p: usize,
    pub d: usize,
    pub q: usize,
    /// Mean (d = 0) or drift (d = 1).
    pub constant: bool,
    pub fit: Fit,
    /// Models fitted during the search.
    pub tried: usize,
}

/// The KPSS level-stationarity statistic with `floor(3 √n / 13)` Newey-West lags
/// (statsmodels' `kpss(x, "c", nlags=...)`, as statsforecast's `ndiffs` calls it).
pub fn kpss_stat(x: &[f64]) -> f64 {
    let n = x.len();
    let mean = x.iter().sum::<f64>() / n as f64;
    let e: Vec<f64> = x.iter().map(|v| v - mean).collect();
    let mut s = 0.0;
    let mut eta = 0.0;
    for v in &e {
        s += v;
        eta += s * s;
    }
    eta /= (n * n) as f64;
    let lags = (3.0 * (n as f64).sqrt() / 13.0).floor() as usize;
    let mut lrv: f64 = e.iter().map(|v| v * v).sum();
    for i in 1..=lags.min(n.saturating_sub(1)) {
        let prod: f64 = e[i..].iter().zip(&e[..n - i]).map(|(a, b)| a * b).sum();
        lrv += 2.0 * prod * (1.0 - i as f64 / (lags as f64 + 1.0));
    }
    eta / (lrv / n as f64)
}

/// 5% critical value of the KPSS level test (Kwiatkowski et al. 1992, table 1).
const KPSS_5PCT: f64 = 0.463;

fn is_constant(x: &[f64]) -> bool {
    x.iter().all(|v| *v == x[0])
}

/// Differences needed for level stationarity: difference while KPSS rejects at 5%.
pub fn ndiffs(x: &[f64], max_d: usize) -> usize {
    if x.is_empty() || is_constant(x) {
        return 0;
    }
    let mut x = x.to_vec();
    let mut d = 0;
    while d < max_d && x.len() > 2 && kpss_stat(&x) > KPSS_5PCT {
        d += 1;
        x = difference(&x, 1);
        if is_constant(&x) {
            break;
        }
    }
    d
}

/// Whether every root of `1 - Σ c_i z^i` lies outside |z| = `radius`: the AR
/// polynomial with coefficients `c_i radius^i` is stationary, which the step-down
/// (inverse Durbin-Levinson) recursion decides. Like statsforecast, a polynomial
/// whose last non-negligible coefficient is the first is not checked.
fn roots_outside(c: &[f64], radius: f64) -> bool {
    let Some(last) = c.iter().rposition(|v| v.abs() > 1e-8) else { return true };
    if last == 0 {
        return true;
    }
    let mut a: Vec<f64> = c[..=last].iter().enumerate().map(|(i, v)| v * radius.powi(i as i32 + 1)).collect();
    for k in (0..a.len()).rev() {
        let pk = a[k];
        if pk.abs() >= 1.0 {
            return false;
        }
        let prev: Vec<f64> = (0..k).map(|j| (a[j] + pk * a[k - 1 - j]) / (1.0 - pk * pk)).collect();
        a.truncate(k);
        a.copy_from_slice(&prev);
    }
    true
}

struct Candidate {
    p: usize,
    q: usize,
    constant: bool,
    ic: f64,
}

/// Information criterion of one model (infinite when the fit fails or a root is
/// within 1.01 of the unit circle), as statsforecast's `myarima` computes it.
fn criterion(xd: &[f64], n: usize, d: usize, p: usize, q: usize, constant: bool, approx: bool, offset: f64) -> (f64, Option<Fit>) {
    let order = Order { p, q, mean: constant };
    let method = if approx { Method::Css } else { Method::CssMl };
    // Small models, where each comparison hinges on reaching the optimum: no early stop.
    // (With the forecaster's 10 / 20 iteration limits 30 of the 40 fixture orders
    // matched statsforecast's; with 100 / 100, 32.)
    let tuning = Tuning {
        strict: true,
        css: super::lm::Settings { ftol: 1e-10, max_iter: 100, ..Default::default() },
        ml: super::lm::Settings { ftol: 1e-10, max_iter: 100, ..Default::default() },
        ..Default::default()
    };
    let Some(fit) = fit_tuned(xd, order, method, None, Optimizer::Lm, &tuning) else { return (f64::INFINITY, None) };
    let nstar = (n - d) as f64;
    let npar = (p + q + constant as usize + 1) as f64;
    let aic = if approx { offset + nstar * fit.sigma2.ln() + 2.0 * npar } else { -2.0 * fit.loglik + 2.0 * npar };
    let aicc = if nstar - npar - 1.0 != 0.0 { aic + 2.0 * npar * (npar + 1.0) / (nstar - npar - 1.0) } else { f64::INFINITY };
    let neg_ma: Vec<f64> = fit.model.ma.iter().map(|v| -v).collect();
    let ok = roots_outside(&fit.model.ar, 1.01) && roots_outside(&neg_ma, 1.01);
    let ic = if aicc.is_finite() && ok { aicc } else { f64::INFINITY };
    (ic, Some(fit))
}

/// Chooses and fits a model for `y` (levels). `None` when no model can be fitted.
pub fn select(y: &[f64], s: &AutoSettings) -> Option<Choice> {
    let n = y.len();
    if n < 4 || is_constant(y) {
        return None;
    }
    let d = ndiffs(y, s.max_d);
    let xd = difference(y, d);
    if xd.len() < 3 || is_constant(&xd) {
        return None;
    }
    let max_p = s.max_p.min(n / 3);
    let max_q = s.max_q.min(n / 3);
    let approx = s.approximation.unwrap_or(n > 150);
    let offset = if approx {
        // statsforecast: -2 loglik - n log σ² of ARIMA(0, d, 0) (a mean when d = 0)
        match fit_with(&xd, Order { p: 0, q: 0, mean: d == 0 }, Method::CssMl, None, Optimizer::Lm) {
            Some(f) => -2.0 * f.loglik - n as f64 * f.sigma2.ln(),
            None => 0.0,
        }
    } else {
        0.0
    };
    let may_constant = d <= 1;
    let mut results: Vec<Candidate> = Vec::new();
    let mut best = f64::INFINITY;
    let (mut p, mut q, mut constant) = (s.start_p.min(max_p), s.start_q.min(max_q), may_constant);
    // Fits a model unless already tried; returns whether it beat the best so far.
    let try_model = |pp: usize, qq: usize, cc: bool, results: &mut Vec<Candidate>, best: &mut f64| -> bool {
        if results.len() >= s.max_models || results.iter().any(|c| c.p == pp && c.q == qq && c.constant == cc) {
            return false;
        }
        let (ic, _) = criterion(&xd, n, d, pp, qq, cc, approx, offset);
        results.push(Candidate { p: pp, q: qq, constant: cc, ic });
        if ic < *best {
            *best = ic;
            true
        } else {
            false
        }
    };
    try_model(p, q, constant, &mut results, &mut best);
    if try_model(0, 0, constant, &mut results, &mut best) {
        (p, q) = (0, 0);
    }
    if max_p > 0 && try_model(1, 0, constant, &mut results, &mut best) {
        (p, q) = (1, 0);
    }
    if max_q > 0 && try_model(0, 1, constant, &mut results, &mut best) {
        (p, q) = (0, 1);
    }
    if constant && try_model(0, 0, false, &mut results, &mut best) {
        (p, q, constant) = (0, 0, false);
    }
    loop {
        let before = results.len();
        if before >= s.max_models {
            break;
        }
        // neighbours in statsforecast's order; the first improvement moves there
        let moves: [(bool, isize, isize); 8] = [
            (p > 0, -1, 0),
            (q > 0, 0, -1),
            (p < max_p, 1, 0),
            (q < max_q, 0, 1),
            (q > 0 && p > 0, -1, -1),
            (q < max_q && p > 0, -1, 1),
            (q > 0 && p < max_p, 1, -1),
            (q < max_q && p < max_p, 1, 1),
        ];
        let mut moved = false;
        for (allowed, dp, dq) in moves {
            if !allowed {
                continue;
            }
            let (np, nq) = ((p as isize + dp) as usize, (q as isize + dq) as usize);
            if try_model(np, nq, constant, &mut results, &mut best) {
                (p, q) = (np, nq);
                moved = true;
                break;
            }
        }
        if !moved && may_constant && try_model(p, q, !constant, &mut results, &mut best) {
            constant = !constant;
            moved = true;
        }
        if !moved && results.len() == before {
            break;
        }
        if !moved {
            break;
        }
    }
    // Refit the best orders by CSS-ML until one is acceptable.
    let mut order: Vec<&Candidate> = results.iter().filter(|c| !c.ic.is_nan()).collect();
    order.sort_by(|a, b| a.ic.total_cmp(&b.ic));
    let refit = |c: &Candidate| -> Option<Choice> {
        let (ic, fit) = if approx { criterion(&xd, n, d, c.p, c.q, c.constant, false, 0.0) } else { (c.ic, None) };
        let fit = match fit {
            Some(f) => f,
            None if !approx && ic.is_finite() => fit_with(&xd, Order { p: c.p, q: c.q, mean: c.constant }, Method::CssMl, None, Optimizer::Lm)?,
            None => return None,
        };
        ic.is_finite().then_some(Choice { p: c.p, d, q: c.q, constant: c.constant, fit, tried: 0 })
    };
    let mut choice = order.iter().filter(|c| approx || c.ic.is_finite()).find_map(|c| refit(c))?;
    choice.tried = results.len();
    Some(choice)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kpss_statistic_by_hand() {
        // x = 1, 2, 3, 4 (n = 4, 0 lags): e = -1.5 -.5 .5 1.5, partial sums -1.5 -2 -1.5 0,
        // eta = (2.25 + 4 + 2.25) / 16 = .53125, lrv = 5 / 4 -> .425
        assert!((kpss_stat(&[1.0, 2.0, 3.0, 4.0]) - 0.425).abs() < 1e-15);
    }

    #[test]
    fn root_check_by_the_unit_circle() {
        // 1 - 1.5 z + .56 z² = (1 - .7 z)(1 - .8 z): roots 1/.7 and 1/.8 = 1.25
        assert!(roots_outside(&[1.5, -0.56], 1.01));
        assert!(!roots_outside(&[1.5, -0.56], 1.3));
        // (1 - .995 z)(1 - .1 z): a root at 1.005 < 1.01
        assert!(!roots_outside(&[1.095, -0.0995], 1.01));
        // a single coefficient is not checked (statsforecast's rule)
        assert!(roots_outside(&[0.999], 1.01));
    }

    #[test]
    fn a_random_walk_is_differenced_and_white_noise_is_not() {
        let mut s = 99u64;
        let mut unif = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        };
        let noise: Vec<f64> = (0..500).map(|_| unif()).collect();
        let walk: Vec<f64> = noise.iter().scan(0.0, |a, v| {
            *a += v;
            Some(*a)
        }).collect();
        assert_eq!(ndiffs(&noise, 2), 0);
        assert_eq!(ndiffs(&walk, 2), 1);
    }
}
