"""CUDA backend through gsplat's rasterizer, with the same outputs and conventions as the torch backend."""

from __future__ import annotations

import torch
from torch import Tensor

from ..core.cameras import Cameras
from ..core.gaussians import Gaussians
from .projection import camera_normals


def gsplat_available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import gsplat  # noqa: F401
    except Exception:
        return False
    return True


def gsplat_arguments(gaussians: Gaussians, cameras: Cameras, width: int, height: int, background: Tensor) -> dict:
    """Keyword arguments for ``gsplat.rasterization`` that reproduce the torch backend's outputs.

    Colours are per camera: rgb plus the camera-space normal facing the camera, so one pass renders
    both; ``render_mode="RGB+D"`` appends the accumulated camera depth.
    """
    B, N = gaussians.batch_size, gaussians.num_gaussians
    device, dtype = gaussians.device, gaussians.dtype
    viewmats = cameras.viewmats().to(device, dtype)
    Ks = cameras.Ks(width, height).to(device, dtype)
    if viewmats.dim() == 3:
        viewmats, Ks = viewmats.expand(B, -1, 4, 4), Ks.expand(B, -1, 3, 3)
    V = viewmats.shape[1]
    Rw, tw = viewmats[..., :3, :3], viewmats[..., :3, 3]
    means_c = torch.einsum("bvij,bnj->bvni", Rw, gaussians.means) + tw[:, :, None, :]
    n_cam = camera_normals(gaussians, Rw, means_c)
    colors = torch.cat([gaussians.colors[:, None].expand(B, V, N, 3), n_cam], dim=-1)  # [B, V, N, 6]
    bg = torch.zeros(B, V, 6, device=device, dtype=dtype)
    bg[..., :3] = background.to(device, dtype)
    return dict(
        means=gaussians.means, quats=gaussians.quats, scales=gaussians.scales, opacities=gaussians.opacities,
        colors=colors, viewmats=viewmats, Ks=Ks, width=width, height=height, backgrounds=bg,
        sh_degree=None, render_mode="RGB+D", rasterize_mode="classic", packed=False,
    )


def render_gsplat(gaussians: Gaussians, cameras: Cameras, width: int, height: int, background: Tensor, settings):
    """[B, V, H, W, 7] features (rgb | depth | normal) and [B, V, H, W] alpha."""
    from gsplat import rasterization

    kwargs = gsplat_arguments(gaussians, cameras, width, height, background)
    out, alpha, _ = rasterization(
        **kwargs, eps2d=settings.eps2d, near_plane=settings.near_plane, far_plane=settings.far_plane,
        tile_size=16,
    )
    # gsplat orders rgb | normal | depth; ours is rgb | depth | normal.
    feats = torch.cat([out[..., 0:3], out[..., 6:7], out[..., 3:6]], dim=-1)
    return feats, alpha[..., 0]
