"""A run's held-out signal: its eval.csv rows (written by the trainer every ``eval_every`` steps) read as the
paired change of the trained reward from the base, with a 95% interval, in words and as a curve.

Each evaluation samples the same held-out prompts x seeds with the same noise as the base (row ``step 0``,
label ``base``); ``delta/reward/<name>`` is the mean over prompts of each prompt's change, ``delta_se/...``
its standard error over prompts (engine/align/evaluate.py ``paired_change``). The interval is
delta ± 1.96·SE: a *gain* only when it lies above 0, a *drop* when below, else *no measurable change*.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from engine.align.run_folder import RunFolder
from engine.rewards import parse_ensemble

Z95 = 1.96


def read_eval(run: str | Path) -> pd.DataFrame:
    """A run folder's eval.csv as numbers (step, label, metrics); an empty frame when it has none yet."""
    rows = RunFolder(run).eval_rows()
    if not rows:
        return pd.DataFrame(columns=["step", "label"])
    frame = pd.DataFrame(rows)
    for col in frame.columns:
        if col != "label":
            frame[col] = pd.to_numeric(frame[col], errors="coerce")
    return frame.sort_values("step", kind="stable").reset_index(drop=True)


def heldout_metrics(reward: str, frame: pd.DataFrame) -> list[str]:
    """The eval.csv metrics that hold the trained reward's paired change: ``reward/<name>`` for each reward of
    the spec that the evaluation scored (an ensemble's parts one by one)."""
    try:
        names = [n for n, _ in parse_ensemble(reward)]
    except (KeyError, ValueError):
        names = [reward]
    return [f"reward/{n}" for n in names if f"delta/reward/{n}" in frame.columns]


def interval(delta: float, se: float) -> tuple[float, float]:
    """The 95% interval of a paired change (NaN ends when its standard error is unknown)."""
    return delta - Z95 * se, delta + Z95 * se


def verdict(delta: float, se: float) -> str:
    """"gain" when the 95% interval lies above 0, "drop" when below, else "no measurable change"."""
    low, high = interval(delta, se)
    if not (math.isfinite(low) and math.isfinite(high)):
        return "no measurable change"
    if low > 0:
        return "gain"
    if high < 0:
        return "drop"
    return "no measurable change"


def _num(x: float) -> str:
    """A change in readable notation, with its sign: +0.0974, -0.0012, +12.3, +1.2e-05."""
    if abs(x) < 1e-3 or abs(x) >= 1e4:
        return f"{x:+.2g}"
    return f"{x:+.3g}" if abs(x) < 1 else f"{x:+.4g}"


def summary(reward: str, frame: pd.DataFrame, prompts: int | None = None, seeds: int | None = None) -> str:
    """One sentence per trained reward on the latest held-out evaluation against the base, e.g.
    "Held-out alignment at step 20 (4 prompts × 2 seeds not trained on): +0.021 vs the base, 95% interval
    [+0.008, +0.034]: a gain."; "" when there is no evaluation after the base yet."""
    runs = frame[frame["label"] == "run"] if "label" in frame else frame.iloc[0:0]
    if runs.empty:
        return ""
    last = runs.iloc[-1]
    where = (f" ({prompts} prompt{'s' * (prompts != 1)} × {seeds} seed{'s' * (seeds != 1)} not trained on)"
             if prompts and seeds else "")
    out = []
    for metric in heldout_metrics(reward, frame):
        delta, se = float(last[f"delta/{metric}"]), float(last[f"delta_se/{metric}"])
        low, high = interval(delta, se)
        word = verdict(delta, se)
        said = {"gain": "a gain", "drop": "a measurable drop"}.get(word, "no measurable change (the interval holds 0)")
        span = f"95% interval [{_num(low)}, {_num(high)}]" if math.isfinite(se) else "no interval (one prompt)"
        base = frame[frame["label"] == "base"]
        level = f"; base {float(base.iloc[0][metric]):.4g} → {float(last[metric]):.4g}" if len(base) and metric in frame else ""
        out.append(f"Held-out {metric.split('/', 1)[1]} at step {int(last['step'])}{where}: {_num(delta)} vs the base, "
                   f"{span}: **{said}**{level}.")
    return " ".join(out)
