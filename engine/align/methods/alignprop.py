"""AlignProp: the final reward backpropagated through a random number K of final sampler steps, K drawn
once per rollout (the fixed version of the original repo, not TRL's per-step draw), with gradient
checkpointing of every denoiser call (research/rl-trainers.md §4.3)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..knobs import bad_value, knob
from ..rollout import GraphPlan
from .base import Method, replay, reward_loss


@dataclass
class AlignPropConfig:
    """AlignProp: backprop through a random number K of final steps, drawn once per rollout, with checkpointing (§4.3)."""

    k_min: int = knob(1, "fewest final steps backpropagated through", low=1)
    k_max: int = knob(4, "most final steps backpropagated through", low=1, sweep=(2, 4, 8))
    checkpointing: bool = knob(True, "recompute the replayed steps in the backward pass (memory for time)")
    kl: float = knob(0.0, "ε-space pull to the base model over the replayed steps", title="KL weight (kl)", low=0, strength=-1)

    def validate(self, steps: int) -> None:
        if not 1 <= self.k_min <= self.k_max <= steps:
            raise bad_value("alignprop.k_min/k_max", (self.k_min, self.k_max), f"need 1 <= k_min <= k_max <= {steps}",
                            "e.g. k_min=1 k_max=4")


class AlignProp(Method):
    title = "AlignProp"
    config = AlignPropConfig
    name = "alignprop"
    config_field = "alignprop"
    summary = "reward backpropagated through a random truncation of the chain, checkpointed (AlignProp)"
    needs = ("trajectory", "reward_grad")

    def truncation(self, step):
        return int(torch.randint(self.cfg.k_min, self.cfg.k_max + 1, (), generator=self.ctx.shared(step, "alignprop-k")))

    def graph_plan(self, step, indices):
        if self.cfg.kl > 0:  # the KL needs every replayed ε
            return None
        return GraphPlan(chain_from=self.ctx.transitions.steps - self.truncation(step), checkpoint=self.cfg.checkpointing)

    def losses(self, rollout, step):
        cfg, tr = self.cfg, self.ctx.transitions
        k = self.truncation(step)
        if rollout.chained is not None:  # the sampler's own last k steps, with their (checkpointed) graph
            final, penalty = rollout.chained, 0.0
        else:
            final, penalty = replay(self.ctx, rollout, tr.steps - k, kl=cfg.kl, checkpointing=cfg.checkpointing)
        loss, info = reward_loss(self.ctx, rollout, final, step, penalty)
        yield loss, {**info, "k": float(k)}
