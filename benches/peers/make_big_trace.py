"""Writes a paper-scale long trace (100,000 steps x 12 layers x 128 experts, int64
tokens, zstd Parquet) for the reader's memory benchmark. Loads tile the bundled
gpt12-e16-top2-s1 trace: load[t, l, e] = load_s1[(7 t + 13 l) mod 8001, l mod 6, e mod 16].

usage: make_big_trace.py OUT.parquet [STEPS]"""
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

out = Path(sys.argv[1])
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
if out.exists():
    print(f"{out} exists")
    sys.exit(0)
out.parent.mkdir(parents=True, exist_ok=True)
root = Path(__file__).resolve().parents[2]
raw = pq.read_table(root / "datasets/gpt12-e16-top2-s1.parquet").to_pydict()
s, l, e, tok = (np.asarray(raw[c]) for c in ("step", "layer", "expert", "tokens"))
T0 = s.max() + 1
src = np.zeros((T0, 6, 16), dtype=np.int64)
src[s, l, e] = tok
L, E = 12, 128
schema = pa.schema([("step", pa.int64()), ("layer", pa.int32()), ("expert", pa.int32()), ("tokens", pa.int64())])
with pq.ParquetWriter(out, schema, compression="zstd") as w:
    chunk = 2000
    for t0 in range(0, steps, chunk):
        t = np.arange(t0, min(t0 + chunk, steps))
        tt, ll, ee = np.meshgrid(t, np.arange(L), np.arange(E), indexing="ij")
        tokens = src[(7 * tt + 13 * ll) % T0, ll % 6, ee % 16]
        w.write_table(pa.table({
            "step": tt.ravel().astype(np.int64), "layer": ll.ravel().astype(np.int32),
            "expert": ee.ravel().astype(np.int32), "tokens": tokens.ravel(),
        }, schema=schema))
print(f"wrote {out}: {steps} x {L} x {E}")
