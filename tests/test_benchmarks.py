"""`make bench`: every benchmark script is run, figures become table rows with their
anchor and ratio, and the GPU benchmark exits cleanly on a machine without CUDA."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def collect(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import collect

    return collect


def test_make_bench_runs_every_benchmark_script(collect):
    listed = {script for script, _, _ in collect.BENCHMARKS}
    scripts = {p.name for p in BENCH.glob("*.py")} - collect.HELPERS
    assert scripts == listed


def test_figures_become_rows_with_anchor_and_ratio(collect, tmp_path, monkeypatch):
    import figures

    records = tmp_path / "r.jsonl"
    monkeypatch.setenv(figures.RECORDS_ENV, str(records))
    figures.report("loader, warm", 50.0, "samples/s", anchor="memcpy", anchor_value=200.0)
    figures.report("step", float("nan"), "s", better="lower")
    rows = [json.loads(x) for x in records.read_text().splitlines()]
    assert rows[0]["ratio"] == 0.25 and rows[1]["value"] is None
    run = {"command": "python benchmarks/x.py", "date": "d", "seconds": 1.0, "code": 0,
           "output": "", "figures": rows}  # fmt: skip
    text = "\n".join(collect.section(run))
    assert "| loader, warm | 50.0 samples/s | memcpy: 200 | 0.25 (higher is better) |" in text
    assert "| step | n/a s |" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_gpu_benchmark_without_cuda_says_so_and_writes_its_table(tmp_path):
    out = tmp_path / "GPU.md"
    cmd = [sys.executable, str(BENCH / "collect.py"), "--only", "gpu.py", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    text = out.read_text()
    assert "no CUDA GPU on this machine" in text and "nothing measured" in text
    for field in ("- date: ", "- commit: ", "- machine: ", "cores", "no GPU"):
        assert field in text, field
