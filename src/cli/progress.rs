//! Progress: bars on a terminal, plain log lines otherwise, nothing with --quiet.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

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

    /// A bar of `len` units for a long stage; hidden unless stderr is a terminal.
    pub fn bar(&self, len: u64, what: &str) -> ProgressBar {
        if self.quiet || !self.tty {
            return ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::hidden());
        }
        let pb = ProgressBar::new(len);
        pb.set_style(
            ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        pb.set_prefix(what.to_string());
        pb.enable_steady_tick(Duration::from_millis(200));
        pb
    }
}
