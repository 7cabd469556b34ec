"""Tiny random DiffSplat releases in the released folder layout, for loader tests without weights.

They live in the engine (``engine.models.diffsplat_random``), where the benchmarks use them too; these names
are kept for the tests that import them from here.
"""

from engine.models.diffsplat_random import (  # noqa: F401
    EMA_KEYS,
    TINY_GSVAE,
    WORDS,
    make_pas_release,
    make_sd15_release,
    make_text_encoder,
)
