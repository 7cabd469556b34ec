"""What each method should converge to on an analytic world, and how far a sample cloud is from it.

- :func:`tilt_linear`: p*(x) ∝ p(x)·exp(β aᵀx) of a Gaussian mixture, in closed form (THEORY.md §1).
- :func:`resample_tilt`: samples of p* by self-normalised importance resampling of base samples (with the
  weights' effective sample size), for any reward.
- :class:`GaussianChain`: the sampler's own chain on Gaussian data, in float64. Its conditional means are
  affine in x_j, so its output distribution, the exact tilt of its path, Nabla-R2D3's discrete fixed point
  and DRaFT's fixed point under the ε-space KL are all closed-form (THEORY.md §2-4).
- :func:`distances`: mean error in units of the target's std, variance ratio, reward gap, sliced W2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..rollout import Transitions
from .world import Mixture, SampleReward


def tilt_linear(data: Mixture, a: Tensor, beta: float) -> Mixture:
    """exp(β aᵀx)-tilt of Σ π_k N(μ_k, Σ_k): weights ∝ π_k exp(β aᵀμ_k + ½β² aᵀΣ_k a), means μ_k + β Σ_k a."""
    a = a.double()
    shift = beta * data.covs @ a  # [K, D]
    logw = data.weights.log() + beta * data.means @ a + 0.5 * beta * (shift @ a)
    return Mixture(torch.softmax(logw, 0), data.means + shift, data.covs.clone())


@dataclass
class Target:
    samples: Tensor  # [n, D] float64
    exact: bool  # closed-form samples (True) or importance resampling (False)
    ess: float  # effective sample size of the importance weights (n when exact)


def resample_tilt(pool: Tensor, reward: SampleReward, beta: float, n: int, seed: int = 0) -> Target:
    """n samples of p* ∝ p·exp(β r) resampled from ``pool`` (samples of p) with weights ∝ exp(β r):
    self-normalised importance sampling; ``ess`` (the weights' effective sample size) says how trustworthy."""
    w = torch.softmax(beta * reward(pool.double()).double(), 0)
    idx = torch.multinomial(w, n, replacement=True, generator=torch.Generator().manual_seed(seed))
    return Target(pool.double()[idx], False, float(1.0 / (w**2).sum()))


# ------------------------------------------------------------------------------ the sampler's own chain
class GaussianChain:
    """First-order SDE-DPM-Solver++ on Gaussian data N(μ, Σ) with the exact denoiser, in float64.

    x̂0(x_j) = μ + G_j (x_j − α_j μ) with G_j = α_j Σ (α_j² Σ + σ_j² I)⁻¹, so each step is
    x_{j+1} = M_j x_j + c_j + std_j ξ with M_j = a_j I + b_j G_j, c_j = b_j (I − α_j G_j) μ, and x_0 ~ N(0, I).
    """

    def __init__(self, data: Mixture, model, steps: int):
        if len(data.weights) != 1:
            raise ValueError("GaussianChain needs one-component (Gaussian) data.")
        self.mu, self.cov = data.means[0], data.covs[0]
        self.tr = Transitions.for_model(model, steps, dtype=torch.float64)
        self.alpha_bar = model.alphas_cumprod.double()
        D, N = len(self.mu), steps
        eye = torch.eye(D, dtype=torch.float64)
        self.G = [self._gain(self.tr.alpha[j], self.tr.sigma[j]) for j in range(N)]
        self.M = [self.tr.a[j] * eye + self.tr.b[j] * self.G[j] for j in range(N)]
        self.c = [self.tr.b[j] * (eye - self.tr.alpha[j] * self.G[j]) @ self.mu for j in range(N)]
        # L[j] maps x_{j+1} to x_N (the product of the later steps' M); L[-1]... handled by `initial`
        self.L = [eye] * N
        for j in range(N - 2, -1, -1):
            self.L[j] = self.L[j + 1] @ self.M[j + 1]
        self.initial = self.L[0] @ self.M[0]  # x_0 to x_N

    def _gain(self, alpha, sigma) -> Tensor:
        D = len(self.mu)
        return alpha * self.cov @ torch.linalg.inv(alpha**2 * self.cov + sigma**2 * torch.eye(D, dtype=torch.float64))

    @property
    def steps(self) -> int:
        return self.tr.steps

    def output(self, shifts: list[Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """Mean and covariance of x_N when each transition's mean is moved by the constant ``shifts[j]``."""
        m, C = torch.zeros_like(self.mu), torch.eye(len(self.mu), dtype=torch.float64)
        for j in range(self.steps):
            m = self.M[j] @ m + self.c[j] + (shifts[j] if shifts is not None else 0.0)
            C = self.M[j] @ C @ self.M[j].T + self.tr.std[j] ** 2 * torch.eye(len(self.mu), dtype=torch.float64)
        return m, C

    def path_tilt(self, a: Tensor, beta: float) -> tuple[Tensor, Tensor]:
        """The chain's own output tilted by exp(β aᵀx_N): N(m_N + β C_N a, C_N) (what the path measure's tilt
        gives, x_0's tilt included)."""
        m, C = self.output()
        return m + beta * C @ a.double(), C

    def nabla_shifts(self, a: Tensor, beta: float, scaling: str = "none") -> list[Tensor]:
        """Nabla-R2D3's fixed point: μ_θ − μ_ref = std_j² g_{j+1}, g_{j+1} = β w_{j+1} ∇ aᵀx̂0(x_{j+1}) =
        β w_{j+1} G_{j+1} a (x̂0 = x at the terminal step), w the adaptive scaling (THEORY.md §3)."""
        a, N = a.double(), self.steps
        shifts = []
        for j in range(N):
            if j == N - 1:
                grad, ab = a, self.alpha_bar[0]
            else:
                grad, ab = self.G[j + 1] @ a, self.tr.alpha[j + 1] ** 2
            w = {"none": 1.0, "squared": ab, "sqrt": ab.sqrt() if torch.is_tensor(ab) else math.sqrt(ab)}[scaling]
            shifts.append(self.tr.std[j] ** 2 * beta * w * grad)
        return shifts

    def nabla_fixed_point(self, a: Tensor, beta: float, scaling: str = "none") -> tuple[Tensor, Tensor]:
        return self.output(self.nabla_shifts(a, beta, scaling))

    def kl_reward_fixed_point(self, a: Tensor, kl: float, trained: int) -> tuple[Tensor, Tensor]:
        """DRaFT-K with the ε-space KL w · mean (ε_θ − ε_ref)², averaged over its K = ``trained`` replayed calls:
        δε_j = −(K D / 2w)(b_j σ_j / α_j) L_jᵀ a, so μ moves by (K D / 2w)(b_j σ_j / α_j)² L_jᵀ a, a path
        tilt with per-step β_j = (K D / 2w)(b_j σ_j / α_j)² / std_j² (THEORY.md §4)."""
        a, N, D = a.double(), self.steps, len(self.mu)
        shifts = [torch.zeros_like(self.mu) for _ in range(N)]
        for j in range(N - trained, N):
            k = (self.tr.b[j] * self.tr.sigma[j] / self.tr.alpha[j]) ** 2
            shifts[j] = trained * D / (2 * kl) * k * self.L[j].T @ a
        return self.output(shifts)

    def kl_path_weights(self, kl: float, trained: int) -> Tensor:
        """[N] the per-step β_j that the ε-space KL of DRaFT-K amounts to (0 for the untrained steps)."""
        N, D = self.steps, len(self.mu)
        out = torch.zeros(N, dtype=torch.float64)
        for j in range(N - trained, N):
            out[j] = trained * D / (2 * kl) * (self.tr.b[j] * self.tr.sigma[j] / self.tr.alpha[j]) ** 2 / self.tr.std[j] ** 2
        return out


# --------------------------------------------------------------------------------------- distances
def gaussian_error(mean: Tensor, target_mean: Tensor, target_cov: Tensor) -> float:
    """|mean − target_mean| in units of the target's std along that direction: √(dᵀ C⁻¹ d)."""
    d = (mean.double() - target_mean.double())
    return float(torch.sqrt(d @ torch.linalg.solve(target_cov.double(), d)))


def sliced_w2(x: Tensor, y: Tensor, projections: int = 64, seed: int = 0, quantiles: int = 200) -> float:
    """Sliced 2-Wasserstein distance between two sample clouds (their quantile functions along random unit
    directions, compared at ``quantiles`` levels; the clouds may differ in size)."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(x.shape[1], projections, generator=g, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    q = (torch.arange(quantiles, dtype=torch.float64) + 0.5) / quantiles
    qx = torch.quantile(x.double() @ dirs, q, dim=0)
    qy = torch.quantile(y.double() @ dirs, q, dim=0)
    return float((qx - qy).pow(2).mean().sqrt())


def distances(samples: Tensor, target: Tensor, reward: SampleReward, *, sliced: bool = True) -> dict[str, float]:
    """Mean error (target std units), variance ratio tr C / tr C*, reward gap E[r] − E*[r] and (``sliced``)
    the sliced W2 distance, the one costly figure (a live picture leaves it out)."""
    x, t = samples.double(), target.double()
    tc = torch.cov(t.T).reshape(x.shape[1], x.shape[1])
    reward_mean = float(reward(x).mean())
    out = {
        "mean_error_std": gaussian_error(x.mean(0), t.mean(0), tc),
        "var_ratio": float(torch.cov(x.T).reshape(tc.shape).trace() / tc.trace()),
        "reward_mean": reward_mean,
        "reward_gap": reward_mean - float(reward(t).mean()),
    }
    if sliced:
        out["sliced_w2"] = sliced_w2(x, t)
    return out
