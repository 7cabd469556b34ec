"""Pure-PyTorch compositing core: runs on any device, differentiable through autograd.

Tiles with similar candidate counts are batched into padded [tiles, pixels, K] tensors; each
batch is wrapped in activation checkpointing so memory stays bounded by one batch, whatever the
scene size. Same compositing rules as the native and gsplat cores.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .projection import ALPHA_MAX, ALPHA_MIN, T_MIN, TileBins

CHUNK_ELEMENTS = 1 << 21  # tiles * pixels * candidates per batch


def _composite_tiles(means2d, conics, opacities, features, pix, idx, pad):
    """Composite candidates idx [t, K] (front to back, pad marks real ones) at pixels pix [t, P, 2]."""
    d = pix[:, :, None, :] - means2d[idx][:, None, :, :]  # [t, P, K, 2]
    con = conics[idx][:, None]  # [t, 1, K, 3]
    dx, dy = d[..., 0], d[..., 1]
    sigma = 0.5 * (con[..., 0] * dx * dx + con[..., 2] * dy * dy) + con[..., 1] * dx * dy
    alpha = (opacities[idx][:, None, :] * torch.exp(-sigma)).clamp(max=ALPHA_MAX)
    use = (sigma >= 0) & (alpha >= ALPHA_MIN) & pad[:, None, :]
    alpha = torch.where(use, alpha, torch.zeros_like(alpha))
    with torch.no_grad():  # stop before the transmittance would reach T_MIN (a prefix, T is monotone)
        keep = torch.exp(torch.cumsum(torch.log1p(-alpha), -1)) > T_MIN
    alpha = torch.where(keep, alpha, torch.zeros_like(alpha))
    log_t = torch.log1p(-alpha)
    t_excl = torch.exp(torch.cumsum(log_t, -1) - log_t)
    weights = alpha * t_excl  # [t, P, K]
    feats = torch.einsum("tpk,tkf->tpf", weights, features[idx])
    return feats, torch.exp(log_t.sum(-1))


def composite_torch(
    means2d: Tensor, conics: Tensor, opacities: Tensor, features: Tensor, background: Tensor,
    bins: TileBins, width: int, height: int,
) -> tuple[Tensor, Tensor]:
    """[C, H, W, F] features (background included) and [C, H, W] alpha."""
    C, N, F = features.shape
    TS, TX, TY = bins.tile_size, bins.tiles_x, bins.tiles_y
    P = TS * TS
    device, dtype = features.device, features.dtype
    m2, con, op, ft = means2d.reshape(C * N, 2), conics.reshape(C * N, 3), opacities.reshape(C * N), features.reshape(C * N, F)

    counts = (bins.offsets[1:] - bins.offsets[:-1]).cpu()
    tiles = torch.nonzero(counts).squeeze(1)
    tiles = tiles[torch.argsort(counts[tiles], stable=True)]
    sorted_counts = counts[tiles].tolist()

    # Per-tile outputs, empty tiles stay (0, T = 1).
    tile_feat = torch.zeros(C * TY * TX, P, F, dtype=dtype, device=device)
    tile_T = torch.ones(C * TY * TX, P, dtype=dtype, device=device)
    local = torch.arange(P, device=device)
    local_xy = torch.stack([local % TS, torch.div(local, TS, rounding_mode="floor")], -1).to(dtype) + 0.5
    start = 0
    while start < len(sorted_counts):
        end = start + 1
        while end < len(sorted_counts) and (end + 1 - start) * P * sorted_counts[end] <= CHUNK_ELEMENTS:
            end += 1
        chunk = tiles[start:end].to(device)
        K = sorted_counts[end - 1]
        first = bins.offsets[chunk]
        slot = first[:, None] + torch.arange(K, device=device)[None]
        pad = slot < bins.offsets[chunk + 1][:, None]
        idx = bins.flat_ids[slot.clamp(max=max(bins.flat_ids.numel() - 1, 0))]
        idx = torch.where(pad, idx, torch.zeros_like(idx))
        rem = chunk % (TY * TX)
        origin = torch.stack([rem % TX, torch.div(rem, TX, rounding_mode="floor")], -1).to(dtype) * TS
        pix = origin[:, None, :] + local_xy[None]
        args = (m2, con, op, ft, pix, idx, pad)
        if torch.is_grad_enabled() and any(t.requires_grad for t in args[:4]):
            feats, T = checkpoint(_composite_tiles, *args, use_reentrant=False)
        else:
            feats, T = _composite_tiles(*args)
        tile_feat = tile_feat.index_copy(0, chunk, feats)
        tile_T = tile_T.index_copy(0, chunk, T)
        start = end

    def untile(t: Tensor) -> Tensor:  # [C*TY*TX, P, ...] -> [C, H, W, ...]
        extra = t.shape[2:]
        img = t.reshape(C, TY, TX, TS, TS, *extra).transpose(2, 3).reshape(C, TY * TS, TX * TS, *extra)
        return img[:, :height, :width]

    T = untile(tile_T)
    return untile(tile_feat) + T[..., None] * background[:, None, None, :], 1 - T
