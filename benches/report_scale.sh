#!/usr/bin/env bash
# `expertcast report` on the output of the paper-scale default run (100,000 steps × 12
# layers × 128 experts, placement on 4 and 8 GPUs), from .npy and from Parquet: the
# run once, the report three times (EXPERTCAST_PROFILE=1 shows its parts), then
# `run --report`. Writes the .npy run's page to OUT/paper-report.html.
# usage: benches/report_scale.sh [BIN] [OUT]   (BIN default target/release/expertcast)
set -euo pipefail
bin=$(realpath "${1:-target/release/expertcast}")
out=${2:-.bench-out/report-scale}
mkdir -p "$out"
work=${WORK:-/tmp/expertcast-report-scale}
mkdir -p "$work"
S="--steps 100000 --layers 12 --experts 128 --tokens-per-step 524288 --seed 7"
device=${DEVICE:-auto}
nproc
[ -f "$work/paper.npy" ] || "$bin" synth --out "$work/paper.npy" $S
[ -f "$work/paper.parquet" ] || "$bin" synth --out "$work/paper.parquet" $S
for input in npy parquet; do
  rm -rf "$work/p-$input" "$work/q-$input"
  /usr/bin/time -f "run $input: %e s wall %M KB" "$bin" run "$work/paper.$input" --device "$device" --quiet --out "$work/p-$input" --placement-gpus 4 --placement-gpus 8
  for i in 1 2 3; do
    EXPERTCAST_PROFILE=1 /usr/bin/time -f "report $input $i: %e s wall %M KB" "$bin" report "$work/p-$input"
  done
  /usr/bin/time -f "run --report $input: %e s wall %M KB" "$bin" run "$work/paper.$input" --device "$device" --quiet --out "$work/q-$input" --placement-gpus 4 --placement-gpus 8 --report
  ls -la "$work/p-$input/report.html"
done
cp "$work/p-npy/report.html" "$out/paper-report.html"
