"""DGPO: Direct Group Preference Optimization (Luo et al. 2025), a group-level DPO on the forward process.

Each prompt's G samples (``group_size``, on-policy: the rollout's final latents x0) are split by their
group advantage A (grpo.group_advantages, global std, clipped to ± adv_clip) into positives (A > 0) and
negatives (A < 0), weighted by |A| normalised per side: w = A / Σ_{A>0} A, so Σ_pos w = Σ_neg |w| = 1
whatever the reward's scale (the weights of a group sum to 0). Per group, ``timesteps`` noise levels j are
drawn from the sampler's steps [min_step, N), and one noise ε per (group, j) is shared by the group's
samples: x_t = α_j x0 + σ_j ε. With the denoising errors e = mean (ε̂ − ε)² of the policy (θ) and the base
(ref, the Context's reference() block, no grad), the group's implicit reward gap and loss are

    Δ = Σ_i w_i (e_ref,i − e_θ,i) = Σ_pos w (e_ref − e_θ) − Σ_neg |w| (e_ref − e_θ),   ℓ = −log σ(β Δ),

averaged over the used groups and their noise levels. Groups whose rewards tie (spread <= 1e-6) carry no
preference and are left out (metric ``dgpo_used``: their share). At step 0 the policy is the base, Δ = 0
and ℓ = log 2 for every group. Like DiffusionNFT it trains on the forward process of the final samples,
so it needs no sampler log-probabilities.

Choices and their reasons:

* Sampler: the paper samples its groups with the deterministic ODE sampler (its ~20× speed-up over
  Flow-GRPO). The shared trainer samples every method's rollout with the stochastic SDE-DPM-Solver++, and
  a method can choose only the weights it samples with (``Method.sampling``), not the sampler; so DGPO here
  trains on the rollout as sampled (SDE). The objective does not depend on how x0 was drawn; only the
  speed / sample-quality benefit of ODE rollouts is not had without a trainer option.
* ε̂ is the CFG-combined prediction with the rollout's guidance, as the sampler uses it (as nft.py).
* The official code's optional EMA reference with PPO-style DSM clipping and its small KL term are left
  out: the reference is the frozen base, and the sigmoid's saturation is the only pull towards it.
* Several processes: a group may straddle processes, so each chunk gathers the detached per-sample terms
  w_i (e_ref − e_θ) to form every group's Δ, and differentiates the surrogate β sg(σ(−βΔ)) w_i e_θ,i, whose
  gradient is exactly that of ℓ (the official implementation's all-reduce form); the chunk's value is ℓ's.
* Memory: one chunk per few noise levels (at most CHUNK_ASSETS samples per denoiser pass), each
  backpropagated by the trainer before the next.
* β: measured on the shipped tiny model with the toy test's settings (brightness, lr 1e-2, batch 2, G = 2,
  guidance 2, 6 sampler steps, min_step 2): with β = 1 the mean logit Δ was 0 at step 0 and -1.7e-3,
  -2.7e-3, -8.3e-3 at steps 1-3 (|Δ| ~ 1e-3 to 1e-2), so β = 100 puts it at O(0.1-1) within a few steps
  (measured: -0.17, +0.01 at steps 1-2) and the sigmoid starts to weigh groups; it is also the top of the
  paper's 10-100. (At the default lr 1e-4 the LoRA moves less per step and the logit grows more slowly.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..knobs import bad_value, knob
from ..rollout import _bc
from .base import Method
from .ddpo import gathered
from .grpo import group_advantages


@dataclass
class DgpoConfig:
    """DGPO: group-level DPO between a prompt's better and worse samples, on the forward process."""

    beta: float = knob(100.0, "DPO's β on the group's weighted denoising-error gap to the base (larger: further from it)",
                       title="β (beta)", low=0, open_low=True, sweep=(30.0, 100.0, 300.0), strength=1)
    group_size: int = knob(4, "samples per prompt (positives and negatives are samples of one prompt)", low=2)
    timesteps: int = knob(4, "noise levels per group, drawn from the sampler's steps (one shared noise each)", low=1)
    adv_clip: float = knob(5.0, "advantages are clipped to ± this before the per-side normalisation", low=0, open_low=True)
    min_step: int = knob(6, "train only steps j >= min_step (σ/α <= 12 at 20 steps; noisier levels carry little signal)",
                         low=0)

    def validate(self, steps: int) -> None:
        if self.min_step >= steps:
            raise bad_value("dgpo.min_step", self.min_step, f"must be in [0, {steps - 1}]", "6 keeps σ/α <= 12 at 20 steps")
        if self.timesteps > steps - self.min_step:
            raise bad_value("dgpo.timesteps", self.timesteps, f"must be in [1, {steps - self.min_step}]", "e.g. 4")


CHUNK_ASSETS = 16  # samples per denoiser pass when several noise levels share one (bounds the graph's memory)
TIE = 1e-6  # a group whose rewards' spread is at most this carries no preference


def group_weights(rewards: torch.Tensor, group: int, adv_clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(w [B], used [B/G] bool): clipped group advantages normalised per side (Σ_pos w = Σ_neg |w| = 1) for
    rewards of consecutive groups of ``group`` samples; tied groups get w = 0 and are not used."""
    adv, spread = group_advantages(rewards, group, "global")
    a = adv.clamp(-adv_clip, adv_clip).view(-1, group)
    pos, neg = a.clamp_min(0), (-a).clamp_min(0)
    used = (spread > TIE) & (pos.sum(1) > 0) & (neg.sum(1) > 0)
    w = pos / pos.sum(1, keepdim=True).clamp_min(1e-12) - neg / neg.sum(1, keepdim=True).clamp_min(1e-12)
    return (w * used[:, None]).flatten(), used


class DGPO(Method):
    title = "DGPO"
    config = DgpoConfig
    name = "dgpo"
    config_field = "dgpo"
    summary = "group-level DPO: better vs worse samples of a prompt by their denoising-error gap to the base (DGPO)"
    needs = ("final", "reference", "groups")

    def losses(self, rollout, step):
        cfg, ctx, tr = self.cfg, self.ctx, self.ctx.transitions
        G, K = cfg.group_size, cfg.timesteps
        rewards, _, local = gathered(ctx, rollout, rollout.rewards)
        w_all, used = group_weights(rewards.detach().double().cpu(), G, cfg.adv_clip)
        n_used = int(used.sum())
        if n_used == 0:
            return  # every group tied: no preference to learn from this step
        x0 = rollout.final.detach()
        B = len(rollout)
        w = w_all[local].to(x0)
        groups = (local // G).tolist()  # each local sample's group (consecutive G in the gathered order)
        picks = {g: cfg.min_step + torch.randperm(tr.steps - cfg.min_step, generator=ctx.shared(step, "dgpo-steps", g))[:K]
                 for g in set(groups)}
        noise = {(g, k): torch.randn(x0.shape[1:], generator=ctx.shared(step, "dgpo-noise", g, k)).to(x0)
                 for g in set(groups) for k in range(K)}
        scale = ctx.world / (n_used * K)  # mean over used groups and levels; the trainer averages processes' grads
        share = torch.zeros(len(used), dtype=torch.float64)  # this process's members / G of each group
        share.index_add_(0, local // G, torch.full((B,), 1 / G, dtype=torch.float64))
        per_pass = max(1, CHUNK_ASSETS // B)
        for lo in range(0, K, per_pass):
            ks = range(lo, min(lo + per_pass, K))
            j = torch.stack([picks[g][k] for k in ks for g in groups])
            eps_true = torch.stack([noise[g, k] for k in ks for g in groups])
            x0s = x0.repeat(len(ks), *[1] * (x0.dim() - 1))
            x_t = _bc(tr.alpha[j], x0s) * x0s + _bc(tr.sigma[j], x0s) * eps_true
            many, t = rollout.select(torch.arange(B).repeat(len(ks))), tr.timesteps[j]
            e_ref = (ctx.reference_eps(many, x_t, t) - eps_true).pow(2).flatten(1).mean(1)
            e_pol = (ctx.eps(many, x_t, t) - eps_true).pow(2).flatten(1).mean(1)
            ws = w.repeat(len(ks))
            term = (ws * (e_ref - e_pol.detach())).view(len(ks), B).t().contiguous()  # [B, levels] w_i (e_ref − e_θ)
            delta = ctx.gather(term).cpu().double().view(-1, G, len(ks)).sum(1)  # [groups, levels] Δ
            logit = cfg.beta * delta
            nll = F.softplus(-logit)  # −log σ(β Δ)
            pull = torch.sigmoid(-logit)[groups].t().flatten().to(x0)  # sg(σ(−βΔ)) per (level, local sample)
            surrogate = scale * cfg.beta * (pull * ws * e_pol).sum()
            value = scale * float((nll * share[:, None] * used[:, None]).sum())
            loss = surrogate + (value - surrogate).detach()  # θ's gradient of ℓ, ℓ's value
            u = used[:, None].expand_as(logit)
            yield loss, {"dgpo_loss": nll[u].mean().item(), "dgpo_logit": logit[u].mean().item(),
                         "dgpo_used": used.double().mean().item()}

    # no state: randomness depends on (seed, step, group) only, so a resumed run continues exactly

