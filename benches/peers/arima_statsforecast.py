"""make bench-arima-peers: ARIMA(5,1,5) CSS-ML fits per second, expertcast beside
statsforecast, on the 96 expert-share series of the bundled gpt12-e16-top2-s1 trace
(the 2,000 steps before step 4,000), in one run.

statsforecast's `ARIMA(order=(5,1,5), method="CSS-ML")` fits each series on one
thread (after a warm-up fit that compiles its numba code); then expertcast's
`bench --stage arima` fits the same series with 1 and 2 threads (and more with
--threads), and with argmin's Nelder-Mead for comparison. Prints fits per second,
the ratios, and how often expertcast's log-likelihood is at least statsforecast's.

usage: python benches/peers/arima_statsforecast.py [--bin target/release/expertcast]
       [--threads 1,2] [--json OUT]"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

warnings.simplefilter("ignore")
root = Path(__file__).resolve().parents[2]
ap = argparse.ArgumentParser()
ap.add_argument("--bin", default=os.environ.get("EXPERTCAST_BIN", str(root / "target/release/expertcast")))
ap.add_argument("--threads", default="1,2")
ap.add_argument("--start", type=int, default=2000)
ap.add_argument("--end", type=int, default=4000)
ap.add_argument("--json", help="write every figure here")
ap.add_argument("--no-nm", action="store_true", help="skip the Nelder-Mead comparison")
args = ap.parse_args()

from statsforecast import __version__ as sf_version
from statsforecast.models import ARIMA

trace = root / "datasets/gpt12-e16-top2-s1.parquet"
raw = pq.read_table(trace).to_pydict()
step, layer, expert, tokens = (np.asarray(raw[c]) for c in ("step", "layer", "expert", "tokens"))
load = np.zeros((step.max() + 1, layer.max() + 1, expert.max() + 1))
load[step, layer, expert] = tokens
share = load / load.sum(axis=2, keepdims=True)
series = [(l, e, np.ascontiguousarray(share[args.start:args.end, l, e])) for l in range(share.shape[1]) for e in range(share.shape[2])]

ARIMA(order=(5, 1, 5), method="CSS-ML").fit(series[0][2])  # compile (numba) before timing
sf = []
t0 = time.perf_counter()
for l, e, y in series:
    t = time.perf_counter()
    try:
        ll = float(ARIMA(order=(5, 1, 5), method="CSS-ML").fit(y).model_["loglik"])
    except Exception as err:  # statsforecast gives up on some series (all-NaN residuals)
        print(f"statsforecast failed on layer {l} expert {e}: {err}")
        ll = None
    sf.append({"layer": l, "expert": e, "seconds": time.perf_counter() - t, "loglik": ll})
sf_wall = time.perf_counter() - t0
sf_rate = len(series) / sf_wall
failed = sum(1 for s in sf if s["loglik"] is None)
print(f"statsforecast {sf_version} ARIMA(5,1,5) CSS-ML, 1 thread: {len(series)} fits in {sf_wall:.2f} s = "
      f"{sf_rate:.2f} fits/s ({1e3 * sf_wall / len(series):.1f} ms a fit), {failed} failed")


def ours(threads, opt):
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "fits.json"
        cmd = [args.bin, "bench", "--stage", "arima", "--threads", str(threads), "--arima-opt", opt,
               "--arima-start", str(args.start), "--arima-end", str(args.end), "--arima-trace", str(trace),
               "--arima-json", str(out)]
        line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()
        print(line)
        return json.loads(out.read_text())


def at_least(a, b):
    """Our fit's log-likelihood is at least statsforecast's (to 1e-9 relative), or
    statsforecast failed where we did not."""
    if a["loglik"] is None:
        return False
    return b["loglik"] is None or a["loglik"] >= b["loglik"] - 1e-9 * abs(b["loglik"])


report = {"statsforecast": {"version": sf_version, "wall_seconds": sf_wall, "fits_per_second": sf_rate, "series": sf}}
rates = {}
for th in [int(t) for t in args.threads.split(",")]:
    r = ours(th, "lm")
    rates[th] = len(series) / r["wall_seconds"]
    better = sum(1 for a, b in zip(r["series"], sf) if at_least(a, b))
    worst = min((a["loglik"] or -np.inf) - b["loglik"] for a, b in zip(r["series"], sf) if b["loglik"] is not None)
    print(f"expertcast lm, {th} thread(s): {rates[th]:.2f} fits/s = {rates[th] / sf_rate:.1f}x statsforecast; "
          f"log-likelihood >= statsforecast's on {better}/{len(sf)} series ({100 * better / len(sf):.0f}%), "
          f"worst difference {worst:.3g}")
    report[f"expertcast_lm_{th}"] = {"fits_per_second": rates[th], "loglik_at_least": better, **r}
if 1 in rates and 2 in rates:
    print(f"expertcast 1 -> 2 threads: {rates[2] / rates[1]:.2f}x")
if not args.no_nm:
    r = ours(1, "nm")
    rate = len(series) / r["wall_seconds"]
    better = sum(1 for a, b in zip(r["series"], sf) if at_least(a, b))
    print(f"expertcast nm (argmin Nelder-Mead), 1 thread: {rate:.2f} fits/s = {rate / sf_rate:.1f}x statsforecast; "
          f"log-likelihood >= statsforecast's on {better}/{len(sf)} series")
    report["expertcast_nm_1"] = {"fits_per_second": rate, "loglik_at_least": better, **r}
if args.json:
    Path(args.json).write_text(json.dumps(report))
