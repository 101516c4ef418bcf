"""The PyTorch peer of `expertcast run` with every default, the way a PyTorch user
would write it on a GPU: an int32 `.npy` trace [steps, layers, experts] in, shares;
window variance and range of every series for W = 10, 100, 200 (float64 cumulative
sums for the variance, max_pool1d for the range) and their layer summaries; the
state transition of every (layer, window) (SPEC's rule: the median of the last tenth
of the mean window std, kappa 0.5); the forecasters last, mean:w=100, sw-avg:w=100,
ema:alpha=0.3 and oracle-median from every 100th origin (from step 100), clipped and
renormalised where real, scored at horizons 1, 10, 100, 1000, 2000 for the regimes
all and stable (origins at or after the W = 100 transition): mae_pp, rmse_pp,
tv_pct. Everything in float64 on the GPU; only the results come back.

Prints the seconds of its stages and its wall (after Python's imports), and with
--metrics OUT.csv writes its metrics for a comparison with expertcast's
metrics.parquet (benches/e2e.sh does it).

usage: python3 benches/peers/pipeline_torch.py TRACE.npy [--metrics OUT.csv]"""
import argparse
import time

T0 = time.perf_counter()
import numpy as np  # noqa: E402
import torch  # noqa: E402

H = [1, 10, 100, 1000, 2000]
WINDOWS, STATE_W, KAPPA = [10, 100, 200], 100, 0.5
W_FC, ALPHA, STRIDE = 100, 0.3, 100

ap = argparse.ArgumentParser()
ap.add_argument("trace")
ap.add_argument("--metrics")
args = ap.parse_args()
dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
t_import = time.perf_counter() - T0

t = time.perf_counter()
loads = torch.from_numpy(np.load(args.trace)).to(dev)
p = loads.double()
p = p / p.sum(2, keepdim=True)  # [T, L, E]
T, L, E = p.shape
sync()
t_read = time.perf_counter() - t

# Window statistics and layer summaries.
t = time.perf_counter()
x = p.reshape(T, L * E)
c1 = torch.cat([x.new_zeros(1, L * E), x.cumsum(0)])
c2 = torch.cat([x.new_zeros(1, L * E), (x * x).cumsum(0)])
summaries, transitions = {}, {}
for w in WINDOWS:
    m = (c1[w:] - c1[:-w]) / w
    var = ((c2[w:] - c2[:-w]) / w - m * m).clamp_min(0)
    xt = x.t()[None]  # [1, series, T]
    rng = (torch.nn.functional.max_pool1d(xt, w, 1) + torch.nn.functional.max_pool1d(-xt, w, 1))[0].t()
    v, g = var.view(-1, L, E), rng.view(-1, L, E)
    summaries[w] = (v.mean(2), v.amax(2), g.mean(2), g.amax(2), v.sqrt().mean(2))
    s = summaries[w][4]  # [n, L]
    n = s.shape[0]
    fin = s[n - max(1, n // 10):].double().quantile(0.5, dim=0, interpolation="midpoint")
    above = s > (1 + KAPPA) * fin
    idx = torch.arange(n, device=dev)[:, None].expand(n, L)
    last_above = torch.where(above, idx, torch.full_like(idx, -1)).amax(0)
    transitions[w] = [None if la == n - 1 else w - 1 + la + 1 for la in last_above.tolist()]
host_summaries = {w: [t.cpu() for t in v] for w, v in summaries.items()}
sync()
t_stats = time.perf_counter() - t

# Forecasts and scores.
t = time.perf_counter()
origins = torch.arange(W_FC, T, STRIDE, device=dev)
no, hmax = len(origins), max(H)
stable = origins[:, None] >= torch.tensor([T if s is None else s for s in transitions[STATE_W]], device=dev)[None]  # [no, L]
k = torch.arange(hmax, device=dev)


def renorm(pred):
    pred = pred.clamp_min(0)
    return pred / pred.sum(-1, keepdim=True)


def actual_of(os):
    """[len(os), hmax, L, E]: the steps ahead of each origin (zeros past the end)."""
    idx = os[:, None] + k[None]
    ok = idx < T
    return p[idx.clamp_max(T - 1)] * ok[..., None, None], ok


sums = {}  # forecaster -> per horizon: [regime][abs, sq][layer] sums, [regime][layer] origins
hidx = torch.tensor([h - 1 for h in H], device=dev)


def score(name, pred_of, chunk=64, per_h=None):
    """pred_of(c, os) -> [len(os), hmax or 1, L, E] predictions of origins os (from
    index c); per_h(os, h) -> [len(os), 1, L, E] for a forecast that depends on h.
    Each origin's error sums over its steps ahead are running sums read off at each
    horizon."""
    acc = torch.zeros(len(H), 2, 2, L, dtype=torch.float64, device=dev)
    cnt = torch.zeros(len(H), 2, L, dtype=torch.float64, device=dev)
    for c in range(0, no, chunk):
        os = origins[c:c + chunk]
        act, _ = actual_of(os)
        fits = (os[:, None] + torch.tensor(H, device=dev)[None] <= T).double()  # [n, nh]
        if per_h is None:
            err = pred_of(c, os) - act  # [n, hmax, L, E]
            ab = err.abs().sum(3).cumsum(1)[:, hidx]  # [n, nh, L]
            sq = (err * err).sum(3).cumsum(1)[:, hidx]
        else:
            ab, sq = [], []
            for h in H:
                err = (per_h(os, h) - act[:, :h])
                ab.append(err.abs().sum((1, 3)))
                sq.append((err * err).sum((1, 3)))
            ab, sq = torch.stack(ab, 1), torch.stack(sq, 1)
        for r, sel in enumerate([torch.ones_like(stable[c:c + chunk]), stable[c:c + chunk]]):
            wgt = sel.double()[:, None, :] * fits[:, :, None]  # [n, nh, L]
            acc[:, r, 0] += (ab * wgt).sum(0)
            acc[:, r, 1] += (sq * wgt).sum(0)
            cnt[:, r] += wgt.sum(0)
    sums[name] = (acc, cnt)


last = lambda c, os: renorm(p[os - 1][:, None])  # noqa: E731
mean = lambda c, os: renorm(torch.stack([p[o - W_FC:o].mean(0) for o in os.tolist()])[:, None])  # noqa: E731
# ema at each origin: the closed form over the last 400 steps ((1 - alpha)^400 <
# 1e-60), as a vectorising user writes it, instead of a recursion over every step.
J = 400
wts = ALPHA * (1 - ALPHA) ** torch.arange(J, device=dev, dtype=torch.float64)


def ema(c, os):
    rows = []
    for o in os.tolist():
        n = min(o - 1, J)  # e(o-1) from p[o-n .. o-1] and, when o-1 <= J, p[0]
        seg = p[o - n:o].flip(0)  # p[o-1], p[o-2], ...
        e = (wts[:n, None, None] * seg).sum(0)
        if o - 1 <= J:
            e = e + (1 - ALPHA) ** (o - 1) * p[0]
        rows.append(e)
    return renorm(torch.stack(rows)[:, None])


def sw_avg_all():
    """Every origin at once, a step at a time: [no, hmax, L, E]."""
    hist = torch.stack([p[o - W_FC:o] for o in origins.tolist()])  # [no, W, L, E]
    buf = torch.cat([hist, hist.new_zeros(no, hmax, L, E)], 1)
    run = hist.sum(1)
    for j in range(hmax):
        buf[:, W_FC + j] = run / W_FC
        run = run + buf[:, W_FC + j] - buf[:, j]
    return renorm(buf[:, W_FC:])


def oracle(os, h):
    act, _ = actual_of(os)
    s = act[:, :h].sort(1).values
    return (0.5 * (s[:, (h - 1) // 2] + s[:, h // 2]))[:, None]


score("last", last)
score("mean:w=100", mean)
sw = sw_avg_all()
score("sw-avg:w=100", lambda c, os: sw[c:c + len(os)])
del sw
score("ema:alpha=0.3", ema)
score("oracle-median", None, chunk=16, per_h=oracle)
rows = []
for name, (acc, cnt) in sums.items():
    a, n = acc.cpu().numpy(), cnt.cpu().numpy()
    for hi, h in enumerate(H):
        for l in range(L):
            for r, regime in enumerate(["all", "stable"]):
                cells = n[hi, r, l] * h * E
                if cells == 0:
                    rows.append((name, l, h, regime, 0, None, None, None))
                    continue
                rows.append((name, l, h, regime, int(n[hi, r, l]), 100 * a[hi, r, 0, l] / cells,
                             100 * np.sqrt(a[hi, r, 1, l] / cells), 100 * 0.5 * a[hi, r, 0, l] / (n[hi, r, l] * h)))
sync()
t_fc = time.perf_counter() - t
wall = time.perf_counter() - T0
print(f"pipeline_torch: {T} x {L} x {E} on {dev}: read {t_read:.2f} s, statistics {t_stats:.2f} s, "
      f"forecasts + scores {t_fc:.2f} s; {wall - t_import:.2f} s after imports ({t_import:.2f} s of imports), "
      f"{wall:.2f} s in all")
if args.metrics:
    with open(args.metrics, "w") as f:
        f.write("forecaster,layer,horizon,regime,origins,mae_pp,rmse_pp,tv_pct\n")
        for r in rows:
            f.write(",".join("" if v is None else v if isinstance(v, str) else repr(float(v)) if isinstance(v, float) else str(v) for v in r) + "\n")
