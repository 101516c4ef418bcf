#!/usr/bin/env bash
# Do two builds write the same bytes? Runs both binaries on the bundled traces (the
# default run with per-expert detail, a run with saved forecasts and ARIMA, and the
# example sweep) and compares every Parquet file byte for byte. Used to show that a
# refactor changes no result: build the old commit, keep its binary, build the new one.
#
# usage: tests/identical_outputs.sh OLD_BIN NEW_BIN
set -euo pipefail
old=$(realpath "$1")
new=$(realpath "$2")
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$root/datasets" "$work/datasets"
cd "$work"
for side in old new; do
  bin=${!side}
  "$bin" run --quiet --out "$side/run" --stats-detail expert
  "$bin" run datasets/gpt12-e16-top2-s2.parquet --quiet --out "$side/run-forecasts" --save-forecasts \
    -f last -f oracle-median -f arima:p=1,d=1,q=1,n=400 --origin-start 3000 --origin-stride 1000 --horizon 5 --horizon 50
  sed "s#^out = .*#out = \"../$side/sweep\"#" datasets/sweep-example.toml > "datasets/sweep-$side.toml"
  "$bin" sweep "datasets/sweep-$side.toml" --quiet
done
(cd old && find . -name '*.parquet' | sort) > old.list
(cd new && find . -name '*.parquet' | sort) > new.list
if ! diff old.list new.list; then
  echo "identical_outputs: the two builds wrote different files" >&2
  exit 1
fi
n=0
while read -r f; do
  if ! cmp -s "old/$f" "new/$f"; then
    echo "identical_outputs: $f differs" >&2
    exit 1
  fi
  n=$((n + 1))
done < old.list
echo "identical_outputs: $n Parquet files, byte for byte the same"
