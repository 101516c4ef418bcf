#!/usr/bin/env python3
"""GPU busy over a run's compute stages, from `nvidia-smi` samples and the run's profile.

usage: gpu_busy.py PROFILE_LOG UTIL_CSV

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
handful of samples, partly from before it). Standard library only.
"""
import re
import sys
import time

log, util = sys.argv[1], sys.argv[2]
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
samples = []
for line in open(util):
    parts = [p.strip() for p in line.split(",")]
    if len(parts) != 2 or not parts[1].isdigit():
        continue
    stamp, frac = parts[0].split(".") if "." in parts[0] else (parts[0], "0")
    t = time.mktime(time.strptime(stamp, "%Y/%m/%d %H:%M:%S")) + float("0." + frac)
    samples.append((t, int(parts[1])))
inside = [u for t, u in samples if start <= t <= end]
mean = lambda v: sum(v) / len(v) if v else float("nan")
print(
    f"GPU busy over the compute stages ({end - start:.2f} s, {len(inside)} samples): {mean(inside):.1f} %; "
    f"over the whole process ({len(samples)} samples): {mean([u for _, u in samples]):.1f} %"
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
