#!/usr/bin/env bash
# make bench-arima-scaling: ARIMA(5,1,5) CSS-ML fits per second against threads (1, 2,
# 4, ... up to the cores), then the time of a full rolling evaluation of
# arima:p=5,d=1,q=5 (stride 100, horizons 1 to 2000) on the largest bundled trace with
# and without warm starts, then statsmodels fitting the same model on a few of the
# same series when python3 has it (the peer on this host).
# usage: benches/arima_scaling.sh [EXPERTCAST_BIN]
set -euo pipefail
bin=${1:-${EXPERTCAST_BIN:-target/release/expertcast}}
cores=$(nproc)
echo "host: $cores cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
t=1
while [ "$t" -le "$cores" ]; do
  "$bin" bench --stage arima --threads "$t"
  t=$((t * 2))
done
base=$(mktemp -d)
for warm in true false; do
  out=$base/warm-$warm
  start=$(date +%s%N)
  "$bin" run datasets/gpt12-e64-top2-s1.parquet -f "arima:p=5,d=1,q=5,warm=$warm" --origin-stride 100 \
    --out "$out" --quiet
  end=$(date +%s%N)
  echo "rolling evaluation, gpt12-e64-top2-s1 (384 series, 3,001 steps), arima:p=5,d=1,q=5,warm=$warm," \
       "stride 100, horizons 1-2000, $cores threads: $(( (end - start) / 1000000 )) ms"
done
# Same accuracy? mean mae_pp over layers per horizon, warm vs cold starts.
if python3 -c "import pandas" 2>/dev/null; then
  python3 - "$base" <<'PY'
import sys, pandas as pd
for w in ("true", "false"):
    m = pd.read_parquet(f"{sys.argv[1]}/warm-{w}/metrics.parquet")
    m = m[m.regime == "all"].groupby("horizon").agg(mae_pp=("mae_pp", "mean"), fallbacks=("fallbacks", "sum"))
    print(f"warm={w}: " + ", ".join(f"h={h} mae_pp {r.mae_pp:.4f} ({r.fallbacks} fallbacks)" for h, r in m.iterrows()))
PY
fi
rm -rf "$base"
if python3 -c "import statsmodels" 2>/dev/null; then
  python3 benches/peers/arima_statsmodels.py
fi
