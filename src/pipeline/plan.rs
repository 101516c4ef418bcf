//! A run's resolved plan: every setting the pipeline needs, typed and checked once,
//! whether it came from `expertcast run`'s flags or from a sweep's TOML grid.

use crate::UsageError;
use crate::eval::Protocol;
use crate::gpu::DeviceRequest;
use crate::placement::PlacementConfig;
use crate::trace::{Input, ReadOptions};

/// Window lengths of the statistics when none are given.
pub const WINDOWS: [usize; 3] = [10, 100, 200];
/// Scored horizons when none are given.
pub const HORIZONS: [usize; 5] = [1, 10, 100, 1000, 2000];
/// The forecasters of a run when none are given.
pub const FORECASTERS: [&str; 5] = ["last", "mean:w=100", "sw-avg:w=100", "ema:alpha=0.3", "oracle-median"];
/// Steps between forecast origins.
pub const ORIGIN_STRIDE: usize = 100;
/// Window whose states define the stable regime.
pub const STATE_WINDOW: usize = 100;
/// Tolerance of the states rule.
pub const KAPPA: f64 = 0.5;

/// How much window statistics detail to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StatsDetail {
    /// Layer summaries only (layer_stats.parquet).
    Layer,
    /// Also every expert's mean, variance and range (window_stats.parquet).
    Expert,
}

/// What every trace of a run gets: statistics at `windows`, forecasts by
/// `forecasters` scored at `horizons`. The units of a sweep share one.
#[derive(Debug, Clone, PartialEq)]
pub struct Work {
    /// Window lengths of the statistics (any order, repeats allowed).
    pub windows: Vec<usize>,
    pub horizons: Vec<usize>,
    /// Forecaster specs (`-f`, else the defaults).
    pub forecasters: Vec<String>,
    /// Expert placement scored from the forecasts (`--placement-gpus`), or none.
    pub placement: Option<PlacementConfig>,
}

impl Default for Work {
    fn default() -> Self {
        Work { windows: WINDOWS.to_vec(), horizons: HORIZONS.to_vec(), forecasters: FORECASTERS.map(String::from).to_vec(), placement: None }
    }
}

/// Everything a run does, resolved.
#[derive(Debug, Clone)]
pub struct RunPlan {
    pub inputs: Vec<Input>,
    pub read: ReadOptions,
    pub work: Work,
    /// Forecaster specs added to `work.forecasters` (`-a`).
    pub added_forecasters: Vec<String>,
    pub origin_stride: usize,
    /// `None`: the longest history any forecaster needs.
    pub origin_start: Option<usize>,
    pub state_window: usize,
    pub kappa: f64,
    /// Clip real forecasts at 0 and renormalise them.
    pub renormalize: bool,
    pub device: DeviceRequest,
    /// GPU ordinal for `device` auto or cuda.
    pub gpu: usize,
    pub stats_detail: StatsDetail,
    pub save_forecasts: bool,
    /// Recorded in the manifest.
    pub command_line: Vec<String>,
}

impl RunPlan {
    /// A plan with every default: the bundled traces, all the default settings.
    pub fn new(inputs: Vec<Input>) -> RunPlan {
        RunPlan {
            inputs,
            read: ReadOptions::default(),
            work: Work::default(),
            added_forecasters: Vec::new(),
            origin_stride: ORIGIN_STRIDE,
            origin_start: None,
            state_window: STATE_WINDOW,
            kappa: KAPPA,
            renormalize: true,
            device: DeviceRequest::Auto,
            gpu: 0,
            stats_detail: StatsDetail::Layer,
            save_forecasts: false,
            command_line: Vec::new(),
        }
    }

    /// Every forecaster spec of the run, as given: `-f`'s (or the defaults), then `-a`'s.
    pub fn all_forecasters(&self) -> impl Iterator<Item = &String> {
        self.work.forecasters.iter().chain(&self.added_forecasters)
    }

    /// The statistics' windows, ascending and distinct.
    pub fn windows(&self) -> Vec<usize> {
        sorted_unique(&self.work.windows)
    }

    /// The windows computed: the statistics' and the state window.
    pub fn all_windows(&self) -> Vec<usize> {
        let mut w = self.work.windows.clone();
        w.push(self.state_window);
        sorted_unique(&w)
    }

    /// The protocol, with `start` for the run's first origin.
    pub fn protocol(&self, start: usize) -> Protocol {
        Protocol { horizons: sorted_unique(&self.work.horizons), stride: self.origin_stride, start, renormalize: self.renormalize }
    }

    /// Checks what the types cannot, naming the flag at fault.
    pub fn validate(&self) -> Result<(), UsageError> {
        let bad = |m: String| Err(UsageError(m));
        if let Some(w) = self.work.windows.iter().find(|&&w| w == 0) {
            return bad(format!("--window {w}: a window must be at least 1 step"));
        }
        // Windows and horizons are int32 columns of the output files.
        let flags = self.work.windows.iter().map(|&v| ("--window", v)).chain(self.work.horizons.iter().map(|&v| ("--horizon", v)));
        for (flag, v) in flags.chain([("--state-window", self.state_window)]) {
            if i32::try_from(v).is_err() {
                return bad(format!("{flag} {v}: at most {} (an int32 column of the output files)", i32::MAX));
            }
        }
        if self.work.horizons.is_empty() {
            return bad("at least one --horizon is needed".into());
        }
        if self.work.horizons.contains(&0) {
            return bad("--horizon 0: a horizon must be at least 1 step".into());
        }
        if self.origin_stride == 0 {
            return bad("--origin-stride 0: the stride must be at least 1".into());
        }
        if self.origin_start == Some(0) {
            return bad("--origin-start 0: a forecast needs at least one step of history".into());
        }
        if self.state_window == 0 {
            return bad("--state-window 0: a window must be at least 1 step".into());
        }
        if !(self.kappa.is_finite() && self.kappa >= 0.0) {
            return bad(format!("--kappa {}: must be a finite number >= 0", self.kappa));
        }
        if self.all_forecasters().next().is_none() {
            return bad("at least one --forecaster is needed".into());
        }
        if let Some(p) = &self.work.placement {
            p.validate()?;
        }
        Ok(())
    }
}

/// `v` ascending without repeats.
pub fn sorted_unique(v: &[usize]) -> Vec<usize> {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}
