"""Alignment methods on an analytic world, through the shared Trainer, measured against the known target.

    setup = TheorySetup(world="gaussian", reward="direction", beta=1.0)
    run = TheoryRun(setup, "nabla-r2d3")
    for row in run.steps(200, every=20):        # one row of distances per measurement
        print(row["step"], row["mean_error_std"])

Every method gets the same world, reward, seed and measurement noise. A run folder (config.json,
metrics.csv, adapter/) is written as for any trainer run: in ``out`` or a temporary folder.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ...core.sampling import sample
from ..config import RunConfig
from ..methods import METHODS
from .targets import (
    GaussianChain,
    Target,
    distances,
    gaussian_error,
    resample_tilt,
    tilt_linear,
)
from .world import Mixture, SampleReward, SampleRewardPath, WorldModel, make_data

PROMPT = "world sample"  # the worlds are unconditional; the trainer still draws a prompt per sample

# Knobs per method on an analytic world: Nabla-R2D3's β is the target's; its adaptive ᾱ scaling is off (it
# biases the target) and its residual is weighed in ε units (the paper's score units let the last step's
# c_j ~ 3e3 drown the others: no progress in 300 steps; THEORY.md §3). Everything else is the engine default.
METHOD_DEFAULTS = {"nabla-r2d3": ["nabla.adaptive_scaling=none", "nabla.weighting=eps"]}


@dataclass
class TheorySetup:
    """One world, one reward, one β (the target p* ∝ p_ref·exp(β r)), the training settings every method shares."""

    world: str = "gaussian"
    dim: int = 2
    reward: str = "direction"
    beta: float = 1.0
    sampler_steps: int = 10
    batch_size: int = 32
    lr: float = 3e-3
    lora_rank: int = 8
    seed: int = 0
    eval_samples: int = 4096  # fresh samples per measurement (the same noise every time: paired)
    target_samples: int = 16384
    overrides: list[str] = field(default_factory=list)  # "group.knob=value" (applied to the method owning the group) or "knob=value"

    def run_config(self, method: str, steps: int) -> RunConfig:
        base = RunConfig(method=method, reward=f"theory-{self.reward}", model=f"theory-{self.world}", steps=steps,
                         batch_size=self.batch_size, sampler_steps=self.sampler_steps, lr=self.lr, lora_rank=self.lora_rank,
                         seed=self.seed, checkpoint_every=0, sample_every=0, eval_every=0, weight_decay=0.0, reward_options={})
        group = METHODS[method].config_field
        mine = [s for s in self.overrides if "." not in s.partition("=")[0] or s.startswith(group + ".")]
        sets = [*METHOD_DEFAULTS.get(method, []), *mine]
        if method == "nabla-r2d3" and not any(s.startswith("nabla.beta=") for s in sets):
            sets.insert(0, f"nabla.beta={self.beta}")
        return base.apply_overrides(sets).validate()


class World:
    """The data, reward, base samples and target of a setup, and for a Gaussian the sampler chain's closed forms.

    The reference distribution p_ref is what the base model's sampler produces at ``sampler_steps`` (not the
    data: first-order SDE-DPM-Solver++ keeps only ~53% of the data's variance at 10 steps, THEORY.md §2), so
    the target is p* ∝ p_ref·exp(β r): closed form for a Gaussian with a linear reward, else resampled from
    ``pool`` base samples. ``data_target_mean`` is the tilt of the data itself, for comparison."""

    def __init__(self, setup: TheorySetup, pool: int = 100_000):
        self.setup = setup
        self.data = make_data(setup.world, setup.dim, setup.seed)
        self.reward = SampleReward(setup.reward, setup.dim)
        base = self.model()
        self.chain = GaussianChain(self.data, base, setup.sampler_steps) if setup.world == "gaussian" else None
        self.base_pool = self.sample(base, pool, seed=setup.seed + 1)
        a, g = self.reward.linear, torch.Generator().manual_seed(setup.seed + 2)
        if self.chain is not None and a is not None:
            m, C = self.chain.path_tilt(a, setup.beta)
            self.target = Target(Mixture(torch.ones(1), m[None], C[None]).sample(setup.target_samples, g), True,
                                 float(setup.target_samples))
        else:
            self.target = resample_tilt(self.base_pool, self.reward, setup.beta, setup.target_samples, seed=setup.seed + 2)
        if a is not None:
            self.data_target_mean = tilt_linear(self.data, a, setup.beta).mean
        else:
            self.data_target_mean = resample_tilt(self.data.sample(pool, g), self.reward, setup.beta, setup.target_samples,
                                                  seed=setup.seed + 3).samples.mean(0)

    def sample(self, model: WorldModel, n: int, seed: int) -> torch.Tensor:
        """n samples [n, D] of ``model`` with the setup's sampler, from noise seeded by ``seed``."""
        with torch.no_grad():
            out = sample(model, model.encode_prompts([PROMPT] * n), None, steps=self.setup.sampler_steps, guidance=1.0,
                         generator=torch.Generator().manual_seed(seed))
        return out.latents.reshape(n, -1).double()

    def model(self) -> WorldModel:
        return WorldModel(self.data, seed=self.setup.seed)

    def fixed_point(self, config: RunConfig) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The method's own predicted fixed point (mean, covariance) where THEORY.md derives one in closed form."""
        a = self.reward.linear
        if self.chain is None or a is None:
            return None
        if config.method == "nabla-r2d3" and config.nabla.strength == 1:
            return self.chain.nabla_fixed_point(a, config.nabla.beta, config.nabla.adaptive_scaling)
        if config.method == "draft" and config.draft.kl > 0 and not config.draft.lv:
            return self.chain.kl_reward_fixed_point(a, config.draft.kl, config.draft.k)
        return None


class TheoryRun:
    """One method trained on a world by the shared Trainer, measured every few steps on fixed noise."""

    def __init__(self, setup: TheorySetup, method: str, *, world: World | None = None, out: str | Path | None = None,
                 steps: int = 200):
        from ..trainer import Trainer

        if method not in METHODS:
            raise ValueError(f"Unknown method {method!r}; choose one of {', '.join(METHODS)}.")
        self.setup, self.method = setup, method
        self.world = world or World(setup)
        self.config = setup.run_config(method, steps)
        self._tmp = None if out is not None else tempfile.mkdtemp(prefix=f"theory-{method}-")
        self.out = Path(out) if out is not None else Path(self._tmp)
        self.model = self.world.model()
        self.trainer = Trainer(self.config, self.out, model=self.model, path=SampleRewardPath(self.world.reward), prompts=[PROMPT])
        self.fixed_point = self.world.fixed_point(self.config)
        self._iter = None
        self.base_mean = None

    def samples(self) -> torch.Tensor:
        """Fresh samples of the current policy [eval_samples, D]; the same noise at every call (paired)."""
        return self.world.sample(self.model, self.setup.eval_samples, seed=10_000 + self.setup.seed)

    def measure(self, x: torch.Tensor | None = None) -> dict:
        x = self.samples() if x is None else x
        row = {"method": self.method, "step": self.trainer.step, **distances(x, self.world.target.samples, self.world.reward)}
        if self.fixed_point is not None:
            row["fixed_point_error_std"] = gaussian_error(x.mean(0), self.fixed_point[0], self.fixed_point[1])
        if self.base_mean is None:
            self.base_mean = x.mean(0)
        row["sample_mean"] = x.mean(0).tolist()
        return row

    def train(self, steps: int) -> list[dict]:
        """``steps`` more optimiser steps; their trainer metrics."""
        if self._iter is None:
            self._iter = self.trainer.run()
        rows = []
        for _ in range(steps):
            try:
                rows.append(next(self._iter))
            except StopIteration:
                break
        return rows

    @property
    def done(self) -> bool:
        return self.trainer.step >= self.config.steps

    def steps(self, total: int | None = None, every: int = 10) -> Iterator[dict]:
        """Measures at step 0, then every ``every`` steps until ``total`` (default: the config's steps)."""
        total = min(total or self.config.steps, self.config.steps)
        yield self.measure()
        while self.trainer.step < total:
            self.train(min(every, total - self.trainer.step))
            yield self.measure()

    def summary(self, row: dict) -> dict:
        """The JSON line of the command line."""
        t = self.world.target.samples
        out = {"method": self.method, "world": self.setup.world, "dim": self.setup.dim, "reward": self.setup.reward,
               "beta": self.setup.beta, "steps": row["step"], "sampler_steps": self.setup.sampler_steps,
               **{k: row[k] for k in ("mean_error_std", "var_ratio", "reward_mean", "reward_gap", "sliced_w2")},
               "base_mean": [round(v, 4) for v in self.base_mean.tolist()],
               "sample_mean": [round(v, 4) for v in row["sample_mean"]],
               "target_mean": [round(v, 4) for v in t.mean(0).tolist()],
               "data_target_mean": [round(v, 4) for v in self.world.data_target_mean.tolist()],
               "target_exact": self.world.target.exact, "target_ess": round(self.world.target.ess, 1)}
        if self.fixed_point is not None:
            out["fixed_point_mean"] = [round(v, 4) for v in self.fixed_point[0].tolist()]
            out["fixed_point_error_std"] = row["fixed_point_error_std"]
        out["config"] = {k: v for k, v in asdict(self.config.method_config()).items()}
        return out

    def close(self) -> None:
        if self._iter is not None:
            self._iter.close()
            self._iter = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
