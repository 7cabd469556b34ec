"""How faithfully ground-truth splatter images reproduce the ray-cast objects; one JSON line per row.

    python bench/ground_truth.py [--seeds 2]

For every category (and seeds 0..n-1), the splatter images from the 4 canonical views are decoded to
Gaussians and rendered with the engine's renderer from the same views at 128 px; the target is the
ray-cast image (4x4 supersampled, so its edges are anti-aliased). Rows: splatter resolution 64 (what the
model learns) and 128, renderer eps2d 0 (DiffSplat's rasterizer) and 0.3 (gsplat's default).
The last line is the summary (mean / min PSNR per setting).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from engine.core.cameras import canonical_views  # noqa: E402
from engine.data.primitives import Scene  # noqa: E402
from engine.data.raycast import psnr, raycast_views, splatter_maps  # noqa: E402
from engine.data.world import CATEGORY_NAMES, COLOR_NAMES, ObjectSpec, build  # noqa: E402
from engine.render import RenderSettings, render  # noqa: E402
from engine.splatter import decode_splatter  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=2)
    args = p.parse_args(argv)
    cams = canonical_views()
    summary: dict[str, list[float]] = {}
    for i, category in enumerate(CATEGORY_NAMES):
        for seed in range(args.seeds):
            scene = Scene.pack(build(ObjectSpec(category, COLOR_NAMES[(i + seed) % len(COLOR_NAMES)], None, seed)))
            target = raycast_views(scene, cams, 128, supersample=4)["rgb"]
            row = {"category": category, "seed": seed}
            for res in (64, 128):
                g = decode_splatter(splatter_maps(scene, cams, res)[None], cams)
                for eps in (0.0, 0.3):
                    with torch.no_grad():
                        out = render(g, cams, 128, settings=RenderSettings(eps2d=eps))
                    key = f"psnr_splatter{res}_eps{eps:g}"
                    row[key] = round(psnr(out.rgb[0], target), 2)
                    summary.setdefault(key, []).append(row[key])
            print(json.dumps(row))
    print(json.dumps({"summary": {k: {"mean": round(statistics.mean(v), 2), "min": round(min(v), 2)} for k, v in summary.items()}}))


if __name__ == "__main__":
    main()
