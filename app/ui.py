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
# frame depends on its content being mounted (a 2 px frame when it is not, see _viewers_follow_tabs).
VIEWER_HEIGHT = 420
# gradio's splat viewer (gsplat.js) ignores Model3D's clear_color and paints its canvas' CSS background black;
# the canvas itself is transparent where there is no splat, so a white CSS background gives the page's white.
# Its download button would give the viewer's turned copy (viewer.viewer_copy): the files to download are the
# tab's PLY / .splat, in our convention, so that button is hidden.
CSS = """
.splat-viewer canvas { background: #ffffff !important; }
.splat-viewer a[data-testid="model3d-download-link"] { display: none !important; }
"""
# A hidden 3D viewer kept drawing: gradio keeps a visited tab mounted (display: none), and its babylon (mesh) and
# gsplat (splat) viewers draw every animation frame, shown or not: with both tabs visited, Chromium (software
# WebGL) used about 1.7 cores on any other tab. So the viewers exist only while their tab is shown (see
# _viewers_follow_tabs: leaving a tab clears them, which unmounts them). Babylon's viewer stops when unmounted;
# gradio 6.31's splat viewer (Canvas3DGS) does not: its unmount disposes the renderer but never cancels its
# requestAnimationFrame loop, which re-initialises the renderer and draws on to the removed canvas. This script
# loses the WebGL context of every canvas the page removes, so such a loop has nothing left to draw with, and
# ends a loop whose frame drew with a lost context (it asks for no next frame); other animations are untouched.
# The turntable videos (autoplay, loop) also played on in hidden tabs: a video out of sight is paused, and an
# autoplay one plays again when it comes back into sight.
HEAD = """<script>
const sight = new IntersectionObserver((entries) => {
  for (const { target: video, isIntersecting } of entries) {
    if (!isIntersecting && !video.paused) video.pause();
    else if (isIntersecting && video.autoplay && video.paused) video.play().catch(() => {});
  }
});
let frameUsedLostContext = false, inFrame = false;
for (const Context of [WebGLRenderingContext, WebGL2RenderingContext]) {
  const useProgram = Context.prototype.useProgram;
  Context.prototype.useProgram = function (...args) {
    if (inFrame && this.isContextLost()) frameUsedLostContext = true;
    return useProgram.apply(this, args);
  };
}
const requestFrame = window.requestAnimationFrame.bind(window);
window.requestAnimationFrame = (callback) => {
  if (inFrame && frameUsedLostContext) return 0;  // a removed viewer's loop: it ends here
  return requestFrame((time) => {
    inFrame = true; frameUsedLostContext = false;
    try { return callback(time); } finally { inFrame = false; frameUsedLostContext = false; }
  });
};
new MutationObserver((records) => {
  for (const record of records) for (const node of record.addedNodes) {
    if (node instanceof Element) for (const video of (node.tagName === "VIDEO" ? [node] : node.querySelectorAll("video"))) sight.observe(video);
  }
  for (const record of records) for (const node of record.removedNodes) {
    if (!(node instanceof Element)) continue;
    for (const canvas of (node.tagName === "CANVAS" ? [node] : node.querySelectorAll("canvas"))) {
      if (canvas.isConnected || !canvas.__r2d3_gl) continue;
      canvas.__r2d3_gl.getExtension("WEBGL_lose_context")?.loseContext();
    }
  }
}).observe(document.documentElement, {childList: true, subtree: true});
// the WebGL context each canvas was given (asking a removed canvas for one would make a new context)
const getContext = HTMLCanvasElement.prototype.getContext;
HTMLCanvasElement.prototype.getContext = function (kind, ...rest) {
  const context = getContext.call(this, kind, ...rest);
  if (context && String(kind).startsWith("webgl")) this.__r2d3_gl = context;
  return context;
};
</script>"""


class Studio(gr.Blocks):
    """gr.Blocks whose launch() always adds the studio's CSS: gradio 6 takes css in launch() only, and app.py,
    the tests and scripts each launch the demo their own way."""

    def launch(self, *args, **kwargs):
        kwargs["css"] = CSS + "\n" + (kwargs.get("css") or "")
        kwargs["head"] = HEAD + "\n" + (kwargs.get("head") or "")
        return super().launch(*args, **kwargs)


def _viewers_follow_tabs(tabs: dict[str, gr.Tab], viewers: dict) -> None:
    """The 3D viewers exist only while their tab is shown (hidden ones kept drawing, see HEAD).

    ``viewers``: tab name -> (its Model3D viewers, a function of ``inputs`` giving their values, inputs). Opening
    a tab clears the other tabs' viewers (client-side, which unmounts them) and gives its own their values again
    (cleared first: gradio 6.31's Model3D ignores the value it already has, and drops a GLB given while its tab
    is hidden: no canvas, a 2 px frame). A splat that lands on a hidden tab (the user left while it was made)
    mounts there until the next tab is opened."""
    for name, tab in tabs.items():
        others = [v for n, (own, _, _) in viewers.items() if n != name for v in own]
        tab.select(None, None, others, js=f"() => [{', '.join(['null'] * len(others))}]", queue=False,
                   api_visibility="private")
        if name in viewers:
            own, values, inputs = viewers[name]
            tab.select(lambda: [None] * len(own), None, own, queue=False, api_visibility="private").then(
                values, inputs, own, queue=False, api_visibility="private")


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
                        g_lora = gr.Dropdown(generate.lora_options(), value="base", label="LoRA", scale=4, allow_custom_value=True,
                                             info="base; yours (runs made here, Finetune tab), newest first; shipped runs; uploads")
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
                    g_file = gr.File(label="Download PLY", interactive=False)  # downloads only: no upload box
                    g_glb = gr.File(label="Download GLB (mesh)", interactive=False)
                    g_mesh_info = gr.Markdown()
                    gr.Examples(generate.EXAMPLES, [prompt, seed], label="Examples")
                    with gr.Accordion("LoRA files: upload / download", open=False):
                        up_files = gr.File(label="adapter_config.json + adapter_model.safetensors, or a .zip of them",
                                           file_count="multiple", file_types=[".json", ".safetensors", ".zip"])
                        up_name = gr.Textbox(label="Name (optional)", max_lines=1)
                        up_run = gr.Button("Add LoRA")
                        up_info = gr.Markdown()
                        dl_run = gr.Button("Download the selected LoRA (.zip)")
                        dl_file = gr.File(label="LoRA zip", interactive=False)
                with gr.Column(scale=2):
                    g_video = gr.Video(label="Turntable: RGB | normals", autoplay=True, loop=True)
                    g_views = gr.Image(label="4 views (azimuth 0 / 90 / 180 / 270)", type="filepath")
                    g_normals = gr.Image(label="Normal maps", type="filepath")
                    g_model = gr.Model3D(interactive=False, label="Splat viewer", clear_color=(1, 1, 1, 1), height=VIEWER_HEIGHT,
                                         elem_classes="splat-viewer", elem_id="generate-splat")
                    g_mesh = gr.Model3D(interactive=False, label="Mesh preview (GLB)", clear_color=(1, 1, 1, 1), elem_id="generate-mesh",
                                        height=VIEWER_HEIGHT)
            g_inputs = [prompt, seed, steps, guidance, g_frames, g_model_name, g_lora]
            g_model_name.change(generate.on_model_change, [g_model_name, g_lora], [guidance, g_lora])
            # runs finish and uploads arrive while the page is open: the list is read again on each visit
            for trigger in (g_tab.select, g_lora_refresh.click, g_lora.focus):
                trigger(generate.refresh_loras, [g_model_name, g_lora], g_lora, queue=False, api_visibility="private")
            upload = up_run.click(generate.upload_lora, [up_files, up_name, g_model_name], [up_info, g_lora],
                                  api_name="upload_lora", concurrency_limit=1)
            upload.failure(generate.upload_refused, None, up_info, queue=False, api_visibility="private")
            upload.then(lambda: None, None, up_files, queue=False, api_visibility="private")  # each attempt starts empty
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
            # a refused prompt (or any failed run) leaves no earlier asset beside its message: all cleared, said why
            for failed in (g_job, g_submit):
                failed.failure(generate.explain_failure, g_inputs, [*g_outputs, *g_mesh_outputs], queue=False,
                               api_visibility="private")
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
                    files = gr.File(label="Downloads (PLY, .splat)", file_count="multiple", interactive=False)
                    glb = gr.File(label="Download GLB (mesh)", interactive=False)
                    mesh_info = gr.Markdown()
                    # the PLY the mesh step reads: the download, not the splat viewer's turned copy
                    source = gr.File(visible=False)
                with gr.Column(scale=2):
                    video = gr.Video(label="Turntable: RGB | normals", autoplay=True, loop=True)
                    views = gr.Image(label="4 views (azimuth 0 / 90 / 180 / 270)", type="filepath")
                    normals = gr.Image(label="Normal maps", type="filepath")
                    model = gr.Model3D(interactive=False, label="Splat viewer", clear_color=(1, 1, 1, 1), height=VIEWER_HEIGHT,
                                       elem_classes="splat-viewer", elem_id="viewer-splat")
                    mesh_view = gr.Model3D(interactive=False, label="Mesh preview (GLB)", clear_color=(1, 1, 1, 1), elem_id="viewer-mesh",
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
        with gr.Tab("Finetune") as f_tab:
            finetune.build_tab()
        with gr.Tab("Compare") as c_tab:
            compare.build_tab()
        with gr.Tab("Theory") as t_tab:
            theory.build_tab()
        _viewers_follow_tabs({"Generate": g_tab, "Viewer": v_tab, "Finetune": f_tab, "Compare": c_tab, "Theory": t_tab}, {
            "Generate": ([g_model, g_mesh], viewer.shown_copies, [g_file, g_glb]),
            "Viewer": ([model, mesh_view], viewer.shown_copies, [source, glb]),
        })
        demo.unload(sessions.end_session)
    return demo
