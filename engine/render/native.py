"""Native CPU compositing core: builds ``native/rasterize.c`` on first use and calls it through ctypes.

The C kernel is compiled with the system C compiler into a per-user cache (keyed by the source, the
flags and the CPU), once for float32 and once for float64. When no compiler is available the
renderer falls back to the pure-PyTorch core (``torch_core.py``), which computes the same images.
Set ``R2D3_NATIVE=0`` to disable this core.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from pathlib import Path

import torch
from torch import Tensor

from ..cbuild import build, wide_vectors
from .projection import TileBins

logger = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("native") / "rasterize.c"
_LOCK = threading.Lock()
_LIBS: dict[torch.dtype, ctypes.CDLL | None] = {}
_FAILED: list[str] = []


def _load(dtype: torch.dtype) -> ctypes.CDLL | None:
    with _LOCK:
        if dtype not in _LIBS:
            scalar = {torch.float32: "float", torch.float64: "double"}[dtype]
            try:
                lib = ctypes.CDLL(str(build(_SOURCE, (f"SCALAR={scalar}",), wide_vectors())))
                for fn in (lib.rasterize_forward, lib.rasterize_backward):
                    fn.restype = None
                lib.bin_fill.restype = ctypes.c_int
                _LIBS[dtype] = lib
            except Exception as err:  # no compiler, sandboxed /tmp, ...: fall back to pure PyTorch
                _FAILED.append(str(err))
                logger.warning("Native CPU renderer unavailable, using the pure-PyTorch core: %s", err)
                _LIBS[dtype] = None
        return _LIBS[dtype]


def native_available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether the native core can run tensors of ``dtype`` (builds it on first call)."""
    if os.environ.get("R2D3_NATIVE", "1") == "0" or dtype not in (torch.float32, torch.float64):
        return False
    return _load(dtype) is not None


def build_error() -> str | None:
    return _FAILED[-1] if _FAILED else None


def _ptr(t: Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def _geometry(bins: TileBins, C: int, N: int, H: int, W: int, F: int) -> list:
    return [ctypes.c_int(v) for v in (C, N, H, W, bins.tile_size, bins.tiles_x, bins.tiles_y, F)]


class _NativeComposite(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, opacities, features, background, bins: TileBins, width: int, height: int):
        C, N, F = features.shape
        lib = _load(features.dtype)
        args = [t.detach().contiguous() for t in (means2d, conics, opacities, features, background)]
        out_feat = torch.empty(C, height, width, F, dtype=features.dtype)
        out_T = torch.empty(C, height, width, dtype=features.dtype)
        out_last = torch.empty(C, height, width, dtype=torch.int32)
        lib.rasterize_forward(
            *_geometry(bins, C, N, height, width, F), *map(_ptr, args), _ptr(bins.offsets), _ptr(bins.flat_ids),
            _ptr(out_feat), _ptr(out_T), _ptr(out_last), ctypes.c_int(torch.get_num_threads()),
        )
        ctx.save_for_backward(*args, out_T, out_last)
        ctx.bins, ctx.size = bins, (width, height)
        return out_feat, 1 - out_T

    @staticmethod
    def backward(ctx, v_feat, v_alpha):
        means2d, conics, opacities, features, background, out_T, out_last = ctx.saved_tensors
        (width, height), bins = ctx.size, ctx.bins
        C, N, F = features.shape
        lib = _load(features.dtype)
        v_feat = torch.zeros_like(out_T[..., None].expand(-1, -1, -1, F)) if v_feat is None else v_feat.contiguous()
        # alpha = 1 - T, so dL/dT = -dL/dalpha; the kernel takes dL/dalpha.
        v_alpha = torch.zeros_like(out_T) if v_alpha is None else v_alpha.contiguous()
        grad = torch.zeros(C, N, 6 + F, dtype=features.dtype)
        lib.rasterize_backward(
            *_geometry(bins, C, N, height, width, F),
            *map(_ptr, (means2d, conics, opacities, features, background)), _ptr(bins.offsets), _ptr(bins.flat_ids),
            _ptr(out_T), _ptr(out_last), _ptr(v_feat), _ptr(v_alpha), _ptr(grad), ctypes.c_int(torch.get_num_threads()),
        )
        v_bg = (v_feat * out_T[..., None]).sum(dim=(1, 2))  # [C, F]
        return grad[..., 0:2], grad[..., 2:5], grad[..., 5], grad[..., 6:], v_bg, None, None, None


def bin_fill(C: int, N: int, TX: int, TY: int, order: Tensor, rect: Tensor, offsets: Tensor, flat_ids: Tensor) -> None:
    """Fill ``flat_ids`` with each tile's Gaussians front to back (counting sort, see rasterize.c)."""
    lib = _load(torch.float32)
    if lib.bin_fill(*(ctypes.c_int(v) for v in (C, N, TX, TY)), _ptr(order), _ptr(rect), _ptr(offsets), _ptr(flat_ids)):
        raise MemoryError("Out of memory while binning Gaussians into tiles.")


def composite_native(means2d, conics, opacities, features, background, bins: TileBins, width: int, height: int):
    """[C, H, W, F] features (background included) and [C, H, W] alpha, on the CPU."""
    if bins.tile_size > 16 or features.shape[-1] > 16:
        raise ValueError("The native core supports tile sizes <= 16 and at most 16 feature channels.")
    if bins.flat_ids.numel() >= 2**31:
        raise ValueError("Too many tile intersections for the native core (>= 2^31).")
    return _NativeComposite.apply(means2d, conics, opacities, features, background, bins, width, height)
