"""The studio's layout and event wiring."""

from __future__ import annotations

import gradio as gr

from . import compare, finetune, generate, mesh, sessions, theory, viewer

TITLE = "R2D3 Studio"
INTRO = (
    "Reward alignment of 3D-native diffusion models with 2D rewards. "
    "**Generate** turns a prompt into a 3D Gaussian splat with the embedded base model (trained here on a "
    "procedural world of 24 object kinds in 12 colours; it runs on a CPU), or with DiffSplat's released models "
    "when the studio is started with their weights. **Viewer** inspects any 3DGS "
    "`.ply` / `.splat` file. Both then turn the splat into a coloured mesh (GLB) to preview and download.\n\n"
    "**Finetune** trains a LoRA on the embedded model with a reward (live curve; the run then appears in the LoRA "
    "lists), **Compare** puts one prompt through up to 4 models (the base and LoRAs) side by side with their scores and "
    "curves, and **Theory** runs the alignment methods on a small 2-D world whose optimum is known."
)
# The 3D viewers have explicit heights: gradio lays out a hidden tab at zero size, and without one a Model3D's
# frame depends on its content being mounted (a 2 px frame when it is not, see _reshow_mesh).
VIEWER_HEIGHT = 420
# gradio's splat viewer (gsplat.js) ignores Model3D's clear_color and paints its canvas' CSS background black;
# the canvas itself is transparent where there is no splat, so a white CSS background gives the page's white.
# Its download button would give the viewer's turned copy (viewer.viewer_copy): the files to download are the
# tab's PLY / .splat, in our convention, so that button is hidden.
CSS = """
.splat-viewer canvas { background: #ffffff !important; }
.splat-viewer a[data-testid="model3d-download-link"] { display: none !important; }
"""


class Studio(gr.Blocks):
    """gr.Blocks whose launch() always adds the studio's CSS: gradio 6 takes css in launch() only, and app.py,
    the tests and scripts each launch the demo their own way."""

    def launch(self, *args, **kwargs):
        kwargs["css"] = CSS + "\n" + (kwargs.get("css") or "")
        return super().launch(*args, **kwargs)


def _reshow_mesh(tab: gr.Tab, preview: gr.Model3D, glb: gr.File) -> None:
    """Opening ``tab`` gives its mesh preview its GLB again (cleared, then set from the GLB download).

    gradio 6.31's Model3D drops a GLB it is given while its tab is hidden (the Viewer tab's on-load mesh arrives
    while Generate is shown; a generated mesh arrives after the user moved to another tab): the preview keeps
    the value (its download button shows) but its babylon viewer is never mounted, so no canvas, a 2 px frame.
    Setting the same value again is ignored (the viewer keys on the file), hence the clear first."""
    tab.select(lambda: None, None, preview, queue=False, api_visibility="private").then(
        lambda path: path, glb, preview, queue=False, api_visibility="private")


def build_demo() -> gr.Blocks:
    with Studio(title=TITLE, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        with gr.Tab("Generate") as g_tab:
            with gr.Row():
                with gr.Column(scale=1):
                    choices = generate.model_choices()
                    g_model_name = gr.Dropdown(choices, value="tiny", label="Model", visible=len(choices) > 1,
                                               info="DiffSplat variants appear when their weights are found (python app.py --diffsplat DIR)")
                    with gr.Row():
                        g_lora = gr.Dropdown(generate.lora_choices(), value="base", label="LoRA", scale=4, allow_custom_value=True,
                                             info="base, shipped runs, runs made here (Finetune tab), uploads")
                        # allow_custom_value: the list grows while the page is open; the handler checks the name
                        g_lora_refresh = gr.Button("↻", scale=0, min_width=40)
                    prompt = gr.Textbox(label="Prompt", placeholder="a red mushroom with a white stem", max_lines=2)
                    seed = gr.Number(value=0, precision=0, label="Seed")
                    steps = gr.Slider(4, 50, value=20, step=1, label="Denoising steps")
                    guidance = gr.Slider(1, 10, value=generate.default_guidance(), step=0.5, label="Guidance scale (CFG)")
                    g_frames = gr.Slider(12, 96, value=36, step=12, label="Turntable frames")
                    with gr.Row():
                        g_run = gr.Button("Generate", variant="primary")
                        g_stop = gr.Button("Stop", variant="stop")
                    g_info = gr.Markdown()
                    g_file = gr.File(label="Download PLY")
                    g_glb = gr.File(label="Download GLB (mesh)")
                    g_mesh_info = gr.Markdown()
                    gr.Examples(generate.EXAMPLES, [prompt, seed], label="Examples")
                    with gr.Accordion("LoRA files: upload / download", open=False):
                        up_files = gr.File(label="adapter_config.json + adapter_model.safetensors, or a .zip of them",
                                           file_count="multiple", file_types=[".json", ".safetensors", ".zip"])
                        up_name = gr.Textbox(label="Name (optional)", max_lines=1)
                        up_run = gr.Button("Add LoRA")
                        up_info = gr.Markdown()
                        dl_run = gr.Button("Download the selected LoRA (.zip)")
                        dl_file = gr.File(label="LoRA zip")
                with gr.Column(scale=2):
                    g_video = gr.Video(label="Turntable: RGB | normals", autoplay=True, loop=True)
                    g_views = gr.Image(label="4 views (azimuth 0 / 90 / 180 / 270)", type="filepath")
                    g_normals = gr.Image(label="Normal maps", type="filepath")
                    g_model = gr.Model3D(label="Splat viewer", clear_color=(1, 1, 1, 1), height=VIEWER_HEIGHT,
                                         elem_classes="splat-viewer")
                    g_mesh = gr.Model3D(label="Mesh preview (GLB)", clear_color=(1, 1, 1, 1), elem_id="generate-mesh",
                                        height=VIEWER_HEIGHT)
            g_inputs = [prompt, seed, steps, guidance, g_frames, g_model_name, g_lora]
            g_model_name.change(generate.on_model_change, [g_model_name, g_lora], [guidance, g_lora])
            # runs finish and uploads arrive while the page is open: the list is read again on each visit
            for trigger in (g_tab.select, g_lora_refresh.click, g_lora.focus):
                trigger(generate.refresh_loras, [g_model_name, g_lora], g_lora, queue=False, api_visibility="private")
            up_run.click(generate.upload_lora, [up_files, up_name, g_model_name], [up_info, g_lora], api_name="upload_lora",
                         concurrency_limit=1)
            dl_run.click(generate.download_lora, g_lora, dl_file, api_name="download_lora")
            g_outputs = [g_model, g_video, g_views, g_normals, g_file, g_info]
            run_generate = viewer.with_viewer_copy(generate.run_generate)  # the splat viewer shows it upright
            g_job = g_run.click(run_generate, g_inputs, g_outputs, api_name="generate", concurrency_limit=1)
            g_submit = prompt.submit(run_generate, g_inputs, g_outputs, concurrency_limit=1)
            # The mesh follows each new splat: its file (the Download PLY) is the input.
            g_mesh_outputs = [g_mesh, g_glb, g_mesh_info]
            g_job_mesh = g_job.success(mesh.extract_mesh, g_file, g_mesh_outputs, api_name="generate_mesh", concurrency_limit=1)
            g_submit_mesh = g_submit.success(mesh.extract_mesh, g_file, g_mesh_outputs, concurrency_limit=1)
            g_stop.click(None, cancels=[g_job, g_submit, g_job_mesh, g_submit_mesh])
            _reshow_mesh(g_tab, g_mesh, g_glb)
        with gr.Tab("Viewer") as v_tab:
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
                    glb = gr.File(label="Download GLB (mesh)")
                    mesh_info = gr.Markdown()
                    # the PLY the mesh step reads: the download, not the splat viewer's turned copy
                    source = gr.File(visible=False)
                with gr.Column(scale=2):
                    video = gr.Video(label="Turntable: RGB | normals", autoplay=True, loop=True)
                    views = gr.Image(label="4 views (azimuth 0 / 90 / 180 / 270)", type="filepath")
                    normals = gr.Image(label="Normal maps", type="filepath")
                    model = gr.Model3D(label="Splat viewer", clear_color=(1, 1, 1, 1), height=VIEWER_HEIGHT,
                                       elem_classes="splat-viewer", elem_id="viewer-splat")
                    mesh_view = gr.Model3D(label="Mesh preview (GLB)", clear_color=(1, 1, 1, 1), elem_id="viewer-mesh",
                                           height=VIEWER_HEIGHT)
            outputs = [model, views, normals, video, files, info]
            inputs = [upload, elevation, resolution, frames]
            job = run.click(viewer.render_asset, inputs, outputs, api_name="render", concurrency_limit=2)
            first = demo.load(viewer.render_asset, inputs, outputs)
            # The mesh of the splat just rendered: its downloadable PLY (in our convention, not the viewer's copy).
            mesh_outputs = [mesh_view, glb, mesh_info]
            job_source = job.success(viewer.source_ply, files, source, queue=False, api_visibility="private")
            first_source = first.success(viewer.source_ply, files, source, queue=False, api_visibility="private")
            job_mesh = job_source.success(mesh.extract_mesh, source, mesh_outputs, api_name="mesh", concurrency_limit=1)
            first_mesh = first_source.success(mesh.extract_mesh, source, mesh_outputs, concurrency_limit=1)
            stop.click(None, cancels=[job, first, job_mesh, first_mesh])  # (the source steps are instant, unqueued)
            _reshow_mesh(v_tab, mesh_view, glb)
        with gr.Tab("Finetune"):
            finetune.build_tab()
        with gr.Tab("Compare"):
            compare.build_tab()
        with gr.Tab("Theory"):
            theory.build_tab()
        demo.unload(sessions.end_session)
    return demo
