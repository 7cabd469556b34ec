"""Sampling with diffusers schedulers, recording every transition for the alignment algorithms.

Two samplers: first-order SDE-DPM-Solver++ (Nabla-R2D3's setting, research/nabla-r2d3.md §1.2) and
DDIM. Each step x_j -> x_{j+1} is a Gaussian transition N(mean_j, std_j^2 I); the recorded trajectory
holds x_j, x_{j+1}, t_j, the (CFG-combined) model output, mean_j and std_j, so a trainer can recompute
the transition's log-probability or score under new weights without sampling again.

A model used here provides ``latent_shape``, ``eps(latents, timesteps, cond)`` and ``encode_prompts``, and
optionally ``noise_schedule`` (its training betas, default BETAS).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
from torch import Tensor

SCHEDULER_KINDS = ("sde-dpmsolver++", "ddim")
BETAS = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear", prediction_type="epsilon")
# SD1.5's training schedule (DiffSplat-SD1.5); PixArt-Sigma, DiffSplat-PixArt and the tiny model use BETAS
SD15_BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="epsilon")


def make_scheduler(kind: str = "sde-dpmsolver++", betas: dict | None = None):
    """A sampler over a model's training noise schedule (``betas``: diffusers' beta arguments, BETAS by default)."""
    betas = {**BETAS, **(betas or {})}
    if kind == "sde-dpmsolver++":
        return DPMSolverMultistepScheduler(
            **betas, algorithm_type="sde-dpmsolver++", solver_order=1, final_sigmas_type="sigma_min",
            timestep_spacing="linspace", steps_offset=1, lower_order_final=True,
        )
    if kind == "ddim":
        return DDIMScheduler(**betas, timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=False)
    raise ValueError(f"Unknown scheduler {kind!r}; choose one of {', '.join(SCHEDULER_KINDS)}.")


@dataclass
class Trajectory:
    """One sampling run. Leading dims: B assets, T steps."""

    latents: Tensor  # [B, T, ...] x_j
    next_latents: Tensor  # [B, T, ...] x_{j+1}
    timesteps: Tensor  # [T] t_j
    model_outputs: Tensor  # [B, T, ...] CFG-combined ε at x_j
    means: Tensor  # [B, T, ...] mean of x_{j+1} given x_j
    stds: Tensor  # [T] std of x_{j+1} given x_j (0 for deterministic DDIM)
    guidance: float = 1.0
    scheduler: str = "sde-dpmsolver++"

    def log_prob(self) -> Tensor:
        """[B, T] mean-over-dimensions log N(x_{j+1}; mean_j, std_j^2) (undefined where std is 0)."""
        std = self.stds.to(self.means).view(1, -1, *[1] * (self.means.dim() - 2))
        z = (self.next_latents - self.means) / std
        return (-0.5 * z**2 - std.log() - 0.5 * torch.log(torch.tensor(2 * torch.pi))).flatten(2).mean(-1)


@dataclass
class StepGraph:
    """One sampler step's model call for some of the assets, kept with its autograd graph so that a trainer
    can differentiate the very pass that sampled (no second forward). ``latents`` is a leaf of its own."""

    rows: Tensor  # [r] long: the assets (rows of the batch) the call covers
    latents: Tensor  # [r, ...] x_j as the call saw it (requires grad when the input gradient was asked for)
    eps: Tensor  # [r, ...] the CFG-combined ε, attached to the graph


@dataclass
class Sample:
    latents: Tensor  # x_T, the final latents [B, ...] (attached to the graph of the steps from ``grad_from``)
    trajectory: Trajectory | None = None
    timesteps: list[int] = field(default_factory=list)
    graphs: dict[int, list[StepGraph]] = field(default_factory=dict)  # step -> its kept calls (see ``keep``)


def _dpm_transition(scheduler: DPMSolverMultistepScheduler, index: int, x: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and std of first-order SDE-DPM-Solver++ from step ``index``: research/nabla-r2d3.md §1.2."""
    sig_s, sig_t = scheduler.sigmas[index], scheduler.sigmas[index + 1]
    alpha_s, sigma_s = scheduler._sigma_to_alpha_sigma_t(sig_s)
    alpha_t, sigma_t = scheduler._sigma_to_alpha_sigma_t(sig_t)
    h = (torch.log(alpha_t) - torch.log(sigma_t)) - (torch.log(alpha_s) - torch.log(sigma_s))
    x0 = (x - sigma_s * eps) / alpha_s
    mean = (sigma_t / sigma_s * torch.exp(-h)) * x + alpha_t * (1 - torch.exp(-2.0 * h)) * x0
    std = sigma_t * torch.sqrt(1 - torch.exp(-2.0 * h))
    return mean, std


def _ddim_transition(scheduler: DDIMScheduler, t: int, x: Tensor, eps: Tensor, eta: float) -> tuple[Tensor, Tensor]:
    step = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    prev = t - step
    ac = scheduler.alphas_cumprod
    a_t = ac[t]
    a_prev = ac[prev] if prev >= 0 else scheduler.final_alpha_cumprod
    var = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    std = eta * var.sqrt()
    x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    mean = a_prev.sqrt() * x0 + (1 - a_prev - std**2).clamp_min(0).sqrt() * eps
    return mean, std


def guided_eps(model, x: Tensor, t: Tensor | int, cond, uncond, guidance: float) -> Tensor:
    """Classifier-free guidance: ε_u + w (ε_c − ε_u), both halves in one batch."""
    if guidance == 1.0 or uncond is None:
        return model.eps(x, t, cond)
    both = type(cond).cat([uncond, cond])
    e_u, e_c = model.eps(torch.cat([x, x]), t, both).chunk(2)
    return e_u + guidance * (e_c - e_u)


def _randn(shape: tuple, generator, device) -> Tensor:
    """[B, *shape] noise; ``generator`` is one generator for the batch or a list with one per asset."""
    if isinstance(generator, (list, tuple)):
        return torch.stack([torch.randn(shape, generator=g) for g in generator]).to(device)
    return torch.randn(shape, generator=generator).to(device)


def sample(
    model,
    cond,
    uncond=None,
    *,
    steps: int = 20,
    guidance: float = 4.5,
    scheduler: str = "sde-dpmsolver++",
    generator: torch.Generator | list[torch.Generator] | None = None,
    latents: Tensor | None = None,
    record: bool = False,
    grad: bool = False,
    eta: float = 0.0,
    callback=None,
    keep: Tensor | None = None,
    input_grad: Tensor | None = None,
    grad_from: int | None = None,
    checkpoint: bool = False,
) -> Sample:
    """Runs the reverse process from x_0 ~ N(0, I) (or ``latents``) for ``len(cond)`` assets.

    Args:
        uncond: the null-prompt condition (one row or len(cond) rows); None disables guidance.
        generator: seeds the initial noise and every SDE step (CPU generator; reproducible). A list with
            one generator per asset makes each asset independent of what else is in the batch.
        record: keep the Trajectory. grad: keep the autograd graph through every model call.
        eta: DDIM's stochasticity (0 = deterministic); ignored by the DPM sampler.
        callback: called as callback(step_index, steps) after each step; may raise to cancel.
        keep: [B, steps] bool: the (asset, step) calls to keep with their autograd graph in ``Sample.graphs``.
            Those assets' call runs apart from the others'; the chain itself continues without a graph.
        input_grad: [B, steps] bool: kept calls whose latents must require grad (a gradient w.r.t. x_j).
        grad_from: from this step on every call keeps its graph and the chain carries it, so the final
            latents depend on the weights through the last steps (``grad=True`` is ``grad_from=0``);
            ``checkpoint`` recomputes those calls in the backward pass instead of storing them.
    """
    if steps < 1:
        raise ValueError("steps must be >= 1.")
    sched = make_scheduler(scheduler, getattr(model, "noise_schedule", None))
    sched.set_timesteps(steps)
    B = len(cond)
    device = next(model.parameters()).device
    if uncond is not None and len(uncond) == 1 and B > 1:
        uncond = uncond.repeat(B)
    per_asset = isinstance(generator, (list, tuple))
    if per_asset and len(generator) != B:
        raise ValueError(f"Got {len(generator)} generators for {B} assets.")
    x = latents if latents is not None else _randn(model.latent_shape if per_asset else (B, *model.latent_shape), generator, device)
    rec: dict[str, list] = {k: [] for k in ("latents", "next_latents", "model_outputs", "means", "stds")}
    graphs: dict[int, list[StepGraph]] = {}
    grad_from = 0 if grad else grad_from
    for i, t in enumerate(sched.timesteps):
        chained = grad_from is not None and i >= grad_from
        with torch.enable_grad() if chained else torch.no_grad():
            if chained:
                if checkpoint:
                    eps = torch.utils.checkpoint.checkpoint(guided_eps, model, x, t, cond, uncond, guidance, use_reentrant=False)
                else:
                    eps = guided_eps(model, x, t, cond, uncond, guidance)
            elif keep is not None and keep[:, i].any():
                wants = input_grad[:, i] & keep[:, i] if input_grad is not None else torch.zeros_like(keep[:, i])
                eps, graphs[i] = _kept_step(model, x, t, cond, uncond, guidance, keep[:, i], wants)
            else:
                eps = guided_eps(model, x, t, cond, uncond, guidance)
            if scheduler == "ddim":
                mean, std = _ddim_transition(sched, int(t), x, eps, eta)
            else:
                mean, std = _dpm_transition(sched, i, x, eps)
            noise = _randn(x.shape[1:] if per_asset else x.shape, generator, device) if float(std) > 0 else 0.0
            nxt = mean + std * noise
        if record:
            for k, v in (("latents", x), ("next_latents", nxt), ("model_outputs", eps), ("means", mean)):
                rec[k].append(v if grad else v.detach())
            rec["stds"].append(torch.as_tensor(std, dtype=torch.float32))
        x = nxt
        if callback is not None:
            callback(i + 1, steps)
    traj = None
    if record:
        traj = Trajectory(
            **{k: torch.stack(rec[k], 1) for k in ("latents", "next_latents", "model_outputs", "means")},
            timesteps=sched.timesteps.clone(), stds=torch.stack(rec["stds"]), guidance=guidance, scheduler=scheduler,
        )
    return Sample(x, traj, [int(t) for t in sched.timesteps], graphs)


def _kept_step(model, x: Tensor, t, cond, uncond, guidance: float, keep: Tensor, input_grad: Tensor) -> tuple[Tensor, list[StepGraph]]:
    """ε for every asset: the ``keep`` ones from calls that keep their graph, those whose input gradient is
    wanted apart from the others (a backward pass for one purpose then never runs through the other's
    rows), the rest without a graph."""
    eps = torch.empty_like(x)
    graphs = []
    for rows, grad in ((keep & input_grad, True), (keep & ~input_grad, False), (~keep, None)):
        idx = rows.nonzero().flatten()
        if not len(idx):
            continue
        u = None if uncond is None else uncond.select(idx)
        if grad is None:
            eps[idx] = guided_eps(model, x[idx], t, cond.select(idx), u, guidance)
            continue
        xk = x[idx].detach().requires_grad_(grad)
        with torch.enable_grad():
            ek = guided_eps(model, xk, t, cond.select(idx), u, guidance)
        eps[idx] = ek.detach()
        graphs.append(StepGraph(idx, xk, ek))
    return eps, graphs
