"""Brute-force reference compositor for tests: every pixel against every Gaussian, plain autograd."""

from __future__ import annotations

import torch

from engine.render.projection import ALPHA_MAX, ALPHA_MIN, T_MIN, Projected


def composite_dense(proj: Projected, background, width: int, height: int):
    """[C, H, W, F] and [C, H, W] from projected Gaussians, no tiles, no culling by extent."""
    C, N, F = proj.features.shape
    dtype = proj.features.dtype
    ys, xs = torch.meshgrid(torch.arange(height, dtype=dtype), torch.arange(width, dtype=dtype), indexing="ij")
    pix = torch.stack([xs, ys], -1).reshape(-1, 2) + 0.5  # [P, 2]
    feats, alphas = [], []
    for c in range(C):
        visible = (proj.extents[c] > 0).all(-1)  # culled: behind the camera, degenerate, off-screen
        order = torch.argsort(proj.depths[c], stable=True)
        order = order[visible[order]]
        d = pix[:, None, :] - proj.means2d[c, order][None]  # [P, K, 2]
        con = proj.conics[c, order]
        sigma = 0.5 * (con[:, 0] * d[..., 0] ** 2 + con[:, 2] * d[..., 1] ** 2) + con[:, 1] * d[..., 0] * d[..., 1]
        alpha = (proj.opacities[c, order] * torch.exp(-sigma)).clamp(max=ALPHA_MAX)
        T = torch.ones(pix.shape[0], dtype=dtype)
        out = torch.zeros(pix.shape[0], F, dtype=dtype)
        done = torch.zeros(pix.shape[0], dtype=torch.bool)
        for k in range(order.numel()):  # sequential, exactly as the rule is written
            a = alpha[:, k]
            ok = (sigma[:, k] >= 0) & (a >= ALPHA_MIN) & ~done
            next_T = T * (1 - a)
            stop = ok & (next_T <= T_MIN)
            use = ok & ~stop
            out = out + torch.where(use, a * T, torch.zeros_like(a))[:, None] * proj.features[c, order[k]][None]
            T = torch.where(use, next_T, T)
            done = done | stop
        feats.append((out + T[:, None] * background[c][None]).reshape(height, width, F))
        alphas.append((1 - T).reshape(height, width))
    return torch.stack(feats), torch.stack(alphas)
