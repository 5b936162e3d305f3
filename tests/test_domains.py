"""Per-domain runs (`r2 train --domain`, YouTube Highlights / TVSum): domain choice, splits,
resuming a killed `--domain all` run without retraining finished domains."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
from release_fixtures import TINY, make_release
from train_fixtures import one_thread  # noqa: F401 - autouse: one torch thread
from typer.testing import CliRunner

from r2.cli import app
from r2.errors import UsageError

runner = CliRunner()


def import_release(*args, **kwargs):
    from r2.data.release import import_release as run  # new names: imported when called

    return run(*args, **kwargs)


def plan(*args):
    from r2.train.domains import plan as run

    return run(*args)


def resolve_domain(*args):
    from r2.train.domains import resolve_domain as run

    return run(*args)


CONFIG = [x for k, v in TINY.items() for x in ("--config", f"{k}={v}")]


@pytest.fixture
def youtube(tmp_path):
    rel = make_release(tmp_path, "youtube")
    result = import_release(rel.folder, "youtube", tmp_path / "yt.h5", splits=rel.splits)
    return rel, result


def test_domains_by_name_case_or_unique_prefix():
    known = ["dog", "gymnastics", "parkour", "skating", "skiing", "surfing"]
    assert resolve_domain("GYM", known) == "gymnastics"
    assert resolve_domain("ska", known) == "skating" and resolve_domain("Dog", known) == "dog"
    with pytest.raises(UsageError, match=r"unknown domain 'sk'.*dog, gymnastics"):
        resolve_domain("sk", known)  # skating or skiing


def test_lists_pool_both_files_and_jsonl_keeps_their_split(youtube):
    rel, result = youtube
    lists = json.loads(rel.splits.read_text())["youtube_highlights"]
    train, val = result.files["train"], result.files["val"]
    by_lists = plan("youtube", val, train, "lists", rel.splits, "all")  # files swapped: no matter
    for d in ("dog", "gymnastics"):
        assert [r["vid"] for r in by_lists[d]["train"]] == lists[d]["train"]
        assert [r["vid"] for r in by_lists[d]["val"]] == lists[d]["val"]
    by_files = plan("youtube", train, val, "jsonl", None, "gym")
    assert list(by_files) == ["gymnastics"]
    assert [r["vid"] for r in by_files["gymnastics"]["val"]] == lists["gymnastics"]["val"]
    with pytest.raises(UsageError, match=r"no training rows for domain.*dog"):
        plan("youtube", val, None, "lists", rel.splits, "dog")  # only the val videos given


def _train_args(cache, anno, rel, out, epochs):
    return ["train", "--cache", str(cache), "--train-anno", str(anno["train"]), "--val-anno",
            str(anno["val"]), "--preset", "tvsum", "--domain", "all", "--split-lists",
            str(rel.splits), "--out", str(out), "--epochs", str(epochs), "--workers", "0",
            "--device", "cpu", *CONFIG]  # fmt: skip


def test_a_killed_domain_all_run_resumes_where_it_stopped(tmp_path, caplog):
    rel = make_release(tmp_path, "tvsum")
    result = import_release(rel.folder, "tvsum", tmp_path / "tv.h5", splits=rel.splits)
    out, epochs = tmp_path / "runs", 6
    args = _train_args(result.cache, result.files, rel, out, epochs)
    code = "import sys\nfrom r2.cli import app\nsys.argv[0] = 'r2'\napp()\n"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code, *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (out / "VT" / "resume.safetensors").exists():
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    last = lambda d: json.loads((out / d / "last.json").read_text())  # noqa: E731
    assert last("BK")["epoch"] == epochs and last("VT")["epoch"] < epochs
    first = {p.name: p.stat().st_mtime_ns for p in (out / "BK").iterdir()}
    refused = runner.invoke(app, args)
    assert refused.exit_code == 2 and "already holds a per-domain run" in refused.output
    with caplog.at_level(logging.INFO):
        resumed = runner.invoke(app, [*args, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert {p.name: p.stat().st_mtime_ns for p in (out / "BK").iterdir()} == first
    assert "BK: finished earlier" in caplog.text and "not trained again" in caplog.text
    assert "resumed" in (out / "VT" / "train.log").read_text()
    assert last("VT")["epoch"] == epochs
    lines = (out / "VT" / "log.jsonl").read_text().splitlines()
    val_epochs = [json.loads(x)["epoch"] for x in lines if '"val"' in x]
    assert val_epochs == list(range(1, epochs + 1))  # every epoch once: resumed, not restarted
    table = json.loads((out / "table.json").read_text())
    assert [table["domains"][d]["finished"] for d in ("VT", "BK")] == [True, True]
    assert table["domains"]["BK"]["mAP"] == last("BK")["best"]
    scored = runner.invoke(app, ["eval", "--checkpoint", str(out), "--cache", str(result.cache),
                                 "--device", "cpu"])  # fmt: skip
    assert scored.exit_code == 0, scored.output  # each domain's own val.jsonl, own best model
    again = json.loads((out / "eval_val" / "table.json").read_text())
    assert {d: r["mAP"] for d, r in again["domains"].items()} == {
        d: r["mAP"] for d, r in table["domains"].items()
    }


def test_domain_all_under_torchrun_trains_every_domain_once(tmp_path):
    """`torchrun --nproc_per_node 2 r2 train --domain all`: rank 0 alone writes the per-domain
    files (manifest, rows, table); every domain is trained by both processes together."""
    import shutil
    import socket

    rel = make_release(tmp_path, "tvsum")
    result = import_release(rel.folder, "tvsum", tmp_path / "tv.h5", splits=rel.splits)
    out = tmp_path / "runs"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r2 = shutil.which("r2", path=os.path.dirname(sys.executable))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(port), "--monitor-interval",
           "0.1", r2, *_train_args(result.cache, result.files, rel, out, 2)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    except subprocess.TimeoutExpired as err:
        raise AssertionError(f"hung; stderr: {(err.stderr or b'')[-3000:]!r}") from None
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = json.loads((out / "table.json").read_text())
    assert table["domains"] and all(r["finished"] for r in table["domains"].values())
    for d in table["domains"]:
        settings = json.loads((out / d / "last.json").read_text())
        assert settings["epoch"] == 2
        log = (out / d / "train.log").read_text()
        assert "in 2 processes (gloo)" in log and log.count("training ") <= 2, d
