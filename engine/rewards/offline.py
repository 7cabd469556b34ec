"""Rewards that run anywhere with what the project ships: geometry, alignment, colorfulness."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..core.text import default_text_encoder
from ..evaluator import DEFAULT_EVALUATOR, Evaluator, load_evaluator
from ..metrics import depth_normal_consistency
from .base import PromptEmbeddings, Reward, RewardInputs


class GeometryReward(Reward):
    """Depth-normal consistency (research/nabla-r2d3.md §4.3): mean cosine between the rendered
    normals and normals from finite differences of the rendered depth, over the object mask.

    ``detach_depth`` (default, as the reference's ``reward_context=inference``) lets gradients reach
    the geometry through the rendered normals only. ``max_angle``: the optional angle mask, degrees.
    """

    name = "geometry"
    value_range = (0.0, 1.0)
    needs = ("images", "alpha", "depth", "normal", "cameras")
    description = "depth-normal consistency of the rendered geometry (3D consistency)"

    def __init__(self, detach_depth: bool = True, max_angle: float | None = None, mask_threshold: float = 0.5):
        super().__init__()
        if max_angle is not None and not 0 < max_angle <= 90:
            raise ValueError(f"max_angle must be in (0, 90] degrees, got {max_angle}.")
        self.detach_depth, self.max_angle, self.mask_threshold = detach_depth, max_angle, mask_threshold

    def score(self, inputs: RewardInputs) -> Tensor:
        depth, alpha = inputs.depth, inputs.alpha
        if self.detach_depth:
            depth, alpha = depth.detach(), alpha.detach()
        return depth_normal_consistency(depth, inputs.normal, alpha, inputs.cameras,
                                        mask_threshold=self.mask_threshold, max_angle=self.max_angle)


class GeometryOfficialReward(GeometryReward):
    """Depth-normal consistency as the official Nabla-R2D3 code computes it (research/nabla-r2d3.md §4.3): the
    raw alpha-blended normal (its length counts, so thin or translucent surfaces score less) dotted with normals
    of the raw alpha-weighted depth, depth detached. ``geometry`` normalises the normal and divides depth by alpha.
    Intrinsics are the renderer's, not a fixed 40-degree field of view."""

    name = "geometry_official"
    description = "depth-normal consistency, the official code's variant (raw normals and depth)"

    def score(self, inputs: RewardInputs) -> Tensor:
        depth, alpha = inputs.depth, inputs.alpha
        if self.detach_depth:
            depth, alpha = depth.detach(), alpha.detach()
        return depth_normal_consistency(depth, inputs.normal, alpha, inputs.cameras, mask_threshold=self.mask_threshold,
                                        max_angle=self.max_angle, raw=True)


class ColorfulnessReward(Reward):
    """Hasler and Suesstrunk's colourfulness, on 0-255 RGB over the object pixels (alpha > 0.5; the
    whole image when no alpha is given): sigma_rgyb + 0.3 * mu_rgyb. About 0-15 reads as dull, above
    ~110 as extremely colourful. A deliberately hackable "aesthetic" proxy."""

    name = "colorfulness"
    value_range = (0.0, 110.0)
    needs = ("images",)
    description = "Hasler-Suesstrunk colourfulness of the object pixels (hackable aesthetic proxy)"

    def score(self, inputs: RewardInputs) -> Tensor:
        rgb = inputs.images * 255
        rg = rgb[:, 0] - rgb[:, 1]
        yb = 0.5 * (rgb[:, 0] + rgb[:, 1]) - rgb[:, 2]
        if inputs.alpha is None:
            w = torch.ones_like(rg)
        else:
            w = (inputs.alpha[:, 0] > 0.5).to(rg)
        n = w.flatten(1).sum(1).clamp_min(1)

        def mean_std(x: Tensor) -> tuple[Tensor, Tensor]:
            mu = (x * w).flatten(1).sum(1) / n
            var = ((x - mu[:, None, None]) ** 2 * w).flatten(1).sum(1) / n
            return mu, var

        mu_rg, var_rg = mean_std(rg)
        mu_yb, var_yb = mean_std(yb)
        # the small constants keep the gradient finite on flat grey images
        return (var_rg + var_yb + 1e-6).sqrt() + 0.3 * (mu_rg ** 2 + mu_yb ** 2 + 1e-6).sqrt()


class AlignmentReward(Reward):
    """Text-object alignment: cosine between the project's evaluator embeddings of each render and
    its prompt (the offline stand-in for a CLIP score). Prompt embeddings are cached."""

    name = "alignment"
    value_range = (0.0, 0.6)
    needs = ("images", "prompts")
    description = "text-object alignment from the project's evaluator (offline CLIP stand-in)"

    def __init__(self, evaluator: Evaluator | str | Path | None = None):
        super().__init__()
        if evaluator is None or isinstance(evaluator, (str, Path)):
            evaluator = load_evaluator(evaluator or DEFAULT_EVALUATOR)
        self.evaluator = evaluator
        self.freeze()
        self._prompts = PromptEmbeddings(
            lambda new: self.evaluator.text_embeds(default_text_encoder().pooled(new).to(next(self.evaluator.parameters()))))

    @staticmethod
    def available(path: str | Path | None = None) -> tuple[bool, str]:
        path = Path(path or DEFAULT_EVALUATOR)
        if (path / "config.json").exists():
            return True, f"evaluator at {path}"
        return False, f"no evaluator at {path}: train one with `python -m engine.train_base` or give its folder"

    def text_embeds(self, prompts: list[str]) -> Tensor:
        return self._prompts(prompts, next(self.evaluator.parameters()))

    def score(self, inputs: RewardInputs) -> Tensor:
        txt = self.text_embeds(inputs.prompts)
        img = self.evaluator.image_embeds(inputs.images.to(txt))
        return (img * txt).sum(-1)
