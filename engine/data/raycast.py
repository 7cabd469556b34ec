"""Ground truth for the procedural world by analytic ray casting.

``raycast_views`` gives exact images (colour, alpha, depth, normal) from any cameras;
``splatter_maps`` gives DiffSplat splatter images: one Gaussian per pixel on the surface the pixel's
ray hits, lying flat along the surface and sized to the pixel footprint, so that rendering the decoded
Gaussians reproduces the ray-cast images.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..core.cameras import Cameras
from ..core.gaussians import quats_from_rotmat
from ..splatter import SplatterDecoding
from .primitives import Scene, intersect

LIGHT = torch.nn.functional.normalize(torch.tensor([0.35, 0.8, 0.5]), dim=0)
FOOTPRINT = 0.45  # Gaussian std as a fraction of the pixel spacing on the surface
COS_MIN = 0.25  # longest footprint stretch on surfaces seen at grazing angles


def shade(color: Tensor, normal: Tensor) -> Tensor:
    """Baked, view-independent Lambert shading so shapes read without a light in the renderer."""
    lambert = (normal @ LIGHT.to(normal)).clamp_min(0)
    return color * (0.55 + 0.45 * lambert[..., None])


def camera_rays(cameras: Cameras, width: int, height: int, align_corners: bool) -> tuple[Tensor, Tensor]:
    """Per-pixel rays [V, H, W, 3] whose direction has camera-space z = 1 (so t is camera depth).

    ``align_corners=True`` uses the splatter decoding's grid u = j / (W - 1); False uses the renderer's
    pixel centres u = (j + 0.5) / W.
    """
    if align_corners:
        us = torch.arange(width) / (width - 1)
        vs = torch.arange(height) / (height - 1)
    else:
        us = (torch.arange(width) + 0.5) / width
        vs = (torch.arange(height) + 0.5) / height
    fx, fy, cx, cy = cameras.intrinsics.float().unbind(-1)
    x = (us[None, None, :] - cx[:, None, None]) / fx[:, None, None]
    y = (vs[None, :, None] - cy[:, None, None]) / fy[:, None, None]
    d_cam = torch.stack([x.expand(-1, height, -1), y.expand(-1, -1, width), torch.ones_like(x.expand(-1, height, -1))], -1)
    c2w = cameras.c2w.float()
    d = torch.einsum("vij,vhwj->vhwi", c2w[:, :3, :3], d_cam)
    o = c2w[:, None, None, :3, 3].expand_as(d)
    return o, d


def _cast(scene: Scene, cameras: Cameras, width: int, height: int, align_corners: bool):
    o, d = camera_rays(cameras, width, height, align_corners)
    hits = intersect(scene, o.reshape(-1, 3), d.reshape(-1, 3))
    shape = o.shape[:-1]
    return o, d, {k: v.reshape(shape + v.shape[1:]) for k, v in hits.items()}


def raycast_views(
    scene: Scene, cameras: Cameras, width: int, height: int | None = None, background: float = 1.0, supersample: int = 1
) -> dict[str, Tensor]:
    """Exact images [V, C, H, W]: ``rgb`` (shaded, on ``background``), ``alpha``, ``depth`` (camera z,
    0 on a miss) and ``normal`` (camera space, OpenCV, facing the camera, 0 on a miss).

    ``supersample`` > 1 casts that many rays per pixel side and averages them (anti-aliased edges).
    """
    height = height or width
    if supersample > 1:
        big = raycast_views(scene, cameras, width * supersample, height * supersample, background)
        return {k: torch.nn.functional.avg_pool2d(v, supersample) for k, v in big.items()}
    _, _, h = _cast(scene, cameras, width, height, align_corners=False)
    hit = h["hit"][..., None].float()
    rgb = shade(h["color"], h["normal"]) * hit + background * (1 - hit)
    R = cameras.c2w[:, :3, :3].float()
    n_cam = torch.einsum("vji,vhwj->vhwi", R, h["normal"]) * hit
    chw = lambda a: a.permute(0, 3, 1, 2).contiguous()  # noqa: E731
    return {"rgb": chw(rgb), "alpha": chw(hit), "depth": chw(h["t"][..., None] * hit), "normal": chw(n_cam)}


def splatter_maps(scene: Scene, cameras: Cameras, resolution: int, decoding: SplatterDecoding = SplatterDecoding()) -> Tensor:
    """Splatter images [V, 12, H, W] in [-1, 1] that ``decode_splatter`` turns back into the surface."""
    o, d, h = _cast(scene, cameras, resolution, resolution, align_corners=True)
    hit = h["hit"]
    n = h["normal"]
    view = torch.nn.functional.normalize(d, dim=-1)
    # In-plane frame: t1 along the view direction projected on the surface (the footprint's long axis).
    t1 = view - (view * n).sum(-1, keepdim=True) * n
    fallback = torch.where(n[..., :1].abs() < 0.9, torch.tensor([1.0, 0, 0]), torch.tensor([0, 1.0, 0])).expand_as(n)
    t1 = torch.where(t1.norm(dim=-1, keepdim=True) < 1e-4, torch.linalg.cross(n, fallback, dim=-1), t1)
    t1 = torch.nn.functional.normalize(t1, dim=-1)
    t2 = torch.linalg.cross(n, t1, dim=-1)
    quats = quats_from_rotmat(torch.stack([t1, t2, n], dim=-1))
    fx = cameras.intrinsics[:, 0].float()[:, None, None]
    spacing = h["t"] / (fx * (resolution - 1))  # world distance between neighbouring pixel rays
    cos = (view * n).sum(-1).abs().clamp_min(COS_MIN)  # limits streaks past edges seen at grazing angles
    smin, smax = decoding.scale_min, decoding.scale_max
    scales = torch.stack([FOOTPRINT * spacing / cos, FOOTPRINT * spacing, torch.full_like(spacing, smin)], -1).clamp(smin, smax)
    scale_x = 2 * (smax - scales) / (smax - smin) - 1  # inverse of the (inverted) decoding
    rgb_x = 2 * shade(h["color"], n) - 1
    radius = cameras.c2w[:, :3, 3].float().norm(dim=-1)[:, None, None]
    depth_x = h["t"] - radius
    m = hit[..., None]
    maps = torch.cat([
        torch.where(m, rgb_x, torch.ones_like(rgb_x)),
        torch.where(m, scale_x, torch.ones_like(scale_x)),
        torch.where(m, quats, torch.tensor([1.0, 0, 0, 0]).expand_as(quats)),
        torch.where(m, torch.ones_like(depth_x[..., None]), -torch.ones_like(depth_x[..., None])),
        torch.where(m, depth_x[..., None], torch.zeros_like(depth_x[..., None])),
    ], -1)
    return maps.clamp(-1, 1).permute(0, 3, 1, 2).contiguous()


def psnr(a: Tensor, b: Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return 10 * math.log10(1.0 / max(mse, 1e-12))
