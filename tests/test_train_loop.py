"""The training loop: LR schedule, a tiny end-to-end run, NaN stop, run folder protection, CLI."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
import typer
from train_fixtures import (
    TINY,
    make_annotations,
    one_thread,  # noqa: F401 - autouse fixture: one torch thread
    tiny_run,
    write_jsonl,
)
from typer.testing import CliRunner

from r2.train import RunExistsError, train
from r2.train.checkpoint import load_checkpoint, read_meta
from r2.train.cli import train_command
from r2.train.config import QVHIGHLIGHTS, TVSUM
from r2.train.data import EpochBatchSampler
from r2.train.loop import NonFiniteLossError, learning_rate

FAST = {"device": "cpu", "workers": 0, "preload": "ram", "config": TINY}


def _log(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_schedule_warmup_then_step_drop():
    p = QVHIGHLIGHTS  # lr 5e-4, warm-up 500 iterations from 0.001x, x0.1 from epoch 20
    assert learning_rate(p, 0, 0) == pytest.approx(5e-7)
    assert learning_rate(p, 250, 0) == pytest.approx(5e-4 * (0.001 + 0.999 * 0.5))
    assert learning_rate(p, 499, 0) == pytest.approx(5e-4 * (1 - 0.999 / 500))
    assert learning_rate(p, 500, 1) == 5e-4
    assert learning_rate(p, 10_000, 19) == 5e-4
    assert learning_rate(p, 10_001, 20) == pytest.approx(5e-5)
    assert learning_rate(p, 99_999, 29) == pytest.approx(5e-5)
    lrs = [learning_rate(p, s, 0) for s in range(501)]
    assert (np.diff(lrs) > 0).all()  # rising linearly up to the full LR
    assert np.allclose(np.diff(lrs[:500]), 5e-4 * 0.999 / 500)
    assert learning_rate(TVSUM, 10**6, 499) == 5e-4  # no drop for TVSum


def test_tiny_run_learns_and_writes_a_complete_run_folder(tmp_path):
    data = tiny_run(tmp_path, n_train=8, n_val=4)
    out = tmp_path / "run"
    fast = {**FAST, "config": {**TINY, "dropout": 0.1}}  # 0.5 is too much for 16 channels
    summary = train(data["cache"], data["train"], out, val_anno=data["val"], epochs=10,
                    batch_size=4, lr=2e-3, warmup=4, lr_drop=9, seed=1, **fast)  # fmt: skip
    assert summary["finished"] and summary["epoch"] == 10 and summary["step"] == 10 * 8
    names = {p.name for p in out.iterdir()}
    assert {"best.safetensors", "best.json", "last.safetensors", "last.json",
            "resume.safetensors", "log.jsonl", "train.log"} <= names  # fmt: skip
    assert not [n for n in names if ".tmp" in n]
    log = _log(out)
    train_lines = [r for r in log if r["event"] == "train"]
    first = np.mean([r["loss"] for r in train_lines if r["epoch"] == 1])
    last = np.mean([r["loss"] for r in train_lines if r["epoch"] == 10])
    assert last < 0.7 * first, (first, last)
    # the LR each step used follows the schedule (warm-up 4 steps, x0.1 from epoch 10)
    p = dataclasses.replace(QVHIGHLIGHTS, lr=2e-3, warmup_iters=4, lr_drop_epoch=9)
    for r in train_lines:
        assert r["lr"] == pytest.approx(learning_rate(p, r["step"] - 1, r["epoch"] - 1))
    vals = [r for r in log if r["event"] == "val"]
    assert [r["epoch"] for r in vals] == list(range(1, 11))
    assert summary["best"] > vals[0]["MR-full-mAP"]  # validation improved too
    best = max(vals, key=lambda r: (r["MR-full-mAP"], -r["epoch"]))
    meta = read_meta(out / "best.safetensors")
    assert meta["epoch"] == best["epoch"] == summary["best_epoch"]
    assert meta["metrics"]["MR-full-mAP"] == summary["best"] == best["MR-full-mAP"]
    assert meta["key_metric"] == "MR-full-mAP" and meta["cache_settings"]["k"] == 2
    model, last_meta = load_checkpoint(out / "last.safetensors")
    assert last_meta["epoch"] == 10 and model.cfg.dims == TINY["dims"] and model.cfg.k == 2

    with pytest.raises(RunExistsError, match="--resume"):  # never overwrite a run by accident
        train(data["cache"], data["train"], out, epochs=1, **FAST)
    with pytest.raises(ValueError, match="seed: 1 \\(saved\\) vs 2 \\(now\\)"):
        train(data["cache"], data["train"], out, val_anno=data["val"], epochs=11, batch_size=4,
              lr=2e-3, warmup=4, lr_drop=9, seed=2, resume=True, **fast)  # fmt: skip


def test_nan_loss_stops_with_step_ids_and_last_checkpoint(tmp_path):
    data = tiny_run(tmp_path, n_train=6, n_val=0)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError) as err:  # an absurd LR makes step 2 overflow
        train(data["cache"], data["train"], out, epochs=1, batch_size=2, lr=1e30, warmup=0,
              save_every=1, **FAST)  # fmt: skip
    msg = str(err.value)
    sampler = EpochBatchSampler(6 * 4, 2, seed=0)  # qvhighlights repeats the data 4 times
    qids = [str(i % 6) for _, i in list(sampler)[1]]
    assert "non-finite loss at step 2 (epoch 1, batch 2)" in msg
    assert f"batch qids: {qids}" in msg
    assert f"the last good checkpoint is {out / 'resume.safetensors'}" in msg
    assert "--resume" in msg


def test_cli_trains_and_reports(tmp_path):
    data = tiny_run(tmp_path, n_train=4, n_val=2)
    app = typer.Typer()
    app.command()(train_command)
    args = ["--cache", str(data["cache"]), "--train-anno", str(data["train"]), "--val-anno",
            str(data["val"]), "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size",
            "8", "--device", "cpu", "--workers", "0", "--preload", "none", "--config",
            "dims=16", "--config", "heads=2", "--warmup", "2"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert re.search(r"finished at epoch 1, step 2 in \d+\.\d s; best MR-full-mAP: ", result.output)
    result = CliRunner().invoke(app, args)  # the run exists: clear error, exit code 1
    assert result.exit_code == 2 and "pass --resume" in result.output
    bad = CliRunner().invoke(app, [*args[:-2], "--preload", "disk"])
    assert bad.exit_code != 0 and "--preload" in bad.output
    unknown = CliRunner().invoke(app, [*args, "--config", "nosuch=1", "--out", str(tmp_path / "u")])
    assert unknown.exit_code == 2 and "nosuch: unknown R2Config field" in unknown.output
    missing = write_jsonl(tmp_path / "m.jsonl", make_annotations(3, qid_start=500))
    run2 = ["--train-anno", str(missing), "--out", str(tmp_path / "run2"), "--device", "cpu"]
    result = CliRunner().invoke(app, [*args[:2], *run2])
    assert result.exit_code == 2 and "3 of 3 queries reference videos not in" in result.output


def test_validation_warnings_are_given_once_per_run(tmp_path, caplog):
    data = tiny_run(tmp_path, n_train=4, n_val=2)
    rows = [json.loads(x) for x in data["val"].read_text().splitlines()]
    for r in rows:  # no highlight labels: the evaluator warns at every validation
        del r["relevant_clip_ids"], r["saliency_scores"]
    val = write_jsonl(tmp_path / "val_no_hl.jsonl", rows)
    with caplog.at_level("INFO", logger="r2"):
        train(data["cache"], data["train"], tmp_path / "run", val_anno=val, epochs=3,
              batch_size=8, **FAST)  # fmt: skip
    skipped = [r for r in caplog.records if "HL metrics skipped" in r.getMessage()]
    assert len(skipped) == 1, [r.getMessage() for r in skipped]
    epochs = [r for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert len(epochs) == 3  # per-epoch progress lines are not affected
