"""The alignment methods, one module each, behind a registry (a new method is one module + one line)."""

from __future__ import annotations

from .alignprop import AlignProp
from .base import Context, Method
from .ddpo import DDPO
from .draft import DRaFT
from .grpo import GRPO
from .nabla import NablaR2D3
from .nft import DiffusionNFT
from .refl import ReFL

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (NablaR2D3, ReFL, DRaFT, AlignProp, DDPO, GRPO, DiffusionNFT)}

__all__ = ["METHODS", "Method", "Context"]
