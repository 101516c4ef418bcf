"""statsmodels' ARIMA(5,1,5) on the first SERIES of the 96 expert-share series that
`expertcast bench --stage arima` fits (bundled gpt12-e16-top2-s1, steps 2000-3999),
one thread, default fitting (state-space exact likelihood): seconds per fit.

usage: python3 benches/peers/arima_statsmodels.py [SERIES=12]"""
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import statsmodels
from statsmodels.tsa.arima.model import ARIMA

warnings.simplefilter("ignore")
root = Path(__file__).resolve().parents[2]
count = int(sys.argv[1]) if len(sys.argv) > 1 else 12
raw = pq.read_table(root / "datasets/gpt12-e16-top2-s1.parquet").to_pydict()
step, layer, expert, tokens = (np.asarray(raw[c]) for c in ("step", "layer", "expert", "tokens"))
load = np.zeros((step.max() + 1, layer.max() + 1, expert.max() + 1))
load[step, layer, expert] = tokens
share = load / load.sum(axis=2, keepdims=True)
series = [np.ascontiguousarray(share[2000:4000, l, e]) for l in range(share.shape[1]) for e in range(share.shape[2])][:count]
t0 = time.perf_counter()
for y in series:
    ARIMA(y, order=(5, 1, 5)).fit()
wall = time.perf_counter() - t0
print(f"statsmodels {statsmodels.__version__} ARIMA(5,1,5), 1 process: {count} fits in {wall:.2f} s = "
      f"{count / wall:.2f} fits/s ({1e3 * wall / count:.0f} ms a fit)")
