"""The Python reference pipeline for the sweep benchmark: for each trace file given,
the work of one expertcast sweep unit without ARIMA and LSTM, in pandas and numpy on
one core: read the long Parquet, shares, window mean / variance / range of every
series for W = 10, 100, 200 with pandas `rolling` and their layer summaries, the
transition step of each layer (SPEC's rule on the W = 100 mean window std), and the
forecasters last, mean:w=100, sw-avg:w=100, ema:alpha=0.3 from every 100th origin,
scored (mae_pp, rmse_pp, tv_pct, regime all) at horizons 1, 10, 100, 1000, 2000.
Prints seconds per trace.

With --arima-sample K it also fits statsmodels' ARIMA(5,1,5) (n = 1000 steps of
history, forecasts to 2000 steps) at K random (series, origin) pairs of the unit and
scales the time per fit to the unit's fits (every series at every origin); with
--lstm it trains PyTorch's nn.LSTM as `lstm` does by default (joint: a layer's 128
shares in, the next 10 of each out; lookback 100, hidden 64, 2 layers, each window
normalised by its own mean and std, Adam lr 0.002, batch 256, up to 30 epochs with
patience 5 on the latest 10% of windows, on the 2000 steps before the first origin)
for --lstm-layers layers of the unit, forecasts every origin (beyond 10 steps the
window's level), and scales to all layers. Origins start at 2000 (the LSTM's
training steps) when either is given, else at the stride.

usage: python3 benches/peers/sweep_reference.py [--stride S] [--arima-sample K]
       [--lstm [--lstm-layers N]] TRACE.parquet [...]"""
import argparse
import time
import warnings

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

H = [1, 10, 100, 1000, 2000]
W_FC, ALPHA = 100, 0.3
ARIMA_N, LSTM_TRAIN = 1000, 2000


def shares(path):
    t = pq.read_table(path, columns=["step", "layer", "expert", "tokens"]).to_pandas()
    T, L, E = t.step.max() + 1, t.layer.max() + 1, t.expert.max() + 1
    load = np.zeros((T, L, E))
    load[t.step.values, t.layer.values, t.expert.values] = t.tokens.values
    return load / load.sum(axis=2, keepdims=True)


def unit(p, origins):
    T, L, E = p.shape
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
    for o in origins:
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


def arima_part(p, origins, k):
    """statsmodels ARIMA(5,1,5) at k random (series, origin) pairs: seconds per fit."""
    from statsmodels.tsa.arima.model import ARIMA

    warnings.simplefilter("ignore")
    T, L, E = p.shape
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for _ in range(k):
        s, o = rng.integers(L * E), origins[rng.integers(len(origins))]
        ARIMA(p[o - ARIMA_N:o, s // E, s % E], order=(5, 1, 5)).fit().forecast(max(H))
    return (time.perf_counter() - t0) / k


def lstm_layer(x, origins, torch, dev):
    """Trains the joint LSTM on one layer's shares x [T, E] and forecasts every origin."""
    from torch import nn

    LB, K, HID = 100, 10, 64
    T, E = x.shape
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(E, HID, 2, batch_first=True)
            self.head = nn.Linear(HID, E * K)

        def forward(self, w):
            return self.head(self.lstm(w)[0][:, -1]).view(-1, K, E)

    xt = torch.tensor(x, dtype=torch.float32, device=dev)

    def windows(ends):
        idx = torch.tensor(ends, device=dev)[:, None] + torch.arange(-LB, 0, device=dev)
        w = xt[idx]
        mu, sd = w.mean(1, keepdim=True), w.std(1, unbiased=False, keepdim=True).clamp_min(1e-5)
        return (w - mu) / sd, mu, sd

    first = origins[0]
    ends = np.arange(LB, first - K + 1)
    w, mu, sd = windows(ends)
    tgt = ((xt[torch.tensor(ends, device=dev)[:, None] + torch.arange(K, device=dev)] - mu) / sd).clamp(-10, 10)
    nv = max(1, len(ends) // 10)
    net = Net().to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=0.002)
    best, bad = float("inf"), 0
    for _ in range(30):
        perm = torch.randperm(len(ends) - nv, device=dev)
        for b in range(0, len(perm), 256):
            i = perm[b:b + 256]
            opt.zero_grad()
            nn.functional.mse_loss(net(w[i]), tgt[i]).backward()
            opt.step()
        with torch.no_grad():
            v = nn.functional.mse_loss(net(w[-nv:]), tgt[-nv:]).item()
        if v < best:
            best, bad, state = v, 0, {k: t.clone() for k, t in net.state_dict().items()}
        else:
            bad += 1
            if bad >= 5:
                break
    net.load_state_dict(state)
    with torch.no_grad():
        w, mu, sd = windows(list(origins))
        out = mu.expand(-1, max(H), -1).clone()
        out[:, :K] = net(w) * sd + mu
    return out.clamp_min(0).cpu().numpy()


def lstm_part(p, origins, layers):
    """PyTorch LSTM for `layers` layers: seconds, scaled to all of the unit's layers."""
    import torch

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    for l in range(layers):
        lstm_layer(p[:, l, :], origins, torch, dev)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / layers * p.shape[1]


ap = argparse.ArgumentParser()
ap.add_argument("traces", nargs="+")
ap.add_argument("--stride", type=int, default=100)
ap.add_argument("--arima-sample", type=int, default=0)
ap.add_argument("--lstm", action="store_true")
ap.add_argument("--lstm-layers", type=int, default=1)
a = ap.parse_args()
for f in a.traces:
    t0 = time.perf_counter()
    p = shares(f)
    start = LSTM_TRAIN if (a.arima_sample or a.lstm) else a.stride
    origins = list(range(start, p.shape[0], a.stride))
    sc, tr = unit(p, origins)
    base = time.perf_counter() - t0
    total, parts = base, [f"pandas/numpy part {base:.1f} s"]
    if a.arima_sample:
        per_fit = arima_part(p, origins, a.arima_sample)
        fits = p.shape[1] * p.shape[2] * len(origins)
        total += per_fit * fits
        parts.append(f"statsmodels ARIMA {1e3 * per_fit:.0f} ms a fit ({a.arima_sample} timed) x {fits} fits = "
                     f"{per_fit * fits:.0f} s")
    if a.lstm:
        sec = lstm_part(p, origins, a.lstm_layers)
        total += sec
        parts.append(f"PyTorch LSTM {sec:.1f} s ({a.lstm_layers} of {p.shape[1]} layers timed, scaled)")
    print(f"python reference: {f}: {total:.1f} s a unit ({'; '.join(parts)}; {len(origins)} origins; "
          f"transitions {tr[:3]}..., mae_pp last h=1 {sc[('last', 1)][0]:.3f})", flush=True)
