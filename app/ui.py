"""The studio's layout and event wiring."""

from __future__ import annotations

import gradio as gr

from . import viewer

TITLE = "R2D3 Studio"
INTRO = (
    "Reward alignment of 3D-native diffusion models with 2D rewards. "
    "This build has the engine's foundation: 3D Gaussian splats, DiffSplat's cameras and a differentiable "
    "renderer. Inspect the built-in example or upload a 3DGS `.ply` / `.splat` file."
)


def build_demo() -> gr.Blocks:
    with gr.Blocks(title=TITLE, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        with gr.Tab("Viewer"):
            with gr.Row():
                with gr.Column(scale=1):
                    upload = gr.File(label="Splat file (.ply or .splat); empty = built-in example", file_types=[".ply", ".splat"])
                    elevation = gr.Slider(-30, 60, value=10, step=1, label="Camera elevation (degrees)")
                    resolution = gr.Slider(64, 512, value=256, step=32, label="Resolution (pixels)")
                    frames = gr.Slider(12, 120, value=48, step=12, label="Turntable frames")
                    with gr.Row():
                        run = gr.Button("Render", variant="primary")
                        stop = gr.Button("Stop", variant="stop")
                    info = gr.Markdown()
                    files = gr.File(label="Downloads (PLY, .splat)", file_count="multiple")
                with gr.Column(scale=2):
                    video = gr.Video(label="Turntable: RGB | normals", autoplay=True, loop=True)
                    views = gr.Image(label="4 views (azimuth 0 / 90 / 180 / 270)", type="filepath")
                    normals = gr.Image(label="Normal maps", type="filepath")
                    model = gr.Model3D(label="Splat viewer", clear_color=(1, 1, 1, 1))
            outputs = [model, views, normals, video, files, info]
            inputs = [upload, elevation, resolution, frames]
            job = run.click(viewer.render_asset, inputs, outputs, api_name="render", concurrency_limit=2)
            first = demo.load(viewer.render_asset, inputs, outputs)
            stop.click(None, cancels=[job, first])
    return demo
