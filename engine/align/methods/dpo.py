"""Online Diffusion-DPO on the policy's own samples, with preference pairs made from the reward
(Wallace et al. 2023, "Diffusion Model Alignment Using Direct Preference Optimization"; Flow-Factory's `dpo`
trainer, research/rl-trainers.md §1).

Each prompt gets ``group_size`` samples x0 (the rollout's final latents); the best and the worst of the group by
reward form a pair (chosen x_w, rejected x_l), skipped when their rewards are within ``min_reward_gap``. Per pair,
``timesteps`` distinct sampler steps j are drawn and one noise ε per (pair, j) is shared by both samples:
x_t = α_j x0 + σ_j ε (α_j² + σ_j² = 1, the sampler's own schedule). With e = mean (ε − ε̂(x_t))² over the
latent's elements for the policy (θ) and for the frozen base (ref, no gradient),

    Δ = (e_w^θ − e_w^ref) − (e_l^θ − e_l^ref),   loss = −log σ(−β/2 · Δ)   (+ sft · e_w^θ)

averaged over (pair, step) terms; β/2 as in the official code and Flow-Factory, so β values compare to theirs (the
paper's T·ω(λ_t) is folded into β). At the first step θ = ref, Δ = 0 and the loss is log 2 per term; its gradient
there is β/4 · ∇(e_w − e_l): fit the chosen sample, unfit the rejected one, at the same noise. The ε are the
CFG-combined predictions the sampler uses (as DiffusionNFT's, option iii) unless ``guided`` is off (the paper's
conditional ε alone). Pairs of all processes count in the average (each group lives in one process).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..knobs import bad_value, knob
from ..rollout import _bc, random_steps
from .base import Method

CHUNK_ASSETS = 16  # samples per denoiser pass (chosen and rejected of several (pair, step) terms): bounds the graph's memory


@dataclass
class DpoConfig:
    """Diffusion-DPO: best vs worst sample of each prompt's group, the DPO loss on shared-noise denoising errors."""

    beta: float = knob(1e4, "DPO temperature: the loss is −log σ(−β/2 · Δ), Δ the chosen-minus-rejected gain in "
                       "ε-MSE over the base (larger: further from the base before the loss saturates)",
                       title="β (beta)", low=0, open_low=True, sweep=(3e3, 1e4, 3e4), strength=1)
    group_size: int = knob(2, "samples per prompt; its best and worst by reward form the pair", low=2)
    timesteps: int = knob(4, "noise levels per pair, distinct sampler steps (each with its own noise shared by the pair)", low=1)
    min_step: int = knob(0, "draw the noise levels from the sampler steps j >= min_step only", low=0)
    min_reward_gap: float = knob(1e-6, "a pair whose rewards differ by no more than this is skipped (a tie)", low=0)
    sft: float = knob(0.0, "weight of the chosen samples' own denoising MSE e_w added to the loss (0: off)",
                      title="SFT weight (sft)", low=0)
    guided: bool = knob(True, "train the CFG-combined ε the sampler uses (off: the conditional ε alone, as the paper)")

    def validate(self, steps: int) -> None:
        if self.min_step >= steps:
            raise bad_value("dpo.min_step", self.min_step, f"must be in [0, {steps - 1}]", "0 uses every sampler step")
        if self.timesteps > steps - self.min_step:
            raise bad_value("dpo.timesteps", self.timesteps, f"must be in [1, {steps - self.min_step}]", "e.g. 4")


def preference_pairs(rewards: torch.Tensor, group: int, min_gap: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(chosen rows, rejected rows, gaps) of the groups of ``group`` consecutive samples whose best and worst rewards
    differ by more than ``min_gap`` (ties go to the earlier sample, so a flat group pairs nothing)."""
    r = rewards.detach().float().cpu().view(-1, group)
    best, worst = r.argmax(1), r.argmin(1)
    gaps = r.max(1).values - r.min(1).values
    keep = (gaps > min_gap).nonzero().flatten()
    start = keep * group
    return start + best[keep], start + worst[keep], gaps[keep]


class DiffusionDPO(Method):
    title = "Diffusion-DPO"
    config = DpoConfig
    name = "dpo"
    config_field = "dpo"
    summary = "best vs worst sample of each prompt by reward as a preference pair, DPO on shared-noise ε-MSE vs the base (Diffusion-DPO)"
    needs = ("final", "reference", "groups")

    def _eps(self, rollout, x, t):
        if self.cfg.guided:
            return self.ctx.eps(rollout, x, t)
        return self.ctx.model.eps(x, t, rollout.cond)

    def losses(self, rollout, step):
        cfg, ctx, tr = self.cfg, self.ctx, self.ctx.transitions
        chosen, rejected, gaps = preference_pairs(rollout.rewards, cfg.group_size, cfg.min_reward_gap)
        used = int(ctx.gather(torch.tensor([len(chosen)])).sum())  # pairs of every process
        if used == 0:
            return  # every group was flat: nothing to learn from this step
        K, P = cfg.timesteps, len(chosen)
        keys = ("dpo_loss", "dpo_acc", "dpo_logit", "dpo_delta", "mse_w", "mse_l", "pairs", "reward_gap")
        if P == 0:  # other processes have pairs: take part in the step with a zero gradient
            yield sum(p.sum() for p in ctx.params.values()) * 0.0, {k: 0.0 for k in keys} | {"pairs": float(used)}
            return
        x0 = rollout.final.detach()
        first = [rollout.indices[int(c) - int(c) % cfg.group_size] for c in chosen]  # the group's first global sample
        gens = ctx.generators(step, "dpo", first)
        picks = random_steps(K, cfg.min_step, tr.steps, gens)  # [P, K]
        noise = torch.stack([torch.stack([torch.randn(x0.shape[1:], generator=g) for _ in range(K)]) for g in gens]).to(x0)
        terms = [(p, k) for p in range(P) for k in range(K)]
        denom = K * used / ctx.world  # the trainer averages processes' gradients: the mean over all terms
        for span in range(0, len(terms), max(1, CHUNK_ASSETS // 2)):
            part = terms[span: span + max(1, CHUNK_ASSETS // 2)]
            p_idx, k_idx = (torch.tensor(v) for v in zip(*part))
            j = picks[p_idx, k_idx]
            rows = torch.cat([chosen[p_idx], rejected[p_idx]])  # [w..., l...]
            jj, eps = torch.cat([j, j]), torch.cat([noise[p_idx, k_idx]] * 2)
            x = x0[rows]
            x_t = _bc(tr.alpha[jj], x) * x + _bc(tr.sigma[jj], x) * eps
            t = tr.timesteps[jj]
            many = rollout.select(rows)
            with torch.no_grad(), ctx.reference():
                err_ref = (self._eps(many, x_t, t) - eps).pow(2).flatten(1).mean(1)
            err = (self._eps(many, x_t, t) - eps).pow(2).flatten(1).mean(1)
            n = len(part)
            delta = (err[:n] - err_ref[:n]) - (err[n:] - err_ref[n:])
            logit = -cfg.beta / 2 * delta
            per = -F.logsigmoid(logit)
            if cfg.sft > 0:
                per = per + cfg.sft * err[:n]
            yield per.sum() / denom, {
                "dpo_loss": -F.logsigmoid(logit).mean().item(), "dpo_acc": (delta < 0).float().mean().item(),
                "dpo_logit": logit.mean().item(), "dpo_delta": delta.mean().item(),
                "mse_w": err[:n].mean().item(), "mse_l": err[n:].mean().item(),
                "pairs": float(used), "reward_gap": gaps[p_idx].mean().item(),
            }
