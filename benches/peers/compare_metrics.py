"""Compares expertcast's metrics.parquet with pipeline_torch.py's --metrics CSV:
every (forecaster, layer, horizon, regime) row, origins equal and mae_pp, rmse_pp,
tv_pct within the relative tolerance given (default 1e-9). Layers are matched by
order (the peer numbers them from 0). Exit 1 on a mismatch.

usage: python3 benches/peers/compare_metrics.py metrics.parquet peer.csv [TOL]"""
import csv
import sys

import pyarrow.parquet as pq

ours = pq.read_table(sys.argv[1]).to_pylist()
tol = float(sys.argv[3]) if len(sys.argv) > 3 else 1e-9
layers = sorted({r["layer"] for r in ours})
key = {(r["forecaster"], layers.index(r["layer"]), r["horizon"], r["regime"]): r for r in ours}
worst, n = 0.0, 0
with open(sys.argv[2]) as f:
    for row in csv.DictReader(f):
        k = (row["forecaster"], int(row["layer"]), int(row["horizon"]), row["regime"])
        r = key.pop(k)
        assert r["origins"] == int(row["origins"]), (k, r["origins"], row["origins"])
        for c in ["mae_pp", "rmse_pp", "tv_pct"]:
            a, b = r[c], (float(row[c]) if row[c] else None)
            assert (a is None) == (b is None), (k, c, a, b)
            if a is not None:
                rel = abs(a - b) / max(abs(a), abs(b), 1e-300)
                worst = max(worst, rel)
                assert rel <= tol, (k, c, a, b, rel)
        n += 1
assert not key, f"rows only in {sys.argv[1]}: {sorted(key)[:5]}"
print(f"compare_metrics: {n} rows equal, largest relative difference {worst:.2e}")
