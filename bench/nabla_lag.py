"""Nabla-R2D3 on-policy (the default) vs ``lag`` (the reference code's one-round lag, where the λ trust region acts):
the measurement behind the default.

    python bench/nabla_lag.py                       # 3 seeds x both settings, then the table (resumable)
    python bench/nabla_lag.py --out DIR --seeds 2 --steps 30 --set lr=1e-3

Each setting trains Nabla-R2D3 on alignment with the same seeds (``--set`` for the rest: by default batch 4, 10
sampler steps, 64 px, lr 1e-3, λ at its default 1e3), then evaluates its final adapter on the held-out prompts x 2
seeds. Printed per reward: each run's change from the base (± 1.96 paired SE over prompts), and the difference
lag − on-policy per (training seed, prompt) cell, on the same prompts, evaluation seeds and noise (the base
cancels), with its bootstrap interval over prompts x training seeds (engine.study.stats) and its verdict.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.study import stats  # noqa: E402

SETTINGS = ["batch_size=4", "sampler_steps=10", "render_resolution=64", "lr=1e-3"]
METRICS = ("reward/alignment", "reward/geometry", "reward/colorfulness", "category_ok")


def run_folder(out: Path, seed: int, lag: bool) -> Path:
    return out / f"seed{seed}_lag{str(lag).lower()}"


def train(out: Path, seed: int, lag: bool, steps: int, settings: list[str], threads: int) -> None:
    folder = run_folder(out, seed, lag)
    if (folder / "eval_assets.csv").exists():
        return
    cmd = [sys.executable, "-m", "engine.align", "--method", "nabla-r2d3", "--reward", "alignment", "--steps", str(steps),
           "--out", str(folder), "--quiet", *(["--resume"] if (folder / "checkpoint").exists() else []),
           "--set", f"seed={seed}", f"nabla.lag={str(lag).lower()}", "eval_at_end=true", "eval_seeds=2", *settings]
    print(" ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": str(threads)})


def table(out: Path, seeds: list[int]) -> None:
    for metric in METRICS:
        if metric.startswith("reward/"):
            for lag in (False, True):
                rows = [pd.read_csv(run_folder(out, s, lag) / "eval.csv").iloc[-1] for s in seeds]
                per_seed = ", ".join(f"{r[f'delta/{metric}']:+.4f} ± {1.96 * r[f'delta_se/{metric}']:.4f}" for r in rows)
                print(f"| {metric} | {'lag' if lag else 'on-policy'} | change vs base per seed: {per_seed} |")
        # the on-policy run plays the base: each cell is lag − on-policy on the same prompts, seeds and noise
        runs = [stats.paired_assets(*(pd.read_csv(run_folder(out, s, lag) / "eval_assets.csv")[["prompt", "seed", metric]]
                                      for lag in (True, False))) for s in seeds]
        mean, lo, hi = stats.interval(stats.cell_deltas(runs, metric))
        print(f"| {metric} | lag − on-policy | {mean:+.4f} [{lo:+.4f}, {hi:+.4f}]: 'lag does better' {stats.verdict(lo, hi)} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "nabla-lag")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", nargs="*", default=SETTINGS, help=f"run settings (default: {' '.join(SETTINGS)})")
    args = p.parse_args()
    seeds = list(range(args.seeds))
    for seed in seeds:
        for lag in (False, True):
            train(args.out, seed, lag, args.steps, args.set, args.threads)
    table(args.out, seeds)


if __name__ == "__main__":
    main()
