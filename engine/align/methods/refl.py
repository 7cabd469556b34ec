"""ReFL: the reward of the one-step x̂0 from a random late step, backpropagated into θ
(research/rl-trainers.md §4.1; for 20 steps the step is drawn from [15, 18], the last σ_min step excluded)."""

from __future__ import annotations

import math

import torch

from .base import Method, kl_to_base, reward_loss


class ReFL(Method):
    name = "refl"
    config_field = "refl"
    summary = "reward of a one-step x̂0 from a random late step (ReFL)"
    needs = ("trajectory", "reward_grad")

    def losses(self, rollout, step):
        ctx, tr = self.ctx, self.ctx.transitions
        low = min(math.ceil(self.cfg.first_fraction * tr.steps), tr.steps - 2)
        j = torch.stack([torch.randint(low, tr.steps - 1, (), generator=g) for g in ctx.generators(step, "refl", rollout.indices)])
        x = rollout.trajectory.latents[torch.arange(len(rollout)), j]
        t = tr.timesteps[j]
        eps = ctx.eps(rollout, x, t)
        penalty = kl_to_base(ctx, rollout, x, t, eps, self.cfg.kl)
        loss, info = reward_loss(ctx, rollout, tr.x0(j, x, eps), step, penalty)
        yield loss, {**info, "refl_step": j.float().mean().item()}
