import math

import pytest
import torch

from engine.core.cameras import (
    Cameras,
    canonical_views,
    fov_degrees,
    orbit_cameras,
    random_views,
    turntable,
)
from engine.splatter import decode_splatter


def test_canonical_view_zero_matches_diffsplat_example():
    cams = canonical_views()
    c2w = orbit_cameras(0.0, 0.0).c2w
    # research/diffsplat.md §2.1: a = e = 0 sits at (0, 0, 1.4), OpenCV axes x=(1,0,0), y=(0,-1,0), z=(0,0,-1).
    assert torch.allclose(c2w[:3, 3], torch.tensor([0.0, 0.0, 1.4]), atol=1e-6)
    assert torch.allclose(c2w[:3, :3], torch.diag(torch.tensor([1.0, -1.0, -1.0])), atol=1e-6)
    assert torch.allclose(cams.intrinsics[0], torch.tensor([1.388889, 1.388889, 0.5, 0.5]), atol=1e-5)
    assert abs(fov_degrees() - 39.60) < 0.01


def test_canonical_views_orbit_and_look_at_origin():
    cams = canonical_views()
    pos = cams.positions
    assert torch.allclose(pos.norm(dim=-1), torch.full((4,), 1.4), atol=1e-5)
    # azimuth 90 is on +x, 180 on -z; elevation 10 puts every camera above the xz-plane
    assert pos[1, 0] > 1.3 and pos[2, 2] < -1.3
    assert torch.allclose(pos[:, 1], torch.full((4,), 1.4 * math.sin(math.radians(10))), atol=1e-5)
    forward = cams.c2w[:, :3, 2]
    assert torch.allclose(forward, -torch.nn.functional.normalize(pos, dim=-1), atol=1e-5)


def test_viewmats_invert_c2w_and_pixel_intrinsics():
    cams = canonical_views()
    eye = cams.viewmats() @ cams.c2w
    assert torch.allclose(eye, torch.eye(4).expand(4, 4, 4), atol=1e-5)
    K = cams.Ks(256, 256)[0]
    assert torch.allclose(K, torch.tensor([[355.5555, 0, 128], [0, 355.5555, 128], [0, 0, 1]]), atol=1e-3)


def test_random_views_are_seeded_and_turntable_spans_circle():
    a = random_views(4, torch.Generator().manual_seed(3))
    b = random_views(4, torch.Generator().manual_seed(3))
    c = random_views(4, torch.Generator().manual_seed(4))
    assert torch.equal(a.c2w, b.c2w) and not torch.equal(a.c2w, c.c2w)
    t = turntable(36)
    assert len(t) == 36 and torch.allclose(t.positions[0], canonical_views().positions[0], atol=1e-6)


def test_bad_cameras_are_rejected():
    with pytest.raises(ValueError, match="elevation"):
        orbit_cameras(90.0, 0.0)
    with pytest.raises(ValueError, match="radius"):
        orbit_cameras(10.0, 0.0, radius=0.0)
    with pytest.raises(ValueError, match="intrinsics"):
        Cameras(torch.eye(4)[None], torch.zeros(2, 4))


def _maps(H=5, W=7, value=0.0):
    return torch.full((1, 4, 12, H, W), value)


def test_splatter_activations_follow_diffsplat():
    maps = _maps()
    maps[:, :, 3] = -1.0  # scale x: -1 -> largest (0.02)
    maps[:, :, 4] = 1.0  # scale y: +1 -> smallest (0.0005)
    maps[:, :, 0] = 1.0  # red 1
    maps[:, :, 6:10] = torch.tensor([0.5, 0.1, -0.2, 0.3])[:, None, None]
    maps[:, :, 10] = -1.0  # opacity 0 -> zeroed
    g = decode_splatter(maps, canonical_views())
    assert g.num_gaussians == 4 * 5 * 7
    assert torch.allclose(g.scales[0, :, 0], torch.full((140,), 0.02))
    assert torch.allclose(g.scales[0, :, 1], torch.full((140,), 0.0005))
    assert torch.allclose(g.scales[0, :, 2], torch.full((140,), 0.5 * 0.0005 + 0.5 * 0.02))
    assert torch.allclose(g.colors[0, :, 0], torch.ones(140)) and torch.allclose(g.colors[0, :, 1], torch.full((140,), 0.5))
    assert torch.allclose(g.quats[0], torch.tensor([0.5, 0.1, -0.2, 0.3]).expand(140, 4))  # not normalised
    assert torch.all(g.opacities == 0)


def test_splatter_unprojection_depth_offset_and_order():
    H, W = 5, 7
    maps = _maps(H, W)
    maps[0, 2, 11] = 0.25  # view 2: depth 1.4 + 0.25 along its rays
    g = decode_splatter(maps, canonical_views())
    means = g.means[0].reshape(4, H, W, 3)
    # Centre pixel of view 0 (u = v = 0.5) lies on the optical axis at depth 1.4: the origin.
    assert torch.allclose(means[0, 2, 3], torch.zeros(3), atol=1e-6)
    # Corner (row 0, col 0): u = v = 0 -> x_cam = y_cam = -0.5/fx * z; OpenCV y down is world +y.
    z = 1.4
    c2w = canonical_views().c2w[0]
    p_cam = torch.tensor([-0.5 / 1.388889 * z, -0.5 / 1.388889 * z, z])
    assert torch.allclose(means[0, 0, 0], c2w[:3, :3] @ p_cam + c2w[:3, 3], atol=1e-5)
    assert means[0, 0, 0, 0] < 0 and means[0, 0, 0, 1] > 0  # top-left pixel: left of and above the axis
    # View 2's centre ray passes through the origin; depth 1.65 puts it 0.25 beyond it.
    assert torch.allclose(means[2, 2, 3].norm(), torch.tensor(0.25), atol=1e-5)
    # Flattening order: view, row, column.
    assert torch.equal(g.means[0, 2 * H * W + 2 * W + 3], means[2, 2, 3])


def test_splatter_rejects_bad_shapes():
    with pytest.raises(ValueError, match="B, V, 12"):
        decode_splatter(torch.zeros(1, 4, 11, 4, 4), canonical_views())
    with pytest.raises(ValueError, match="cameras"):
        decode_splatter(torch.zeros(1, 3, 12, 4, 4), canonical_views())
