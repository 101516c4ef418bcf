//! When the GPU's kernels ran, for the profile (`EXPERTCAST_PROFILE=1`): each
//! [`kernels`] call brackets what it enqueues on a stream with two timed CUDA
//! events, and [`print`] (at the end of a run) prints each bracket as `profile: gpu:
//! LABEL A–B ms` on the profile's clock. `benches/gpu_busy.py` takes the union of
//! these intervals over the compute stages: the share of that time in which one or
//! more kernels ran, which is what `nvidia-smi`'s utilisation samples, but exact at
//! the scale of a one-second stage (the driver's samples each average a longer
//! period than that).
//!
//! A bracket's start event completes when its stream reaches it (after the copies
//! and kernels enqueued on the stream before), so it marks the first kernel's start
//! to within the launch latency. With profiling off, [`kernels`] only runs its
//! closure.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaContext, CudaEvent, CudaStream};

struct Bracket {
    label: String,
    start: CudaEvent,
    end: CudaEvent,
}

static BRACKETS: Mutex<Vec<Bracket>> = Mutex::new(Vec::new());

/// Runs `launch`, which enqueues kernels on `stream`, between two timed events when
/// profiling is on (the label is built only then).
pub fn kernels<R>(stream: &Arc<CudaStream>, label: impl FnOnce() -> String, launch: impl FnOnce() -> R) -> R {
    if !crate::profile::enabled() {
        return launch();
    }
    let timed = Some(CUevent_flags::CU_EVENT_DEFAULT);
    let start = stream.record_event(timed);
    let out = launch();
    if let (Ok(start), Ok(end)) = (start, stream.record_event(timed)) {
        BRACKETS.lock().unwrap_or_else(|e| e.into_inner()).push(Bracket { label: label(), start, end });
    }
    out
}

/// Waits for every bracket recorded in `ctx` and prints it on the profile's clock
/// (brackets of other contexts are dropped). The clock's link: an event recorded on
/// an idle stream and waited for completes at about the instant the wait returns.
pub fn print(ctx: &Arc<CudaContext>) {
    let brackets = std::mem::take(&mut *BRACKETS.lock().unwrap_or_else(|e| e.into_inner()));
    if brackets.is_empty() {
        return;
    }
    let anchor = (|| {
        let stream = ctx.new_stream().ok()?;
        let event = stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).ok()?;
        event.synchronize().ok()?;
        Some((event, Instant::now()))
    })();
    let Some((anchor, now)) = anchor else { return };
    // `elapsed_ms(a, b)` is b - a; an event before the anchor gives a positive value.
    let at = |e: &CudaEvent| e.elapsed_ms(&anchor).ok().map(|ms| now - Duration::from_secs_f64(f64::from(ms).max(0.0) / 1e3));
    for b in brackets.iter().filter(|b| Arc::ptr_eq(b.start.context(), ctx)) {
        if let (Some(s), Some(e)) = (at(&b.start), at(&b.end)) {
            eprintln!("profile: gpu: {} (at {:.2}–{:.2} ms)", b.label, crate::profile::ms_since_zero(s), crate::profile::ms_since_zero(e));
        }
    }
}
