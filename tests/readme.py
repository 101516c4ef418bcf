"""Runs every code block of README.md against real expertcast outputs, so the docs
cannot drift from the behaviour.

usage: readme.py README.md BIN WORKDIR

WORKDIR holds a copy of datasets/ and becomes the working directory, as the README's
repository root. Blocks, in README order:
- ```sh: every command line is run (`expertcast` is BIN, `cargo run --release --` is
  BIN too) and must exit 0, except the lines in NOT_RUN (each with its reason) and
  lines that need a GPU, which on a machine without one must fail with exit 2 and
  say that no GPU is usable;
- ``` (no language) right after the set-up block: the default run's summary, which
  must be in what that run printed, line for line ("  ..." stands for lines left out);
- ```sql: each statement runs in DuckDB; the "best real forecaster" query must give
  one row per horizon;
- ```python: executed (polars), except the PyTorch recording example, which needs
  PyTorch and is only compiled;
- ```toml: must equal datasets/sweep-example.toml byte for byte;
- ```text: a synopsis, not run.
Before the SQL and Python blocks, one more run writes the optional files they read
(`--stats-detail expert`, `--save-forecasts`) on a coarse stride.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

readme, binary, work = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve(), Path(sys.argv[3])
os.chdir(work)

NOT_RUN = {
    "make test": "the test command itself",
    "cargo test --release --test gpu -- --ignored": "the GPU tests, run by hand on a GPU machine",
}

blocks = re.findall(r"^```([a-z]*)\n(.*?)^```$", readme.read_text(), flags=re.S | re.M)
assert len(blocks) >= 8, f"only {len(blocks)} code blocks found"
env = dict(os.environ)
ran, skipped = [], []
default_stdout = None
gpu_present = None


def sh(line):
    """Runs one README command line; returns (exit code, stdout, stderr)."""
    cmd = line.strip()
    if cmd.startswith("export "):
        k, v = cmd[len("export "):].split("=", 1)
        env[k] = os.path.expandvars(v.replace("$LD_LIBRARY_PATH", env.get("LD_LIBRARY_PATH", "")))
        return 0, "", ""
    cmd = re.sub(r"^cargo run --release --", str(binary), cmd)
    cmd = re.sub(r"^expertcast\b", str(binary), cmd)
    p = subprocess.run(cmd, shell=True, env=env, capture_output=True, text=True)
    return p.returncode, p.stdout, p.stderr


def needs_gpu(cmd):
    return "--device cuda" in cmd or re.fullmatch(r"expertcast bench", cmd) is not None


for i, (lang, body) in enumerate(blocks):
    if lang == "sh":
        for line in body.splitlines():
            cmd = line.split("  #", 1)[0].strip()
            if not cmd or cmd.startswith("#"):
                continue
            if cmd in NOT_RUN:
                skipped.append(f"{cmd}: {NOT_RUN[cmd]}")
                continue
            code, out, err = sh(cmd)
            if needs_gpu(cmd) and code != 0:
                # No GPU here: the documented command must say so cleanly.
                assert code == 2 and ("no usable CUDA device" in err or "no GPU is in use" in err), (cmd, code, err)
                skipped.append(f"{cmd}: no GPU here (exit 2, said so)")
                continue
            assert code == 0, f"README command failed ({code}): {cmd}\n{err}"
            if cmd.startswith("cargo run --release -- run"):
                default_stdout = out
            ran.append(f"sh: {cmd}")
    elif lang == "" and default_stdout is not None and "Best forecaster per horizon" in body:
        have = default_stdout.splitlines()
        for line in body.splitlines():
            if line.strip() == "...":
                continue
            assert line in have, f"README's summary line is not in the default run's output:\n{line!r}\n---\n{default_stdout}"
        ran.append("summary of the default run")
    elif lang == "toml":
        want = Path("datasets/sweep-example.toml").read_text()
        assert body == want, "README's sweep config differs from datasets/sweep-example.toml"
        ran.append("toml: datasets/sweep-example.toml")

# The optional files the queries read.
code, out, err = sh("expertcast run --stats-detail expert --save-forecasts --origin-stride 1000 "
                    "--horizon 1 --horizon 10 --horizon 100 --quiet")
assert code == 0, err
assert Path("sweep-out/metrics").is_dir(), "the sweep block should have run before the queries"

import duckdb  # noqa: E402  (after the runs, so a missing package fails with the runs' context)

for lang, body in blocks:
    if lang == "sql":
        text = "\n".join(l for l in body.splitlines() if not l.strip().startswith("--") or l.strip().startswith("-- "))
        for stmt in [s.strip() for s in text.split(";") if s.strip()]:
            lines = [l for l in stmt.splitlines() if not l.strip().startswith("--")]
            q = "\n".join(lines).strip()
            if not q:
                continue
            rows = duckdb.sql(q).fetchall()
            assert rows, f"README query returned nothing:\n{q}"
            if "best real forecaster per horizon" in stmt:
                horizons = [r[0] for r in rows]
                assert len(horizons) == len(set(horizons)), f"one row per horizon expected: {rows}"
                assert all(r[1] != "oracle-median" for r in rows)
            ran.append("sql: " + lines[0][:60])
    elif lang == "python":
        if "import torch" in body or ", torch" in body:
            compile(body, "README (PyTorch recording)", "exec")
            skipped.append("python: the PyTorch recording example (needs PyTorch; compiled only)")
            continue
        exec(compile(body, "README (python)", "exec"), {})
        ran.append("python: " + body.splitlines()[0][:60])

assert default_stdout is not None, "the set-up block's default run was not found"
for r in ran:
    print("ran     ", r)
for s in skipped:
    print("not run ", s)
print(f"readme: {len(ran)} snippets ran, {len(skipped)} not run")
