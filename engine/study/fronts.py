"""Pareto fronts: what each method's gain costs in forgetting, as points rather than one pick.

Free points from one adapter: every finished run's final adapter is evaluated again at LoRA scales α in
``ALPHAS`` (α = 1 is the adapter as trained), on the runs' own held-out prompts and seeds, with the ε-space
distance to the base measured along the samples' own trajectories. Each point's reward change has its 95%
bootstrap interval over prompts x training seeds (engine.study.stats); its forgetting is told on four axes:
KID against the base's renders, category-accuracy change, text-alignment change (left out when alignment is
trained) and the ε-space KL to the base. Per run: ``front.csv`` (metrics per α) and ``front_assets.csv``;
per study: ``fronts.csv`` with one row per method x point (``reward, method, point, reward_delta, ci_low,
ci_high, adapter`` and the forgetting columns) and a plotly front.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..align.run_folder import RunFolder, write_csv
from . import stats
from .fmt import log
from .plan import Plan

ALPHAS = (0.25, 0.5, 0.75, 1.0)
FRONT_COLUMNS = ["reward", "method", "point", "alpha", "reward_delta", "ci_low", "ci_high", "adapter", "n_seeds",
                 "kid_vs_base", "category_acc_delta", "alignment_delta", "eps_kl"]


class FrontEvaluator:
    """One base model and evaluator for every run's scaled adapters (the runs' evaluation settings, ε-KL on)."""

    def __init__(self, plan: Plan):
        self.plan, self._ev = plan, None

    def evaluator(self):
        if self._ev is None:
            from ..align.evaluate import RunEvaluator, run_settings
            from ..generate import load_model

            cfg = self.plan.base_configs[self.plan.methods[0]]
            model = load_model(cfg.model, cfg.weights, dtype=cfg.dtype, device=cfg.device)
            cache = self.plan.args.out / "base_eval"
            cache.mkdir(parents=True, exist_ok=True)
            self._ev = RunEvaluator(model, run_settings(cfg, eps_kl=True), base_cache=cache)
        return self._ev

    def run_front(self, folder: Path) -> pd.DataFrame:
        """The run's points (``front.csv``: alpha, then the evaluation's metrics), evaluated once and kept."""
        path, assets = folder / "front.csv", folder / "front_assets.csv"
        if not (path.exists() and assets.exists()):
            from ..models import lora

            ev = self.evaluator()
            name = lora.load_adapter(ev.model, RunFolder(folder).adapter, name="front", activate=True)
            rows, asset_rows = [], [{"alpha": 0.0, **a} for a in ev.asset_rows("base")]
            try:
                for alpha in ALPHAS:
                    lora.set_adapter_scale(ev.model, name, alpha)
                    rows.append({"alpha": alpha, **ev.evaluate()})
                    asset_rows += [{"alpha": alpha, **a} for a in ev.asset_rows("run")]
            finally:
                lora.remove_adapter(ev.model, name)
            write_csv(assets, asset_rows)
            write_csv(path, rows)  # last: its presence says the run's front is complete
        return pd.read_csv(path)


def evaluate_fronts(plan: Plan) -> None:
    """Every finished run's front points (skipped where front.csv exists: a resumed study adds only new ones)."""
    fe = FrontEvaluator(plan)
    for m in plan.methods:
        for seed in plan.seeds:
            folder = plan.args.out / "runs" / m / f"seed{seed}"
            status = folder.parent / f"seed{seed}.status.json"
            if status.exists() and '"finished"' in status.read_text() and RunFolder(folder).adapter.exists():
                log(f"[front {m} seed{seed}] α = {', '.join(map(str, ALPHAS))}")
                fe.run_front(folder)


def front_table(plan: Plan) -> pd.DataFrame:
    """fronts.csv's rows: one per method and α over the runs that have a front (seed means; Δ with its interval)."""
    rows = []
    trained_alignment = "alignment" in plan.reward_terms
    for m in plan.methods:
        folders = [plan.args.out / "runs" / m / f"seed{s}" for s in plan.seeds]
        folders = [f for f in folders if (f / "front.csv").exists()]
        if not folders:
            continue
        fronts = [pd.read_csv(f / "front.csv") for f in folders]
        assets = [pd.read_csv(f / "front_assets.csv") for f in folders]
        assets = [a.assign(heldout=[plan.heldout(r) for _, r in a.iterrows()]) for a in assets]
        keep = ["prompt", "seed", "heldout"]
        for alpha in ALPHAS:
            runs = [stats.paired_assets(a[a["alpha"] == alpha][keep], a[a["alpha"] == 0.0][keep]) for a in assets]
            mean, lo, hi = stats.interval(stats.cell_deltas(runs, "heldout"))
            point = [f[f["alpha"] == alpha].iloc[0] for f in fronts]
            base_rows = [a[a["alpha"] == 0.0] for a in assets]
            cat_base = float(np.nanmean([b["category_ok"].mean() for b in base_rows]))
            align_base = float(np.mean([b["alignment"].mean() for b in base_rows]))
            rows.append({
                "reward": plan.args.reward, "method": m, "point": f"α={alpha:g}", "alpha": alpha,
                "reward_delta": mean, "ci_low": lo, "ci_high": hi,
                "adapter": (folders[0] / "adapter").relative_to(plan.args.out).as_posix(), "n_seeds": len(folders),
                "kid_vs_base": float(np.mean([p["kid_vs_base"] for p in point])),
                "category_acc_delta": float(np.mean([p["category_acc"] for p in point])) - cat_base,
                "alignment_delta": float("nan") if trained_alignment else float(np.mean([p["alignment"] for p in point])) - align_base,
                "eps_kl": float(np.mean([p["eps_kl"] for p in point])),
            })
    return pd.DataFrame(rows, columns=FRONT_COLUMNS)


def front_figure(plan: Plan, table: pd.DataFrame, colours: tuple[str, ...]):
    """Held-out reward change (95% interval) against KID vs the base, one line per method from α = 0.25 to 1."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, (m, rows) in enumerate(table.groupby("method", sort=False)):
        rows = rows.sort_values("alpha")
        fig.add_trace(go.Scatter(x=rows["kid_vs_base"], y=rows["reward_delta"], mode="lines+markers+text", name=m,
                                 text=rows["point"], textposition="top center", line=dict(color=colours[i % len(colours)]),
                                 error_y=dict(type="data", symmetric=False, array=rows["ci_high"] - rows["reward_delta"],
                                              arrayminus=rows["reward_delta"] - rows["ci_low"])))
    fig.add_trace(go.Scatter(x=[0], y=[0], mode="markers", name="base", marker=dict(symbol="star", size=14, color="black")))
    fig.update_layout(title=f"front: held-out {plan.args.reward} change vs forgetting<br><sup>each adapter at LoRA scale α; "
                            "bars: 95% bootstrap interval over prompts x seeds</sup>",
                      xaxis_title="KID vs the base's renders (forgetting →)", yaxis_title="held-out reward change vs base",
                      template="plotly_white", legend=dict(orientation="h", y=1.02, yanchor="bottom"))
    return fig
