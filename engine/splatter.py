"""DiffSplat splatter images -> 3D Gaussians (research/diffsplat.md §1.2-1.4).

A splatter image holds one Gaussian per pixel per view in 12 channels in [-1, 1]:
rgb 3 | scale 3 | rotation 4 (w first) | opacity 1 | depth 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .core.cameras import Cameras
from .core.gaussians import Gaussians

SPLATTER_CHANNELS = 12
CHANNEL_SLICES = {
    "rgb": slice(0, 3), "scale": slice(3, 6), "rotation": slice(6, 10), "opacity": slice(10, 11), "depth": slice(11, 12),
}


@dataclass(frozen=True)
class SplatterDecoding:
    """DiffSplat's decoding constants (src/options.py)."""

    scale_min: float = 0.0005
    scale_max: float = 0.02
    opacity_threshold: float = 0.0


def decode_splatter(maps: Tensor, cameras: Cameras, config: SplatterDecoding = SplatterDecoding()) -> Gaussians:
    """Splatter maps and the cameras they were made from -> Gaussians.

    Args:
        maps: [B, V, 12, H, W] in [-1, 1] (values outside are clamped, as DiffSplat's decoder does).
        cameras: V cameras ([V] or [B, V]) whose normalised intrinsics unproject the depth channel.
        config: activation constants.

    Returns:
        Gaussians with N = V * H * W, ordered view, then row, then column.
    """
    if maps.dim() != 5 or maps.shape[2] != SPLATTER_CHANNELS:
        raise ValueError(f"Splatter maps must have shape [B, V, 12, H, W], got {list(maps.shape)}.")
    B, V, _, H, W = maps.shape
    if cameras.shape[-1] != V:
        raise ValueError(f"Got {V} splatter views but {cameras.shape[-1]} cameras.")
    x = maps.clamp(-1, 1).permute(0, 1, 3, 4, 2)  # [B, V, H, W, 12]
    part = {k: x[..., s] for k, s in CHANNEL_SLICES.items()}

    rgb = 0.5 * part["rgb"] + 0.5
    u = 0.5 * part["scale"] + 0.5
    # Inverted on purpose (DiffSplat): x = -1 is the largest scale, x = +1 the smallest.
    scale = config.scale_min * u + config.scale_max * (1 - u)
    opacity = 0.5 * part["opacity"][..., 0] + 0.5
    opacity = opacity * (opacity > config.opacity_threshold)
    quats = part["rotation"]  # used as is; the renderer normalises

    c2w = cameras.c2w.to(maps).expand(B, V, 4, 4)
    fx, fy, cx, cy = cameras.intrinsics.to(maps).expand(B, V, 4).unbind(-1)
    # Depth is an offset from the camera's distance to the origin.
    z = part["depth"][..., 0] + c2w[..., :3, 3].norm(dim=-1)[..., None, None]
    # "Align-corners" pixel grid: u = j / (W - 1), v = i / (H - 1).
    js = torch.arange(W, dtype=maps.dtype, device=maps.device) / (W - 1)
    is_ = torch.arange(H, dtype=maps.dtype, device=maps.device) / (H - 1)
    x_cam = (js[None, None, None, :] - cx[..., None, None]) / fx[..., None, None] * z
    y_cam = (is_[None, None, :, None] - cy[..., None, None]) / fy[..., None, None] * z
    p_cam = torch.stack([x_cam, y_cam, z], dim=-1)  # [B, V, H, W, 3]
    R, t = c2w[..., :3, :3], c2w[..., :3, 3]
    means = torch.einsum("bvij,bvhwj->bvhwi", R, p_cam) + t[:, :, None, None, :]

    flat = lambda a, c: a.reshape(B, V * H * W, c) if c else a.reshape(B, V * H * W)  # noqa: E731
    return Gaussians(
        means=flat(means, 3), scales=flat(scale, 3), quats=flat(quats, 4),
        opacities=flat(opacity, 0), colors=flat(rgb, 3),
    )
