#!/usr/bin/env bash
# Sweep throughput on one GPU vs every GPU of the host, on a GPU-heavy sweep: N
# synthetic GPT-3-350M-shaped traces (12 layers × 128 experts × 20,000 steps) with
# window statistics and the LSTM (trained per layer before the first origin, then
# every origin forecast) beside `last`. Runs `--devices 0` then `--devices all`
# (default: two units at a time per GPU) into fresh output directories and prints
# both times, their ratio and each GPU's utilisation.
# usage: benches/sweep_gpus.sh [EXPERTCAST_BIN] [N=8]
set -euo pipefail
bin=$(realpath "${1:-target/release/expertcast}")
n=${2:-8}
work=${WORK:-$(mktemp -d)}
mkdir -p "$work/traces"
seq 1 "$n" | xargs -P "$(nproc)" -I{} "$bin" synth --out "$work/traces/gpt3-350m-{}.parquet" --steps 20000 \
  --layers 12 --experts 128 --tokens-per-step 524288 --top-k 2 --seed {} > /dev/null
echo "synth: $n traces; GPUs: $(nvidia-smi --query-gpu=name --format=csv,noheader | paste -sd, -)"
for devs in 0 all; do
  cat > "$work/sweep-$devs.toml" <<TOML
traces = ["traces/*.parquet"]
out = "out-$devs"
windows = [10, 100, 200]
horizons = [1, 10, 100, 1000, 2000]
forecasters = ["last", "lstm"]
TOML
  nvidia-smi --query-gpu=index,utilization.gpu --format=csv,noheader,nounits -l 1 > "$work/gpu-$devs.log" &
  smi=$!
  start=$(date +%s%N)
  /usr/bin/time -f "sweep --devices $devs: %e s wall, %P CPU, %M KB peak RSS" "$bin" sweep "$work/sweep-$devs.toml" --devices "$devs" -q
  echo "sweep --devices $devs: $(( ($(date +%s%N) - start) / 1000000 )) ms"
  kill "$smi"
  awk -F', ' '{s[$1]+=$2; c[$1]++} END {for (g in s) printf "  GPU %s utilisation: mean %.1f%% over %d samples\n", g, s[g]/c[g], c[g]}' "$work/gpu-$devs.log"
done
