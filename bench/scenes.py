"""Benchmark scenes, as in shared/research/feasibility.md §1 so figures compare with the prototype."""

from __future__ import annotations

import math

import torch

from engine.core.cameras import orbit_cameras
from engine.core.gaussians import Gaussians, quats_from_normals


def bench_cameras(views: int = 4):
    """Azimuth 0/90/180/270, elevation 20, distance 2.2, FoV 40 degrees."""
    focal = 0.5 / math.tan(math.radians(20.0))
    azimuth = torch.arange(views) * (360.0 / views)
    return orbit_cameras(torch.full_like(azimuth, 20.0), azimuth, radius=2.2, focal=focal)


def dust(n: int, seed: int = 0) -> Gaussians:
    """Scene A: a semi-transparent ball of radius 0.5 filled with randomly rotated Gaussians."""
    g = torch.Generator().manual_seed(seed)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    means = d * 0.5 * torch.rand(n, 1, generator=g) ** (1 / 3)
    scales = torch.exp(torch.empty(n, 3).uniform_(math.log(0.01), math.log(0.04), generator=g))
    return Gaussians(
        means=means, scales=scales, quats=torch.randn(n, 4, generator=g),
        opacities=torch.empty(n).uniform_(0.1, 0.9, generator=g), colors=torch.rand(n, 3, generator=g),
    )


def shell(n: int, seed: int = 0) -> Gaussians:
    """Scene B: flat Gaussians tangent to a sphere of radius 0.5, like a converged opaque object."""
    g = torch.Generator().manual_seed(seed)
    normal = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    tangent = math.sqrt(4 * math.pi * 0.25 / n)
    quats = quats_from_normals(normal)
    scales = torch.tensor([tangent, tangent, 0.1 * tangent]).expand(n, 3).clone()
    return Gaussians(
        means=normal * 0.5, scales=scales, quats=quats,
        opacities=torch.empty(n).uniform_(0.5, 1.0, generator=g), colors=torch.rand(n, 3, generator=g),
    )


SCENES = {"dust": dust, "shell": shell}
