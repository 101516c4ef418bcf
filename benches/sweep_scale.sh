#!/usr/bin/env bash
# The sweep at scale: N synthetic traces shaped like the paper's GPT-3 350M MoE run
# (12 MoE layers × 128 experts × 20,000 steps, 0.5 M tokens a step, top-2), swept with
# windows 10/100/200, states, last, mean:w=100, sw-avg:w=100, ema:alpha=0.3 and
# horizons 1 to 2000 (no ARIMA, no LSTM: see BENCHMARKS.md). Reports the total time,
# seconds per unit, peak host memory and CPU share (/usr/bin/time), GPU utilisation
# (nvidia-smi, 1 s samples), and the Python reference pipeline
# (benches/peers/sweep_reference.py) on one of the same traces, in the same run.
# usage: benches/sweep_scale.sh [EXPERTCAST_BIN] [N=64]
set -euo pipefail
bin=$(realpath "${1:-target/release/expertcast}")
n=${2:-64}
here=$(cd "$(dirname "$0")/.." && pwd)
work=${WORK:-$(mktemp -d)}
mkdir -p "$work/traces"
start=$(date +%s%N)
seq 1 "$n" | xargs -P "$(nproc)" -I{} "$bin" synth --out "$work/traces/gpt3-350m-{}.parquet" --steps 20000 \
  --layers 12 --experts 128 --tokens-per-step 524288 --top-k 2 --seed {} > /dev/null
echo "synth: $n traces in $(( ($(date +%s%N) - start) / 1000000 )) ms, $(du -sh "$work/traces" | cut -f1)"
cat > "$work/sweep.toml" <<TOML
traces = ["traces/*.parquet"]
out = "out"
windows = [10, 100, 200]
horizons = [1, 10, 100, 1000, 2000]
forecasters = ["last", "mean:w=100", "sw-avg:w=100", "ema:alpha=0.3"]
TOML
gpu_log="$work/gpu.log"
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -l 1 > "$gpu_log" &
  smi=$!
fi
/usr/bin/time -f "sweep: %e s wall, %P CPU, %M KB peak RSS" "$bin" sweep "$work/sweep.toml" ${SWEEP_ARGS:-} 2>&1 | grep -v "^\s*$" | tail -3
[ -n "${smi:-}" ] && kill "$smi" && awk '{s+=$1; if ($1>m) m=$1; c++} END {printf "GPU utilisation: mean %.1f%%, max %d%% over %d samples\n", s/c, m, c}' "$gpu_log"
python3 - "$work/out" <<'PY'
import json, sys
u = json.load(open(sys.argv[1] + "/manifest.json"))["units"]
print(f"units: {len(u)}, done {sum(x['status'] == 'done' for x in u)}")
PY
python3 "$here/benches/peers/sweep_reference.py" "$work/traces/gpt3-350m-1.parquet"
