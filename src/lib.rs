//! expertcast: batch forecasting of mixture-of-experts expert-load traces.
//!
//! A trace comes in ([`trace`]), its window statistics and states are computed
//! ([`stats`]), forecasters predict ([`forecast`]), predictions are scored under
//! one rolling-origin protocol ([`eval`]), and results go out as Parquet
//! ([`output`]); [`placement`] plans expert placement from the forecasts and
//! scores it; [`report`] draws the results as an HTML page. [`pipeline`] chains the stages for a resolved plan; [`gpu`] holds
//! the device choice; [`cli`] the command line.
//!
//! ```
//! use expertcast::stats::cpu::{outputs, window_series, Scratch};
//! let x = [0.25, 0.5, 0.25, 0.0];
//! let n = outputs(x.len(), 2);
//! let (mut m, mut v, mut r) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
//! window_series(&x, 2, &mut m, &mut v, &mut r, &mut Scratch::default());
//! assert_eq!(m, vec![0.375, 0.375, 0.125]);
//! assert_eq!(r, vec![0.25, 0.25, 0.25]);
//! ```

pub mod bench;
pub mod cli;
pub mod eval;
pub mod forecast;
pub mod gpu;
pub mod memory;
pub mod output;
pub mod pipeline;
pub mod placement;
pub mod profile;
pub mod report;
pub mod simd;
pub mod stats;
pub mod sweep;
pub mod synth;
pub mod trace;

/// Deterministic noise for tests: `n` draws uniform in [-0.5, 0.5) from a 64-bit LCG
/// (Knuth's MMIX constants) seeded with `seed`.
#[cfg(test)]
pub(crate) fn lcg_noise(seed: u64, n: usize) -> Vec<f64> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        })
        .collect()
}

/// A flag, setting or argument that makes no sense: exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Exit status for an error: 2 for bad input or usage, 1 for anything else.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    let user_error = err.chain().any(|e| {
        e.is::<trace::TraceError>()
            || e.is::<forecast::SpecError>()
            || e.is::<UsageError>()
            || e.is::<gpu::NoCuda>()
    });
    if user_error { 2 } else { 1 }
}
