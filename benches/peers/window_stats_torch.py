"""Peer for `expertcast bench`: PyTorch's Tensor.unfold then var/amax/amin on the GPU,
on the same data (100,000 steps x 12 layers x 128 experts, float32, series-major,
tiled from the bundled gpt12-e16-top2-s1 trace by the rule of src/cli/bench.rs).
Also measures a device-to-device copy of the input, the ceiling both are held to."""
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

STEPS, LAYERS, EXPERTS = 100_000, 12, 128
REPS = 10
root = Path(__file__).resolve().parents[2]
raw = pq.read_table(root / "datasets/gpt12-e16-top2-s1.parquet").to_pydict()
step, layer, expert, tokens = (np.asarray(raw[c]) for c in ("step", "layer", "expert", "tokens"))
T0, L0, E0 = step.max() + 1, layer.max() + 1, expert.max() + 1
load = np.zeros((T0, L0 * E0))
load[step - step.min(), layer * E0 + expert] = tokens
S = LAYERS * EXPERTS
s = np.arange(S)
k = s % (L0 * E0)
t = np.arange(STEPS)
src = load[(t[None, :] + 37 * s[:, None]) % T0, k[:, None]]            # [S, T] loads, tiled
tiled_layer = src.reshape(LAYERS, EXPERTS, STEPS)
p = (tiled_layer / tiled_layer.sum(axis=1, keepdims=True)).reshape(S, STEPS).astype(np.float32)

dev = torch.device("cuda")
x = torch.from_numpy(p).to(dev)
print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}; data {S} x {STEPS} float32 "
      f"({x.numel() * 4 / 1e6:.1f} MB)")


def timed(fn):
    fn()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(REPS):
        fn()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / REPS


y = torch.empty_like(x)
ms = timed(lambda: y.copy_(x))
print(f"torch device-to-device copy: {ms:.3f} ms, {2 * x.numel() * 4 / ms / 1e6:.0f} GB/s (read + write)")
del y
for w in [int(a) for a in sys.argv[1:]] or [10, 100, 1000]:
    def unfold_stats():
        u = x.unfold(1, w, 1)            # [S, n, W] view
        return u.var(dim=2, unbiased=False), u.amax(dim=2), u.amin(dim=2)
    try:
        ms = timed(unfold_stats)
        v, hi, lo = unfold_stats()
        print(f"torch unfold var+amax+amin W={w}: {ms:.3f} ms")
        del v, hi, lo
    except torch.OutOfMemoryError:
        print(f"torch unfold W={w}: out of memory")
    torch.cuda.empty_cache()
