"""Can a batch gradient of the geometry reward be trusted, and how far? Per reward-rig setting (render
resolution, views), on the shipped base with a fresh LoRA:

1. the LoRA gradient of the batch's mean reward through the last sampler step (DRaFT-1's, which Nabla-R2D3's
   early steps follow) for ``--batches`` independent batches (other prompts and noise): their pairwise
   cosines say whether two batches agree on a direction;
2. a line search along the averaged gradient: the LoRA moved by step norms ``--norms`` and the held-out
   geometry measured paired against the base (same prompts, seeds and noise; engine.align.evaluate), each
   change with its standard error over prompts. For scale: the norm of one Adam step at learning rate lr is
   about lr x sqrt(parameters that have a gradient) (Adam's first step moves each weight by about lr).

    python bench/geometry_gradient.py                                   # 64 and 128 px, 4 views
    python bench/geometry_gradient.py --resolutions 128 --views 8 --batches 6 --norms 0.003 0.01 0.03 0.1

One JSON line per setting. The numbers depend only on the seed and the thread count.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from engine.align import RunConfig, Trainer  # noqa: E402
from engine.align.evaluate import EvalSettings, RunEvaluator, paired_change  # noqa: E402
from engine.prompts import EVAL_PROMPTS, read_prompts  # noqa: E402


def batch_gradient(trainer: Trainer, step: int) -> torch.Tensor:
    """The flat LoRA gradient of the batch's mean reward (ascent direction) for the batch of ``step``."""
    rollout = trainer.rollout(step, keep_graphs=True)
    for p in trainer.params.values():
        p.grad = None
    losses = [loss for loss, _ in trainer.method.losses(rollout, step)]
    torch.stack(losses).sum().backward()
    return -torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in trainer.params.values()])


def line_search(trainer: Trainer, direction: torch.Tensor, norms: list[float], evaluator: RunEvaluator) -> list[dict]:
    """Held-out geometry change from the base with the LoRA moved by each norm along ``direction`` (unit)."""
    params = list(trainer.params.values())
    start = [p.detach().clone() for p in params]
    base = evaluator.base.rewards["geometry"].reshape(len(evaluator.settings.prompts), -1)
    rows = []
    try:
        for norm in norms:
            offset = 0
            with torch.no_grad():
                for p, p0 in zip(params, start):
                    p.copy_(p0 + norm * direction[offset:offset + p.numel()].view_as(p))
                    offset += p.numel()
            evaluator.evaluate()
            now = evaluator.last.rewards["geometry"].reshape(base.shape)
            change, se = paired_change(now, base)
            rows.append({"norm": norm, "change": round(change, 5), "se": round(se, 5)})
    finally:
        with torch.no_grad():
            for p, p0 in zip(params, start):
                p.copy_(p0)
    return rows


def measure(resolution: int, views: int, args) -> dict:
    cfg = RunConfig(method="draft", reward="geometry", steps=1, seed=args.seed, sample_every=0, checkpoint_every=0).apply_overrides(
        [f"batch_size={args.batch_size}", f"sampler_steps={args.sampler_steps}", f"render_resolution={resolution}",
         f"reward_views={views}", "draft.k=1"])
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp) / "run")
        grads = [batch_gradient(trainer, b) for b in range(args.batches)]
        cosines = [float(torch.nn.functional.cosine_similarity(a, b, dim=0)) for a, b in itertools.combinations(grads, 2)]
        mean = torch.stack(grads).mean(0)
        live = int((torch.stack(grads) != 0).any(0).sum())  # weights with a gradient (B only, at a fresh LoRA)
        settings = EvalSettings(prompts=read_prompts(None, EVAL_PROMPTS)[:args.eval_prompts], seeds=[0, 1],
                                steps=cfg.sampler_steps, rewards=("geometry",))
        evaluator = RunEvaluator(trainer.model, settings)
        search = line_search(trainer, mean / mean.norm(), args.norms, evaluator)
    return {"resolution": resolution, "views": views, "batch_size": args.batch_size, "batches": args.batches,
            "cosine_mean": round(sum(cosines) / len(cosines), 3), "cosine_min": round(min(cosines), 3),
            "cosine_max": round(max(cosines), 3), "grad_norm_mean": round(float(torch.stack([g.norm() for g in grads]).mean()), 4),
            "mean_grad_norm": round(float(mean.norm()), 4), "weights_with_gradient": live,
            "adam_step_norm_at_lr_3e-4": round(3e-4 * math.sqrt(live), 4), "line_search": search,
            "eval_assets": len(settings.prompts) * 2, "seconds": round(time.perf_counter() - t0, 1)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resolutions", type=int, nargs="+", default=[64, 128])
    p.add_argument("--views", type=int, nargs="+", default=[4], help="reward views per rig setting")
    p.add_argument("--batches", type=int, default=4, help="independent batches whose gradients are compared (>= 2)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--sampler-steps", type=int, default=10)
    p.add_argument("--norms", type=float, nargs="+", default=[0.003, 0.01, 0.03, 0.1])
    p.add_argument("--eval-prompts", type=int, default=8, help="held-out prompts of the line search (x 2 seeds)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if args.batches < 2:
        p.error("--batches must be >= 2: a cosine needs two gradients")
    torch.set_num_threads(args.threads)
    for resolution in args.resolutions:
        for views in args.views:
            print(json.dumps(measure(resolution, views, args)), flush=True)


if __name__ == "__main__":
    main()
