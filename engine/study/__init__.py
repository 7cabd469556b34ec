"""The method comparison of issue 14 as a library: every alignment method on one reward, one protocol.

    python -m engine.study --reward geometry --methods all --seeds 2 --steps 40 --out outputs/cmp/geometry
    python bench/compare_methods.py ...        # the same command line

One module per job:

- ``plan``: the arguments checked, the held-out reward, each method's sweep (:func:`sweep_plan`, from the
  knobs the method declares) and every run's RunConfig; ``comparison.json`` and the resume check.
- ``runs``: one run through the engine's trainer with a step and wall-clock budget, resumable, its reward
  images counted (``<run>.status.json``, ``<run>.rewards.csv``).
- ``sweep``: the same sweep for every method, scored on held-out prompts with fresh noise, grids extended until the
  pick is inside (``sweep/sweep.csv``, ``sweep/picks.csv``, ``sweep/chosen.json``).
- ``stats``: bootstrap intervals over prompts x training seeds and the verdict words.
- ``summary``: finished runs read back, ``summary.csv``'s rows, steps to reach the best baseline, the claims.
- ``report``: ``report.md``, the figures, the samples sheet.
- ``cli``: the command line and the protocol (``python -m engine.study --help``).
- ``carry``: a study longer than a working session carried to the next one in a few MB (``python -m engine.study.carry``).
"""

from .cli import main, parser, run, tune_and_train
from .plan import (
    MUST_MATCH,
    NothingToSummarise,
    Plan,
    UsageError,
    prepare_out,
    sweep_plan,
)
from .report import SAMPLES_SCALE, figures, samples_sheet, write_report
from .runs import run_is_done, train_run
from .summary import NABLA, SUMMARY_COLUMNS, claims, reach, read_run, summarise
from .sweep import SWEEP_LRS, compare_trials, read_sweep, run_sweep, sweep_method

__all__ = [
    "main", "parser", "run", "tune_and_train",
    "Plan", "UsageError", "NothingToSummarise", "MUST_MATCH", "prepare_out", "sweep_plan",
    "train_run", "run_is_done",
    "run_sweep", "sweep_method", "read_sweep", "SWEEP_LRS", "compare_trials",
    "summarise", "read_run", "reach", "claims", "NABLA", "SUMMARY_COLUMNS",
    "write_report", "figures", "samples_sheet", "SAMPLES_SCALE",
]
