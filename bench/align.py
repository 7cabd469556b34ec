"""Alignment benchmarks on this machine: what one optimiser step of every method costs, and how fast a
live Nabla-R2D3 run gains.

    python bench/align.py                       # every method, default settings, shipped tiny model
    python bench/align.py --methods nabla-r2d3 refl --steps 3 --reward geometry
    python bench/align.py --live 30 --checkpoints 3,10,30   # held-out reward vs wall time (minutes)

Step costs: one JSON line per method (each in a fresh process, so peak memory is its own): median
seconds per optimiser step after a warm-up step, the split (sampling / denoiser passes / decode + render
/ reward), denoiser forward and backward passes per trajectory (a CFG pair counts as two), peak RSS,
and the step's cost as a ratio to sampling the same trajectories. Live: one run, its held-out reward
(fixed prompts and seeds, outside the training steps) measured at the given minutes of training time;
the evaluation's own time is not counted.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.align import METHODS, RunConfig, Trainer  # noqa: E402
from engine.models.base import SplatDiffusionModel  # noqa: E402


class Clock:
    """Wall time and rows per part of a step, gathered by wrapping the model's and reward's calls."""

    def __init__(self):
        self.seconds = {"denoiser": 0.0, "render": 0.0, "reward": 0.0}
        self.forward_rows = self.backward_rows = 0
        self._depth = 0

    def wrap(self, owner, name: str, part: str, count_rows: bool = False):
        original = getattr(owner, name)
        clock = self

        def timed(*args, **kwargs):
            clock._depth += 1
            t0 = time.perf_counter()
            try:
                out = original(*args, **kwargs)
            finally:
                clock._depth -= 1
            if clock._depth == 0:
                clock.seconds[part] += time.perf_counter() - t0
            if count_rows:
                rows = args[1].shape[0] if isinstance(owner, type) else args[0].shape[0]
                clock.forward_rows += rows
                if torch.is_grad_enabled() and out.requires_grad:
                    clock.backward_rows += rows
            return out

        setattr(owner, name, timed)


def one_method(method: str, steps: int, overrides: list[str]) -> dict:
    cfg = RunConfig(method=method, steps=steps + 1, sample_every=0, checkpoint_every=0).apply_overrides(overrides)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp) / "run")
        clock = Clock()
        clock.wrap(SplatDiffusionModel, "eps", "denoiser", count_rows=True)
        clock.wrap(trainer.path, "render", "render")
        clock.wrap(trainer.path, "score", "reward")
        rows, splits = [], []
        for i, m in enumerate(trainer.run()):
            if i == 0:  # warm-up (first renders build the native core, caches fill)
                clock.__init__()
                continue
            rows.append(m)
            splits.append(dict(clock.seconds, fwd=clock.forward_rows, bwd=clock.backward_rows))
            clock.__init__()
    step = statistics.median(r["sample_seconds"] + r["update_seconds"] for r in rows)
    sample = statistics.median(r["sample_seconds"] for r in rows)
    med = lambda k: statistics.median(s[k] for s in splits)  # noqa: E731
    per_traj = cfg.batch_size
    return {
        "method": method, "reward": cfg.reward, "batch": cfg.batch_size, "sampler_steps": cfg.sampler_steps,
        "step_s": round(step, 3), "sampling_s": round(sample, 3), "denoiser_s": round(med("denoiser"), 3),
        "render_s": round(med("render"), 3), "reward_s": round(med("reward"), 3),
        "denoiser_fwd_per_traj": med("fwd") / per_traj, "denoiser_bwd_per_traj": med("bwd") / per_traj,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "step_over_sampling": round(step / sample, 2), "threads": torch.get_num_threads(),
    }


def live(minutes: float, checkpoints: list[float], overrides: list[str], held_out: int) -> dict:
    cfg = RunConfig(method="nabla-r2d3", steps=10**6, sample_every=0, checkpoint_every=0).apply_overrides(overrides)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp) / "run")

        def held_out_reward():  # fixed prompts and noise, never trained on (steps far beyond the run)
            return sum(trainer.rollout(10**8 + i).rewards.mean().item() for i in range(held_out)) / held_out

        curve = [{"minutes": 0.0, "step": 0, "held_out_reward": held_out_reward()}]
        marks = sorted(checkpoints + [minutes])
        for m in trainer.run():
            done = m["wall_seconds"] / 60
            while marks and done >= marks[0]:
                marks.pop(0)
                curve.append({"minutes": round(done, 2), "step": m["step"], "held_out_reward": held_out_reward(),
                              "train_reward": m["reward_mean"]})
                print(json.dumps(curve[-1]), flush=True)
            if not marks:
                trainer.request_stop()
    gain = lambda c: c["held_out_reward"] - curve[0]["held_out_reward"]  # noqa: E731
    return {"curve": curve, "gains": {str(c["minutes"]): gain(c) for c in curve[1:]},
            "first_over_last": gain(curve[1]) / gain(curve[-1]) if gain(curve[-1]) else None, "config": overrides}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="*", default=list(METHODS))
    p.add_argument("--steps", type=int, default=3, help="timed steps per method (after one warm-up step)")
    p.add_argument("--set", nargs="*", default=[], help="config overrides, e.g. reward=geometry nabla.beta=1e6")
    p.add_argument("--live", type=float, help="minutes of a live Nabla-R2D3 run")
    p.add_argument("--checkpoints", default="3", help="minutes at which the live run's held-out reward is measured")
    p.add_argument("--held-out", type=int, default=3, help="held-out batches (of batch_size prompts) per measurement")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.live:
        marks = [float(x) for x in args.checkpoints.split(",") if x]
        print(json.dumps(live(args.live, marks, args.set, args.held_out)))
        return
    if args.one:
        print(json.dumps(one_method(args.one, args.steps, args.set)))
        return
    for method in args.methods:  # a fresh process each: its own peak memory, no state carried over
        out = subprocess.run([sys.executable, __file__, "--one", method, "--steps", str(args.steps), "--set", *args.set],
                             capture_output=True, text=True)
        line = out.stdout.strip().splitlines()[-1] if out.returncode == 0 else json.dumps({"method": method, "error": out.stderr[-400:]})
        print(line, flush=True)


if __name__ == "__main__":
    main()
