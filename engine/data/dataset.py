"""Datasets of the procedural world, written in resumable chunks of safetensors files."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..core.cameras import canonical_views, random_views
from ..core.io import atomic_save
from .primitives import Scene
from .raycast import raycast_views, splatter_maps
from .world import ObjectSpec, build, sample_spec

CHUNK = 500


def save_tensors(tensors: dict, path: Path, metadata: dict | None = None) -> None:
    """A safetensors file, written atomically."""
    atomic_save(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def splatter_chunk(specs: list[ObjectSpec], resolution: int) -> torch.Tensor:
    """[N, 4, 12, R, R] float16 ground-truth splatter images from the canonical views."""
    cams = canonical_views()
    return torch.stack([splatter_maps(Scene.pack(build(s)), cams, resolution) for s in specs]).half()


def image_chunk(specs: list[ObjectSpec], resolution: int, seed: int) -> torch.Tensor:
    """[N, 3, R, R] uint8 anti-aliased renders of each object from one random view."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in specs:
        cams = random_views(1, g, elevation=15.0, elevation_jitter=20.0, evenly_spaced=False)
        rgb = raycast_views(Scene.pack(build(s)), cams, resolution, supersample=2)["rgb"][0]
        out.append((rgb * 255).round().to(torch.uint8))
    return torch.stack(out)


def build_chunks(folder: Path, kind: str, count: int, seed_base: int, split: str, resolution: int, progress=None) -> None:
    """Writes ``folder/{kind}_{k:04d}.safetensors`` (+ a specs json per chunk), skipping chunks already there."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(0, count, CHUNK):
        path = folder / f"{kind}_{k // CHUNK:04d}.safetensors"
        if not path.exists():
            specs = [sample_spec(seed_base + i, split) for i in range(k, min(k + CHUNK, count))]
            data = splatter_chunk(specs, resolution) if kind == "maps" else image_chunk(specs, resolution, seed_base + k)
            (folder / f"{kind}_{k // CHUNK:04d}.json").write_text(json.dumps([asdict(s) for s in specs]))
            save_tensors({kind: data}, path)
        if progress:
            progress(min(k + CHUNK, count), count)


def load_chunks(folder: Path, kind: str) -> tuple[torch.Tensor, list[ObjectSpec]]:
    paths = sorted(folder.glob(f"{kind}_*.safetensors"))
    if not paths:
        raise FileNotFoundError(f"No {kind} chunks in {folder}; run the data stage first.")
    return torch.cat([load_file(str(p))[kind] for p in paths]), load_specs(folder, kind)


def load_specs(folder: Path, kind: str) -> list[ObjectSpec]:
    """The object specs of every chunk, in chunk order (without loading the tensors)."""
    return [ObjectSpec(**d) for p in sorted(folder.glob(f"{kind}_*.json")) for d in json.loads(p.read_text())]
