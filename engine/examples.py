"""A built-in example asset, so the studio and the tests have a real splat without any model."""

from __future__ import annotations

import math

import torch

from .core.gaussians import Gaussians, quats_from_normals


def _surfels(points, normals, colors, spacing: float, opacity: float) -> Gaussians:
    n = points.shape[0]
    scales = torch.tensor([spacing, spacing, 0.1 * spacing]).expand(n, 3).clone()
    return Gaussians(
        means=points, scales=scales, quats=quats_from_normals(normals),
        opacities=torch.full((n,), opacity), colors=colors,
    )


def mushroom(num_gaussians: int = 16384, seed: int = 0) -> Gaussians:
    """A red-capped mushroom with white spots on a white stem, as flat surfels (one asset)."""
    g = torch.Generator().manual_seed(seed)
    n_cap = num_gaussians * 5 // 8
    n_stem = num_gaussians - n_cap
    # Cap: upper half of an ellipsoid (radius 0.45, height 0.3) centred at y = 0.05.
    d = torch.nn.functional.normalize(torch.randn(n_cap, 3, generator=g), dim=-1)
    d[:, 1] = d[:, 1].abs()
    radii = torch.tensor([0.45, 0.3, 0.45])
    cap_pts = d * radii + torch.tensor([0.0, 0.05, 0.0])
    cap_nrm = torch.nn.functional.normalize(d / radii, dim=-1)
    spot_dirs = torch.nn.functional.normalize(torch.randn(9, 3, generator=g).abs() * torch.tensor([1, 2, 1]) * torch.tensor([[1, 1, 1], [-1, 1, 1], [1, 1, -1]]).repeat(3, 1), dim=-1)
    spot = (d @ spot_dirs.T).max(-1).values > 0.96
    cap_col = torch.where(spot[:, None], torch.tensor([0.97, 0.95, 0.9]), torch.tensor([0.85, 0.1, 0.08]))
    # Stem: a cylinder of radius 0.12 from y = -0.45 to y = 0.08.
    theta = torch.rand(n_stem, generator=g) * 2 * math.pi
    h = torch.rand(n_stem, generator=g) * 0.53 - 0.45
    stem_nrm = torch.stack([torch.cos(theta), torch.zeros_like(theta), torch.sin(theta)], -1)
    stem_pts = stem_nrm * 0.12 + torch.stack([torch.zeros_like(h), h, torch.zeros_like(h)], -1)
    stem_col = torch.tensor([0.93, 0.9, 0.82]).expand(n_stem, 3)
    spacing = math.sqrt(4 * math.pi * 0.35**2 / num_gaussians)
    return Gaussians.cat([
        _surfels(cap_pts, cap_nrm, cap_col, spacing, 0.9),
        _surfels(stem_pts, stem_nrm, stem_col.clone(), spacing, 0.9),
    ])
