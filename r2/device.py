"""The `--device` option of every command: checked once, with one clear line when unusable."""

from __future__ import annotations

import re

from r2.errors import UsageError

DEVICE_HELP = "auto (CUDA when available) | cpu | cuda | cuda:N"
_NAME = re.compile(r"^(auto|cpu|cuda|mps)(:\d+)?$")


class DeviceError(UsageError, ValueError):
    """A device name that is unknown or not available in this torch build / machine."""


def resolve_device(name: str):
    """`name` as a `torch.device` ("auto": CUDA when available, else CPU).

    Raises:
        DeviceError: an unknown name (e.g. "gpu"), or CUDA/MPS requested where this torch
            build or machine has none, or a GPU index out of range.
    """
    import torch

    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not _NAME.match(text) or text.startswith("auto:"):
        raise DeviceError(f"--device {name}: unknown device; use {DEVICE_HELP}")
    device = torch.device(text)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only torch build" if torch.version.cuda is None else "no usable GPU"
            raise DeviceError(f"--device {name}: CUDA is not available ({build}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(
                f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"--device {name}: MPS is not available here; use --device cpu")
    return device


def available_cores() -> int:
    """CPU cores this process may use: its affinity mask, capped by a cgroup CPU quota."""
    import os
    from pathlib import Path

    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:  # cgroup v2: "max 100000" (no limit) or "200000 100000" (2 cores)
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cores)
