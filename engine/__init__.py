"""R2D3 Studio engine: reward alignment of 3D-native diffusion models with 2D rewards."""

from .core.cameras import (
    Cameras,
    canonical_views,
    orbit_cameras,
    random_views,
    turntable,
)
from .core.gaussians import Gaussians
from .render import RenderOutput, RenderSettings, render
from .splatter import SplatterDecoding, decode_splatter

__all__ = [
    "Cameras", "Gaussians", "RenderOutput", "RenderSettings", "SplatterDecoding",
    "canonical_views", "decode_splatter", "orbit_cameras", "random_views", "render", "turntable",
]
