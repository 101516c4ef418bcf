//! Progress: bars on a terminal, plain log lines at intervals otherwise, nothing
//! with --quiet.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle, WeakProgressBar};

use crate::pipeline::group_digits;

/// How often a long stage reports itself when stderr is not a terminal (a log file,
/// a batch job): a bar there would be invisible.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Clone, Copy)]
pub struct Progress {
    quiet: bool,
    tty: bool,
}

impl Progress {
    pub fn new(quiet: bool) -> Self {
        Progress { quiet, tty: std::io::stderr().is_terminal() }
    }

    /// A stage line on stderr (`expertcast: read: ...`).
    pub fn line(&self, msg: impl AsRef<str>) {
        if !self.quiet {
            eprintln!("expertcast: {}", msg.as_ref());
        }
    }

    /// A bar of `len` units for a long stage: drawn on a terminal; elsewhere a line
    /// every [`LOG_EVERY`] while the stage runs; nothing with --quiet.
    pub fn bar(&self, len: u64, what: &str) -> ProgressBar {
        if self.quiet || !self.tty {
            let pb = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::hidden());
            if !self.quiet {
                log_lines(pb.downgrade(), what.to_string());
            }
            return pb;
        }
        let pb = ProgressBar::new(len);
        pb.set_style(
            ProgressStyle::with_template("{prefix:>10} [{bar:30}] {human_pos}/{human_len} {rate} eta {eta} {msg}")
                .expect("valid template")
                .with_key("rate", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{}/s", whole(s.per_sec()));
                })
                .progress_chars("=> "),
        );
        pb.set_prefix(what.to_string());
        pb.enable_steady_tick(Duration::from_millis(200));
        pb
    }
}

/// A rate as a whole number with thousands separators (`2,527`).
fn whole(x: f64) -> String {
    group_digits(if x.is_finite() && x > 0.0 { x.round() as u64 } else { 0 })
}

/// The log line of a stage `what` at `pos` of `len` after `secs` seconds.
fn log_line(what: &str, pos: u64, len: u64, secs: f64, msg: &str) -> String {
    let pct = if len > 0 { 100.0 * pos as f64 / len as f64 } else { 0.0 };
    let rate = if secs > 0.0 { pos as f64 / secs } else { 0.0 };
    let msg = if msg.is_empty() { String::new() } else { format!(" {msg}") };
    format!("expertcast: {what}: {}/{} ({pct:.0}%), {}/s, {secs:.0} s{msg}", whole(pos as f64), whole(len as f64), whole(rate))
}

/// Prints the bar's state every [`LOG_EVERY`] until it is finished or dropped.
fn log_lines(pb: WeakProgressBar, what: String) {
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut next = LOG_EVERY;
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let Some(pb) = pb.upgrade() else { return };
            if pb.is_finished() {
                return;
            }
            if start.elapsed() >= next {
                next += LOG_EVERY;
                let secs = start.elapsed().as_secs_f64();
                eprintln!("{}", log_line(&what, pb.position(), pb.length().unwrap_or(0), secs, &pb.message()));
            }
        }
    });
}

impl crate::pipeline::Progress for Progress {
    fn line(&self, msg: String) {
        Progress::line(self, msg)
    }
    fn bar(&self, len: u64, what: &str) -> ProgressBar {
        Progress::bar(self, len, what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_whole_numbers_with_separators() {
        assert_eq!(whole(2526.875), "2,527");
        assert_eq!(whole(999.4), "999");
        assert_eq!(whole(1_000_000.0), "1,000,000");
        assert_eq!(whole(f64::NAN), "0");
    }

    #[test]
    fn log_lines_say_stage_position_share_and_rate() {
        assert_eq!(
            log_line("forecast", 500, 2000, 10.0, "series forecasts"),
            "expertcast: forecast: 500/2,000 (25%), 50/s, 10 s series forecasts"
        );
    }
}
