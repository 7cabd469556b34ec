"""DiffusionNFT on ε-models: the forward-process, negative-aware objective (research/rl-trainers.md §2.8).

From the final samples x0 of the old policy and rewards mapped to r ∈ [0, 1] (group-relative advantages),
at a noise level t: x_t = α x0 + σ ε, implicit positive / negative predictions
x̂⁺ = β x̂0_θ + (1−β) x̂0_old and x̂⁻ = (1+β) x̂0_old − β x̂0_θ, and the loss
adv_clip · mean[(r L⁺ + (1−r) L⁻) / β] with L± = mean (x̂± − x0)² / sg(mean |x̂± − x0|), each sample's term
divided by σ/α (equal weight per t in ε space, option (a)), plus kl · mean (ε_θ − ε_base)². All ε are the
CFG-combined predictions the sampler uses (option iii). The old policy is an EMA of θ:
θ_old ← η θ_old + (1−η) θ with η = min(rate · step, max) (the official "type 1").
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from ..knobs import bad_value, knob
from ..rollout import _bc, random_steps
from .base import Method, mean_metrics
from .ddpo import gathered
from .grpo import group_advantages


@dataclass
class NftConfig:
    """DiffusionNFT: the forward-process, negative-aware objective on ε-model outputs (§2.8, option iii: CFG'd)."""

    # with θ_old = θ the loss's 1/β cancels the mixtures' β: β acts only as far as the old policy lags θ (tiny model,
    # 4 steps: β 0.1 and 1 gave the same first gradient and adapters 2e-4 apart)
    beta: float = knob(1.0, "NFT's mixing strength (not the KL weight); it acts only as far as the old policy lags θ, "
                       "little in the first ~100 steps (the EMA's η grows by old_decay_rate per step)", title="β (beta)",
                       low=0, open_low=True, sweep=(0.5, 1.0, 2.0))
    kl: float = knob(1e-4, "ε-space KL to the base model", title="KL weight (kl)", low=0, strength=-1)
    adv_clip: float = knob(5.0, "advantages are clipped to ± this", low=0, open_low=True)
    group_size: int = knob(4, "samples per prompt (advantages compare samples of one prompt)", low=2)
    timesteps: int = knob(4, "trained noise levels per sample, drawn from the sampler's steps", low=1)
    min_step: int = knob(6, "train only steps j >= min_step (σ/α <= 12, research §2.8 (b))", low=0)
    old_decay_rate: float = knob(0.001, "old-policy EMA: η = min(rate · step, max) (the official \"type 1\")", low=0)
    old_decay_max: float = knob(0.5, "the EMA's largest η, in [0, 1)", low=0)

    def validate(self, steps: int) -> None:
        if self.min_step >= steps:
            raise bad_value("nft.min_step", self.min_step, f"must be in [0, {steps - 1}]", "6 keeps σ/α <= 12")
        if self.timesteps > steps - self.min_step:
            raise bad_value("nft.timesteps", self.timesteps, f"must be in [1, {steps - self.min_step}]", "e.g. 4")
        if self.old_decay_max >= 1:
            raise bad_value("nft.old_decay_max", self.old_decay_max, "must be in [0, 1)", "0.5 as the official code")


CHUNK_ASSETS = 16  # assets per denoiser pass when several noise levels share one (bounds the graph's memory)


class DiffusionNFT(Method):
    title = "DiffusionNFT"
    config = NftConfig
    name = "diffusionnft"
    config_field = "nft"
    summary = "forward-process negative-aware finetuning on final samples (DiffusionNFT)"
    needs = ("final", "old_model", "groups")

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        self.old = {n: p.detach().clone() for n, p in ctx.params.items()}

    @contextlib.contextmanager
    def old_weights(self):
        saved = {n: p.detach().clone() for n, p in self.ctx.params.items()}
        with torch.no_grad():
            for n, p in self.ctx.params.items():
                p.copy_(self.old[n])
            try:
                yield
            finally:
                for n, p in self.ctx.params.items():
                    p.copy_(saved[n])

    def sampling(self):
        return self.old_weights()

    def losses(self, rollout, step):
        cfg, ctx, tr = self.cfg, self.ctx, self.ctx.transitions
        rewards, _, local = gathered(ctx, rollout, rollout.rewards)
        adv, _ = group_advantages(rewards.cpu(), cfg.group_size, "global")
        r = (adv.clamp(-cfg.adv_clip, cfg.adv_clip) / cfg.adv_clip / 2 + 0.5).clamp(0, 1)[local]
        x0 = rollout.final.detach()
        r = r.to(x0)
        B = len(rollout)
        gens = ctx.generators(step, "nft", rollout.indices)
        picks = random_steps(cfg.timesteps, cfg.min_step, tr.steps, gens)
        noises = [torch.stack([torch.randn(x0.shape[1:], generator=g) for g in gens]).to(x0) for _ in range(cfg.timesteps)]
        per_pass = max(1, CHUNK_ASSETS // B)  # noise levels per denoiser pass: several, in one batch
        for first in range(0, cfg.timesteps, per_pass):
            ks = range(first, min(first + per_pass, cfg.timesteps))
            j = torch.cat([picks[:, k] for k in ks])
            t = tr.timesteps[j]
            x0s = x0.repeat(len(ks), *[1] * (x0.dim() - 1))
            x_t = _bc(tr.alpha[j], x0s) * x0s + _bc(tr.sigma[j], x0s) * torch.cat([noises[k] for k in ks])
            many = rollout.select(torch.arange(B).repeat(len(ks)))
            with torch.no_grad(), self.old_weights():  # before θ's graph exists: the swap writes the weights in place
                eps_old = ctx.eps(many, x_t, t)
            eps = ctx.eps(many, x_t, t)
            eps_ref = ctx.reference_eps(many, x_t, t) if cfg.kl > 0 else None
            x0_new, x0_old = tr.x0(j, x_t, eps), tr.x0(j, x_t, eps_old)
            pos = cfg.beta * x0_new + (1 - cfg.beta) * x0_old
            neg = (1 + cfg.beta) * x0_old - cfg.beta * x0_new
            l_pos, l_neg = _self_normalised(pos, x0s), _self_normalised(neg, x0s)
            per = cfg.adv_clip * (r.repeat(len(ks)) * l_pos + (1 - r.repeat(len(ks))) * l_neg) / cfg.beta
            per = per / (tr.sigma[j] / tr.alpha[j]).to(per)
            loss, rows = 0.0, []
            for span in torch.arange(len(j)).split(B):  # each noise level's terms, as one level alone
                kl = cfg.kl * (eps[span] - eps_ref[span]).pow(2).mean() if cfg.kl > 0 else per.new_zeros(())
                loss = loss + (per[span].mean() + kl) / cfg.timesteps
                rows.append({"nft_pos": l_pos[span].mean().item(), "nft_neg": l_neg[span].mean().item(), "kl": kl.item(),
                             "r_mean": r.mean().item(), "old_deviate": (eps[span] - eps_old[span]).pow(2).mean().sqrt().item()})
            yield loss, mean_metrics(rows)

    def after_step(self, step, rollout):
        eta = min(self.cfg.old_decay_rate * (step + 1), self.cfg.old_decay_max)
        with torch.no_grad():
            for n, p in self.ctx.params.items():
                self.old[n].mul_(eta).add_(p.detach(), alpha=1 - eta)

    def state(self):
        return {}, {f"old.{n}": t for n, t in self.old.items()}

    def load_state(self, meta, tensors):
        for n in self.old:
            self.old[n].copy_(tensors[f"old.{n}"])


def _self_normalised(pred, x0):
    """Per sample mean (pred − x0)² / sg(max(mean |pred − x0|, 1e-5)), the official adaptive weight."""
    err = (pred - x0).flatten(1)
    w = err.detach().double().abs().mean(1).clamp_min(1e-5).to(err)
    return err.pow(2).mean(1) / w
