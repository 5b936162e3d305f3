"""Options are parsed strictly: `--config` values typed from R2Config's fields, every bad key
named (all at once), `--device` checked in every command before any work; `--help` shows
examples and defaults; `r2 --version` and `python -m r2` work."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch
from train_fixtures import (
    one_thread,  # noqa: F401 - autouse fixture: one torch thread
    tiny_run,
)
from typer.testing import CliRunner

from r2 import __version__
from r2.cli import app
from r2.train.checkpoint import read_meta
from r2.train.config import R2Config

COMMANDS = ("extract", "train", "eval", "convert", "predict", "demo")


def _run(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("opts"), n_train=4, n_val=2)


def _train_args(data, out, *config):
    args = ["train", "--cache", data["cache"], "--train-anno", data["train"], "--out", out,
            "--epochs", 1, "--batch-size", 8, "--device", "cpu", "--workers", 0,
            "--config", "dims=16", "--config", "heads=2"]  # fmt: skip
    for item in config:
        args += ["--config", item]
    return args


def test_config_values_are_typed_from_r2config(data, tmp_path):
    code, output = _run(*_train_args(data, tmp_path / "a", "padding_invariant=False",
                                     "shared_block=no", "attention_order=self,cross",
                                     "focal_alpha=none", "dropout=0.25"))  # fmt: skip
    assert code == 0, output
    config = read_meta(tmp_path / "a" / "last.safetensors")["config"]
    assert config["padding_invariant"] is False and config["shared_block"] is False
    assert config["attention_order"] == ["self", "cross"] and config["focal_alpha"] is None
    assert config["dropout"] == 0.25


def test_bad_config_values_are_one_line_naming_every_key(data, tmp_path):
    code, output = _run(*_train_args(data, tmp_path / "b", "padding_invariant=maybe",
                                     "dropout=abc", "dims=1.5", "strides=1,x", "nosuch=1",
                                     "novalue"))  # fmt: skip
    assert code == 2, output
    assert "Traceback" not in output and output.count("\n") == 1, output
    for needle in ("padding_invariant: expected a boolean (true/false/1/0/yes/no), got 'maybe'",
                   "dropout: expected a finite number, got 'abc'",
                   "dims: expected an integer, got '1.5'", "strides: expected an integer",
                   "nosuch: unknown R2Config field", "'novalue': expected KEY=VALUE"):  # fmt: skip
        assert needle in output, needle
    assert not (tmp_path / "b").exists()  # refused before anything was written


@pytest.mark.parametrize(
    "word, value",
    [("true", True), ("1", True), ("YES", True), ("false", False), ("0", False), ("No", False)],
)
def test_booleans_accept_exactly_six_words(word, value):
    from r2.fields import parse_assignments

    assert parse_assignments(R2Config, [f"use_tef={word}"]) == {"use_tef": value}


@pytest.mark.parametrize("word", ["maybe", "on", "off", "2", "", "truee"])
def test_other_boolean_words_are_refused(word):
    from r2.fields import parse_assignments

    with pytest.raises(ValueError, match="use_tef: expected a boolean"):
        parse_assignments(R2Config, [f"use_tef={word}"])


def test_the_python_api_refuses_mistyped_config_values():
    from r2.train.config import ConfigError

    with pytest.raises(ConfigError, match="padding_invariant: expected a boolean"):
        R2Config(padding_invariant="False")  # a string would have meant "on"
    with pytest.raises(ConfigError, match="dropout: expected a number"):
        R2Config(dropout="abc")


def _device_args(cmd: str, device: str, tmp_path) -> list:
    video = tmp_path / "v.mp4"
    video.write_bytes(b"\0")
    return {
        "extract": ["extract", video, "--out", tmp_path / "c.h5"],
        "train": [
            "train",
            "--cache",
            tmp_path / "c.h5",
            "--train-anno",
            tmp_path / "t.jsonl",
            "--out",
            tmp_path / "run",
        ],
        "eval": ["eval", "--checkpoint", tmp_path, "--cache", tmp_path / "c.h5", "--anno", video],
        "predict": ["predict", video, "a query", "-c", tmp_path / "run"],
        "demo": ["demo", "--out", tmp_path / "demo"],
        "summarize": ["summarize", video, "--out", tmp_path / "s.mp4"],
        "app": ["app"],
    }[cmd] + ["--device", device]


@pytest.mark.parametrize("cmd", ["extract", "train", "eval", "predict", "demo", "summarize", "app"])
@pytest.mark.parametrize("device", ["gpu", "cuda", "cuda:1", "tpu"])
def test_an_unusable_device_is_one_line_in_every_command(cmd, device, tmp_path):
    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    code, output = _run(*_device_args(cmd, device, tmp_path))
    assert code == 2, output
    lines = [x for x in output.splitlines() if x.startswith("error: ")]
    assert len(lines) == 1 and f"--device {device}: " in lines[0], output
    assert "Traceback" not in output
    assert ("unknown device" in lines[0]) if device in ("gpu", "tpu") else (
        "CUDA is not available" in lines[0])  # fmt: skip
    assert not (tmp_path / "demo").exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_help_has_examples_defaults_and_exit_codes(cmd):
    code, output = _run(cmd, "--help")
    assert code == 0, output
    text = re.sub(r"\s+", " ", output)
    assert "Examples:" in text and f"r2 {cmd} " in text.split("Examples:", 1)[1]
    assert "Exit codes: 0 success" in text
    assert "[default:" in text


def _command_paths(typer_app, prefix=()):
    for command in typer_app.registered_commands:
        yield (*prefix, command.name)
    for group in typer_app.registered_groups:
        yield from _command_paths(group.typer_instance, (*prefix, group.name))


def test_every_registered_command_has_examples():
    paths = list(_command_paths(app))
    assert {(c,) for c in COMMANDS} <= set(paths)
    for path in paths:
        code, output = _run(*path, "--help")
        examples = re.split(r"Examples?:", output)
        assert code == 0 and len(examples) > 1 and "Exit codes:" in output, path
        assert f"r2 {' '.join(path)}" in re.sub(r"\s+", " ", examples[1]), path


def test_version_and_python_dash_m():
    code, output = _run("--version")
    assert code == 0 and output.strip() == f"r2 {__version__}"
    proc = subprocess.run([sys.executable, "-m", "r2", "--version"], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.strip() == f"r2 {__version__}", proc.stderr
    proc = subprocess.run([sys.executable, "-m", "r2", "--help"], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0 and "train" in proc.stdout


def test_worker_defaults_are_capped_by_the_cores(monkeypatch):
    import r2.device
    from r2.extract.options import default_threads
    from r2.extract.run import default_workers as extract_workers
    from r2.extract.workers import decoder_threads
    from r2.train.run import default_workers as train_workers

    # extract: one niced decode worker per core, one decoder thread each, torch on every core
    # (benchmarks/extract.py: 1.03-1.05x the 2-core bound vs 1.06-1.16x for cores - 1 workers)
    # train: 4 reading threads on any machine (they wait on the disk; benchmarks/loader.py)
    for cores, train_n, extract_n in ((1, 4, 1), (2, 4, 2), (3, 4, 3), (64, 4, 8)):
        monkeypatch.setattr(r2.device, "available_cores", lambda c=cores: c)
        assert (train_workers(), extract_workers()) == (train_n, extract_n), cores
        assert default_threads() == cores and decoder_threads(extract_n, cores) >= 1
