"""`make bench`: run every benchmark and write the table, benchmarks/README.md.

Each benchmark runs as its own process (the command shown in the table), one after the
other, each under an exclusive `flock` of the shared CPU lock when --lock is given (other
people's work interleaves between benchmarks, none runs beside one). Figures reported
through `figures.report` (value, anchor measured in the same run, ratio) become table
rows; a script that only prints has its output kept verbatim under its command. A script
that fails is reported with its last lines and the others still run (the exit status
counts the failures).

    python benchmarks/collect.py [--quick] [--only loader.py,gpu.py] [--out FILE]
                                 [--lock /tmp/r2-cpu.lock]

--quick (= BENCH_QUICK=1) runs smaller sizes; its figures are marked quick.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from figures import QUICK_ENV, RECORDS_ENV, _fmt  # noqa: E402

# (script, arguments, arguments in quick mode): every benchmark of this folder
BENCHMARKS: list[tuple[str, list[str], list[str]]] = [
    ("loader.py", ["--videos", "300"], ["--videos", "100"]),  # 300: the 6.9 GB
    ("train.py", [], ["--rounds", "1", "--threads", "2"]),
    ("clip_precision.py", ["--skip-predictions"], ["--skip-predictions"]),
    ("train_data.py", [], ["--videos", "8"]),
    ("cache.py", [], ["--videos", "4"]),
    ("cache.py", ["--merge", "40"], ["--merge", "8"]),
    ("eval.py", [], ["--repeats", "1"]),
    ("anno_limits.py", [], []),
    ("decode.py", [], ["--seconds", "30", "--repeats", "1"]),
    ("extract.py", [], ["--videos", "1", "--gop", "short"]),
    ("extract.py", ["--memory"], ["--memory", "0.5", "2.5"]),
    ("long_video.py", ["model"], ["model", "--minutes", "15"]),
    ("long_video.py", ["extract"], ["extract", "--minutes", "15"]),
    ("app.py", ["latency"], ["latency", "--repeat", "2"]),
    ("app.py", ["batch"], ["batch", "--videos", "2", "--seconds", "30"]),
    ("demo_data.py", [], ["--n-videos", "20"]),
    ("import_release.py", [], ["--videos", "8", "--queries", "80"]),
    ("gpu.py", [], []),
]
HELPERS = {"figures.py", "collect.py", "original_block.py"}  # not benchmarks themselves
TAIL_LINES = 15  # output lines kept for a failed script
TIMEOUT_S = 3600  # one benchmark longer than this is stopped and reported as failed


def machine() -> str:
    """Cores, CPU model, RAM, GPU (or none), torch version: one line."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        ram = int(Path("/proc/meminfo").read_text().split()[1]) / 1024**2
    except (OSError, IndexError, ValueError):
        ram = float("nan")
    try:
        import torch

        gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
        tv = f"torch {torch.__version__}"
    except ImportError:  # pragma: no cover - torch is a dependency
        gpu, tv = "GPU unknown", "no torch"
    return f"{os.cpu_count()} cores ({cpu}), {ram:.0f} GiB RAM, {gpu}, {tv}"


def commit(out: Path) -> str:
    """HEAD, flagged when files other than the table itself differ from it."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout

    head = git("rev-parse", "--short=12", "HEAD").strip() or "unknown"
    table = out.resolve()
    table = str(table.relative_to(REPO)) if table.is_relative_to(REPO) else None
    changed = [line for line in git("status", "--porcelain").splitlines() if line[3:] != table]
    return head + (" (with uncommitted changes)" if changed else "")


@contextlib.contextmanager
def _locked(path: str | None):
    """An exclusive flock of `path` while the benchmark runs (waiting is not timed)."""
    if path is None:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_one(script: str, args: list[str], quick: bool, lock: str | None) -> dict:
    """Run one benchmark; its figures, output, duration and status."""
    with tempfile.NamedTemporaryFile("r", suffix=".jsonl") as records, _locked(lock):
        env = {**os.environ, RECORDS_ENV: records.name, QUICK_ENV: "1" if quick else "0"}
        shown = ["python", f"benchmarks/{script}", *args]
        cmd = [sys.executable, str(HERE / script), *args]
        began, t0 = datetime.datetime.now(datetime.UTC), time.perf_counter()
        print(f"== {shlex.join(shown)}", flush=True)
        try:
            done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                                  timeout=TIMEOUT_S)  # fmt: skip
            output, code = done.stdout + done.stderr, done.returncode
        except subprocess.TimeoutExpired as err:
            output, code = f"{err.stdout or ''}\nstopped after {TIMEOUT_S} s", -1
        print(output, flush=True)
        figures = [json.loads(line) for line in records.read().splitlines() if line.strip()]
    return {"command": ("BENCH_QUICK=1 " if quick else "") + shlex.join(shown),
            "date": began.strftime("%Y-%m-%d %H:%M UTC"), "seconds": time.perf_counter() - t0,
            "code": code, "output": output, "figures": figures}  # fmt: skip


def section(r: dict) -> list[str]:
    """The README lines of one benchmark run."""
    status = "ok" if r["code"] == 0 else f"FAILED (exit {r['code']})"
    lines = [f"### `{r['command']}`", "",
             f"{r['date']}, {r['seconds']:.0f} s, {status}", ""]  # fmt: skip
    if r["figures"]:
        lines += ["| figure | value | anchor (same run) | ratio | note |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for f in r["figures"]:
            anchor = "" if f["anchor"] is None else f"{f['anchor']}: {_fmt(f['anchor_value'])}"
            ratio = "" if f["ratio"] is None else f"{_fmt(f['ratio'])} ({f['better']} is better)"
            lines.append(f"| {f['figure']} | {_fmt(f['value'])} {f['unit']} | {anchor} | "
                         f"{ratio} | {f['note']} |")  # fmt: skip
        lines.append("")
    if not r["figures"] or r["code"] != 0:
        out = r["output"].strip().splitlines()
        if r["code"] != 0:
            out = out[-TAIL_LINES:]
        lines += ["```", *[x.rstrip() for x in out if "\r" not in x], "```", ""]
    return lines


def write_readme(out: Path, runs: list[dict], quick: bool, started: str, revision: str) -> None:
    head = [
        "# Benchmarks", "",
        "Written by `make bench` (`python benchmarks/collect.py`"
        + (" --quick" if quick else "") + "); do not edit by hand.", "",
        f"- date: {started}", f"- commit: {revision}", f"- machine: {machine()}",
        f"- mode: {'quick (smaller sizes, BENCH_QUICK=1)' if quick else 'full'}", "",
        "Every ratio compares a figure with its anchor (the original implementation's layout "
        "or the physical limit) measured in the same run. Scripts that print their own "
        "comparison have their output shown as printed.", "",
    ]  # fmt: skip
    body = [line for r in runs for line in section(r)]
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("\n".join(head + body).rstrip() + "\n", encoding="utf-8")
    os.replace(tmp, out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (BENCH_QUICK=1)")
    ap.add_argument("--only", default="", help="comma-separated script names")
    ap.add_argument("--out", type=Path, default=HERE / "README.md")
    ap.add_argument("--lock", default=None, help="flock -x this file around each benchmark")
    args = ap.parse_args()
    quick = args.quick or os.environ.get(QUICK_ENV, "") not in ("", "0")
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    listed = {s for s, _, _ in BENCHMARKS}
    missing = sorted(p.name for p in HERE.glob("*.py") if p.name not in listed | HELPERS)
    if missing:
        print(f"warning: not in collect.BENCHMARKS (not run): {', '.join(missing)}")
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    revision = commit(args.out)  # the code measured: as it was when the run started
    runs: list[dict] = []
    for script, full_args, quick_args in BENCHMARKS:
        if not only or script in only:
            runs.append(run_one(script, quick_args if quick else full_args, quick, args.lock))
            write_readme(args.out, runs, quick, started, revision)  # after each: none lost
    failed = [r["command"] for r in runs if r["code"] != 0]
    print(f"wrote {args.out}: {len(runs)} benchmarks, {len(failed)} failed"
          + (f" ({'; '.join(failed)})" if failed else ""))  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
