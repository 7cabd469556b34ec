"""The study's fair tuning: the same small sweep for every method, on the training prompts.

Per method, 5 short runs (seed ``--sweep-seed``, ``--sweep-steps`` steps, no evaluation): the learning rates
``SWEEP_LRS`` at the method's default knobs, then, at the picked learning rate, the other values of the knob
the method declares a sweep grid for (``engine.align.knobs``; see :func:`engine.study.plan.sweep_plan`). A
method that declares none is swept over the learning rate only. A setting is picked by its final training
reward: the mean batch reward of the last ``PICK_LAST`` steps, never step 1 (sampled before any update);
ties keep the earlier setting. Writes ``sweep/<method>/<run>/``, ``sweep/sweep.csv`` and ``sweep/chosen.json``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from ..align.run_folder import RunFolder
from ..core.io import atomic_write_json
from .fmt import fmt, log, num
from .plan import Plan, UsageError, knob_value
from .runs import train_run

# Shipped runs are short (tens of steps), and an Adam step moves each weight by about lr, so 1e-4 would
# barely leave the base; 3e-3 is the top (ReFL at 1e-3 already lowered geometry on v1).
SWEEP_LRS = (3e-4, 1e-3, 3e-3)
PICK_LAST = 5  # the sweep's score: mean training reward of the last this-many steps


def setting(lr: float, fields: tuple[str, ...], value) -> list[str]:
    """The --set overrides of one sweep setting."""
    return [f"lr={lr!r}"] + [f"{f}={value!r}" for f in fields]


def sweep_method(plan: Plan, method: str) -> dict:
    """Five short runs (3 lrs at the default knob, then the knob's 2 other values at the picked lr); returns
    {"lr", "knob", "value", "overrides", "picked_score", "trials": [...]}."""
    fields, values = plan.knob_fields(method), plan.knob_values(method)
    default = knob_value(plan.base_configs[method], fields[0]) if fields else None
    values = tuple(dict.fromkeys((default, *values)))  # the default first: ties keep it
    budget = plan.budget * plan.sweep_steps / plan.steps if plan.budget else None
    trials = []

    def trial(lr, value, stage):
        name = f"lr{fmt(lr)}" + (f"-{fields[0].split('.')[-1]}{fmt(value)}" if fields else "")
        row = {"method": method, "stage": stage, "lr": lr, "knob": "/".join(fields) or "(none)", "value": value, "run": name}
        try:
            cfg = plan.config(method, plan.args.sweep_seed, setting(lr, fields, value), steps=plan.sweep_steps, sweep=True)
        except UsageError as err:
            trials.append({**row, "score": float("nan"), "state": f"invalid: {err}"})
            return
        folder = plan.args.out / "sweep" / method / name
        status = train_run(cfg, folder, budget, f"sweep {method} {name}")
        rewards = [float(r["reward_mean"]) for r in RunFolder(folder).metrics_rows()][:status["steps"]]
        last = rewards[1:][-PICK_LAST:]  # step 1's batch was sampled before the first update
        score = sum(last) / len(last) if last and status["state"] == "finished" else float("nan")
        trials.append({**row, "score": score, "steps": status["steps"], "seconds": status["train_seconds"], "state": status["state"]})

    def best(rows):
        ok = [r for r in rows if math.isfinite(r["score"])]
        sign = 1 if plan.higher_is_better else -1
        return max(ok, key=lambda r: sign * r["score"]) if ok else None  # max keeps the first of equals

    for lr in SWEEP_LRS:
        trial(lr, default, "lr")
    pick = best(trials)
    lr = pick["lr"] if pick else plan.base_configs[method].lr
    for value in values[1:]:
        trial(lr, value, "knob")
    pick = best([t for t in trials if t["lr"] == lr])
    value = pick["value"] if pick else default
    return {"lr": lr, "knob": "/".join(fields) or "(none)", "value": value, "overrides": setting(lr, fields, value),
            "picked_score": pick["score"] if pick else float("nan"), "trials": trials}


def run_sweep(plan: Plan) -> tuple[dict, list[dict]]:
    """Every method's sweep; writes ``sweep/sweep.csv`` (every trial) and ``sweep/chosen.json`` (the picks)."""
    out, chosen, rows = plan.args.out, {}, []
    for m in plan.methods:
        chosen[m] = sweep_method(plan, m)
        rows += chosen[m]["trials"]
        log(f"[sweep {m}] picked {' '.join(chosen[m]['overrides'])} (training reward {num(chosen[m]['picked_score'])})")
    (out / "sweep").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out / "sweep" / "sweep.csv", index=False)
    atomic_write_json(out / "sweep" / "chosen.json", {m: {k: v for k, v in c.items() if k != "trials"} for m, c in chosen.items()})
    return chosen, rows


def read_sweep(out: Path) -> tuple[dict, list[dict]]:
    """A finished sweep's picks (``sweep/chosen.json``) and trials (``sweep/sweep.csv``), for --report-only."""
    try:
        chosen = json.loads((out / "sweep" / "chosen.json").read_text())
        trials = pd.read_csv(out / "sweep" / "sweep.csv").to_dict("records")
    except FileNotFoundError as err:
        raise UsageError(f"--report-only --sweep: {out} holds no finished sweep ({Path(err.filename).name} is missing).") from None
    return chosen, trials
