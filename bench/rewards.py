"""Reward speed and sanity figures; one JSON line per row.

    python bench/rewards.py [--repeats 20] [--objects 24] [--real] [--variants 48]

Speed rows (``reward``, ``images``, ``resolution``, ``forward_s``, ``backward_s``): each reward on 16
renders (4 world objects x 4 views, ground-truth splats rendered by the engine) at 128x128, median
of the repeats after 2 warm-up runs; backward goes to the images and maps. ``alignment`` runs with
its prompt cache warm (as in training, where prompts repeat); a second row times it cold.
``--real`` adds the real rewards (open_clip's models) at full size with random weights (speed only:
no weights here), on 4 renders at 256 px.

Sanity rows: ``geometry`` and ``geometry_official`` on every category's ground-truth splats against the same
splats with jittered rotations; with ``--variants N``, both on N samples of the tiny base (held-out prompts,
seed 0, 20 steps, the evaluation views at 128 px): means, paired difference and rank agreement; ``alignment`` ranking on exact ray-cast renders of the 24 held-out category-colour
pairs, one object each: does each object's own caption outscore the other objects' captions (score
averaged over the 4 views)? ``pairwise_rate`` over all pairs, ``top1_rate`` per object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from engine.core.cameras import canonical_views  # noqa: E402
from engine.core.gaussians import Gaussians  # noqa: E402
from engine.data.primitives import Scene  # noqa: E402
from engine.data.raycast import raycast_views, splatter_maps  # noqa: E402
from engine.data.world import (  # noqa: E402
    CATEGORY_NAMES,
    COLOR_NAMES,
    HELD_OUT,
    ObjectSpec,
    build,
    caption,
)
from engine.render import RenderOutput, render  # noqa: E402
from engine.rewards import (  # noqa: E402
    AestheticReward,
    AlignmentReward,
    ClipScoreReward,
    ColorfulnessReward,
    GeometryOfficialReward,
    GeometryReward,
    HPSv2Reward,
    RewardInputs,
    flatten_renders,
    score_assets,
)
from engine.rewards.preference import AestheticHead  # noqa: E402
from engine.splatter import decode_splatter  # noqa: E402

CAMS = canonical_views()


def splats(spec: ObjectSpec, jitter: float = 0.0, seed: int = 0) -> Gaussians:
    g = decode_splatter(splatter_maps(Scene.pack(build(spec)), CAMS, 64)[None], CAMS)
    if jitter:
        noise = torch.randn(g.quats.shape, generator=torch.Generator().manual_seed(seed))
        g = Gaussians(g.means, g.scales, torch.nn.functional.normalize(g.quats + jitter * noise, dim=-1), g.opacities, g.colors)
    return g


def renders_of(specs: list[ObjectSpec], res: int) -> RenderOutput:
    with torch.no_grad():
        outs = [render(splats(s), CAMS, res) for s in specs]
    return RenderOutput(*(torch.cat([getattr(o, k) for o in outs]) for k in ("rgb", "alpha", "depth", "normal")))


def time_reward(reward, inputs: RewardInputs, repeats: int) -> tuple[float, float]:
    fwd, bwd = [], []
    for i in range(repeats + 2):
        leaf = RewardInputs(inputs.images.clone().requires_grad_(), inputs.prompts, inputs.alpha.clone().requires_grad_(),
                            inputs.depth.clone().requires_grad_(), inputs.normal.clone().requires_grad_(), inputs.cameras)
        t0 = time.perf_counter()
        s = reward.score_inputs(leaf)
        t1 = time.perf_counter()
        s.sum().backward()
        t2 = time.perf_counter()
        if i >= 2:
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
    return statistics.median(fwd), statistics.median(bwd)


def speed_row(name: str, reward, inputs: RewardInputs, repeats: int, **extra) -> None:
    f, b = time_reward(reward, inputs, repeats)
    res = inputs.images.shape[-1]
    print(json.dumps({"reward": name, "images": len(inputs), "resolution": res, "forward_s": round(f, 4),
                      "backward_s": round(b, 4), "total_s": round(f + b, 4), **extra}), flush=True)


def random_real_rewards() -> list:
    """Full-size real rewards on open_clip's models with random weights (no weights on this machine): speed only."""
    import open_clip

    out = []
    for cls, model in ((ClipScoreReward, "ViT-B-32"), (HPSv2Reward, "ViT-H-14")):
        out.append((cls.name, cls(open_clip.create_model(model), open_clip.get_tokenizer(model)), model))
    visual = open_clip.create_model("ViT-L-14-quickgelu").visual
    out.append(("aesthetic", AestheticReward(visual, AestheticHead(visual.output_dim)), "ViT-L-14"))
    return out


def geometry_variants(n: int) -> None:
    """Ours and the official code's depth-normal consistency on the same base samples (the assets training
    scores): means, their paired difference with its standard error, and how well they rank assets alike."""
    from engine.core.cameras import evaluation_views
    from engine.generate import generate, load_model
    from engine.prompts import EVAL_PROMPTS, read_prompts

    prompts = (read_prompts(None, EVAL_PROMPTS) * n)[:n]
    model, cams = load_model("tiny"), evaluation_views()
    with torch.no_grad():
        out = render(generate(model, prompts, [0] * n, steps=20).gaussians, cams, 128)
        ours = score_assets(GeometryReward(), out, prompts, cams).double()
        official = score_assets(GeometryOfficialReward(), out, prompts, cams).double()
    diff = official - ours
    ranks = [x.argsort().argsort().double() for x in (ours, official)]
    print(json.dumps({"check": "geometry_variants_on_base_samples", "assets": n, "ours_mean": round(ours.mean().item(), 4),
                      "official_mean": round(official.mean().item(), 4), "difference": round(diff.mean().item(), 4),
                      "difference_se": round((diff.std() / n ** 0.5).item(), 4),
                      "pearson": round(torch.corrcoef(torch.stack([ours, official]))[0, 1].item(), 3),
                      "spearman": round(torch.corrcoef(torch.stack(ranks))[0, 1].item(), 3)}), flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--objects", type=int, default=24, help="objects for the sanity rows")
    p.add_argument("--real", action="store_true", help="also time the real rewards at full size, random weights")
    p.add_argument("--variants", type=int, default=0, metavar="N",
                   help="also score N base samples (held-out prompts, seed 0) with both geometry variants")
    args = p.parse_args(argv)
    torch.manual_seed(0)

    specs = [ObjectSpec(c, COLOR_NAMES[i], None, i) for i, c in enumerate(("mushroom", "chair", "cup", "rocket"))]
    prompts = [f"a {s.color} {s.category}" for s in specs]
    inputs = flatten_renders(renders_of(specs, 128), prompts, CAMS)
    speed_row("geometry", GeometryReward(), inputs, args.repeats)
    speed_row("geometry", GeometryReward(detach_depth=False, max_angle=60), inputs, args.repeats, options="detach_depth=False,max_angle=60")
    speed_row("colorfulness", ColorfulnessReward(), inputs, args.repeats)
    align = AlignmentReward()
    speed_row("alignment", align, inputs, args.repeats, options="prompt cache warm")
    cold = RewardInputs(inputs.images, [f"{p} #{i}" for i, p in enumerate(inputs.prompts)], inputs.alpha, inputs.depth, inputs.normal, inputs.cameras)
    t0 = time.perf_counter()
    align.score_inputs(cold)
    print(json.dumps({"reward": "alignment", "images": 16, "resolution": 128, "forward_s": round(time.perf_counter() - t0, 4),
                      "options": "16 new prompts (cache cold), one run"}), flush=True)

    if args.real:
        small = flatten_renders(renders_of(specs[:1], 256), prompts[:1], CAMS)
        for name, reward, model in random_real_rewards():
            speed_row(name, reward, small, max(1, args.repeats // 10), options=f"{model}, random weights")
            del reward

    # geometry (both variants): ground-truth splats vs the same with jittered rotations
    for geo in (GeometryReward(), GeometryOfficialReward()):
        flat, jittered = [], []
        for i, c in enumerate(CATEGORY_NAMES[: args.objects]):
            spec = ObjectSpec(c, COLOR_NAMES[i % len(COLOR_NAMES)], None, i)
            for store, jitter in ((flat, 0.0), (jittered, 0.5)):
                with torch.no_grad():
                    store.append(score_assets(geo, render(splats(spec, jitter, seed=i), CAMS, 128), [""], CAMS).item())
        print(json.dumps({"check": "geometry_flat_vs_jittered", "reward": geo.name, "objects": len(flat),
                          "flat_mean": round(statistics.mean(flat), 4), "jittered_mean": round(statistics.mean(jittered), 4),
                          "flat_wins": sum(a > b for a, b in zip(flat, jittered)) / len(flat)}), flush=True)
    if args.variants:
        geometry_variants(args.variants)

    # alignment: each held-out object's caption against every other object's caption, on exact renders
    rng = random.Random(0)
    objs = [ObjectSpec(c, col, None, i) for i, (c, col) in enumerate(sorted(HELD_OUT)[: args.objects])]
    caps = [caption(s, rng) for s in objs]
    with torch.no_grad():
        rgb = torch.stack([raycast_views(Scene.pack(build(s)), CAMS, 128, supersample=2)["rgb"] for s in objs])
        z = torch.zeros_like(rgb[:, :, :1])
        out = RenderOutput(rgb, z, z, torch.zeros_like(rgb))
        scores = torch.stack([score_assets(align, out, [cap] * len(objs), CAMS) for cap in caps])  # [caption, object]
    n = len(objs)
    own = scores.diagonal()
    pairwise = float(((own[None, :] > scores).sum()) / (n * (n - 1)))
    top1 = float((scores.argmax(0) == torch.arange(n)).float().mean())
    print(json.dumps({"check": "alignment_matching_prompt_wins", "objects": n, "pairwise_rate": round(pairwise, 4),
                      "top1_rate": round(top1, 4), "example": caps[0]}), flush=True)


if __name__ == "__main__":
    main()
