"""Independent reader check: pyarrow opens every file expertcast wrote, checks its
schema, and recomputes a few values from the raw input with numpy.

usage: interop.py OUT_DIR DATASETS_DIR
"""
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

out, data = Path(sys.argv[1]), Path(sys.argv[2])

EXPECTED = {
    "layer_stats.parquet": [("trace", pa.string()), ("layer", pa.int32()), ("window_size", pa.int32()),
                            ("step", pa.int64()), ("var_mean", pa.float64()), ("var_max", pa.float64()),
                            ("range_mean", pa.float64()), ("range_max", pa.float64())],
    "window_stats.parquet": [("trace", pa.string()), ("layer", pa.int32()), ("expert", pa.int32()),
                             ("window_size", pa.int32()), ("step", pa.int64()), ("mean", pa.float64()),
                             ("variance", pa.float64()), ("range", pa.float64())],
    "states.parquet": [("trace", pa.string()), ("layer", pa.int32()), ("window_size", pa.int32()),
                       ("kappa", pa.float64()), ("transition_step", pa.int64()), ("final_std", pa.float64())],
    "metrics.parquet": [("trace", pa.string()), ("layer", pa.int32()), ("forecaster", pa.string()),
                        ("horizon", pa.int32()), ("regime", pa.string()), ("origins", pa.int64()),
                        ("mae_pp", pa.float64()), ("rmse_pp", pa.float64()), ("tv_pct", pa.float64()),
                        ("fallbacks", pa.int64())],
}

tables = {}
for name, cols in EXPECTED.items():
    t = pq.read_table(out / name)
    got = [(f.name, f.type) for f in t.schema]
    assert got == cols, f"{name}: schema {got} != {cols}"
    assert t.num_rows > 0, name
    tables[name] = t

# Shares of one layer of one bundled trace, float64, from the raw input.
raw = pq.read_table(data / "gpt12-e64-top2-s1.parquet").to_pydict()
step, layer, expert, tokens = (np.asarray(raw[c]) for c in ("step", "layer", "expert", "tokens"))
T, L, E = step.max() + 1, layer.max() + 1, expert.max() + 1
load = np.zeros((T, L, E))
load[step, layer, expert] = tokens
p = load / load.sum(axis=2, keepdims=True)

ls = tables["layer_stats.parquet"].to_pydict()
checked = 0
for i in range(len(ls["trace"])):
    if ls["trace"][i] != "gpt12-e64-top2-s1" or ls["step"][i] % 250 != 0:
        continue
    l, w, t = ls["layer"][i], ls["window_size"][i], ls["step"][i]
    win = p[t - w + 1:t + 1, l, :]
    var = win.var(axis=0)  # population variance, two-pass
    rng = win.max(axis=0) - win.min(axis=0)
    assert abs(ls["var_mean"][i] - var.mean()) < 1e-9, i
    assert abs(ls["var_max"][i] - var.max()) < 1e-9, i
    assert abs(ls["range_mean"][i] - rng.mean()) < 1e-9, i
    assert abs(ls["range_max"][i] - rng.max()) < 1e-9, i
    checked += 1
assert checked > 50, checked

# metrics: `last` at h = 1 for layer 0, every origin 100, 200, ...
m = tables["metrics.parquet"].to_pydict()
idx = [i for i in range(len(m["trace"])) if m["trace"][i] == "gpt12-e64-top2-s1" and m["layer"][i] == 0
       and m["forecaster"][i] == "last" and m["horizon"][i] == 1 and m["regime"][i] == "all"]
assert len(idx) == 1
origins = np.arange(100, T, 100)
err = np.abs(p[origins - 1, 0, :] - p[origins, 0, :])
assert m["origins"][idx[0]] == len(origins)
assert abs(m["mae_pp"][idx[0]] - 100 * err.mean()) < 1e-9
assert abs(m["tv_pct"][idx[0]] - 100 * 0.5 * err.sum(axis=1).mean()) < 1e-9

st = tables["states.parquet"].to_pydict()
assert set(st["window_size"]) == {10, 100, 200}
assert all(k == 0.5 for k in st["kappa"])

manifest = json.loads((out / "manifest.json").read_text())
assert manifest["config"]["forecasters"] == ["last", "mean:w=100", "sw-avg:w=100", "ema:alpha=0.3", "oracle-median"]
assert len(manifest["inputs"]) == 3

print(f"interop: all files ok (pyarrow {pa.__version__}, {checked} layer_stats rows recomputed)")
