"""Training on two processes (torchrun, gloo on CPU) is single-process training, exactly.

- The same global batches, split between the processes, give the same losses, gradient
  norms, validation metrics and weights as one process (dropout off: each process draws its
  own masks). Observed on this machine (16 steps, 2 epochs): losses and gradient norms
  within 2.2e-7 relative, validation metrics equal, every weight within 5e-7 (bound 1e-6),
  except the attention key biases, whose true gradient is exactly zero (softmax ignores a
  constant added to every key): Adam turns the ±1e-10 of float noise into steps of up to
  the learning rate in both runs alike (1.7e-3 after 16 steps; bound 16 x lr = 8e-3).
- A 2-process run killed with SIGKILL resumes (`torchrun ... r2 train --resume`) to the
  weights of the uninterrupted 2-process run, bit for bit (dropout on: every process's
  generator is in the resume state). Resuming it with one process is refused.
- The last batch of an epoch holds one sample: the second process's share is empty.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import TINY, one_thread, tiny_run  # noqa: F401 - one_thread: autouse

from r2.train import train
from r2.train.checkpoint import read_meta
from r2.train.settings import ResumeMismatchError

dist = pytest.importorskip("torch.distributed")
pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")  # fmt: skip

CHILD = textwrap.dedent("""
    import json, logging, os, signal, sys
    import torch
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO)
    from r2.train import train
    args = json.loads(sys.argv[1])
    kill_at = args.pop("kill_at", None)

    def on_step(step):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    train(**args, on_step=on_step)
""")
# 9 queries x 4 repeats = 36 samples per epoch in batches of 5: 7 batches split 3 + 2 and a
# last batch of 1 (process 1 runs a placeholder); 8 steps per epoch, 16 in all.
EPOCHS, BATCH, N_TRAIN, N_VAL = 2, 5, 9, 3
NO_DROPOUT = {**TINY, "dropout": 0.0, "droppath": 0.0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(tmp_path: Path, argv: list[str]) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node 2` on loopback with a free port."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
           "--monitor-interval", "0.1", *argv]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)


def _child(tmp_path: Path, args: dict) -> subprocess.CompletedProcess:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    return _torchrun(tmp_path, [str(script), json.dumps(args)])


def _args(data: dict, out: Path, config: dict, **extra) -> dict:
    return {"cache": str(data["cache"]), "train_anno": str(data["train"]),
            "val_anno": str(data["val"]), "out": str(out), "device": "cpu", "epochs": EPOCHS,
            "batch_size": BATCH, "warmup": 3, "seed": 7, "workers": 0, "preload": "none",
            "config": config, **extra}  # fmt: skip


def _records(out: Path, event: str) -> list[dict]:
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    return [r for r in rows if r["event"] == event]


def test_two_processes_equal_one_process_on_the_same_global_batches(tmp_path):
    data = tiny_run(tmp_path, n_train=N_TRAIN, n_val=N_VAL)
    one, two = tmp_path / "one", tmp_path / "two"
    train(**_args(data, one, NO_DROPOUT))
    proc = _child(tmp_path, _args(data, two, NO_DROPOUT))
    assert proc.returncode == 0, proc.stderr[-3000:]

    a, b = _records(one, "train"), _records(two, "train")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [8, 10, 16]  # rank 0 logs once
    for x, y in zip(a, b, strict=True):
        for key in ("loss", "loss_cls", "loss_reg", "loss_sal", "loss_video_cal", "grad_norm"):
            assert y[key] == pytest.approx(x[key], rel=1e-5, abs=1e-7), key
        assert (x["world_size"], x["backend"], y["world_size"], y["backend"]) == (
            1, None, 2, "gloo")  # fmt: skip
    for x, y in zip(_records(one, "val"), _records(two, "val"), strict=True):
        assert y["value"] == x["value"]  # sharded validation, gathered in order
    wa, wb = load_file(str(one / "last.safetensors")), load_file(str(two / "last.safetensors"))
    lr = read_meta(one / "last.safetensors")["preset"]["lr"]
    for name in wa:
        diff = float((wa[name] - wb[name]).abs().max())
        bound = EPOCHS * 8 * lr if name.endswith("att.k.bias") else 1e-6
        assert diff <= bound, (name, diff)
    settings = read_meta(two / "last.safetensors")["settings"]
    assert (settings["world_size"], settings["backend"]) == (2, "gloo")
    assert "in 2 processes (gloo)" in (two / "train.log").read_text()


def test_killed_two_process_run_resumes_exactly(tmp_path):
    data = tiny_run(tmp_path, n_train=N_TRAIN, n_val=N_VAL)
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    common = {"save_every": 3}
    proc = _child(tmp_path, _args(data, ref, TINY, **common))
    assert proc.returncode == 0, proc.stderr[-3000:]
    # both processes SIGKILL themselves after step 11 (epoch 2): the state of step 9 remains
    proc = _child(tmp_path, _args(data, cut, TINY, kill_at=11, **common))
    assert proc.returncode != 0
    assert json.loads((cut / "last.json").read_text())["step"] == 8  # epoch 1 finished
    r2 = shutil.which("r2", path=str(Path(sys.executable).parent))
    config = [x for k, v in TINY.items() for x in ("--config", f"{k}={v}")]
    argv = [r2, "train", "--cache", str(data["cache"]), "--train-anno", str(data["train"]),
            "--out", str(cut), "--resume", "--device", "cpu", "--epochs", str(EPOCHS),
            "--batch-size", str(BATCH), "--warmup", "3", "--seed", "7", "--workers", "0",
            "--preload", "none", "--save-every", "3", *config]  # fmt: skip
    proc = _torchrun(tmp_path, argv)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed" in proc.stderr and "step 9" in proc.stderr
    wa, wb = load_file(str(ref / "last.safetensors")), load_file(str(cut / "last.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "samples_per_s"} for r in rows]  # noqa: E731
    assert strip(_records(ref, "train")) == strip(_records(cut, "train"))

    with pytest.raises(ResumeMismatchError, match=r"trained by 2 processes .* a single process"):
        train(**_args(data, cut, TINY, save_every=3, resume=True))


def _launch_two(tmp_path: Path, launcher: str, args: dict) -> list[subprocess.Popen]:
    """Two processes as two 1-process torchrun "nodes" or as srun starts them (its
    variables, no torchrun), rendezvous on loopback."""
    script, port = tmp_path / "child.py", str(_free_port())
    script.write_text(CHILD)
    procs = []
    for rank in range(2):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        if launcher == "nnodes":
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
                   "--nproc_per_node", "1", "--node-rank", str(rank), "--master-addr",
                   "127.0.0.1", "--master-port", port, "--monitor-interval", "0.1"]  # fmt: skip
        else:
            cmd = [sys.executable]
            env.update(SLURM_PROCID=str(rank), SLURM_STEP_NUM_TASKS="2", SLURM_LOCALID=str(rank),
                       SLURM_NTASKS_PER_NODE="2", SLURM_JOB_ID="77", MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=port)  # fmt: skip
        procs.append(subprocess.Popen([*cmd, str(script), json.dumps(args)], cwd=tmp_path,
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))  # fmt: skip
    return procs


@pytest.mark.parametrize("launcher", ["nnodes", "srun"])
def test_two_nodes_and_srun_train_like_one_process(tmp_path, launcher):
    """`torchrun --nnodes 2` (one process per "node", static rendezvous) and srun's
    environment give the single-process weights (bounds as above), with `--preload ram`
    (each process maps the cache file)."""
    data = tiny_run(tmp_path, n_train=N_TRAIN, n_val=N_VAL)
    one, two = tmp_path / "one", tmp_path / "two"
    train(**_args(data, one, NO_DROPOUT, preload="ram"))
    procs = _launch_two(tmp_path, launcher, _args(data, two, NO_DROPOUT, preload="ram"))
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    wa, wb = load_file(str(one / "last.safetensors")), load_file(str(two / "last.safetensors"))
    lr = read_meta(one / "last.safetensors")["preset"]["lr"]
    for name in wa:
        diff = float((wa[name] - wb[name]).abs().max())
        assert diff <= (EPOCHS * 8 * lr if name.endswith("att.k.bias") else 1e-6), (name, diff)
    settings = read_meta(two / "last.safetensors")["settings"]
    assert (settings["world_size"], settings["backend"]) == (2, "gloo")


@pytest.mark.parametrize("world", [2, 3])
def test_shards_are_slices_of_the_single_process_batches(world):
    import r2.train.data as D

    lengths = {i: (5 + i % 7, 2 + i % 3) for i in range(11)}
    one = D.EpochBatchSampler(11, 4, seed=2)
    parts = [D.EpochBatchSampler(11, 4, seed=2, rank=r, world_size=world,
                                 lengths=lengths.__getitem__) for r in range(world)]  # fmt: skip
    for s in (one, *parts):
        s.set_epoch(3, start_batch=1)
    for b, (whole, *shares) in enumerate(zip(one, *parts, strict=True), start=1):
        got, pad = [], (max(lengths[i][0] for _, i in whole), max(lengths[i][1] for _, i in whole))
        for r, keys in enumerate(shares):
            share = parts[r].share(b)
            assert all(k[2] == pad for k in keys)  # padded like the whole batch
            if share.count:
                got += [k[:2] for k in keys]
            else:  # an empty share runs the batch's first sample with weight 0
                assert [k[:2] for k in keys] == whole[:1]
        assert got == whole


def test_every_preset_declares_its_unused_parameters():
    """DDP must search for parameters without gradient exactly when there are some."""
    import dataclasses

    from model_fixtures import batch_of, tiny_config

    from r2.train.config import PRESETS, get_preset
    from r2.train.distributed import has_unused_parameters
    from r2.train.model import R2Model

    ref = tiny_config()
    batch = batch_of([(9, 4), (12, 3), (6, 5)], ref)
    for name in PRESETS:
        base = get_preset(name).model_config(video_dim=ref.video_dim, query_dim=ref.query_dim,
                                             k=ref.k)  # fmt: skip
        for zero in ({}, {"loss_sal_weight": 0, "loss_video_cal_weight": 0,
                          "loss_layer_cal_weight": 0}):  # fmt: skip
            cfg = dataclasses.replace(base, dims=16, heads=2, **zero)
            model = R2Model(cfg).train()
            sum(model.losses(model(batch), batch).values()).backward()
            unused = [n for n, p in model.named_parameters() if p.grad is None]
            assert bool(unused) == has_unused_parameters(cfg), (name, zero, unused)


def test_launcher_environments_are_read():
    from r2.train.distributed import DistributedError, from_env, share_of

    assert from_env({}) is None
    assert from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == (3, 4, 1, "torchrun")
    srun = {"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1"}
    assert from_env(srun) == (5, 8, 1, "srun")
    assert from_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "8"}) is None  # sbatch, not srun
    with pytest.raises(DistributedError, match="malformed"):
        from_env({"RANK": "x", "WORLD_SIZE": "2"})
    shares = [share_of(7, r, 3) for r in range(3)]
    assert [(s.offset, s.count) for s in shares] == [(0, 3), (3, 2), (5, 2)]
    assert share_of(1, 1, 2).count == 0


def test_auto_preload_counts_every_process_of_the_machine(monkeypatch):
    """4 processes on one machine that copy the features each hold a copy: auto fits 4
    copies in RAM (1 when they map the file)."""
    import r2.train.data as D
    from r2.train.distributed import local_processes

    monkeypatch.setattr(D, "available_ram", lambda: 100 * 2**30)
    cpu = torch.device("cpu")
    assert D.resolve_preload("auto", 20 * 2**30, cpu) == "ram"  # 20 GiB <= 50 % of 100
    assert D.resolve_preload("auto", 20 * 2**30, cpu, copies=4) == "none"  # 80 GiB > 50
    assert D.resolve_preload("auto", 10 * 2**30, cpu, copies=4) == "ram"
    torchrun = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4"}
    assert local_processes(torchrun) == 4
    assert local_processes({"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "16",
                            "SLURM_NTASKS_PER_NODE": "8(x2)"}) == 8  # fmt: skip
    assert local_processes({"LOCAL_WORLD_SIZE": "4"}) == 1  # no launcher: one process
    # a RAM preload of all K layers maps the cache file: the machine's processes share it
    from r2.train.run import preload_copies

    monkeypatch.setattr(os, "environ", {**os.environ, **torchrun})
    assert (preload_copies(4, 4), preload_copies(4, 2)) == (1, 4)
