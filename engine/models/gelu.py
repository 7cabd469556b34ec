"""The tanh-approximated GELU of the PixArt feed-forward, with a native CPU kernel.

``gelu_tanh(x)`` equals ``torch.nn.functional.gelu(x, approximate="tanh")`` to float32 rounding (a few
ulp), forward and backward; on float32 CPU tensors it runs ``native/gelu.c`` (built on first use, see
engine.cbuild), several times faster than PyTorch's kernel. Elsewhere, or with ``R2D3_NATIVE=0`` or no
C compiler, it is PyTorch's own.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..cbuild import build, wide_vectors

log = logging.getLogger(__name__)
_SOURCE = Path(__file__).with_name("native") / "gelu.c"
_LOCK = threading.Lock()
_LIB: list = []  # [] not tried yet, [None] unavailable, [lib]
_PARALLEL_MIN = 1 << 17  # elements below which one thread is faster than handing out work
_POOL: dict[int, ThreadPoolExecutor] = {}  # by worker count


def _lib():
    with _LOCK:
        if not _LIB:
            try:
                lib = ctypes.CDLL(str(build(_SOURCE, extra=wide_vectors())))
                lib.gelu_forward.restype = lib.gelu_backward.restype = None
                _LIB.append(lib)
            except Exception as err:  # no compiler, read-only cache, ...: PyTorch's kernel
                log.warning("Native GELU unavailable, using PyTorch's: %s", err)
                _LIB.append(None)
        return _LIB[0]


def native_gelu_available() -> bool:
    return os.environ.get("R2D3_NATIVE", "1") != "0" and _lib() is not None


def _run(fn, tensors: list[Tensor | None], rows: int, cols: int) -> None:
    """fn(*pointers, rows, cols) over row blocks split across torch's thread count (ctypes releases the GIL).
    ``tensors``: [rows, cols] row-major, except the bias (the second, or None), shared by every block."""
    threads = min(torch.get_num_threads(), max(1, rows * cols // _PARALLEL_MIN))
    step = -(-rows // threads)

    def ptrs(lo):
        return [None if t is None else ctypes.c_void_p(t.data_ptr() + (0 if i == 1 else 4 * lo * cols)) for i, t in enumerate(tensors)]

    if threads == 1:
        fn(*ptrs(0), ctypes.c_int64(rows), ctypes.c_int64(cols))
        return
    with _LOCK:
        if threads not in _POOL:
            _POOL[threads] = ThreadPoolExecutor(threads)
        pool = _POOL[threads]
    jobs = [pool.submit(fn, *ptrs(lo), ctypes.c_int64(min(step, rows - lo)), ctypes.c_int64(cols)) for lo in range(0, rows, step)]
    for job in jobs:
        job.result()


class _NativeGelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias):
        x = x.contiguous()
        cols = x.shape[-1]
        b = None if bias is None else bias.detach().contiguous()
        y = torch.empty_like(x)
        _run(_lib().gelu_forward, [x, b, y], x.numel() // cols, cols)
        ctx.save_for_backward(x, b)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, b = ctx.saved_tensors
        dy = dy.contiguous()
        dx = torch.empty_like(x)
        cols = x.shape[-1]
        _run(_lib().gelu_backward, [x, b, dy, dx], x.numel() // cols, cols)
        db = dx.reshape(-1, cols).sum(0) if ctx.needs_input_grad[1] else None
        return dx, db


def gelu_tanh(x: Tensor, bias: Tensor | None = None) -> Tensor:
    """gelu(x + bias, approximate="tanh"), ``bias`` [C] over the last dimension (optional)."""
    if x.device.type == "cpu" and x.dtype == torch.float32 and native_gelu_available() and (bias is None or bias.dtype == x.dtype):
        return _NativeGelu.apply(x, bias)
    return F.gelu(x if bias is None else x + bias, approximate="tanh")
