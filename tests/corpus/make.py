"""Makes the seed corpus of tests/fuzz_readers.rs from small.parquet (itself made by
`expertcast synth --out tests/corpus/small.parquet --steps 40 --layers 2 --experts 4 --seed 3`):
the same trace as CSV and as a dense int32 .npy, and a sweep config.
Run from the repository root: .venv/bin/python tests/corpus/make.py"""
import numpy as np
import pyarrow.parquet as pq

t = pq.read_table("tests/corpus/small.parquet").to_pandas().sort_values(["step", "layer", "expert"])
t[["step", "layer", "expert", "tokens"]].to_csv("tests/corpus/small.csv", index=False)
steps, layers, experts = t.step.nunique(), t.layer.nunique(), t.expert.nunique()
dense = t.tokens.to_numpy().astype(np.int32).reshape(steps, layers, experts)
np.save("tests/corpus/small.npy", dense)
with open("tests/corpus/sweep.toml", "w") as f:
    f.write('traces = ["small.parquet"]\nout = "out"\nwindows = [10, 20]\nhorizons = [1, 5]\n'
            'origin_stride = [5, 10]\nstate_window = [10]\nkappa = [0.5]\n'
            'forecasters = ["last", "mean:w=[5,10]", "ema:alpha=0.3"]\n')
