import os

import pytest
import torch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def random_gaussians(n: int, dtype=torch.float64, seed: int = 0, batch: int | None = None):
    from engine.core.gaussians import Gaussians

    g = torch.Generator().manual_seed(seed)
    shape = (batch, n) if batch else (n,)
    return Gaussians(
        means=torch.randn(*shape, 3, generator=g, dtype=dtype) * 0.3,
        scales=torch.rand(*shape, 3, generator=g, dtype=dtype) * 0.05 + 0.01,
        quats=torch.randn(*shape, 4, generator=g, dtype=dtype),
        opacities=torch.rand(*shape, generator=g, dtype=dtype) * 0.9 + 0.1,
        colors=torch.rand(*shape, 3, generator=g, dtype=dtype),
    )
