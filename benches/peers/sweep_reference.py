"""The Python reference pipeline for the sweep benchmark: for each trace file given,
the work of one expertcast sweep unit without ARIMA and LSTM, in pandas and numpy on
one core: read the long Parquet, shares, window mean / variance / range of every
series for W = 10, 100, 200 with pandas `rolling` and their layer summaries, the
transition step of each layer (SPEC's rule on the W = 100 mean window std), and the
forecasters last, mean:w=100, sw-avg:w=100, ema:alpha=0.3 from every 100th origin,
scored (mae_pp, rmse_pp, tv_pct, regime all) at horizons 1, 10, 100, 1000, 2000.
Prints seconds per trace.

usage: python3 benches/peers/sweep_reference.py TRACE.parquet [...]"""
import sys
import time

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

H = [1, 10, 100, 1000, 2000]
STRIDE, W_FC, ALPHA = 100, 100, 0.3


def unit(path):
    t = pq.read_table(path, columns=["step", "layer", "expert", "tokens"]).to_pandas()
    T, L, E = t.step.max() + 1, t.layer.max() + 1, t.expert.max() + 1
    load = np.zeros((T, L, E))
    load[t.step.values, t.layer.values, t.expert.values] = t.tokens.values
    p = load / load.sum(axis=2, keepdims=True)
    flat = pd.DataFrame(p.reshape(T, L * E))
    summaries = {}
    for w in (10, 100, 200):
        r = flat.rolling(w)
        var, rng = r.var(ddof=0).to_numpy(), (r.max() - r.min()).to_numpy()
        _ = r.mean().to_numpy()
        v, g = var.reshape(T, L, E), rng.reshape(T, L, E)
        summaries[w] = (v.mean(2), v.max(2), g.mean(2), g.max(2), np.sqrt(v).mean(2))
    # transition: first step after which the mean window std stays within
    # (1 + kappa) of its final value (kappa 0.5), per layer
    std = summaries[100][4]
    trans = []
    for l in range(L):
        s = std[:, l]
        ok = s <= 1.5 * s[-1]
        bad = np.where(~ok)[0]
        trans.append(int(bad[-1] + 1) if len(bad) else 0)
    # forecasts: per layer, every origin, every forecaster
    ema = pd.DataFrame(p.reshape(T, L * E)).ewm(alpha=ALPHA, adjust=False).mean().to_numpy().reshape(T, L, E)
    scores = {}
    for o in range(STRIDE, T, STRIDE):
        n = min(max(H), T - o)
        actual = p[o:o + n]
        preds = {
            "last": np.broadcast_to(p[o - 1], (n, L, E)),
            "mean": np.broadcast_to(p[max(0, o - W_FC):o].mean(0), (n, L, E)),
            "ema": np.broadcast_to(ema[o - 1], (n, L, E)),
        }
        buf = list(p[max(0, o - W_FC):o])
        sw = np.empty((n, L, E))
        run = np.sum(buf, axis=0)
        for k in range(n):
            sw[k] = run / len(buf)
            run = run + sw[k] - buf[k]
            buf.append(sw[k])
        preds["sw-avg"] = sw
        for name, pr in preds.items():
            pr = np.clip(pr, 0, None)
            pr = pr / pr.sum(axis=2, keepdims=True)
            err = pr - actual
            for h in H:
                if h <= n:
                    a = scores.setdefault((name, h), [0.0, 0.0, 0.0, 0])
                    a[0] += np.abs(err[:h]).sum()
                    a[1] += (err[:h] ** 2).sum()
                    a[2] += 0.5 * np.abs(err[:h]).sum()
                    a[3] += h * L * E
    return {k: (100 * a[0] / a[3], 100 * np.sqrt(a[1] / a[3]), 100 * a[2] / (a[3] / E)) for k, a in scores.items()}, trans


for f in sys.argv[1:]:
    t0 = time.perf_counter()
    sc, tr = unit(f)
    print(f"python reference: {f}: {time.perf_counter() - t0:.1f} s (transitions {tr[:3]}..., "
          f"mae_pp last h=1 {sc[('last', 1)][0]:.3f})", flush=True)
