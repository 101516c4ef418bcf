#!/usr/bin/env bash
# A GPU run as on a machine that has run nothing before: our kernel cache and the
# CUDA driver's JIT cache both empty (fresh directories), then the same run again
# with what the first left (warm). On the bundled traces and on the paper-scale
# trace (100,000 x 12 x 128, .npy), ROUNDS rounds, each binary given in turn.
# usage: benches/first_run.sh DIR EXPERTCAST [OTHER_EXPERTCAST ...]
# Prints one line a run: its wall and the profile's stages and kernel compiles.
set -euo pipefail
D=$1; shift
ROUNDS=${ROUNDS:-3}
mkdir -p "$D"
S="--steps 100000 --layers 12 --experts 128 --tokens-per-step 524288 --seed 7"
[ -f "$D/paper.npy" ] || "$1" synth --out "$D/paper.npy" $S > /dev/null
cat "$D/paper.npy" > /dev/null
for i in $(seq "$ROUNDS"); do
  for bin in "$@"; do
    for input in bundled paper; do
      args=(); [ "$input" = paper ] && args=("$D/paper.npy")
      kernels=$(mktemp -d) jit=$(mktemp -d)
      for when in fresh warm; do
        rm -rf "$D/out"
        EXPERTCAST_KERNEL_CACHE=$kernels CUDA_CACHE_PATH=$jit EXPERTCAST_PROFILE=1 \
          /usr/bin/time -f "wall %e s" "$bin" run "${args[@]}" --quiet --out "$D/out" 2> "$D/profile.txt" \
          || { cat "$D/profile.txt"; exit 1; }
        echo "round $i $bin $input $when: $(grep '^wall' "$D/profile.txt") | $(grep -E 'stage: (read|statistics|forecasts)|kernels:' "$D/profile.txt" | sed 's/profile: //' | tr '\n' ';')"
      done
      rm -rf "$kernels" "$jit"
    done
  done
done
