# expertcast — build, test and benchmark entry points.
# `make run` runs the pipeline on the bundled traces; `make test` runs every test
# CI runs (it installs the Python reader the interoperability test uses).

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
CARGO ?= cargo

.PHONY: build run test chromium test-slurm bench-report venv venv-peers bench bench-window bench-peers bench-read bench-run bench-e2e bench-first-run bench-gpu bench-arima-peers bench-arima-scaling bench-sweep-scale bench-sweep-full bench-lstm bench-lstm-accuracy bench-lstm-cpu bench-learned clean

build:
	$(CARGO) build --release

run: build
	./target/release/expertcast run

# Python packages for the interoperability test, the README snippets (duckdb,
# polars) and the peer benchmarks.
$(VPY): tests/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -r tests/requirements.txt
	touch $(VPY)

venv: $(VPY)

# statsforecast and statsmodels for the ARIMA peers and fixtures (not needed by `make test`).
PVENV := .venv-peers
PVPY := $(PVENV)/bin/python
$(PVPY): benches/peers/requirements.txt
	$(PYTHON) -m venv $(PVENV)
	$(PVPY) -m pip install -q --upgrade pip
	$(PVPY) -m pip install -q -r benches/peers/requirements.txt
	touch $(PVPY)

venv-peers: $(PVPY)

# The report test renders a page in headless Chromium: Debian's chromium is installed
# with apt-get when no Chromium is found (needs root; EXPERTCAST_CHROMIUM names another).
chromium:
	@[ -n "$$EXPERTCAST_CHROMIUM" ] || command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  command -v google-chrome >/dev/null || { echo "installing Debian's chromium (apt-get) for the report test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

test: $(VPY) chromium
	EXPERTCAST_PYTHON=$(abspath $(VPY)) $(CARGO) test --release

# A 4-task Slurm job array sweep on a throw-away single-node cluster on this host
# (installs Debian's slurm-wlm and munge when missing; needs root). .ci/run runs it.
test-slurm:
	test -x target/release/expertcast || $(CARGO) build --release
	tests/slurm/run.sh target/release/expertcast

# Criterion bench of the CPU window statistics (20,000 steps x 1,536 series).
bench-window:
	$(CARGO) bench --bench window_stats

# The same data through pandas' rolling var/max/min, then our bench, in one run.
bench-peers: $(VPY)
	$(VPY) benches/peers/window_stats_pandas.py
	$(CARGO) bench --bench window_stats

# The report of the bundled-traces run (with placement): its time, then Chromium's
# time to lay out and paint the page (benches/report_render.sh).
bench-report: build chromium
	rm -rf .bench-out/report
	./target/release/expertcast run --out .bench-out/report --quiet --placement-gpus 4 --placement-gpus 8
	for i in 1 2 3; do ./target/release/expertcast report .bench-out/report; done
	benches/report_render.sh .bench-out/report/report.html

# Peak memory of reading a 100,000 x 12 x 128 trace (needs /usr/bin/time).
bench-read: build $(VPY)
	$(VPY) benches/peers/make_big_trace.py bench-data/big.parquet
	/usr/bin/time -v ./target/release/expertcast run bench-data/big.parquet --out .bench-out/big \
	  -f last --horizon 1 --origin-stride 100000 --window 10 --quiet 2>&1 | \
	  grep -E "Maximum resident|Elapsed"

# The whole pipeline with defaults on the three bundled traces.
bench-run: build
	/usr/bin/time -v ./target/release/expertcast run --out .bench-out/run --quiet 2>&1 | \
	  grep -E "Maximum resident|Elapsed"

# The whole default run on the paper-scale trace (.npy and Parquet, best of 3, GPU
# utilisation sampled) beside the PyTorch peer benches/peers/pipeline_torch.py, and
# the peer's metrics checked against ours on a bundled trace (needs a CUDA GPU and a
# python3 with torch, numpy and pyarrow).
bench-e2e: build
	benches/e2e.sh ./target/release/expertcast .bench-out/e2e python3

# A GPU run with nothing cached (our kernels and the driver's JIT cache empty), then
# warm, on the bundled traces and the paper-scale trace (needs a CUDA GPU).
bench-first-run: build
	benches/first_run.sh .bench-out/first-run ./target/release/expertcast

# GPU kernels against the copy ceiling and PyTorch's unfold (needs a CUDA GPU and
# a python3 with torch, numpy and pyarrow).
bench-gpu: build
	./target/release/expertcast bench
	python3 benches/peers/window_stats_torch.py

# ARIMA(5,1,5) CSS-ML fits per second: statsforecast and expertcast (1 and 2 threads,
# and argmin's Nelder-Mead) on the 96 series of a bundled trace, in one run.
bench-arima-peers: build $(PVPY)
	$(PVPY) benches/peers/arima_statsforecast.py

# Fits per second against threads, and the full rolling ARIMA evaluation (the 16-core
# figures in BENCHMARKS.md come from this on the GPU host).
bench-arima-scaling: build
	benches/arima_scaling.sh

# 64 synthetic GPT-3-350M-shaped traces swept, beside the pandas/numpy reference on
# one of them (needs ~4 GB of disk; the BENCHMARKS.md figures are from the GPU host).
bench-sweep-scale: build
	benches/sweep_scale.sh target/release/expertcast 64

# The same with ARIMA and the LSTM too (origin stride 4000), beside a reference that
# adds statsmodels' ARIMA and PyTorch's LSTM (about 10 minutes on a 16-core GPU host).
bench-sweep-full: build
	FULL=1 STRIDE=4000 SWEEP_ARGS="--jobs 4" benches/sweep_scale.sh target/release/expertcast 64

# LSTM training and inference windows/s: our kernels, our network in burn, burn's
# stock nn::Lstm, and PyTorch's nn.LSTM (cuDNN) at the same sizes, in one run (GPU).
bench-lstm: build
	./target/release/expertcast bench --stage lstm --lstm-impl kernel
	./target/release/expertcast bench --stage lstm --lstm-impl burn --lstm-steps 3
	./target/release/expertcast bench --stage lstm --lstm-impl stock --lstm-steps 3
	python3 benches/peers/lstm_torch.py

# LSTM accuracy: train on gpt12-e16-top2-s1, score on gpt12-e16-top2-s2 (stable regime).
bench-lstm-accuracy: build
	benches/lstm_accuracy.sh target/release/expertcast .bench-out/lstm-accuracy

# The default `lstm train` on gpt12-e16-top2-s1 on this machine's CPU (our Rust
# kernels; the issue's bar: 60 s on 2 cores), and burn's CPU backend per step beside it.
bench-lstm-cpu: build
	/usr/bin/time -f "lstm train (defaults, CPU): %e s wall, %M KB peak" ./target/release/expertcast lstm train datasets/gpt12-e16-top2-s1.parquet --device cpu -o .bench-out/lstm-cpu
	./target/release/expertcast bench --stage lstm --device cpu --lstm-impl kernel --lstm-batch 256 --lstm-hidden 32 --lstm-layers 1 --lstm-steps 10 --lstm-infer-batch 4096
	./target/release/expertcast bench --stage lstm --device cpu --lstm-impl burn --lstm-batch 256 --lstm-hidden 32 --lstm-layers 1 --lstm-steps 3 --lstm-infer-batch 4096

# Leave-one-trace-out over the bundled traces: the LSTM (defaults) and the linear
# baseline trained on two, scored on the third (GPU when there is one; pandas).
bench-learned: build
	benches/learned_loto.sh target/release/expertcast .bench-out/loto

bench: bench-peers bench-read bench-run bench-arima-peers

clean:
	rm -rf target .bench-out bench-data
