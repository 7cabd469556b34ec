"""Closed-form ray intersection with the primitives the procedural world is built from.

Three primitive kinds cover every object: ellipsoids, boxes and frusta (capped cones, which include
cylinders and pointed cones). Each lives in its own local frame (centre + rotation); intersections are
computed for all rays against all primitives of a scene at once, and the nearest hit wins.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

ELLIPSOID, BOX, FRUSTUM = 0, 1, 2
_INF = float("inf")


@dataclass
class Primitive:
    """One solid in an object's frame.

    kind: ELLIPSOID (size = radii), BOX (size = half extents) or FRUSTUM (size = bottom radius,
    half height, top radius; its axis is local y).
    """

    kind: int
    center: tuple[float, float, float]
    size: tuple[float, float, float]
    rotation: Tensor  # [3, 3], columns are the local axes in object space
    color: tuple[float, float, float]

    def half_extent(self) -> Tensor:
        """Axis-aligned half extent in object space (exact for ellipsoids and boxes, conservative for frusta)."""
        size = torch.tensor(self.size, dtype=torch.float64)
        if self.kind == FRUSTUM:
            r = max(self.size[0], self.size[2])
            size = torch.tensor([r, self.size[1], r], dtype=torch.float64)
        R = self.rotation.double()
        if self.kind == ELLIPSOID:
            return (R * size).norm(dim=1)
        return (R.abs() * size).sum(dim=1)


@dataclass
class Scene:
    """Primitives packed as tensors for batched intersection."""

    kind: Tensor  # [P] long
    center: Tensor  # [P, 3]
    size: Tensor  # [P, 3]
    rotation: Tensor  # [P, 3, 3]
    color: Tensor  # [P, 3]

    @staticmethod
    def pack(prims: list[Primitive], dtype=torch.float32) -> "Scene":
        return Scene(
            kind=torch.tensor([p.kind for p in prims]),
            center=torch.tensor([p.center for p in prims], dtype=dtype),
            size=torch.tensor([p.size for p in prims], dtype=dtype),
            rotation=torch.stack([p.rotation.to(dtype) for p in prims]),
            color=torch.tensor([p.color for p in prims], dtype=dtype),
        )


def _ellipsoid(o: Tensor, d: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
    """o, d: [P, R, 3] local rays; r: [P, 1, 3] radii -> t [P, R], local normal [P, R, 3]."""
    os_, ds = o / r, d / r
    a = (ds * ds).sum(-1)
    b = (os_ * ds).sum(-1)
    c = (os_ * os_).sum(-1) - 1
    disc = b * b - a * c
    sq = disc.clamp_min(0).sqrt()
    t0, t1 = (-b - sq) / a, (-b + sq) / a
    t = torch.where(t0 > 0, t0, t1)
    t = torch.where((disc >= 0) & (t > 0), t, _INF)
    p = o + t.clamp_max(1e6)[..., None] * d
    return t, p / (r * r)


def _box(o: Tensor, d: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    inv = 1.0 / torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
    t1, t2 = (-h - o) * inv, (h - o) * inv
    tmin, tmax = torch.minimum(t1, t2), torch.maximum(t1, t2)
    tnear, axis = tmin.max(-1)
    tfar = tmax.min(-1).values
    t = torch.where((tnear <= tfar) & (tnear > 0), tnear, _INF)
    n = torch.zeros_like(o).scatter_(-1, axis[..., None], 1.0)
    n = -n * torch.sign(d)
    return t, n


def _frustum(o: Tensor, d: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    """Capped cone around local y, y in [-h, h], radius r0 at -h and r1 at +h."""
    r0, h, r1 = s[..., 0], s[..., 1], s[..., 2]
    k = (r1 - r0) / (2 * h)
    ox, oy, oz = o.unbind(-1)
    dx, dy, dz = d.unbind(-1)
    q0 = r0 + k * (oy + h)  # radius at the ray origin's height
    a = dx * dx + dz * dz - k * k * dy * dy
    b = 2 * (ox * dx + oz * dz - q0 * k * dy)
    c = ox * ox + oz * oz - q0 * q0
    a_safe = torch.where(a.abs() < 1e-12, torch.full_like(a, 1e-12), a)
    disc = b * b - 4 * a * c
    sq = disc.clamp_min(0).sqrt()
    best = torch.full_like(a, _INF)
    for root in ((-b - sq) / (2 * a_safe), (-b + sq) / (2 * a_safe)):
        y = oy + root * dy
        ok = (disc >= 0) & (root > 0) & (y.abs() <= h) & (q0 + k * dy * root >= 0) & (a.abs() >= 1e-12)
        best = torch.where(ok & (root < best), root, best)
    side_t = best
    # Caps: the planes y = -h (radius r0) and y = +h (radius r1).
    dy_safe = torch.where(dy.abs() < 1e-12, torch.full_like(dy, 1e-12), dy)
    cap_t = torch.full_like(a, _INF)
    cap_sign = torch.zeros_like(a)
    for sign, radius in ((-1.0, r0), (1.0, r1)):
        tc = (sign * h - oy) / dy_safe
        px, pz = ox + tc * dx, oz + tc * dz
        ok = (tc > 0) & (px * px + pz * pz <= radius * radius) & (dy.abs() >= 1e-12)
        take = ok & (tc < cap_t)
        cap_t = torch.where(take, tc, cap_t)
        cap_sign = torch.where(take, torch.full_like(a, sign), cap_sign)
    t = torch.minimum(side_t, cap_t)
    ts = t.clamp_max(1e6)
    p = o + ts[..., None] * d
    q = r0 + k * (p[..., 1] + h)
    side_n = torch.stack([p[..., 0], -q * k, p[..., 2]], -1)
    cap_n = torch.stack([torch.zeros_like(a), cap_sign, torch.zeros_like(a)], -1)
    n = torch.where((cap_t < side_t)[..., None], cap_n, side_n)
    return t, n


def intersect(scene: Scene, origins: Tensor, directions: Tensor) -> dict[str, Tensor]:
    """Nearest hit of each ray.

    Args:
        origins, directions: [R, 3] in object space (directions need not be unit; t is in their units).

    Returns:
        dict with ``hit`` [R] bool, ``t`` [R], ``normal`` [R, 3] (unit, object space, facing the ray),
        ``color`` [R, 3] and ``part`` [R] (primitive index, -1 on a miss).
    """
    Rt = scene.rotation.transpose(1, 2)  # world -> local
    o = torch.einsum("pij,rj->pri", Rt, origins) - torch.einsum("pij,pj->pi", Rt, scene.center)[:, None]
    d = torch.einsum("pij,rj->pri", Rt, directions)
    t = torch.full(o.shape[:2], _INF, dtype=o.dtype)
    n = torch.zeros_like(o)
    for kind, fn in ((ELLIPSOID, _ellipsoid), (BOX, _box), (FRUSTUM, _frustum)):
        sel = (scene.kind == kind).nonzero().flatten()
        if len(sel) == 0:
            continue
        tk, nk = fn(o[sel], d[sel], scene.size[sel][:, None, :])
        t[sel], n[sel] = tk, nk
    t_best, part = t.min(0)
    hit = torch.isfinite(t_best)
    idx = part[None, :, None].expand(1, -1, 3)
    n_local = n.gather(0, idx)[0]
    n_world = torch.einsum("rij,rj->ri", scene.rotation[part], n_local)
    n_world = torch.nn.functional.normalize(n_world, dim=-1)
    facing = (n_world * directions).sum(-1, keepdim=True) > 0
    n_world = torch.where(facing, -n_world, n_world)
    return {
        "hit": hit,
        "t": torch.where(hit, t_best, torch.zeros_like(t_best)),
        "normal": n_world,
        "color": scene.color[part],
        "part": torch.where(hit, part, torch.full_like(part, -1)),
    }
