"""The method interface: a method differs from the others only in how it turns a rollout into losses.

The shared trainer samples every step's trajectories without gradients (the same prompts and noise for
every method with the same seed), scores the final samples, then asks the method for its losses; it does
the backward passes, the gradient all-reduce, clipping and the optimiser step. Methods that need a
gradient through sampling replay a window of the recorded trajectory with the recorded noise.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, ClassVar, Iterator

import torch
from torch import Tensor

from ...core.sampling import StepGraph
from ..rollout import GraphPlan, RewardPath, Rollout, Transitions, guided_eps, seeded


@dataclass
class Context:
    """What a method may use: the model (LoRA on), its trainable parameters, the reward path, the
    sampler's transitions, the run config, and collective helpers (identity in one process)."""

    model: torch.nn.Module
    params: dict[str, torch.nn.Parameter]  # the LoRA parameters being trained, by name
    reward: RewardPath
    transitions: Transitions
    config: object  # RunConfig
    gather: Callable[[Tensor], Tensor]  # concatenates a [b, ...] tensor over processes (rank order)
    gather_objects: Callable[[list], list]
    reference: Callable[[], contextlib.AbstractContextManager]  # the frozen base model inside the block
    world: int = 1  # number of processes

    def generators(self, step: int, purpose: str, indices: list[int]) -> list[torch.Generator]:
        """One generator per sample, keyed by its global index: the same draws in 1 or N processes."""
        return [seeded(self.config.seed, step, purpose, i) for i in indices]

    def shared(self, step: int, purpose: str, *keys) -> torch.Generator:
        """A generator every process draws identically (e.g. the reward cameras of one call)."""
        return seeded(self.config.seed, step, purpose, *keys)

    def eps(self, rollout: Rollout, x: Tensor, t: Tensor) -> Tensor:
        """CFG-combined ε at per-sample timesteps with the rollout's prompts and guidance."""
        return guided_eps(self.model, x, t, rollout.cond, rollout.uncond, rollout.guidance)

    def reference_eps(self, rollout: Rollout, x: Tensor, t: Tensor) -> Tensor:
        with torch.no_grad(), self.reference():
            return self.eps(rollout, x, t)

    def policy_pass(self, rollout: Rollout, j: Tensor, *, rows: Tensor | None = None, input_grad: bool = False) -> "PolicyPass":
        """ε_θ(x_j) with its graph for samples ``rows`` (default: all) at their transitions ``j``: the sampler's
        own pass where it kept one (GraphPlan), the others computed now in one batch. ``input_grad``: x_j's
        gradient will be taken, so the pass must start from a leaf that requires it."""
        rows = torch.arange(len(rollout)) if rows is None else rows
        found: dict[int, list[tuple[int, int]]] = {}  # kept call -> [(position in this pass, row in the call)]
        calls: dict[int, StepGraph] = {}
        missing = []
        for pos, (b, step) in enumerate(zip(rows.tolist(), j.tolist())):
            for g in rollout.graphs.get(step, []):
                hit = (g.rows == b).nonzero().flatten()
                if len(hit) and (g.latents.requires_grad or not input_grad):
                    calls[id(g)] = g
                    found.setdefault(id(g), []).append((pos, int(hit[0])))
                    break
            else:
                missing.append(pos)
        sources, pieces = [], []
        for key, pairs in found.items():
            g = calls[key]
            positions, call_rows = (torch.tensor(v) for v in zip(*pairs))
            sources.append((g.latents, call_rows, positions))
            pieces.append(g.eps[call_rows])
        if missing:
            positions = torch.tensor(missing)
            x = rollout.trajectory.latents[rows[positions], j[positions]].detach().requires_grad_(input_grad)
            sources.append((x, torch.arange(len(missing)), positions))
            pieces.append(self.eps(rollout.select(rows[positions]), x, self.transitions.timesteps[j[positions]]))
        if len(sources) == 1:
            leaf, call_rows, _ = sources[0]
            return PolicyPass(leaf[call_rows], pieces[0], sources)
        order = torch.cat([s[2] for s in sources]).argsort()
        x = torch.cat([leaf[call_rows] for leaf, call_rows, _ in sources])[order]
        return PolicyPass(x, torch.cat(pieces)[order], sources)


@dataclass
class PolicyPass:
    """ε_θ at each sample's x_j, and where each row's pass came from."""

    x: Tensor  # [n, ...] x_j, attached to the calls' input leaves (so x̂0(x_j) has both paths to x_j)
    eps: Tensor  # [n, ...] attached to the graph
    sources: list[tuple[Tensor, Tensor, Tensor]]  # (a call's input leaf, rows in that call, positions in this pass)

    def scatter_grads(self, grads: list[Tensor | None], into: Tensor) -> Tensor:
        """Adds the gradients w.r.t. each source's leaf (``torch.autograd.grad`` of ``leaves()``) into ``into`` [n, ...]."""
        for (_, call_rows, positions), g in zip(self.sources, grads):
            if g is not None:
                into[positions] += g[call_rows]
        return into

    def leaves(self) -> list[Tensor]:
        return [s[0] for s in self.sources]


class Method:
    """Subclasses set the class attributes and implement :meth:`losses`."""

    name: ClassVar[str]  # the registry key (--method)
    title: ClassVar[str]  # how people write it (the studio, reports)
    config: ClassVar[type]  # the dataclass of its knobs (engine.align.knobs.knob fields)
    config_field: ClassVar[str]  # the key of those knobs in a RunConfig and its config.json (--set GROUP.KNOB=...)
    summary: ClassVar[str]
    needs: ClassVar[tuple[str, ...]]  # e.g. ("trajectory", "reward_grad", "reference"): documentation and tests

    def __init__(self, config, ctx: Context):
        self.cfg, self.ctx = config, ctx

    def sampling(self) -> contextlib.AbstractContextManager:
        """Weights the rollout is sampled with (default: the current policy)."""
        return contextlib.nullcontext()

    def graph_plan(self, step: int, indices: list[int]) -> GraphPlan | None:
        """Before sampling: the sampler calls the losses will differentiate (None: none), so the trainer keeps
        them with their graph instead of the losses running them again. Only for methods trained on the
        policy's own samples; the choice must come from the same draws the losses make."""
        return None

    def losses(self, rollout: Rollout, step: int) -> Iterator[tuple[Tensor, dict[str, float]]]:
        """Yields (loss, metrics) chunks; the trainer backpropagates each at once (bounded memory), or all in
        one pass when the rollout kept sampler calls (one call may serve several chunks). The chunks'
        gradients add up to the gradient of the method's objective averaged over the local batch."""
        raise NotImplementedError

    def step_metrics(self, rows: list[dict[str, float]]) -> dict[str, float]:
        """The step's metrics from the info dicts its loss chunks yielded (default: each key's mean)."""
        return mean_metrics(rows)

    def after_step(self, step: int, rollout: Rollout) -> None:
        """Called after each optimiser step (e.g. to update an old-policy copy)."""

    def state(self) -> tuple[dict, dict[str, Tensor]]:
        """(JSON-able state, tensors) to checkpoint so a resumed run continues exactly."""
        return {}, {}

    def load_state(self, meta: dict, tensors: dict[str, Tensor]) -> None:
        pass


def kl_to_base(ctx: Context, rollout: Rollout, x: Tensor, t: Tensor, eps: Tensor, weight: float, *,
               checkpointing: bool = False) -> Tensor:
    """weight · mean (ε_θ − ε_base)² at the same inputs (0 without a weight): the ε-space pull to the base.

    Where x carries the graph of a replayed chain, the base runs on that same x with its graph: the pull's
    gradient through x is then that of the difference alone. (With the base at a detached x, ε_θ's own
    x-Jacobian went unbalanced: on the theory world DRaFT-10 with kl=30 ran off to 5e3 target stds instead of
    settling on its fixed point; engine/align/theory/THEORY.md §4.)"""
    if weight <= 0:
        return eps.new_zeros(())
    if not x.requires_grad:
        return weight * (eps - ctx.reference_eps(rollout, x, t)).pow(2).mean()

    def base_eps(x: Tensor) -> Tensor:
        with ctx.reference():  # inside the function: a checkpoint's recomputation must see the base too
            return ctx.eps(rollout, x, t)

    ref = torch.utils.checkpoint.checkpoint(base_eps, x, use_reentrant=False) if checkpointing else base_eps(x)
    return weight * (eps - ref).pow(2).mean()


def mean_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = rows[0].keys() if rows else []
    return {k: sum(r[k] for r in rows) / len(rows) for k in keys}


def replay(ctx: Context, rollout: Rollout, start: int, *, kl: float = 0.0, checkpointing: bool = False) -> tuple[Tensor, Tensor]:
    """Re-runs the recorded chain from step ``start`` to the end with gradients, reusing the recorded noise
    (x_{j+1} = μ_θ(x_j) + (x_{j+1} − μ_old)): the reparameterised sampler of DRaFT / AlignProp. Returns the
    final latents and the mean ε-space KL to the base over the replayed calls."""
    tr, traj = ctx.transitions, rollout.trajectory
    x, penalty = traj.latents[:, start], 0.0
    for i in range(start, tr.steps):
        j = torch.full((len(rollout),), i, dtype=torch.long)
        t = tr.timesteps[j]
        if checkpointing:
            eps = torch.utils.checkpoint.checkpoint(ctx.eps, rollout, x, t, use_reentrant=False)
        else:
            eps = ctx.eps(rollout, x, t)
        penalty = penalty + kl_to_base(ctx, rollout, x, t, eps, kl, checkpointing=checkpointing)
        x = tr.mean(j, x, eps) + (traj.next_latents[:, i] - traj.means[:, i])
    return x, penalty / (tr.steps - start)


def reward_loss(ctx: Context, rollout: Rollout, latents: Tensor, step: int, penalty: Tensor) -> tuple[Tensor, dict[str, float]]:
    """−mean reward of ``latents`` from this step's reward rig, plus the KL penalty (reward-gradient methods)."""
    cams = ctx.reward.cameras(ctx.shared(step, "reward-cameras"))
    scores, _ = ctx.reward(latents, rollout.prompts, cams)
    return -scores.mean() + penalty, {"grad_reward": scores.mean().item(), "kl": float(penalty.detach()) if torch.is_tensor(penalty) else float(penalty)}
