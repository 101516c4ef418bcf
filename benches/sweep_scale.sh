#!/usr/bin/env bash
# The sweep at scale: N synthetic traces shaped like the paper's GPT-3 350M MoE run
# (12 MoE layers × 128 experts × 20,000 steps, 0.5 M tokens a step, top-2), swept with
# windows 10/100/200, states, last, mean:w=100, sw-avg:w=100, ema:alpha=0.3 and
# horizons 1 to 2000. Reports the total time, seconds per unit, peak host memory and
# CPU share (/usr/bin/time), GPU utilisation (nvidia-smi, 1 s samples), and the Python
# reference pipeline (benches/peers/sweep_reference.py) on one of the same traces, in
# the same run.
# FULL=1 adds `arima:p=5,d=1,q=5` and `lstm` to the forecasters (origin stride
# STRIDE, default 1000 then, else 100) and gives the reference statsmodels' ARIMA
# (REF_ARIMA_SAMPLE fits timed, default 20) and PyTorch's LSTM (REF_LSTM_LAYERS
# layers timed, default 2), each scaled to the unit.
# SWEEP_ARGS are passed to `expertcast sweep` (e.g. "--shard 0/2 --jobs 4"); NOREF=1
# skips the reference.
# usage: [FULL=1] [STRIDE=S] benches/sweep_scale.sh [EXPERTCAST_BIN] [N=64]
set -euo pipefail
bin=$(realpath "${1:-target/release/expertcast}")
n=${2:-64}
here=$(cd "$(dirname "$0")/.." && pwd)
work=${WORK:-$(mktemp -d)}
mkdir -p "$work/traces"
forecasters='"last", "mean:w=100", "sw-avg:w=100", "ema:alpha=0.3"'
ref_args=()
if [ -n "${FULL:-}" ]; then
  forecasters="$forecasters, \"arima:p=5,d=1,q=5\", \"lstm\""
  stride=${STRIDE:-1000}
  ref_args=(--arima-sample "${REF_ARIMA_SAMPLE:-20}" --lstm --lstm-layers "${REF_LSTM_LAYERS:-2}")
fi
stride=${STRIDE:-${stride:-100}}
start=$(date +%s%N)
seq 1 "$n" | xargs -P "$(nproc)" -I{} "$bin" synth --out "$work/traces/gpt3-350m-{}.parquet" --steps 20000 \
  --layers 12 --experts 128 --tokens-per-step 524288 --top-k 2 --seed {} > /dev/null
echo "synth: $n traces in $(( ($(date +%s%N) - start) / 1000000 )) ms, $(du -sh "$work/traces" | cut -f1)"
cat > "$work/sweep.toml" <<TOML
traces = ["traces/*.parquet"]
out = "out"
windows = [10, 100, 200]
horizons = [1, 10, 100, 1000, 2000]
origin_stride = [$stride]
forecasters = [$forecasters]
TOML
gpu_log="$work/gpu.log"
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -l 1 > "$gpu_log" &
  smi=$!
fi
/usr/bin/time -f "sweep: %e s wall, %P CPU, %M KB peak RSS" "$bin" sweep "$work/sweep.toml" ${SWEEP_ARGS:-} 2>&1 | grep -v "^\s*$" | tail -3
[ -n "${smi:-}" ] && kill "$smi" && awk '{s+=$1; if ($1>m) m=$1; c++} END {printf "GPU utilisation: mean %.1f%%, max %d%% over %d samples\n", s/c, m, c}' "$gpu_log"
python3 - "$work/out" <<'PY'
import glob, json, sys
u = json.load(open(sys.argv[1] + "/manifest.json"))["units"]
print(f"units: {len(u)}, done {sum(x['status'] == 'done' for x in u)}")
# Per stage: mean seconds a unit spent in it (units overlap, so these add up to more
# than the wall time) and that stage's rate on one unit, in series-steps a second.
marks = [json.load(open(f)) for f in glob.glob(sys.argv[1] + "/units/*.json")]
marks = [m for m in marks if m.get("status") == "done"]
work = 12 * 128 * 20000
for stage in ["read", "stats", "states", "forecast"]:
    secs = [m["stages"][stage] for m in marks if stage in m.get("stages", {})]
    if secs:
        mean = sum(secs) / len(secs)
        print(f"stage {stage}: {mean:.2f} s a unit (mean of {len(secs)}), {work / mean / 1e6:.1f} M series-steps/s a unit")
PY
[ -n "${NOREF:-}" ] || python3 "$here/benches/peers/sweep_reference.py" --stride "$stride" "${ref_args[@]}" "$work/traces/gpt3-350m-1.parquet"
