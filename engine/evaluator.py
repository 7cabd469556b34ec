"""The text-object evaluator: a small CLIP-like model for the procedural world (offline CLIP stand-in).

An image tower (a CNN on 64x64 renders) and a projection of MiniLM sentence embeddings share a
128-d space. It gives a differentiable alignment score for any prompt, zero-shot category and colour
predictions, and image features for KID. It is trained on renders from random views of objects with
its own seeds, disjoint from the seeds the base model is trained and evaluated on.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor, nn

from .core.text import EMBED_DIM, default_text_encoder
from .data.world import _BY_NAME, CATEGORY_NAMES, COLOR_NAMES, ObjectSpec, caption

DEFAULT_EVALUATOR = Path(__file__).resolve().parents[1] / "checkpoints" / "tiny-base" / "evaluator"


def category_prompt(name: str) -> str:
    noun = _BY_NAME[name].synonyms[0]
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def color_prompt(color: str) -> str:
    return f"{'an' if color[0] in 'aeiou' else 'a'} {color} object"


def evaluator_captions(spec: ObjectSpec, rng: random.Random) -> tuple[str, tuple]:
    """A training caption and what it asserts: (category or None, colour or None, second colour or None)."""
    u = rng.random()
    if u < 0.2:
        return category_prompt(spec.category), (spec.category, None, None)
    if u < 0.4:
        return color_prompt(spec.color), (None, spec.color, None)
    return caption(spec, rng), (spec.category, spec.color, spec.second_color)


def _compatible(spec: ObjectSpec, claim: tuple) -> bool:
    cat, col, second = claim
    return (cat is None or cat == spec.category) and (col is None or col == spec.color) and (second is None or second == spec.second_color)


class Evaluator(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 192), embed_dim: int = 128, image_size: int = 64):
        super().__init__()
        layers, c_in = [], 3
        for w in widths:
            layers += [nn.Conv2d(c_in, w, 3, 2, 1), nn.SiLU(), nn.Conv2d(w, w, 3, 1, 1), nn.SiLU()]
            c_in = w
        self.tower = nn.Sequential(*layers)
        self.image_proj = nn.Linear(c_in, embed_dim)
        self.text_proj = nn.Sequential(nn.Linear(EMBED_DIM, 256), nn.SiLU(), nn.Linear(256, embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(2.66))  # log(1 / 0.07), as CLIP starts

    def features(self, images: Tensor) -> Tensor:
        """[N, 3, H, W] in [0, 1] on white -> pooled image features [N, C] (used for KID)."""
        size = self.config.image_size
        if images.shape[-1] != size or images.shape[-2] != size:
            images = nn.functional.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return self.tower(images * 2 - 1).mean((2, 3))

    def image_embeds(self, images: Tensor) -> Tensor:
        return nn.functional.normalize(self.image_proj(self.features(images)), dim=-1)

    def asset_embeds(self, views: Tensor) -> Tensor:
        """[B, V, 3, H, W] views of B assets -> [B, D] unit mean of their view embeddings (how an asset is judged)."""
        B, V = views.shape[:2]
        return nn.functional.normalize(self.image_embeds(views.flatten(0, 1)).reshape(B, V, -1).mean(1), dim=-1)

    def text_embeds(self, sentence_embeds: Tensor) -> Tensor:
        return nn.functional.normalize(self.text_proj(sentence_embeds), dim=-1)

    def encode_text(self, prompts: list[str]) -> Tensor:
        return self.text_embeds(default_text_encoder().pooled(prompts).to(self.logit_scale.device))

    def score(self, images: Tensor, prompts: list[str]) -> Tensor:
        """Cosine similarity of each image with its prompt ([N] images, N prompts), differentiable in the images."""
        return (self.image_embeds(images) * self.encode_text(prompts)).sum(-1)

    @torch.no_grad()
    def classify(self, images: Tensor) -> dict[str, list[str]]:
        """Zero-shot category and main colour of each image."""
        return self.classify_embeds(self.image_embeds(images))

    @torch.no_grad()
    def label_embeds(self) -> tuple[Tensor, Tensor]:
        """Unit embeddings of the category prompts and of the colour prompts that zero-shot labels compare with."""
        return self.encode_text([category_prompt(c) for c in CATEGORY_NAMES]), self.encode_text([color_prompt(c) for c in COLOR_NAMES])

    @torch.no_grad()
    def classify_embeds(self, img: Tensor, labels: tuple[Tensor, Tensor] | None = None) -> dict[str, list[str]]:
        """Zero-shot category and main colour from unit image embeddings (e.g. averaged over views).

        ``labels``: ``label_embeds()`` computed once by a caller that classifies many batches."""
        cats, cols = labels if labels is not None else self.label_embeds()
        return {
            "category": [CATEGORY_NAMES[i] for i in (img @ cats.T).argmax(-1).tolist()],
            "color": [COLOR_NAMES[i] for i in (img @ cols.T).argmax(-1).tolist()],
        }


def train_evaluator_step(ev: Evaluator, images: Tensor, captions: list[tuple[str, tuple]], embed, specs: list[ObjectSpec]) -> Tensor:
    """Multi-positive contrastive loss: an image matches every caption in the batch that is true of it."""
    if torch.rand(()) < 0.5:  # splat renders are a little softer than ray-cast ones
        images = nn.functional.avg_pool2d(images, 3, 1, 1, count_include_pad=False)
    img = ev.image_embeds(images)
    txt = ev.text_embeds(embed([c for c, _ in captions]))
    logits = ev.logit_scale.exp().clamp(max=100) * img @ txt.T
    target = torch.tensor([[_compatible(s, claim) for _, claim in captions] for s in specs], dtype=torch.float32, device=logits.device)
    i2t = -(target / target.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    t2i = -(target / target.sum(0, keepdim=True) * logits.log_softmax(0)).sum(0).mean()
    return (i2t + t2i) / 2


def load_evaluator(path: str | Path = DEFAULT_EVALUATOR) -> Evaluator:
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"No evaluator at {path} (expected config.json + diffusion_pytorch_model.safetensors).")
    return Evaluator.from_pretrained(path, local_files_only=True, low_cpu_mem_usage=False).eval()
