"""Evaluates embedded base models on a prompt file; prints one JSON object.

    python bench/eval_base.py --prompts assets/prompts/eval_held_out.txt --seeds 4 [--sheet sheet.png]
    python bench/eval_base.py --prompts P.txt --checkpoint A --checkpoint B     # side by side, one judge

For every prompt and seed it samples an asset (20 steps, CFG), renders it from 4 views that are not the
model's own (azimuth 45/135/225/315, elevation 15) and asks the evaluator for the category and main
colour. The same prompts are also built as ground-truth objects of the procedural world (seeds the
training never used): for KID, for diversity, and as a check of the evaluator itself. With several
``--checkpoint`` folders every model is judged by the same evaluator (``--evaluator``; default: the
first checkpoint's ``evaluator/`` if it has one, else the shipped one); the figures of each model
are listed under "models", in the order given.

Keys per model: category_accuracy, colour_accuracy, r_precision (own prompt ranked first among the
file's prompts), kid (samples vs ground truth, evaluator features), dnc (depth-normal consistency of
sample renders), diversity (mean pairwise distance of the unit evaluator features of one view across the
seeds of a prompt) with diversity_ratio (diversity / the ground truth's), autoencoder_psnr and
autoencoder_dnc (renders of autoencoded ground-truth splatter images vs renders of the ground-truth
splats, and their DNC: the autoencoder alone, no diffusion), seconds_per_asset (prompt -> Gaussians, batch 1, median), render_seconds (4 views at 256
px of the visible Gaussians, as the studio renders them; render_seconds_all_gaussians: all 16,384),
plus per-split figures ("seen" / "held_out" category-colour pairs). Shared ground-truth keys:
kid_reference (two independent ground-truth draws: the floor), dnc_ground_truth, diversity_ground_truth,
evaluator_on_ground_truth.
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

from engine.core.cameras import evaluation_views  # noqa: E402
from engine.core.io import atomic_save  # noqa: E402
from engine.data.primitives import Scene  # noqa: E402
from engine.data.raycast import raycast_views, splatter_maps  # noqa: E402
from engine.data.world import HELD_OUT, ObjectSpec, build, parse  # noqa: E402
from engine.evaluator import DEFAULT_EVALUATOR, load_evaluator  # noqa: E402
from engine.generate import generate, load_model, model_views, visible  # noqa: E402
from engine.metrics import depth_normal_consistency, diversity, kid  # noqa: E402
from engine.preview import normal_colors  # noqa: E402
from engine.render import render  # noqa: E402
from engine.splatter import decode_splatter  # noqa: E402

EVAL_SEED_BASE = 2_000_000
REFERENCE_OBJECTS = 8  # ground-truth splats for the DNC and autoencoder figures


def ground_truth_images(spec: ObjectSpec, cams, res: int) -> torch.Tensor:
    return raycast_views(Scene.pack(build(spec)), cams, res, supersample=2)["rgb"]


def gt_spec(spec: ObjectSpec, seed: int) -> ObjectSpec:
    return ObjectSpec(spec.category, spec.color, spec.second_color, seed)


def unit(feats: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(feats, dim=-1)


def mean_dnc(outs, cams) -> float:
    """Mean depth-normal consistency of single-asset renders."""
    return statistics.mean(float(depth_normal_consistency(o.depth[0], o.normal[0], o.alpha[0], cams).mean()) for o in outs)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / (a - b).pow(2).mean().clamp_min(1e-10)))


class GroundTruth:
    """Ground-truth objects of the prompts, judged once and shared by every model evaluated."""

    def __init__(self, prompts: list[str], specs: list[ObjectSpec], ev, cams, seeds: int):
        self.specs, self.cams, self.seeds = specs, cams, seeds
        feats, feats2, self.category_ok, self.colour_ok = [], [], [], []
        with torch.no_grad():
            for i, spec in enumerate(specs):
                gts = torch.cat([ground_truth_images(gt_spec(spec, EVAL_SEED_BASE + 97 * i + k), cams, 64) for k in range(seeds)])
                gts2 = torch.cat([ground_truth_images(gt_spec(spec, EVAL_SEED_BASE + 500_000 + 97 * i + k), cams, 64) for k in range(seeds)])
                feats.append(ev.features(gts).reshape(seeds, len(cams), -1))
                feats2.append(ev.features(gts2).reshape(seeds, len(cams), -1))
                cats = ev.classify_embeds(ev.asset_embeds(gts.reshape(seeds, len(cams), *gts.shape[1:])))
                self.category_ok += [c == spec.category for c in cats["category"]]
                self.colour_ok += [c == spec.color for c in cats["color"]]
            self.feats, self.feats2 = torch.stack(feats), torch.stack(feats2)  # [P, S, V, C]
            # Ground-truth splatter images of a few objects: the DNC floor and the autoencoder's input.
            self.maps = torch.stack([splatter_maps(Scene.pack(build(gt_spec(s, EVAL_SEED_BASE + i))), model_views(), 64)
                                     for i, s in enumerate(specs[:REFERENCE_OBJECTS])])
            self.renders = [render(decode_splatter(m[None], model_views()), cams, 128) for m in self.maps]
        self.dnc = mean_dnc(self.renders, cams)
        self.diversity = diversity(self.feats)
        self.kid_reference = kid(unit(self.feats2.flatten(0, 2)), unit(self.feats.flatten(0, 2)))

    def summary(self) -> dict:
        n = len(self.category_ok)
        return {
            "kid_reference": round(self.kid_reference[0], 5), "kid_reference_std": round(self.kid_reference[1], 5),
            "dnc_ground_truth": round(self.dnc, 4), "diversity_ground_truth": round(self.diversity, 4),
            "evaluator_on_ground_truth": {"category_accuracy": round(sum(self.category_ok) / n, 4),
                                          "colour_accuracy": round(sum(self.colour_ok) / n, 4)},
        }


def autoencoder_figures(model, gt: GroundTruth) -> tuple[float, float]:
    """The autoencoder alone on ground-truth splatter images: mean PSNR of the renders of its reconstructions
    against renders of the originals, and their depth-normal consistency (what the decoder caps DNC at)."""
    ae, cams = model.autoencoder, gt.cams
    with torch.no_grad():
        maps = ae.decode(ae.encode(gt.maps.flatten(0, 1))[0]).reshape(gt.maps.shape)
        outs = [render(decode_splatter(m[None], model_views()), cams, 128) for m in maps]
    return (statistics.mean(psnr(o.rgb, ref.rgb) for o, ref in zip(outs, gt.renders)),
            mean_dnc(outs, cams))


def evaluate(model, prompts, specs, ev, gt: GroundTruth, *, steps: int, guidance: float | None, timing: int, sheet=None) -> dict:
    cams, seeds = gt.cams, list(range(gt.seeds))
    prompt_text = ev.encode_text(prompts)
    rows, feats = [], []
    for i, (prompt, spec) in enumerate(zip(prompts, specs)):
        gen = generate(model, [prompt] * len(seeds), seeds, steps=steps, guidance=guidance)
        with torch.no_grad():
            out = render(gen.gaussians, cams, 128)
            imgs = torch.nn.functional.interpolate(out.rgb.flatten(0, 1), size=64, mode="bilinear", antialias=True)
            dnc = depth_normal_consistency(out.depth.flatten(0, 1), out.normal.flatten(0, 1), out.alpha.flatten(0, 1),
                                           cams.__class__(cams.c2w.repeat(len(seeds), 1, 1), cams.intrinsics.repeat(len(seeds), 1)))
            feats.append(ev.features(imgs).reshape(len(seeds), len(cams), -1))
            emb = ev.asset_embeds(imgs.reshape(len(seeds), len(cams), *imgs.shape[1:]))
            cats = ev.classify_embeds(emb)
            rank = (emb @ prompt_text.T).argmax(-1)
        split = "held_out" if (spec.category, spec.color) in HELD_OUT else "seen"
        for k in seeds:
            rows.append({"split": split, "category_ok": cats["category"][k] == spec.category, "colour_ok": cats["color"][k] == spec.color,
                         "rank_ok": int(rank[k]) == i, "dnc": float(dnc.reshape(len(seeds), 4)[k].mean())})
        if sheet is not None:
            sheet.append(torch.cat([out.rgb[:, 0], normal_colors(out.normal[:, 0], out.alpha[:, 0])], dim=-1))
        print(f"[{i + 1}/{len(prompts)}] {prompt}: category {sum(c == spec.category for c in cats['category'])}/{len(seeds)}, "
              f"colour {sum(c == spec.color for c in cats['color'])}/{len(seeds)}", file=sys.stderr)

    times, render_times, render_all_times = [], [], []
    for prompt in prompts[:timing]:
        gen = generate(model, [prompt], [0], steps=steps, guidance=guidance)
        times.append(gen.seconds)
        with torch.no_grad():
            for g, out_list in ((visible(gen.gaussians), render_times), (gen.gaussians, render_all_times)):
                t0 = time.perf_counter()
                render(g, model_views(), 256)
                out_list.append(time.perf_counter() - t0)

    def rate(key, split=None):
        sel = [r[key] for r in rows if split is None or r["split"] == split]
        return round(sum(sel) / len(sel), 4) if sel else None

    feats = torch.stack(feats)
    k_mean, k_std = kid(unit(feats.flatten(0, 2)), unit(gt.feats.flatten(0, 2)))
    div = diversity(feats)
    ae_psnr, ae_dnc = autoencoder_figures(model, gt)
    result = {
        "guidance": guidance or model.guidance_default, "steps": steps, "prompts": len(prompts), "seeds": len(seeds), "assets": len(rows),
        "category_accuracy": rate("category_ok"), "colour_accuracy": rate("colour_ok"), "r_precision": rate("rank_ok"),
        "kid": round(k_mean, 5), "kid_std": round(k_std, 5), "dnc": round(statistics.mean(r["dnc"] for r in rows), 4),
        "diversity": round(div, 4), "diversity_ratio": round(div / gt.diversity, 3),
        "autoencoder_psnr": round(ae_psnr, 2), "autoencoder_dnc": round(ae_dnc, 4),
        "seconds_per_asset": round(statistics.median(times), 3) if times else None,
        "render_seconds": round(statistics.median(render_times), 3) if times else None,
        "render_seconds_all_gaussians": round(statistics.median(render_all_times), 3) if times else None,
    }
    for split in ("seen", "held_out"):
        if any(r["split"] == split for r in rows):
            result[split] = {"category_accuracy": rate("category_ok", split), "colour_accuracy": rate("colour_ok", split),
                             "assets": sum(r["split"] == split for r in rows)}
    return result


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", required=True, help="text file, one prompt per line")
    p.add_argument("--seeds", type=int, default=4, help="seeds per prompt (at least 2, for diversity)")
    p.add_argument("--checkpoint", action="append", help="tiny-base folder (default: the shipped one); repeat to compare models")
    p.add_argument("--evaluator", help="evaluator folder judging every model (default: the first checkpoint's, else the shipped one)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=None, help="CFG scale (default: each model's own)")
    p.add_argument("--timing", type=int, default=8, help="prompts timed at batch 1")
    p.add_argument("--sheet", help="write a contact sheet PNG (one row per prompt, per seed its colours and normals); with several "
                                   "checkpoints, one sheet each, numbered")
    args = p.parse_args(argv)
    if args.seeds < 2:
        raise SystemExit(f"--seeds {args.seeds}: diversity compares seeds of a prompt, so give at least 2.")
    torch.set_num_threads(os.cpu_count() or 1)

    prompts = [line.strip() for line in open(args.prompts) if line.strip()]
    specs = [parse(pr) for pr in prompts]
    if any(s is None for s in specs):
        bad = [pr for pr, s in zip(prompts, specs) if s is None]
        raise SystemExit(f"These prompts are outside the world's grammar: {bad}")
    checkpoints = args.checkpoint or [None]
    evaluator = args.evaluator
    if evaluator is None:
        first = Path(checkpoints[0]) / "evaluator" if checkpoints[0] else None
        evaluator = first if first is not None and (first / "config.json").exists() else DEFAULT_EVALUATOR
    ev = load_evaluator(evaluator)
    gt = GroundTruth(prompts, specs, ev, evaluation_views(), args.seeds)

    runs = []
    for n, ckpt in enumerate(checkpoints):
        sheet = [] if args.sheet else None
        runs.append({"checkpoint": ckpt or "shipped"} | evaluate(load_model("tiny", ckpt), prompts, specs, ev, gt, steps=args.steps,
                                                                 guidance=args.guidance, timing=args.timing, sheet=sheet))
        if args.sheet:
            path = args.sheet if len(checkpoints) == 1 else str(Path(args.sheet).with_suffix(f".{n}.png"))
            write_sheet(sheet, prompts, path)
    shared = gt.summary() | {"evaluator": str(evaluator)}
    print(json.dumps(runs[0] | shared if len(runs) == 1 else shared | {"models": runs}))


def write_sheet(rows: list[torch.Tensor], prompts: list[str], path: str) -> None:
    """One row per prompt (its seeds left to right, each as colours | normals), the prompt written on the left."""
    from PIL import Image, ImageDraw

    h, w = rows[0].shape[-2:]
    label_w = 260
    sheet = Image.new("RGB", (label_w + w * rows[0].shape[0], h * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (imgs, prompt) in enumerate(zip(rows, prompts)):
        for c, img in enumerate(imgs):
            arr = (img.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype("uint8")
            sheet.paste(Image.fromarray(arr), (label_w + c * w, r * h))
        draw.text((6, r * h + h // 2 - 6), prompt, fill="black")
    atomic_save(path, sheet.save)


if __name__ == "__main__":
    main()
