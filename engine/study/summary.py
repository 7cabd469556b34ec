"""The study's numbers and verdicts: finished runs read back, one summary row per method (seed mean ± std),
the steps to reach the best baseline, and the paper's three claims checked against them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..align.methods.nabla import NablaR2D3
from . import stats
from .fmt import num, pm, signed
from .plan import NothingToSummarise, Plan

NABLA = NablaR2D3.name  # the method whose claims are checked; every other method is a baseline
SUMMARY_COLUMNS = [
    "method", "n_seeds", "n_failed", "steps", "seconds", "reward_images",
    "final_reward_mean", "final_reward_std", "delta_reward_mean", "delta_reward_std", "delta_reward_ci_low", "delta_reward_ci_high",
    "steps_to_best_baseline", "seconds_to_best_baseline",
    "alignment_delta_mean", "alignment_delta_std", "category_acc_delta_mean", "category_acc_delta_std",
    "kid_vs_base_mean", "kid_vs_base_std", "diversity_delta_mean", "diversity_delta_std",
    "base_reward", "setting",
]


def read_run(folder: Path, heldout) -> dict | None:
    """A finished run's evaluation (base and run rows with the held-out reward) and training counters."""
    status_path = folder.parent / f"{folder.name}.status.json"
    if not status_path.exists():
        return None
    status = json.loads(status_path.read_text())
    if status.get("state") != "finished" or not (folder / "eval.csv").exists():
        return {"status": status}
    ev = pd.read_csv(folder / "eval.csv").drop_duplicates(["step", "label"], keep="last")
    ev = ev[ev["step"] <= status["steps"]].copy()
    ev["heldout"] = [heldout(row) for _, row in ev.iterrows()]
    metrics = pd.read_csv(folder / "metrics.csv")
    metrics = metrics[metrics["step"] <= status["steps"]]
    wall = dict(zip(metrics["step"].astype(int), metrics["wall_seconds"].astype(float)))
    wall[0] = 0.0
    runs = ev[ev["label"] == "run"].sort_values("step")
    if not (ev["label"] == "base").any() or runs.empty:
        return {"status": {**status, "error": "no base and run rows in eval.csv (evaluation turned off?)"}}
    base = ev[ev["label"] == "base"].iloc[-1]
    assets = _final_assets(folder, heldout, int(runs.iloc[-1]["step"]))
    curve = pd.DataFrame({"step": [0, *runs["step"].astype(int)], "heldout": [base["heldout"], *runs["heldout"]],
                          "alignment": [base["alignment"], *runs["alignment"]]})
    curve["seconds"] = [wall.get(int(s), float("nan")) for s in curve["step"]]
    return {"status": status, "base": base, "final": runs.iloc[-1], "curve": curve, "assets": assets,
            "regime": _regime(metrics)}


REGIME = ("terminal_residual_ratio", "terminal_grad_share")  # Nabla-R2D3's metrics.csv columns
REGIME_LAST = 5  # steps averaged at the end of a run
BETA_MATTERS = 0.5  # terminal residual ratio from which β shapes the target rather than Adam cancelling its scale


def _regime(metrics: pd.DataFrame) -> dict[str, float] | None:
    """The mean of Nabla-R2D3's regime metrics over a run's last steps (None for other methods and older runs)."""
    if not all(c in metrics for c in REGIME) or metrics.empty:
        return None
    last = metrics.tail(REGIME_LAST)
    return {c: float(pd.to_numeric(last[c], errors="coerce").mean()) for c in REGIME}


def regime_lines(info: dict) -> list[str]:
    """Per Nabla-R2D3 run: did it reach the regime where β matters (its terminal residual near its target)?"""
    runs, _ = info["per_method"].get(NABLA, ([], []))
    out = []
    for r in runs:
        reg = r.get("regime")
        if reg is None:
            continue
        ratio, share = reg["terminal_residual_ratio"], reg["terminal_grad_share"]
        reached = math.isfinite(ratio) and ratio >= BETA_MATTERS
        out.append(f"{NABLA} seed {r['seed']}: terminal residual ratio {num(ratio, 3)}, terminal share of the gradient "
                   f"{num(share, 3)} (last {REGIME_LAST} steps): " + (
                       "**reached** the regime where β shapes the target" if reached else
                       f"**not reached** (below {BETA_MATTERS:g}: the loss's gradient points along g and Adam cancels β's scale)"))
    return out


PAIRED = ("heldout", "alignment", "category_ok")  # per-asset measures whose deltas get intervals


def _final_assets(folder: Path, heldout, step: int) -> pd.DataFrame | None:
    """The final evaluation's assets beside the base's (prompt, seed, the ``PAIRED`` measures and their
    ``_base`` twins), or None for a run evaluated before eval_assets.csv existed."""
    path = folder / "eval_assets.csv"
    if not path.exists():
        return None
    rows = pd.read_csv(path).drop_duplicates(["step", "label", "prompt", "seed"], keep="last")
    final, base = rows[(rows["label"] == "run") & (rows["step"] == step)], rows[rows["label"] == "base"]
    if final.empty or base.empty:
        return None
    keep = ["prompt", "seed", *PAIRED]
    final, base = (f.assign(heldout=[heldout(r) for _, r in f.iterrows()])[keep] for f in (final, base))
    return stats.paired_assets(final, base)


def method_cells(runs: list[dict]) -> dict[str, np.ndarray] | None:
    """{measure: [training seeds, prompts] deltas} of one method's runs, or None when a run lacks per-asset scores."""
    if not runs or any(r.get("assets") is None for r in runs):
        return None
    return {m: stats.cell_deltas([r["assets"] for r in runs], m) for m in PAIRED}


def mean_std(values) -> tuple[float, float]:
    s = pd.Series([v for v in values], dtype=float).dropna()
    if s.empty:
        return float("nan"), float("nan")
    return float(s.mean()), float(s.std(ddof=1)) if len(s) > 1 else float("nan")


def mean_curve(runs: list[dict]) -> pd.DataFrame:
    """Seed mean and std of the held-out reward, alignment and training seconds at every evaluated step."""
    frame = pd.concat([r["curve"].assign(seed=i) for i, r in enumerate(runs)])
    g = frame.groupby("step")
    out = pd.DataFrame({"heldout": g["heldout"].mean(), "heldout_std": g["heldout"].std(ddof=1),
                        "alignment": g["alignment"].mean(), "alignment_std": g["alignment"].std(ddof=1),
                        "seconds": g["seconds"].mean(), "n": g["heldout"].count()})
    return out.reset_index()


def reach(curve: pd.DataFrame, target: float, higher: bool) -> tuple[float, float]:
    """First evaluated step after the start (and its mean training seconds) where the seed-mean held-out
    reward reaches target. Step 0 is the base itself, which reaches nothing by training."""
    curve = curve[curve["step"] > 0]
    hit = curve[curve["heldout"] >= target] if higher else curve[curve["heldout"] <= target]
    if hit.empty or not math.isfinite(target):
        return float("nan"), float("nan")
    row = hit.sort_values("step").iloc[0]
    return float(row["step"]), float(row["seconds"])


def summarise(plan: Plan, chosen: dict) -> tuple[pd.DataFrame, dict]:
    """The summary table (``SUMMARY_COLUMNS``, one row per method) and what the report and figures need:
    per-method runs and curves, the base, the best baseline and its final reward (the target), notes."""
    per_method, curves, cells, notes = {}, {}, {}, []
    for m in plan.methods:
        runs, failed = [], []
        for seed in plan.seeds:
            r = read_run(plan.args.out / "runs" / m / f"seed{seed}", plan.heldout)
            if r is None:
                continue
            if r.get("final") is None:
                failed.append((seed, r["status"]))
            else:
                r["seed"] = seed
                runs.append(r)
        per_method[m] = (runs, failed)
        if runs:
            curves[m] = mean_curve(runs)
            cells[m] = method_cells(runs)
    bases = [r["base"] for runs, _ in per_method.values() for r in runs]
    if not bases:
        raise NothingToSummarise("No run finished with an evaluation (see the *.status.json files under runs/); "
                                 "nothing to summarise.")
    base = {k: float(pd.Series([b[k] for b in bases], dtype=float).mean()) for k in ("heldout", "alignment", "category_acc", "diversity")}
    spread = max(b["heldout"] for b in bases) - min(b["heldout"] for b in bases)
    if spread > 1e-6 * max(1.0, abs(base["heldout"])):
        notes.append(f"the runs' base evaluations differ by up to {spread:.3g} (eval settings differ?); their mean is used.")
    higher = plan.higher_is_better
    sign = 1 if higher else -1
    finals = {m: mean_std([r["final"]["heldout"] for r in runs])[0] for m, (runs, _) in per_method.items() if runs}
    baselines = {m: v for m, v in finals.items() if m != NABLA}
    best_baseline = max(baselines, key=lambda m: sign * baselines[m]) if baselines else None
    target = baselines[best_baseline] if best_baseline else float("nan")
    # a gain to race to: when no baseline ends above the base, "steps to reach" it would only time the base
    gained = math.isfinite(target) and sign * (target - base["heldout"]) > 0
    rows = []
    for m in plan.methods:
        runs, failed = per_method[m]
        row = {"method": m, "n_seeds": len(runs), "n_failed": len(failed)}
        if runs:
            st = [r["status"] for r in runs]
            row["steps"] = mean_std([s["steps"] for s in st])[0]
            row["seconds"] = mean_std([s["train_seconds"] for s in st])[0]
            imgs = [s.get("reward_images") for s in st]
            row["reward_images"] = mean_std(imgs)[0] if all(i is not None for i in imgs) else float("nan")
            for key, fn in (("final_reward", lambda r: r["final"]["heldout"]),
                            ("delta_reward", lambda r: r["final"]["heldout"] - r["base"]["heldout"]),
                            ("alignment_delta", lambda r: r["final"]["alignment"] - r["base"]["alignment"]),
                            ("category_acc_delta", lambda r: r["final"]["category_acc"] - r["base"]["category_acc"]),
                            ("kid_vs_base", lambda r: r["final"]["kid_vs_base"]),
                            ("diversity_delta", lambda r: r["final"]["diversity"] - r["base"]["diversity"])):
                row[f"{key}_mean"], row[f"{key}_std"] = mean_std([fn(r) for r in runs])
            if cells[m] is not None:  # the interval of Δ over prompts x training seeds
                _, row["delta_reward_ci_low"], row["delta_reward_ci_high"] = stats.interval(cells[m]["heldout"])
            row["steps_to_best_baseline"], row["seconds_to_best_baseline"] = (
                reach(curves[m], target, higher) if gained else (float("nan"), float("nan")))
        row["base_reward"] = base["heldout"]
        row["setting"] = " ".join(chosen[m]["overrides"]) if m in chosen else ""
        rows.append(row)
    table = pd.DataFrame(rows).reindex(columns=SUMMARY_COLUMNS)
    info = {"per_method": per_method, "curves": curves, "cells": cells, "base": base, "best_baseline": best_baseline, "target": target, "gained": gained,
            "notes": notes}
    return table, info


def claims(plan: Plan, table: pd.DataFrame, info: dict) -> list[str]:
    """The paper's three claims against the best baseline, each worded "reproduced", "not reproduced at this
    budget" or "contradicted" (engine.study.stats.verdict) from 95% bootstrap intervals over prompts x training
    seeds. A run without per-asset scores gets no interval and so no verdict either way."""
    rows = {r["method"]: r for r in table.to_dict("records")}
    bb = info["best_baseline"]
    nab = rows.get(NABLA)
    if nab is None or not nab["n_seeds"] or bb is None:
        why = f"{NABLA} is not in this comparison" if NABLA not in plan.methods else (
            f"{NABLA} has no finished run" if not (nab and nab["n_seeds"]) else "there is no baseline with a finished run")
        return [f"Not tested: {why}."]
    b = rows[bb]
    higher = plan.higher_is_better
    cells = info.get("cells", {})
    paired = cells.get(NABLA) is not None and cells.get(bb) is not None
    no_interval = " No interval: some runs predate per-asset scores (eval_assets.csv); evaluate them again for a verdict."
    out = []
    # 1. higher reward
    gap = nab["final_reward_mean"] - b["final_reward_mean"]
    if paired:
        gap, lo, hi = stats.difference(cells[NABLA]["heldout"], cells[bb]["heldout"])
        verdict, why = stats.verdict(lo, hi, higher), f"gap {signed(gap)}, 95% interval [{signed(lo)}, {signed(hi)}] over prompts x seeds"
    else:
        verdict, why = stats.NOT_AT_BUDGET, f"gap {signed(gap)}"
    out.append(f"**Higher reward: {verdict}.** Final held-out reward: {NABLA} {pm(nab['final_reward_mean'], nab['final_reward_std'])} "
               f"vs the best baseline, {bb}, {pm(b['final_reward_mean'], b['final_reward_std'])} ({why}; "
               f"base {num(info['base']['heldout'])})." + ("" if paired else no_interval))
    # 2. faster convergence: steps to a target are point estimates at the evaluation's resolution (no interval), so
    # this claim is at most "reproduced" in the point estimate, never "contradicted"
    ns, nsec = nab["steps_to_best_baseline"], nab["seconds_to_best_baseline"]
    bs, bsec = b["steps_to_best_baseline"], b["seconds_to_best_baseline"]
    target = num(info["target"])
    if not info["gained"]:
        lo = nab.get("delta_reward_ci_low", float("nan")) if higher else -nab.get("delta_reward_ci_high", float("nan"))
        gained = math.isfinite(lo) and lo > 0
        out.append(f"**Faster convergence: {'reproduced' if gained else 'not testable here'}.** No baseline's final "
                   f"held-out reward beat the base's (best: {bb}, {target} vs base {num(info['base']['heldout'])}), so there "
                   f"is no baseline gain to race to; {NABLA}'s final reward is "
                   f"{'above the base beyond its interval' if gained else 'not above the base beyond its interval'} "
                   f"(Δ {signed(nab['delta_reward_mean'])}).")
    elif not math.isfinite(ns):
        out.append(f"**Faster convergence: {stats.NOT_AT_BUDGET}.** {NABLA} never reached the best baseline's final reward ({target}) "
                   f"within {num(nab['steps'])} steps ({num(nab['seconds'], 3)} s); {bb} reached it at step {num(bs)} "
                   f"({num(bsec, 3)} s).")
    else:
        by_steps = "reproduced" if ns < bs else stats.NOT_AT_BUDGET
        by_time = "reproduced" if math.isfinite(bsec) and nsec < bsec else stats.NOT_AT_BUDGET
        out.append(f"**Faster convergence: {by_steps}** in optimiser steps, **{by_time}** in wall time (point estimates). "
                   f"Steps (training seconds) to reach {bb}'s final reward {target}: {NABLA} {num(ns)} ({num(nsec, 3)} s), "
                   f"{bb} {num(bs)} ({num(bsec, 3)} s). Evaluated every {plan.eval_every} steps, so steps are known to that resolution.")
    # 3. less forgetting. A measure the run was trained to raise is not something it can forget: with
    # alignment in the reward, a smaller alignment gain is the reward gap again, not better retention.
    measures = [("alignment Δ", "alignment_delta_mean", "alignment", True), ("category acc Δ", "category_acc_delta_mean", "category_ok", True),
                ("KID vs base", "kid_vs_base_mean", None, False), ("diversity Δ", "diversity_delta_mean", None, True)]
    trained = "alignment" in plan.reward_terms
    if trained:
        measures = measures[1:]
    parts, words = [], []
    for label, key, cell, up in measures:
        x, y = nab[key], b[key]
        if not (math.isfinite(x) and math.isfinite(y)):
            parts.append(f"{label} not measured")
            continue
        if paired and cell is not None:
            _, lo, hi = stats.difference(cells[NABLA][cell], cells[bb][cell])
            word = stats.verdict(lo, hi, up)
            words.append(word)
            parts.append(f"{label} {signed(x)} vs {signed(y)} (difference in [{signed(lo)}, {signed(hi)}]: "
                         f"{'better' if word == stats.REPRODUCED else 'worse' if word == stats.CONTRADICTED else 'a tie'})")
        else:  # set-level measures (KID, diversity) have no per-asset cells: shown, not judged
            parts.append(f"{label} {signed(x)} vs {signed(y)} ({'as good or better' if (x >= y if up else x <= y) else 'worse'}; no interval)")
    verdict = (stats.CONTRADICTED if stats.CONTRADICTED in words and stats.REPRODUCED not in words else
               stats.REPRODUCED if stats.REPRODUCED in words and stats.CONTRADICTED not in words else stats.NOT_AT_BUDGET)
    out.append(f"**Less forgetting: {verdict}** ({NABLA} vs {bb}; judged on the measures with per-asset intervals: better on one "
               f"and worse on none is reproduced, the reverse contradicted): {'; '.join(parts)}. A method that moves the reward less "
               "usually also forgets less; read this with the reward gap."
               + (" Alignment Δ is left out: alignment is part of the trained reward. Category accuracy comes from the same "
                  "evaluator, so training for alignment can raise it too." if trained else "")
               + ("" if paired else no_interval))
    return out
