"""Prompt -> 3D Gaussians with a base model, and the command that writes an asset folder.

    python -m engine.generate --prompt "a red chair" --seed 0 --out DIR

writes DIR/asset.ply, DIR/turntable.mp4 (RGB | normals), DIR/views.png, DIR/normals.png and
DIR/generation.json (every setting, so the asset can be made again); with --mesh also DIR/asset.glb,
a coloured triangle mesh of the splat (engine.mesh).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import imageio.v3 as iio
import torch

from .core.cameras import canonical_views
from .core.gaussians import Gaussians
from .core.sampling import SCHEDULER_KINDS, Trajectory, sample
from .export import save_splat_file
from .preview import turntable_frames, view_strips, write_video
from .prompts import prompt_notice, validate_prompt
from .render import render
from .render.projection import ALPHA_MIN

MODELS = ("tiny", "diffsplat-pas", "diffsplat-sd15")


@dataclass
class GenerationSettings:
    prompt: str
    seed: int = 0
    steps: int = 20
    guidance: float | None = None
    scheduler: str = "sde-dpmsolver++"
    model: str = "tiny"
    weights: str | None = None
    dtype: str = "fp32"
    lora: str | None = None  # adapter folder (python -m engine.generate --lora DIR)


@dataclass
class Generation:
    gaussians: Gaussians  # batch of assets
    maps: torch.Tensor  # [B, V, 12, H, W]
    latents: torch.Tensor
    trajectory: Trajectory | None
    seconds: float


def load_model(name: str = "tiny", weights: str | Path | None = None, *, text_encoder: str | Path | None = None,
               prompt_cache: str | Path | None = None, dtype: str = "fp32", device: str | None = None):
    """A text-to-3D model by name. ``tiny``: the shipped checkpoint (or ``weights``). ``diffsplat-pas`` /
    ``diffsplat-sd15``: DiffSplat's released checkpoints in ``weights`` (the download folder), with the
    text encoder folder or a prompt-embedding cache; ``dtype`` and ``device`` for the denoiser."""
    if name == "tiny":
        from .models.tiny import DEFAULT_CHECKPOINT, TinySplatModel

        return TinySplatModel.from_pretrained(weights or DEFAULT_CHECKPOINT).to(device or "cpu")
    if name in MODELS:
        from .models.diffsplat import DiffSplatModel

        if weights is None:
            raise ValueError(f"{name} needs --weights DIR: the folder DiffSplat's checkpoints were downloaded to.")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return DiffSplatModel.from_release(name, weights, text_encoder=text_encoder, prompt_cache=prompt_cache, dtype=dtype, device=device)
    raise ValueError(f"Unknown model {name!r}; available: {', '.join(MODELS)}.")


def generate(model, prompts: list[str], seeds: list[int], *, steps: int = 20, guidance: float | None = None,
             scheduler: str = "sde-dpmsolver++", record: bool = False, callback=None) -> Generation:
    """One asset per (prompt, seed). Each asset's noise comes from its own seed, so batching does not change it.

    ``guidance`` None uses the model's own default (its model_index.json)."""
    if guidance is None:
        guidance = model.guidance_default
    if len(prompts) != len(seeds):
        raise ValueError("Give one seed per prompt.")
    if scheduler not in SCHEDULER_KINDS:
        raise ValueError(f"Unknown scheduler {scheduler!r}; choose one of {', '.join(SCHEDULER_KINDS)}.")
    prompts = [validate_prompt(p) for p in prompts]
    t0 = time.perf_counter()
    with torch.no_grad():
        cond, uncond = model.encode_prompts(prompts), model.encode_prompts([""])
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        out = sample(model, cond, uncond, steps=steps, guidance=guidance, scheduler=scheduler, generator=generators,
                     record=record, callback=callback)
        maps = model.decode(out.latents)
        gaussians = model.to_gaussians(maps)
    return Generation(gaussians, maps, out.latents, out.trajectory, time.perf_counter() - t0)


def write_asset(g: Gaussians, out: Path, *, frames: int = 48, resolution: int = 256, progress=None) -> dict[str, Path]:
    """Files for one asset: PLY, 4-view RGB and normal strips, RGB | normal turntable."""
    out.mkdir(parents=True, exist_ok=True)
    g = visible(g)
    with torch.no_grad():
        views = render(g, model_views(), resolution)
    rgb, normals = view_strips(views)
    iio.imwrite(out / "views.png", rgb)
    iio.imwrite(out / "normals.png", normals)
    write_video(turntable_frames(g, frames, resolution, progress=progress), out / "turntable.mp4")
    ply = save_splat_file(g, out / "asset.ply", opacity_threshold=0.01)
    return {"ply": ply, "views": out / "views.png", "normals": out / "normals.png", "turntable": out / "turntable.mp4"}


def visible(g: Gaussians) -> Gaussians:
    """One asset without the Gaussians too transparent to ever show (the renderer skips alpha < 1/255
    anyway): the same images, faster."""
    if g.batch_size != 1:
        raise ValueError("visible() takes one asset.")
    return g.select(g.opacities[0] >= ALPHA_MIN)


def model_views():
    """The 4 views the embedded model generates (and the turntable's elevation)."""
    return canonical_views()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Generate a 3D Gaussian splat from a text prompt.")
    p.add_argument("--prompt", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the model's)")
    p.add_argument("--scheduler", choices=SCHEDULER_KINDS, default="sde-dpmsolver++")
    p.add_argument("--model", choices=MODELS, default="tiny")
    p.add_argument("--weights", help="tiny: model folder (default: the shipped checkpoint); diffsplat-*: DiffSplat's download folder")
    p.add_argument("--text-encoder", help="diffsplat-*: folder with tokenizer/ and text_encoder/ (T5 for pas, CLIP for sd15)")
    p.add_argument("--prompt-cache", help="diffsplat-*: prompt embeddings made by `python -m engine.models.diffsplat cache-prompts`")
    p.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32", help="diffsplat-*: denoiser precision")
    p.add_argument("--device", help="cpu or cuda (default: cuda for DiffSplat when available)")
    p.add_argument("--lora", help="a LoRA adapter folder (adapter_config.json + adapter_model.safetensors) made for this base model")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--mesh", action="store_true", help="also write asset.glb, a coloured mesh of the splat")
    args = p.parse_args(argv)
    try:
        prompt = validate_prompt(args.prompt)
    except ValueError as err:
        p.error(str(err))
    if args.model == "tiny" and (note := prompt_notice(prompt)):
        print(f"note: {note}")
    try:
        model = load_model(args.model, args.weights, text_encoder=args.text_encoder, prompt_cache=args.prompt_cache,
                           dtype=args.dtype, device=args.device)
        if args.lora:
            from .models.lora import load_adapter

            load_adapter(model, args.lora)
    except (FileNotFoundError, ValueError) as err:
        p.exit(2, f"error: {err}\n")
    result = generate(model, [prompt], [args.seed], steps=args.steps, guidance=args.guidance, scheduler=args.scheduler)
    files = write_asset(result.gaussians[0:1], args.out, frames=args.frames, resolution=args.resolution)
    settings = GenerationSettings(prompt, args.seed, args.steps, args.guidance or model.guidance_default, args.scheduler, args.model,
                                  args.weights, args.dtype, lora=args.lora)
    (args.out / "generation.json").write_text(json.dumps(asdict(settings) | {"seconds": round(result.seconds, 3)}, indent=2))
    if args.mesh:
        from .mesh import save_mesh, splat_to_mesh

        try:
            files["glb"] = save_mesh(splat_to_mesh(visible(result.gaussians[0:1])).mesh, args.out / "asset.glb")
        except ValueError as err:
            p.exit(2, f"error: no mesh: {err}\n")
    print(json.dumps({k: str(v) for k, v in files.items()} | {"seconds": round(result.seconds, 3)}))


if __name__ == "__main__":
    main()
