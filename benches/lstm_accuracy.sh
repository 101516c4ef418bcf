#!/usr/bin/env bash
# The LSTM accuracy benchmark of BENCHMARKS.md: train on gpt12-e16-top2-s1, score on
# gpt12-e16-top2-s2 beside sw-avg:w=100, mean:w=100 and oracle-median, stable regime.
# usage: benches/lstm_accuracy.sh [BIN] [OUT] [extra `lstm train` flags...]
set -euo pipefail
BIN=${1:-target/release/expertcast}
OUT=${2:-.bench-out/lstm-accuracy}
shift $(( $# < 2 ? $# : 2 ))
mkdir -p "$OUT"
/usr/bin/time -f "lstm train: %e s wall, %M KB peak" "$BIN" lstm train datasets/gpt12-e16-top2-s1.parquet -o "$OUT/model" "$@"
/usr/bin/time -f "run: %e s wall, %M KB peak" "$BIN" run datasets/gpt12-e16-top2-s2.parquet -o "$OUT/run" -q \
  -f "lstm:model=$OUT/model" -f "lstm:model=$OUT/model,multi=recursive" -f sw-avg:w=100 -f mean:w=100 -f oracle-median
${PYTHON:-python3} - "$OUT/run/metrics.parquet" <<'PY'
import sys
import pandas as pd
m = pd.read_parquet(sys.argv[1])
m = m[m.regime == "stable"]
# Pooled over layers: origins-weighted mean of each layer's mae_pp.
m["w"] = m.mae_pp * m.origins
t = m.groupby(["forecaster", "horizon"]).agg(w=("w", "sum"), n=("origins", "sum"))
t = (t.w / t.n).unstack()
pd.set_option("display.width", 200)
print(t.round(4).to_string())
lstm = [f for f in t.index if f.startswith("lstm")]
for f in lstm:
    h1 = t.loc[f, 1] / t.loc["sw-avg:w=100", 1] - 1
    h1000 = t.loc[f, 1000] / t.loc["oracle-median", 1000] - 1
    print(f"{f}: h=1 {100 * h1:+.1f}% vs sw-avg:w=100 (target <= -20%), h=1000 {100 * h1000:+.1f}% vs oracle-median (target <= +3%)")
PY
