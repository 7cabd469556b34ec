"""Reward alignment of the text-to-3D models: Nabla-R2D3 and its baselines in one trainer.

    from engine.align import RunConfig, Trainer
    trainer = Trainer(RunConfig(method="nabla-r2d3", reward="geometry", steps=50), "outputs/runs/x")
    for metrics in trainer.run():          # one dict per optimiser step; trainer.request_stop() ends it
        print(metrics["step"], metrics["reward_mean"])

``python -m engine.align --help`` is the command line; ``engine.models.lora`` holds the adapters and
``engine.align.evaluate`` the evaluation of runs.
"""

from .config import RunConfig
from .methods import METHODS

__all__ = ["RunConfig", "Trainer", "TrainingError", "METHODS", "read_prompts"]


def __getattr__(name):  # the trainer pulls in models and rewards: load it on first use
    if name in ("Trainer", "TrainingError", "read_prompts"):
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
