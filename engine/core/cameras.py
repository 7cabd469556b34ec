"""Cameras in DiffSplat's convention (research/diffsplat.md §2).

Poses are built OpenGL-style with kiui's orbit (y up, azimuth 0 on +z, 90 on +x) and stored as
OpenCV camera-to-world matrices (x right, y down, z forward). Intrinsics are normalised by image
size (fx = fy = 1.3889, cx = cy = 0.5 for DiffSplat), so one camera serves every resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

DIFFSPLAT_FOCAL = 1422.222 / 1024  # normalised focal length, FoV ~39.6 deg
DIFFSPLAT_RADIUS = 1.4
DIFFSPLAT_ELEVATION = 10.0
CANONICAL_AZIMUTHS = (0.0, 90.0, 180.0, 270.0)


@dataclass
class Cameras:
    """A batch of pinhole cameras.

    Attributes:
        c2w: [..., 4, 4] OpenCV camera-to-world matrices.
        intrinsics: [..., 4] normalised (fx, fy, cx, cy): pixel focal = fx * width, centre = cx * width.
    """

    c2w: Tensor
    intrinsics: Tensor

    def __post_init__(self) -> None:
        if self.c2w.shape[-2:] != (4, 4):
            raise ValueError(f"Cameras.c2w must end in (4, 4), got {list(self.c2w.shape)}.")
        if self.intrinsics.shape != self.c2w.shape[:-2] + (4,):
            raise ValueError(
                f"Cameras.intrinsics must have shape {list(self.c2w.shape[:-2]) + [4]}, "
                f"got {list(self.intrinsics.shape)}."
            )

    @property
    def shape(self) -> torch.Size:
        return self.c2w.shape[:-2]

    def __len__(self) -> int:
        return self.shape[-1]

    @property
    def positions(self) -> Tensor:
        return self.c2w[..., :3, 3]

    def viewmats(self) -> Tensor:
        """[..., 4, 4] world-to-camera (OpenCV), the matrix gsplat calls ``viewmats``."""
        R = self.c2w[..., :3, :3]
        t = self.c2w[..., :3, 3:]
        Rt = R.transpose(-1, -2)
        top = torch.cat([Rt, -Rt @ t], dim=-1)
        bottom = torch.zeros_like(self.c2w[..., 3:, :])
        bottom[..., 3] = 1
        return torch.cat([top, bottom], dim=-2)

    def Ks(self, width: int, height: int) -> Tensor:
        """[..., 3, 3] pixel intrinsics for an image of ``width`` x ``height`` (pixel centres at +0.5)."""
        fx, fy, cx, cy = self.intrinsics.unbind(-1)
        K = torch.zeros(self.shape + (3, 3), dtype=self.c2w.dtype, device=self.c2w.device)
        K[..., 0, 0], K[..., 1, 1] = fx * width, fy * height
        K[..., 0, 2], K[..., 1, 2] = cx * width, cy * height
        K[..., 2, 2] = 1
        return K

    def to(self, *args, **kwargs) -> "Cameras":
        return Cameras(self.c2w.to(*args, **kwargs), self.intrinsics.to(*args, **kwargs))

    def __getitem__(self, index) -> "Cameras":
        return Cameras(self.c2w[index], self.intrinsics[index])


def orbit_c2w(elevation: Tensor, azimuth: Tensor, radius: Tensor | float) -> Tensor:
    """OpenCV camera-to-world matrices looking at the origin.

    Args:
        elevation: degrees above the xz-plane (DiffSplat's user convention: 10 = slightly above).
        azimuth: degrees, 0 on +z, 90 on +x.
        radius: distance to the origin.
    """
    elevation, azimuth = torch.as_tensor(elevation, dtype=torch.float32), torch.as_tensor(azimuth, dtype=torch.float32)
    elevation, azimuth = torch.broadcast_tensors(elevation, azimuth)
    if (elevation.abs() >= 90).any():
        raise ValueError("Camera elevation must lie strictly between -90 and 90 degrees (the look-at is undefined at the poles).")
    radius = torch.as_tensor(radius, dtype=elevation.dtype).expand_as(elevation)
    if (radius <= 0).any():
        raise ValueError("Camera radius must be positive.")
    e, a = torch.deg2rad(elevation), torch.deg2rad(azimuth)
    campos = torch.stack([torch.cos(e) * torch.sin(a), torch.sin(e), torch.cos(e) * torch.cos(a)], -1) * radius[..., None]
    # OpenGL look-at: forward points from the target to the camera.
    forward = torch.nn.functional.normalize(campos, dim=-1)
    world_up = torch.tensor([0.0, 1.0, 0.0]).expand_as(forward)
    right = torch.nn.functional.normalize(torch.linalg.cross(world_up, forward, dim=-1), dim=-1)
    up = torch.nn.functional.normalize(torch.linalg.cross(forward, right, dim=-1), dim=-1)
    # OpenGL -> OpenCV: negate the y and z axes.
    R = torch.stack([right, -up, -forward], dim=-1)
    c2w = torch.eye(4).repeat(elevation.shape + (1, 1))
    c2w[..., :3, :3] = R
    c2w[..., :3, 3] = campos
    return c2w


def orbit_cameras(
    elevation, azimuth, radius: float = DIFFSPLAT_RADIUS, focal: float = DIFFSPLAT_FOCAL
) -> Cameras:
    """Cameras on an orbit around the origin, with square normalised intrinsics."""
    c2w = orbit_c2w(torch.as_tensor(elevation, dtype=torch.float32), torch.as_tensor(azimuth, dtype=torch.float32), radius)
    intr = torch.tensor([focal, focal, 0.5, 0.5]).expand(c2w.shape[:-2] + (4,)).clone()
    return Cameras(c2w, intr)


def canonical_views(elevation: float = DIFFSPLAT_ELEVATION, radius: float = DIFFSPLAT_RADIUS) -> Cameras:
    """DiffSplat's 4 generation views: azimuth 0/90/180/270, elevation 10, radius 1.4."""
    azimuth = torch.tensor(CANONICAL_AZIMUTHS)
    return orbit_cameras(torch.full_like(azimuth, elevation), azimuth, radius)


def evaluation_views() -> Cameras:
    """4 views between the generation views (azimuth 45/135/225/315, elevation 15): evaluations judge
    assets from where the model was not asked to draw them."""
    azimuth = torch.tensor([45.0, 135.0, 225.0, 315.0])
    return orbit_cameras(torch.full_like(azimuth, 15.0), azimuth)


def random_views(
    num_views: int,
    generator: torch.Generator | None = None,
    *,
    elevation: float = DIFFSPLAT_ELEVATION,
    elevation_jitter: float = 10.0,
    azimuth_jitter: float = 45.0,
    radius: float = DIFFSPLAT_RADIUS,
    evenly_spaced: bool = True,
) -> Cameras:
    """Reward views: evenly spaced azimuths with a random global offset and per-view jitter.

    With ``evenly_spaced=False`` azimuths are uniform in [0, 360). Deterministic for a seeded generator.
    """
    if num_views < 1:
        raise ValueError(f"num_views must be >= 1, got {num_views}.")
    u = torch.rand(2 * num_views + 1, generator=generator)
    if evenly_spaced:
        base = torch.arange(num_views) * (360.0 / num_views) + u[0] * 360.0
        azimuth = base + (u[1 : num_views + 1] * 2 - 1) * azimuth_jitter
    else:
        azimuth = u[1 : num_views + 1] * 360.0
    elev = elevation + (u[num_views + 1 :] * 2 - 1) * elevation_jitter
    return orbit_cameras(elev.clamp(-89.0, 89.0), azimuth % 360.0, radius)


def turntable(
    num_frames: int, elevation: float = DIFFSPLAT_ELEVATION, radius: float = DIFFSPLAT_RADIUS, start: float = 0.0
) -> Cameras:
    """``num_frames`` cameras on a full circle at fixed elevation (DiffSplat's video path)."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}.")
    azimuth = start + torch.arange(num_frames) * (360.0 / num_frames)
    return orbit_cameras(torch.full_like(azimuth, elevation), azimuth, radius)


def fov_degrees(focal: float = DIFFSPLAT_FOCAL) -> float:
    """Full field of view for a normalised focal length."""
    return math.degrees(2 * math.atan(0.5 / focal))


def plucker_rays(cameras: Cameras, height: int, width: int, *, diffsplat_quirk: bool = False) -> Tensor:
    """[V, 6, H, W] Plücker coordinates (o x d, d) of each pixel's ray, d unit, world frame.

    The diffusion models take them as extra input channels: they tell the network which view it sees.
    Default: rays through the pixel centres. ``diffsplat_quirk``: DiffSplat's ``plucker_ray(bug=True)``
    mapping, which its checkpoints were trained with: u = j / (W - 1), x = (u + 0.5 - cx) / fx, so the
    rays are not centred on the optical axis (research/diffsplat.md §2.4).
    """
    if diffsplat_quirk:
        us = torch.arange(width, dtype=torch.float32) / (width - 1) + 0.5
        vs = torch.arange(height, dtype=torch.float32) / (height - 1) + 0.5
    else:
        us = (torch.arange(width, dtype=torch.float32) + 0.5) / width
        vs = (torch.arange(height, dtype=torch.float32) + 0.5) / height
    fx, fy, cx, cy = cameras.intrinsics.float().unbind(-1)
    x = ((us[None, None, :] - cx[:, None, None]) / fx[:, None, None]).expand(-1, height, -1)
    y = ((vs[None, :, None] - cy[:, None, None]) / fy[:, None, None]).expand(-1, -1, width)
    d_cam = torch.stack([x, y, torch.ones_like(x)], -1)
    c2w = cameras.c2w.float()
    d = torch.nn.functional.normalize(torch.einsum("vij,vhwj->vhwi", c2w[:, :3, :3], d_cam), dim=-1)
    o = c2w[:, None, None, :3, 3].expand_as(d)
    return torch.cat([torch.linalg.cross(o, d, dim=-1), d], -1).permute(0, 3, 1, 2).contiguous()


def diffsplat_plucker(cameras: Cameras, latent_size: int, render_size: int = 256) -> Tensor:
    """[V, 6, s, s] DiffSplat's conditioning: quirk-mapped Plücker maps at the render size, resized
    bilinearly (align_corners=False, no antialiasing) to the latent size, as its pipelines do."""
    full = plucker_rays(cameras, render_size, render_size, diffsplat_quirk=True)
    return torch.nn.functional.interpolate(full, size=(latent_size, latent_size), mode="bilinear", align_corners=False)
