"""What every method shares: the sampler's Gaussian transitions, guided ε at per-sample timesteps, the
reward path (latents -> splatter maps -> Gaussians -> renders from the reward rig -> one score per asset),
the rollout record, and seeded randomness that depends only on (seed, step, sample) so that runs resume
exactly and 2 processes reproduce 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..core.cameras import (
    CANONICAL_AZIMUTHS,
    DIFFSPLAT_ELEVATION,
    DIFFSPLAT_RADIUS,
    Cameras,
    orbit_cameras,
)
from ..core.sampling import StepGraph, Trajectory, make_scheduler
from ..models.base import Condition
from ..render import RenderOutput, render
from ..rewards import Ensemble, Reward, flatten_renders


def seeded(*keys: int | str) -> torch.Generator:
    """A CPU generator that depends only on ``keys`` (run seed, step, purpose, sample index...)."""
    h = 1469598103934665603
    for k in keys:
        for ch in str(k).encode() + b"|":
            h = ((h ^ ch) * 1099511628211) % 2**64
    return torch.Generator().manual_seed(h % 2**63)


# ------------------------------------------------------------------------------------- transitions
@dataclass
class Transitions:
    """First-order SDE-DPM-Solver++ as per-step coefficients (research/nabla-r2d3.md §1.2):

    x̂0 = (x_j − σ_j ε) / α_j,   μ_j = a_j x_j + b_j x̂0,   x_{j+1} = μ_j + std_j ξ.

    Index j may be a tensor of per-sample steps, so one batch can hold transitions of different steps.
    ``alpha``/``sigma`` have N + 1 entries (the last is the final σ_min state).
    """

    timesteps: Tensor  # [N] long, t_j
    alpha: Tensor  # [N + 1]
    sigma: Tensor  # [N + 1]
    a: Tensor  # [N]
    b: Tensor  # [N]
    std: Tensor  # [N]

    @classmethod
    def for_model(cls, model, steps: int, dtype: torch.dtype = torch.float32) -> "Transitions":
        """The coefficients for ``steps`` sampler steps on the model's noise schedule (computed in float64,
        kept in ``dtype``)."""
        sched = make_scheduler("sde-dpmsolver++", getattr(model, "noise_schedule", None))
        sched.set_timesteps(steps)
        sig = sched.sigmas.double()
        alpha = 1 / torch.sqrt(sig**2 + 1)
        sigma = sig * alpha
        lam = torch.log(alpha) - torch.log(sigma)
        h = lam[1:] - lam[:-1]
        a = sigma[1:] / sigma[:-1] * torch.exp(-h)
        b = alpha[1:] * (1 - torch.exp(-2 * h))
        std = sigma[1:] * torch.sqrt(1 - torch.exp(-2 * h))
        f = lambda t: t.to(dtype)  # noqa: E731
        return cls(sched.timesteps.long().clone(), f(alpha), f(sigma), f(a), f(b), f(std))

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    def x0(self, j: Tensor, x: Tensor, eps: Tensor) -> Tensor:
        return (x - _bc(self.sigma[j], x) * eps) / _bc(self.alpha[j], x)

    def mean(self, j: Tensor, x: Tensor, eps: Tensor) -> Tensor:
        return _bc(self.a[j], x) * x + _bc(self.b[j], x) * self.x0(j, x, eps)

    def score_coefficient(self, j: Tensor) -> Tensor:
        """c_j with s_θ − s_ref = −c_j (ε_θ − ε_ref) (research §1.2)."""
        return self.alpha[j + 1] * self.sigma[j] / (self.alpha[j] * self.sigma[j + 1] ** 2)


def _bc(v: Tensor, like: Tensor) -> Tensor:
    """Per-sample values [B] (or a scalar) shaped to broadcast over [B, ...]."""
    v = v.to(like)
    return v.view(-1, *[1] * (like.dim() - 1)) if v.dim() else v


def guided_eps(model, x: Tensor, t: Tensor, cond: Condition, uncond: Condition, guidance: float) -> Tensor:
    """CFG-combined ε at per-sample timesteps t [B] (both halves in one batch, as the sampler)."""
    t = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])
    if guidance == 1.0:
        return model.eps(x, t, cond)
    e_u, e_c = model.eps(torch.cat([x, x]), torch.cat([t, t]), Condition.cat([uncond, cond])).chunk(2)
    return e_u + guidance * (e_c - e_u)


def alpha_bar(model, t: Tensor) -> Tensor:
    return model.alphas_cumprod[torch.as_tensor(t).long().to(model.alphas_cumprod.device)].float()


# --------------------------------------------------------------------------------------- rollouts
@dataclass
class GraphPlan:
    """What a method will differentiate of the coming rollout, said before sampling (its random choices
    depend only on seed, step and sample), so the sampler keeps those calls' autograd graphs and the loss
    needs no second forward pass. On-policy the kept pass is the policy's exactly (same weights, inputs,
    prompts and guidance); only the batch it ran in differs, which changes float summation order."""

    keep: Tensor | None = None  # [B, N] bool: (sample, step) calls whose ε_θ(x_j) the loss differentiates
    input_grad: Tensor | None = None  # [B, N] bool: kept calls whose gradient w.r.t. x_j is taken too
    chain_from: int | None = None  # the chain from this step to the end keeps its graph (DRaFT, AlignProp)
    checkpoint: bool = False  # recompute the chained calls in the backward pass instead of storing them

    @classmethod
    def calls(cls, batch: int, steps: int, picks: Tensor, input_picks: Tensor | None = None) -> "GraphPlan":
        """Keep the calls at ``picks`` [B, k] (step per sample), and at ``input_picks`` [B, k'] with x_j's
        gradient too (entries outside [0, steps) ask for nothing)."""
        keep = torch.zeros(batch, steps, dtype=torch.bool)
        keep[torch.arange(batch)[:, None], picks] = True
        grad = None
        if input_picks is not None:
            rows = torch.arange(batch)[:, None].expand_as(input_picks)
            inside = (input_picks >= 0) & (input_picks < steps)
            grad = torch.zeros_like(keep)
            grad[rows[inside], input_picks[inside]] = True
            keep |= grad
        return cls(keep, grad)

    def capped(self, calls: int) -> "GraphPlan":
        """At most ``calls`` kept (sample, step) calls, the earliest steps first: the rest are computed again."""
        if self.keep is None or int(self.keep.sum()) <= calls:
            return self
        order = self.keep.t().flatten().nonzero().flatten()[calls:]  # step-major
        keep = self.keep.t().flatten().clone()
        keep[order] = False
        keep = keep.view(self.keep.shape[1], -1).t()
        return GraphPlan(keep, None if self.input_grad is None else self.input_grad & keep, self.chain_from, self.checkpoint)


@dataclass
class Rollout:
    """One optimiser step's samples, drawn by the shared sampler (without gradients, but for the calls a
    method's GraphPlan asked to keep)."""

    prompts: list[str]
    cond: Condition  # B rows
    uncond: Condition  # B rows (the empty prompt)
    trajectory: Trajectory
    rewards: Tensor  # [B] reward of the final samples (no grad)
    components: dict[str, Tensor] = field(default_factory=dict)  # ensemble terms, [B] each
    indices: list[int] = field(default_factory=list)  # global sample indices (seeds per sample)
    guidance: float = 1.0
    graphs: dict[int, list[StepGraph]] = field(default_factory=dict)  # sampler calls kept with their graph (GraphPlan)
    chained: Tensor | None = None  # the final latents attached to the chain's graph (GraphPlan.chain_from)

    @property
    def final(self) -> Tensor:
        return self.trajectory.next_latents[:, -1]

    def select(self, rows: Tensor) -> "Rollout":
        """The samples ``rows`` (a long index tensor; repeats allowed) with their prompts and conditions; the
        trajectory, rewards and kept calls stay whole (index them with ``rows``)."""
        idx = rows.tolist()
        return Rollout([self.prompts[i] for i in idx], self.cond.select(rows), self.uncond.select(rows), self.trajectory,
                       self.rewards, self.components, [self.indices[i] for i in idx] if self.indices else [], self.guidance)

    def __len__(self) -> int:
        return len(self.prompts)


# ----------------------------------------------------------------------------------- reward path
class RewardPath:
    """Latents -> renders from the reward rig -> one score per asset, differentiable end to end."""

    def __init__(self, model, reward: Reward, *, resolution: int, views: int, azimuth_range: float,
                 elevation_jitter: float, aggregate: str):
        self.model, self.reward = model, reward
        self.resolution, self.views, self.aggregate = resolution, views, aggregate
        self.azimuth_range, self.elevation_jitter = azimuth_range, elevation_jitter
        self.calls = self.images = 0  # reward calls and images scored so far (what a study's budget counts)

    def cameras(self, generator: torch.Generator) -> Cameras:
        """The reward rig: ``views`` evenly spaced azimuths (the canonical ones for 4) turned together by
        U(−range/2, range/2)°, elevation 10° ± jitter (the generation views' elevation; the reference's
        training-time 0° is its bug B3)."""
        u = torch.rand(2, generator=generator)
        step = 360.0 / self.views
        azimuth = torch.tensor(CANONICAL_AZIMUTHS if self.views == 4 else [i * step for i in range(self.views)])
        azimuth = azimuth + (u[0] - 0.5) * self.azimuth_range
        elevation = DIFFSPLAT_ELEVATION + (u[1] * 2 - 1) * self.elevation_jitter
        return orbit_cameras(torch.full_like(azimuth, float(elevation)), azimuth % 360.0, DIFFSPLAT_RADIUS)

    def render(self, latents: Tensor, cameras: Cameras) -> RenderOutput:
        maps = self.model.decode(latents)
        gaussians = self.model.to_gaussians(maps.float())
        return render(gaussians, cameras.to(maps.device), self.resolution)

    def score(self, renders: RenderOutput, prompts: list[str], cameras: Cameras, *, views: Tensor | None = None,
              image_noise: float = 0.0, generators: list[torch.Generator] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """[B] scores (view mean or max) and, for ensembles, every term's [B] raw score.

        ``views``: [B, k] view indices to score per asset (None: all). ``image_noise``: std of Gaussian
        noise added to the images (the reference's reward-averaging copies)."""
        B, V = renders.rgb.shape[:2]
        inputs = flatten_renders(renders, prompts, cameras)
        if image_noise > 0:
            shape = inputs.images.shape[1:]
            noise = torch.stack([torch.randn(V, *shape, generator=g) for g in generators]).flatten(0, 1)
            inputs.images = inputs.images + image_noise * noise.to(inputs.images)
        k = V
        if views is not None:
            k = views.shape[1]
            inputs = inputs.select((views + V * torch.arange(B)[:, None]).flatten())
        with torch.autocast(inputs.images.device.type, enabled=False):
            if isinstance(self.reward, Ensemble):
                parts = self.reward.components(inputs)
            else:
                parts = {"total": self.reward.score_inputs(inputs)}
        self.calls, self.images = self.calls + 1, self.images + B * k
        agg = (lambda s: s.view(B, k).mean(1)) if self.aggregate == "mean" else (lambda s: s.view(B, k).amax(1))
        parts = {name: agg(s) for name, s in parts.items()}
        total = parts.pop("total")
        return total, parts

    def __call__(self, latents: Tensor, prompts: list[str], cameras: Cameras, **kw) -> tuple[Tensor, dict[str, Tensor]]:
        return self.score(self.render(latents, cameras), prompts, cameras, **kw)


# -------------------------------------------------------------------------------- step selection
def stratified_steps(steps: int, k: int, generators: list[torch.Generator], low_variance: bool = True) -> Tensor:
    """[B, k] transition indices per trajectory: the terminal step N−1 first, then k−1 more.

    Low variance: the other N−1 steps are cut into k−1 contiguous strata and one step is drawn uniformly
    from each (so no step repeats, unlike the reference's fixed 4 trunks of 5 that may draw the terminal
    step twice). Otherwise k−1 distinct steps uniformly. ``k = N`` takes every step.
    """
    if not 1 <= k <= steps:
        raise ValueError(f"Cannot pick {k} of {steps} steps.")
    rows = []
    for g in generators:
        if k == steps:
            rest = torch.randperm(steps - 1, generator=g)
        elif low_variance and k > 1:
            edges = [round(i * (steps - 1) / (k - 1)) for i in range(k)]
            u = torch.rand(k - 1, generator=g)
            rest = torch.tensor([lo + min(int(u[i] * (hi - lo)), hi - lo - 1) for i, (lo, hi) in enumerate(zip(edges, edges[1:]))])
        else:
            rest = torch.randperm(steps - 1, generator=g)[: k - 1]
        rows.append(torch.cat([torch.tensor([steps - 1]), rest.long()])[:k])
    return torch.stack(rows)


def random_steps(count: int, low: int, high: int, generators: list[torch.Generator]) -> Tensor:
    """[B, count] distinct steps in [low, high) per sample, uniformly."""
    if high - low < count:
        raise ValueError(f"Cannot pick {count} distinct steps from [{low}, {high}).")
    return torch.stack([low + torch.randperm(high - low, generator=g)[:count] for g in generators])


def gaussian_log_ratio(x_next: Tensor, mean_new: Tensor, mean_old: Tensor, std: Tensor) -> Tensor:
    """[B] log N(x_next; mean_new, std²) − log N(x_next; mean_old, std²), averaged over dimensions
    (the log-probability convention of DDPO / Flow-GRPO); computed as a difference for precision."""
    var = _bc(std, x_next) ** 2
    d = ((x_next - mean_old) ** 2 - (x_next - mean_new) ** 2) / (2 * var)
    return d.flatten(1).mean(1)

