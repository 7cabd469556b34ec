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

from ..cbuild import build

log = logging.getLogger(__name__)
_SOURCE = Path(__file__).with_name("native") / "gelu.c"
_LOCK = threading.Lock()
_LIB: list = []  # [] not tried yet, [None] unavailable, [lib]
_PARALLEL_MIN = 1 << 17  # elements below which one thread is faster than handing out work
_POOL: list[ThreadPoolExecutor] = []


def _lib():
    with _LOCK:
        if not _LIB:
            try:
                lib = ctypes.CDLL(str(build(_SOURCE)))
                lib.gelu_forward.restype = lib.gelu_backward.restype = None
                _LIB.append(lib)
            except Exception as err:  # no compiler, read-only cache, ...: PyTorch's kernel
                log.warning("Native GELU unavailable, using PyTorch's: %s", err)
                _LIB.append(None)
        return _LIB[0]


def native_gelu_available() -> bool:
    return os.environ.get("R2D3_NATIVE", "1") != "0" and _lib() is not None


def _run(fn, tensors: list[Tensor], n: int) -> None:
    """fn(*pointers, count) over ``n`` elements, split over torch's thread count (ctypes releases the GIL)."""
    threads = min(torch.get_num_threads(), max(1, n // _PARALLEL_MIN))
    if threads == 1:
        fn(*(ctypes.c_void_p(t.data_ptr()) for t in tensors), ctypes.c_int64(n))
        return
    with _LOCK:
        if not _POOL or _POOL[0]._max_workers < threads:
            _POOL[:] = [ThreadPoolExecutor(threads)]
    step = -(-n // threads)
    jobs = [_POOL[0].submit(fn, *(ctypes.c_void_p(t.data_ptr() + 4 * lo) for t in tensors), ctypes.c_int64(min(step, n - lo)))
            for lo in range(0, n, step)]
    for job in jobs:
        job.result()


class _NativeGelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        x = x.contiguous()
        y = torch.empty_like(x)
        _run(_lib().gelu_forward, [x, y], x.numel())
        ctx.save_for_backward(x)
        return y

    @staticmethod
    def backward(ctx, dy):
        (x,) = ctx.saved_tensors
        dy = dy.contiguous()
        dx = torch.empty_like(x)
        _run(_lib().gelu_backward, [x, dy, dx], x.numel())
        return dx


def gelu_tanh(x: Tensor) -> Tensor:
    if x.device.type == "cpu" and x.dtype == torch.float32 and native_gelu_available():
        return _NativeGelu.apply(x)
    return F.gelu(x, approximate="tanh")
