"""What every text-to-3D model shares: the interface the sampler, the generator and the trainers use.

A model denoises V per-view latents [B, V, C, h, w] with Plücker-ray channels concatenated, gives the
ε prediction (``eps``) whatever its network predicts, decodes latents to splatter maps [B, V, 12, H, W]
and those to Gaussians with the cameras they were made for. The embedded ``tiny`` model and the
DiffSplat models subclass it, so sampling, generation and alignment code never asks which one it has.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.cameras import Cameras
from ..core.gaussians import Gaussians
from ..core.sampling import make_scheduler
from ..splatter import decode_splatter

PREDICTION_TYPES = ("epsilon", "v_prediction")


@dataclass
class Condition:
    """Text condition: token embeddings [B, L, D] and mask [B, L]."""

    embeds: Tensor
    mask: Tensor

    def __len__(self) -> int:
        return self.embeds.shape[0]

    def select(self, rows: Tensor) -> "Condition":
        """The rows ``rows`` (a long index tensor)."""
        return Condition(self.embeds[rows], self.mask[rows])

    def repeat(self, n: int) -> "Condition":
        return Condition(self.embeds.repeat_interleave(n, 0), self.mask.repeat_interleave(n, 0))

    @staticmethod
    def cat(items: list["Condition"]) -> "Condition":
        return Condition(torch.cat([c.embeds for c in items]), torch.cat([c.mask for c in items]))


class SplatDiffusionModel(torch.nn.Module):
    """Base class. Subclasses set ``denoiser`` and implement ``network_output``, ``encode_prompts`` and
    ``decode``; ``plucker`` is the [V, 6, h, w] ray map at latent resolution."""

    name = "model"

    def __init__(self, cameras: Cameras, plucker: Tensor, latent_channels: int, latent_size: int, *,
                 prediction_type: str = "epsilon", guidance_default: float = 4.5, noise_schedule: dict | None = None):
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}.")
        self.prediction_type = prediction_type
        self.guidance_default = guidance_default
        self.noise_schedule = noise_schedule
        self.cameras = cameras
        self.num_views = len(cameras)
        self.latent_channels, self.latent_size = latent_channels, latent_size
        self.register_buffer("alphas_cumprod", make_scheduler("ddim", noise_schedule).alphas_cumprod.clone(), persistent=False)
        self.register_buffer("plucker", plucker, persistent=False)

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        return (self.num_views, self.latent_channels, self.latent_size, self.latent_size)

    @property
    def device(self) -> torch.device:
        return self.plucker.device

    def eps(self, latents: Tensor, timesteps: Tensor, cond: Condition) -> Tensor:
        """ε prediction (what every sampler and algorithm uses), whatever the network predicts.

        latents [B, V, C, h, w]; timesteps [B] (or a scalar); cond with B rows. Extra output channels
        (DiffSplat-PixArt's learned variance) are dropped.
        """
        out = self.network_output(latents, timesteps, cond)[:, :, : self.latent_channels].to(latents.dtype)
        if self.prediction_type == "epsilon":
            return out
        # v = α ε − σ x0 and x_t = α x0 + σ ε  =>  ε = α v + σ x_t.
        a, s = self.alpha_sigma(timesteps, latents)
        return a * out + s * latents

    def alpha_sigma(self, timesteps: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """α_t = sqrt(ᾱ_t), σ_t = sqrt(1 − ᾱ_t), shaped to broadcast over [B, V, C, h, w]."""
        t = torch.as_tensor(timesteps, device=like.device).reshape(-1).long()
        ac = self.alphas_cumprod.to(like)[t].view(-1, 1, 1, 1, 1)
        return ac.sqrt(), (1 - ac).sqrt()

    def denoiser_input(self, latents: Tensor, timesteps: Tensor) -> tuple[Tensor, Tensor]:
        """[B*V, C+6, h, w] latents with Plücker channels, and the timestep per image."""
        B, V = latents.shape[:2]
        t = torch.as_tensor(timesteps, device=latents.device).reshape(-1).expand(B)
        x = torch.cat([latents, self.plucker.to(latents).expand(B, -1, -1, -1, -1)], dim=2).flatten(0, 1)
        return x, t.repeat_interleave(V)

    def network_output(self, latents: Tensor, timesteps: Tensor, cond: Condition) -> Tensor:
        raise NotImplementedError

    def encode_prompts(self, prompts: list[str]) -> Condition:
        raise NotImplementedError

    def decode(self, latents: Tensor) -> Tensor:
        """Diffusion latents [B, V, C, h, w] -> splatter maps [B, V, 12, H, W]."""
        raise NotImplementedError

    def to_gaussians(self, maps: Tensor) -> Gaussians:
        return decode_splatter(maps, self.cameras.to(maps.device))
