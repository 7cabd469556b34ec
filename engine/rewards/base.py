"""The one reward interface: a batch of renders (+ prompts, + optional maps) -> one score per render.

Every reward is an ``nn.Module`` whose ``forward`` takes N renders as [N, 3, H, W] float images in
[0, 1] on the render background, the N prompts, and optionally the renderer's alpha, depth and
normal maps and the N cameras. It returns [N] scores, differentiable with respect to the images
(and maps) it uses. Multi-view assets are scored with :func:`score_assets`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Sequence

import torch
from torch import Tensor, nn

from ..core.cameras import Cameras
from ..render import RenderOutput

INPUTS = ("images", "prompts", "alpha", "depth", "normal", "cameras")
_MAP_CHANNELS = {"images": 3, "alpha": 1, "depth": 1, "normal": 3}


@dataclass
class RewardInputs:
    """What a reward may look at; N renders, all maps [N, C, H, W] at the images' size."""

    images: Tensor
    prompts: list[str] | None = None
    alpha: Tensor | None = None
    depth: Tensor | None = None
    normal: Tensor | None = None
    cameras: Cameras | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def select(self, index: Tensor) -> "RewardInputs":
        """The renders at ``index`` (a 1-D index tensor)."""
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        prompts = None if self.prompts is None else [self.prompts[i] for i in index.tolist()]
        return RewardInputs(pick(self.images), prompts, pick(self.alpha), pick(self.depth), pick(self.normal),
                            None if self.cameras is None else self.cameras[index])

    def validate(self, needs: Sequence[str], who: str) -> None:
        missing = [k for k in needs if getattr(self, k) is None]
        if missing:
            raise ValueError(f"Reward '{who}' needs {', '.join(missing)}; pass them to the reward (the renderer gives alpha, depth and normal).")
        images = self.images
        if not torch.is_tensor(images) or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"Reward '{who}': images must be [N, 3, H, W], got {list(getattr(images, 'shape', []))}.")
        if not images.is_floating_point():
            raise ValueError(f"Reward '{who}': images must be float in [0, 1], got {images.dtype}.")
        N, _, H, W = images.shape
        for key, channels in _MAP_CHANNELS.items():
            t = getattr(self, key)
            if t is not None and tuple(t.shape) != (N, channels, H, W):
                raise ValueError(f"Reward '{who}': {key} must be {[N, channels, H, W]}, got {list(t.shape)}.")
        if self.prompts is not None:
            if isinstance(self.prompts, str) or len(self.prompts) != N:
                raise ValueError(f"Reward '{who}': give one prompt per render ({N}), got {self.prompts!r:.80}.")
        if self.cameras is not None and tuple(self.cameras.shape) != (N,):
            raise ValueError(f"Reward '{who}': cameras must hold N = {N} cameras, got shape {list(self.cameras.shape)}.")


@dataclass(frozen=True)
class RewardInfo:
    """What the studio and the trainer need to know about a reward without running it."""

    name: str
    higher_is_better: bool
    value_range: tuple[float, float]
    needs: tuple[str, ...]
    description: str
    available: bool = True
    detail: str = ""


class Reward(nn.Module):
    """Base class: subclasses set the class attributes and implement :meth:`score`.

    ``value_range`` is the usual range of the scores (not a hard bound); ensembles normalise with it.
    Rewards hold frozen models: parameters never require grad, gradients flow to the inputs only.
    """

    name: ClassVar[str] = "reward"
    higher_is_better: ClassVar[bool] = True
    value_range: ClassVar[tuple[float, float]] = (0.0, 1.0)
    needs: ClassVar[tuple[str, ...]] = ("images",)
    description: ClassVar[str] = ""

    def info(self) -> RewardInfo:
        return RewardInfo(self.name, self.higher_is_better, tuple(self.value_range), tuple(self.needs), self.description)

    def freeze(self) -> "Reward":
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def forward(self, images: Tensor, prompts: Sequence[str] | None = None, *, alpha: Tensor | None = None,
                depth: Tensor | None = None, normal: Tensor | None = None, cameras: Cameras | None = None) -> Tensor:
        """[N] scores for N renders; see the module docstring for the inputs."""
        inputs = RewardInputs(images, None if prompts is None else list(prompts), alpha, depth, normal, cameras)
        return self.score_inputs(inputs)

    def score_inputs(self, inputs: RewardInputs) -> Tensor:
        inputs.validate(self.needs, self.name)
        out = self.score(inputs)
        if out.shape != (len(inputs),):
            raise RuntimeError(f"Reward '{self.name}' returned shape {list(out.shape)}, expected [{len(inputs)}].")
        return out

    def score(self, inputs: RewardInputs) -> Tensor:
        raise NotImplementedError


class PromptEmbeddings:
    """Prompt embeddings computed once per distinct prompt (prompts repeat across views and steps)."""

    def __init__(self, encode):
        self.encode = encode  # list of new prompts -> [n, D] embeddings
        self.cache: dict[str, Tensor] = {}

    @torch.no_grad()
    def __call__(self, prompts: list[str], like: Tensor) -> Tensor:
        new = [p for p in dict.fromkeys(prompts) if p not in self.cache]
        if new:
            self.cache.update(zip(new, self.encode(new)))
        return torch.stack([self.cache[p] for p in prompts]).to(like)


def normalise(reward: Reward | RewardInfo, scores: Tensor, value_range: tuple[float, float] | None = None) -> Tensor:
    """Map scores affinely so that the usual range becomes [0, 1] and higher is better."""
    lo, hi = value_range or reward.value_range
    x = (scores - lo) / (hi - lo)
    return x if reward.higher_is_better else 1 - x


@dataclass
class EnsembleTerm:
    reward: Reward
    weight: float = 1.0
    value_range: tuple[float, float] | None = None  # overrides the reward's usual range for normalisation


class Ensemble(Reward):
    """A weighted sum of rewards, each first normalised to [0, 1] over its usual range (``"range"``)
    or taken as is with its sign flipped when lower is better (``"none"``).

    ``components(...)`` also returns every term's raw score, for logging.
    """

    name = "ensemble"

    def __init__(self, terms: Sequence[EnsembleTerm | tuple[Reward, float]], normalisation: Literal["range", "none"] = "range"):
        super().__init__()
        terms = [t if isinstance(t, EnsembleTerm) else EnsembleTerm(*t) for t in terms]
        if not terms:
            raise ValueError("An ensemble needs at least one reward.")
        if normalisation not in ("range", "none"):
            raise ValueError(f"normalisation must be 'range' or 'none', got {normalisation!r}.")
        names = [t.reward.name for t in terms]
        if len(set(names)) != len(names):
            raise ValueError(f"Each reward may appear once in an ensemble, got {names}.")
        self.terms = terms
        self.rewards = nn.ModuleList([t.reward for t in terms])
        self.normalisation = normalisation
        self.name = "+".join(f"{t.weight:g}*{t.reward.name}" for t in terms)
        self.needs = tuple(k for k in INPUTS if any(k in t.reward.needs for t in terms))
        total = sum(abs(t.weight) for t in terms)
        self.value_range = (0.0, total) if normalisation == "range" else (float("nan"), float("nan"))
        self.description = "weighted ensemble"

    def components(self, inputs: RewardInputs) -> dict[str, Tensor]:
        """Raw score of every term and the weighted, normalised ``total``."""
        inputs.validate(self.needs, self.name)
        out, total = {}, 0
        for t in self.terms:
            raw = t.reward.score_inputs(inputs)
            out[t.reward.name] = raw
            term = normalise(t.reward, raw, t.value_range) if self.normalisation == "range" else (raw if t.reward.higher_is_better else -raw)
            total = total + t.weight * term
        out["total"] = total
        return out

    def score(self, inputs: RewardInputs) -> Tensor:
        return self.components(inputs)["total"]


def flatten_renders(renders: RenderOutput, prompts: Sequence[str], cameras: Cameras) -> RewardInputs:
    """[B, V] renders of B assets, B prompts and [V] or [B, V] cameras -> B * V reward inputs."""
    B, V = renders.rgb.shape[:2]
    if len(prompts) != B or isinstance(prompts, str):
        raise ValueError(f"Give one prompt per asset ({B}), got {len(prompts)}.")
    if tuple(cameras.shape) == (V,):
        cameras = Cameras(cameras.c2w.expand(B, V, 4, 4), cameras.intrinsics.expand(B, V, 4))
    if tuple(cameras.shape) != (B, V):
        raise ValueError(f"cameras must be [V] or [B, V] = [{B}, {V}], got {list(cameras.shape)}.")
    flat = renders.flatten()
    return RewardInputs(flat.rgb, [p for p in prompts for _ in range(V)], flat.alpha, flat.depth, flat.normal,
                        Cameras(cameras.c2w.reshape(B * V, 4, 4), cameras.intrinsics.reshape(B * V, 4)))


def score_assets(reward: Reward, renders: RenderOutput, prompts: Sequence[str], cameras: Cameras, *,
                 aggregate: Literal["mean", "max"] = "mean", views: int | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
    """One score per asset from its V views (research/nabla-r2d3.md §3.4).

    ``views``: score only this many views per asset, drawn at random (the memory-saving mode);
    ``None`` scores all. ``aggregate``: mean or max over the scored views.
    """
    if aggregate not in ("mean", "max"):
        raise ValueError(f"aggregate must be 'mean' or 'max', got {aggregate!r}.")
    B, V = renders.rgb.shape[:2]
    inputs = flatten_renders(renders, prompts, cameras)
    k = V if views is None else views
    if not 1 <= k <= V:
        raise ValueError(f"views must be in [1, {V}], got {views}.")
    if k < V:
        pick = torch.stack([torch.randperm(V, generator=generator)[:k] for _ in range(B)])
        inputs = inputs.select((pick + V * torch.arange(B)[:, None]).flatten())
    scores = reward.score_inputs(inputs).view(B, k)
    return scores.mean(1) if aggregate == "mean" else scores.amax(1)
