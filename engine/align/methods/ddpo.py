"""DDPO: PPO-clip on the recorded transitions' log-probabilities, with per-prompt advantage statistics
kept across steps (research/rl-trainers.md §5). The last sampler step (std 0.01) is never trained."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch

from ..knobs import knob
from ..rollout import GraphPlan, _bc, gaussian_log_ratio, random_steps
from .base import Method


# PPO's clip acts on a batch reused for several updates (Flow-Factory's default takes two optimiser steps per sampling
# round, the second slightly off-policy, where the clip is a trust region: research/rl-trainers.md); this trainer takes
# one update per sampled batch, so the ratio is 1 when the loss is formed.
ON_POLICY_CLIP = ("one optimiser update per sampled batch keeps the probability ratio at 1 (metrics.csv's ratio_dev: "
                  "float rounding, ~1e-7), so the clip never binds")


@dataclass
class DdpoConfig:
    """DDPO: PPO-clip on the recorded transitions' log-probabilities, per-prompt advantages (§5)."""

    clip_range: float = knob(1e-4, "PPO's clip of the probability ratio", low=0, open_low=True, inert=ON_POLICY_CLIP)
    adv_clip: float = knob(5.0, "advantages are clipped to ± this", low=0, open_low=True)
    timestep_fraction: float = knob(1.0, "of the N - 1 steps (the last, near-deterministic one is never trained)",
                                    low=0, open_low=True, high=1)
    buffer_size: int = knob(16, "per-prompt reward history for the advantage statistics", low=1)
    min_count: int = knob(8, "below this many rewards for a prompt, use the batch's statistics", low=1)


def gathered(ctx, rollout, values):
    """Every process's values and prompts in global order, and where this process's rows sit in them."""
    values = ctx.gather(values)
    prompts = ctx.gather_objects(list(rollout.prompts))
    order = ctx.gather(torch.tensor(rollout.indices)).tolist()
    local = torch.tensor([order.index(i) for i in rollout.indices])
    return values, prompts, local


def ppo_steps(method, step: int, indices: list[int], fraction: float) -> torch.Tensor:
    """[B, T] the transitions each trajectory trains: int((N−1)·fraction) distinct ones, never the last."""
    tr = method.ctx.transitions
    T = max(1, int((tr.steps - 1) * fraction))
    return random_steps(T, 0, tr.steps - 1, method.ctx.generators(step, f"{method.name}-steps", indices))


def ppo_plan(method, step: int, indices: list[int], fraction: float) -> GraphPlan:
    return GraphPlan.calls(len(indices), method.ctx.transitions.steps, ppo_steps(method, step, indices, fraction))


def ppo_losses(method, rollout, step, advantages, keep, *, fraction, clip_low, clip_high, kl=0.0, global_kept=None):
    """PPO-clip over int((N−1)·fraction) random transitions per trajectory (never the last).

    ``advantages`` [B]; ``keep`` [B] bool (dropped groups contribute nothing). The loss is averaged over
    kept transitions of all processes when ``global_kept`` is given (DAPO's transition-level mean),
    over the whole batch otherwise."""
    ctx, tr, traj = method.ctx, method.ctx.transitions, rollout.trajectory
    B = len(rollout)
    picks = ppo_steps(method, step, rollout.indices, fraction)
    T = picks.shape[1]
    rows = torch.arange(B)
    A, mask = advantages.to(traj.latents), keep.to(traj.latents)
    denom = T * (global_kept / ctx.world if global_kept is not None else B)
    for k in range(T):
        j = picks[:, k]
        x_next, mean_old = traj.next_latents[rows, j], traj.means[rows, j]
        t = tr.timesteps[j]
        policy = ctx.policy_pass(rollout, j)
        x, eps = policy.x, policy.eps
        mu = tr.mean(j, x, eps)
        log_ratio = gaussian_log_ratio(x_next, mu, mean_old, tr.std[j])
        ratio = log_ratio.exp()
        clipped = ratio.clamp(1 - clip_low, 1 + clip_high)
        per = torch.maximum(-A * ratio, -A * clipped)
        info = {}
        if kl > 0:
            mu_ref = tr.mean(j, x, ctx.reference_eps(rollout, x, t))
            kl_t = ((mu - mu_ref) ** 2 / (2 * _bc(tr.std[j], mu) ** 2)).flatten(1).mean(1)
            per = per + kl * kl_t
            info["kl"] = kl_t.mean().item()
        yield (per * mask).sum() / max(denom, 1e-12), {
            **info, "ratio_dev": (ratio - 1).abs().max().item(), "approx_kl": 0.5 * log_ratio.pow(2).mean().item(),
            "clip_frac_high": (ratio > 1 + clip_high).float().mean().item(), "clip_frac_low": (ratio < 1 - clip_low).float().mean().item(),
        }


class PromptStats:
    """Per-prompt reward history (last ``size`` rewards); below ``min_count`` the batch statistics are used."""

    def __init__(self, size: int, min_count: int):
        self.size, self.min_count = size, min_count
        self.history: dict[str, deque] = {}

    def advantages(self, prompts: list[str], rewards: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(rewards)
        for p in dict.fromkeys(prompts):
            idx = torch.tensor([i for i, q in enumerate(prompts) if q == p])
            hist = self.history.setdefault(p, deque(maxlen=self.size))
            hist.extend(rewards[idx].tolist())
            ref = torch.tensor(list(hist), dtype=rewards.dtype) if len(hist) >= self.min_count else rewards
            out[idx] = (rewards[idx] - ref.mean()) / (ref.std(unbiased=False) + 1e-6)
        return out


class DDPO(Method):
    title = "DDPO"
    config = DdpoConfig
    name = "ddpo"
    config_field = "ddpo"
    summary = "PPO-clip on transition log-probabilities, per-prompt advantages (DDPO)"
    needs = ("trajectory", "log_prob")

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        self.stats = PromptStats(config.buffer_size, config.min_count)

    def graph_plan(self, step, indices):
        return ppo_plan(self, step, indices, self.cfg.timestep_fraction)

    def losses(self, rollout, step):
        rewards, prompts, local = gathered(self.ctx, rollout, rollout.rewards)
        adv = self.stats.advantages(prompts, rewards.cpu()).clamp(-self.cfg.adv_clip, self.cfg.adv_clip)[local]
        keep = torch.ones(len(rollout), dtype=torch.bool)
        yield from ppo_losses(self, rollout, step, adv, keep, fraction=self.cfg.timestep_fraction,
                              clip_low=self.cfg.clip_range, clip_high=self.cfg.clip_range)

    def state(self):
        return {"history": {p: list(h) for p, h in self.stats.history.items()}}, {}

    def load_state(self, meta, tensors):
        self.stats.history = {p: deque(h, maxlen=self.stats.size) for p, h in meta.get("history", {}).items()}
