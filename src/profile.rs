//! Where a run's time goes inside its stages: with `EXPERTCAST_PROFILE=1` in the
//! environment, each [`span`] prints `profile: LABEL MS ms (at A–B ms)` to stderr
//! when it ends, `A` and `B` its start and end since the process's first span (so
//! parts that overlap on several threads can be told from parts in sequence). The
//! manifest's `seconds` give the stages; these give their parts.

use std::sync::OnceLock;
use std::time::Instant;

/// When the process's first span started: the zero of every span's `at`. Its
/// wall-clock time is printed once (`profile: zero at UNIX SECONDS s`), so spans can
/// be matched with samples of another tool (`benches/e2e.sh`: GPU busy over the
/// compute stages from `nvidia-smi`'s timestamps).
fn zero() -> Instant {
    static ZERO: OnceLock<Instant> = OnceLock::new();
    *ZERO.get_or_init(|| {
        let now = Instant::now();
        let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        eprintln!("profile: zero at UNIX {unix:.3} s");
        now
    })
}

/// Whether `EXPERTCAST_PROFILE` asks for the profile.
pub(crate) fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("EXPERTCAST_PROFILE").is_some_and(|v| !v.is_empty() && v != "0"))
}

/// Milliseconds from the profile's zero to `t` (negative before it).
pub(crate) fn ms_since_zero(t: Instant) -> f64 {
    let z = zero();
    if t >= z { t.duration_since(z).as_secs_f64() * 1e3 } else { -(z.duration_since(t).as_secs_f64() * 1e3) }
}

/// A timed part of a stage; printed when dropped (if profiling is on).
pub struct Span {
    label: Option<String>,
    start: Instant,
}

/// Starts timing `label` (built only when profiling is on).
pub fn span(label: impl FnOnce() -> String) -> Span {
    let label = enabled().then(label);
    if label.is_some() {
        zero();
    }
    Span { label, start: Instant::now() }
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(l) = &self.label {
            let end = Instant::now();
            let ms = |a: Instant, b: Instant| b.duration_since(a).as_secs_f64() * 1e3;
            eprintln!("profile: {l} {:.1} ms (at {:.0}–{:.0} ms)", ms(self.start, end), ms(zero(), self.start), ms(zero(), end));
        }
    }
}
