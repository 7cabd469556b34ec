"""The procedural world, its captions and its ray-cast ground truth."""

import random

import pytest
import torch

from engine.core.cameras import canonical_views
from engine.data.primitives import BOX, ELLIPSOID, FRUSTUM, Primitive, Scene, intersect
from engine.data.raycast import psnr, raycast_views, splatter_maps
from engine.data.world import (
    CATEGORIES,
    COLOR_NAMES,
    HELD_OUT,
    ObjectSpec,
    build,
    caption,
    parse,
    sample_spec,
)
from engine.render import RenderSettings, render
from engine.splatter import decode_splatter

I3 = torch.eye(3)


def test_world_has_the_promised_variety():
    assert len(CATEGORIES) >= 24 and len(COLOR_NAMES) >= 12
    assert sum(c.second_part is not None for c in CATEGORIES) >= 18
    assert len(HELD_OUT) == len(CATEGORIES)  # one held-out colour per category


def test_objects_are_deterministic_and_vary_with_the_seed():
    spec = ObjectSpec("chair", "red", None, 5)
    a, b = build(spec), build(spec)
    assert [p.center for p in a] == [p.center for p in b]
    c = build(ObjectSpec("chair", "red", None, 6))
    assert [p.center for p in a] != [p.center for p in c]


@pytest.mark.parametrize("category", [c.name for c in CATEGORIES])
def test_every_category_fits_the_views(category):
    for seed in range(3):
        alpha = raycast_views(Scene.pack(build(ObjectSpec(category, "blue", None, seed))), canonical_views(), 32)["alpha"]
        assert alpha.flatten(1).mean(1).min() > 0.02  # visible in every view
        border = alpha[..., 0, :].sum() + alpha[..., -1, :].sum() + alpha[..., :, 0].sum() + alpha[..., :, -1].sum()
        assert border == 0  # never cut by the frame


def test_training_split_never_contains_held_out_pairs():
    train = [sample_spec(i, "train") for i in range(3000)]
    assert not any((s.category, s.color) in HELD_OUT for s in train)
    held = [sample_spec(i, "held_out") for i in range(200)]
    assert all((s.category, s.color) in HELD_OUT for s in held)
    assert 0.15 < sum(s.second_color is not None for s in train) / len(train) < 0.35


def test_captions_parse_back_to_their_spec():
    rng = random.Random(0)
    for i in range(300):
        spec = sample_spec(i)
        for text in (caption(spec), caption(spec, rng)):
            got = parse(text)
            assert (got.category, got.color, got.second_color) == (spec.category, spec.color, spec.second_color), text
    assert caption(ObjectSpec("apple", "orange")) == "an orange apple"
    assert caption(ObjectSpec("mushroom", "red", "white")) == "a red mushroom with a white stem"
    assert parse("a teapot") is None


def _prim(kind, size, center=(0.0, 0.0, 0.0)):
    return Primitive(kind, center, size, I3, (1.0, 0.0, 0.0))


@pytest.mark.parametrize("kind,size,expected", [
    (ELLIPSOID, (0.3, 0.3, 0.3), 0.3), (BOX, (0.2, 0.2, 0.25), 0.25), (FRUSTUM, (0.2, 0.3, 0.2), 0.2),
])
def test_ray_hits_front_of_primitive(kind, size, expected):
    scene = Scene.pack([_prim(kind, size)])
    hit = intersect(scene, torch.tensor([[0.0, 0.0, 2.0]]), torch.tensor([[0.0, 0.0, -1.0]]))
    assert hit["hit"].item() and hit["t"].item() == pytest.approx(2.0 - expected, abs=1e-5)
    assert torch.allclose(hit["normal"][0], torch.tensor([0.0, 0.0, 1.0]), atol=1e-5)
    miss = intersect(scene, torch.tensor([[0.0, 0.0, 2.0]]), torch.tensor([[0.0, 1.0, 0.0]]))
    assert not miss["hit"].item() and miss["part"].item() == -1


def test_cone_caps_and_apex():
    scene = Scene.pack([_prim(FRUSTUM, (0.3, 0.2, 0.0))])  # pointed cone, base at y = -0.2
    down = intersect(scene, torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([[0.0, -1.0, 0.0]]))
    assert down["t"].item() == pytest.approx(0.8, abs=1e-5)  # apex at y = +0.2
    up = intersect(scene, torch.tensor([[0.1, -1.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0]]))
    assert up["t"].item() == pytest.approx(0.8, abs=1e-5)  # base cap
    assert torch.allclose(up["normal"][0], torch.tensor([0.0, -1.0, 0.0]), atol=1e-5)


def test_raycast_depth_and_normal_of_a_sphere():
    cams = canonical_views()
    r = 0.3
    out = raycast_views(Scene.pack([_prim(ELLIPSOID, (r, r, r))]), cams, 33)
    # The pixel through the image centre sees the sphere's near pole.
    centre_depth = out["depth"][:, 0, 16, 16]
    assert torch.allclose(centre_depth, torch.full((4,), 1.4 - r), atol=2e-3)
    assert torch.allclose(out["normal"][:, :, 16, 16], torch.tensor([0.0, 0.0, -1.0]).expand(4, 3), atol=0.05)


def test_splatter_ground_truth_decodes_onto_the_surface():
    cams = canonical_views()
    r = 0.3
    maps = splatter_maps(Scene.pack([_prim(ELLIPSOID, (r, r, r))]), cams, 32)
    assert maps.shape == (4, 12, 32, 32) and maps.min() >= -1 and maps.max() <= 1
    g = decode_splatter(maps[None], cams)
    visible = g.opacities[0] > 0.5
    assert visible.float().mean() > 0.1
    assert torch.allclose(g.means[0][visible].norm(dim=-1), torch.full((int(visible.sum()),), r), atol=1e-4)
    # Surfels lie flat: their thinnest axis is the surface normal (radial for a sphere).
    from engine.core.gaussians import quat_to_rotmat

    axis = quat_to_rotmat(g.quats[0][visible])[..., :, 2]
    radial = torch.nn.functional.normalize(g.means[0][visible], dim=-1)
    assert (axis * radial).sum(-1).abs().min() > 0.999


def test_rendered_ground_truth_reproduces_ray_casting():
    cams = canonical_views()
    scene = Scene.pack(build(ObjectSpec("apple", "red", None, 0)))
    target = raycast_views(scene, cams, 128, supersample=4)["rgb"]
    g = decode_splatter(splatter_maps(scene, cams, 128)[None], cams)
    out = render(g, cams, 128, settings=RenderSettings(eps2d=0.0))
    assert psnr(out.rgb[0], target) > 27.0
