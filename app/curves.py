"""Reward curves of runs as plotly figures: the live finetune's and the Compare tab's.

A run's curve is its ``metrics.csv`` (one row per optimiser step, written by the trainer): ``reward_mean``
against ``step`` or ``wall_seconds``. Shipped runs are drawn dashed, the base model's level as a line.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from engine.align.run_folder import RunFolder

X_AXES = {"step": "optimiser step", "wall_seconds": "wall time (s)"}
PALETTE = ("#e4572e", "#17bebb", "#4c6ef5", "#f2a541", "#76b041", "#9c36b5", "#495057", "#d6336c")


def read_metrics(run: str | Path) -> pd.DataFrame:
    """A run folder's metrics.csv (empty frame when it has no rows yet)."""
    path = RunFolder(run).metrics_file
    if not path.is_file() or path.stat().st_size == 0:
        return pd.DataFrame(columns=["step", "wall_seconds", "reward_mean"])
    return pd.read_csv(path)


def read_run_config(run: str | Path) -> dict:
    """A run folder's config.json as plain JSON ({} when it cannot be read)."""
    try:
        return RunFolder(run).config_dict()
    except (OSError, ValueError):
        return {}


def draw_curves(fig: go.Figure, curves: list[tuple[str, pd.DataFrame, bool]], *, x: str = "step",
                base_level: float | None = None, row: int | None = None, col: int | None = None, colour: int = 0) -> int:
    """Draw ``curves`` ((label, metrics frame, dashed) per run) and the base's level (dotted) into ``fig``, or
    into its subplot ``row``, ``col``. Run i gets ``PALETTE[colour + i]`` (frames without points still take
    their colour, so a run keeps its colour across figures). Returns the next free colour."""
    for label, frame, dashed in curves:
        line = {"color": PALETTE[colour % len(PALETTE)], "dash": "dash" if dashed else "solid", "width": 1.5 if dashed else 2.5}
        colour += 1
        if frame.empty or x not in frame or "reward_mean" not in frame:
            continue
        fig.add_trace(go.Scatter(x=frame[x], y=frame["reward_mean"], name=label, mode="lines+markers" if len(frame) < 40 else "lines",
                                 line=line, marker={"size": 5}), row=row, col=col)
    if base_level is not None:
        fig.add_hline(y=base_level, line={"color": "#868e96", "dash": "dot"}, annotation_text="base",
                      annotation_position="bottom right", row=row, col=col)
    return colour


def reward_figure(curves: list[tuple[str, pd.DataFrame, bool]], *, x: str = "step", base_level: float | None = None,
                  title: str = "Reward (mean over the batch)", reward: str | None = None) -> go.Figure:
    """``curves``: (label, metrics frame, dashed) per run; ``x``: "step" or "wall_seconds"."""
    fig = go.Figure()
    draw_curves(fig, curves, x=x, base_level=base_level)
    fig.update_layout(title=title, xaxis_title=X_AXES.get(x, x), yaxis_title=f"reward ({reward})" if reward else "reward",
                      height=360, margin={"l": 50, "r": 20, "t": 50, "b": 40}, legend={"orientation": "h", "y": -0.2},
                      template="plotly_white")
    return fig
