//! Where a run's time goes inside its stages: with `EXPERTCAST_PROFILE=1` in the
//! environment, each [`span`] prints `profile: LABEL MS ms` to stderr when it ends.
//! The manifest's `seconds` give the stages; these give their parts.

use std::sync::OnceLock;
use std::time::Instant;

fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("EXPERTCAST_PROFILE").is_some_and(|v| !v.is_empty() && v != "0"))
}

/// A timed part of a stage; printed when dropped (if profiling is on).
pub struct Span {
    label: Option<String>,
    start: Instant,
}

/// Starts timing `label` (built only when profiling is on).
pub fn span(label: impl FnOnce() -> String) -> Span {
    Span { label: enabled().then(label), start: Instant::now() }
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(l) = &self.label {
            eprintln!("profile: {l} {:.1} ms", self.start.elapsed().as_secs_f64() * 1e3);
        }
    }
}
