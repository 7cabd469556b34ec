import pytest
import torch

from engine.core.cameras import canonical_views, orbit_cameras
from engine.core.gaussians import Gaussians
from engine.render import RenderSettings, render
from engine.render.native import composite_native, native_available
from engine.render.projection import Projected, bin_tiles, project
from engine.render.torch_core import composite_torch
from tests.conftest import random_gaussians
from tests.reference import composite_dense

CORES = [pytest.param(composite_native, id="native"), pytest.param(composite_torch, id="pytorch")]
needs_native = pytest.mark.skipif(not native_available(), reason="no C compiler for the native core")


def _bg(C, dtype):
    return torch.tensor([1.0, 1, 1, 0, 0, 0, 0], dtype=dtype).expand(C, 7)


@pytest.fixture(params=[(20, 16, 8), (33, 17, 16)], ids=["20x16-tile8", "33x17-tile16"])
def scene(request):
    W, H, ts = request.param
    g = random_gaussians(80)
    proj = project(g, canonical_views(), W, H)
    return proj, W, H, ts


@pytest.mark.parametrize("core", CORES)
def test_cores_match_brute_force_values_and_gradients(core, scene):
    if core is composite_native and not native_available():
        pytest.skip("native core unavailable")
    proj, W, H, ts = scene
    bins = bin_tiles(proj, W, H, ts)
    bg = _bg(4, torch.float64)
    leaves = [t.detach().requires_grad_() for t in (proj.means2d, proj.conics, proj.opacities, proj.features)]
    weights = torch.randn(4, H, W, 7, dtype=torch.float64), torch.randn(4, H, W, dtype=torch.float64)

    def run(fn):
        for t in leaves:
            t.grad = None
        feats, alpha = fn(*leaves)
        ((feats * weights[0]).sum() + (alpha * weights[1]).sum()).backward()
        return feats.detach(), alpha.detach(), [t.grad.clone() for t in leaves]

    ref = run(lambda *x: composite_dense(Projected(*x, proj.depths, proj.extents), bg, W, H))
    got = run(lambda *x: core(*x, bg, bins, W, H))
    torch.testing.assert_close(got[0], ref[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(got[1], ref[1], rtol=0, atol=1e-12)
    for g_got, g_ref in zip(got[2], ref[2]):
        torch.testing.assert_close(g_got, g_ref, rtol=1e-9, atol=1e-10)


def test_native_binning_matches_pytorch_binning(scene):
    from engine.render.native import bin_fill

    if not native_available():
        pytest.skip("native core unavailable")
    proj, W, H, ts = scene
    a, b = bin_tiles(proj, W, H, ts), bin_tiles(proj, W, H, ts, fill=bin_fill)
    assert torch.equal(a.offsets, b.offsets) and torch.equal(a.flat_ids, b.flat_ids)


@pytest.mark.parametrize("core", ["native", "pytorch"])
def test_render_gradients_match_finite_differences(core):
    if core == "native" and not native_available():
        pytest.skip("native core unavailable")
    g = random_gaussians(12)
    cams = orbit_cameras(torch.tensor([10.0, 30.0]), torch.tensor([20.0, 200.0]))
    settings = RenderSettings(core=core)
    w = [torch.randn(1, 2, c, 12, 12, dtype=torch.float64) for c in (3, 1, 1, 3)]

    def loss(means, scales, quats, opacities, colors):
        out = render(Gaussians(means, scales, quats, opacities, colors), cams, 12, settings=settings)
        return sum((o * wi).sum() for o, wi in zip((out.rgb, out.alpha, out.depth, out.normal), w))

    inputs = [t.clone().requires_grad_() for t in g.fields().values()]
    assert torch.autograd.gradcheck(loss, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_cores_agree_in_float32_on_a_dense_scene():
    if not native_available():
        pytest.skip("native core unavailable")
    from bench.scenes import dust

    g = dust(2048)
    a = render(g, canonical_views(), 64, settings=RenderSettings(core="native"))
    b = render(g, canonical_views(), 64, settings=RenderSettings(core="pytorch"))
    for x, y in zip((a.rgb, a.alpha, a.depth, a.normal), (b.rgb, b.alpha, b.depth, b.normal)):
        torch.testing.assert_close(x, y, rtol=0, atol=2e-4)


def test_flat_surfel_facing_camera_gives_expected_depth_and_normal():
    # One large flat Gaussian at the origin, its shortest axis along z: facing the azimuth-0 camera.
    g = Gaussians(
        means=torch.zeros(1, 3), scales=torch.tensor([[0.5, 0.5, 0.001]]), quats=torch.tensor([[1.0, 0, 0, 0]]),
        opacities=torch.tensor([0.99]), colors=torch.tensor([[0.2, 0.4, 0.6]]),
    )
    out = render(g, orbit_cameras(0.0, 0.0)[None], 32)
    a = out.alpha[0, 0, 0, 16, 16]
    assert a > 0.95
    assert torch.allclose(out.depth[0, 0, 0, 16, 16] / a, torch.tensor(1.4), atol=1e-4)
    assert torch.allclose(out.normal[0, 0, :, 16, 16] / a, torch.tensor([0.0, 0.0, -1.0]), atol=1e-4)
    assert torch.allclose(out.rgb[0, 0, :, 16, 16], a * torch.tensor([0.2, 0.4, 0.6]) + (1 - a), atol=1e-5)
    # seen from behind, the normal still faces the camera
    back = render(g, orbit_cameras(0.0, 180.0)[None], 32)
    assert torch.allclose(back.normal[0, 0, :, 16, 16] / back.alpha[0, 0, 0, 16, 16], torch.tensor([0.0, 0.0, -1.0]), atol=1e-4)


def test_background_is_configurable_and_empty_pixels_show_it():
    g = random_gaussians(5, dtype=torch.float32)
    out = render(g, canonical_views(), 16, background=(0.0, 0.5, 1.0))
    empty = out.alpha[0, :, 0] == 0
    assert empty.any()
    assert torch.allclose(out.rgb[0].permute(0, 2, 3, 1)[empty], torch.tensor([0.0, 0.5, 1.0]).expand(int(empty.sum()), 3))


def test_batch_of_assets_with_per_asset_cameras_equals_separate_renders():
    g = random_gaussians(40, dtype=torch.float32, batch=2)
    cams = orbit_cameras(torch.tensor([[10.0, 20.0, 30.0], [0.0, 5.0, 15.0]]), torch.tensor([[0.0, 120.0, 240.0], [45.0, 90.0, 300.0]]))
    both = render(g, cams, 24)
    for b in range(2):
        one = render(g[b], cams[b], 24)
        torch.testing.assert_close(both.rgb[b], one.rgb[0])
        torch.testing.assert_close(both.normal[b], one.normal[0])


def test_projection_matches_gsplat_reference_implementation():
    from gsplat.cuda._torch_impl import (
        _fully_fused_projection,
        _quat_scale_to_covar_preci,
    )

    g = random_gaussians(50)
    cams = canonical_views()
    W, H = 64, 48
    ours = project(g, cams, W, H, eps2d=0.3)
    covars, _ = _quat_scale_to_covar_preci(g.quats[0], g.scales[0], compute_preci=False)
    radii, means2d, depths, conics, _ = _fully_fused_projection(
        g.means[0], covars, cams.viewmats().double(), cams.Ks(W, H).double(), W, H, eps2d=0.3
    )
    valid = (ours.extents > 0).all(-1)
    assert valid.sum() > 100
    assert (radii[valid] > 0).all()  # gsplat keeps everything we keep
    torch.testing.assert_close(ours.means2d[valid], means2d[valid])
    torch.testing.assert_close(ours.conics[valid], conics[valid])
    torch.testing.assert_close(ours.depths[valid], depths[valid])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA for gsplat")
def test_gsplat_backend_matches_torch_backend_on_cuda():
    from bench.scenes import shell

    g = shell(4096)
    cams = canonical_views()
    a = render(g, cams, 128, backend="torch")
    b = render(g.to("cuda"), cams, 128, backend="gsplat")
    for x, y in zip((a.rgb, a.alpha, a.depth, a.normal), (b.rgb, b.alpha, b.depth, b.normal)):
        torch.testing.assert_close(y.cpu(), x, rtol=0, atol=2e-3)


# --- bad input: a clear error or a defined result ---------------------------------------------

def test_non_finite_parameters_are_rejected():
    g = random_gaussians(10, dtype=torch.float32)
    g.means[0, 3, 1] = float("nan")
    with pytest.raises(ValueError, match="means has non-finite"):
        render(g, canonical_views(), 16)
    g = random_gaussians(10, dtype=torch.float32)
    g.scales[0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="scales has non-finite"):
        render(g, canonical_views(), 16)


def test_negative_scale_and_logit_opacity_are_rejected():
    g = random_gaussians(4, dtype=torch.float32)
    g.scales[0, 0, 0] = -0.1
    with pytest.raises(ValueError, match="scales must be >= 0"):
        render(g, canonical_views(), 16)
    g = random_gaussians(4, dtype=torch.float32)
    g.opacities[0, 0] = 3.0
    with pytest.raises(ValueError, match="opacities must lie in"):
        render(g, canonical_views(), 16)


@pytest.mark.parametrize("core", ["native", "pytorch"])
def test_zero_gaussians_render_the_background(core):
    if core == "native" and not native_available():
        pytest.skip("native core unavailable")
    g = random_gaussians(0, dtype=torch.float32)
    out = render(g, canonical_views(), 16, settings=RenderSettings(core=core))
    assert torch.all(out.rgb == 1) and torch.all(out.alpha == 0) and torch.all(out.depth == 0)


def test_degenerate_scales_give_finite_images_and_gradients():
    g = random_gaussians(30, dtype=torch.float32)
    g.scales[0, :10] = 0.0  # points: only eps2d keeps them visible
    g.scales[0, 10:20, 2] = 0.0  # perfectly flat
    params = [t.requires_grad_() for t in g.fields().values()]
    out = render(g, canonical_views(), 32)
    (out.rgb.sum() + out.normal.sum()).backward()
    assert all(torch.isfinite(t).all() for t in (out.rgb, out.alpha, out.depth, out.normal))
    assert all(torch.isfinite(p.grad).all() for p in params)


def test_camera_inside_the_object_gives_a_finite_image():
    g = random_gaussians(200, dtype=torch.float32)
    inside = orbit_cameras(10.0, 0.0, radius=0.05)[None]
    out = render(g, inside, 32)
    assert all(torch.isfinite(t).all() for t in (out.rgb, out.alpha, out.depth, out.normal))
    assert out.alpha.max() > 0  # Gaussians in front of the camera are still drawn


def test_bad_sizes_and_backends_are_rejected():
    g = random_gaussians(4, dtype=torch.float32)
    with pytest.raises(ValueError, match="width"):
        render(g, canonical_views(), 0)
    with pytest.raises(ValueError, match="backend"):
        render(g, canonical_views(), 8, backend="opengl")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="gsplat backend needs CUDA"):
            render(g, canonical_views(), 8, backend="gsplat")
    with pytest.raises(ValueError, match="background"):
        render(g, canonical_views(), 8, background=(1.0, 1.0))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_leaving_out_invisible_gaussians_changes_no_pixel_and_no_gradient(monkeypatch, dtype):
    """render() projects only Gaussians whose opacity can reach 1/255 (a generated splat: about 3 in 4 cannot);
    the images and every gradient must be what rendering all of them gives, bit for bit."""
    import sys

    module = sys.modules["engine.render"]
    g = random_gaussians(300, dtype=dtype, batch=3)
    g.opacities = g.opacities.clone()
    g.opacities[0, ::2] = 0.5 / 255  # asset 0: half invisible, asset 1: a third, asset 2: none
    g.opacities[1, ::3] = 0.0
    weights = torch.randn(3, 4, 8, 24, 24, dtype=dtype)

    def run():
        leaves = g.map(lambda t: t.detach().clone().requires_grad_())
        out = render(leaves, canonical_views(), 24)
        maps = torch.cat([out.rgb, out.alpha, out.depth, out.normal], 2)
        (maps * weights).sum().backward()
        return maps.detach(), {k: v.grad for k, v in leaves.fields().items()}

    culled, culled_grads = run()
    monkeypatch.setattr(module, "visible_only", lambda gaussians: gaussians)
    full, full_grads = run()
    assert torch.equal(culled, full) and culled[:, :, 3].max() > 0.5
    for name, grad in full_grads.items():
        assert torch.equal(culled_grads[name], grad), name
    assert (full_grads["colors"][0, ::2] == 0).all()  # the left-out ones get no gradient either way
