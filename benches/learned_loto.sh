#!/usr/bin/env bash
# Leave-one-trace-out for the learned forecasters (BENCHMARKS.md, issue 20): for each
# bundled trace, train the LSTM (`lstm train` with the given flags) and fit the
# linear baseline on the other two traces, then run on the held-out trace with both
# beside sw-avg:w=100 and oracle-median. Prints mae_pp, stable regime, pooled over
# layers (weighted by origins), per held-out trace, and the issue's targets.
# usage: benches/learned_loto.sh [BIN] [OUT] [extra `lstm train` flags...]
#   LINEAR="--lookback 20"  flags of `linear train` (default: its defaults)
#   TRACES="a.parquet b.parquet c.parquet"  (default: the three bundled traces)
#   NO_LSTM=1  the linear model only
#   IN_SAMPLE=1  train on the held-out trace itself instead (a ceiling, not a result:
#                what these models reach on windows they were fitted to)
set -euo pipefail
BIN=${1:-target/release/expertcast}
OUT=${2:-.bench-out/loto}
shift $(( $# < 2 ? $# : 2 ))
TRACES=${TRACES:-"datasets/gpt12-e16-top2-s1.parquet datasets/gpt12-e16-top2-s2.parquet datasets/gpt12-e64-top2-s1.parquet"}
mkdir -p "$OUT"
for held in $TRACES; do
  name=$(basename "$held" .parquet)
  train=()
  if [ -n "${IN_SAMPLE:-}" ]; then
    train=("$held")
  else
    for t in $TRACES; do [ "$t" = "$held" ] || train+=("$t"); done
  fi
  rm -rf "$OUT/$name"
  lstm=()
  if [ -z "${NO_LSTM:-}" ]; then
    /usr/bin/time -f "$name: lstm train %e s wall, %M KB peak" "$BIN" lstm train "${train[@]}" -o "$OUT/$name/lstm" -q "$@"
    python3 -c "import json,sys; r=json.load(open('$OUT/$name/lstm/lstm.json'))['report']; print('$name: lstm', r)"
    lstm=(-f "lstm:model=$OUT/$name/lstm")
  fi
  "$BIN" linear train "${train[@]}" -o "$OUT/$name/linear" -q ${LINEAR:-}
  /usr/bin/time -f "$name: run %e s wall" "$BIN" run "$held" -o "$OUT/$name/run" -q \
    "${lstm[@]}" -f "linear:model=$OUT/$name/linear" -f sw-avg:w=100 -f oracle-median
done
${PYTHON:-python3} - "$OUT" $TRACES <<'PY'
import sys
import pandas as pd
out, traces = sys.argv[1], sys.argv[2:]
pd.set_option("display.width", 200)
for held in traces:
    name = held.rsplit("/", 1)[-1].removesuffix(".parquet")
    m = pd.read_parquet(f"{out}/{name}/run/metrics.parquet")
    m = m[m.regime == "stable"].copy()
    m["forecaster"] = m.forecaster.str.replace(r":model=.*", "", regex=True)
    m["w"] = m.mae_pp * m.origins
    t = m.groupby(["forecaster", "horizon"]).agg(w=("w", "sum"), n=("origins", "sum"))
    t = (t.w / t.n).unstack()
    print(f"## held out: {name}")
    print(t.round(4).to_string())
    for f in [f for f in ("lstm", "linear") if f in t.index]:
        h1 = t.loc[f, 1] / t.loc["sw-avg:w=100", 1] - 1
        vs_lin = t.loc[f, 1] / t.loc["linear", 1] - 1
        h1000 = t.loc[f, 1000] / t.loc["oracle-median", 1000] - 1
        extra = f", h=1 {100 * vs_lin:+.1f}% vs linear (target <= 0)" if f == "lstm" else ""
        print(f"{f}: h=1 {100 * h1:+.1f}% vs sw-avg:w=100 (target <= -20%){extra}, h=1000 {100 * h1000:+.1f}% vs oracle-median (target <= +3%)")
PY
