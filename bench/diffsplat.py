"""DiffSplat generation speed with random weights (none can be downloaded); one JSON line per row.

    python bench/diffsplat.py                       # tiny configs, through the real loader (CPU)
    python bench/diffsplat.py --size full --device cuda [--dtype bf16]

``tiny``: tiny random PixArt-Sigma / SD1.5 / GSVAE / text encoders (``engine.models.diffsplat_random``, as
the tests use) saved in the released folder layout and loaded by ``load_model``; rows time loading and
end-to-end generation.
``full``: DiffSplat-PixArt-Sigma at its real size (28 layers x 1152, 0.61B parameters; SDXL-VAE GSVAE
decoder, 256 px splatter maps, 262,144 Gaussians) built with random weights in memory (``full_pas_model``), T5
embeddings replaced by random 300 x 4096 ones: seconds per asset (20 steps, CFG), peak GPU memory, and on CUDA
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
from engine.models.diffsplat_random import (  # noqa: E402
    full_pas_model,
    make_pas_release,
    make_sd15_release,
    make_text_encoder,
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def tiny_rows(steps: int) -> None:
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
    from engine.core.cameras import canonical_views
    from engine.render import RenderSettings, render

    dt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    model = full_pas_model(device, dt)
    params = sum(p.numel() for p in model.denoiser.parameters())
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
