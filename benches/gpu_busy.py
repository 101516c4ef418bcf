#!/usr/bin/env python3
"""GPU busy over a run's compute stages, from `nvidia-smi` samples and the run's profile.

usage: gpu_busy.py PROFILE_LOG [UTIL_CSV]

PROFILE_LOG: stderr of `expertcast run` with EXPERTCAST_PROFILE=1 (it prints
`profile: zero at UNIX T s` once and `profile: stage: NAME MS ms (at A–B ms)` per
stage). UTIL_CSV: `nvidia-smi --query-gpu=timestamp,utilization.gpu
--format=csv,noheader,nounits -lms 100` taken during the run (local time, as this
machine's clock). Prints the mean of the samples taken from the start of the
statistics stage to the end of the last compute stage (forecasts, or placement when
the run has it), and the mean over the whole file. When the profile has the
kernels' intervals (`profile: gpu: LABEL (at A–B ms)`, from CUDA events: see
src/gpu/timeline.rs), also the share of the compute stages in which one or more
kernels ran, from their union: what the samples estimate, exact at this scale (each
driver sample averages a period longer than 100 ms, so a one-second stage gets a
handful of samples, partly from before it).

Run right after the run on a machine with NVML (libnvidia-ml), it also reads the
driver's own utilisation samples (`nvmlDeviceGetSamples`, GPU 0), which
`nvidia-smi` reports: each the percentage of its own period (since the sample
before, about 200 ms on an H200) in which a kernel ran, stamped with the period's
end. `nvidia-smi -lms 100` prints the latest of them with the time it printed it,
so its readings lag by up to a period, and over a stage of half a second about half
of them are periods before the stage. Here each period is known: printed are the
mean of the samples whose whole period lies within the compute stages, and the
stages' busy share by the samples, each weighted by the part of its period inside
them. Standard library only.
"""
import ctypes
import re
import sys
import time


def nvml_samples():
    """The driver's GPU-utilisation samples of GPU 0: (UNIX time, percent), oldest first."""

    class Value(ctypes.Union):
        _fields_ = [("d", ctypes.c_double), ("ui", ctypes.c_uint), ("ul", ctypes.c_ulong), ("ull", ctypes.c_ulonglong), ("sll", ctypes.c_longlong)]

    class Sample(ctypes.Structure):
        _fields_ = [("timeStamp", ctypes.c_ulonglong), ("sampleValue", Value)]

    nvml = ctypes.CDLL("libnvidia-ml.so.1")
    if nvml.nvmlInit_v2() != 0:
        raise OSError("nvmlInit failed")
    try:
        dev = ctypes.c_void_p()
        if nvml.nvmlDeviceGetHandleByIndex_v2(0, ctypes.byref(dev)) != 0:
            raise OSError("no GPU 0")
        kind, count, gpu_utilization = ctypes.c_int(), ctypes.c_uint(0), 1
        args = lambda buf: (dev, gpu_utilization, ctypes.c_ulonglong(0), ctypes.byref(kind), ctypes.byref(count), buf)
        if nvml.nvmlDeviceGetSamples(*args(None)) != 0:
            raise OSError("nvmlDeviceGetSamples failed")
        buf = (Sample * count.value)()
        if nvml.nvmlDeviceGetSamples(*args(buf)) != 0:
            raise OSError("nvmlDeviceGetSamples failed")
        return sorted((b.timeStamp / 1e6, b.sampleValue.ui) for b in buf[: count.value])
    finally:
        nvml.nvmlShutdown()


log = sys.argv[1]
util = sys.argv[2] if len(sys.argv) > 2 else None
zero, stages, kernels = None, {}, []
for line in open(log, encoding="utf-8", errors="replace"):
    m = re.match(r"profile: gpu: .* \(at (-?[0-9.]+)–(-?[0-9.]+) ms\)$", line.rstrip())
    if m:
        kernels.append((float(m.group(1)) / 1e3, float(m.group(2)) / 1e3))
        continue
    m = re.match(r"profile: zero at UNIX ([0-9.]+) s", line)
    if m:
        zero = float(m.group(1))
    m = re.match(r"profile: stage: (\w+) [0-9.]+ ms \(at ([0-9]+)–([0-9]+) ms\)", line)
    if m:
        stages[m.group(1)] = (int(m.group(2)) / 1e3, int(m.group(3)) / 1e3)
if zero is None or "statistics" not in stages or "forecasts" not in stages:
    sys.exit(f"{log}: no profile of the stages (run with EXPERTCAST_PROFILE=1)")
start = zero + stages["statistics"][0]
end = zero + max(stages[s][1] for s in ("forecasts", "placement") if s in stages)
mean = lambda v: sum(v) / len(v) if v else float("nan")
if util:
    samples = []
    for line in open(util):
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 2 or not parts[1].isdigit():
            continue
        stamp, frac = parts[0].split(".") if "." in parts[0] else (parts[0], "0")
        t = time.mktime(time.strptime(stamp, "%Y/%m/%d %H:%M:%S")) + float("0." + frac)
        samples.append((t, int(parts[1])))
    inside = [u for t, u in samples if start <= t <= end]
    print(
        f"GPU busy over the compute stages ({end - start:.2f} s, {len(inside)} samples): {mean(inside):.1f} %; "
        f"over the whole process ({len(samples)} samples): {mean([u for _, u in samples]):.1f} %"
    )
try:
    held = nvml_samples()
except OSError:
    held = []
if len(held) > 1:
    periods = [(t0, t1, u) for (t0, _), (t1, u) in zip(held, held[1:])]
    whole = [u for t0, t1, u in periods if start <= t0 and t1 <= end]
    part = lambda t0, t1: max(0.0, min(t1, end) - max(t0, start))
    covered = sum(part(t0, t1) for t0, t1, _ in periods)
    busy = sum(u / 100 * part(t0, t1) for t0, t1, u in periods)
    print(
        f"driver samples (NVML, {len(held)} held, a period of {(held[-1][0] - held[0][0]) / (len(held) - 1) * 1e3:.0f} ms on average): "
        f"{len(whole)} whole period(s) inside the compute stages, mean {mean(whole):.1f} %; "
        f"weighted by overlap {100 * busy / covered if covered else float('nan'):.1f} % of {covered * 1e3:.0f} ms; "
        f"near the run (ms from its zero, %): {[(round((t - zero) * 1e3), u) for t, u in held if start - 0.5 <= t <= end + 0.5]}"
    )
if kernels:
    lo, hi = stages["statistics"][0], max(stages[s][1] for s in ("forecasts", "placement") if s in stages)
    busy, reach = 0.0, lo
    for a, b in sorted(kernels):
        a, b = max(a, reach), min(b, hi)
        if b > a:
            busy += b - a
            reach = b
    print(f"kernels running (CUDA events, {len(kernels)} brackets): {busy * 1e3:.0f} ms of the compute stages' {(hi - lo) * 1e3:.0f} ms, {100 * busy / (hi - lo):.1f} %")
