"""DRaFT-K: the final sample's reward, backpropagated through the last K sampler steps (the earlier ones
without gradients). DRaFT-LV (``lv``): K = 1 with ``lv_samples`` re-noisings of the detached final sample
to the last step's noise level, rewards averaged (research/rl-trainers.md §4.2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..knobs import bad_value, knob
from ..rollout import GraphPlan
from .base import Method, kl_to_base, replay, reward_loss


@dataclass
class DraftConfig:
    """DRaFT-K: backprop the final reward through the last K sampler steps; ``lv``: DRaFT-LV (§4.2)."""

    k: int = knob(1, "sampler steps the reward gradient goes back through (K = 1 is the usual choice)", title="K", low=1,
                  sweep=(1, 2, 4))
    lv: bool = knob(False, "K = 1 with `lv_samples` re-noisings of the detached final sample")
    lv_samples: int = knob(2, "re-noisings of DRaFT-LV (the paper uses 2)", low=1)
    kl: float = knob(0.0, "ε-space pull to the base model over the replayed steps", title="KL weight (kl)", low=0, strength=-1)

    def validate(self, steps: int) -> None:
        if self.k > steps:
            raise bad_value("draft.k", self.k, f"must be in [1, {steps}] (the sampler steps)", "K = 1 is the usual choice")


class DRaFT(Method):
    title = "DRaFT"
    config = DraftConfig
    name = "draft"
    config_field = "draft"
    summary = "reward backpropagated through the last K sampler steps (DRaFT-K, DRaFT-LV)"
    needs = ("trajectory", "reward_grad")

    def graph_plan(self, step, indices):
        if self.cfg.lv or self.cfg.kl > 0:  # LV re-noises the final sample; the KL needs every replayed ε
            return None
        return GraphPlan(chain_from=self.ctx.transitions.steps - self.cfg.k)

    def losses(self, rollout, step):
        ctx, cfg, tr = self.ctx, self.cfg, self.ctx.transitions
        if not cfg.lv:
            if rollout.chained is not None:  # the sampler's own last K steps, with their graph
                yield reward_loss(ctx, rollout, rollout.chained, step, 0.0)
                return
            final, penalty = replay(ctx, rollout, tr.steps - cfg.k, kl=cfg.kl)
            yield reward_loss(ctx, rollout, final, step, penalty)
            return
        B, last = len(rollout), tr.steps - 1
        j = torch.full((B,), last, dtype=torch.long)
        x0 = rollout.final.detach()
        gens = ctx.generators(step, "draft-lv", rollout.indices)
        for _ in range(cfg.lv_samples):
            noise = torch.stack([torch.randn(x0.shape[1:], generator=g) for g in gens]).to(x0)
            x = tr.alpha[last] * x0 + tr.sigma[last] * noise
            eps = ctx.eps(rollout, x, tr.timesteps[j])
            penalty = kl_to_base(ctx, rollout, x, tr.timesteps[j], eps, cfg.kl)
            loss, info = reward_loss(ctx, rollout, tr.x0(j, x, eps), step, penalty)
            yield loss / cfg.lv_samples, info
