"""The study's numbers and verdicts: finished runs read back, one summary row per method (seed mean ± std),
the steps to reach the best baseline, and the paper's three claims checked against them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from ..align.methods.nabla import NablaR2D3
from .fmt import num, pm, signed
from .plan import NothingToSummarise, Plan

NABLA = NablaR2D3.name  # the method whose claims are checked; every other method is a baseline
SUMMARY_COLUMNS = [
    "method", "n_seeds", "n_failed", "steps", "seconds", "reward_images",
    "final_reward_mean", "final_reward_std", "delta_reward_mean", "delta_reward_std",
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
    curve = pd.DataFrame({"step": [0, *runs["step"].astype(int)], "heldout": [base["heldout"], *runs["heldout"]],
                          "alignment": [base["alignment"], *runs["alignment"]]})
    curve["seconds"] = [wall.get(int(s), float("nan")) for s in curve["step"]]
    return {"status": status, "base": base, "final": runs.iloc[-1], "curve": curve}


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
    per_method, curves, notes = {}, {}, []
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
            row["steps_to_best_baseline"], row["seconds_to_best_baseline"] = (
                reach(curves[m], target, higher) if gained else (float("nan"), float("nan")))
        row["base_reward"] = base["heldout"]
        row["setting"] = " ".join(chosen[m]["overrides"]) if m in chosen else ""
        rows.append(row)
    table = pd.DataFrame(rows).reindex(columns=SUMMARY_COLUMNS)
    info = {"per_method": per_method, "curves": curves, "base": base, "best_baseline": best_baseline, "target": target, "gained": gained,
            "notes": notes}
    return table, info


def claims(plan: Plan, table: pd.DataFrame, info: dict) -> list[str]:
    """The paper's three claims against the best baseline, each 'holds' / 'does not hold' with the numbers."""
    rows = {r["method"]: r for r in table.to_dict("records")}
    bb = info["best_baseline"]
    nab = rows.get(NABLA)
    if nab is None or not nab["n_seeds"] or bb is None:
        why = f"{NABLA} is not in this comparison" if NABLA not in plan.methods else (
            f"{NABLA} has no finished run" if not (nab and nab["n_seeds"]) else "there is no baseline with a finished run")
        return [f"Not tested: {why}."]
    b = rows[bb]
    higher = plan.higher_is_better
    better = (lambda x, y: x > y) if higher else (lambda x, y: x < y)
    out = []
    # 1. higher reward
    gap = nab["final_reward_mean"] - b["final_reward_mean"]
    spread = max((s for s in (nab["final_reward_std"], b["final_reward_std"]) if math.isfinite(s)), default=float("nan"))
    verdict = "holds" if better(nab["final_reward_mean"], b["final_reward_mean"]) else "does not hold"
    noise = f"; the gap is smaller than the seeds' std ({num(spread, 2)})" if math.isfinite(spread) and abs(gap) < spread else ""
    out.append(f"**Higher reward: {verdict}.** Final held-out reward: {NABLA} {pm(nab['final_reward_mean'], nab['final_reward_std'])} "
               f"vs the best baseline, {bb}, {pm(b['final_reward_mean'], b['final_reward_std'])} (gap {signed(gap)}{noise}; "
               f"base {num(info['base']['heldout'])}).")
    # 2. faster convergence
    ns, nsec = nab["steps_to_best_baseline"], nab["seconds_to_best_baseline"]
    bs, bsec = b["steps_to_best_baseline"], b["seconds_to_best_baseline"]
    target = num(info["target"])
    if not info["gained"]:
        nab_gain = nab["delta_reward_mean"] * (1 if higher else -1)
        out.append(f"**Faster convergence: {'holds' if nab_gain > 0 else 'not testable here'}.** No baseline's final "
                   f"held-out reward beat the base's (best: {bb}, {target} vs base {num(info['base']['heldout'])}), so there "
                   f"is no baseline gain to race to; {NABLA}'s final reward is "
                   f"{'above the base' if nab_gain > 0 else 'not above the base either'} (Δ {signed(nab['delta_reward_mean'])}).")
    elif not math.isfinite(ns):
        out.append(f"**Faster convergence: does not hold.** {NABLA} never reached the best baseline's final reward ({target}) "
                   f"within {num(nab['steps'])} steps ({num(nab['seconds'], 3)} s); {bb} reached it at step {num(bs)} "
                   f"({num(bsec, 3)} s).")
    else:
        by_steps = "holds" if ns < bs else "does not hold"
        by_time = "holds" if math.isfinite(bsec) and nsec < bsec else "does not hold"
        out.append(f"**Faster convergence: {by_steps}** in optimiser steps, **{by_time}** in wall time. Steps (training seconds) "
                   f"to reach {bb}'s final reward {target}: {NABLA} {num(ns)} ({num(nsec, 3)} s), {bb} {num(bs)} "
                   f"({num(bsec, 3)} s). Evaluated every {plan.eval_every} steps, so steps are known to that resolution.")
    # 3. less forgetting. A measure the run was trained to raise is not something it can forget: with
    # alignment in the reward, a smaller alignment gain is the reward gap again, not better retention.
    measures = [("alignment Δ", "alignment_delta_mean", True), ("category acc Δ", "category_acc_delta_mean", True),
                ("KID vs base", "kid_vs_base_mean", False), ("diversity Δ", "diversity_delta_mean", True)]
    trained = "alignment" in plan.reward_terms
    if trained:
        measures = measures[1:]
    parts, wins, known = [], 0, 0
    for label, key, up in measures:
        x, y = nab[key], b[key]
        if not (math.isfinite(x) and math.isfinite(y)):
            parts.append(f"{label} not measured")
            continue
        known += 1
        ok = x >= y if up else x <= y
        wins += ok
        parts.append(f"{label} {signed(x)} vs {signed(y)} ({'as good or better' if ok else 'worse'})")
    verdict = "holds" if known and wins == known else "does not hold"
    out.append(f"**Less forgetting: {verdict}** ({NABLA} as good as or better than {bb} on {wins} of {known} measures): "
               f"{'; '.join(parts)}. A method that moves the reward less usually also forgets less; read this with the reward gap."
               + (" Alignment Δ is left out: alignment is part of the trained reward. Category accuracy comes from the same "
                  "evaluator, so training for alignment can raise it too." if trained else ""))
    return out
