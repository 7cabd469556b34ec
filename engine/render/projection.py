"""EWA projection of 3D Gaussians into per-camera 2D Gaussians, differentiable with autograd.

Conventions follow gsplat's pinhole model (pixel centres at +0.5, Jacobian clamped to 1.3x the
frustum, ``eps2d`` added to the 2D covariance), so the torch and gsplat backends agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.cameras import Cameras
from ..core.gaussians import Gaussians, quat_to_rotmat

ALPHA_MIN = 1.0 / 255.0  # compositing skips Gaussians below this alpha (3DGS / gsplat)
ALPHA_MAX = 0.999
T_MIN = 1e-4  # a pixel stops once its transmittance would fall to this


@dataclass
class Projected:
    """Per-camera 2D Gaussians, C = B * V cameras, flattened camera-major.

    means2d [C, N, 2] pixels; conics [C, N, 3] = (a, b, c) of the inverse 2D covariance, so that
    sigma = 0.5 * (a dx^2 + c dy^2) + b dx dy; opacities [C, N]; features [C, N, F];
    depths [C, N] camera z; extents [C, N, 2] half-sizes in pixels of the region where alpha can
    reach 1/255 (0 for culled Gaussians).
    """

    means2d: Tensor
    conics: Tensor
    opacities: Tensor
    features: Tensor
    depths: Tensor
    extents: Tensor


def gaussian_normals(gaussians: Gaussians) -> Tensor:
    """[B, N, 3] world-space normal of each Gaussian: its shortest axis (sign arbitrary)."""
    R = quat_to_rotmat(gaussians.quats)  # [B, N, 3, 3], columns are the local axes
    shortest = gaussians.scales.detach().argmin(dim=-1)  # [B, N]
    return torch.gather(R, -1, shortest[..., None, None].expand(R.shape[:-1] + (1,)))[..., 0]


def camera_normals(gaussians: Gaussians, Rw: Tensor, means_c: Tensor) -> Tensor:
    """[B, V, N, 3] normals in each camera (rotation Rw [B, V, 3, 3]), flipped to face it (n . -mu_c >= 0)."""
    n_cam = torch.einsum("bvij,bnj->bvni", Rw, gaussian_normals(gaussians))
    facing = torch.where((n_cam * means_c).sum(-1, keepdim=True) > 0, -1.0, 1.0).to(n_cam.dtype)
    return n_cam * facing


def project(
    gaussians: Gaussians,
    cameras: Cameras,
    width: int,
    height: int,
    *,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
) -> Projected:
    """Project B assets into their V cameras ([V] shared or [B, V]).

    Features per Gaussian are rgb (3) | camera depth (1) | camera-space normal facing the camera (3).
    """
    B, N = gaussians.batch_size, gaussians.num_gaussians
    dtype = gaussians.dtype
    viewmats = cameras.viewmats().to(gaussians.device, dtype)
    Ks = cameras.Ks(width, height).to(gaussians.device, dtype)
    if viewmats.dim() == 3:
        viewmats, Ks = viewmats.expand(B, -1, 4, 4), Ks.expand(B, -1, 3, 3)
    if viewmats.shape[0] != B:
        raise ValueError(f"Cameras have batch {viewmats.shape[0]} but the Gaussians have batch {B}.")
    V = viewmats.shape[1]

    Rw = viewmats[..., :3, :3]  # [B, V, 3, 3]
    tw = viewmats[..., :3, 3]
    means_c = torch.einsum("bvij,bnj->bvni", Rw, gaussians.means) + tw[:, :, None, :]  # [B, V, N, 3]
    x, y, z = means_c.unbind(-1)
    zs = torch.where(z > near_plane, z, torch.ones_like(z))  # safe divisor for culled Gaussians

    fx, fy = Ks[..., 0, 0, None], Ks[..., 1, 1, None]  # [B, V, 1]
    cx, cy = Ks[..., 0, 2, None], Ks[..., 1, 2, None]
    means2d = torch.stack([fx * x / zs + cx, fy * y / zs + cy], dim=-1)

    # Jacobian of the projection, evaluated with x/z and y/z clamped to 1.3x the frustum (gsplat).
    lim_xp = (width - cx) / fx + 0.15 * width / fx
    lim_xn = cx / fx + 0.15 * width / fx
    lim_yp = (height - cy) / fy + 0.15 * height / fy
    lim_yn = cy / fy + 0.15 * height / fy
    tx = zs * torch.minimum(torch.maximum(x / zs, -lim_xn), lim_xp)
    ty = zs * torch.minimum(torch.maximum(y / zs, -lim_yn), lim_yp)
    zero = torch.zeros_like(zs)
    J = torch.stack([fx / zs, zero, -fx * tx / zs**2, zero, fy / zs, -fy * ty / zs**2], -1).reshape(B, V, N, 2, 3)

    # cov2d = (J Rw M)(J Rw M)^T with M = R(q) S, the 3D covariance's square root.
    M = quat_to_rotmat(gaussians.quats) * gaussians.scales[..., None, :]  # [B, N, 3, 3]
    U = torch.einsum("bvnij,bvjk,bnkl->bvnil", J, Rw, M)  # [B, V, N, 2, 3]
    cov = U @ U.transpose(-1, -2)
    cxx = cov[..., 0, 0] + eps2d
    cyy = cov[..., 1, 1] + eps2d
    cxy = cov[..., 0, 1]
    det = cxx * cyy - cxy * cxy
    valid = (det > 1e-12) & (z > near_plane) & (z < far_plane)
    det_safe = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([cyy / det_safe, -cxy / det_safe, cxx / det_safe], dim=-1)

    opac = gaussians.opacities[:, None, :].expand(B, V, N)
    # Opacity-aware extent: alpha = o * exp(-sigma) >= 1/255 only inside sigma <= ln(255 o).
    with torch.no_grad():
        level = torch.log(opac.clamp_min(1e-12) / ALPHA_MIN)
        valid = valid & (level > 0)
        level = level.clamp_min(0)
        ext = torch.stack([torch.sqrt(2 * level * cxx.clamp_min(0)), torch.sqrt(2 * level * cyy.clamp_min(0))], -1)
        m2 = means2d.detach()
        inside = (m2[..., 0] + ext[..., 0] > 0) & (m2[..., 0] - ext[..., 0] < width)
        inside = inside & (m2[..., 1] + ext[..., 1] > 0) & (m2[..., 1] - ext[..., 1] < height)
        valid = valid & inside
        ext = torch.where(valid[..., None], ext, torch.zeros_like(ext))

    n_cam = camera_normals(gaussians, Rw, means_c)
    colors = gaussians.colors[:, None].expand(B, V, N, 3)
    features = torch.cat([colors, z[..., None], n_cam], dim=-1)  # [B, V, N, 7]

    C = B * V
    return Projected(
        means2d=means2d.reshape(C, N, 2), conics=conics.reshape(C, N, 3), opacities=opac.reshape(C, N),
        features=features.reshape(C, N, features.shape[-1]), depths=z.reshape(C, N).detach(), extents=ext.reshape(C, N, 2),
    )


@dataclass
class TileBins:
    """Gaussians listed per (camera, tile), front to back.

    flat_ids [E] int64 index into the C * N flattened Gaussians; offsets [C * TY * TX + 1]: the
    entries of tile k are flat_ids[offsets[k]:offsets[k + 1]].
    """

    flat_ids: Tensor
    offsets: Tensor
    tile_size: int
    tiles_x: int
    tiles_y: int


def _tile_rects(proj: Projected, width: int, height: int, tile_size: int) -> Tensor:
    """[C, N, 4] inclusive tile rectangle (x0, y0, x1, y1) of each Gaussian; empty (x1 < x0) when culled."""
    m2, ext = proj.means2d.detach(), proj.extents
    # Pixels whose centre (i + 0.5) lies within the extent, then the tiles holding them.
    lo = torch.ceil(m2 - ext - 0.5).clamp_min(0)
    hi = torch.minimum(torch.floor(m2 + ext - 0.5), torch.tensor([width - 1.0, height - 1.0], dtype=m2.dtype, device=m2.device))
    rect = torch.cat([torch.div(lo, tile_size, rounding_mode="floor"), torch.div(hi, tile_size, rounding_mode="floor")], -1).long()
    culled = ~(ext > 0).all(-1) | (rect[..., 2] < rect[..., 0]) | (rect[..., 3] < rect[..., 1])
    return torch.where(culled[..., None], torch.tensor([0, 0, -1, -1], device=rect.device), rect)


@torch.no_grad()
def bin_tiles(proj: Projected, width: int, height: int, tile_size: int = 8, fill=None) -> TileBins:
    """Assign every visible Gaussian to the tiles its extent covers, sorted by depth per tile.

    ``fill``: optional native counting-sort filler (see native.py); the default sorts with PyTorch.
    """
    C, N = proj.depths.shape
    TX, TY = math.ceil(width / tile_size), math.ceil(height / tile_size)
    device = proj.depths.device
    rect = _tile_rects(proj, width, height, tile_size)  # [C, N, 4]
    counts = ((rect[..., 2] - rect[..., 0] + 1) * (rect[..., 3] - rect[..., 1] + 1)).reshape(-1)  # [C * N]
    order = torch.argsort(proj.depths, dim=1, stable=True)  # each camera's Gaussians front to back
    # Per-tile counts: add 1 over each rectangle via a 2D difference array (+1 at two corners, -1 at the other
    # two, counted with bincount over flat indices), then prefix sums.
    shown = (counts > 0).nonzero().squeeze(1)  # flat (camera, Gaussian) indices with at least one tile
    c = torch.div(shown, N, rounding_mode="floor")
    x0, y0, x1, y1 = rect.reshape(-1, 4)[shown].unbind(-1)
    size = C * (TY + 1) * (TX + 1)
    corner = lambda ys, xs: torch.bincount((c * (TY + 1) + ys) * (TX + 1) + xs, minlength=size)  # noqa: E731
    diff = corner(y0, x0) + corner(y1 + 1, x1 + 1) - corner(y0, x1 + 1) - corner(y1 + 1, x0)
    tile_counts = diff.view(C, TY + 1, TX + 1).cumsum(1).cumsum(2)[:, :TY, :TX].reshape(-1)
    offsets = torch.zeros(C * TY * TX + 1, dtype=torch.long, device=device)
    offsets[1:] = torch.cumsum(tile_counts, 0)
    E = int(offsets[-1])
    if fill is not None:
        flat_ids = torch.empty(E, dtype=torch.long)
        fill(C, N, TX, TY, order.contiguous(), rect.to(torch.int32).contiguous(), offsets, flat_ids)
        return TileBins(flat_ids=flat_ids, offsets=offsets, tile_size=tile_size, tiles_x=TX, tiles_y=TY)

    # PyTorch path: one entry per (Gaussian, tile) in depth order, then a stable sort by tile.
    sorted_flat = (torch.arange(C, device=device)[:, None] * N + order).reshape(-1)
    counts_sorted = counts[sorted_flat]
    src = torch.repeat_interleave(sorted_flat, counts_sorted)
    starts = torch.cumsum(counts_sorted, 0) - counts_sorted
    local = torch.arange(E, device=device) - torch.repeat_interleave(starts, counts_sorted)
    r = rect.reshape(-1, 4)[src]
    nx = r[:, 2] - r[:, 0] + 1
    tx = r[:, 0] + local % nx
    ty = r[:, 1] + torch.div(local, nx, rounding_mode="floor")
    key = (torch.div(src, N, rounding_mode="floor") * TY + ty) * TX + tx
    perm = torch.sort(key, stable=True).indices
    return TileBins(flat_ids=src[perm], offsets=offsets, tile_size=tile_size, tiles_x=TX, tiles_y=TY)
