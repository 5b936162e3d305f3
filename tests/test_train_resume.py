"""`--resume` after SIGKILL (or --max-steps) ends with the same weights as an uninterrupted run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from safetensors.torch import load_file
from train_fixtures import (
    TINY,
    one_thread,  # noqa: F401 - autouse fixture: one torch thread
    tiny_run,
)

from r2.train import train
from r2.train.checkpoint import read_meta

# The child trains in a fresh process with one torch thread (as the in-process runs here)
# and SIGKILLs itself right after optimizer step `kill_at`: a real kill -9 mid-epoch.
CHILD = textwrap.dedent("""
    import json, os, signal, sys
    import torch
    torch.set_num_threads(1)
    from r2.train import train
    args = json.loads(sys.argv[1])
    kill_at = args.pop("kill_at", None)

    def on_step(step):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

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
