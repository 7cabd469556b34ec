"""GRPO-style: G samples per prompt, group-relative advantages, PPO-clip, optional KL to the base; the
DAPO options: clip-higher (clip_high > clip_low), dynamic sampling (groups whose rewards do not vary are
dropped), transition-level averaging (research/rl-trainers.md §3)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..knobs import knob
from .base import Method
from .ddpo import ON_POLICY_CLIP, gathered, ppo_losses, ppo_plan


@dataclass
class GrpoConfig:
    """GRPO-style: groups of samples per prompt, group-relative advantages, clip, optional KL; DAPO options (§3)."""

    group_size: int = knob(4, "samples per prompt (groups compare samples of one prompt)", low=2)
    clip_low: float = knob(1e-4, "PPO clip below the ratio 1", low=0, open_low=True, inert=ON_POLICY_CLIP)
    clip_high: float = knob(1e-4, "PPO clip above the ratio 1 (> clip_low is DAPO's clip-higher, e.g. 1.4e-4)",
                            low=0, open_low=True, inert=ON_POLICY_CLIP)
    adv_clip: float = knob(5.0, "advantages are clipped to ± this", low=0, open_low=True)
    std: str = knob("global", "advantage scale: \"global\" (Flow-GRPO) or \"group\"", choices=("global", "group"))
    kl: float = knob(0.0, "β_KL · ||μ_θ - μ_ref||² / (2 std²)", title="KL weight (kl)", low=0, strength=-1)
    dynamic_sampling: bool = knob(False, "drop groups whose rewards do not vary (DAPO)")
    min_group_std: float = knob(1e-6, "a group varies when its rewards' std exceeds this", low=0)
    average: str = knob("transition", "\"transition\" (DAPO's token-level mean) or \"sample\"",
                        choices=("transition", "sample"))
    timestep_fraction: float = knob(0.6, "share of the sampler steps trained per trajectory", low=0, open_low=True, high=1)


def group_advantages(rewards: torch.Tensor, group: int, std: str = "global", eps: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, per-group std) for rewards of consecutive groups of ``group`` samples of one prompt."""
    r = rewards.view(-1, group)
    spread = r.std(1, unbiased=False)
    scale = rewards.std(unbiased=False) if std == "global" else spread[:, None]
    return ((r - r.mean(1, keepdim=True)) / (scale + eps)).flatten(), spread


class GRPO(Method):
    title = "GRPO"
    config = GrpoConfig
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
