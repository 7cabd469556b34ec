"""GRPO-style: G samples per prompt, group-relative advantages, PPO-clip, optional KL to the base; the
DAPO options: clip-higher (clip_high > clip_low), dynamic sampling (groups whose rewards do not vary are
dropped), transition-level averaging (research/rl-trainers.md §3)."""

from __future__ import annotations

import torch

from .base import Method
from .ddpo import gathered, ppo_losses, ppo_plan


def group_advantages(rewards: torch.Tensor, group: int, std: str = "global", eps: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, per-group std) for rewards of consecutive groups of ``group`` samples of one prompt."""
    r = rewards.view(-1, group)
    spread = r.std(1, unbiased=False)
    scale = rewards.std(unbiased=False) if std == "global" else spread[:, None]
    return ((r - r.mean(1, keepdim=True)) / (scale + eps)).flatten(), spread


class GRPO(Method):
    name = "grpo"
    config_field = "grpo"
    summary = "group-relative advantages with PPO-clip, optional KL; DAPO options (GRPO)"
    needs = ("trajectory", "log_prob", "groups")

    def graph_plan(self, step, indices):
        return ppo_plan(self, step, indices, self.cfg.timestep_fraction)

    def losses(self, rollout, step):
        cfg = self.cfg
        rewards, _, local = gathered(self.ctx, rollout, rollout.rewards)
        adv, spread = group_advantages(rewards.cpu(), cfg.group_size, cfg.std)
        keep_group = spread > cfg.min_group_std if cfg.dynamic_sampling else torch.ones_like(spread, dtype=torch.bool)
        keep_all = keep_group.repeat_interleave(cfg.group_size)
        if not keep_all.any():
            return  # every group was flat: nothing to learn from this step
        kept = int(keep_all.sum()) if cfg.average == "transition" else None
        yield from ppo_losses(self, rollout, step, adv.clamp(-cfg.adv_clip, cfg.adv_clip)[local], keep_all[local],
                              fraction=cfg.timestep_fraction, clip_low=cfg.clip_low, clip_high=cfg.clip_high, kl=cfg.kl,
                              global_kept=kept)
