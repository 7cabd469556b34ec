"""ReFL: the reward of the one-step x̂0 from a random late step, backpropagated into θ
(research/rl-trainers.md §4.1; for 20 steps the step is drawn from [15, 18], the last σ_min step excluded)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..knobs import bad_value, knob
from ..rollout import GraphPlan
from .base import Method, kl_to_base, reward_loss


@dataclass
class ReflConfig:
    """ReFL: reward of the one-step x̂0 from a random late step, its gradient into θ (research/rl-trainers.md §4.1)."""

    first_fraction: float = knob(0.75, "the step is drawn from [first_fraction · N, N - 2]", low=0, open_low=True, high=1,
                                 sweep=(0.5, 0.75, 0.9))
    kl: float = knob(0.0, "ε-space pull to the base model (0 = the reference's plain ReFL)", title="KL weight (kl)",
                     low=0, strength=-1)

    def validate(self, steps: int) -> None:
        if steps < 3:
            raise bad_value("steps", steps, "ReFL needs at least 3 sampler steps", "use the default 20")


class ReFL(Method):
    title = "ReFL"
    config = ReflConfig
    name = "refl"
    config_field = "refl"
    summary = "reward of a one-step x̂0 from a random late step (ReFL)"
    needs = ("trajectory", "reward_grad")

    def steps(self, step, indices):
        """[B] the late step each sample is trained at."""
        tr = self.ctx.transitions
        low = min(math.ceil(self.cfg.first_fraction * tr.steps), tr.steps - 2)
        return torch.stack([torch.randint(low, tr.steps - 1, (), generator=g) for g in self.ctx.generators(step, "refl", indices)])

    def graph_plan(self, step, indices):
        return GraphPlan.calls(len(indices), self.ctx.transitions.steps, self.steps(step, indices)[:, None])

    def losses(self, rollout, step):
        ctx, tr = self.ctx, self.ctx.transitions
        j = self.steps(step, rollout.indices)
        policy = ctx.policy_pass(rollout, j)
        x, eps, t = policy.x, policy.eps, tr.timesteps[j]
        penalty = kl_to_base(ctx, rollout, x, t, eps, self.cfg.kl)
        loss, info = reward_loss(ctx, rollout, tr.x0(j, x, eps), step, penalty)
        yield loss, {**info, "refl_step": j.float().mean().item()}
