"""Mesh step of the Generate and Viewer tabs: the splat on screen -> a coloured GLB to preview and download."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from engine.export import load_splat_file
from engine.mesh import save_mesh, splat_to_mesh

from .sessions import refusal, session_dir


def extract_mesh(splat_path: str | None, request: gr.Request = None, progress=gr.Progress()):
    """The splat file a tab just made -> (GLB for the 3D viewer, GLB to download, a summary)."""
    if not splat_path:
        raise refusal("There is no splat yet: generate or render one first.")
    progress(0, desc="Loading the splat")
    try:
        result = splat_to_mesh(load_splat_file(splat_path), progress=lambda done, what: progress(done, desc=what))
    except ValueError as err:
        raise refusal(f"No mesh: {err}") from err
    glb = save_mesh(result.mesh, session_dir(request, "mesh") / f"{Path(splat_path).stem}.glb")
    s = result.summary()
    info = (f"Mesh: {s['faces']:,} faces, {s['vertices']:,} vertices, "
            f"{'watertight' if s['watertight'] else 'not watertight'}, made in {s['seconds']:.1f} s"
            + (f"; {s['floaters_dropped']:,} floating pieces dropped" if s["floaters_dropped"] else "")
            + (f"; {s['outliers_ignored']:,} far-away Gaussians ignored" if s["outliers_ignored"] else "") + ".")
    return str(glb), str(glb), info
