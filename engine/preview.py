"""Images and videos a person looks at: 4-view strips, normal maps, RGB | normal turntables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from .core.cameras import DIFFSPLAT_ELEVATION, DIFFSPLAT_RADIUS, turntable
from .core.gaussians import Gaussians
from .core.io import atomic_save
from .render import RenderOutput, RenderSettings, render


def to_uint8(image: Tensor) -> np.ndarray:
    """[3, H, W] in [0, 1] -> [H, W, 3] uint8."""
    return (image.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def normal_colors(normal: Tensor, alpha: Tensor, background: float = 1.0) -> Tensor:
    """Camera-space normals [..., 3, H, W] -> display colours in [0, 1].

    Normals are turned into the usual viewing convention (x right, y up, z towards the viewer), so
    surfaces facing the camera look blue, and composited over ``background`` by alpha.
    """
    n = normal / alpha.clamp_min(1e-6)
    n = torch.nn.functional.normalize(n, dim=-3) * torch.tensor([1.0, -1.0, -1.0], device=n.device).view(3, 1, 1)
    return (n * 0.5 + 0.5) * alpha + background * (1 - alpha)


def strip(images: Tensor) -> np.ndarray:
    """[V, 3, H, W] -> one [H, V * W, 3] uint8 image, views left to right."""
    return np.concatenate([to_uint8(im) for im in images], axis=1)


def view_strips(out: RenderOutput, index: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """RGB and normal-map strips of asset ``index`` from a render."""
    return strip(out.rgb[index]), strip(normal_colors(out.normal[index], out.alpha[index]))


@torch.no_grad()
def turntable_frames(
    gaussians: Gaussians,
    num_frames: int = 60,
    resolution: int = 256,
    *,
    elevation: float = DIFFSPLAT_ELEVATION,
    radius: float = DIFFSPLAT_RADIUS,
    frames_per_call: int = 8,
    settings: RenderSettings = RenderSettings(),
    progress: Callable[[int, int], None] | None = None,
) -> list[np.ndarray]:
    """Frames of one asset turning a full circle, RGB and normals side by side ([H, 2W, 3] uint8)."""
    if gaussians.batch_size != 1:
        raise ValueError("turntable_frames renders one asset; index the batch first.")
    cams = turntable(num_frames, elevation, radius)
    frames: list[np.ndarray] = []
    for start in range(0, num_frames, frames_per_call):
        out = render(gaussians, cams[start : start + frames_per_call], resolution, settings=settings)
        normals = normal_colors(out.normal[0], out.alpha[0])
        for rgb, nrm in zip(out.rgb[0], normals):
            frames.append(np.concatenate([to_uint8(rgb), to_uint8(nrm)], axis=1))
        if progress is not None:
            progress(len(frames), num_frames)
    return frames


def write_video(frames: list[np.ndarray], path: str | os.PathLike, fps: int = 30) -> Path:
    """Write frames as MP4 (H.264 through imageio-ffmpeg) or GIF, by the file suffix; atomically."""
    import imageio.v3 as iio

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".mp4", ".gif"):
        raise ValueError(f"Videos are written as .mp4 or .gif, not {suffix!r}.")
    if not frames:
        raise ValueError("No frames to write.")

    def write(tmp: Path) -> None:
        if suffix == ".mp4":
            iio.imwrite(tmp, np.stack(frames), fps=fps, codec="libx264", macro_block_size=8, plugin="pyav" if _has_pyav() else None)
        else:
            iio.imwrite(tmp, np.stack(frames), duration=1000 / fps, loop=0)

    return atomic_save(path, write)


def _has_pyav() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True
