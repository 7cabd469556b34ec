import numpy as np
import pytest
import torch
from plyfile import PlyData, PlyElement

from engine.core.gaussians import SH_C0
from engine.examples import mushroom
from engine.export import (
    load_ply,
    load_splat,
    load_splat_file,
    save_splat_file,
    splat_bytes,
)
from engine.preview import strip, turntable_frames, write_video
from tests.conftest import random_gaussians


def test_ply_round_trip_is_lossless(tmp_path):
    g = random_gaussians(300, dtype=torch.float32)
    path = save_splat_file(g, tmp_path / "a.ply")
    h = load_ply(path)
    for k, v in g.fields().items():
        torch.testing.assert_close(h.fields()[k], v, rtol=2e-6, atol=1e-7)  # float32 through log/logit/SH


def test_ply_uses_the_standard_3dgs_layout_and_gradio_splat_requirements(tmp_path):
    g = random_gaussians(10, dtype=torch.float32)
    path = save_splat_file(g, tmp_path / "a.ply")
    raw = path.read_bytes()
    header = raw[: raw.index(b"end_header\n")].decode()
    # gr.Model3D's splat viewer: 'ply\n' first, binary little endian, float props, vertex element, no faces.
    assert raw.startswith(b"ply\n") and "format binary_little_endian 1.0" in header and "element face" not in header
    props = [line.split()[-1] for line in header.splitlines() if line.startswith("property")]
    assert props == ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    assert all(line.split()[1] == "float" for line in header.splitlines() if line.startswith("property"))
    v = PlyData.read(str(path))["vertex"].data
    np.testing.assert_allclose(v["scale_0"], np.log(g.scales[0, :, 0].numpy()), rtol=1e-6)
    np.testing.assert_allclose(v["f_dc_1"], (g.colors[0, :, 1].numpy() - 0.5) / SH_C0, rtol=1e-5, atol=1e-6)
    o = g.opacities[0].numpy()
    np.testing.assert_allclose(v["opacity"], np.log(o / (1 - o)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(v["rot_0"], g.quats[0, :, 0].numpy())  # w first


def test_opacity_pruning(tmp_path):
    g = random_gaussians(100, dtype=torch.float32)
    h = load_ply(save_splat_file(g, tmp_path / "p.ply", opacity_threshold=0.5))
    assert h.num_gaussians == int((g.opacities > 0.5).sum())


def test_splat_round_trip_within_quantisation(tmp_path):
    g = random_gaussians(200, dtype=torch.float32)
    h = load_splat(save_splat_file(g, tmp_path / "a.splat"))
    assert h.num_gaussians == 200
    # .splat reorders Gaussians (Morton order): match them by position.
    order = torch.cdist(g.means[0], h.means[0]).argmin(-1)
    torch.testing.assert_close(h.means[0][order], g.means[0])
    torch.testing.assert_close(h.scales[0][order], g.scales[0], rtol=1e-6, atol=1e-7)
    assert (h.colors[0][order] - g.colors[0]).abs().max() <= 1 / 255 + 1e-6
    assert (h.opacities[0][order] - g.opacities[0]).abs().max() <= 1 / 255 + 1e-6
    qa = torch.nn.functional.normalize(g.quats[0], dim=-1)
    qb = torch.nn.functional.normalize(h.quats[0][order], dim=-1)
    assert ((qa * qb).sum(-1).abs() > 0.99).all()


def test_ply_written_by_another_tool_loads(tmp_path):
    # The original 3DGS writer: normals, 45 f_rest coefficients, ascii here to test that path too.
    n = 5
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(45)]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    data = np.zeros(n, dtype=[(k, "f4") for k in names])
    data["x"] = np.arange(n)
    data["opacity"] = 0.0  # sigmoid -> 0.5
    data["scale_0"] = data["scale_1"] = data["scale_2"] = np.log(0.01)
    data["rot_0"] = 1.0
    data["f_dc_0"] = 1.0
    for text in (False, True):
        path = tmp_path / f"inria_{text}.ply"
        PlyData([PlyElement.describe(data, "vertex")], text=text).write(str(path))
        g = load_splat_file(path)
        assert g.num_gaussians == n
        torch.testing.assert_close(g.opacities[0], torch.full((n,), 0.5))
        torch.testing.assert_close(g.colors[0, :, 0], torch.full((n,), 0.5 + SH_C0))


def test_truncated_and_foreign_files_get_clear_errors(tmp_path):
    good = save_splat_file(random_gaussians(50, dtype=torch.float32), tmp_path / "a.ply").read_bytes()
    (tmp_path / "cut.ply").write_bytes(good[: len(good) - 100])
    with pytest.raises(ValueError, match="cut.ply is not a readable PLY"):
        load_ply(tmp_path / "cut.ply")
    mesh = np.zeros(3, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    PlyData([PlyElement.describe(mesh, "vertex")]).write(str(tmp_path / "points.ply"))
    with pytest.raises(ValueError, match="not a 3D Gaussian splat PLY: missing opacity"):
        load_ply(tmp_path / "points.ply")
    (tmp_path / "junk.ply").write_bytes(b"hello")
    with pytest.raises(ValueError, match="not a readable PLY"):
        load_ply(tmp_path / "junk.ply")
    (tmp_path / "odd.splat").write_bytes(b"x" * 33)
    with pytest.raises(ValueError, match="multiple of 32"):
        load_splat(tmp_path / "odd.splat")
    with pytest.raises(ValueError, match="Unknown splat file type"):
        load_splat_file(tmp_path / "a.obj")


def test_export_rejects_non_finite_and_empty_assets(tmp_path):
    g = random_gaussians(10, dtype=torch.float32)
    g.opacities[0, 2] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        save_splat_file(g, tmp_path / "nan.ply")
    assert not (tmp_path / "nan.ply").exists()
    with pytest.raises(ValueError, match="no Gaussians"):
        splat_bytes(random_gaussians(10, dtype=torch.float32), opacity_threshold=1.0)
    with pytest.raises(ValueError, match="one asset"):
        splat_bytes(random_gaussians(10, dtype=torch.float32, batch=2))


def test_turntable_video_and_strip(tmp_path):
    import imageio.v3 as iio

    frames = turntable_frames(mushroom(2048), num_frames=6, resolution=32)
    assert len(frames) == 6 and frames[0].shape == (32, 64, 3) and frames[0].dtype == np.uint8
    assert not np.array_equal(frames[0], frames[3])  # it turns
    for name in ("t.mp4", "t.gif"):
        path = write_video(frames, tmp_path / name, fps=10)
        video = iio.imread(path)
        assert video.shape[0] == 6 and video.shape[1:3] == (32, 64)
    assert strip(torch.rand(4, 3, 8, 10)).shape == (8, 40, 3)
