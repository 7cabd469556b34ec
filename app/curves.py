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


# ------------------------------------------------------------------------------------ the live finetune's figure

RAW_OPACITY = 0.35  # the training reward's per-step points: faint, the smoothed line carries the eye


def ema(values, smoothing: float) -> list[float]:
    """Exponential moving average, TensorBoard-style: s_t = smoothing · s_{t-1} + (1 - smoothing) · x_t, s_1 = x_1
    (smoothing 0 draws the points themselves; 0.9 about the last 10 steps)."""
    if not 0 <= smoothing < 1:
        raise ValueError(f"smoothing = {smoothing!r}: must be in [0, 1).")
    out, s = [], None
    for x in values:
        s = float(x) if s is None else smoothing * s + (1 - smoothing) * float(x)
        out.append(s)
    return out


def live_figure(frame: pd.DataFrame, heldout: pd.DataFrame, metrics: list[str], *, label: str, reward: str,
                batch_size: int, steps: int, smoothing: float, shipped: list | None = None,
                heldout_note: str = "") -> go.Figure:
    """Two panels over the optimiser steps. Top: the training reward (each step's batch mean as faint points, its
    EMA as a line; the shipped runs of the reward thin, grey and dashed, one legend entry). Bottom: the held-out
    paired change from the base of ``metrics`` (eval.csv's ``delta/<m>``) with ±1.96·SE error bars, 0 = the base
    (the honest base line: the training panel's first batch is 2 prompts, not the base's level). The legend sits
    above the plot, clear of the axis titles."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.55, 0.45], vertical_spacing=0.13,
                        subplot_titles=(f"Training reward ({reward}), mean of each step's batch of {batch_size}",
                                        "Held-out: change vs the base, ± 95% interval" + (f" ({heldout_note})" if heldout_note else "")))
    colour = PALETTE[0]
    if len(frame) and "reward_mean" in frame:
        fig.add_trace(go.Scatter(x=frame["step"], y=frame["reward_mean"], name=f"{label}: each step", mode="markers",
                                 marker={"color": colour, "size": 6, "opacity": RAW_OPACITY}), row=1, col=1)
        fig.add_trace(go.Scatter(x=frame["step"], y=ema(frame["reward_mean"], smoothing), mode="lines",
                                 name=f"{label}: smoothed (EMA {smoothing:g})", line={"color": colour, "width": 2.5}),
                      row=1, col=1)
    drawn = [(name, f) for name, f, _ in shipped or [] if not f.empty and "reward_mean" in f]
    for i, (name, f) in enumerate(drawn):
        fig.add_trace(go.Scatter(x=f["step"], y=f["reward_mean"], mode="lines", name=f"shipped runs on {reward} ({len(drawn)})",
                                 legendgroup="shipped", showlegend=i == 0, hovertext=name, hoverinfo="text+y",
                                 line={"color": "#adb5bd", "width": 1, "dash": "dash"}), row=1, col=1)
    fig.add_hline(y=0, line={"color": "#868e96", "dash": "dot"}, annotation_text="base", annotation_position="bottom right",
                  row=2, col=1)
    runs = heldout[heldout["label"] == "run"] if "label" in heldout else heldout.iloc[0:0]
    for i, metric in enumerate(metrics):
        if runs.empty:
            break
        base = heldout[heldout["label"] == "base"].head(1)
        rows = pd.concat([base, runs]) if len(base) else runs  # the base's own point: 0 ± 0 at step 0
        fig.add_trace(go.Scatter(x=rows["step"], y=rows[f"delta/{metric}"], mode="lines+markers",
                                 name=f"held-out {metric.split('/', 1)[1]} − base (± 95%)",
                                 error_y={"type": "data", "array": 1.96 * rows[f"delta_se/{metric}"].fillna(0), "visible": True},
                                 line={"color": PALETTE[(1 + 4 * i) % len(PALETTE)], "width": 2.5}, marker={"size": 7}),
                      row=2, col=1)
    end = max(steps, int(frame["step"].max()) if len(frame) else 0) + 0.5
    fig.update_xaxes(range=[-0.5, end])
    fig.update_xaxes(title_text="optimiser step", row=2, col=1)
    fig.update_yaxes(title_text=f"reward ({reward})", row=1, col=1)
    fig.update_yaxes(title_text="Δ vs base", zeroline=True, row=2, col=1)
    fig.update_layout(height=520, margin={"l": 60, "r": 20, "t": 70, "b": 45}, template="plotly_white",
                      legend={"orientation": "h", "yanchor": "bottom", "y": 1.06, "x": 0, "xanchor": "left"},
                      uirevision="finetune")
    return fig
