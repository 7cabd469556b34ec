"""Splat -> mesh: geometry, colours, floaters, bad inputs, files and the commands."""

import json
import math

import numpy as np
import pytest
import torch

pytest.importorskip("skimage")
trimesh = pytest.importorskip("trimesh")

from engine.core.gaussians import Gaussians, quats_from_normals  # noqa: E402
from engine.mesh import MeshSettings, main, save_mesh, splat_to_mesh  # noqa: E402

FAST = MeshSettings(resolution=48, views=16)
RADIUS = 0.3
RED, BLUE = (0.9, 0.1, 0.1), (0.1, 0.2, 0.9)


def surfel_sphere(n: int = 4000, radius: float = RADIUS, centre=(0.0, 0.0, 0.0)) -> Gaussians:
    """Flat Gaussians covering a sphere: red above the equator, blue below."""
    k = torch.arange(n, dtype=torch.float32) + 0.5
    y = 1 - 2 * k / n
    r = torch.sqrt(1 - y * y)
    phi = k * math.pi * (3 - math.sqrt(5))
    normals = torch.stack([r * torch.cos(phi), y, r * torch.sin(phi)], -1)
    spacing = math.sqrt(4 * math.pi / n) * radius
    colors = torch.where(y[:, None] > 0, torch.tensor(RED), torch.tensor(BLUE))
    return Gaussians(
        means=normals * radius + torch.tensor(centre), scales=torch.tensor([spacing, spacing, 0.1 * spacing]).expand(n, 3).clone(),
        quats=quats_from_normals(normals), opacities=torch.full((n,), 0.9), colors=colors,
    )


@pytest.fixture(scope="module")
def sphere_mesh():
    return splat_to_mesh(surfel_sphere(), FAST)


def test_sphere_of_surfels_becomes_a_closed_sphere(sphere_mesh):
    mesh = sphere_mesh.mesh
    radii = np.linalg.norm(mesh.vertices, axis=1)
    # The splat's visible edge lies about a surfel radius (0.017) beyond the centres; a voxel is 0.0125.
    assert abs(np.median(radii) - RADIUS) < 0.02
    assert np.abs(radii - RADIUS).max() < 0.035
    assert sphere_mesh.watertight and mesh.is_watertight and mesh.volume > 0  # closed, outward normals
    assert mesh.volume == pytest.approx(4 / 3 * math.pi * np.median(radii) ** 3, rel=0.05)  # solid, not a shell
    assert len(mesh.split(only_watertight=False)) == 1


def test_vertex_colours_follow_the_splat(sphere_mesh):
    mesh = sphere_mesh.mesh
    colors = np.asarray(mesh.visual.vertex_colors)[:, :3].astype(float) / 255
    y = mesh.vertices[:, 1]
    away = np.abs(y) > 0.05  # off the equator, where the two colours blend
    assert np.abs(colors[away & (y > 0)] - RED).max(axis=1).mean() < 0.05
    assert np.abs(colors[away & (y < 0)] - BLUE).max(axis=1).mean() < 0.05


def test_floaters_and_far_outliers_are_dropped():
    sphere = surfel_sphere()
    speck = surfel_sphere(60, radius=0.02, centre=(0.42, 0.0, 0.0))  # a small blob beside the object
    far = Gaussians(means=torch.tensor([[40.0, 0, 0], [0, -25.0, 3], [9.0, 9.0, 9.0]]), scales=torch.full((3, 3), 0.05),
                    quats=torch.tensor([[1.0, 0, 0, 0]]).expand(3, 4), opacities=torch.full((3,), 0.9), colors=torch.rand(3, 3))
    result = splat_to_mesh(Gaussians.cat([sphere, speck, far]), FAST)
    assert result.outliers == 3 and result.pieces_dropped >= 1
    radii = np.linalg.norm(result.mesh.vertices, axis=1)
    assert radii.max() < RADIUS + 0.035  # only the sphere is left, at full detail
    assert len(result.mesh.split(only_watertight=False)) == 1


def test_large_meshes_are_simplified_to_the_face_budget():
    result = splat_to_mesh(surfel_sphere(), MeshSettings(resolution=48, views=16, max_faces=2000))
    assert 1500 <= len(result.mesh.faces) <= 2000 and result.mesh.is_watertight
    assert abs(np.median(np.linalg.norm(result.mesh.vertices, axis=1)) - RADIUS) < 0.02


def _with(g: Gaussians, **fields) -> Gaussians:
    return Gaussians(**(g.fields() | fields))


@pytest.mark.parametrize("make,message", [
    (lambda g: g.select(torch.zeros(g.num_gaussians, dtype=torch.bool)), "no visible Gaussians"),
    (lambda g: _with(g, opacities=torch.full_like(g.opacities, 1e-3)), "no visible Gaussians"),
    (lambda g: _with(g, opacities=torch.full_like(g.opacities, 0.02)), "too transparent"),
    (lambda g: _with(g, means=g.means.clone().index_fill_(1, torch.tensor([5]), float("nan"))), "non-finite"),
    (lambda g: Gaussians.cat([g, g], dim=0), "batch of 2"),
])
def test_bad_splats_get_a_clear_message(make, message):
    with pytest.raises(ValueError, match=message):
        splat_to_mesh(make(surfel_sphere(500)), FAST)


def test_huge_splats_are_refused_before_any_work():
    with pytest.raises(ValueError, match="4,000 Gaussians; mesh extraction takes up to 1,000"):
        splat_to_mesh(surfel_sphere(), MeshSettings(resolution=48, views=16, max_gaussians=1000))


def test_bad_settings_are_explained():
    with pytest.raises(ValueError, match="resolution must be in"):
        MeshSettings(resolution=4)
    with pytest.raises(ValueError, match="views must be in"):
        MeshSettings(views=1)


@pytest.mark.parametrize("suffix", [".glb", ".obj", ".ply"])
def test_mesh_files_load_as_one_coloured_mesh(sphere_mesh, tmp_path, suffix):
    path = save_mesh(sphere_mesh.mesh, tmp_path / f"asset{suffix}")
    scene = trimesh.load(path)
    geometries = list(scene.geometry.values()) if isinstance(scene, trimesh.Scene) else [scene]
    assert len(geometries) == 1
    loaded = geometries[0]
    assert len(loaded.faces) == len(sphere_mesh.mesh.faces)
    assert loaded.visual.kind == "vertex"
    colors = np.asarray(loaded.visual.vertex_colors)[:, :3]
    assert np.abs(colors.astype(int) - np.asarray(sphere_mesh.mesh.visual.vertex_colors)[:, :3]).max() <= 1
    assert not list(tmp_path.glob(".*tmp"))  # written atomically, nothing left behind


def test_save_mesh_refuses_unknown_types(sphere_mesh, tmp_path):
    with pytest.raises(ValueError, match="Unknown mesh file type '.stl'"):
        save_mesh(sphere_mesh.mesh, tmp_path / "asset.stl")
    assert not any(tmp_path.iterdir())


def test_mesh_command_converts_a_splat_file(tmp_path, capsys):
    from engine.export import save_splat_file

    ply = save_splat_file(surfel_sphere(), tmp_path / "sphere.ply")
    main([str(ply), "--out", str(tmp_path / "sphere.glb"), "--resolution", "48", "--views", "16"])
    summary = json.loads(capsys.readouterr().out)
    assert summary["faces"] > 1000 and summary["watertight"]
    assert len(trimesh.load(tmp_path / "sphere.glb", force="mesh").faces) == summary["faces"]


def test_mesh_command_explains_bad_input(tmp_path, capsys):
    bad = tmp_path / "points.ply"
    bad.write_bytes(b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float y\nproperty float z\nend_header\n0 0 0\n")
    with pytest.raises(SystemExit) as exit_info:
        main([str(bad), "--out", str(tmp_path / "out.glb")])
    assert exit_info.value.code == 2
    assert "not a 3D Gaussian splat PLY" in capsys.readouterr().err
    assert not (tmp_path / "out.glb").exists()
    with pytest.raises(SystemExit):
        main([str(bad), "--out", str(tmp_path / "out.stl")])


def test_generate_command_writes_a_glb_with_mesh(tmp_path, capsys, monkeypatch):
    import engine.mesh
    from engine.generate import main as generate_main

    monkeypatch.setattr(engine.mesh, "splat_to_mesh", lambda g, real=engine.mesh.splat_to_mesh: real(g, FAST))  # quicker
    generate_main(["--prompt", "a red mushroom with a white stem", "--steps", "4", "--frames", "6", "--resolution", "64",
                   "--mesh", "--out", str(tmp_path)])
    files = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    mesh = trimesh.load(files["glb"], force="mesh")
    assert files["glb"].endswith("asset.glb") and len(mesh.faces) > 1000
    colors = np.asarray(mesh.visual.vertex_colors)[:, :3].astype(float)
    assert (colors[:, 0] > colors[:, 1] + 60).mean() > 0.2  # a red cap
