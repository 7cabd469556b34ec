"""Analytic worlds: data whose every distribution is known, behind the same model interface as the 3D models.

A world is a Gaussian mixture in D dimensions (one component: a Gaussian). Its exact denoiser is closed-form
(the posterior mean of x0 given x_t), so the base model is the data distribution's own, with no training
error to confuse a method's error with. On top sits a small MLP head whose output layer starts at zero:
peft's LoRA on its ``linear_1``, ``linear_2`` and ``proj_out`` is what every method trains, exactly as it
trains the 3D model's adapter. The sampler, the trainer, the rollout and the method modules see an ordinary
model: latents [B, 1, D, 1, 1], ``eps(latents, t, cond)``, ``encode_prompts``; rewards act on the sample
itself (:class:`SampleRewardPath`), with no rendering.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ...core.sampling import make_scheduler
from ...models.base import Condition

WORLDS = ("gaussian", "mixture")
REWARDS = ("direction", "ring", "corner")


# --------------------------------------------------------------------------------------------- data
@dataclass
class Mixture:
    """Σ_k π_k N(μ_k, Σ_k) in float64; a Gaussian is the one-component case."""

    weights: Tensor  # [K]
    means: Tensor  # [K, D]
    covs: Tensor  # [K, D, D]

    def __post_init__(self):
        self.weights = self.weights.double() / self.weights.sum()
        self.means, self.covs = self.means.double(), self.covs.double()
        evals, evecs = torch.linalg.eigh(self.covs)
        if (evals <= 0).any():
            raise ValueError("Every component's covariance must be positive definite.")
        self.evals, self.evecs = evals, evecs  # Σ_k = U diag(s) Uᵀ: every noised covariance shares U

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def mean(self) -> Tensor:
        return self.weights @ self.means

    @property
    def cov(self) -> Tensor:
        d = self.means - self.mean
        return (self.weights[:, None, None] * (self.covs + d[:, :, None] * d[:, None, :])).sum(0)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        root = self.evecs * self.evals.sqrt()[:, None, :]  # U diag(√s)
        return self.means[k] + (root[k] @ z[:, :, None])[..., 0]

    def log_prob(self, x: Tensor, alpha: Tensor | float = 1.0, sigma: Tensor | float = 0.0) -> Tensor:
        """log density of α x0 + σ ε at x [B, D] (α, σ scalars or [B]); α = 1, σ = 0 is the data itself."""
        return torch.logsumexp(self._component_log_probs(x.double(), alpha, sigma), dim=1)

    def _component_log_probs(self, x: Tensor, alpha, sigma) -> Tensor:
        a, s = _col(alpha, x), _col(sigma, x)
        var = a[:, :, None] ** 2 * self.evals[None] + s[:, :, None] ** 2  # [B, K, D] in each component's eigenbasis
        z = torch.einsum("kdi,bkd->bki", self.evecs, x[:, None, :] - a[:, :, None] * self.means[None])
        return (self.weights.log()[None] - 0.5 * ((z**2 / var) + var.log()).sum(-1) - 0.5 * self.dim * math.log(2 * math.pi))

    def posterior_mean(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """E[x0 | α x0 + σ ε = x], exactly (Tweedie's x̂0): [B, D] float64."""
        x = x.double()
        a, s = _col(alpha, x), _col(sigma, x)
        resp = torch.softmax(self._component_log_probs(x, alpha, sigma), dim=1)  # [B, K]
        gain = a[:, :, None] * self.evals[None] / (a[:, :, None] ** 2 * self.evals[None] + s[:, :, None] ** 2)  # [B, K, D]
        z = torch.einsum("kdi,bkd->bki", self.evecs, x[:, None, :] - a[:, :, None] * self.means[None])
        per = self.means[None] + torch.einsum("kdi,bki->bkd", self.evecs, gain * z)  # μ_k + Σ_k(α²Σ_k+σ²)⁻¹α(x − αμ_k)
        return (resp[:, :, None] * per).sum(1)


def _col(v, like: Tensor) -> Tensor:
    """A scalar or [B] as [B, 1] float64."""
    v = torch.as_tensor(v, dtype=torch.float64, device=like.device)
    return v.reshape(-1, 1).expand(like.shape[0], 1)


def make_data(world: str, dim: int = 2, seed: int = 0) -> Mixture:
    """The worlds of the theory checks. ``gaussian``: a correlated Gaussian (std 1 and 0.5 along rotated axes
    in 2-D; a random covariance with eigenvalues in [0.25, 1] beyond). ``mixture``: two well separated
    components, weights 0.7 / 0.3, each with the Gaussian's shape scaled by 0.35."""
    if world not in WORLDS:
        raise ValueError(f"Unknown world {world!r}; choose one of {', '.join(WORLDS)}.")
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}.")
    g = torch.Generator().manual_seed(seed)
    if dim == 2:
        c, s = math.cos(math.pi / 6), math.sin(math.pi / 6)
        rot = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
        scales = torch.tensor([1.0, 0.5], dtype=torch.float64)
    else:
        rot = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))[0]
        scales = torch.linspace(1.0, 0.5, dim, dtype=torch.float64)
    cov = rot @ torch.diag(scales**2) @ rot.T
    if world == "gaussian":
        return Mixture(torch.ones(1), torch.full((1, dim), 0.0, dtype=torch.float64) + _offset(dim), cov[None])
    axis = torch.zeros(dim, dtype=torch.float64)
    axis[: min(dim, 2)] = torch.tensor([1.0, -0.6][: min(dim, 2)])
    axis = axis / axis.norm()
    means = torch.stack([-0.6 * axis, 1.4 * axis]) + _offset(dim)
    return Mixture(torch.tensor([0.7, 0.3]), means, (0.35**2 * cov)[None].expand(2, -1, -1).clone())


def _offset(dim: int) -> Tensor:
    """A small off-centre data mean, so that a method that collapses to 0 is visible."""
    v = torch.zeros(dim, dtype=torch.float64)
    v[0] = -0.3
    return v


# ------------------------------------------------------------------------------------------ rewards
class SampleReward(nn.Module):
    """A reward on the sample itself: [B, D] -> [B]. ``kind``: ``direction`` r = aᵀx (|a| = 1, the direction
    of (1, 1) in the first two dimensions); ``ring`` r = −(|x| − radius)² on the first two dimensions;
    ``corner`` r = −|x − c|² / 2, c = 2·(1, 1) in the first two dimensions (a quadratic pull)."""

    def __init__(self, kind: str, dim: int, radius: float = 1.5):
        super().__init__()
        if kind not in REWARDS:
            raise ValueError(f"Unknown reward {kind!r}; choose one of {', '.join(REWARDS)}.")
        self.kind, self.radius = kind, radius
        v = torch.zeros(dim, dtype=torch.float64)
        v[: min(dim, 2)] = 1.0
        self.register_buffer("direction", v / v.norm(), persistent=False)
        self.register_buffer("corner", v * 2.0, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "direction":
            return x @ self.direction.to(x)
        if self.kind == "ring":
            r = x[:, :2].pow(2).sum(1).add(1e-12).sqrt()
            return -(r - self.radius) ** 2
        return -0.5 * (x - self.corner.to(x)).pow(2).sum(1)

    @property
    def linear(self) -> Tensor | None:
        """a for a linear reward aᵀx, else None."""
        return self.direction if self.kind == "direction" else None


class SampleRewardPath:
    """The trainer's reward path for a world: the sample is its own observation (no cameras, one "view").

    Same calls as the 3D ``RewardPath``: ``cameras``, ``render`` (the identity), ``score`` and ``__call__``;
    ``image_noise`` adds noise to the observed sample, as the 3D path adds it to the images."""

    views = 1

    def __init__(self, reward: SampleReward):
        self.reward = reward

    def cameras(self, generator: torch.Generator) -> None:
        return None

    def render(self, latents: Tensor, cameras=None) -> Tensor:
        return latents

    def score(self, observed: Tensor, prompts=None, cameras=None, *, views=None, image_noise: float = 0.0,
              generators=None) -> tuple[Tensor, dict[str, Tensor]]:
        x = observed.flatten(1)
        if image_noise > 0 and generators is not None:
            x = x + image_noise * torch.stack([torch.randn(x.shape[1:], generator=g) for g in generators]).to(x)
        return self.reward(x), {}

    def __call__(self, latents: Tensor, prompts=None, cameras=None, **kw) -> tuple[Tensor, dict[str, Tensor]]:
        return self.score(latents, prompts, cameras, **kw)


# -------------------------------------------------------------------------------------------- model
class Head(nn.Module):
    """ε correction from (x, noise level): an MLP whose output layer starts at zero (the base is exact)."""

    def __init__(self, dim: int, hidden: int = 64, freqs: int = 8):
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(math.log(0.25), math.log(8.0), freqs)), persistent=False)
        self.linear_1 = nn.Linear(dim + 2 * freqs + 1, hidden)
        self.linear_2 = nn.Linear(hidden, hidden)
        self.proj_out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: Tensor, log_snr: Tensor) -> Tensor:
        u = log_snr[:, None] / 4  # λ = log(α/σ) spans about [−5, 5] over the schedule
        feats = torch.cat([x, u, torch.sin(u * self.freqs), torch.cos(u * self.freqs)], dim=1)
        h = nn.functional.silu(self.linear_1(feats))
        h = nn.functional.silu(self.linear_2(h))
        return self.proj_out(h)


class WorldModel(nn.Module):
    """The base model of a world: exact ε (from the posterior mean) plus the LoRA-able head (zero at first).

    Unconditional: ``encode_prompts`` gives one empty token per prompt and guidance is 1."""

    guidance_default = 1.0
    noise_schedule = None  # the sampler's default training betas (engine.core.sampling.BETAS)

    def __init__(self, data: Mixture, hidden: int = 64, seed: int = 0):
        super().__init__()
        self.data = data
        self.name = f"theory-{'gaussian' if len(data.weights) == 1 else 'mixture'}-{data.dim}d"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.denoiser = Head(data.dim, hidden)
        self.register_buffer("alphas_cumprod", make_scheduler("ddim").alphas_cumprod.clone(), persistent=False)

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        return (1, self.data.dim, 1, 1)

    @property
    def device(self) -> torch.device:
        return self.alphas_cumprod.device

    def alpha_sigma(self, timesteps: Tensor, batch: int) -> tuple[Tensor, Tensor]:
        t = torch.as_tensor(timesteps, device=self.device).reshape(-1).long().expand(batch)
        ac = self.alphas_cumprod[t].double()
        return ac.sqrt(), (1 - ac).sqrt()

    def exact_eps(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """The data's own ε(x_t) = (x_t − α E[x0|x_t]) / σ, float64 [B, D]."""
        x0 = self.data.posterior_mean(x, alpha, sigma)
        return (x.double() - alpha[:, None] * x0) / sigma[:, None]

    def eps(self, latents: Tensor, timesteps: Tensor, cond: Condition | None = None) -> Tensor:
        B = latents.shape[0]
        x = latents.reshape(B, self.data.dim)
        alpha, sigma = self.alpha_sigma(timesteps, B)
        base = self.exact_eps(x, alpha, sigma)  # differentiable in x: the look-ahead's x̂0 takes ∂ε/∂x
        correction = self.denoiser(x, (alpha / sigma).log().to(x))
        return (base.to(x) + correction).reshape(latents.shape)

    def encode_prompts(self, prompts: list[str]) -> Condition:
        n = len(prompts)
        return Condition(torch.zeros(n, 1, 1, device=self.device), torch.ones(n, 1, dtype=torch.bool, device=self.device))
