#!/usr/bin/env bash
# A real single-node Slurm cluster (Debian's slurm-wlm and munge) runs a 4-task array
# sweep with deploy/slurm/sweep.sbatch; its output must equal a local unsharded sweep
# of the same config, file for file. Installs slurm-wlm and munge with apt-get when
# missing (needs root), starts munged, slurmctld and slurmd on this host with a
# throw-away configuration, and stops them again. `.ci/run` calls this after the tests.
# usage: tests/slurm/run.sh [EXPERTCAST_BIN]
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
bin=$(realpath "${1:-target/release/expertcast}")
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  echo "installing slurm-wlm and munge (apt-get)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi

work=$(mktemp -d /tmp/expertcast-slurm.XXXXXX)
host=$(hostname -s)
cpus=$(nproc)
cleanup() {
  for p in "$work"/*.pid; do [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null || true; done
  sleep 1
  rm -rf "$work"
}
trap cleanup EXIT

# munge with its own key, socket and pid file
mkdir -p "$work/munge" && chmod 700 "$work/munge"
dd if=/dev/urandom of="$work/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$work/munge/munge.key"
sock="$work/munge/munge.socket"
munged --force --key-file="$work/munge/munge.key" --socket="$sock" \
  --pid-file="$work/munged.pid" --log-file="$work/munge/munged.log" --seed-file="$work/munge/seed"

mkdir -p "$work/state" "$work/spool" "$work/log"
cat > "$work/slurm.conf" <<CONF
ClusterName=expertcast-ci
SlurmctldHost=$host
AuthType=auth/munge
AuthInfo=socket=$sock
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/log/slurmctld.log
SlurmdLogFile=$work/log/slurmd.log
SlurmctldPort=16817
SlurmdPort=16818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
NodeName=$host CPUs=$cpus State=UNKNOWN
PartitionName=ci Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF="$work/slurm.conf"
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for _ in $(seq 60); do
  sinfo -h -o %t 2>/dev/null | grep -qE "^(idle|mix|alloc)" && break
  sleep 1
done
sinfo

# The sweep: the two gpt12-e16 traces × 2 strides = 4 units, over a 4-task array.
cat > "$work/sweep.toml" <<TOML
traces = ["$root/datasets/gpt12-e16-top2-s*.parquet"]
out = "$work/slurm-out"
windows = [10, 100]
horizons = [1, 10, 100]
origin_stride = [200, 500]
forecasters = ["last", "mean:w=[10,100]", "ema:alpha=0.3"]
TOML
sed "s|$work/slurm-out|$work/local-out|" "$work/sweep.toml" > "$work/local.toml"

EXPERTCAST="$bin" sbatch --wait --array=0-3 --cpus-per-task=1 --chdir="$work" \
  --output="$work/log/task-%a.log" "$root/deploy/slurm/sweep.sbatch" "$work/sweep.toml"
"$bin" sweep "$work/local.toml" --quiet
for i in 0 1 2 3; do
  grep -q "shard $i/4: 1 unit(s) run" "$work/log/task-$i.log" || { cat "$work/log/task-$i.log"; exit 1; }
done

# Same units done, same files, same bytes.
python3 - "$work/slurm-out" "$work/local-out" <<'PY'
import json, sys
from pathlib import Path
a, b = Path(sys.argv[1]), Path(sys.argv[2])
fa = sorted(p.relative_to(a) for p in a.rglob("*.parquet"))
fb = sorted(p.relative_to(b) for p in b.rglob("*.parquet"))
assert fa == fb and len(fa) == 12, (fa, fb)
for p in fa:
    assert (a / p).read_bytes() == (b / p).read_bytes(), p
units = json.loads((a / "manifest.json").read_text())["units"]
assert len(units) == 4 and all(u["status"] == "done" for u in units), units
print(f"slurm: 4-task array sweep equals the local run ({len(fa)} files)")
PY
