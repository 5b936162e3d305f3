"""`--resume` after SIGKILL (or --max-steps) ends with the same weights as an uninterrupted run.

Kills land between optimizer steps, and inside the writes of checkpoints, of the resume
state and of the log (half a file or half a line written, or a whole temporary file not yet
renamed): best, last and the resume state stay readable, the next run removes the killed
run's temporary files, and the resumed run ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import (
    TINY,
    one_thread,  # noqa: F401 - autouse fixture: one torch thread
    tiny_run,
)

from r2.files import TEMP_MARK
from r2.train import train
from r2.train.checkpoint import load_checkpoint, read_meta

# The child trains in a fresh process with one torch thread (as the in-process runs here)
# and SIGKILLs itself right after optimizer step `kill_at`: a real kill -9 mid-epoch.
CHILD = textwrap.dedent("""
    import contextlib, json, os, signal, sys
    import torch
    torch.set_num_threads(1)
    import r2.train.checkpoint as checkpoint
    import r2.train.loop as loop
    from r2.train import train
    args = json.loads(sys.argv[1])
    kill_at = args.pop("kill_at", None)
    kill_in = args.pop("kill_in", None)  # [file name, nth write of it, "half" | "rename"]
    calls = {}

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def on_step(step):
        if step == kill_at:
            die()

    def hit(name):
        calls[name] = calls.get(name, 0) + 1
        return kill_in is not None and kill_in[0] == name and kill_in[1] == calls[name]

    atomic_write = checkpoint.atomic_write

    @contextlib.contextmanager
    def killing_write(path, mode="w", encoding="utf-8"):
        if not hit(os.path.basename(path)):
            with atomic_write(path, mode, encoding) as fh:
                yield fh
            return
        if kill_in[2] == "rename":  # the whole temporary file written, not yet renamed
            os.replace = lambda *a: die()
            with atomic_write(path, mode, encoding) as fh:
                yield fh
        else:  # half of the temporary file written
            with atomic_write(path, mode, encoding) as fh:
                class Half:
                    def write(self, data):
                        fh.write(data[: len(data) // 2])
                        fh.flush()
                        die()
                yield Half()

    append_log = loop.append_log

    def killing_log(run, record):
        if hit("log.jsonl"):
            line = json.dumps(record) + "\\n"
            with open(run.out / "log.jsonl", "a") as f:
                f.write(line[: len(line) // 2])
            die()
        append_log(run, record)

    checkpoint.atomic_write = killing_write
    loop.append_log = killing_log
    train(**args, on_step=on_step)
""")
EPOCHS, BATCH, N_TRAIN = 3, 4, 8  # 8 queries x 4 repeats / 4 = 8 steps per epoch, 24 in all


def _common(data: dict, out: Path) -> dict:
    paths = {"cache": data["cache"], "train_anno": data["train"], "val_anno": data["val"]}
    return {
        **{k: str(v) for k, v in paths.items()},
        "out": str(out),
        "device": "cpu",
        "epochs": EPOCHS,
        "batch_size": BATCH,
        "warmup": 5,
        "seed": 7,
        "save_every": 3,
        "config": TINY,
    }


def _child(tmp_path: Path, args: dict) -> int:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.run([sys.executable, str(script), json.dumps(args)], capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode in (0, -signal.SIGKILL), proc.stderr[-3000:]
    return proc.returncode


def _weights(out: Path, name: str = "last") -> dict[str, torch.Tensor]:
    return load_file(str(out / f"{name}.safetensors"))


def _resume_step(out: Path) -> int:
    """The optimizer step of the run's resume state (read from its header only)."""
    from safetensors import safe_open

    with safe_open(str(out / "resume.safetensors"), framework="pt") as f:
        return json.loads(f.metadata()["r2_meta"])["info"]["loop"]["step"]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _log(out: Path) -> list[dict]:
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "samples_per_s"} for r in rows]


def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path):
    data = tiny_run(tmp_path, n_train=N_TRAIN, n_val=3)
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    train(**_common(data, ref), workers=0, preload="none")  # uninterrupted, in this process

    # killed at step 14 (epoch 2, batch 6): the last resume state is from step 12 (batch 4)
    args = {**_common(data, cut), "workers": 2, "preload": "none", "kill_at": 14}
    assert _child(tmp_path, args) == -signal.SIGKILL
    assert read_meta(cut / "last.safetensors")["epoch"] == 1  # epoch 1 finished before
    # resumed from RAM-preloaded features without workers: same data order and draws
    assert _child(tmp_path, {**_common(data, cut), "workers": 0, "preload": "ram",
                             "resume": True}) == 0  # fmt: skip

    assert _same(_weights(ref), _weights(cut))
    assert _same(_weights(ref, "best"), _weights(cut, "best"))
    assert _same(_weights(ref, "resume"), _weights(cut, "resume"))  # optimizer + RNG too
    assert _log(ref) == _log(cut)  # the log was trimmed to the resume point, no duplicates
    assert not [p.name for p in cut.iterdir() if ".tmp" in p.name]


# (file, nth write of it, how): the best checkpoint of epoch 2 half written; the resume
# state of step 9 written but not renamed; the last checkpoint of epoch 3 half written; a
# log line of epoch 2 half written
KILLS = [("best.safetensors", 2, "half"), ("resume.safetensors", 3, "rename"),
         ("last.safetensors", 3, "half"), ("log.jsonl", 4, "half")]  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run (in this process) and its data."""
    tmp = tmp_path_factory.mktemp("ref")
    data = tiny_run(tmp, n_train=N_TRAIN, n_val=3)
    torch.set_num_threads(1)
    train(**_common(data, tmp / "ref"), workers=0, preload="none")
    return data, tmp / "ref"


@pytest.mark.parametrize("kill_in", KILLS, ids=["-".join(map(str, k)) for k in KILLS])
def test_kill_inside_checkpoint_and_log_writes_then_resume(reference, tmp_path, kill_in):
    data, ref = reference
    cut = tmp_path / "cut"
    args = {**_common(data, cut), "workers": 0, "preload": "none", "kill_in": list(kill_in)}
    assert _child(tmp_path, args) == -signal.SIGKILL
    debris = [p.name for p in cut.iterdir() if TEMP_MARK in p.name]
    assert debris or kill_in[0] == "log.jsonl"  # the killed write left its temporary file
    for name in ("best", "last"):  # whatever exists is whole and loads
        if (cut / f"{name}.safetensors").exists():
            load_checkpoint(cut / f"{name}.safetensors")
    assert _resume_step(cut) > 0

    train(**_common(data, cut), workers=0, preload="none", resume=True)
    for name in ("last", "best", "resume"):
        assert _same(_weights(ref, name), _weights(cut, name)), name
    assert _log(ref) == _log(cut)  # torn and replayed lines dropped, none duplicated
    assert not [p.name for p in cut.iterdir() if ".tmp" in p.name]  # debris removed


# `r2 train` as a user runs it; Ctrl-C in a terminal sends SIGINT to the whole process group
# (the trainer and its data-loader workers), here during optimizer step `at`.
CTRL_C_CHILD = textwrap.dedent("""
    import json, os, signal, sys
    import torch
    torch.set_num_threads(1)
    import r2.train.loop as loop
    from r2.cli import app
    args, at = json.loads(sys.argv[1]), int(sys.argv[2])
    calls = [0]
    train_step = loop.train_step

    def step(run, batch):
        calls[0] += 1
        if calls[0] == at:
            os.killpg(os.getpgid(0), signal.SIGINT)
        return train_step(run, batch)

    loop.train_step = step
    app(args, prog_name="r2")
""")


def test_ctrl_c_with_workers_stops_promptly_and_resumes_exactly(reference, tmp_path):
    data, ref = reference
    out = tmp_path / "run"
    args = ["train", "--cache", data["cache"], "--train-anno", data["train"], "--val-anno",
            data["val"], "--out", out, "--epochs", EPOCHS, "--batch-size", BATCH, "--warmup", 5,
            "--seed", 7, "--save-every", 3, "--workers", 2, "--preload", "none", "--device",
            "cpu", "--config", "dims=16", "--config", "heads=2"]  # fmt: skip
    script = tmp_path / "ctrl_c.py"
    script.write_text(CTRL_C_CHILD)
    proc = subprocess.Popen([sys.executable, str(script), json.dumps([str(a) for a in args]), "14"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    assert f"interrupted; the last saved state is in {out} (continue with --resume)" in err
    deadline = time.monotonic() + 10  # no worker left behind (exiting ones get 10 s)
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("processes of the interrupted run are still alive")
    assert _resume_step(out) == 12
    train(**_common(data, out), workers=0, preload="none", resume=True)
    for name in ("last", "best", "resume"):
        assert _same(_weights(ref, name), _weights(out, name)), name


def test_max_steps_then_resume_equals_uninterrupted_run(tmp_path):
    data = tiny_run(tmp_path, n_train=N_TRAIN, n_val=0)
    common = {**_common(data, tmp_path / "x"), "val_anno": None, "workers": 0,
              "preload": "ram", "save_every": 0}  # fmt: skip
    ref = train(**{**common, "out": tmp_path / "ref"})
    out = tmp_path / "stopped"
    first = train(**{**common, "out": out, "max_steps": 11})  # mid-epoch 2, no step save
    assert not first["finished"] and first["step"] == 11
    second = train(**{**common, "out": out, "resume": True})
    assert second["finished"] and second["step"] == ref["step"] == EPOCHS * 8
    assert _same(_weights(tmp_path / "ref"), _weights(out))
