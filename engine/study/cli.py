"""Every method (``engine.align.methods.METHODS``, or the listed ones) trains with the same base (the
engine's default, ``checkpoints/tiny-base``), the same training prompts (``assets/prompts/train.txt``),
the same reward rig and the same budget: ``--steps`` optimiser steps and, with ``--minutes``, at most that
much training wall time per run (whichever comes first; evaluation time is not counted). Runs go
through the engine's own trainer (``engine.align.trainer.Trainer``) into ordinary run folders
``DIR/runs/<method>/seed<k>/``; the trainer evaluates the base and the run on the held-out prompts every
``eval_every`` steps and at the end (``engine.align.evaluate.RunEvaluator``). Every image the training
reward scores is counted (``DIR/runs/<method>/seed<k>.rewards.csv``). The base's held-out scores are sampled
once and shared by every run (``DIR/base_eval/``, keyed by everything they depend on). Knobs the study does
not set are the engine's defaults (Nabla-R2D3's β: 3e7 per unit of the reward's usual range).

``--sweep``: fair tuning (engine.study.sweep). Every method gets the same sweep (seed ``--sweep-seed``,
``--sweep-steps`` steps per trial): learning rates 3e-4, 1e-3, 3e-3 at its default knobs, then at the picked one the
values of the knob its config declares a sweep grid for (``engine.align.knobs``); a grid whose best is at an end is
extended. Trials are scored by a paired held-out evaluation on fresh noise, each with its difference from the best
and its standard error; ties (within 2 SE) are flagged. The picked setting then runs with every seed.

``--fronts``: every run's adapter again at LoRA scales 0.25, 0.5, 0.75 and 1 with four forgetting measures
(engine.study.fronts): ``DIR/fronts.csv`` and a front figure.

Writes ``DIR/summary.csv`` (one row per method), ``DIR/report.md`` (the table, the paper's three claims
checked against the numbers) and plotly figures (``DIR/figures/*.html``; PNG too when kaleido is
installed). Randomness depends only on the seeds: the same command on the same ``--threads`` gives the
same numbers (wall-clock seconds aside, and the steps reached when ``--minutes`` stops a run).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from ..align.config import RunConfig
from ..align.methods import METHODS
from .fronts import evaluate_fronts, front_table
from .plan import VARIANTS, NothingToSummarise, Plan, UsageError, prepare_out
from .report import figures, samples_sheet, write_report
from .runs import train_run
from .summary import summarise
from .sweep import read_sweep, run_sweep

USAGE = """The comparison of issue 14: every alignment method on one reward, one protocol.

    python -m engine.study --reward geometry --methods all --seeds 2 --steps 40 --out outputs/cmp/geometry
    python -m engine.study --reward colorfulness --methods refl,nabla-r2d3 --seeds 3 --minutes 10 --sweep --out DIR
    python -m engine.study ... --resume          # the same command again: finished runs are skipped
    python -m engine.study ... --report-only     # the same command again: only the report is rewritten
"""


def parser(prog: str = "python -m engine.study", usage: str = USAGE) -> argparse.ArgumentParser:
    """The study's command line (``python -m engine.study`` and ``bench/compare_methods.py``): ``usage``, then
    the protocol (this module's docstring), then the arguments."""
    p = argparse.ArgumentParser(prog=prog, description=f"{usage.rstrip()}\n\n{__doc__}",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(prog=prog)  # the report echoes the command
    p.add_argument("--reward", required=True, help="a reward or ensemble spec, e.g. geometry or 'alignment:1,geometry:0.5'")
    p.add_argument("--methods", default="all", help=f"all, or a comma list of: {', '.join([*METHODS, *VARIANTS])} "
                   "(draft-1: DRaFT with K pinned to 1, beside DRaFT-K)")
    p.add_argument("--seeds", type=int, default=2, help="seeds 0..N-1 per method (default 2)")
    p.add_argument("--steps", type=int, default=RunConfig().steps, help="optimiser steps per run (default %(default)s)")
    p.add_argument("--minutes", type=float, help="also stop a run after this much training wall time")
    p.add_argument("--sweep", action="store_true", help="tune every method with the same small sweep first")
    p.add_argument("--sweep-steps", type=int, help="steps of each sweep run (default: max(2, steps // 4))")
    p.add_argument("--sweep-lrs", help="the learning rates the sweep starts from, a comma list of values on its ladder "
                   "(default 3e-4,1e-3,3e-3; geometry's trustworthy steps are smaller: 3e-5,1e-4,3e-4)")
    p.add_argument("--sweep-seed", type=int, default=1000, help="the sweep runs' seed (default 1000: none of the final seeds)")
    p.add_argument("--fronts", action="store_true",
                   help="also each run's Pareto points: its adapter at LoRA scales 0.25-1 against four forgetting measures "
                        "(fronts.csv, figures/front.html)")
    p.add_argument("--out", required=True, type=Path, help="the comparison folder")
    p.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                   help="any RunConfig field for every run, e.g. batch_size=2 eval_seeds=2 nabla.reg=0")
    p.add_argument("--reward-weights", nargs="*", action="extend", default=[], metavar="NAME=PATH",
                   help="local weights of real rewards (hpsv2=..., also scored by the evaluation)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (numbers are reproducible per thread count)")
    p.add_argument("--resume", action="store_true", help="continue the comparison in --out: finished runs are skipped")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite the summary, report, figures and samples sheet of the comparison in --out from its "
                        "finished runs (the same command as made it); trains nothing")
    p.add_argument("--plotlyjs", choices=("directory", "inline", "cdn"), default="directory",
                   help="how the HTML figures get plotly.js: one plotly.min.js beside them (default, opens offline), inside "
                        "each file, or from the CDN (small files, needs internet to view)")
    return p


def tune_and_train(plan: Plan) -> tuple[dict, list[dict]]:
    """The sweep (with --sweep), then every method's runs at its pick; returns the picks and the sweep's trials."""
    chosen, sweep_rows = run_sweep(plan) if plan.args.sweep else ({}, [])
    for m in plan.methods:
        extra = chosen[m]["overrides"] if m in chosen else []
        for seed in plan.seeds:
            train_run(plan.config(m, seed, extra), plan.args.out / "runs" / m / f"seed{seed}", plan.budget, f"{m} seed{seed}",
                      eval_cache=plan.args.out / "base_eval")
    return chosen, sweep_rows


def run(args) -> pd.DataFrame:
    """The whole study for parsed arguments: plan, (sweep and) runs, summary.csv, figures, samples sheet, report."""
    torch.set_num_threads(args.threads)
    plan = Plan(args)
    prepare_out(plan)
    t0 = time.perf_counter()
    if args.report_only:
        chosen, sweep_rows = read_sweep(args.out) if args.sweep else ({}, [])
    else:
        chosen, sweep_rows = tune_and_train(plan)
    if args.fronts and not args.report_only:
        evaluate_fronts(plan)
    fronts = front_table(plan) if args.fronts else None
    table, info = summarise(plan, chosen)
    table.to_csv(args.out / "summary.csv", index=False)
    if fronts is not None:
        fronts.to_csv(args.out / "fronts.csv", index=False)
    figs, png = figures(plan, info, fronts)
    sheet = samples_sheet(plan)
    report = write_report(plan, table, info, chosen, figs, png, sweep_rows, sheet, fronts)
    shown = table[["method", "n_seeds", "steps", "final_reward_mean", "final_reward_std", "delta_reward_mean",
                   "steps_to_best_baseline", "alignment_delta_mean", "kid_vs_base_mean", "diversity_delta_mean"]]
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"wrote {args.out / 'summary.csv'}, {report}, {len(figs)} figures in {time.perf_counter() - t0:.0f} s")
    return table


def main(argv=None, *, prog: str = "python -m engine.study", usage: str = USAGE) -> None:
    """Parses ``argv`` and runs the study; a bad argument exits with status 2, a study with no finished run with 1."""
    p = parser(prog, usage)
    args = p.parse_args(argv)
    try:
        run(args)
    except UsageError as err:
        p.exit(2, f"error: {err}\n")
    except NothingToSummarise as err:
        p.exit(1, f"error: {err}\n")
