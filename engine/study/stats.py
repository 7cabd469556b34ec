"""Intervals and verdicts: bootstrap over prompts x training seeds, and the words a verdict may use.

The unit of a held-out delta is one (training seed, prompt) cell: the mean over that prompt's evaluation
seeds of run − base, on the same prompts, seeds and noise as the base (eval_assets.csv). Prompts and
training seeds are the two things a rerun would draw anew, so the bootstrap resamples both (rows and
columns of the cell matrix, independently); evaluation seeds of one prompt stay together.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

REPRODUCED, NOT_AT_BUDGET, CONTRADICTED = "reproduced", "not reproduced at this budget", "contradicted"
DRAWS = 4000
LEVEL = 0.95


def cell_deltas(runs: list[pd.DataFrame], column: str) -> np.ndarray:
    """[training seeds, prompts] mean over evaluation seeds of ``column`` run − base. ``runs``: one frame per
    training seed with columns prompt, seed, ``column`` and ``column + '_base'`` (see :func:`paired_assets`)."""
    rows = [r.assign(d=r[column] - r[f"{column}_base"]).groupby("prompt")["d"].mean().sort_index() for r in runs]
    prompts = rows[0].index
    if any(not r.index.equals(prompts) for r in rows):
        raise ValueError("The runs were evaluated on different prompts; their deltas cannot be paired.")
    return np.stack([r.to_numpy(float) for r in rows])


def paired_assets(final: pd.DataFrame, base: pd.DataFrame) -> pd.DataFrame:
    """A run's final per-asset scores beside its base's, matched on (prompt, seed); base columns get '_base'."""
    return final.merge(base, on=["prompt", "seed"], suffixes=("", "_base"), validate="one_to_one")


def _resample(cells: np.ndarray, rng: np.random.Generator, prompts: np.ndarray) -> float:
    seeds = rng.integers(0, cells.shape[0], cells.shape[0])
    return float(np.nanmean(cells[seeds][:, prompts]))


def interval(cells: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean delta and its 95% percentile interval over prompts x training seeds."""
    rng = np.random.default_rng(seed)
    P = cells.shape[1]
    draws = [_resample(cells, rng, rng.integers(0, P, P)) for _ in range(DRAWS)]
    lo, hi = np.nanquantile(draws, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return float(np.nanmean(cells)), float(lo), float(hi)


def difference(a: np.ndarray, b: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high) of mean(a) − mean(b) for two methods' cell matrices on the same prompts: prompts are
    resampled together (the pairing), each method's training seeds on their own."""
    if a.shape[1] != b.shape[1]:
        raise ValueError("The two methods were evaluated on different prompts.")
    rng = np.random.default_rng(seed)
    P = a.shape[1]
    draws = []
    for _ in range(DRAWS):
        prompts = rng.integers(0, P, P)
        draws.append(_resample(a, rng, prompts) - _resample(b, rng, prompts))
    lo, hi = np.nanquantile(draws, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return float(np.nanmean(a) - np.nanmean(b)), float(lo), float(hi)


def verdict(low: float, high: float, better_is_positive: bool = True) -> str:
    """A claim that the difference is in the better direction: reproduced when the interval excludes 0 that way,
    contradicted when it excludes 0 the other way, otherwise not reproduced at this budget."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return NOT_AT_BUDGET
    if not better_is_positive:
        low, high = -high, -low
    return REPRODUCED if low > 0 else CONTRADICTED if high < 0 else NOT_AT_BUDGET
