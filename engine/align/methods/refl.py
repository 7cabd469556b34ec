"""ReFL: the reward of the one-step x̂0 from a random late step, backpropagated into θ
(research/rl-trainers.md §4.1; for 20 steps the step is drawn from [15, 18], the last σ_min step excluded)."""

from __future__ import annotations

import math

import torch

from ..rollout import GraphPlan
from .base import Method, kl_to_base, reward_loss


class ReFL(Method):
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
