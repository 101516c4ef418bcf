#!/usr/bin/env python3
"""How close to `oracle-median` at a long horizon can a renormalised forecast get?

Issue 20 asks the learned forecasters for h = 1000 within 3 % of `oracle-median`,
stable regime, pooled over layers. The oracle is the best constant in hindsight and
is not renormalised (SPEC.md); every real forecaster is clipped and renormalised to
sum to 1. This prints, for each trace, `mae_pp` relative to the oracle of:

  hindsight mean       each expert's mean of the steps ahead (sums to 1)
  best renormalised    the best constant in hindsight that sums to 1: every expert's
                       q-quantile of the steps ahead, one q for all, chosen so that
                       they sum to 1 (the optimum of the linear programme)
  trailing mean 100    the mean of the last 100 steps (what `lstm` and `linear`
                       predict beyond k; `mean:w=100`)
  fitted level         least squares of the hindsight mean on the trailing means of
                       1-500 steps, two trailing medians and deviations, and 1/E,
                       fitted on this very trace (in sample), clipped and renormalised

Origins every 100 steps from step 100 (the learned forecasters' default start), the
stable regime from the states (window 100) of RUN, a run over the same traces.

With --h1, the other target instead (h = 1, at least 20 % below `sw-avg:w=100`): how
far below `sw-avg:w=100` at h = 1 linear models get when fitted on the trace they are
scored on (in sample: they see the steps they predict), and a forecast that sees the
future; all clipped and renormalised, the stable origins every 100 steps that have
200 steps before them:

  AR(p) pooled         one linear autoregression of order p per layer on the shares'
                       deviations from their trailing 100-step mean, fitted by least
                       squares on every stable step of this very trace (in sample)
  AR(p) per series     the same, one per expert series, fitted on the steps it is
                       scored on (not a strict bound: an in-sample fit gains with
                       every coefficient)
  VAR(p) per layer     every expert's last p deviations predict each expert's next
                       one, per layer (E * p + 1 coefficients for each expert)
  two-sided mean +-k   the mean of the k steps before and the k steps after the
                       scored one: it sees the future

and then the same models (not the two-sided mean) fitted on the first half of each
layer's stable steps (with a ridge penalty, --ridge) and scored at the second half's
origins against `sw-avg:w=100` there: what in-sample fitting adds. Last, the same
models fitted in sample on the second half alone (as many rows, the same ridge) and
scored at the same origins, to tell how much of the first-half fits' loss is the
second half being harder. The ridge keeps e64's VAR(20) (1,281 coefficients an
expert, about as many rows in a half) solvable.

usage: benches/learned_ceiling.py RUN TRACE... [--horizon H | --h1]   (numpy, pyarrow)
"""
import argparse
import os

import numpy as np
import pyarrow.parquet as pq


def shares(path):
    t = pq.read_table(path, columns=["step", "layer", "expert", "tokens"])
    s, l, e, n = (t[c].to_numpy() for c in ("step", "layer", "expert", "tokens"))
    a = np.zeros((l.max() + 1, s.max() + 1, e.max() + 1))
    a[l, s, e] = n
    return a / a.sum(2, keepdims=True)


def best_renormalised(f):
    s = np.sort(f, 0)
    n = len(f)

    def c(q):
        return s[min(n - 1, int(q * n))]

    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if c(mid).sum() < 1:
            lo = mid
        else:
            hi = mid
    a, b = c(lo), c(hi)
    if b.sum() == a.sum():
        return a / a.sum()
    return a + (1 - a.sum()) / (b.sum() - a.sum()) * (b - a)


def features(h, e):
    f = [h[-w:].mean(0) for w in (1, 5, 10, 20, 50, 100, 200, 300, 500)]
    f += [h[-w:].std(0) for w in (100, 300)] + [np.median(h[-w:], 0) for w in (100, 300)]
    f += [h[-1000:].mean(0), h[-2000:].mean(0), np.full(e, 1.0 / e)]
    return np.stack(f, 1)


def renorm(p):
    p = np.maximum(p, 0)
    return p / p.sum()


def h1_bounds(P, tr, halves=None, ridge=0.0):
    """mae at h = 1 over the stable origins of each model above, and `sw-avg:w=100`'s.

    In sample (`halves` None) every model is fitted on every stable step of its layer
    and scored at all its stable origins. With `halves` "first", fitted on the first
    half of the layer's stable steps and scored at the origins of the second half
    only; with "second", fitted on the second half and scored at the same origins.
    `ridge` adds ridge * rows to the Gram matrix's diagonal (not the intercept's)."""
    L, T, E = P.shape
    C = np.concatenate([np.zeros((L, 1, E)), np.cumsum(P, 1)], 1)
    err = {}

    def add(k, p, want):
        p = np.maximum(p, 0)
        err[k] = err.get(k, 0.0) + np.abs(p / p.sum(-1, keepdims=True) - want).mean(-1).sum()

    for l in range(L):
        if tr.get(l) is None:
            continue
        ts = np.arange(max(tr[l], 200), T)  # every stable step with 200 steps before it
        first = ts < ts[0] + (T - ts[0]) // 2
        fit = {None: np.ones(len(ts), bool), "first": first, "second": ~first}[halves]
        at = (ts % 100 == 0) & (~first if halves else True)  # the scored origins
        level = (C[l, ts] - C[l, ts - 100]) / 100
        want = P[l, ts[at]]
        add("sw-avg:w=100", level[at], want)

        def solve(X, y):  # least squares with an intercept, fitted on the fit rows; predictions at `at`
            Xa = np.hstack([X, np.ones((len(X), 1))])
            G = Xa[fit].T @ Xa[fit]
            G[:-1, :-1] += ridge * fit.sum() * np.eye(X.shape[1])
            return Xa[at] @ np.linalg.solve(G, Xa[fit].T @ y[fit])

        y = P[l, ts] - level
        dev = lambda p: np.stack([P[l, ts - k] - level for k in range(1, p + 1)], -1)  # (steps, E, p)
        for p in (10, 30, 60):
            X = dev(p)
            # one model for the layer: its rows are (step, expert), fitted and scored per step
            Xp, yp = X.reshape(-1, p), y.reshape(-1)
            Xa = np.hstack([Xp, np.ones((len(Xp), 1))])
            fit_e, at_e = np.repeat(fit, E), np.repeat(at, E)
            G = Xa[fit_e].T @ Xa[fit_e]
            G[:-1, :-1] += ridge * fit_e.sum() * np.eye(p)
            b = np.linalg.solve(G, Xa[fit_e].T @ yp[fit_e])
            add(f"AR({p}) pooled", level[at] + (Xa[at_e] @ b).reshape(-1, E), want)
            add(f"AR({p}) per series", level[at] + np.stack([solve(X[:, e], y[:, e]) for e in range(E)], 1), want)
        for p in (5, 10, 20):
            # every expert's last p deviations predict each expert's next one
            add(f"VAR({p}) per layer", level[at] + solve(dev(p).reshape(len(ts), -1), y), want)
        if halves:
            continue
        for k in (5, 10, 50):
            o = ts[at]
            o = o[o + k + 1 <= T]
            two = (C[l, o + k + 1] - C[l, o + 1] + C[l, o] - C[l, o - k]) / (2 * k)
            add(f"two-sided mean +-{k}", two, P[l, o])
            # sw-avg on the same origins (those with k steps after them), this row's baseline
            add(f"sw-avg:w=100 for two-sided mean +-{k}", (C[l, o] - C[l, o - 100]) / 100, P[l, o])
    return err


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("traces", nargs="+")
    ap.add_argument("--horizon", type=int, default=1000)
    ap.add_argument("--h1", action="store_true", help="bounds at h = 1 against sw-avg:w=100 instead")
    ap.add_argument("--ridge", type=float, default=1e-5, help="ridge penalty (times rows) of --h1's half fits")
    a = ap.parse_args()
    states = pq.read_table(os.path.join(a.run, "states.parquet")).to_pylist()
    if a.h1:
        print("h = 1, stable regime, pooled over layers; mae_pp relative to sw-avg:w=100")
        for path in a.traces:
            name = os.path.basename(path).removesuffix(".parquet")
            tr = {r["layer"]: r["transition_step"] for r in states if r["trace"] == name and r["window_size"] == 100}
            P = shares(path)
            for how, err in (
                ("in sample", h1_bounds(P, tr)),
                ("first half -> second half", h1_bounds(P, tr, "first", a.ridge)),
                ("second half in sample", h1_bounds(P, tr, "second", a.ridge)),
            ):
                base = lambda k: f"sw-avg:w=100 for {k}" if k.startswith("two-sided") else "sw-avg:w=100"
                rel = lambda k: 100 * (err[k] / err[base(k)] - 1)
                print(f"{name}, {how}: " + "  ".join(f"{k} {rel(k):+.2f} %" for k in err if not k.startswith("sw-avg")))
        return
    H = a.horizon
    print(f"h = {H}, stable regime, pooled over layers; mae_pp relative to oracle-median")
    for path in a.traces:
        name = os.path.basename(path).removesuffix(".parquet")
        tr = {r["layer"]: r["transition_step"] for r in states if r["trace"] == name and r["window_size"] == 100}
        P = shares(path)
        L, T, E = P.shape
        cases = []
        for l in range(L):
            for o in range(100, T - H + 1, 100):
                if tr.get(l) is not None and o >= tr[l]:
                    cases.append((P[l, :o], P[l, o : o + H]))
        X = np.concatenate([features(h, E) for h, _ in cases])
        w = np.linalg.lstsq(X, np.concatenate([f.mean(0) for _, f in cases]), rcond=None)[0]
        err = dict.fromkeys(["oracle", "hindsight mean", "best renormalised", "trailing mean 100", "fitted level"], 0.0)
        for h, f in cases:
            for k, p in (
                ("oracle", np.median(f, 0)),
                ("hindsight mean", f.mean(0)),
                ("best renormalised", best_renormalised(f)),
                ("trailing mean 100", h[-100:].mean(0)),
                ("fitted level", renorm(features(h, E) @ w)),
            ):
                err[k] += np.abs(f - p).mean()
        rel = "  ".join(f"{k} {100 * (v / err['oracle'] - 1):+.2f} %" for k, v in err.items() if k != "oracle")
        print(f"{name} ({len(cases)} origins, oracle {100 * err['oracle'] / len(cases):.4f} pp): {rel}")


if __name__ == "__main__":
    main()
