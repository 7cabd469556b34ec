"""Evaluation metrics: depth-normal consistency and KID."""

import torch

from engine.core.cameras import canonical_views
from engine.core.gaussians import Gaussians
from engine.data.primitives import ELLIPSOID, Primitive, Scene
from engine.data.raycast import splatter_maps
from engine.metrics import depth_normal_consistency, kid
from engine.render import render
from engine.splatter import decode_splatter


def _sphere_splats():
    cams = canonical_views()
    scene = Scene.pack([Primitive(ELLIPSOID, (0.0, 0.0, 0.0), (0.3, 0.3, 0.3), torch.eye(3), (0.8, 0.2, 0.2))])
    return decode_splatter(splatter_maps(scene, cams, 48)[None], cams), cams


def _dnc(g, cams):
    out = render(g, cams, 64)
    return depth_normal_consistency(out.depth[0], out.normal[0], out.alpha[0], cams)


def test_dnc_rewards_consistent_surfaces():
    g, cams = _sphere_splats()
    good = _dnc(g, cams)
    assert good.shape == (4,) and good.min() > 0.9
    jitter = torch.nn.functional.normalize(g.quats + 0.6 * torch.randn(g.quats.shape, generator=torch.Generator().manual_seed(0)), dim=-1)
    bad = _dnc(Gaussians(g.means, g.scales, jitter, g.opacities, g.colors), cams)
    assert (bad < good - 0.1).all()


def test_dnc_is_differentiable():
    g, cams = _sphere_splats()
    quats = g.quats.clone().requires_grad_()
    out = render(Gaussians(g.means, g.scales, quats, g.opacities, g.colors), cams, 32)
    depth_normal_consistency(out.depth[0], out.normal[0], out.alpha[0], cams).mean().backward()
    assert torch.isfinite(quats.grad).all() and quats.grad.abs().sum() > 0


def test_kid_separates_distributions():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(300, 16, generator=g), torch.randn(300, 16, generator=g)
    same, _ = kid(a, b)
    shifted, _ = kid(a, b + 0.5)
    assert abs(same) < 0.02 and shifted > 10 * max(abs(same), 1e-3)
