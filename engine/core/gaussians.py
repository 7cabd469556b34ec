"""The 3D asset type: a batch of 3D Gaussians, plus the activations used by file formats.

Values are stored *activated* (linear scales, opacities in [0, 1], RGB in [0, 1]), which is what
DiffSplat's splatter decoding produces and what the renderer consumes. The inverse activations used
by the standard 3DGS PLY layout (log scale, logit opacity, SH DC colour) live here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

SH_C0 = 0.28209479177387814  # zeroth spherical-harmonic basis constant
_EPS = 1e-8


def rgb_to_sh_dc(rgb: Tensor) -> Tensor:
    return (rgb - 0.5) / SH_C0


def sh_dc_to_rgb(sh: Tensor) -> Tensor:
    return sh * SH_C0 + 0.5


def opacity_to_logit(opacity: Tensor) -> Tensor:
    o = opacity.clamp(_EPS, 1.0 - _EPS)
    return torch.log(o) - torch.log1p(-o)


def logit_to_opacity(logit: Tensor) -> Tensor:
    return torch.sigmoid(logit)


def scale_to_log(scale: Tensor) -> Tensor:
    return torch.log(scale.clamp_min(_EPS))


def log_to_scale(log_scale: Tensor) -> Tensor:
    return torch.exp(log_scale)


@dataclass
class Gaussians:
    """A batch of B assets with N Gaussians each.

    Attributes:
        means: [B, N, 3] centres in world space.
        scales: [B, N, 3] standard deviations along the local axes (world units, >= 0).
        quats: [B, N, 4] rotations, w first; need not be unit length (normalised when used).
        opacities: [B, N] in [0, 1].
        colors: [B, N, 3] RGB in [0, 1].
    """

    means: Tensor
    scales: Tensor
    quats: Tensor
    opacities: Tensor
    colors: Tensor

    def __post_init__(self) -> None:
        if self.means.dim() == 2:  # a single asset: add the batch dimension
            self.means, self.scales, self.quats = self.means[None], self.scales[None], self.quats[None]
            self.opacities, self.colors = self.opacities[None], self.colors[None]
        B, N = self.means.shape[:2]
        expected = {
            "means": (B, N, 3), "scales": (B, N, 3), "quats": (B, N, 4),
            "opacities": (B, N), "colors": (B, N, 3),
        }
        for name, shape in expected.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ValueError(f"Gaussians.{name} must have shape {list(shape)}, got {list(got)}.")

    @property
    def batch_size(self) -> int:
        return self.means.shape[0]

    @property
    def num_gaussians(self) -> int:
        return self.means.shape[1]

    @property
    def device(self) -> torch.device:
        return self.means.device

    @property
    def dtype(self) -> torch.dtype:
        return self.means.dtype

    def fields(self) -> dict[str, Tensor]:
        return {
            "means": self.means, "scales": self.scales, "quats": self.quats,
            "opacities": self.opacities, "colors": self.colors,
        }

    def map(self, fn) -> "Gaussians":
        """A new Gaussians with ``fn`` applied to every field (e.g. ``.to``, ``.detach``)."""
        return Gaussians(**{k: fn(v) for k, v in self.fields().items()})

    def to(self, *args, **kwargs) -> "Gaussians":
        return self.map(lambda t: t.to(*args, **kwargs))

    def detach(self) -> "Gaussians":
        return self.map(Tensor.detach)

    def __getitem__(self, index) -> "Gaussians":
        """Select assets along the batch dimension (keeps it)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return self.map(lambda t: t[index])

    def select(self, mask: Tensor) -> "Gaussians":
        """Keep the Gaussians where ``mask`` ([N] bool) is true, in every asset of the batch."""
        return self.map(lambda t: t[:, mask])

    def validate(self) -> None:
        """Raise ``ValueError`` with a clear message for values no renderer or file can use."""
        for name, value in self.fields().items():
            if not value.is_floating_point():
                raise ValueError(f"Gaussians.{name} must be a floating-point tensor, got {value.dtype}.")
            bad = ~torch.isfinite(value)
            if bad.any():
                count = int(bad.reshape(bad.shape[0], bad.shape[1], -1).any(-1).sum())
                raise ValueError(f"Gaussians.{name} has non-finite values (NaN or inf) in {count} Gaussian(s).")
        if (self.scales < 0).any():
            raise ValueError("Gaussians.scales must be >= 0 (they are standard deviations, not log-scales).")
        if ((self.opacities < 0) | (self.opacities > 1)).any():
            raise ValueError("Gaussians.opacities must lie in [0, 1] (activated, not logits).")

    @staticmethod
    def cat(items: list["Gaussians"], dim: int = 1) -> "Gaussians":
        """Concatenate along Gaussians (dim=1) or along the batch (dim=0)."""
        return Gaussians(**{k: torch.cat([g.fields()[k] for g in items], dim=dim) for k in items[0].fields()})


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """[..., 4] (w, x, y, z), any length -> [..., 3, 3] rotation matrices (columns = local axes)."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(quats.shape[:-1] + (3, 3))


def quats_from_normals(normals: Tensor) -> Tensor:
    """[..., 3] unit normals -> [..., 4] (w, x, y, z) rotations taking the local z axis to each normal.

    With the smallest scale on local z, such a Gaussian is a surfel lying flat on the surface.
    """
    z = torch.zeros_like(normals)
    z[..., 2] = 1
    half = torch.nn.functional.normalize(normals + z, dim=-1)  # half-way vector: rotation by pi about it
    q = torch.cat([(z * half).sum(-1, keepdim=True), torch.linalg.cross(z, half, dim=-1)], dim=-1)
    # A normal of exactly -z has no half-way vector: rotate by pi about x instead.
    flip = (normals[..., 2] < -1 + 1e-6)[..., None]
    return torch.where(flip, torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=normals.dtype, device=normals.device), q)


def quats_from_rotmat(R: Tensor) -> Tensor:
    """[..., 3, 3] rotation matrices -> [..., 4] unit quaternions (w, x, y, z) with w >= 0."""
    m = R.reshape(-1, 3, 3)
    trace = m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]
    # Four candidate formulas; each is stable where its leading component is the largest.
    cands = torch.stack([
        torch.stack([1 + trace, m[:, 2, 1] - m[:, 1, 2], m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] - m[:, 0, 1]], -1),
        torch.stack([m[:, 2, 1] - m[:, 1, 2], 1 + m[:, 0, 0] - m[:, 1, 1] - m[:, 2, 2], m[:, 0, 1] + m[:, 1, 0], m[:, 0, 2] + m[:, 2, 0]], -1),
        torch.stack([m[:, 0, 2] - m[:, 2, 0], m[:, 0, 1] + m[:, 1, 0], 1 - m[:, 0, 0] + m[:, 1, 1] - m[:, 2, 2], m[:, 1, 2] + m[:, 2, 1]], -1),
        torch.stack([m[:, 1, 0] - m[:, 0, 1], m[:, 0, 2] + m[:, 2, 0], m[:, 1, 2] + m[:, 2, 1], 1 - m[:, 0, 0] - m[:, 1, 1] + m[:, 2, 2]], -1),
    ], 1)  # [M, 4 candidates, 4]
    lead = torch.stack([trace, m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]], -1).argmax(-1)
    q = torch.nn.functional.normalize(cands[torch.arange(len(m)), lead], dim=-1)
    q = torch.where(q[:, :1] < 0, -q, q)
    return q.reshape(R.shape[:-2] + (4,))
