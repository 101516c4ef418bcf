//! Synthetic expert-load traces of any shape, calibrated to the bundled real ones.
//!
//! Each expert's routing logit is a persistent offset plus an AR(1) deviation whose
//! amplitude decays from a transient level to a stable one:
//! `logit[e](t) = b[e] + a(t) z[e](t)`, `a(t) = a_s + (a_0 − a_s) exp(−t / τ)`,
//! `z[e](t) = φ z[e](t−1) + sqrt(1 − φ²) ε`. Shares are the softmax of the logits, and
//! each step's `tokens × top_k` assignments are drawn from a multinomial over them,
//! which adds the sampling noise of a real router's counts.
//!
//! The defaults reproduce what the bundled gpt12-e16-top2 traces show (16 experts,
//! 8,192 tokens, top-2): a mean window-100 standard deviation of an expert's share near
//! 2.8 percentage points early on, falling to about 0.6 in the stable state, and a
//! lag-1 autocorrelation of the share's deviation from its local mean near 0.47 that
//! has faded by lag 10. `tests` measures these on generated output.

use crate::UsageError;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Binomial, Distribution, Normal};

/// Shape and dynamics of a synthetic trace.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct SynthConfig {
    /// Training steps.
    #[arg(long, default_value_t = 8_000)]
    pub steps: usize,
    /// MoE layers.
    #[arg(long, default_value_t = 6)]
    pub layers: usize,
    /// Experts per layer.
    #[arg(long, default_value_t = 16)]
    pub experts: usize,
    /// Tokens routed per step and layer.
    #[arg(long, default_value_t = 8_192)]
    pub tokens_per_step: u64,
    /// Experts each token is routed to.
    #[arg(long, default_value_t = 2)]
    pub top_k: u64,
    /// Seed of the random generator (same seed, same trace).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Decay time of the transient state, in steps.
    #[arg(long, default_value_t = 800.0)]
    pub transient: f64,
    /// Logit amplitude of an expert's fluctuation at step 0.
    #[arg(long, default_value_t = 0.48)]
    pub amplitude_start: f64,
    /// Logit amplitude in the stable state.
    #[arg(long, default_value_t = 0.095)]
    pub amplitude_stable: f64,
    /// Lag-1 autocorrelation of the logit fluctuation.
    #[arg(long, default_value_t = 0.55)]
    pub phi: f64,
    /// Spread of the experts' persistent logit offsets.
    #[arg(long, default_value_t = 0.05)]
    pub offset_sd: f64,
}

impl Default for SynthConfig {
    /// The flags' defaults above: their one source.
    fn default() -> Self {
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            config: SynthConfig,
        }
        <Defaults as clap::Parser>::parse_from(["synth"]).config
    }
}

impl SynthConfig {
    /// Checks the values clap cannot; the message names the flag.
    pub fn validate(&self) -> Result<(), UsageError> {
        let bad = |m: String| Err(UsageError(m));
        if self.steps == 0 || self.layers == 0 || self.experts == 0 {
            return bad("--steps, --layers and --experts must be at least 1".into());
        }
        // The loads are generated in memory, and ids are int32 columns.
        let cells = self.steps.checked_mul(self.layers).and_then(|c| c.checked_mul(self.experts));
        if cells.is_none_or(|c| c > 1 << 31) {
            return bad(format!(
                "--steps {} × --layers {} × --experts {}: at most 2^31 loads (they are generated in memory)",
                self.steps, self.layers, self.experts
            ));
        }
        if self.tokens_per_step == 0 || self.top_k == 0 || self.top_k > self.experts as u64 {
            return bad(format!("--top-k must be between 1 and --experts ({}), --tokens-per-step at least 1", self.experts));
        }
        if !(self.phi > -1.0 && self.phi < 1.0) {
            return bad(format!("--phi {} must be in (-1, 1)", self.phi));
        }
        let nonneg = [self.transient, self.amplitude_start, self.amplitude_stable, self.offset_sd];
        if nonneg.iter().any(|v| !(v.is_finite() && *v >= 0.0)) {
            return bad("--transient, --amplitude-start, --amplitude-stable and --offset-sd must be finite and >= 0".into());
        }
        Ok(())
    }
}

/// Writes a synthetic trace as long Parquet (`step` int64, `layer` int32, `expert`
/// int32, `tokens` int64, like the bundled traces), with the configuration as JSON in
/// the file's key-value metadata `synth_config`. The file appears only when complete.
pub fn write_parquet(cfg: &SynthConfig, path: &std::path::Path) -> anyhow::Result<()> {
    use std::sync::Arc;

    use arrow::array::{Int32Array, Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};

    let loads = generate(cfg);
    let (nl, ne) = (cfg.layers, cfg.experts);
    let meta = [("synth_config".to_string(), serde_json::to_string(cfg)?)].into_iter().collect();
    let schema = Arc::new(Schema::new_with_metadata(
        vec![
            Field::new("step", DataType::Int64, false),
            Field::new("layer", DataType::Int32, false),
            Field::new("expert", DataType::Int32, false),
            Field::new("tokens", DataType::Int64, false),
        ],
        meta,
    ));
    let dir = crate::output::folder_of(path);
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| anyhow::anyhow!("{}: not a file name", path.display()))?;
    let mut w = crate::output::AtomicParquet::create(dir, name, schema.clone())?;
    let per_step = nl * ne;
    let chunk_steps = ((1 << 20) / per_step).max(1);
    for t0 in (0..cfg.steps).step_by(chunk_steps) {
        let t1 = (t0 + chunk_steps).min(cfg.steps);
        let rows = (t1 - t0) * per_step;
        let idx = || (0..rows).map(move |i| (t0 + i / per_step, (i / ne) % nl, i % ne));
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values(idx().map(|(t, _, _)| t as i64))),
                Arc::new(Int32Array::from_iter_values(idx().map(|(_, l, _)| l as i32))),
                Arc::new(Int32Array::from_iter_values(idx().map(|(_, _, e)| e as i32))),
                Arc::new(Int64Array::from_iter_values(loads[t0 * per_step..t1 * per_step].iter().map(|&c| c as i64))),
            ],
        )?;
        w.write(&b)?;
    }
    w.finish()?;
    Ok(())
}

/// Writes a synthetic trace as a dense NumPy array, int32 `[steps, layers, experts]`
/// (an expert's load is at most `tokens_per_step`, which must fit). The file appears
/// only when complete.
pub fn write_npy(cfg: &SynthConfig, path: &std::path::Path) -> anyhow::Result<()> {
    if cfg.tokens_per_step > i32::MAX as u64 {
        return Err(UsageError(format!("--tokens-per-step {} does not fit a .npy's int32 loads; write a .parquet", cfg.tokens_per_step)).into());
    }
    let loads = generate(cfg);
    let mut header = format!(
        "{{'descr': '<i4', 'fortran_order': False, 'shape': ({}, {}, {}), }}",
        cfg.steps, cfg.layers, cfg.experts
    );
    // Magic, version 1.0, header length; the data starts on a 64-byte boundary.
    let pad = 64 - (10 + header.len() + 1) % 64;
    header.extend(std::iter::repeat_n(' ', pad % 64));
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + 4 * loads.len());
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for &c in &loads {
        bytes.extend_from_slice(&(c as i32).to_le_bytes());
    }
    let dir = crate::output::folder_of(path);
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| anyhow::anyhow!("{}: not a file name", path.display()))?;
    crate::output::write_atomic(dir, name, &bytes)
}

/// Generates the loads, dense `[step][layer][expert]`; every (step, layer) sums to
/// `tokens_per_step × top_k`.
pub fn generate(cfg: &SynthConfig) -> Vec<u64> {
    let (nt, nl, ne) = (cfg.steps, cfg.layers, cfg.experts);
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let normal = Normal::new(0.0, 1.0).expect("unit normal");
    let offsets: Vec<f64> = (0..nl * ne).map(|_| cfg.offset_sd * normal.sample(&mut rng)).collect();
    let mut z: Vec<f64> = (0..nl * ne).map(|_| normal.sample(&mut rng)).collect();
    let innov = (1.0 - cfg.phi * cfg.phi).sqrt();
    let n = cfg.tokens_per_step * cfg.top_k;
    let mut out = vec![0u64; nt * nl * ne];
    let mut p = vec![0.0; ne];
    for t in 0..nt {
        let decay = if cfg.transient > 0.0 { (-(t as f64) / cfg.transient).exp() } else { 0.0 };
        let a = cfg.amplitude_stable + (cfg.amplitude_start - cfg.amplitude_stable) * decay;
        for l in 0..nl {
            let base = l * ne;
            let mut max = f64::NEG_INFINITY;
            for e in 0..ne {
                let k = base + e;
                z[k] = cfg.phi * z[k] + innov * normal.sample(&mut rng);
                p[e] = offsets[k] + a * z[k];
                max = max.max(p[e]);
            }
            let mut sum = 0.0;
            for v in p.iter_mut() {
                *v = (*v - max).exp();
                sum += *v;
            }
            // Multinomial draw as a chain of binomials.
            let mut left = n;
            let mut mass = 1.0;
            let row = &mut out[(t * nl + l) * ne..(t * nl + l + 1) * ne];
            for e in 0..ne {
                let pe = p[e] / sum;
                let c = if e + 1 == ne || left == 0 {
                    left
                } else {
                    let q = (pe / mass).clamp(0.0, 1.0);
                    Binomial::new(left, q).map(|b| b.sample(&mut rng)).unwrap_or(left)
                };
                row[e] = c;
                left -= c;
                mass -= pe;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shares of one (layer, expert) series.
    fn shares(loads: &[u64], cfg: &SynthConfig, l: usize, e: usize) -> Vec<f64> {
        let (nl, ne) = (cfg.layers, cfg.experts);
        let n = (cfg.tokens_per_step * cfg.top_k) as f64;
        (0..cfg.steps).map(|t| loads[(t * nl + l) * ne + e] as f64 / n).collect()
    }

    fn window_std(x: &[f64], t: usize, w: usize) -> f64 {
        let win = &x[t + 1 - w..=t];
        let m = win.iter().sum::<f64>() / w as f64;
        (win.iter().map(|v| (v - m).powi(2)).sum::<f64>() / w as f64).sqrt()
    }

    #[test]
    fn every_step_routes_all_assignments_and_the_seed_fixes_the_trace() {
        let cfg = SynthConfig { steps: 50, layers: 3, experts: 8, tokens_per_step: 1000, top_k: 2, ..Default::default() };
        let a = generate(&cfg);
        for row in a.chunks(8) {
            assert_eq!(row.iter().sum::<u64>(), 2000);
        }
        assert_eq!(a, generate(&cfg));
        assert_ne!(a, generate(&SynthConfig { seed: 2, ..cfg.clone() }));
    }

    #[test]
    fn npy_and_parquet_hold_the_same_trace() {
        // 3 × 2 × 5: the header pads the data to 64 bytes; the reader (an independent
        // parser of the format) gets the generated loads back from both files.
        let cfg = SynthConfig { steps: 3, layers: 2, experts: 5, tokens_per_step: 100, top_k: 2, ..Default::default() };
        let dir = tempfile::tempdir().unwrap();
        let (npy, pq) = (dir.path().join("t.npy"), dir.path().join("t.parquet"));
        write_npy(&cfg, &npy).unwrap();
        write_parquet(&cfg, &pq).unwrap();
        let bytes = std::fs::read(&npy).unwrap();
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0);
        assert_eq!(bytes.len(), 10 + header_len + 4 * 30);
        let want: Vec<f64> = generate(&cfg).iter().map(|&c| c as f64).collect();
        for path in [&npy, &pq] {
            let t = crate::trace::read_file(path, &Default::default()).unwrap().remove(0);
            assert_eq!((t.steps(), t.layers(), t.experts()), (3, 2, 5));
            let got: Vec<f64> = (0..3).flat_map(|s| (0..2).flat_map(move |l| (0..5).map(move |e| (s, l, e)))).map(|(s, l, e)| t.load(s, l, e)).collect();
            assert_eq!(got, want, "{}", path.display());
        }
        let big = SynthConfig { tokens_per_step: 1 << 31, ..cfg };
        assert!(write_npy(&big, &npy).unwrap_err().to_string().contains("does not fit"));
    }

    /// (early window std pp, late window std pp, lag-1, lag-10 autocorrelation of the
    /// deviation from the local mean in the second half), averaged over series.
    fn measure(series: &[Vec<f64>]) -> (f64, f64, f64, f64) {
        let (mut early, mut late, mut r1, mut r10, mut n) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for x in series {
            let nt = x.len();
            early += window_std(x, 100, 100);
            late += window_std(x, nt - 1, 100);
            // Deviation from the centred 101-step local mean, stable half.
            let dev: Vec<f64> =
                (nt / 2 + 50..nt - 50).map(|t| x[t] - x[t - 50..=t + 50].iter().sum::<f64>() / 101.0).collect();
            let m = dev.iter().sum::<f64>() / dev.len() as f64;
            let var = dev.iter().map(|d| (d - m).powi(2)).sum::<f64>();
            let ac = |k: usize| (k..dev.len()).map(|i| (dev[i] - m) * (dev[i - k] - m)).sum::<f64>() / var;
            r1 += ac(1);
            r10 += ac(10);
            n += 1.0;
        }
        (100.0 * early / n, 100.0 * late / n, r1 / n, r10 / n)
    }

    #[test]
    fn dynamics_match_the_bundled_traces() {
        // The reference: the same measures on the real gpt12-e16-top2-s1 trace.
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/gpt12-e16-top2-s1.parquet");
        let real = crate::trace::read_file(&path, &Default::default()).unwrap().remove(0);
        let real_series: Vec<Vec<f64>> = (0..real.layers())
            .flat_map(|l| {
                let r = &real;
                (0..r.experts()).map(move |e| (0..r.steps()).map(|t| r.proportion(t, l, e)).collect())
            })
            .collect();
        let want = measure(&real_series);
        let cfg = SynthConfig { steps: 8_001, layers: 2, ..Default::default() };
        let loads = generate(&cfg);
        let series: Vec<Vec<f64>> =
            (0..cfg.layers).flat_map(|l| (0..cfg.experts).map(move |e| (l, e))).map(|(l, e)| shares(&loads, &cfg, l, e)).collect();
        let got = measure(&series);
        eprintln!("real {want:.3?}, synthetic {got:.3?} (early pp, stable pp, lag 1, lag 10)");
        assert!((got.0 / want.0 - 1.0).abs() < 0.25, "early window std {} pp vs real {}", got.0, want.0);
        assert!((got.1 / want.1 - 1.0).abs() < 0.2, "stable window std {} pp vs real {}", got.1, want.1);
        assert!((got.2 - want.2).abs() < 0.07, "lag-1 autocorrelation {} vs real {}", got.2, want.2);
        assert!(got.3.abs() < 0.1 && want.3.abs() < 0.1, "lag-10 autocorrelation {} (real {})", got.3, want.3);
    }
}
