"""Generate tab handlers: prompt -> splat with the embedded base model, plus previews and downloads."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from engine.generate import generate, load_model, write_asset
from engine.models.tiny import DEFAULT_CHECKPOINT
from engine.prompts import prompt_notice, validate_prompt

from .catalogue import BASE, catalogue, display_name, ordered, pool, set_device, zip_adapter
from .sessions import refusal, session_dir

EXAMPLES = [
    ["a red chair", 0], ["a blue car", 1], ["a red mushroom with a white stem", 2], ["a green tree", 3],
    ["a yellow rocket", 4], ["a purple lamp", 5], ["a white snowman with a black hat", 6], ["a cyan cup", 7],
    ["a pink ice cream", 8], ["an orange umbrella", 9],
]


@dataclass
class ModelSources:
    """Where the studio finds DiffSplat (set from app.py's command line; the tiny model is always there)."""

    diffsplat: Path | None = None  # DiffSplat's download folder
    text_encoders: dict[str, str] = field(default_factory=dict)  # model name -> tokenizer/ + text_encoder/ folder
    prompt_caches: dict[str, str] = field(default_factory=dict)  # model name -> prompt-embedding cache
    dtype: str = "fp32"
    device: str | None = None


SOURCES = ModelSources()


def configure(sources: ModelSources) -> None:
    global SOURCES
    SOURCES = sources
    _diffsplat.cache_clear()
    set_device(sources.device)


def available_models() -> dict[str, str]:
    """Model name -> why it can (or cannot) run here; the tiny model always can."""
    from engine.models.diffsplat import RELEASES, find_text_encoder, locate_release

    out = {"tiny": "shipped"}
    for name, release in RELEASES.items():
        if SOURCES.diffsplat is None:
            out[name] = "not configured (python app.py --diffsplat DIR)"
            continue
        try:
            locate_release(name, SOURCES.diffsplat)
            if name not in SOURCES.prompt_caches:
                find_text_encoder(release, SOURCES.text_encoders.get(name))
            out[name] = "ready"
        except (FileNotFoundError, ValueError) as err:
            out[name] = str(err)
    return out


def model_choices() -> list[str]:
    return [name for name, why in available_models().items() if why in ("shipped", "ready")]


def default_guidance(name: str = "tiny") -> float:
    """A model's recommended CFG scale: the shipped model's model_index.json, DiffSplat's published defaults."""
    if name != "tiny":
        from engine.models.diffsplat import RELEASES

        return RELEASES[name].guidance_default
    try:
        return float(json.loads((DEFAULT_CHECKPOINT / "model_index.json").read_text())["guidance_default"])
    except (OSError, KeyError, ValueError):
        return 4.5


@functools.lru_cache(maxsize=1)  # one DiffSplat model in memory at a time: switching frees the previous one
def _diffsplat(name: str):
    return load_model(name, SOURCES.diffsplat, text_encoder=SOURCES.text_encoders.get(name),
                      prompt_cache=SOURCES.prompt_caches.get(name), dtype=SOURCES.dtype, device=SOURCES.device)


def lora_options(model_name: str = "tiny") -> list[tuple[str, str]]:
    """The LoRA list's (shown name, label) for ``model_name``: those saved for it, and plain peft adapters (their
    base is checked on load); the base, then the runs made here, the shipped runs, the uploads."""
    entries = [e for e in catalogue().entries().values()
               if e.adapter is None or e.info.get("base_model") in (model_name, None)]
    return [(display_name(e), e.label) for e in ordered(entries)]


def lora_choices(model_name: str = "tiny") -> list[str]:
    """The labels of ``lora_options``: what the generate endpoint takes."""
    return [label for _, label in lora_options(model_name)]


def refresh_loras(model_name: str, current: str | None):
    options = lora_options(model_name or "tiny")
    return gr.update(choices=options, value=current if current in {label for _, label in options} else BASE)


def on_model_change(name: str, current: str | None = None):
    return gr.update(value=default_guidance(name)), refresh_loras(name, current)


def _lora_entry(label: str | None, model_name: str):
    try:
        entry = catalogue().get(label)
    except ValueError as err:
        raise refusal(str(err)) from err
    if entry.adapter is not None and label not in lora_choices(model_name):
        raise refusal(f"{label} was trained on {entry.info.get('base_model')!r}, not on {model_name!r}: pick the model it was made for.")
    if entry.adapter is not None and model_name != "tiny":
        raise refusal(f"LoRAs run on the embedded tiny model in the studio; {model_name} runs without one (choose 'base').")
    return entry


def run_generate(prompt, seed, steps, guidance, frames, model_name="tiny", lora=BASE, request: gr.Request = None,
                 progress=gr.Progress()):
    model_name = model_name or "tiny"
    try:
        prompt = validate_prompt(prompt)
    except ValueError as err:
        raise refusal(str(err)) from err
    if model_name not in model_choices():
        raise refusal(f"The model {model_name!r} is not available here: {available_models().get(model_name, 'unknown model')}")
    entry = _lora_entry(lora, model_name)
    steps = int(steps)

    def on_step(i, n):
        progress(0.05 + 0.45 * i / n, desc=f"Denoising step {i}/{n}")

    progress(0, desc=f"Loading {model_name}" + (f" with {entry.label}" if entry.adapter else ""))
    try:
        if model_name == "tiny":
            with pool().using(entry) as model:  # the shared base, this request's adapter switched in
                result = generate(model, [prompt], [int(seed)], steps=steps, guidance=float(guidance), callback=on_step)
        else:
            result = generate(_diffsplat(model_name), [prompt], [int(seed)], steps=steps, guidance=float(guidance), callback=on_step)
    except (FileNotFoundError, ValueError) as err:
        raise gr.Error(f"The model could not be loaded: {err}") from err
    out_dir = session_dir(request, "generate")

    def on_frame(done, total):
        progress(0.55 + 0.4 * done / total, desc=f"Turntable frame {done}/{total}")

    files = write_asset(result.gaussians[0:1], out_dir, frames=int(frames), progress=on_frame)
    name = model_name + (f" + {entry.label}" if entry.adapter else "")
    info = (f"**{prompt}** (seed {int(seed)}, {name}): sampled in {result.seconds:.2f} s, {steps} steps, "
            f"guidance {float(guidance):g}.")
    if model_name == "tiny" and (note := prompt_notice(prompt)):
        info += f"\n\n⚠️ {note}"
    ply = str(files["ply"])
    return ply, str(files["turntable"]), str(files["views"]), str(files["normals"]), ply, info


def explain_failure(prompt, seed, steps, guidance, frames, model_name="tiny", lora=BASE):
    """After a refused or failed run: every output cleared (no earlier asset left beside the message, no
    unexplained error badges) and the info line saying why, in plain words (the error toast fades).

    Returns the Generate outputs (splat viewer, turntable, views, normals, PLY, info) and the mesh outputs
    (mesh viewer, GLB, mesh info)."""
    try:
        validate_prompt(prompt)
        model_name = model_name or "tiny"
        if model_name not in model_choices():
            raise ValueError(f"the model {model_name!r} is not available here.")
        _lora_entry(lora, model_name)
        why = "The run did not finish (stopped, or it failed: see the message that appeared)."
    except gr.Error as err:  # (a ValueError too: first)
        why = f"The run was refused: {err.message}"
    except ValueError as err:
        why = f"The prompt was refused: {err}"
    info = f"**Nothing was generated.** {why} The previous asset's previews and downloads were cleared."
    return None, None, None, None, None, info, None, None, ""


_UPLOAD_ERRORS: dict[str, str] = {}  # session -> why its last upload was refused, for the page's info line


def upload_lora(files, name, model_name="tiny", request: gr.Request = None):
    """Uploaded adapter files (or one .zip) -> a checked adapter in the catalogue, selected in the LoRA list."""
    paths = [getattr(f, "name", f) for f in (files if isinstance(files, list) else [files] if files else [])]
    try:
        entry = catalogue().add_upload(paths, name or None, pool())
    except (OSError, ValueError) as err:
        message = f"The adapter was not added: {err}"
        _UPLOAD_ERRORS[getattr(request, "session_hash", None) or ""] = message
        raise refusal(message) from err
    info = entry.info
    msg = (f"Added **{entry.label}**: rank {info.get('rank')}, {info.get('bytes', 0) / 2**20:.1f} MB"
           + (f", trained with {info['method']} on {info['reward']} for {info['step']} steps" if info.get("method") else "")
           + (". It has no r2d3_adapter.json, so its base is unknown; its shapes fit the tiny model." if not info.get("base_fingerprint") else "."))
    return msg, gr.update(choices=lora_options(model_name or "tiny"), value=entry.label)


def upload_refused(request: gr.Request = None) -> str:
    """The upload's info line after a refused upload (the error toast fades): what was wrong, in words."""
    why = _UPLOAD_ERRORS.pop(getattr(request, "session_hash", None) or "", "The adapter was not added.")
    return f"⚠️ {why}"


def download_lora(label, request: gr.Request = None):
    try:
        entry = catalogue().get(label)
        return str(zip_adapter(entry, session_dir(request, "lora")))
    except ValueError as err:
        raise refusal(str(err)) from err
