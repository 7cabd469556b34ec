"""A small splatter-image autoencoder: the embedded model's counterpart of DiffSplat's GSVAE.

Each 12-channel splatter view (64x64) maps to a compact latent (8x16x16) and back. Like the GSVAE it
keeps a decoder between the diffusion latents and the Gaussians, so reward gradients pass through it.
Design: 4x4 pixel (un)shuffle between the maps and a 16x16 grid, with residual 3x3 convolutions on the
grid. On two CPU cores it trains far faster than a stack of strided convolutions (which learned
colour and opacity edges slowly) and than an SD-style VAE.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor, nn


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(nn.functional.silu(self.conv1(nn.functional.silu(x))))


class SplatterAutoencoder(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, channels: int = 12, width: int = 128, latent_channels: int = 8, patch: int = 4,
                 encoder_blocks: int = 1, decoder_blocks: int = 2,
                 scaling_factor: float | list[float] = 1.0, shift_factor: float | list[float] = 0.0):
        super().__init__()
        flat = channels * patch * patch
        self.encoder = nn.Sequential(
            nn.PixelUnshuffle(patch), nn.Conv2d(flat, width, 3, 1, 1), *[ResidualBlock(width) for _ in range(encoder_blocks)],
            nn.SiLU(), nn.Conv2d(width, 2 * latent_channels, 1),
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(latent_channels, width, 3, 1, 1), *[ResidualBlock(width) for _ in range(decoder_blocks)],
            nn.SiLU(), nn.Conv2d(width, flat, 1), nn.PixelShuffle(patch),
        )

    def encode(self, maps: Tensor) -> tuple[Tensor, Tensor]:
        """[N, 12, H, W] -> posterior mean and log-variance [N, L, H/4, W/4] (unscaled)."""
        mean, logvar = self.encoder(maps).chunk(2, dim=1)
        return mean, logvar.clamp(-20, 10)

    def decode(self, latents: Tensor) -> Tensor:
        """Unscaled latents [N, L, h, w] -> splatter maps [N, 12, 4h, 4w] in [-1, 1]."""
        return self.decoder(latents).clamp(-1, 1)

    def _per_channel(self, value, like: Tensor) -> Tensor:
        t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
        return t.view(-1, 1, 1) if t.dim() == 1 else t

    # Diffusion works on per-channel standardised latents, (z - shift) * scale, as SD3/Flux VAEs do:
    # with a large per-channel mean the epsilon model must resolve it from a tiny signal at high noise,
    # and samples drift.
    def to_diffusion(self, latents: Tensor) -> Tensor:
        """Autoencoder latents [..., C, h, w] -> diffusion latents."""
        return (latents - self._per_channel(self.config.shift_factor, latents)) * self._per_channel(self.config.scaling_factor, latents)

    def from_diffusion(self, latents: Tensor) -> Tensor:
        return latents / self._per_channel(self.config.scaling_factor, latents) + self._per_channel(self.config.shift_factor, latents)
