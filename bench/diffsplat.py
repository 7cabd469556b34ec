"""DiffSplat generation speed with random weights (none can be downloaded); one JSON line per row.

    python bench/diffsplat.py                       # tiny configs, through the real loader (CPU)
    python bench/diffsplat.py --size full --device cuda [--dtype bf16]

``tiny``: the test suite's tiny random PixArt-Sigma / SD1.5 / GSVAE / text encoders saved in the
released folder layout and loaded by ``load_model``; rows time loading and end-to-end generation.
``full``: DiffSplat-PixArt-Sigma at its real size (28 layers x 1152, 0.61B parameters; SDXL-VAE GSVAE
decoder, 256 px splatter maps, 262,144 Gaussians) built with random weights in memory, T5 embeddings
replaced by random 300 x 4096 ones: seconds per asset (20 steps, CFG), peak GPU memory, and on CUDA
the torch renderer against gsplat on its Gaussians (max abs difference, PSNR).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from engine.generate import generate, load_model  # noqa: E402
from engine.models.base import Condition  # noqa: E402
from engine.models.diffsplat import GSVAE_CONFIG, RELEASES, DiffSplatModel  # noqa: E402

PIXART_SIGMA_512 = dict(  # research/diffsplat.md §5.2 with DiffSplat's overrides
    num_attention_heads=16, attention_head_dim=72, in_channels=10, out_channels=8, num_layers=28, sample_size=32, patch_size=2,
    caption_channels=4096, cross_attention_dim=1152, norm_type="ada_norm_single", activation_fn="gelu-approximate",
    attention_bias=True, norm_elementwise_affine=False, norm_eps=1e-6, num_embeds_ada_norm=1000, interpolation_scale=1,
    use_additional_conditions=False,
)


class RandomText:
    """Stands in for T5-XXL: fixed random embeddings per prompt, with a 300-token mask."""

    def __init__(self, dim: int = 4096, tokens: int = 300):
        self.dim, self.tokens = dim, tokens

    def __call__(self, prompts: list[str]) -> Condition:
        g = torch.Generator().manual_seed(len(prompts))
        mask = torch.zeros(len(prompts), self.tokens, dtype=torch.long)
        mask[:, :12] = 1
        return Condition(torch.randn(len(prompts), self.tokens, self.dim, generator=g) * 0.2, mask)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def tiny_rows(steps: int) -> None:
    from tests.diffsplat_fixtures import (
        make_pas_release,
        make_sd15_release,
        make_text_encoder,
    )

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_pas_release(root, sample_size=32)
        make_sd15_release(root, sample_size=32)
        make_text_encoder(root / "t5", "t5")
        make_text_encoder(root / "clip", "clip")
        for name, text in (("diffsplat-pas", "t5"), ("diffsplat-sd15", "clip")):
            t0 = time.perf_counter()
            model = load_model(name, root, text_encoder=root / text, device="cpu")
            load_s = time.perf_counter() - t0
            generate(model, ["a red chair"], [0], steps=2)  # warm-up
            r = generate(model, ["a red chair"], [0], steps=steps)
            print(json.dumps({"model": name, "size": "tiny", "device": "cpu", "steps": steps, "load_s": round(load_s, 3),
                              "seconds_per_asset": round(r.seconds, 3), "gaussians": r.gaussians.num_gaussians}), flush=True)


def full_rows(steps: int, device: torch.device, dtype: str) -> None:
    from diffusers import AutoencoderKL, PixArtTransformer2DModel

    from engine.core.cameras import canonical_views
    from engine.render import RenderSettings, render

    torch.manual_seed(0)
    dt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    denoiser = PixArtTransformer2DModel(**PIXART_SIGMA_512).to(device, dt).eval().requires_grad_(False)
    gsvae = AutoencoderKL(**GSVAE_CONFIG).to(device).eval().requires_grad_(False)
    model = DiffSplatModel(RELEASES["diffsplat-pas"], denoiser, gsvae, RandomText()).to(device)
    params = sum(p.numel() for p in denoiser.parameters())
    generate(model, ["warm-up"], [0], steps=1)  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _sync(device)
    r = generate(model, ["a toy robot"], [0], steps=steps)
    _sync(device)
    row = {"model": "diffsplat-pas", "size": "full", "device": str(device), "dtype": dtype, "params": params, "steps": steps,
           "seconds_per_asset": round(r.seconds, 3), "gaussians": r.gaussians.num_gaussians}
    if device.type == "cuda":
        row["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    print(json.dumps(row), flush=True)

    cams = canonical_views().to(device)
    settings = RenderSettings(eps2d=0.0)
    with torch.no_grad():
        for backend in (["torch", "gsplat"] if device.type == "cuda" else ["torch"]):
            render(r.gaussians, cams, 256, backend=backend, settings=settings)  # warm-up
            _sync(device)
            t0 = time.perf_counter()
            out = render(r.gaussians, cams, 256, backend=backend, settings=settings)
            _sync(device)
            print(json.dumps({"render": backend, "views": 4, "resolution": 256, "gaussians": r.gaussians.num_gaussians,
                              "seconds": round(time.perf_counter() - t0, 4)}), flush=True)
            if backend == "torch":
                ref = out.rgb
            else:
                mse = float(((out.rgb - ref) ** 2).mean())
                print(json.dumps({"parity": "gsplat vs torch", "max_abs_rgb": round(float((out.rgb - ref).abs().max()), 5),
                                  "psnr_db": round(10 * torch.log10(torch.tensor(1 / max(mse, 1e-12))).item(), 2)}), flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=("tiny", "full"), default="tiny")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32", help="full size: the transformer's precision")
    args = p.parse_args(argv)
    if args.size == "tiny":
        tiny_rows(args.steps)
    else:
        full_rows(args.steps, torch.device(args.device), args.dtype)


if __name__ == "__main__":
    main()
