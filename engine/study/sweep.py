"""The study's tuning: the same sweep for every method, scored on held-out prompts with fresh noise, and grids
that extend themselves until the pick is inside.

Per method (seed ``--sweep-seed``, ``--sweep-steps`` steps per trial, no evaluation while training):

1. the learning rate, starting from ``SWEEP_LRS`` (or ``--sweep-lrs``) at the method's default knobs; while the best sits at an
   end of the grid, the next value of ``LR_LADDER`` beyond it is tried (at most ``MAX_EXTEND`` times, never
   past the ladder: 1e-5 to 1e-2);
2. at the picked learning rate, the knob the method declares a sweep grid for (``engine.align.knobs``; see
   :func:`engine.study.plan.sweep_plan`), extended the same way by the grid's own ratio (a value the config
   refuses ends the extension). A method that declares none is swept over the learning rate only.

Each trial is scored by a paired held-out evaluation on fresh noise: its adapter and the base sample the study's
held-out prompts with seeds ``TUNE_SEEDS`` (never the final evaluation's), and the score is the mean paired
change of the trained reward. Every trial's difference from the best is given with its paired standard error
over prompts; a trial within ``TIE_SE`` standard errors of the best is a tie, and the report says so. Writes
``sweep/<method>/<run>/`` (with ``tune.csv``, its per-asset scores), ``sweep/sweep.csv``, ``sweep/picks.csv``
and ``sweep/chosen.json``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..align.run_folder import RunFolder, read_csv, write_csv
from ..core.io import atomic_write_json
from .fmt import fmt, log, num
from .plan import LR_LADDER, SWEEP_LRS, Plan, UsageError, knob_value  # noqa: F401  (SWEEP_LRS: this module's API)
from .runs import train_run

MAX_EXTEND = 2  # extensions per swept axis beyond the first grid
TUNE_SEEDS = (1000, 1001)  # the tuning evaluation's noise: fresh, never the final evaluation's seeds 0..n-1
TIE_SE = 2.0


def setting(lr: float, fields: tuple[str, ...], value) -> list[str]:
    """The --set overrides of one sweep setting."""
    return [f"lr={lr!r}"] + [f"{f}={value!r}" for f in fields]


def beyond(grid: list, at_low: bool, ladder: tuple | None = None):
    """The next value past the grid's low (``at_low``) or high end: the ladder's neighbour, or the grid's own
    ratio (geometric) or step (arithmetic) continued; None when there is none."""
    end = grid[0] if at_low else grid[-1]
    if ladder is not None:
        i = ladder.index(end) + (-1 if at_low else 1) if end in ladder else -1
        return ladder[i] if 0 <= i < len(ladder) else None
    if len(grid) < 2 or isinstance(end, bool) or not isinstance(end, (int, float)):
        return None
    a, b = (grid[0], grid[1]) if at_low else (grid[-2], grid[-1])
    if a > 0 and b > 0:
        value = end * (a / b) if at_low else end * (b / a)
        return float(f"{value:.3g}")
    return end - (b - a) if at_low else end + (b - a)


def compare_trials(deltas: dict[str, np.ndarray], higher: bool) -> tuple[str | None, dict[str, dict]]:
    """The best trial and every trial's difference from it. ``deltas``: trial -> [prompts, seeds] paired change of
    the held-out reward. Returns (best, {trial: {"score", "diff", "diff_se", "tie"}}); the difference is taken per
    asset (same prompts and noise), averaged per prompt, its standard error over prompts."""
    sign = 1 if higher else -1
    scored = {k: v for k, v in deltas.items() if np.isfinite(v).all()}
    if not scored:
        return None, {}
    best = max(scored, key=lambda k: sign * scored[k].mean())  # max keeps the first of equals
    out = {}
    for k, d in scored.items():
        per_prompt = (d - scored[best]).mean(1)
        se = per_prompt.std(ddof=1) / math.sqrt(len(per_prompt)) if len(per_prompt) > 1 else float("nan")
        diff = float(per_prompt.mean())
        tie = k != best and math.isfinite(se) and abs(diff) <= TIE_SE * se
        out[k] = {"score": float(d.mean()), "diff": diff, "diff_se": float(se), "tie": bool(tie)}
    return best, out


class Tuner:
    """Scores trial adapters on the tuning assets: one base model with each trial's adapter switched on in turn,
    against the base sampled once (cached under ``sweep/base_eval``)."""

    def __init__(self, plan: Plan, method: str):
        self.plan, self.method, self.evaluator = plan, method, None

    def _evaluator(self):
        if self.evaluator is None:
            from ..align.evaluate import RunEvaluator, run_settings
            from ..generate import load_model

            cache = self.plan.args.out / "sweep" / "base_eval"
            cache.mkdir(parents=True, exist_ok=True)
            cfg = self.plan.base_configs[self.method]
            model = load_model(cfg.model, cfg.weights, dtype=cfg.dtype, device=cfg.device)
            self.evaluator = RunEvaluator(model, run_settings(cfg, seeds=TUNE_SEEDS), base_cache=cache)
        return self.evaluator

    def deltas(self, folder: Path) -> np.ndarray:
        """[prompts, seeds] paired change of the held-out reward for the trial in ``folder`` (kept in tune.csv)."""
        path = folder / "tune.csv"
        if not path.exists():
            from ..models import lora

            ev = self._evaluator()
            name = lora.load_adapter(ev.model, RunFolder(folder).adapter, name="tune", activate=True)
            try:
                ev.evaluate()
                rows = [{**run, **{f"{k}_base": v for k, v in base.items() if k not in ("prompt", "seed")}}
                        for run, base in zip(ev.asset_rows("run"), ev.asset_rows("base"))]
            finally:
                lora.remove_adapter(ev.model, name)
            write_csv(path, rows)
        rows = read_csv(path)
        heldout = self.plan.heldout
        change = [heldout(r) - heldout({k[:-5]: v for k, v in r.items() if k.endswith("_base")}) for r in rows]
        return np.asarray(change, float).reshape(-1, len(TUNE_SEEDS))


def sweep_method(plan: Plan, method: str) -> dict:
    """The learning-rate axis, then the knob's at the picked learning rate, each extended while its best is at an
    end; returns {"lr", "knob", "value", "overrides", "picked_score", "trials", "axes"}."""
    fields, values = plan.knob_fields(method), plan.knob_values(method)
    default = knob_value(plan.base_configs[method], fields[0]) if fields else None
    budget = plan.budget * plan.sweep_steps / plan.steps if plan.budget else None
    tuner, trials, deltas = Tuner(plan, method), {}, {}

    def trial(lr, value, stage) -> str:
        name = f"lr{fmt(lr)}" + (f"-{fields[0].split('.')[-1]}{fmt(value)}" if fields else "")
        if name in trials:
            return name
        row = {"method": method, "stage": stage, "lr": lr, "knob": "/".join(fields) or "(none)", "value": value, "run": name}
        try:
            cfg = plan.config(method, plan.args.sweep_seed, setting(lr, fields, value), steps=plan.sweep_steps, sweep=True)
        except UsageError as err:
            trials[name] = {**row, "score": float("nan"), "state": f"invalid: {err}"}
            return name
        folder = plan.args.out / "sweep" / method / name
        status = train_run(cfg, folder, budget, f"sweep {method} {name}")
        trials[name] = {**row, "steps": status["steps"], "seconds": status["train_seconds"], "state": status["state"]}
        if status["state"] == "finished":
            deltas[name] = tuner.deltas(folder)
        return name

    def axis(label: str, grid: list, run, ladder=None) -> dict:
        """Trials along one axis until its best is strictly inside or it cannot extend; the axis's record."""
        grid = sorted(dict.fromkeys(grid))
        names = {v: run(v) for v in grid}
        for _ in range(MAX_EXTEND):
            best, _ = compare_trials({names[v]: deltas[names[v]] for v in grid if names[v] in deltas}, plan.higher_is_better)
            if best is None or inert(grid, names):  # a knob that does not act: no further value can change that
                break
            at = next(v for v in grid if names[v] == best)
            if grid[0] < at < grid[-1]:
                break
            nxt = beyond(grid, at == grid[0], ladder)
            if nxt is None or nxt in names:
                break
            names[nxt] = run(nxt)
            if names[nxt] not in deltas:  # refused by the config or failed: the grid ends here
                break
            grid = sorted([*grid, nxt])
        best, rows = compare_trials({names[v]: deltas[names[v]] for v in grid if names[v] in deltas}, plan.higher_is_better)
        pick = next((v for v in grid if names[v] == best), None)
        inside = pick is not None and grid[0] < pick < grid[-1]
        return {"knob": label, "values": grid, "pick": pick, "inside_grid": inside, "rows": rows, "names": names,
                "ties": [v for v in grid if rows.get(names[v], {}).get("tie")], "inert": inert(grid, names)}

    def inert(grid, names) -> bool:
        """Every value of the axis trained to the same held-out scores, asset for asset."""
        scored = [deltas[names[v]] for v in grid if names[v] in deltas]
        return len(scored) == len(grid) > 1 and all(np.array_equal(scored[0], d) for d in scored[1:])

    lr_axis = axis("lr", list(plan.sweep_lrs), lambda lr: trial(lr, default, "lr"), LR_LADDER)
    lr = lr_axis["pick"] if lr_axis["pick"] is not None else plan.base_configs[method].lr
    axes = [lr_axis]
    value = default
    if fields:
        knob_axis = axis("/".join(fields), [default, *values], lambda v: trial(lr, v, "knob"))
        axes.append(knob_axis)
        value = knob_axis["pick"] if knob_axis["pick"] is not None else default
    picked = trial(lr, value, "pick")  # already run (the knob axis's pick is at this lr) unless every trial failed
    _, rows = compare_trials(deltas, plan.higher_is_better)
    for name, t in trials.items():
        t.update(rows.get(name, {"score": float("nan"), "diff": float("nan"), "diff_se": float("nan"), "tie": False}))
    return {"lr": lr, "knob": "/".join(fields) or "(none)", "value": value, "overrides": setting(lr, fields, value),
            "picked_score": trials[picked]["score"], "trials": list(trials.values()),
            "axes": [{k: v for k, v in a.items() if k not in ("rows", "names")} for a in axes]}


PICKS_COLUMNS = ["method", "knob", "values", "pick", "inside_grid", "ties", "inert"]


def picks_rows(chosen: dict) -> list[dict]:
    """picks.csv: one row per method and swept axis (method, knob, values, pick, inside_grid, ties, inert)."""
    return [{"method": m, "knob": a["knob"], "values": " ".join(map(fmt, a["values"])), "pick": fmt(a["pick"]),
             "inside_grid": a["inside_grid"], "ties": " ".join(map(fmt, a["ties"])), "inert": a.get("inert", False)}
            for m, c in chosen.items() for a in c.get("axes", [])]


def run_sweep(plan: Plan) -> tuple[dict, list[dict]]:
    """Every method's sweep; writes ``sweep/sweep.csv`` (every trial), ``sweep/picks.csv`` and ``sweep/chosen.json``."""
    out, chosen, rows = plan.args.out, {}, []
    for m in plan.methods:
        chosen[m] = sweep_method(plan, m)
        rows += chosen[m]["trials"]
        log(f"[sweep {m}] picked {' '.join(chosen[m]['overrides'])} (held-out change {num(chosen[m]['picked_score'])})")
    (out / "sweep").mkdir(parents=True, exist_ok=True)
    write_csv(out / "sweep" / "sweep.csv", rows, list(dict.fromkeys(k for r in rows for k in r)))
    write_csv(out / "sweep" / "picks.csv", picks_rows(chosen), PICKS_COLUMNS)
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
