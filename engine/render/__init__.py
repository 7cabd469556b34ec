"""Differentiable Gaussian splat rendering: one call, two backends.

``torch``: projection in PyTorch (autograd) and a tile compositor with an analytic backward; on the
CPU the compositor runs natively (C, OpenMP, built on first use), elsewhere or without a compiler in
pure PyTorch. ``gsplat``: gsplat's CUDA rasterizer. ``auto`` picks gsplat for CUDA tensors when it
is installed and the torch backend otherwise. All give the same images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import Tensor

from ..core.cameras import Cameras
from ..core.gaussians import Gaussians
from .gsplat_backend import gsplat_available, render_gsplat
from .native import bin_fill, composite_native, native_available
from .projection import ALPHA_MIN, bin_tiles, project
from .torch_core import composite_torch

__all__ = ["RenderSettings", "RenderOutput", "render", "available_backends", "resolve_backend"]

Backend = Literal["auto", "torch", "gsplat"]
Core = Literal["auto", "native", "pytorch"]
MAX_RESOLUTION = 4096


@dataclass(frozen=True)
class RenderSettings:
    """Rasterization settings shared by all backends.

    eps2d: added to the 2D covariance (gsplat's default; DiffSplat's own rasterizer uses 0).
    near_plane / far_plane: Gaussians with camera depth outside are culled.
    tile_size: tile edge in pixels for the torch backend (<= 16 for the native core).
    core: compositor of the torch backend: "native" (CPU only), "pytorch", or "auto".
    """

    eps2d: float = 0.3
    near_plane: float = 0.01
    far_plane: float = 1e10
    tile_size: int = 8
    core: Core = "auto"

    def __post_init__(self) -> None:
        if self.eps2d < 0 or self.near_plane <= 0 or self.far_plane <= self.near_plane:
            raise ValueError(f"Invalid render settings: {self}.")
        if not 1 <= self.tile_size <= 16:
            raise ValueError(f"tile_size must be in [1, 16], got {self.tile_size}.")
        if self.core not in ("auto", "native", "pytorch"):
            raise ValueError(f"core must be 'auto', 'native' or 'pytorch', got {self.core!r}.")


@dataclass
class RenderOutput:
    """Renders of B assets from V views, channel-first.

    rgb [B, V, 3, H, W] with the background composited; alpha [B, V, 1, H, W]; depth [B, V, 1, H, W]
    expected camera z (sum of w_i z_i, not divided by alpha); normal [B, V, 3, H, W] composited
    camera-space normals (OpenCV axes: x right, y down, z forward; not divided by alpha).
    """

    rgb: Tensor
    alpha: Tensor
    depth: Tensor
    normal: Tensor

    def flatten(self) -> "RenderOutput":
        """Merge the asset and view dimensions: [B * V, C, H, W], the layout 2D rewards take."""
        return RenderOutput(*(t.flatten(0, 1) for t in (self.rgb, self.alpha, self.depth, self.normal)))


def available_backends() -> list[str]:
    return ["torch"] + (["gsplat"] if gsplat_available() else [])


def resolve_backend(backend: Backend, device: torch.device) -> str:
    if backend == "auto":
        return "gsplat" if device.type == "cuda" and gsplat_available() else "torch"
    if backend == "gsplat" and not gsplat_available():
        raise RuntimeError("The gsplat backend needs CUDA and the gsplat package; use backend='torch' on this machine.")
    if backend not in ("torch", "gsplat"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'gsplat', got {backend!r}.")
    return backend


def visible_only(gaussians: Gaussians) -> Gaussians:
    """Per asset, the Gaussians that can show (opacity >= 1/255, in their order), padded with the asset's
    invisible ones to the largest count. Renders and gradients are the same: the compositor skips a Gaussian
    whose alpha can never reach 1/255 and gives it no gradient; projecting, binning and differentiating
    the rest (about 3 in 4 of a generated splat) is work saved."""
    visible = gaussians.opacities.detach() >= ALPHA_MIN
    count = int(visible.sum(1).max())
    if count in (0, gaussians.num_gaussians):
        return gaussians
    order = torch.argsort((~visible).to(torch.uint8), dim=1, stable=True)[:, :count]  # visible first, in order
    B = gaussians.batch_size
    return gaussians.map(lambda t: torch.gather(t, 1, order.view(B, count, *[1] * (t.dim() - 2)).expand(B, count, *t.shape[2:])))


def _background(background, device, dtype) -> Tensor:
    bg = torch.as_tensor(background, dtype=dtype, device=device)
    if bg.shape != (3,):
        raise ValueError(f"background must be 3 RGB values, got shape {list(bg.shape)}.")
    return bg


def render(
    gaussians: Gaussians,
    cameras: Cameras,
    width: int,
    height: int | None = None,
    *,
    background: Sequence[float] | Tensor = (1.0, 1.0, 1.0),
    backend: Backend = "auto",
    settings: RenderSettings = RenderSettings(),
) -> RenderOutput:
    """Render every asset of ``gaussians`` from its cameras.

    Args:
        gaussians: B assets of N Gaussians.
        cameras: [V] cameras shared by all assets, or [B, V].
        width, height: image size in pixels (height defaults to width).
        background: RGB in [0, 1], white by default (as DiffSplat).
        backend: "auto", "torch" or "gsplat".
        settings: rasterization settings.
    """
    height = width if height is None else height
    for name, v in (("width", width), ("height", height)):
        if not isinstance(v, int) or not 1 <= v <= MAX_RESOLUTION:
            raise ValueError(f"{name} must be an integer in [1, {MAX_RESOLUTION}], got {v!r}.")
    gaussians.validate()
    if cameras.c2w.dim() not in (3, 4):
        raise ValueError(f"cameras must have shape [V] or [B, V], got {list(cameras.shape)}.")
    B = gaussians.batch_size
    V = cameras.shape[-1]
    device, dtype = gaussians.device, gaussians.dtype
    bg = _background(background, device, dtype)

    if resolve_backend(backend, device) == "gsplat":
        feats, alpha = render_gsplat(gaussians, cameras, width, height, bg, settings)
        feats, alpha = feats.reshape(B * V, height, width, -1), alpha.reshape(B * V, height, width)
    else:
        proj = project(
            visible_only(gaussians), cameras, width, height,
            eps2d=settings.eps2d, near_plane=settings.near_plane, far_plane=settings.far_plane,
        )
        use_native = settings.core == "native" or (
            settings.core == "auto" and device.type == "cpu" and native_available(dtype)
        )
        if use_native and (device.type != "cpu" or not native_available(dtype)):
            raise RuntimeError("The native core needs float32/float64 CPU tensors and a C compiler.")
        bins = bin_tiles(proj, width, height, settings.tile_size, fill=bin_fill if use_native else None)
        F = proj.features.shape[-1]
        bg_feat = torch.zeros(F, dtype=dtype, device=device)
        bg_feat = torch.cat([bg, bg_feat[3:]]).expand(B * V, F)
        composite = composite_native if use_native else composite_torch
        feats, alpha = composite(proj.means2d, proj.conics, proj.opacities, proj.features, bg_feat, bins, width, height)

    feats = feats.reshape(B, V, height, width, -1).permute(0, 1, 4, 2, 3)
    return RenderOutput(
        rgb=feats[:, :, 0:3], alpha=alpha.reshape(B, V, 1, height, width), depth=feats[:, :, 3:4], normal=feats[:, :, 4:7],
    )
