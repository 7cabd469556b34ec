"""Rewards from real pretrained models, loaded from local weights: HPSv2, LAION aesthetic, CLIP score.

Weights come from a path the user gives (a file, or a folder holding the expected file names) or
from the local Hugging Face cache; nothing is downloaded. Scores are computed in fp32 (or float64
when given float64), with differentiable tensor preprocessing (research/nabla-r2d3.md §4.1-4.2). The CLIP
models and tokenizers are open_clip's own (``openclip`` is the thin adapter that loads them offline).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import PromptEmbeddings, Reward, RewardInputs
from .openclip import (
    check_state_dict,
    get_tokenizer,
    load_clip,
    model_source,
    pack_attention,
    pixels_for,
    read_state_dict,
)


class MissingWeights(FileNotFoundError):
    """A reward's weights are not on this machine; the message says which file to put where."""


@dataclass(frozen=True)
class WeightFile:
    what: str
    filenames: tuple[str, ...]
    repo: str | None  # Hugging Face repository looked up in the local cache
    source: str  # where a user gets it

    def find(self, path: str | Path | None = None) -> Path:
        if path is not None:
            path = Path(path).expanduser()
            if path.is_file():
                return path
            if path.is_dir():
                for name in self.filenames:
                    if (path / name).is_file():
                        return path / name
            raise MissingWeights(f"{self.what}: no {' or '.join(self.filenames)} at {path}. It comes from {self.source}.")
        if self.repo is not None:
            from huggingface_hub import try_to_load_from_cache

            for name in self.filenames:
                hit = try_to_load_from_cache(self.repo, name)
                if isinstance(hit, str):
                    return Path(hit)
        cache = (f", or fetch it into the Hugging Face cache on a machine with internet access "
                 f"(huggingface-cli download {self.repo} {self.filenames[0]})") if self.repo else ""
        raise MissingWeights(f"{self.what} not found: pass the path of {self.filenames[0]} (weights=... in Python, "
                             f"--weights NAME=PATH on the command line){cache}. It comes from {self.source}.")


class ClipScoreReward(Reward):
    """CLIP score: cosine between the image and prompt embeddings of an open_clip model."""

    name = "clip"
    value_range = (0.15, 0.35)
    needs = ("images", "prompts")
    description = "CLIP score (image-prompt cosine) with an open_clip CLIP"
    fit: ClassVar[str] = "crop"
    default_model: ClassVar[str] = "ViT-B-32"
    # open_clip weights looked up in the local Hugging Face cache when no path is given
    CACHE_REPOS: ClassVar[dict[str, str]] = {
        "ViT-B-32": "laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "ViT-B-16": "laion/CLIP-ViT-B-16-laion2B-s34B-b88K",
        "ViT-L-14": "laion/CLIP-ViT-L-14-laion2B-s32B-b82K", "ViT-H-14": "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
    }

    def __init__(self, model: nn.Module, tokenizer):
        """``model``: an open_clip CLIP (``open_clip.create_model``); ``tokenizer``: its ``open_clip.get_tokenizer``."""
        super().__init__()
        text = getattr(model, "text", model)  # CustomTextCLIP keeps its text tower apart
        if (tokenizer.vocab_size, tokenizer.context_length) != (text.vocab_size, text.context_length):
            raise ValueError(f"Tokenizer ({tokenizer.vocab_size} tokens, context {tokenizer.context_length}) does not fit "
                             f"the model ({text.vocab_size}, {text.context_length}).")
        self.model, self.tokenizer = pack_attention(model), tokenizer
        self.freeze()
        self._prompts = PromptEmbeddings(
            lambda new: self.model.encode_text(self.tokenizer(new).to(self.model.logit_scale.device), normalize=True))

    @classmethod
    def locate(cls, weights: str | Path | None = None, model_name: str | None = None) -> Path:
        name = model_name or cls.default_model
        repo = cls.CACHE_REPOS.get(name.removesuffix("-quickgelu"))
        return WeightFile(f"open_clip {name} weights", ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"), repo,
                          f"the Hugging Face repository {repo or 'of that open_clip model'}").find(weights)

    @classmethod
    def available(cls, weights: str | Path | None = None) -> tuple[bool, str]:
        try:
            return True, str(cls.locate(weights))
        except MissingWeights as e:
            return False, str(e)

    @classmethod
    def from_weights(cls, weights: str | Path | None = None, model_name: str | None = None) -> "ClipScoreReward":
        """``weights``: an open_clip checkpoint file or its folder; ``model_name``: an open_clip built-in name
        such as ViT-B-32 (an open_clip_config.json beside the weights wins)."""
        return cls.from_file(cls.locate(weights, model_name), model_name)

    @classmethod
    def from_file(cls, path: Path, model_name: str | None = None) -> "ClipScoreReward":
        source = model_source(path, model_name or cls.default_model)
        return cls(load_clip(path, source), get_tokenizer(source))

    def text_embeds(self, prompts: list[str]) -> Tensor:
        return self._prompts(prompts, self.model.logit_scale)

    def image_embeds(self, images: Tensor) -> Tensor:
        return self.model.encode_image(pixels_for(self.model.visual, images, self.fit), normalize=True)

    def score(self, inputs: RewardInputs) -> Tensor:
        with torch.autocast(inputs.images.device.type, enabled=False):
            return (self.image_embeds(inputs.images) * self.text_embeds(inputs.prompts)).sum(-1)


class HPSv2Reward(ClipScoreReward):
    """Human Preference Score v2 (v2.0 / v2.1): an open_clip ViT-H-14 with HPS's fine-tuned weights; the
    score is the image-prompt cosine (research/nabla-r2d3.md §4.2, typically 0.2-0.35)."""

    name = "hpsv2"
    value_range = (0.2, 0.35)
    description = "HPS v2 human preference score (open_clip ViT-H-14)"
    fit = "pad"
    default_model = "ViT-H-14"
    VERSIONS: ClassVar[dict[str, str]] = {"v2.1": "HPS_v2.1_compressed.pt", "v2.0": "HPS_v2_compressed.pt"}

    @classmethod
    def locate(cls, weights: str | Path | None = None, version: str = "v2.1") -> Path:
        if version not in cls.VERSIONS:
            raise ValueError(f"HPS version must be one of {list(cls.VERSIONS)}, got {version!r}.")
        return WeightFile(f"HPS {version} checkpoint", (cls.VERSIONS[version],), "xswu/HPSv2",
                          f"the Hugging Face repository xswu/HPSv2 ({cls.VERSIONS[version]})").find(weights)

    @classmethod
    def from_weights(cls, weights: str | Path | None = None, model_name: str | None = None,
                     version: str = "v2.1") -> "HPSv2Reward":
        return cls.from_file(cls.locate(weights, version), model_name)


class AestheticHead(nn.Module):
    """LAION's improved aesthetic predictor (linear-MSE): five linear layers, no activations."""

    def __init__(self, embed_dim: int = 768):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(embed_dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                                    nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class AestheticReward(Reward):
    """LAION aesthetic score: the MLP head on L2-normalised CLIP ViT-L-14 (OpenAI) image embeddings,
    roughly 1-10 (research/nabla-r2d3.md §4.1)."""

    name = "aesthetic"
    value_range = (4.0, 7.0)
    needs = ("images",)
    description = "LAION aesthetic predictor on CLIP ViT-L-14 (OpenAI)"
    default_model = "ViT-L-14-quickgelu"
    clip_file = WeightFile("CLIP ViT-L-14 (OpenAI) weights in open_clip format",
                           ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"), "timm/vit_large_patch14_clip_224.openai",
                           "the Hugging Face repository timm/vit_large_patch14_clip_224.openai")
    head_file = WeightFile("LAION aesthetic head", ("sac+logos+ava1-l14-linearMSE.pth", "sac+logos+ava1-l14-linearMSE.safetensors"),
                           None, "LAION-AI's improved-aesthetic-predictor repository (sac+logos+ava1-l14-linearMSE.pth)")

    def __init__(self, visual: nn.Module, head: AestheticHead):
        """``visual``: an open_clip CLIP's image tower (``model.visual``); ``head``: the MLP on its embeddings."""
        super().__init__()
        self.visual, self.head = pack_attention(visual), head
        self.freeze()

    @classmethod
    def available(cls, weights: str | Path | None = None, head: str | Path | None = None) -> tuple[bool, str]:
        try:
            return True, f"{cls.clip_file.find(weights)} + {cls._find_head(weights, head)}"
        except MissingWeights as e:
            return False, str(e)

    @classmethod
    def _find_head(cls, weights, head) -> Path:
        """The head file: ``head`` if given, else looked for in the CLIP weights' folder."""
        return cls.head_file.find(head or (weights if weights is not None and Path(weights).is_dir() else None))

    @classmethod
    def from_weights(cls, weights: str | Path | None = None, head: str | Path | None = None,
                     model_name: str | None = None) -> "AestheticReward":
        """``weights``: the CLIP file or a folder; ``head``: the MLP file or folder (default: the CLIP folder)."""
        path = cls.clip_file.find(weights)
        head_path = cls._find_head(weights, head)
        visual = load_clip(path, model_source(path, model_name or cls.default_model), image_only=True)
        mlp = AestheticHead(visual.output_dim)
        sd = check_state_dict(mlp, read_state_dict(head_path), str(head_path))
        mlp.load_state_dict({k: v.float() for k, v in sd.items()})
        return cls(visual, mlp)

    def image_embeds(self, images: Tensor) -> Tensor:
        # as the reference scorer: bicubic straight to 224 without antialiasing, no crop
        return F.normalize(self.visual(pixels_for(self.visual, images, "stretch", antialias=False)), dim=-1)

    def score(self, inputs: RewardInputs) -> Tensor:
        with torch.autocast(inputs.images.device.type, enabled=False):
            return self.head(self.image_embeds(inputs.images))[:, 0]
