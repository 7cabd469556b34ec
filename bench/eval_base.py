"""Evaluates the embedded base model on a prompt file; prints one JSON object.

    python bench/eval_base.py --prompts assets/prompts/eval_held_out.txt --seeds 4 [--sheet sheet.png]

For every prompt and seed it samples an asset (20 steps, CFG), renders it from 4 views that are not the
model's own (azimuth 45/135/225/315, elevation 15) and asks the evaluator (checkpoints/tiny-base/evaluator)
for the category and main colour. The same prompts are also built as ground-truth objects of the
procedural world (seeds the training never used) for KID and as a check of the evaluator itself.

Keys: category_accuracy, colour_accuracy, r_precision (own prompt ranked first among the file's
prompts), kid (samples vs ground truth, evaluator features) with kid_reference (two independent
ground-truth draws of the same prompts: the floor), dnc (depth-normal consistency of sample renders)
with dnc_ground_truth, seconds_per_asset (prompt -> Gaussians, batch 1, median), render_seconds
(4 views at 256 px of the visible Gaussians, as the studio renders them;
render_seconds_all_gaussians: all 16,384), plus per-split figures ("seen" / "held_out" category-colour pairs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from engine.cameras import orbit_cameras  # noqa: E402
from engine.data.primitives import Scene  # noqa: E402
from engine.data.raycast import raycast_views, splatter_maps  # noqa: E402
from engine.data.world import HELD_OUT, ObjectSpec, build, parse  # noqa: E402
from engine.evaluator import load_evaluator  # noqa: E402
from engine.generate import generate, load_model, model_views, visible  # noqa: E402
from engine.metrics import depth_normal_consistency, kid  # noqa: E402
from engine.render import render  # noqa: E402
from engine.splatter import decode_splatter  # noqa: E402

EVAL_SEED_BASE = 2_000_000


def eval_cameras():
    az = torch.tensor([45.0, 135.0, 225.0, 315.0])
    return orbit_cameras(torch.full_like(az, 15.0), az)


def ground_truth_images(spec: ObjectSpec, cams, res: int) -> torch.Tensor:
    return raycast_views(Scene.pack(build(spec)), cams, res, supersample=2)["rgb"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", required=True, help="text file, one prompt per line")
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--checkpoint", default=None, help="tiny-base folder (default: the shipped one)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the model's)")
    p.add_argument("--timing", type=int, default=8, help="prompts timed at batch 1")
    p.add_argument("--sheet", help="write a contact sheet PNG (one row per prompt, one column per seed)")
    args = p.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)

    prompts = [line.strip() for line in open(args.prompts) if line.strip()]
    specs = [parse(pr) for pr in prompts]
    if any(s is None for s in specs):
        bad = [pr for pr, s in zip(prompts, specs) if s is None]
        raise SystemExit(f"These prompts are outside the world's grammar: {bad}")
    model = load_model("tiny", args.checkpoint)
    ev = load_evaluator(Path(args.checkpoint) / "evaluator") if args.checkpoint else load_evaluator()
    cams = eval_cameras()
    prompt_text = ev.encode_text(prompts)

    rows, sample_feats, gt_feats, gt2_feats, sheet = [], [], [], [], []
    for i, (prompt, spec) in enumerate(zip(prompts, specs)):
        seeds = list(range(args.seeds))
        gen = generate(model, [prompt] * len(seeds), seeds, steps=args.steps, guidance=args.guidance)
        with torch.no_grad():
            out = render(gen.gaussians, cams, 128)
            imgs = torch.nn.functional.interpolate(out.rgb.flatten(0, 1), size=64, mode="bilinear", antialias=True)
            dnc = depth_normal_consistency(out.depth.flatten(0, 1), out.normal.flatten(0, 1), out.alpha.flatten(0, 1),
                                           cams.__class__(cams.c2w.repeat(len(seeds), 1, 1), cams.intrinsics.repeat(len(seeds), 1)))
            feats = ev.features(imgs)
            emb = ev.image_embeds(imgs).reshape(len(seeds), 4, -1).mean(1)
            emb = torch.nn.functional.normalize(emb, dim=-1)
            cats = ev.classify_embeds(emb)
            rank = (emb @ prompt_text.T).argmax(-1)
            gts = [ground_truth_images(ObjectSpec(spec.category, spec.color, spec.second_color, EVAL_SEED_BASE + 97 * i + k), cams, 64) for k in seeds]
            gts2 = [ground_truth_images(ObjectSpec(spec.category, spec.color, spec.second_color, EVAL_SEED_BASE + 500_000 + 97 * i + k), cams, 64) for k in seeds]
            gt_emb = torch.nn.functional.normalize(ev.image_embeds(torch.cat(gts)).reshape(len(seeds), 4, -1).mean(1), dim=-1)
            gt_cats = ev.classify_embeds(gt_emb)
            sample_feats.append(feats)
            gt_feats.append(ev.features(torch.cat(gts)))
            gt2_feats.append(ev.features(torch.cat(gts2)))
        split = "held_out" if (spec.category, spec.color) in HELD_OUT else "seen"
        for k in seeds:
            rows.append({
                "split": split, "category_ok": cats["category"][k] == spec.category, "colour_ok": cats["color"][k] == spec.color,
                "rank_ok": int(rank[k]) == i, "dnc": float(dnc.reshape(len(seeds), 4)[k].mean()),
                "gt_category_ok": gt_cats["category"][k] == spec.category, "gt_colour_ok": gt_cats["color"][k] == spec.color,
            })
        if args.sheet:
            sheet.append(out.rgb[:, 0])
        print(f"[{i + 1}/{len(prompts)}] {prompt}: category {sum(c == spec.category for c in cats['category'])}/{len(seeds)}, "
              f"colour {sum(c == spec.color for c in cats['color'])}/{len(seeds)}", file=sys.stderr)

    gt_dnc = []
    times, render_times, render_all_times = [], [], []
    for prompt in prompts[: args.timing]:
        gen = generate(model, [prompt], [0], steps=args.steps, guidance=args.guidance)
        times.append(gen.seconds)
        with torch.no_grad():
            for g, out_list in ((visible(gen.gaussians), render_times), (gen.gaussians, render_all_times)):
                t0 = time.perf_counter()
                render(g, model_views(), 256)
                out_list.append(time.perf_counter() - t0)
    for i, spec in enumerate(specs[:8]):  # the same metric on ground-truth splats, for scale
        g = decode_splatter(splatter_maps(Scene.pack(build(ObjectSpec(spec.category, spec.color, spec.second_color, EVAL_SEED_BASE + i))), model_views(), 64)[None], model_views())
        with torch.no_grad():
            o = render(g, cams, 128)
        gt_dnc.append(float(depth_normal_consistency(o.depth[0], o.normal[0], o.alpha[0], cams).mean()))

    def rate(key, split=None):
        sel = [r[key] for r in rows if split is None or r["split"] == split]
        return round(sum(sel) / len(sel), 4) if sel else None

    unit = lambda f: torch.nn.functional.normalize(torch.cat(f), dim=-1)  # noqa: E731  (bounded kernel values)
    k_mean, k_std = kid(unit(sample_feats), unit(gt_feats))
    r_mean, r_std = kid(unit(gt2_feats), unit(gt_feats))
    result = {
        "guidance": args.guidance or model.guidance_default, "steps": args.steps, "prompts": len(prompts), "seeds": args.seeds, "assets": len(rows),
        "category_accuracy": rate("category_ok"), "colour_accuracy": rate("colour_ok"), "r_precision": rate("rank_ok"),
        "kid": round(k_mean, 5), "kid_std": round(k_std, 5), "kid_reference": round(r_mean, 5), "kid_reference_std": round(r_std, 5),
        "dnc": round(statistics.mean(r["dnc"] for r in rows), 4), "dnc_ground_truth": round(statistics.mean(gt_dnc), 4),
        "seconds_per_asset": round(statistics.median(times), 3), "render_seconds": round(statistics.median(render_times), 3),
        "render_seconds_all_gaussians": round(statistics.median(render_all_times), 3),
        "evaluator_on_ground_truth": {"category_accuracy": rate("gt_category_ok"), "colour_accuracy": rate("gt_colour_ok")},
    }
    for split in ("seen", "held_out"):
        if any(r["split"] == split for r in rows):
            result[split] = {"category_accuracy": rate("category_ok", split), "colour_accuracy": rate("colour_ok", split),
                             "assets": sum(r["split"] == split for r in rows)}
    if args.sheet:
        write_sheet(sheet, prompts, args.sheet)
    print(json.dumps(result))


def write_sheet(rows: list[torch.Tensor], prompts: list[str], path: str) -> None:
    """One row per prompt (its seeds left to right), the prompt written on the left."""
    from PIL import Image, ImageDraw

    tile = rows[0].shape[-1]
    label_w = 260
    sheet = Image.new("RGB", (label_w + tile * rows[0].shape[0], tile * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (imgs, prompt) in enumerate(zip(rows, prompts)):
        for c, img in enumerate(imgs):
            arr = (img.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype("uint8")
            sheet.paste(Image.fromarray(arr), (label_w + c * tile, r * tile))
        draw.text((6, r * tile + tile // 2 - 6), prompt, fill="black")
    sheet.save(path)


if __name__ == "__main__":
    main()
