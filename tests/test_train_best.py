"""Runs never lose their best: a resumed run keeps validating on the same set, an epoch that
was not validated never replaces best.safetensors, the summary reports the best ON DISK, and
a full disk stops the run with one line, leaving it resumable to the same final weights."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import (
    TINY,
    one_thread,  # noqa: F401 - autouse fixture: one torch thread
    tiny_run,
    write_jsonl,
)
from typer.testing import CliRunner

import r2.train.checkpoint as checkpoint
import r2.train.loop as loop
from r2.cli import app
from r2.errors import RunFailureError, UsageError
from r2.files import TEMP_MARK
from r2.train import train
from r2.train.checkpoint import load_checkpoint, read_meta

EPOCHS = 3  # 8 queries x 4 repeats / batch 4 = 8 steps per epoch


def _args(data, out: Path, **extra) -> dict:
    return {"cache": data["cache"], "train_anno": data["train"], "out": out,
            "val_anno": data["val"], "device": "cpu", "epochs": EPOCHS, "batch_size": 4,
            "warmup": 5, "seed": 7, "workers": 0, "preload": "ram", "config": TINY,
            **extra}  # fmt: skip


def _same(a: Path, b: Path) -> bool:
    x, y = load_file(str(a)), load_file(str(b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def _vals(out: Path) -> list[dict]:
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    return [r for r in rows if r["event"] == "val"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("best"), n_train=8, n_val=3)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    torch.set_num_threads(1)
    return out, train(**_args(data, out))


def test_resume_without_val_anno_keeps_validating_on_the_same_set(data, reference, tmp_path):
    ref, ref_summary = reference
    out = tmp_path / "run"
    first = train(**_args(data, out, max_steps=11))  # stopped in epoch 2
    assert not first["finished"] and first["best_epoch"] == 1
    summary = train(**_args(data, out, val_anno=None, resume=True))  # no --val-anno
    assert [r["epoch"] for r in _vals(out)] == [1, 2, 3]
    assert all(r["value"] is not None for r in _vals(out))  # every epoch validated
    assert _same(ref / "best.safetensors", out / "best.safetensors")
    assert _same(ref / "last.safetensors", out / "last.safetensors")
    assert (summary["best"], summary["best_epoch"]) == (ref_summary["best"],
                                                        ref_summary["best_epoch"])  # fmt: skip
    meta = read_meta(out / "best.safetensors")
    assert meta["epoch"] == summary["best_epoch"]
    assert meta["metrics"]["MR-full-mAP"] == summary["best"]


def test_resume_refuses_another_validation_set(data, tmp_path):
    out = tmp_path / "run"
    train(**_args(data, out, max_steps=3))
    other = write_jsonl(tmp_path / "other.jsonl", json.loads(
        "[" + ",".join(Path(data["val"]).read_text().splitlines()[:2]) + "]"))  # fmt: skip
    with pytest.raises(UsageError, match=r"validation set: 3 queries of .* vs 2 queries"):
        train(**_args(data, out, val_anno=other, resume=True))
    novalid = tmp_path / "noval"
    train(**_args(data, novalid, val_anno=None, max_steps=3))
    with pytest.raises(UsageError, match="validation set: none \\(saved\\)"):
        train(**_args(data, novalid, resume=True))  # a run without validation stays so
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    val_copy = tmp_path / "val_copy.jsonl"
    shutil.copy(data["val"], val_copy)
    s = train(**_args(data, moved, val_anno=val_copy, resume=True))  # same queries: fine
    assert s["finished"]


def test_an_epoch_that_was_not_validated_never_replaces_the_best(data, tmp_path, monkeypatch):
    validate = loop.validate
    calls = []

    def flaky(run):  # epoch 1 scored; epoch 2 gives no key metric; epoch 3 a NaN
        calls.append(run.state.epoch)
        metrics = validate(run)
        if len(calls) == 2:
            return {k: v for k, v in metrics.items() if k != "MR-full-mAP"}
        if len(calls) == 3:
            return {**metrics, "MR-full-mAP": float("nan")}
        return metrics

    monkeypatch.setattr(loop, "validate", flaky)
    out = tmp_path / "run"
    summary = train(**_args(data, out))
    meta = read_meta(out / "best.safetensors")
    assert meta["epoch"] == 1 == summary["best_epoch"]
    assert summary["best"] == meta["metrics"]["MR-full-mAP"] == _vals(out)[0]["value"]
    assert read_meta(out / "last.safetensors")["epoch"] == 3


def test_a_run_without_validation_writes_no_best(data, tmp_path):
    out = tmp_path / "run"
    summary = train(**_args(data, out, val_anno=None, epochs=1))
    assert not (out / "best.safetensors").exists()
    assert summary["best"] is None and summary["best_checkpoint"] is None
    _, meta = load_checkpoint(out)  # the run folder resolves to last.safetensors
    assert meta["epoch"] == 1
    result = CliRunner().invoke(app, [
        "train", "--cache", str(data["cache"]), "--train-anno", str(data["train"]),
        "--out", str(tmp_path / "cli"), "--epochs", "1", "--batch-size", "8", "--device",
        "cpu", "--workers", "0", "--config", "dims=16", "--config", "heads=2"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "best MR-full-mAP: none (no validated epoch; use last.safetensors)" in result.output


def test_the_summary_reports_the_best_on_disk(data, tmp_path):
    out = tmp_path / "run"
    first = train(**_args(data, out, max_steps=9))  # epoch 1 validated: best on disk
    assert first["best_epoch"] == 1
    (out / "best.safetensors").unlink()  # lost (e.g. deleted by hand)
    summary = train(**_args(data, out, resume=True))
    if (out / "best.safetensors").exists():  # a later epoch improved: that one is reported
        meta = read_meta(out / "best.safetensors")
        assert (summary["best"], summary["best_epoch"]) == (
            meta["metrics"]["MR-full-mAP"], meta["epoch"])  # fmt: skip
    else:
        assert summary["best"] is None and summary["best_checkpoint"] is None


# ---------------------------------------------------------------- full disk


def _full_disk(monkeypatch, name: str, nth: int) -> None:
    """The `nth` write of file `name` fails half-way with ENOSPC (a disk filling up)."""
    atomic_write = checkpoint.atomic_write
    calls = {"n": 0}

    @contextlib.contextmanager
    def failing(path, mode="w", encoding="utf-8"):
        with atomic_write(path, mode, encoding) as fh:
            if Path(path).name == name:
                calls["n"] += 1
                if calls["n"] == nth:
                    fh.write(b"\0" * 100)
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            yield fh

    monkeypatch.setattr(checkpoint, "atomic_write", failing)


@pytest.mark.parametrize("name, nth", [("best.safetensors", 2), ("resume.safetensors", 4),
                                       ("last.json", 3)])  # fmt: skip
def test_full_disk_stops_with_one_line_and_resumes_exactly(
    data, reference, tmp_path, monkeypatch, name, nth
):
    ref, _ = reference
    out = tmp_path / "run"
    _full_disk(monkeypatch, name, nth)
    with pytest.raises(RunFailureError, match="No space left on device; the last saved state"):
        train(**_args(data, out, save_every=3))
    monkeypatch.undo()
    assert not [p.name for p in out.iterdir() if TEMP_MARK in p.name]
    for kept in ("best", "last"):
        if (out / f"{kept}.safetensors").exists():
            load_checkpoint(out / f"{kept}.safetensors")
    train(**_args(data, out, save_every=3, resume=True))
    for kept in ("best", "last"):
        assert _same(ref / f"{kept}.safetensors", out / f"{kept}.safetensors"), kept


def test_full_disk_in_the_log_and_on_the_command_line(data, tmp_path, monkeypatch):
    real_write = os.write
    state = {"n": 0}

    def short_write(fd, data_):  # the 3rd log line gets half written: the disk is full
        if len(data_) > 20 and data_.startswith(b'{"event"'):
            state["n"] += 1
            if state["n"] == 3:
                return real_write(fd, data_[: len(data_) // 2])
        return real_write(fd, data_)

    monkeypatch.setattr(os, "write", short_write)  # every writer of the run
    out = tmp_path / "cli"
    result = CliRunner().invoke(app, [
        "train", "--cache", str(data["cache"]), "--train-anno", str(data["train"]),
        "--val-anno", str(data["val"]), "--out", str(out), "--epochs", "2", "--batch-size",
        "4", "--warmup", "5", "--seed", "7", "--device", "cpu", "--workers", "0", "--config",
        "dims=16", "--config", "heads=2"])  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [x for x in result.output.splitlines() if x.startswith("error: ")]
    assert len(errors) == 1 and "log.jsonl: No space left on device" in errors[0]
    assert "continue with --resume" in errors[0]
    monkeypatch.undo()
    s = train(**_args(data, out, epochs=2, batch_size=4, resume=True))
    assert s["finished"]
    for line in (out / "log.jsonl").read_text().splitlines():
        json.loads(line)  # the torn line is gone


# A real full disk: a 320 KiB tmpfs in a private mount namespace (needs root or user
# namespaces; skipped otherwise). The run fills it, stops with one line and exit code 1;
# what it wrote is copied out and resumed on a normal disk to the same final weights.
TMPFS_SCRIPT = textwrap.dedent("""
    set -u
    mount -t tmpfs -o size=320k tmpfs "$OUT" || exit 99
    "$PY" -m r2 train --cache "$CACHE" --train-anno "$TRAIN" --val-anno "$VAL" --out "$OUT/run" \\
        --epochs 3 --batch-size 4 --warmup 5 --seed 7 --workers 0 --preload ram --device cpu \\
        --config dims=16 --config heads=2 --save-every 3 2>"$ERR"
    echo $? > "$RC"
    cp -a "$OUT/run" "$COPY"
""")


def test_real_full_disk_on_a_tiny_tmpfs(data, reference, tmp_path):
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) to make a private tmpfs")
    ref, _ = reference
    env = {**os.environ, "OUT": str(tmp_path / "mnt"), "PY": sys.executable,
           "CACHE": str(data["cache"]), "TRAIN": str(data["train"]), "VAL": str(data["val"]),
           "ERR": str(tmp_path / "err"), "RC": str(tmp_path / "rc"),
           "COPY": str(tmp_path / "copy"), "OMP_NUM_THREADS": "1"}  # fmt: skip
    (tmp_path / "mnt").mkdir()
    proc = subprocess.run(["unshare", "-m", "sh", "-c", TMPFS_SCRIPT], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    if proc.returncode == 99 or not (tmp_path / "rc").exists():
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()[:200]}")
    err = (tmp_path / "err").read_text()
    assert (tmp_path / "rc").read_text().strip() == "1", err
    assert "Traceback" not in err and "Logging error" not in err, err
    errors = [x for x in err.splitlines() if x.startswith("error: ")]
    assert len(errors) == 1 and "No space left on device" in errors[0], err
    copy = tmp_path / "copy"
    assert not [p.name for p in copy.iterdir() if TEMP_MARK in p.name]
    train(**_args(data, copy, save_every=3, resume=True))
    for kept in ("best", "last"):
        assert _same(ref / f"{kept}.safetensors", copy / f"{kept}.safetensors"), kept
