"""Shipped studies for the Compare tab: each study in ``checkpoints/runs/<name>/`` read back as its front (held-out
reward gain against a forgetting measure, one point per LoRA scale, 95% intervals) or, for a study without fronts
(the first edition), its per-method table; and the way to put one of its runs beside the base.

A study with fronts ships ``summary.csv`` with one row per method x point (bench/ship_runs.py); one without ships
one row per method. Nothing here trains or samples: it reads CSVs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from engine.align import shipped

from .catalogue import BASE, ROOT, SHIPPED_RUNS

# the forgetting measures a front can be drawn against: column -> axis title
AXES = {"kid_vs_base": "KID vs the base's renders (lower: closer to the base)",
        "eps_kl": "ε-space KL to the base (lower: closer to the base)",
        "category_acc_delta": "category accuracy Δ",
        "alignment_delta": "text alignment Δ (when alignment is not the reward)"}
METHOD_COLUMNS = {"method": "method", "n_seeds": "seeds", "final_reward_mean": "final reward", "final_reward_std": "± sd",
                  "delta_reward_mean": "Δ reward", "delta_reward_ci_low": "Δ low", "delta_reward_ci_high": "Δ high",
                  "alignment_delta_mean": "alignment Δ", "kid_vs_base_mean": "KID vs base"}


@dataclass
class Study:
    name: str
    folder: Path
    table: pd.DataFrame  # summary.csv
    fronts: bool  # one row per method x point (else one per method)

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys(self.table["method"]))

    @property
    def reward(self) -> str:
        return str(self.table["reward"].iloc[0]) if "reward" in self.table and len(self.table) else self.name


def study_names(root: Path = SHIPPED_RUNS) -> list[str]:
    return sorted(p.parent.name for p in Path(root).glob("*/summary.csv"))


def read_study(name: str, root: Path = SHIPPED_RUNS) -> Study:
    folder = Path(root) / name
    if name not in study_names(root):
        raise ValueError(f"No shipped study {name!r} (choose one of: {', '.join(study_names(root)) or 'none shipped'}).")
    table = pd.read_csv(folder / "summary.csv")
    return Study(name, folder, table, {"point", "reward_delta", "ci_low", "ci_high"} <= set(table.columns))


def front_figure(study: Study, axis: str = "kid_vs_base") -> go.Figure:
    """Held-out reward gain (with its 95% interval) against ``axis``, one line per method through its points."""
    fig = go.Figure()
    title = AXES.get(axis, axis)
    if not study.fronts:  # one final point per method (seed mean ± sd across seeds): no interval, no scale points
        rows = study.table.dropna(subset=[f"{axis}_mean"]) if f"{axis}_mean" in study.table else study.table.iloc[0:0]
        for r in rows.itertuples():
            fig.add_trace(go.Scatter(x=[getattr(r, f"{axis}_mean")], y=[r.delta_reward_mean], mode="markers+text", name=r.method,
                                     text=[r.method], textposition="top center",
                                     error_y={"type": "data", "array": [r.delta_reward_std]}))
        fig.add_hline(y=0, line_dash="dot", line_color="gray")
        fig.update_layout(title=f"{study.reward}: final points only (the first edition has no fronts; ± sd over seeds)",
                          xaxis_title=title, yaxis_title="held-out reward Δ vs the base", height=420, showlegend=False)
        if not fig.data:
            fig.add_annotation(text=f"this study has no {axis}", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
        return fig
    for method in study.methods:
        rows = study.table[study.table["method"] == method]
        rows = rows[rows[axis].notna()] if axis in rows else rows.iloc[0:0]
        if rows.empty:
            continue
        fig.add_trace(go.Scatter(
            x=rows[axis], y=rows["reward_delta"], mode="lines+markers+text", name=method, text=rows["point"],
            textposition="top center", error_y={"type": "data", "symmetric": False,
                                                "array": rows["ci_high"] - rows["reward_delta"],
                                                "arrayminus": rows["reward_delta"] - rows["ci_low"]}))
    fig.add_hline(y=0, line_dash="dot", line_color="gray")
    fig.update_layout(title=f"{study.reward}: held-out gain vs forgetting (95% intervals over prompts x seeds)",
                      xaxis_title=title, yaxis_title="held-out reward Δ vs the base", height=420,
                      legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0})
    if not fig.data:
        fig.add_annotation(text=f"no point of this study has {axis}", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    return fig


def shown_table(study: Study) -> pd.DataFrame:
    """The study's rows as the tab shows them: the front's points, or the per-method summary (rounded)."""
    if study.fronts:
        keep = ["method", "point", "reward_delta", "ci_low", "ci_high", *[c for c in AXES if c in study.table], "n_seeds"]
        return study.table[[c for c in keep if c in study.table]].round(4)
    keep = [c for c in METHOD_COLUMNS if c in study.table]
    return study.table[keep].rename(columns=METHOD_COLUMNS).round(4)


def describe(study: Study) -> str:
    picks = study.folder / "picks.csv"
    report = study.folder / "report.md"
    shown = report.resolve().relative_to(ROOT) if report.resolve().is_relative_to(ROOT) else report
    lines = [f"**{study.name}** ({len(study.methods)} methods; report: `{shown.as_posix()}`)."]
    if picks.exists():
        table = pd.read_csv(picks)
        inert = table["inert"].astype(bool) if "inert" in table else pd.Series(False, index=table.index)
        edge, idle = table[~table["inside_grid"].astype(bool) & ~inert], table[inert]
        lines.append(f"Tuning: {len(table)} swept axes; " + ("every pick inside its grid." if edge.empty else
                     "at a grid's edge: " + ", ".join(f"{r.method} {r.knob}" for r in edge.itertuples()) + ".")
                     + ("" if idle.empty else " Every value scored the same (the knob did not act): "
                        + ", ".join(f"{r.method} {r.knob}" for r in idle.itertuples()) + "."))
    return " ".join(lines)


def view(name: str | None, axis: str = "kid_vs_base", root: Path = SHIPPED_RUNS):
    """The tab's section for study ``name``: (front figure, table, description, method dropdown)."""
    import gradio as gr

    if not name:
        empty = Study("", Path("."), pd.DataFrame({"method": []}), False)
        return front_figure(empty), pd.DataFrame(), "No study is shipped.", gr.update(choices=[], value=None)
    try:
        study = read_study(name, root)
    except ValueError as err:
        raise gr.Error(str(err)) from None
    runs = run_choices(study)
    return (front_figure(study, axis), shown_table(study), describe(study),
            gr.update(choices=runs, value=runs[0] if runs else None))


def run_choices(study: Study) -> list[str]:
    """The study's runs with a shipped adapter: ``<method>`` (its first seed) and ``<method>/seed<k>`` (the others,
    where the study was shipped with every adapter)."""
    out = []
    for m in study.methods:
        if (shipped.run_folder(study.folder, m) / "adapter").is_dir():
            out.append(m)
        out += [f"{m}/{p.name}" for p in shipped.other_seeds(shipped.run_folder(study.folder, m))]
    return out


def _adapter(folder: Path, run: str) -> Path:
    method, _, seed = run.partition("/")
    return shipped.run_folder(folder, method, seed or None) / "adapter"


def beside_base(name: str | None, method: str | None, root: Path = SHIPPED_RUNS) -> list[str]:
    """The Compare tab's model list with a shipped run (``<method>`` or ``<method>/seed<k>``) beside the base."""
    import gradio as gr

    if not name or not method:
        raise gr.Error("Choose a shipped study and one of its methods.")
    if not _adapter(Path(root) / name, method).is_dir():
        raise gr.Error(f"{name}/{method} ships no adapter.")
    return [BASE, f"shipped: {name}/{method}"]
