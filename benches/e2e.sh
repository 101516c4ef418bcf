#!/usr/bin/env bash
# The whole default run on the paper-scale trace (100,000 steps x 12 layers x 128
# experts, from .npy and from Parquet), best of 3 each with GPU utilisation sampled,
# beside the PyTorch peer (benches/peers/pipeline_torch.py) in the same call; and the
# peer's metrics checked against ours on the bundled gpt12-e16-top2-s1 trace.
# usage: benches/e2e.sh EXPERTCAST DIR [PYTHON]
# PYTHON needs torch and numpy; the check needs pyarrow too (skipped, and said so,
# without it, unless DIR/bundled.npy and a pyarrow-free comparison are provided).
set -euo pipefail
BIN=$1; D=$2; PY=${3:-python3}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$D"
S="--steps 100000 --layers 12 --experts 128 --tokens-per-step 524288 --seed 7"
[ -f "$D/paper.npy" ] || "$BIN" synth --out "$D/paper.npy" $S
[ -f "$D/paper.parquet" ] || "$BIN" synth --out "$D/paper.parquet" $S
# Starts nvidia-smi sampling into $1 and prints its pid (nothing without nvidia-smi);
# its output goes to the file only, so the caller's $(...) does not wait for it.
util() {
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=timestamp,utilization.gpu --format=csv,noheader,nounits -lms 100 > "$1" 2>/dev/null &
    echo $!
  fi
}
for input in npy parquet; do
  for i in 1 2 3; do
    rm -rf "$D/run"
    pid=$(util "$D/util-$input-$i.txt")
    EXPERTCAST_PROFILE=1 /usr/bin/time -f "expertcast run paper.$input: %e s wall, %M KB" \
      "$BIN" run "$D/paper.$input" --quiet --out "$D/run" 2> "$D/profile-$input-$i.txt" || { cat "$D/profile-$input-$i.txt"; exit 1; }
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    grep -v '^profile:' "$D/profile-$input-$i.txt" || true
    "$PY" -c "import json,sys; m=json.load(open(sys.argv[1])); print('  stages', m['seconds'], m['device'])" "$D/run/manifest.json"
    [ -n "$pid" ] && echo "  $("$PY" "$HERE/gpu_busy.py" "$D/profile-$input-$i.txt" "$D/util-$input-$i.txt")"
  done
done
for i in 1 2 3; do
  pid=$(util "$D/util-peer-$i.txt")
  /usr/bin/time -f "pipeline_torch paper.npy: %e s wall, %M KB" "$PY" "$HERE/peers/pipeline_torch.py" "$D/paper.npy" 2>&1
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  echo "  GPU busy (100 ms samples, mean): $(awk -F', ' '{s+=$2; n++} END {if (n) printf "%.1f %% of %d", s/n, n}' "$D/util-peer-$i.txt" 2>/dev/null)"
done
# The check on a bundled trace: both read the same .npy.
if [ ! -f "$D/bundled.npy" ]; then
  "$PY" -c "
import sys, numpy as np, pyarrow.parquet as pq
d = pq.read_table(sys.argv[1]).to_pandas()
a = np.zeros((d.step.max() + 1, d.layer.max() + 1, d.expert.max() + 1), np.int32)
a[d.step, d.layer, d.expert] = d.tokens
np.save(sys.argv[2], a)" "$HERE/../datasets/gpt12-e16-top2-s1.parquet" "$D/bundled.npy" || { echo "no pyarrow: the check on the bundled trace is skipped"; exit 0; }
fi
rm -rf "$D/bundled-run"
"$BIN" run "$D/bundled.npy" --quiet --out "$D/bundled-run"
"$PY" "$HERE/peers/pipeline_torch.py" "$D/bundled.npy" --metrics "$D/bundled-peer.csv"
"$PY" "$HERE/peers/compare_metrics.py" "$D/bundled-run/metrics.parquet" "$D/bundled-peer.csv" || echo "(the comparison needs pyarrow: copy $D/bundled-run/metrics.parquet and $D/bundled-peer.csv to a machine with it)"
