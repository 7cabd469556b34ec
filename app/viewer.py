"""Viewer tab handlers: load a splat (the built-in example or an upload), render its previews."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import imageio.v3 as iio
import torch

from engine.cameras import orbit_cameras
from engine.examples import mushroom
from engine.export import load_splat_file, save_splat_file
from engine.preview import turntable_frames, view_strips, write_video
from engine.render import render

from .sessions import session_dir

MAX_UPLOAD_MB = 256
MAX_GAUSSIANS = 2_000_000
EXAMPLE = "Built-in example (mushroom)"


def _asset(upload: str | None):
    if not upload:
        return mushroom(), EXAMPLE
    path = Path(upload)
    if path.suffix.lower() not in (".ply", ".splat"):
        raise gr.Error(f"Please upload a .ply or .splat Gaussian splat file (got {path.suffix or 'no extension'}).")
    size_mb = path.stat().st_size / 2**20
    if size_mb > MAX_UPLOAD_MB:
        raise gr.Error(f"{path.name} is {size_mb:.0f} MB; the viewer accepts files up to {MAX_UPLOAD_MB} MB.")
    try:
        g = load_splat_file(path)
    except ValueError as err:
        raise gr.Error(str(err)) from err
    if g.num_gaussians > MAX_GAUSSIANS:
        raise gr.Error(f"{path.name} has {g.num_gaussians:,} Gaussians; the CPU viewer takes up to {MAX_GAUSSIANS:,}.")
    return g, path.name


def render_asset(upload, elevation: float, resolution: int, frames: int, request: gr.Request = None, progress=gr.Progress()):
    """Render previews and files for the chosen asset; returns paths for every output component."""
    progress(0, desc="Loading the splat")
    gaussians, name = _asset(upload)
    out_dir = session_dir(request, "view")
    resolution, frames = int(resolution), int(frames)

    progress(0.1, desc="Rendering 4 views")
    azimuth = torch.tensor([0.0, 90.0, 180.0, 270.0])
    cams = orbit_cameras(torch.full_like(azimuth, float(elevation)), azimuth)
    with torch.no_grad():
        out = render(gaussians, cams, resolution)
    rgb_strip, normal_strip = view_strips(out)
    iio.imwrite(out_dir / "views.png", rgb_strip)
    iio.imwrite(out_dir / "normals.png", normal_strip)

    def tick(done: int, total: int) -> None:
        progress(0.2 + 0.7 * done / total, desc=f"Turntable frame {done}/{total}")

    video = turntable_frames(gaussians, frames, resolution, elevation=float(elevation), progress=tick)
    write_video(video, out_dir / "turntable.mp4")

    progress(0.95, desc="Writing splat files")
    ply = save_splat_file(gaussians, out_dir / "asset.ply")
    splat = save_splat_file(gaussians, out_dir / "asset.splat")
    visible = int((out.alpha > 0.5).sum())
    info = (
        f"**{name}**: {gaussians.num_gaussians:,} Gaussians, rendered at {resolution}×{resolution}; "
        f"{visible:,} opaque pixels over the 4 views."
    )
    return str(ply), str(out_dir / "views.png"), str(out_dir / "normals.png"), str(out_dir / "turntable.mp4"), [str(ply), str(splat)], info
