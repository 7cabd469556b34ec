"""Splat files: the standard 3DGS PLY and the compact ``.splat`` format.

Writing goes through gsplat's exporter (CPU, no CUDA needed); reading PLY uses plyfile. Files are
written atomically, and non-finite values are rejected rather than silently dropped (gsplat's
exporter drops such rows).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .core.gaussians import (
    Gaussians,
    log_to_scale,
    logit_to_opacity,
    opacity_to_logit,
    rgb_to_sh_dc,
    scale_to_log,
    sh_dc_to_rgb,
)
from .core.io import atomic_write_bytes

FORMATS = {".ply": "ply", ".splat": "splat"}
PLY_REQUIRED = ["x", "y", "z", "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
SPLAT_RECORD = np.dtype([("pos", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])


def _single(gaussians: Gaussians) -> Gaussians:
    if gaussians.batch_size != 1:
        raise ValueError(f"A splat file holds one asset; got a batch of {gaussians.batch_size} (index it first).")
    return gaussians


def splat_bytes(gaussians: Gaussians, format: str = "ply", opacity_threshold: float = 0.0) -> bytes:
    """Encode one asset as ``ply``, ``splat`` or ``ply_compressed`` bytes.

    Gaussians with opacity <= ``opacity_threshold`` are pruned when the threshold is > 0.
    """
    from gsplat.exporter import export_splats

    g = _single(gaussians).detach().to("cpu", torch.float64)[0]
    g.validate()
    keep = g.opacities[0] > opacity_threshold if opacity_threshold > 0 else slice(None)
    means, scales, quats = g.means[0][keep], g.scales[0][keep], g.quats[0][keep]
    opac, colors = g.opacities[0][keep], g.colors[0][keep]
    if means.shape[0] == 0:
        raise ValueError("Nothing to export: the asset has no Gaussians (after opacity pruning).")
    return export_splats(
        means=means.float(), scales=scale_to_log(scales).float(), quats=quats.float(),
        opacities=opacity_to_logit(opac).float(), sh0=rgb_to_sh_dc(colors).float()[:, None, :],
        shN=torch.zeros(means.shape[0], 0, 3), format=format,
    )


def save_splat_file(gaussians: Gaussians, path: str | os.PathLike, opacity_threshold: float = 0.0) -> Path:
    """Write ``.ply`` (standard 3DGS, float32) or ``.splat`` according to the file suffix."""
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"Unknown splat file type {path.suffix!r}; use one of {sorted(FORMATS)}.")
    atomic_write_bytes(path, splat_bytes(gaussians, fmt, opacity_threshold))
    return path


def _checked(g: Gaussians, path: Path) -> Gaussians:
    try:
        g.validate()
    except ValueError as err:
        raise ValueError(f"{path.name}: {err}") from err
    return g


def load_ply(path: str | os.PathLike) -> Gaussians:
    """Read a 3DGS PLY (binary or ascii). Extra properties (normals, higher SH bands) are ignored."""
    from plyfile import PlyData

    path = Path(path)
    try:
        ply = PlyData.read(str(path))
    except Exception as err:
        raise ValueError(f"{path.name} is not a readable PLY file (truncated or corrupt?): {err}") from err
    if "vertex" not in ply:
        raise ValueError(f"{path.name} has no 'vertex' element, so it holds no Gaussians.")
    v = ply["vertex"].data
    names = set(v.dtype.names or ())
    has_dc = {"f_dc_0", "f_dc_1", "f_dc_2"} <= names
    has_rgb = {"red", "green", "blue"} <= names
    missing = [p for p in PLY_REQUIRED if p not in names]
    if missing or not (has_dc or has_rgb):
        if not (has_dc or has_rgb):
            missing.append("f_dc_0..2 (or red/green/blue)")
        raise ValueError(
            f"{path.name} is not a 3D Gaussian splat PLY: missing {', '.join(missing)}. "
            "A mesh or point-cloud PLY cannot be used as a splat."
        )
    col = lambda *ks: torch.from_numpy(np.stack([np.asarray(v[k], dtype=np.float64) for k in ks], -1))  # noqa: E731
    if has_dc:
        colors = sh_dc_to_rgb(col("f_dc_0", "f_dc_1", "f_dc_2"))
    else:
        rgb = col("red", "green", "blue")
        colors = rgb / 255.0 if v["red"].dtype == np.uint8 else rgb
    g = Gaussians(
        means=col("x", "y", "z"), scales=log_to_scale(col("scale_0", "scale_1", "scale_2")),
        quats=col("rot_0", "rot_1", "rot_2", "rot_3"), opacities=logit_to_opacity(col("opacity")[:, 0]),
        colors=colors.clamp(0, 1),
    ).to(torch.float32)
    return _checked(g, path)


def load_splat(path: str | os.PathLike) -> Gaussians:
    """Read a ``.splat`` file (32 bytes per Gaussian)."""
    path = Path(path)
    raw = path.read_bytes()
    if len(raw) == 0 or len(raw) % SPLAT_RECORD.itemsize:
        raise ValueError(f"{path.name} is not a .splat file: its size ({len(raw)} bytes) is not a positive multiple of 32.")
    rec = np.frombuffer(raw, dtype=SPLAT_RECORD)
    rgba = torch.from_numpy(rec["rgba"].astype(np.float32)) / 255.0
    g = Gaussians(
        means=torch.from_numpy(rec["pos"].copy()), scales=torch.from_numpy(rec["scale"].copy()),
        quats=(torch.from_numpy(rec["rot"].astype(np.float32)) - 128.0) / 128.0,
        opacities=rgba[:, 3], colors=rgba[:, :3],
    )
    return _checked(g, path)


def load_splat_file(path: str | os.PathLike) -> Gaussians:
    """Read ``.ply`` or ``.splat`` according to the suffix."""
    suffix = Path(path).suffix.lower()
    if suffix == ".ply":
        return load_ply(path)
    if suffix == ".splat":
        return load_splat(path)
    raise ValueError(f"Unknown splat file type {suffix!r}; use one of {sorted(FORMATS)}.")
