"""python -m engine.align.theory [--world gaussian|mixture] [--methods M ...] [--beta B] [--steps N]

Trains each method on an analytic world through the shared Trainer and prints, per method, how far its
samples are from the target p* ∝ p_ref·exp(β r) over the optimiser steps (a pandas table), writes the rows,
a plotly figure and the summaries into --out, and ends with one JSON line per method.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from ..methods import METHODS
from .run import TheoryRun, TheorySetup, World
from .world import REWARDS, WORLDS


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine.align.theory",
                                description="Alignment methods on a world whose optimum is known: distance to p* over the steps.")
    p.add_argument("--world", choices=WORLDS, default="gaussian")
    p.add_argument("--dim", type=int, default=2, help="dimensions of the world (2 for pictures; e.g. 16-64 latent-like)")
    p.add_argument("--reward", choices=REWARDS, default="direction", help="direction: r = aᵀx (closed-form target); ring; corner")
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    p.add_argument("--beta", type=float, default=1.0, help="the target's strength: p* ∝ p_ref·exp(β r); Nabla-R2D3's β")
    p.add_argument("--steps", type=int, default=300, help="optimiser steps per method")
    p.add_argument("--every", type=int, default=25, help="measure every this many steps")
    p.add_argument("--sampler-steps", type=int, default=10, help="SDE-DPM-Solver++ steps (the 3D study uses 10; the paper 20)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-samples", type=int, default=4096, help="fresh samples per measurement (the same noise each time)")
    p.add_argument("--pool", type=int, default=100_000, help="base samples behind p_ref (and p* where it is resampled)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="method knobs (draft.kl=0.1, nabla.weighting=score) or run knobs (lr=1e-2); a group's knobs go to its method")
    p.add_argument("--out", help="folder for rows.csv, figure.html and summary.jsonl (default outputs/theory/<world>-<reward>-beta<β>)")
    return p


def figure(rows, world: World):
    """Distance to p* and variance ratio over the steps, per method; for a 2-D world the final clouds too."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    two_d = world.setup.dim == 2
    fig = make_subplots(rows=1, cols=3 if two_d else 2, horizontal_spacing=0.08,
                        subplot_titles=["mean error (target std)", "variance ratio", "final samples over p*"][: 3 if two_d else 2])
    for method, part in rows.groupby("method", sort=False):
        fig.add_trace(go.Scatter(x=part["step"], y=part["mean_error_std"], name=method, legendgroup=method), 1, 1)
        fig.add_trace(go.Scatter(x=part["step"], y=part["var_ratio"], name=method, legendgroup=method, showlegend=False), 1, 2)
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_xaxes(title_text="optimiser step", row=1, col=1)
    fig.update_xaxes(title_text="optimiser step", row=1, col=2)
    fig.update_layout(height=420, width=1250 if two_d else 850, margin=dict(l=50, r=20, t=40, b=50),
                      legend=dict(orientation="h", y=-0.18))
    return fig


def tail(errors: list[float]) -> dict:
    """Mean and standard deviation of the mean error over the last third of the measurements (at least two):
    where a run hovers, the band its final figure sits in."""
    last = errors[1:][-max(2, len(errors[1:]) // 3):]
    mean = sum(last) / len(last)
    sd = (sum((e - mean) ** 2 for e in last) / max(1, len(last) - 1)) ** 0.5
    return {"tail_mean_error_std": mean, "tail_sd": sd, "tail_measurements": len(last)}


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if min(args.steps, args.every, args.eval_samples - 1, args.pool - 1) < 1:
        print("error: --steps and --every must be >= 1, --eval-samples and --pool >= 2", file=sys.stderr)
        return 2
    setup = TheorySetup(world=args.world, dim=args.dim, reward=args.reward, beta=args.beta, sampler_steps=args.sampler_steps,
                        batch_size=args.batch_size, lr=args.lr, seed=args.seed, eval_samples=args.eval_samples,
                        overrides=list(args.set))
    try:
        for m in args.methods:  # every --set is checked before anything trains
            setup.run_config(m, args.steps)
        world = World(setup, pool=args.pool)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out or f"outputs/theory/{args.world}-{args.reward}-beta{args.beta:g}")
    out.mkdir(parents=True, exist_ok=True)
    rows, summaries, clouds = [], [], {}
    for m in args.methods:
        t0 = time.perf_counter()
        with TheoryRun(setup, m, world=world, steps=args.steps) as run:
            errors = []
            for row in run.steps(args.steps, every=args.every):
                rows.append({k: v for k, v in row.items() if k != "sample_mean"})
                errors.append(row["mean_error_std"])
                print(f"{m:>13} step {row['step']:4d}  mean error {row['mean_error_std']:.3f} std  var ratio {row['var_ratio']:.3f}  "
                      f"reward gap {row['reward_gap']:+.3f}", file=sys.stderr, flush=True)
            summaries.append(run.summary(row) | tail(errors) | {"seconds": round(time.perf_counter() - t0, 1)})
            clouds[m] = run.samples()[:600, :2]
    table = pd.DataFrame(rows)
    table.to_csv(out / "rows.csv", index=False)
    wide = table.pivot(index="step", columns="method", values="mean_error_std")[list(args.methods)]
    print("mean error in units of the target's std, by optimiser step:")
    print(wide.to_string(float_format=lambda v: f"{v:.3g}"))  # runaway methods reach 1e24: 3 significant digits
    fig = figure(table, world)
    if setup.dim == 2:
        import plotly.graph_objects as go

        t = world.target.samples[:2000]
        fig.add_trace(go.Histogram2dContour(x=t[:, 0], y=t[:, 1], colorscale="Greys", showscale=False, ncontours=8,
                                            contours=dict(coloring="lines"), name="p*", showlegend=False), 1, 3)
        for m, c in clouds.items():
            fig.add_trace(go.Scatter(x=c[:, 0], y=c[:, 1], mode="markers", marker=dict(size=3, opacity=0.5), name=m,
                                     legendgroup=m, showlegend=False), 1, 3)
    fig.write_html(out / "figure.html", include_plotlyjs="cdn")
    with (out / "summary.jsonl").open("w") as f:
        for s in summaries:
            f.write(json.dumps(s) + "\n")
    print(f"rows, figure and summaries in {out}", file=sys.stderr)
    for s in summaries:
        print(json.dumps(s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
