"""Every failure is one line, every output is whole: `r2 train --out` and `r2 eval --out` are
checked writable BEFORE the work, outputs get the umask's permissions, `--out` is a folder in
both `r2 eval` modes, and only expected failures lose their traceback (bugs keep it).

Read-only folders: the tests run as root, for whom chmod does not make a folder read-only.
They mount a read-only tmpfs in a private mount namespace (`unshare -m`, skipped where that
is not permitted) and, everywhere, simulate the refusal by making file creation raise EROFS.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_fixtures import (
    SETTINGS,
    TINY,
    one_thread,  # noqa: F401 - autouse fixture: one torch thread
    tiny_run,
)
from typer.testing import CliRunner

from r2.cli import app
from r2.train.checkpoint import build_meta, save_checkpoint
from r2.train.config import QVHIGHLIGHTS
from r2.train.model import R2Model


def _run(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    data = tiny_run(root, n_train=4, n_val=3)
    torch.manual_seed(0)
    cfg = QVHIGHLIGHTS.model_config(video_dim=SETTINGS.video_dim, query_dim=SETTINGS.text_dim,
                                    k=SETTINGS.k, **TINY)  # fmt: skip
    save_checkpoint(root / "run" / "best", R2Model(cfg), build_meta(cfg, QVHIGHLIGHTS, SETTINGS))
    preds = root / "preds.jsonl"
    rows = [json.loads(x) for x in Path(data["val"]).read_text().splitlines()]
    preds.write_text("".join(json.dumps({"qid": r["qid"], "pred_relevant_windows":
                                         [[0, 4, 1.0]]}) + "\n" for r in rows))  # fmt: skip
    return {**data, "run": root / "run", "preds": preds}


def _modes(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_eval_outputs_get_the_umask_permissions(setup, tmp_path, umask):
    old = os.umask(umask)
    try:
        r1 = _run("eval", "--pred", setup["preds"], "--gt", setup["val"], "--out", tmp_path / "a")
        r2 = _run("eval", "--checkpoint", setup["run"], "--cache", setup["cache"], "--anno",
                  setup["val"], "--out", tmp_path / "b", "--device", "cpu")  # fmt: skip
    finally:
        os.umask(old)
    assert r1.exit_code == 0 and r2.exit_code == 0, r1.output + r2.output
    for path in (tmp_path / "a" / "metrics.json", tmp_path / "b" / "metrics.json",
                 tmp_path / "b" / "predictions.jsonl"):  # fmt: skip
        assert _modes(path) == 0o666 & ~umask, (path, oct(_modes(path)))
    assert not [p for p in (tmp_path / "b").iterdir() if p.name.startswith(".")]


def test_eval_out_is_a_folder_in_both_modes(setup, tmp_path):
    result = _run("eval", "--pred", setup["preds"], "--gt", setup["val"], "--out", tmp_path / "d")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "d" / "metrics.json").read_text())["n_queries"] == 3
    legacy = tmp_path / "m.json"  # the older form: a path ending in .json is the file itself
    assert _run("eval", "--pred", setup["preds"], "--gt", setup["val"], "--out", legacy
                ).exit_code == 0  # fmt: skip
    assert json.loads(legacy.read_text())["n_queries"] == 3
    result = _run("eval", "--checkpoint", setup["run"], "--cache", setup["cache"], "--anno",
                  setup["val"], "--out", tmp_path / "x.json", "--device", "cpu")  # fmt: skip
    assert result.exit_code == 2 and "with --checkpoint, --out is a folder" in result.output
    afile = tmp_path / "afile"
    afile.write_text("")
    result = _run("eval", "--checkpoint", setup["run"], "--cache", setup["cache"], "--anno",
                  setup["val"], "--out", afile, "--device", "cpu")  # fmt: skip
    assert result.exit_code == 2 and "is a file; the output folder" in result.output


def _eval_cmds(setup, out: Path) -> list[list]:
    return [
        ["eval", "--pred", setup["preds"], "--gt", setup["val"], "--out", out],
        [
            "eval",
            "--checkpoint",
            setup["run"],
            "--cache",
            setup["cache"],
            "--anno",
            setup["val"],
            "--out",
            out,
            "--device",
            "cpu",
        ],
        [
            "train",
            "--cache",
            setup["cache"],
            "--train-anno",
            setup["train"],
            "--out",
            out,
            "--device",
            "cpu",
            "--workers",
            0,
            "--epochs",
            1,
            "--config",
            "dims=16",
            "--config",
            "heads=2",
        ],
    ]


def test_read_only_outputs_fail_first_in_one_line_simulated(setup, tmp_path, monkeypatch):
    import r2.files

    def refuse(self, *args, **kwargs):  # creating any file under `ro` fails like a RO mount
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(r2.files.Path, "touch", refuse)
    work = []
    monkeypatch.setattr("r2.evaluate.evaluate", lambda *a, **k: work.append(a))
    monkeypatch.setattr("r2.evaluate.split.evaluate_checkpoint", lambda *a, **k: work.append(a))
    monkeypatch.setattr("r2.cache.FeatureCache", lambda *a, **k: work.append(a))
    for cmd in _eval_cmds(setup, tmp_path / "ro" / "out"):
        result = _run(*cmd)
        assert result.exit_code == 2, (cmd[0], result.output)
        errors = [x for x in result.output.splitlines() if x.startswith("error: ")]
        assert len(errors) == 1 and "Read-only file system" in errors[0], result.output
        assert "cannot write the" in errors[0] and "Traceback" not in result.output
    assert work == []  # refused before any work started


def test_read_only_outputs_fail_first_on_a_read_only_mount(setup, tmp_path):
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) to mount a read-only tmpfs")
    ro = tmp_path / "ro"
    ro.mkdir()
    script = 'mount -t tmpfs -o ro,size=64k tmpfs "$RO" || exit 99; exec "$@"'
    for cmd in _eval_cmds(setup, ro / "out"):
        argv = ["unshare", "-m", "sh", "-c", script, "sh", sys.executable, "-m", "r2",
                *map(str, cmd)]  # fmt: skip
        proc = subprocess.run(argv, env={**os.environ, "RO": str(ro)}, capture_output=True,
                              text=True, timeout=120)  # fmt: skip
        if proc.returncode == 99 or "unshare:" in proc.stderr:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()[:200]}")
        assert proc.returncode == 2, (cmd[0], proc.stderr)
        errors = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
        assert len(errors) == 1 and "Read-only file system" in errors[0], proc.stderr
        assert "Traceback" not in proc.stderr
        assert "predicting" not in proc.stderr and "training" not in proc.stderr


def test_real_bugs_keep_their_traceback(setup, tmp_path, monkeypatch):
    def bug(*args, **kwargs):
        raise ValueError("an internal bug")

    monkeypatch.setattr("r2.train.train", bug)
    monkeypatch.setattr("r2.evaluate.split.evaluate_checkpoint", bug)
    monkeypatch.setattr("r2.train.convert.convert_checkpoint", bug)
    cmds = [*_eval_cmds(setup, tmp_path / "o")[1:], ["convert", setup["preds"], tmp_path / "c"]]
    for cmd in cmds:
        result = _run(*cmd)
        assert result.exit_code == 1 and isinstance(result.exception, ValueError), (
            cmd[0], result.output)  # fmt: skip


def test_full_disk_while_writing_outputs_is_one_line(setup, tmp_path, monkeypatch):
    import r2.files

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(r2.files.os, "fsync", full)
    for cmd in _eval_cmds(setup, tmp_path / "full")[:2]:
        result = _run(*cmd)
        assert result.exit_code == 1, result.output
        assert "No space left on device" in result.output and "Traceback" not in result.output
        assert not [p for p in (tmp_path / "full").iterdir() if p.name.startswith(".")]


def test_full_disk_in_convert_is_one_line(testdata, tmp_path, monkeypatch):
    import r2.files

    monkeypatch.setattr(r2.files.os, "fsync", lambda fd: (_ for _ in ()).throw(
        OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))))  # fmt: skip
    src = testdata / "reference" / "weights.safetensors"
    result = _run("convert", src, tmp_path / "out" / "r2.safetensors")
    assert result.exit_code == 1 and "No space left on device" in result.output, result.output
    assert "Traceback" not in result.output and not list((tmp_path / "out").iterdir())


def test_a_folder_where_a_file_is_expected(setup, tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    base = ["train", "--cache", setup["cache"], "--train-anno", setup["train"], "--out",
            tmp_path / "run", "--device", "cpu", "--workers", 0]  # fmt: skip
    for option, needle in (("--cache", "is a directory, not a cache file"),
                           ("--train-anno", "is a folder"),
                           ("--val-anno", "is a folder")):  # fmt: skip
        args = list(base)
        if option in args:
            args[args.index(option) + 1] = folder
        else:
            args += [option, folder]
        result = _run(*args)
        assert result.exit_code == 2, (option, result.output)
        errors = [x for x in result.output.splitlines() if x.startswith("error: ")]
        assert len(errors) == 1 and str(folder) in errors[0] and needle in errors[0], result.output
