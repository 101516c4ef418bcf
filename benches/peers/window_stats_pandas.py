"""Peer for benches/window_stats.rs: pandas' rolling var (ddof=0), max and min on the
same 20,000 steps x 1,536 series, built from the bundled trace by the same rule.
Prints seconds per W and throughput in series-steps per second."""
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

STEPS, SERIES = 20_000, 1_536
root = Path(__file__).resolve().parents[2]
raw = pq.read_table(root / "datasets/gpt12-e16-top2-s1.parquet").to_pydict()
step, layer, expert, tokens = (np.asarray(raw[c]) for c in ("step", "layer", "expert", "tokens"))
T, L, E = step.max() + 1, layer.max() + 1, expert.max() + 1
load = np.zeros((T, L, E))
load[step - step.min(), layer, expert] = tokens
p = (load / load.sum(axis=2, keepdims=True)).reshape(T, L * E)

i = np.arange(SERIES)
t = np.arange(STEPS)
x = p[(t[:, None] + 37 * i[None, :]) % T, i[None, :] % (L * E)]  # [steps, series]
df = pd.DataFrame(x)
print(f"pandas {pd.__version__}, numpy {np.__version__}; data {STEPS} x {SERIES}")
for w in (10, 100, 1000):
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        r = df.rolling(w)
        r.var(ddof=0)
        r.max()
        r.min()
        best = min(best, time.perf_counter() - t0)
    print(f"pandas rolling var+max+min W={w}: {best*1e3:.1f} ms, {STEPS*SERIES/best/1e6:.1f} M series-steps/s")
