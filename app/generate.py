"""Generate tab handlers: prompt -> splat with the embedded base model, plus previews and downloads."""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

import gradio as gr

from engine.generate import generate, load_model, prompt_notice, validate_prompt, write_asset
from engine.models.tiny import DEFAULT_CHECKPOINT

EXAMPLES = [
    ["a red chair", 0], ["a blue car", 1], ["a red mushroom with a white stem", 2], ["a green tree", 3],
    ["a yellow rocket", 4], ["a purple lamp", 5], ["a white snowman with a black hat", 6], ["a cyan cup", 7],
    ["a pink ice cream", 8], ["an orange umbrella", 9],
]


def default_guidance() -> float:
    """The shipped model's recommended CFG scale (its model_index.json), for the slider's start value."""
    try:
        return float(json.loads((DEFAULT_CHECKPOINT / "model_index.json").read_text())["guidance_default"])
    except (OSError, KeyError, ValueError):
        return 4.5


@functools.lru_cache(maxsize=1)
def _model():
    return load_model("tiny")


def run_generate(prompt, seed, steps, guidance, frames, progress=gr.Progress()):
    try:
        prompt = validate_prompt(prompt)
    except ValueError as err:
        raise gr.Error(str(err)) from err
    progress(0, desc="Loading the model")
    try:
        model = _model()
    except FileNotFoundError as err:
        raise gr.Error(f"The base model is missing: {err}") from err
    steps = int(steps)

    def on_step(i, n):
        progress(0.05 + 0.45 * i / n, desc=f"Denoising step {i}/{n}")

    result = generate(model, [prompt], [int(seed)], steps=steps, guidance=float(guidance), callback=on_step)
    out_dir = Path(tempfile.mkdtemp(prefix="r2d3_gen_"))

    def on_frame(done, total):
        progress(0.55 + 0.4 * done / total, desc=f"Turntable frame {done}/{total}")

    files = write_asset(result.gaussians[0:1], out_dir, frames=int(frames), progress=on_frame)
    info = f"**{prompt}** (seed {int(seed)}): sampled in {result.seconds:.2f} s, {steps} steps, guidance {float(guidance):g}."
    if note := prompt_notice(prompt):
        info += f"\n\n⚠️ {note}"
    ply = str(files["ply"])
    return ply, str(files["turntable"]), str(files["views"]), str(files["normals"]), ply, info
