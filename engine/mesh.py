"""Gaussian splat -> triangle mesh with vertex colours (GLB / OBJ / PLY through trimesh).

    python -m engine.mesh IN.ply --out OUT.glb [--resolution 128] [--views 36]

The surface is extracted the way 2DGS does it: render the splat's expected depth from many views
around it, fuse the depths into a truncated signed distance field (TSDF) on a voxel grid, and run
marching cubes (scikit-image) on it. Pixels the splat does not cover carve free space, so the
result is closed (watertight) wherever the object is; voxels no view sees stay inside. Then: small
disconnected pieces (floaters) are dropped, the mesh is simplified to at most ``max_faces`` faces
(quadric decimation), and each vertex takes the colour the renders show there.

The views keep to a band of elevations around the generation views (-10 to 20 degrees; DiffSplat's
4 views are at 10): splats made from 4 side views have sparse tops and open bottoms, and views from
high above or below would look through them into the object and carve it hollow.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from .core.cameras import DIFFSPLAT_FOCAL, Cameras, orbit_c2w
from .core.gaussians import Gaussians
from .core.io import atomic_write_bytes
from .render import render
from .render.projection import ALPHA_MIN

MESH_FORMATS = (".glb", ".obj", ".ply")
Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class MeshSettings:
    """How a splat becomes a mesh.

    resolution: voxels along the longest side of the object's bounding box.
    views: depth renders fused into the distance field.
    image_size: pixels of each render (None: as many as voxels, so a pixel is about one voxel).
    elevations: lowest and highest view elevation in degrees (views spread evenly over that band).
    alpha_threshold: pixels at least this opaque are surface, the rest free space.
    truncation: the TSDF's truncation distance, in voxels.
    min_piece: pieces with fewer faces than this fraction of the largest one are floaters.
    max_faces: the mesh is simplified to at most this many faces.
    outlier_factor: Gaussians farther from the centre than this times the robust radius (98th
        percentile of distances) are far outliers, ignored.
    max_gaussians: larger splats are refused (time and memory grow with the count).
    """

    resolution: int = 128
    views: int = 36
    image_size: int | None = None
    elevations: tuple[float, float] = (-10.0, 20.0)
    alpha_threshold: float = 0.5
    truncation: float = 3.0
    min_piece: float = 0.02
    max_faces: int = 100_000
    outlier_factor: float = 2.0
    max_gaussians: int = 2_000_000

    def __post_init__(self) -> None:
        checks = [
            (16 <= self.resolution <= 512, f"resolution must be in [16, 512] voxels, got {self.resolution}"),
            (4 <= self.views <= 256, f"views must be in [4, 256], got {self.views}"),
            (self.image_size is None or 32 <= self.image_size <= 2048, f"image_size must be in [32, 2048], got {self.image_size}"),
            (-90 < self.elevations[0] <= self.elevations[1] < 90, f"elevations must lie in (-90, 90), low to high, got {self.elevations}"),
            (0 < self.alpha_threshold < 1, f"alpha_threshold must be in (0, 1), got {self.alpha_threshold}"),
            (self.truncation >= 1, f"truncation must be at least 1 voxel, got {self.truncation}"),
            (0 <= self.min_piece < 1, f"min_piece must be in [0, 1), got {self.min_piece}"),
            (self.max_faces >= 100, f"max_faces must be at least 100, got {self.max_faces}"),
            (self.outlier_factor > 1, f"outlier_factor must be above 1, got {self.outlier_factor}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"Invalid mesh settings: {message}.")

    @property
    def pixels(self) -> int:
        return self.image_size or self.resolution


@dataclass
class MeshResult:
    mesh: "trimesh.Trimesh"  # noqa: F821  (trimesh is imported lazily)
    seconds: float
    outliers: int  # far-outlier Gaussians ignored
    pieces_dropped: int  # floaters removed
    watertight: bool

    def summary(self) -> dict:
        return {"vertices": len(self.mesh.vertices), "faces": len(self.mesh.faces), "watertight": self.watertight,
                "outliers_ignored": self.outliers, "floaters_dropped": self.pieces_dropped, "seconds": round(self.seconds, 2)}


def _visible_gaussians(g: Gaussians, settings: MeshSettings) -> tuple[Gaussians, int]:
    """One asset without invisible Gaussians and far outliers; the count of outliers dropped."""
    if g.batch_size != 1:
        raise ValueError(f"A mesh is made from one asset; got a batch of {g.batch_size} (index it first).")
    g = g.detach().to("cpu", torch.float32)
    g.validate()
    if g.num_gaussians > settings.max_gaussians:
        raise ValueError(f"The splat has {g.num_gaussians:,} Gaussians; mesh extraction takes up to "
                         f"{settings.max_gaussians:,} (time and memory grow with the count). Prune it first.")
    g = g.select(g.opacities[0] >= ALPHA_MIN)
    if g.num_gaussians == 0:
        raise ValueError("The splat has no visible Gaussians (empty, or every opacity below 1/255): there is no "
                         "surface to turn into a mesh.")
    means = g.means[0]
    centre = means.median(dim=0).values
    dist = (means - centre).norm(dim=-1)
    radius = torch.quantile(dist, 0.98) if len(dist) > 1 else dist.max()
    keep = dist <= settings.outlier_factor * radius.clamp_min(1e-6)
    return g.select(keep), int((~keep).sum())


def _frame(g: Gaussians) -> tuple[Tensor, Tensor, Tensor, float]:
    """The object's box (lo, hi), its centre, and the camera distance at which the whole object fits
    in every view."""
    means = g.means[0]
    # Gaussians show up to about 3 std beyond their centres; a robust size, so a few huge ones don't
    # blow up the box.
    reach = 3 * torch.quantile(g.scales[0].max(dim=-1).values, 0.95) if len(means) > 1 else 3 * g.scales[0].max()
    lo, hi = means.min(0).values - reach, means.max(0).values + reach
    centre = (lo + hi) / 2
    radius = float(((means - centre).norm(dim=-1) + reach).max().clamp_min(1e-4))
    return lo, hi, centre, radius / math.sin(math.atan(0.5 / DIFFSPLAT_FOCAL)) * 1.02


def mesh_cameras(centre: Tensor, distance: float, settings: MeshSettings) -> Cameras:
    """``settings.views`` cameras looking at ``centre`` from ``distance``, spread evenly over the
    elevation band (equal area per view) with golden-angle azimuths."""
    k = torch.arange(settings.views, dtype=torch.float32) + 0.5
    lo, hi = (math.sin(math.radians(e)) for e in settings.elevations)
    elevation = torch.rad2deg(torch.asin(lo + (hi - lo) * k / settings.views))
    azimuth = (k * 137.50776) % 360.0
    c2w = orbit_c2w(elevation, azimuth, distance)
    c2w[:, :3, 3] += centre
    return Cameras(c2w, torch.tensor([DIFFSPLAT_FOCAL, DIFFSPLAT_FOCAL, 0.5, 0.5]).expand(settings.views, 4).clone())


@dataclass
class _Views:
    """Depth renders as numpy arrays: the fusion runs in numpy, single-threaded on purpose (torch's
    threads spin and slow down many-fold on a busy CPU)."""

    c2w: np.ndarray  # [V, 4, 4] OpenCV camera-to-world
    intrinsics: np.ndarray  # [V, 4] normalised fx, fy, cx, cy
    size: int
    color: np.ndarray  # [V, H * W, 3] un-premultiplied colour
    depth: np.ndarray  # [V, H * W] camera z of the surface (0 where alpha < threshold: free space)

    def project(self, points: np.ndarray, view: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Camera z, flat pixel index and in-image mask of ``points`` [3, M] in one view."""
        R, t = self.c2w[view, :3, :3], self.c2w[view, :3, 3]
        d = [points[i] - t[i] for i in range(3)]
        x, y, z = (R[0, k] * d[0] + R[1, k] * d[1] + R[2, k] * d[2] for k in range(3))  # R^T (p - t)
        fx, fy, cx, cy = self.intrinsics[view] * self.size
        inv_z = 1.0 / np.maximum(z, 1e-6)
        col = np.floor(x * inv_z * fx + cx)
        row = np.floor(y * inv_z * fy + cy)
        inside = (z > 1e-6) & (col >= 0) & (col < self.size) & (row >= 0) & (row < self.size)
        index = (np.clip(row, 0, self.size - 1) * self.size + np.clip(col, 0, self.size - 1)).astype(np.int64)
        return z, index, inside


@torch.no_grad()
def _render_views(g: Gaussians, cameras: Cameras, size: int, settings: MeshSettings, progress: Progress | None) -> _Views:
    # Views per render call: bounds the projected copies (views x Gaussians) held in memory at once.
    per_call = max(1, min(len(cameras), 2_000_000 // g.num_gaussians))
    colors, depths = [], []
    for start in range(0, len(cameras), per_call):
        out = render(g, cameras[start : start + per_call], size, background=(0.0, 0.0, 0.0))
        alpha = out.alpha[0, :, 0].clamp_min(1e-6)
        colors.append((out.rgb[0] / alpha[:, None]).clamp(0, 1).permute(0, 2, 3, 1).reshape(-1, size * size, 3))
        surface = alpha >= settings.alpha_threshold
        depths.append(torch.where(surface, out.depth[0, :, 0] / alpha, 0.0).reshape(-1, size * size))
        if progress:
            progress(0.6 * min(len(cameras), start + per_call) / len(cameras), "Rendering depth views")
    return _Views(cameras.c2w.numpy().astype(np.float32), cameras.intrinsics.numpy().astype(np.float32), size,
                  torch.cat(colors).numpy(), torch.cat(depths).numpy())


def _tsdf_at(points: np.ndarray, views: _Views, trunc: float) -> np.ndarray:
    """Mean truncated signed distance (in truncation units, + outside) at ``points`` [3, M]; points
    no view sees in front of (or just behind) a surface count as inside (-1)."""
    total = np.zeros(points.shape[1], dtype=np.float32)
    weight = np.zeros(points.shape[1], dtype=np.float32)
    for v in range(len(views.c2w)):
        z, index, inside = views.project(points, v)
        depth = views.depth[v][index]
        # The distance to the surface along the ray; free space where the pixel shows no surface, and
        # outside the image (the framing keeps the whole object inside every image).
        sdf = np.where(inside & (depth > 0), (depth - z) * (1.0 / trunc), 1.0)
        seen = sdf >= -1.0
        total += np.where(seen, np.minimum(sdf, 1.0), 0.0)
        weight += seen
    return np.where(weight > 0, total / np.maximum(weight, 1), -1.0).astype(np.float32)


def _surface_samples(views: _Views) -> np.ndarray:
    """[3, K] world points of every surface pixel of every view (back-projected depth)."""
    centres = (np.arange(views.size, dtype=np.float32) + 0.5) / views.size
    out = []
    for v in range(len(views.c2w)):
        fx, fy, cx, cy = views.intrinsics[v]
        flat = np.flatnonzero(views.depth[v] > 0)
        rows, cols = np.divmod(flat, views.size)
        z = views.depth[v][flat]
        p_cam = np.stack([(centres[cols] - cx) / fx * z, (centres[rows] - cy) / fy * z, z])
        out.append(views.c2w[v, :3, :3] @ p_cam + views.c2w[v, :3, 3:])
    return np.concatenate(out, 1)


def _fuse_tsdf(views: _Views, origin: np.ndarray, shape: tuple[int, int, int], voxel: float, settings: MeshSettings) -> np.ndarray:
    """The TSDF on the voxel grid, computed exactly in a narrow band around the rendered surface and
    from a 4x coarser grid elsewhere (only the sign matters there): a few times fewer evaluations."""
    from scipy.ndimage import maximum_filter

    trunc = settings.truncation * voxel
    step = 4
    # Band: voxels within `radius` (Chebyshev) of a surface sample. Outside it, the nearest coarse grid
    # point (at most step / 2 voxels away per axis) is still farther than the truncation from every
    # sample, so it lies on the same side of the surface.
    radius = int(math.ceil(settings.truncation)) + step // 2 + 1
    ijk = np.floor((_surface_samples(views) - origin[:, None]) / voxel).astype(np.int64)
    ijk = ijk[:, ((ijk >= 0) & (ijk < np.array(shape)[:, None])).all(0)]
    occupied = np.zeros(shape, dtype=np.uint8)
    occupied[tuple(ijk)] = 1
    band = maximum_filter(occupied, size=2 * radius + 1, mode="constant") > 0

    def grid_points(*ijk: np.ndarray) -> np.ndarray:
        return (origin[:, None] + voxel * np.stack(ijk)).astype(np.float32)

    coarse_axes = [np.unique(np.append(np.arange(0, n, step), n - 1)) for n in shape]
    coarse_ijk = np.meshgrid(*coarse_axes, indexing="ij")
    coarse = _tsdf_at(grid_points(*(a.ravel() for a in coarse_ijk)), views, trunc)
    coarse = np.where(coarse > 0, 1.0, -1.0).astype(np.float32).reshape(coarse_ijk[0].shape)
    nearest = [np.abs(np.arange(n)[:, None] - a[None]).argmin(1) for n, a in zip(shape, coarse_axes)]
    tsdf = coarse[np.ix_(*nearest)]
    inband = np.nonzero(band)
    tsdf[inband] = _tsdf_at(grid_points(*inband), views, trunc)
    return tsdf


def _vertex_colors(vertices: np.ndarray, normals: np.ndarray, views: _Views, tolerance: float) -> np.ndarray:
    """[N, 4] uint8: each vertex's colour as the renders show it, weighted towards views that face it;
    vertices no view sees take the colour of the nearest seen vertex."""
    from scipy.spatial import cKDTree

    pts, nrm = vertices.T.astype(np.float32), normals.T.astype(np.float32)
    total = np.zeros((3, pts.shape[1]), dtype=np.float32)
    weight = np.zeros(pts.shape[1], dtype=np.float32)
    for v in range(len(views.c2w)):
        z, index, inside = views.project(pts, v)
        depth = views.depth[v][index]
        to_camera = views.c2w[v, :3, 3:] - pts
        facing = np.maximum((nrm * to_camera).sum(0) / np.linalg.norm(to_camera, axis=0), 0)
        # Seen: in the image, on (not behind) the surface this view shows.
        visible = inside & (depth > 0) & (z <= depth + tolerance)
        w = np.where(visible, facing**2 + 1e-3, 0.0)
        total += w * views.color[v][index].T
        weight += w
    seen = weight > 0
    color = (total / np.maximum(weight, 1e-12)).T
    if seen.any() and not seen.all():
        _, nearest = cKDTree(vertices[seen]).query(vertices[~seen])
        color[~seen] = color[seen][nearest]
    rgba = np.full((len(vertices), 4), 255, dtype=np.uint8)
    rgba[:, :3] = (np.clip(color, 0, 1) * 255 + 0.5).astype(np.uint8)
    return rgba


def _drop_floaters(mesh, min_piece: float):
    """The mesh without pieces smaller than ``min_piece`` of the largest one, and how many went
    (connected faces labelled in one pass: marching cubes can leave thousands of specks)."""
    from trimesh.graph import connected_component_labels

    labels = connected_component_labels(mesh.face_adjacency, node_count=len(mesh.faces))
    sizes = np.bincount(labels)
    small = sizes < min_piece * sizes.max()
    if not small.any():
        return mesh, 0
    mesh.update_faces(~small[labels])
    mesh.remove_unreferenced_vertices()
    return mesh, int(small.sum())


def _simplify(mesh, max_faces: int):
    """Quadric decimation to at most ``max_faces`` faces, without the doubled faces it sometimes leaves
    where it folds a sheet onto itself (each such pair makes its edges non-manifold)."""
    import trimesh

    simple = mesh.simplify_quadric_decimation(face_count=max_faces)
    key = np.sort(simple.faces, axis=1)
    _, inverse, counts = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    single = counts[inverse.ravel()] == 1
    return trimesh.Trimesh(simple.vertices, simple.faces[single], process=True)


def splat_to_mesh(gaussians: Gaussians, settings: MeshSettings = MeshSettings(), progress: Progress | None = None) -> MeshResult:
    """One asset's Gaussians -> a coloured triangle mesh (see the module docstring for the method).

    Raises ValueError with a message a person can act on when the splat holds no surface.
    """
    import trimesh
    from skimage.measure import marching_cubes

    t0 = time.perf_counter()
    g, outliers = _visible_gaussians(gaussians, settings)
    lo, hi, centre, distance = _frame(g)
    views = _render_views(g, mesh_cameras(centre, distance, settings), settings.pixels, settings, progress)
    if not (views.depth > 0).any():
        raise ValueError(f"No view shows an opaque surface (alpha >= {settings.alpha_threshold}): the splat is too "
                         "transparent or too sparse to form a mesh.")

    if progress:
        progress(0.65, "Fusing depth into a distance field")
    voxel = float((hi - lo).max()) / settings.resolution
    pad = int(math.ceil(settings.truncation)) + 1
    origin = (lo - pad * voxel).numpy()
    shape = tuple(int(math.ceil(float(e) / voxel)) + 2 * pad for e in (hi - lo))
    tsdf = _fuse_tsdf(views, origin, shape, voxel, settings)
    tsdf = np.pad(tsdf, 1, constant_values=1.0)  # free space all round: every surface closes
    if tsdf.min() >= 0:
        raise ValueError("The fused depth encloses no volume: the splat is too thin or too sparse to form a mesh.")

    if progress:
        progress(0.8, "Marching cubes")
    verts, faces, _, _ = marching_cubes(tsdf, level=0.0, spacing=(voxel,) * 3, allow_degenerate=False)
    verts = verts + (origin - voxel)  # the pad above shifted the grid by one voxel
    mesh = trimesh.Trimesh(verts, faces, process=True)
    mesh, dropped = _drop_floaters(mesh, settings.min_piece)
    if len(mesh.faces) > settings.max_faces:
        if progress:
            progress(0.88, f"Simplifying {len(mesh.faces):,} faces")
        mesh = _simplify(mesh, settings.max_faces)
    if progress:
        progress(0.94, "Colouring vertices")
    mesh.visual.vertex_colors = _vertex_colors(np.asarray(mesh.vertices), np.asarray(mesh.vertex_normals), views,
                                               tolerance=settings.truncation * voxel)
    return MeshResult(mesh, time.perf_counter() - t0, outliers, dropped, bool(mesh.is_watertight))


def mesh_bytes(mesh, file_type: str) -> bytes:
    """``glb``, ``obj`` or ``ply`` bytes of a mesh, vertex colours included (trimesh's exporters)."""
    data = mesh.export(file_type=file_type)
    return data.encode() if isinstance(data, str) else data


def save_mesh(mesh, path: str | os.PathLike) -> Path:
    """Write ``.glb``, ``.obj`` or ``.ply`` by the suffix, atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MESH_FORMATS:
        raise ValueError(f"Unknown mesh file type {suffix or '(none)'!r}; use one of {', '.join(MESH_FORMATS)}.")
    if len(mesh.faces) == 0:
        raise ValueError("The mesh has no faces; nothing to write.")
    atomic_write_bytes(path, mesh_bytes(mesh, suffix[1:]))
    return path


def main(argv=None) -> None:
    from .export import load_splat_file

    p = argparse.ArgumentParser(description="Turn a 3D Gaussian splat (.ply / .splat) into a coloured mesh (.glb / .obj / .ply).")
    p.add_argument("input", type=Path, help="a 3DGS .ply or .splat file")
    p.add_argument("--out", type=Path, required=True, help="the mesh file: .glb, .obj or .ply")
    p.add_argument("--resolution", type=int, default=MeshSettings.resolution, help="voxels along the longest side")
    p.add_argument("--views", type=int, default=MeshSettings.views, help="depth views fused")
    p.add_argument("--max-faces", type=int, default=MeshSettings.max_faces)
    args = p.parse_args(argv)
    if args.out.suffix.lower() not in MESH_FORMATS:
        p.error(f"--out must end in {', '.join(MESH_FORMATS)}, got {args.out.name!r}.")
    try:
        settings = MeshSettings(resolution=args.resolution, views=args.views, max_faces=args.max_faces)
        result = splat_to_mesh(load_splat_file(args.input), settings)
    except (FileNotFoundError, ValueError) as err:
        p.exit(2, f"error: {err}\n")
    save_mesh(result.mesh, args.out)
    print(json.dumps({"out": str(args.out)} | result.summary()))


if __name__ == "__main__":
    main()
