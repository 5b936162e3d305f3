"""Matrix products of the training hot paths, and the compute dtype under autocast.

On CPU, `torch.addmm`/`mm` in float32 go to the BLAS library's sgemm. On CPUs where MKL
does not pick its AVX-512 kernels (AMD Zen: this project's machines) that runs at ~100
GF/s per core, while oneDNN's float32 kernels reach ~230 GF/s and its bfloat16 kernels
~420 GF/s on the same core (benchmarks/train.py prints the resulting step times). `linear`
routes a product through oneDNN (`torch.ops.mkldnn._linear_pointwise`, the kernel
`torch.compile` uses for CPU linears) when it can and through `F.linear` otherwise: same
IEEE float32 arithmetic (fp32 accumulation, no reduced-precision shortcut), only the
summation order differs.

These functions record no autograd graph of their own: they are called from the forward
and backward of the custom autograd functions in fused.py and pooling.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
_BF16_NATIVE = _ONEDNN and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
use_onednn = True
"""Route CPU products through oneDNN when available (False: torch's default path; tests
and benchmarks switch it to compare)."""


def _onednn_ok(x: Tensor, w: Tensor) -> bool:
    if not (use_onednn and _ONEDNN and x.device.type == "cpu" and x.dtype == w.dtype):
        return False
    if x.dtype == torch.bfloat16:
        return _BF16_NATIVE
    return x.dtype == torch.float32 and x.numel() > 0 and w.numel() > 0


def linear(x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    """x (..., K) · w (N, K)ᵀ + b (N,), in x's dtype (x, w, b of one dtype).

    Any strides (a transposed view costs no copy). oneDNN on CPU when available, else
    `F.linear`.
    """
    if _onednn_ok(x, w):
        return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
    return F.linear(x, w, b)


def mm_tn(a: Tensor, b: Tensor) -> Tensor:
    """aᵀ · b for a (n, M), b (n, N) → (M, N): the weight-gradient product, summed over the
    n rows. `a` is transposed into a contiguous copy (it is the narrow one: the output
    gradients), `b` is read through a transposed view."""
    return linear(a.t().contiguous(), b.t())


def autocast_dtype(device_type: str) -> torch.dtype:
    """The dtype matrix products run in here: autocast's lower precision dtype when
    autocast is on for `device_type`, float32 otherwise."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return torch.float32
