"""One protocol, every alignment method, one reward: the comparison of issue 14.

    python bench/compare_methods.py --reward geometry --methods all --seeds 2 --steps 40 --out outputs/cmp/geometry
    python bench/compare_methods.py --reward colorfulness --methods refl,nabla-r2d3 --seeds 3 --minutes 10 --sweep --out DIR
    python bench/compare_methods.py ... --resume          # the same command again: finished runs are skipped
    python bench/compare_methods.py ... --report-only     # the same command again: only the report is rewritten

Every method (``engine.align.methods.METHODS``, or the listed ones) trains with the same base (the
engine's default, ``checkpoints/tiny-base``), the same training prompts (``assets/prompts/train.txt``),
the same reward rig and the same budget: ``--steps`` optimiser steps and, with ``--minutes``, at most that
much training wall time per run (whichever comes first; evaluation time is not counted). Runs go
through the engine's own trainer (``engine.align.trainer.Trainer``) into ordinary run folders
``DIR/runs/<method>/seed<k>/``; the trainer evaluates the base and the run on the held-out prompts every
``eval_every`` steps and at the end (``engine.align.evaluate.RunEvaluator``). Every image the training
reward scores is counted (``DIR/runs/<method>/seed<k>.rewards.csv``). The base's held-out scores are sampled
once and shared by every run (``DIR/base_eval/``, keyed by everything they depend on).

``--sweep``: fair tuning. Every method gets the same sweep of 5 short runs on the training prompts (seed
``--sweep-seed``, ``--sweep-steps`` steps, no evaluation): 3 learning rates at the method's default
knobs, then, at the picked learning rate, the two other values of one knob of its own (``SWEEP_KNOBS``).
A setting is picked by its final training reward (mean batch reward of the last ``PICK_LAST`` steps,
never step 1, which is sampled before any update; ties: the earlier setting). The picked setting then runs with every seed.

Writes ``DIR/summary.csv`` (one row per method), ``DIR/report.md`` (the table, the paper's three claims
checked against the numbers) and plotly figures (``DIR/figures/*.html``; PNG too when kaleido is
installed). Randomness depends only on the seeds: the same command on the same ``--threads`` gives the
same numbers (wall-clock seconds aside, and the steps reached when ``--minutes`` stops a run).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from engine.align.config import RunConfig  # noqa: E402
from engine.align.methods import METHODS  # noqa: E402
from engine.align.trainer import write_csv  # noqa: E402
from engine.rewards import parse_ensemble  # noqa: E402

NABLA = "nabla-r2d3"
# Shipped runs are short (tens of steps), and an Adam step moves each weight by about lr, so 1e-4 would
# barely leave the base; 3e-3 is the top (ReFL at 1e-3 already lowered geometry on v1).
SWEEP_LRS = (3e-4, 1e-3, 3e-3)
# one knob per method (config field names), 3 values with the engine's default among them. A tuple of
# fields is set together (GRPO's symmetric clip range). A method missing here is swept over lr only.
# Nabla-R2D3's beta multiplies the raw reward gradient, so its values here are per unit of the reward's
# usual range (``value_range``; an ensemble's range-normalised terms count 1 per unit of weight) and are
# divided by that span: colorfulness (range 110) gets beta {2.73e3, 2.73e4, 2.73e5}, geometry {3e5, 3e6, 3e7}.
# Why so large (the paper's scripts use 1e5-5e7 too): the residual is c_j (eps - eps_ref) + g, and c_j is
# ~1.5 at most steps but ~1e3 at the last one, which every trajectory trains; the last step's target shift
# g/c_j is then tiny unless beta is huge, and its c_j^2-weighted term holds the shared LoRA near the base.
# Measured (v1 base, colorfulness, batch 2, 10 sampler steps, lr 1e-3, 10 steps): per-unit beta 3e3 and 3e5
# stayed at the base's rewards (66 and 70 at step 10), 3e6 climbed like ReFL (89 vs ReFL's 94 at step 10).
# Every other knob is scale-free (Adam's step ignores a gradient's scale; DDPO/GRPO/NFT normalise rewards).
SWEEP_KNOBS: dict[str, tuple[tuple[str, ...], tuple]] = {
    "nabla-r2d3": (("nabla.beta",), (3e5, 3e6, 3e7)),
    "refl": (("refl.first_fraction",), (0.5, 0.75, 0.9)),
    "draft": (("draft.k",), (1, 2, 4)),
    "alignprop": (("alignprop.k_max",), (2, 4, 8)),
    "ddpo": (("ddpo.clip_range",), (3e-5, 1e-4, 3e-4)),
    "grpo": (("grpo.clip_low", "grpo.clip_high"), (3e-5, 1e-4, 3e-4)),
    "diffusionnft": (("nft.beta",), (0.5, 1.0, 2.0)),
}
NABLA_BETA = 3e6  # the default beta per unit of reward range (the middle of the sweep's values)
PICK_LAST = 5  # the sweep's score: mean training reward of the last this-many steps
OWN_KEYS = {"method": "--methods", "reward": "--reward", "seed": "--seeds", "steps": "--steps"}  # never by --set
SUMMARY_COLUMNS = [
    "method", "n_seeds", "n_failed", "steps", "seconds", "reward_images",
    "final_reward_mean", "final_reward_std", "delta_reward_mean", "delta_reward_std",
    "steps_to_best_baseline", "seconds_to_best_baseline",
    "alignment_delta_mean", "alignment_delta_std", "category_acc_delta_mean", "category_acc_delta_std",
    "kid_vs_base_mean", "kid_vs_base_std", "diversity_delta_mean", "diversity_delta_std",
    "base_reward", "setting",
]


class UsageError(ValueError):
    """A bad argument: one message, exit status 2, nothing trained."""


class NothingToSummarise(RuntimeError):
    """Every run failed: exit status 1."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------- arguments
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python bench/compare_methods.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reward", required=True, help="a reward or ensemble spec, e.g. geometry or 'alignment:1,geometry:0.5'")
    p.add_argument("--methods", default="all", help=f"all, or a comma list of: {', '.join(METHODS)}")
    p.add_argument("--seeds", type=int, default=2, help="seeds 0..N-1 per method (default 2)")
    p.add_argument("--steps", type=int, default=RunConfig().steps, help="optimiser steps per run (default %(default)s)")
    p.add_argument("--minutes", type=float, help="also stop a run after this much training wall time")
    p.add_argument("--sweep", action="store_true", help="tune every method with the same small sweep first")
    p.add_argument("--sweep-steps", type=int, help="steps of each sweep run (default: max(2, steps // 4))")
    p.add_argument("--sweep-seed", type=int, default=1000, help="the sweep runs' seed (default 1000: none of the final seeds)")
    p.add_argument("--out", required=True, type=Path, help="the comparison folder")
    p.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                   help="any RunConfig field for every run, e.g. batch_size=2 eval_seeds=2 nabla.reg=0")
    p.add_argument("--reward-weights", nargs="*", action="extend", default=[], metavar="NAME=PATH",
                   help="local weights of real rewards (hpsv2=..., also scored by the evaluation)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (numbers are reproducible per thread count)")
    p.add_argument("--resume", action="store_true", help="continue the comparison in --out: finished runs are skipped")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite the summary, report, figures and samples sheet of the comparison in --out from its "
                        "finished runs (the same command as made it); trains nothing")
    p.add_argument("--plotlyjs", choices=("directory", "inline", "cdn"), default="directory",
                   help="how the HTML figures get plotly.js: one plotly.min.js beside them (default, opens offline), inside "
                        "each file, or from the CDN (small files, needs internet to view)")
    return p


def parse_methods(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise UsageError("--methods is empty; give all or a comma list, e.g. refl,nabla-r2d3.")
    if names == ["all"]:
        return list(METHODS)
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise UsageError(f"--methods: unknown method {unknown[0]!r}; choose all or from {', '.join(METHODS)}.")
    return list(dict.fromkeys(names))


def check_args(args) -> None:
    if args.seeds < 1:
        raise UsageError(f"--seeds {args.seeds}: must be >= 1 (the number of seeds per method).")
    if args.steps < 1:
        raise UsageError(f"--steps {args.steps}: must be >= 1 (optimiser steps per run).")
    if args.minutes is not None and not (math.isfinite(args.minutes) and args.minutes > 0):
        raise UsageError(f"--minutes {args.minutes}: must be > 0 (training wall time per run), or left out.")
    if args.threads < 1:
        raise UsageError(f"--threads {args.threads}: must be >= 1.")
    if args.sweep_steps is not None and args.sweep_steps < 2:
        raise UsageError(f"--sweep-steps {args.sweep_steps}: must be >= 2 (step 1's reward is sampled before any update, "
                         "so it cannot tell settings apart).")
    if args.sweep_seed < 0:
        raise UsageError(f"--sweep-seed {args.sweep_seed}: must be >= 0.")
    for item in args.set:
        key = item.partition("=")[0].strip()
        if key in OWN_KEYS:
            raise UsageError(f"--set {item}: {key} is set by the script's own {OWN_KEYS[key]}; leave it out of --set.")


def reward_weights(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise UsageError(f"--reward-weights {item!r}: expected NAME=PATH.")
        out[name.strip()] = str(Path(path.strip()).expanduser())
    return out


class Plan:
    """The comparison's settings, derived from the arguments, and every run's RunConfig."""

    def __init__(self, args):
        check_args(args)
        self.args = args
        self.methods = parse_methods(args.methods)
        self.seeds = list(range(args.seeds))
        self.steps = args.steps
        self.budget = args.minutes * 60.0 if args.minutes else None
        self.sweep_steps = args.sweep_steps or max(2, args.steps // 4)
        self.weights = reward_weights(args.reward_weights)
        self.sets = list(args.set)
        self.user_keys = {s.partition("=")[0].strip() for s in self.sets}
        self.heldout, self.higher_is_better, self.reward_span = heldout_reward(args.reward, self.weights)
        self.reward_terms = {name for name, _ in parse_ensemble(args.reward)}  # the spec is checked just above
        if args.sweep:
            for m in self.methods:
                clash = sorted(self.user_keys & {"lr", *SWEEP_KNOBS.get(m, ((),))[0]})
                if clash:
                    raise UsageError(f"--set {clash[0]}: --sweep tunes {clash[0]} for {m}; leave it out of --set or drop --sweep.")
        # a config per method with the script's defaults, checked before anything trains
        self.base_configs = {m: self.config(m, 0) for m in self.methods}
        self.eval_every = self.base_configs[self.methods[0]].eval_every

    def _defaults(self, method: str) -> list[str]:
        d = ["eval_at_end=true"]
        if "eval_every" not in self.user_keys:
            d.append(f"eval_every={max(1, self.steps // 5)}")
        if method == NABLA and "nabla.beta" not in self.user_keys:
            d.append(f"nabla.beta={self.per_unit(NABLA_BETA)!r}")
        return d

    def per_unit(self, beta: float) -> float:
        """A beta given per unit of reward range, for this reward (3 significant digits)."""
        return float(f"{beta / self.reward_span:.3g}")

    def knob_values(self, method: str) -> tuple:
        """The sweep's values of the method's knob for this reward."""
        values = SWEEP_KNOBS.get(method, ((), ()))[1]
        return tuple(self.per_unit(v) for v in values) if method == NABLA else values

    def config(self, method: str, seed: int, extra: list[str] = (), *, steps: int | None = None, sweep: bool = False) -> RunConfig:
        own = [f"method={method}", f"reward={self.args.reward}", f"seed={seed}", f"steps={steps or self.steps}"]
        sweep_sets = ["eval_every=0", "eval_at_end=false", "sample_every=0"] if sweep else []
        try:
            cfg = RunConfig().apply_overrides(own + self._defaults(method) + self.sets + sweep_sets + list(extra))
            cfg.reward_weights.update(self.weights)
            return cfg.validate()
        except ValueError as err:
            raise UsageError(f"{method}: {err}") from None

    def record(self) -> dict:
        a = self.args
        return {"reward": a.reward, "steps": a.steps, "sweep": a.sweep, "sweep_steps": self.sweep_steps if a.sweep else None,
                "sweep_seed": a.sweep_seed if a.sweep else None, "set": self.sets, "reward_weights": self.weights,
                "threads": a.threads, "methods": self.methods, "seeds": a.seeds, "minutes": a.minutes}


MUST_MATCH = ("reward", "steps", "sweep", "sweep_steps", "sweep_seed", "set", "reward_weights", "threads")


def prepare_out(plan: Plan) -> None:
    out, record = plan.args.out, plan.record()
    saved = out / "comparison.json"
    if plan.args.report_only and not saved.exists():
        raise UsageError(f"--report-only: {out} holds no comparison (no comparison.json); nothing to report.")
    if saved.exists():
        if not (plan.args.resume or plan.args.report_only):
            raise UsageError(f"{out} already holds a comparison; pass --resume to continue it, or choose another --out.")
        previous = json.loads(saved.read_text())
        diff = [k for k in MUST_MATCH if previous.get(k) != record[k]]
        if diff:
            raise UsageError(f"{out} holds a comparison made with other settings (differs in: {', '.join(diff)}: "
                             f"{', '.join(f'{k}={previous.get(k)!r}' for k in diff)}); resume with the same settings, "
                             "or choose another --out. Methods, seeds and --minutes may change.")
    elif out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} is not empty and holds no comparison; choose an empty or new --out folder.")
    if plan.args.report_only:
        return
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(saved, json.dumps(record, indent=2) + "\n")


# ---------------------------------------------------------------------------------------- held-out reward
def heldout_reward(spec: str, weights: dict[str, str]):
    """The trained reward from an eval.csv row: ``reward/<name>`` for a bare reward; for an ensemble the same
    weighted sum of range-normalised terms the trainer optimises (affine per term, so the mean over assets
    of the ensemble is this function of the per-term means), whether higher is better, and the reward's span
    (the usual range of a bare reward; the sum of |weights| of an ensemble's normalised terms). Also checks
    the spec can run and be evaluated."""
    from engine.align.evaluate import DEFAULT_REWARDS
    from engine.rewards import list_rewards, normalise

    try:
        terms = parse_ensemble(spec)
    except (ValueError, KeyError) as err:
        raise UsageError(f"--reward {spec!r}: {err}") from None
    infos = {i.name: i for i in list_rewards(weights)}
    missing = [f"{n}: {infos[n].detail.rstrip('.')}" for n, _ in terms if not infos[n].available]
    if missing:
        raise UsageError(f"--reward {spec!r} cannot run here: {'; '.join(missing)}.")
    scored = set(DEFAULT_REWARDS) | set(weights)
    unscored = [n for n, _ in terms if n not in scored]
    if unscored:
        raise UsageError(f"--reward {spec!r}: the evaluation does not score {unscored[0]!r}; give its weights with --reward-weights.")
    if len(terms) == 1 and ":" not in spec:
        name = terms[0][0]
        lo, hi = infos[name].value_range
        return (lambda row: float(row[f"reward/{name}"])), infos[name].higher_is_better, float(hi - lo)

    def ensemble(row) -> float:
        return float(sum(w * float(normalise(infos[n], float(row[f"reward/{n}"]))) for n, w in terms))
    return ensemble, True, float(sum(abs(w) for _, w in terms))


# ---------------------------------------------------------------------------------------- one run
class RewardCounter:
    """Counts the images the training reward scores (rollout scoring and every reward-gradient pass), by
    wrapping the trainer's reward path on this instance only."""

    def __init__(self, path):
        self.images = self.calls = 0
        score = path.score

        def counted(renders, prompts, cameras, *, views=None, **kw):
            B, V = renders.rgb.shape[:2]
            self.images += B * (views.shape[1] if views is not None else V)
            self.calls += 1
            return score(renders, prompts, cameras, views=views, **kw)
        path.score = counted


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _read_csv(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def run_is_done(status: dict | None, budget: float | None) -> bool:
    """Finished by its steps, failed (it would fail the same way again: delete its .status.json to retry),
    or stopped by a time budget at least as large as this one."""
    if not status:
        return False
    if status.get("state") == "failed" or status.get("stopped_by") == "steps":
        return True
    old = status.get("budget_seconds")
    return status.get("stopped_by") == "time" and budget is not None and old is not None and old >= budget


def train_run(config: RunConfig, folder: Path, budget: float | None, tag: str, eval_cache: Path | None = None) -> dict:
    """Trains (or resumes, or skips) one run folder; returns its status (also written beside it). ``eval_cache``:
    where the base's held-out scores are shared between runs (sampled once per evaluation setting)."""
    from engine.align.trainer import Trainer, TrainingError

    status_path = folder.parent / f"{folder.name}.status.json"
    counts_path = folder.parent / f"{folder.name}.rewards.csv"
    status = json.loads(status_path.read_text()) if status_path.exists() else None
    if run_is_done(status, budget):
        log(f"[{tag}] done before ({status.get('state')}, {status.get('steps')} steps): skipped")
        return {**status, "skipped": True}
    t0 = time.perf_counter()
    try:
        trainer = Trainer(config, folder, resume=folder.exists(), eval_cache=eval_cache)
    except (ValueError, FileNotFoundError) as err:  # e.g. the folder holds a run with other settings
        raise UsageError(f"{tag}: {err}") from None
    counter = RewardCounter(trainer.path)
    counts = [r for r in _read_csv(counts_path) if int(r["step"]) <= trainer.step]
    if trainer.step:
        log(f"[{tag}] resumed at step {trainer.step}")
    # counts so far (cumulative over resumes); unknown when the counts file lacks the resumed step
    last = counts[-1] if counts and int(counts[-1]["step"]) == trainer.step else None
    base_calls, base_images = (0, 0) if trainer.step == 0 else (int(last["reward_calls"]), int(last["reward_images"])) if last \
        else (None, None)
    stopped_by, error = None, None
    if trainer.step >= config.steps:
        stopped_by = "steps"
    elif budget is not None and trainer.wall >= budget:
        stopped_by = "time"
    else:
        try:
            for m in trainer.run():
                if base_images is not None:
                    counts.append({"step": m["step"], "reward_calls": base_calls + counter.calls,
                                   "reward_images": base_images + counter.images})
                    write_csv(counts_path, counts)
                log(f"[{tag}] step {m['step']}/{config.steps}  reward {m['reward_mean']:.4g}  train {m['wall_seconds']:.1f} s")
                if budget is not None and m["wall_seconds"] >= budget and m["step"] < config.steps:
                    trainer.request_stop()
                    stopped_by = "time"
        except (TrainingError, ValueError) as err:  # a non-finite loss, or a diverged model's non-finite splats
            error = f"{type(err).__name__}: {err}"
        if stopped_by is None and error is None:
            stopped_by = "steps"
    if error is None:
        try:
            _ensure_final_eval(trainer)
        except ValueError as err:
            error = f"evaluation failed: {err}"
    status = {"state": "failed" if error else "finished", "stopped_by": stopped_by, "error": error, "steps": trainer.step,
              "train_seconds": round(trainer.wall, 3), "budget_steps": config.steps, "budget_seconds": budget,
              "reward_images": int(counts[-1]["reward_images"]) if counts and int(counts[-1]["step"]) == trainer.step else None,
              "elapsed_seconds": round(time.perf_counter() - t0, 1)}
    _write_atomic(status_path, json.dumps(status, indent=2) + "\n")
    log(f"[{tag}] {status['state']}: {trainer.step} steps, {trainer.wall:.1f} s training" + (f" ({error})" if error else ""))
    return status


def _ensure_final_eval(trainer) -> None:
    """The base row and a run row at the final step in eval.csv (the trainer writes them unless a run was
    cut between its checkpoint and its evaluation, or eval_every is 0 and the base was never written)."""
    cfg = trainer.config
    if not (cfg.eval_at_end or cfg.eval_every):
        return
    path = trainer.out / "eval.csv"
    rows = _read_csv(path)
    have = {(int(float(r["step"])), r["label"]) for r in rows}
    todo = []
    if (0, "base") not in have:
        todo.append((0, "base", trainer.evaluator().base_metrics()))
    if trainer.step > 0 and (trainer.step, "run") not in have:
        todo.append((trainer.step, "run", trainer.evaluator().evaluate()))
    for step, label, metrics in todo:
        new = not path.exists()
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["step", "label", *metrics])
            if new:
                writer.writeheader()
            writer.writerow({"step": step, "label": label, **metrics})


# ---------------------------------------------------------------------------------------- the sweep
def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _setting(lr: float, fields: tuple[str, ...], value) -> list[str]:
    return [f"lr={lr!r}"] + [f"{f}={value!r}" for f in fields]


def sweep_method(plan: Plan, method: str) -> dict:
    """Five short runs (3 lrs at the default knob, then the knob's 2 other values at the picked lr); returns
    {"lr", "knob", "value", "overrides", "trials": [...]}."""
    fields, values = SWEEP_KNOBS.get(method, ((), ()))[0], plan.knob_values(method)
    default = _get(plan.base_configs[method], fields[0]) if fields else None
    values = tuple(dict.fromkeys((default, *values)))  # the default first: ties keep it
    budget = plan.budget * plan.sweep_steps / plan.steps if plan.budget else None
    trials = []

    def trial(lr, value, stage):
        name = f"lr{_fmt(lr)}" + (f"-{fields[0].split('.')[-1]}{_fmt(value)}" if fields else "")
        row = {"method": method, "stage": stage, "lr": lr, "knob": "/".join(fields) or "(none)", "value": value, "run": name}
        try:
            cfg = plan.config(method, plan.args.sweep_seed, _setting(lr, fields, value), steps=plan.sweep_steps, sweep=True)
        except UsageError as err:
            trials.append({**row, "score": float("nan"), "state": f"invalid: {err}"})
            return
        folder = plan.args.out / "sweep" / method / name
        status = train_run(cfg, folder, budget, f"sweep {method} {name}")
        rewards = [float(r["reward_mean"]) for r in _read_csv(folder / "metrics.csv")][:status["steps"]]
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
    return {"lr": lr, "knob": "/".join(fields) or "(none)", "value": value, "overrides": _setting(lr, fields, value),
            "picked_score": pick["score"] if pick else float("nan"), "trials": trials}


def read_sweep(out: Path) -> tuple[dict, list[dict]]:
    """A finished sweep's picks (``sweep/chosen.json``) and trials (``sweep/sweep.csv``), for --report-only."""
    try:
        chosen = json.loads((out / "sweep" / "chosen.json").read_text())
        trials = pd.read_csv(out / "sweep" / "sweep.csv").to_dict("records")
    except FileNotFoundError as err:
        raise UsageError(f"--report-only --sweep: {out} holds no finished sweep ({Path(err.filename).name} is missing).") from None
    return chosen, trials


def _get(cfg: RunConfig, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


# ---------------------------------------------------------------------------------------- reading runs
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


def _mean_std(values) -> tuple[float, float]:
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
    finals = {m: _mean_std([r["final"]["heldout"] for r in runs])[0] for m, (runs, _) in per_method.items() if runs}
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
            row["steps"] = _mean_std([s["steps"] for s in st])[0]
            row["seconds"] = _mean_std([s["train_seconds"] for s in st])[0]
            imgs = [s.get("reward_images") for s in st]
            row["reward_images"] = _mean_std(imgs)[0] if all(i is not None for i in imgs) else float("nan")
            for key, fn in (("final_reward", lambda r: r["final"]["heldout"]),
                            ("delta_reward", lambda r: r["final"]["heldout"] - r["base"]["heldout"]),
                            ("alignment_delta", lambda r: r["final"]["alignment"] - r["base"]["alignment"]),
                            ("category_acc_delta", lambda r: r["final"]["category_acc"] - r["base"]["category_acc"]),
                            ("kid_vs_base", lambda r: r["final"]["kid_vs_base"]),
                            ("diversity_delta", lambda r: r["final"]["diversity"] - r["base"]["diversity"])):
                row[f"{key}_mean"], row[f"{key}_std"] = _mean_std([fn(r) for r in runs])
            row["steps_to_best_baseline"], row["seconds_to_best_baseline"] = (
                reach(curves[m], target, higher) if gained else (float("nan"), float("nan")))
        row["base_reward"] = base["heldout"]
        row["setting"] = " ".join(chosen[m]["overrides"]) if m in chosen else ""
        rows.append(row)
    table = pd.DataFrame(rows).reindex(columns=SUMMARY_COLUMNS)
    info = {"per_method": per_method, "curves": curves, "base": base, "best_baseline": best_baseline, "target": target, "gained": gained,
            "notes": notes}
    return table, info


# ---------------------------------------------------------------------------------------- report
def _num(v, digits=4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return f"{v:.{digits}g}"


def _pm(mean, std) -> str:
    if not math.isfinite(mean):
        return "—"
    return _num(mean) if not math.isfinite(std) else f"{_num(mean)} ± {_num(std, 2)}"


def _signed(v, digits=4) -> str:
    return "—" if not math.isfinite(v) else f"{v:+.{digits}g}"


def claims(plan: Plan, table: pd.DataFrame, info: dict) -> list[str]:
    """The paper's three claims against the best baseline, each 'holds' / 'does not hold' with the numbers."""
    rows = {r["method"]: r for r in table.to_dict("records")}
    bb = info["best_baseline"]
    nab = rows.get(NABLA)
    if nab is None or not nab["n_seeds"] or bb is None:
        why = "nabla-r2d3 is not in this comparison" if NABLA not in plan.methods else (
            "nabla-r2d3 has no finished run" if not (nab and nab["n_seeds"]) else "there is no baseline with a finished run")
        return [f"Not tested: {why}."]
    b = rows[bb]
    higher = plan.higher_is_better
    better = (lambda x, y: x > y) if higher else (lambda x, y: x < y)
    out = []
    # 1. higher reward
    gap = nab["final_reward_mean"] - b["final_reward_mean"]
    spread = max((s for s in (nab["final_reward_std"], b["final_reward_std"]) if math.isfinite(s)), default=float("nan"))
    verdict = "holds" if better(nab["final_reward_mean"], b["final_reward_mean"]) else "does not hold"
    noise = f"; the gap is smaller than the seeds' std ({_num(spread, 2)})" if math.isfinite(spread) and abs(gap) < spread else ""
    out.append(f"**Higher reward: {verdict}.** Final held-out reward: nabla-r2d3 {_pm(nab['final_reward_mean'], nab['final_reward_std'])} "
               f"vs the best baseline, {bb}, {_pm(b['final_reward_mean'], b['final_reward_std'])} (gap {_signed(gap)}{noise}; "
               f"base {_num(info['base']['heldout'])}).")
    # 2. faster convergence
    ns, nsec = nab["steps_to_best_baseline"], nab["seconds_to_best_baseline"]
    bs, bsec = b["steps_to_best_baseline"], b["seconds_to_best_baseline"]
    target = _num(info["target"])
    if not info["gained"]:
        nab_gain = nab["delta_reward_mean"] * (1 if higher else -1)
        out.append(f"**Faster convergence: {'holds' if nab_gain > 0 else 'not testable here'}.** No baseline's final "
                   f"held-out reward beat the base's (best: {bb}, {target} vs base {_num(info['base']['heldout'])}), so there "
                   f"is no baseline gain to race to; nabla-r2d3's final reward is "
                   f"{'above the base' if nab_gain > 0 else 'not above the base either'} (Δ {_signed(nab['delta_reward_mean'])}).")
    elif not math.isfinite(ns):
        out.append(f"**Faster convergence: does not hold.** nabla-r2d3 never reached the best baseline's final reward ({target}) "
                   f"within {_num(nab['steps'])} steps ({_num(nab['seconds'], 3)} s); {bb} reached it at step {_num(bs)} "
                   f"({_num(bsec, 3)} s).")
    else:
        by_steps = "holds" if ns < bs else "does not hold"
        by_time = "holds" if math.isfinite(bsec) and nsec < bsec else "does not hold"
        out.append(f"**Faster convergence: {by_steps}** in optimiser steps, **{by_time}** in wall time. Steps (training seconds) "
                   f"to reach {bb}'s final reward {target}: nabla-r2d3 {_num(ns)} ({_num(nsec, 3)} s), {bb} {_num(bs)} "
                   f"({_num(bsec, 3)} s). Evaluated every {plan.eval_every} steps, so steps are known to that resolution.")
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
        parts.append(f"{label} {_signed(x)} vs {_signed(y)} ({'as good or better' if ok else 'worse'})")
    verdict = "holds" if known and wins == known else "does not hold"
    out.append(f"**Less forgetting: {verdict}** (nabla-r2d3 as good as or better than {bb} on {wins} of {known} measures): "
               f"{'; '.join(parts)}. A method that moves the reward less usually also forgets less; read this with the reward gap."
               + (" Alignment Δ is left out: alignment is part of the trained reward. Category accuracy comes from the same "
                  "evaluator, so training for alignment can raise it too." if trained else ""))
    return out


def write_report(plan: Plan, table: pd.DataFrame, info: dict, chosen: dict, fig_paths: list[str], png: bool,
                 sweep_rows: list[dict], sheet: Path | None = None) -> Path:
    a = plan.args
    cfg = plan.base_configs[plan.methods[0]]
    lines = [f"# Method comparison: reward `{a.reward}`", ""]
    budget = f"{plan.steps} optimiser steps" + (f" or {_num(a.minutes)} minutes of training wall time, whichever comes first"
                                                 if a.minutes else "")
    lines += [
        f"- Budget per run: {budget} (evaluation not counted); batch {cfg.batch_size} trajectories per step, "
        f"{cfg.sampler_steps} sampler steps, reward renders {cfg.render_resolution} px from {cfg.reward_views} views.",
        f"- Methods: {', '.join(plan.methods)}; seeds {', '.join(map(str, plan.seeds))}; torch threads {a.threads}.",
        f"- Base: `{cfg.model}` ({cfg.weights or 'the shipped checkpoints/tiny-base'}); training prompts: "
        f"{cfg.prompts or 'assets/prompts/train.txt'}.",
        f"- Held-out evaluation (engine.align.evaluate): {cfg.eval_prompts or 'assets/prompts/eval_held_out.txt'} × "
        f"{cfg.eval_seeds} seeds, every {cfg.eval_every} steps and at the end; the base evaluated the same way.",
        f"- Settings given to every run: {' '.join(plan.sets) or '(engine defaults)'}.",
        "- Command: `python bench/compare_methods.py " + " ".join(_argv_echo(a)) + "`",
        "",
    ]
    if a.sweep:
        lines += ["## Tuning (the same sweep for every method)", "",
                  f"Each method: {len(SWEEP_LRS)} learning rates ({', '.join(map(_fmt, SWEEP_LRS))}) at its default knobs, "
                  f"then at the picked learning rate the other values of one knob of its own; {plan.sweep_steps} steps per run, "
                  f"seed {a.sweep_seed}, no evaluation; picked by the final training reward (mean batch reward of the last "
                  f"{PICK_LAST} steps, step 1 excluded: it is sampled before any update; ties keep the earlier setting).", "",
                  "| method | swept | picked | training reward of the pick | trials (setting: score) |", "|---|---|---|---|---|"]
        for m in plan.methods:
            if m not in chosen:
                continue
            c = chosen[m]
            values = ", ".join(map(_fmt, plan.knob_values(m)))
            trials = "; ".join(f"lr {_fmt(t['lr'])}, {t['knob'].split('.')[-1]} {_fmt(t['value'])}: "
                               f"{_num(t['score']) if t['state'] == 'finished' else t['state']}"
                               for t in sweep_rows if t["method"] == m)
            lines.append(f"| {m} | lr {{{', '.join(map(_fmt, SWEEP_LRS))}}}, {c['knob']} {{{values}}} | "
                         f"lr {_fmt(c['lr'])}, {c['knob']} {_fmt(c['value'])} | {_num(c['picked_score'])} | {trials} |")
        lines.append("")
    base = info["base"]
    lines += ["## Results (held-out prompts, mean ± std over seeds)", "",
              "| method | final reward | Δ reward vs base | steps (and seconds) to reach the best baseline's final reward | "
              "alignment Δ | category acc Δ | KID vs base | diversity Δ |",
              "|---|---|---|---|---|---|---|---|",
              f"| base | {_num(base['heldout'])} | — | — | (alignment {_num(base['alignment'])}) | (category acc "
              f"{_num(base['category_acc'])}) | 0 | (diversity {_num(base['diversity'])}) |"]
    for r in table.to_dict("records"):
        if not r["n_seeds"]:
            lines.append(f"| {r['method']} | no finished run | | | | | | |")
            continue
        reach_ = "— (no gain)" if not info["gained"] else "never" if not math.isfinite(r["steps_to_best_baseline"]) else \
            f"{_num(r['steps_to_best_baseline'])} ({_num(r['seconds_to_best_baseline'], 3)} s)"
        lines.append(f"| {r['method']} | {_pm(r['final_reward_mean'], r['final_reward_std'])} | "
                     f"{_pm(r['delta_reward_mean'], r['delta_reward_std'])} | {reach_} | "
                     f"{_pm(r['alignment_delta_mean'], r['alignment_delta_std'])} | "
                     f"{_pm(r['category_acc_delta_mean'], r['category_acc_delta_std'])} | "
                     f"{_pm(r['kid_vs_base_mean'], r['kid_vs_base_std'])} | {_pm(r['diversity_delta_mean'], r['diversity_delta_std'])} |")
    bb = info["best_baseline"]
    lines += ["", f"Best baseline: {bb or '—'} (final held-out reward {_num(info['target'])}). \"Steps to reach\" is the first "
              f"evaluated step where the seed-mean held-out reward reaches it (seconds: training time at that step, seed mean); "
              "\"never\": not within the budget; \"— (no gain)\": no baseline ended above the base, so there is nothing to "
              "reach. Seconds are wall-clock and not reproducible; everything else is, for the "
              "same seeds and thread count."]
    lines += ["", "Steps and seconds trained, images scored by the training reward (seed means):", ""]
    for r in table.to_dict("records"):
        if r["n_seeds"]:
            lines.append(f"- {r['method']}: {_num(r['steps'])} steps, {_num(r['seconds'], 3)} s, "
                         f"{_num(r['reward_images'], 6)} reward images" + (f"; {r['n_failed']} seed(s) failed" if r["n_failed"] else ""))
    stopped = [(m, r["seed"]) for m, (runs, _) in info["per_method"].items() for r in runs if r["status"].get("stopped_by") == "time"]
    if stopped:
        lines.append(f"- Stopped by the time budget: {', '.join(f'{m} seed {s}' for m, s in stopped)}.")
    for m, (_, failed) in info["per_method"].items():
        for seed, st in failed:
            lines.append(f"- {m} seed {seed} failed: {st.get('error') or st.get('state')}")
    lines += ["", "## The paper's claims on this reward", ""]
    lines += [f"- {c}" for c in claims(plan, table, info)]
    lines += ["", "## Figures", ""]
    for f in map(Path, fig_paths):
        rel = f.relative_to(a.out).as_posix()
        lines.append(f"- [{f.stem}]({rel}) (interactive)")
        if png:
            lines += ["", f"  ![{f.stem}]({rel[:-len('.html')]}.png)", ""]
    lines.append("" if png else "\nPNG figures were not written: plotly needs kaleido and a Chrome/Chromium for static "
                                "images; the HTML figures hold the same plots.")
    if sheet is not None:
        lines += ["", "## Samples beside the base (the reward-hacking check)", "",
                  "The same 4 held-out prompts and seeds, drawn by the base and by each method's final weights (first "
                  "seed; 4 views, rendered colours above normals). Saturated noise, flattened or hollow objects, or "
                  "every prompt turning into the same thing are a hacked reward, whatever the table says.", "",
                  f"![samples]({sheet.relative_to(a.out).as_posix()})"]
    for n in info["notes"]:
        lines.append(f"\nNote: {n}")
    path = a.out / "report.md"
    _write_atomic(path, "\n".join(lines).rstrip() + "\n")
    return path


def _argv_echo(a) -> list[str]:
    parts = [f"--reward '{a.reward}'", f"--methods {a.methods}", f"--seeds {a.seeds}", f"--steps {a.steps}"]
    if a.minutes:
        parts.append(f"--minutes {_num(a.minutes)}")
    if a.sweep:
        parts.append(f"--sweep --sweep-steps {a.sweep_steps or max(2, a.steps // 4)} --sweep-seed {a.sweep_seed}")
    parts.append(f"--out {a.out}")
    if a.set:
        parts.append("--set " + " ".join(a.set))
    if a.reward_weights:
        parts.append("--reward-weights " + " ".join(a.reward_weights))
    parts.append(f"--threads {a.threads}")
    return parts


# ---------------------------------------------------------------------------------------- figures
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def _rgba(hex_colour: str, alpha: float) -> str:
    h = hex_colour.lstrip("#")
    return f"rgba({int(h[0:2], 16)}, {int(h[2:4], 16)}, {int(h[4:6], 16)}, {alpha})"


def figures(plan: Plan, info: dict) -> tuple[list[str], bool]:
    import plotly.graph_objects as go

    folder = plan.args.out / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    curves, base = info["curves"], info["base"]
    title = f"held-out reward ({plan.args.reward})"
    made = []
    for x, label, name in (("step", "optimiser step", "reward_vs_steps"), ("seconds", "training wall time (s)", "reward_vs_time")):
        fig = go.Figure()
        for i, (m, c) in enumerate(curves.items()):
            col = COLOURS[i % len(COLOURS)]
            c = c.dropna(subset=[x]).sort_values(x)
            std = c["heldout_std"].fillna(0.0)
            if (c["n"] > 1).any():
                fig.add_trace(go.Scatter(x=list(c[x]) + list(c[x])[::-1], y=list(c["heldout"] + std) + list(c["heldout"] - std)[::-1],
                                         fill="toself", fillcolor=_rgba(col, 0.18), line=dict(width=0), mode="lines", hoverinfo="skip",
                                         showlegend=False, legendgroup=m))
            fig.add_trace(go.Scatter(x=c[x], y=c["heldout"], mode="lines+markers", name=m, line=dict(color=col), legendgroup=m))
        fig.add_hline(y=base["heldout"], line_dash="dot", line_color="grey", annotation_text="base")
        fig.update_layout(title=f"{title} vs {label} (mean ± std over seeds)", xaxis_title=label, yaxis_title=title,
                          template="plotly_white")
        made.append((name, fig))
    fig = go.Figure()
    for i, (m, c) in enumerate(curves.items()):
        col = COLOURS[i % len(COLOURS)]
        c = c.sort_values("step")
        fig.add_trace(go.Scatter(x=c["alignment"], y=c["heldout"], mode="lines+markers", name=m, line=dict(color=col),
                                 text=[f"step {int(s)}" for s in c["step"]], legendgroup=m,
                                 marker=dict(size=[6] * (len(c) - 1) + [12])))
        last = c.iloc[-1]
        if last["n"] > 1:
            fig.add_trace(go.Scatter(x=[last["alignment"]], y=[last["heldout"]], mode="markers", showlegend=False, legendgroup=m,
                                     marker=dict(color=col, size=12),
                                     error_x=dict(type="data", array=[0 if math.isnan(last["alignment_std"]) else last["alignment_std"]]),
                                     error_y=dict(type="data", array=[0 if math.isnan(last["heldout_std"]) else last["heldout_std"]])))
    fig.add_trace(go.Scatter(x=[base["alignment"]], y=[base["heldout"]], mode="markers", name="base",
                             marker=dict(symbol="star", size=14, color="black")))
    fig.update_layout(title="reward vs text-object alignment<br><sup>held-out; each method from the base to its final "
                            "point, seed means</sup>", xaxis_title="alignment (evaluator cosine)", yaxis_title=title, template="plotly_white")
    made.append(("reward_vs_alignment", fig))
    png = importlib.util.find_spec("kaleido") is not None
    paths = []
    for name, fig in made:
        path = folder / f"{name}.html"
        fig.write_html(path, include_plotlyjs={"inline": True}.get(plan.args.plotlyjs, plan.args.plotlyjs))
        paths.append(str(path))
        if png:
            try:  # kaleido drives a Chrome/Chromium; without one the HTML figures still stand
                fig.write_image(folder / f"{name}.png")
            except Exception as e:  # noqa: BLE001 - kaleido raises several kinds for a missing browser
                log(f"PNG figures skipped: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
                png = False
    return paths, png


# ---------------------------------------------------------------------------------------- samples
SAMPLES_SCALE = 0.5  # strips at half size (64 px views): one sheet for 8 models stays ~1-2 MB


def samples_sheet(plan: Plan) -> Path | None:
    """The reward-hacking check, ``DIR/samples.png``: the base's sample strip beside every method's last one
    (the first seed with strips; the trainer draws the same 4 held-out prompts and seeds for all), one
    labelled column each, rendered colours above normals. None when no run drew samples (sample_every=0)."""
    from PIL import Image, ImageDraw

    columns = []
    for m in plan.methods:
        for seed in plan.seeds:
            strips = sorted((plan.args.out / "runs" / m / f"seed{seed}" / "samples").glob("step_*.png"))
            if strips:
                if not columns:
                    columns.append(("base", strips[0]))
                columns.append((f"{m} (step {int(strips[-1].stem.split('_')[-1])})", strips[-1]))
                break
    if not columns:
        return None
    images = []
    for _, path in columns:
        im = Image.open(path).convert("RGB")
        images.append(im.resize((round(im.width * SAMPLES_SCALE), round(im.height * SAMPLES_SCALE)), Image.LANCZOS))
    width, height, band, gap = max(i.width for i in images), max(i.height for i in images), 22, 6
    sheet = Image.new("RGB", (len(images) * (width + gap) - gap, height + band), "white")
    draw = ImageDraw.Draw(sheet)
    for k, ((label, _), im) in enumerate(zip(columns, images)):
        draw.text((k * (width + gap) + 4, 5), label, fill="black")
        sheet.paste(im, (k * (width + gap), band))
    path = plan.args.out / "samples.png"
    tmp = path.with_suffix(".tmp.png")
    sheet.save(tmp, optimize=True)
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------------- main
def tune_and_train(plan: Plan) -> tuple[dict, list[dict]]:
    """The sweep (with --sweep), then every method's runs at its pick; returns the picks and the sweep's trials."""
    args, chosen, sweep_rows = plan.args, {}, []
    if args.sweep:
        for m in plan.methods:
            chosen[m] = sweep_method(plan, m)
            sweep_rows += chosen[m]["trials"]
            log(f"[sweep {m}] picked {' '.join(chosen[m]['overrides'])} (training reward {_num(chosen[m]['picked_score'])})")
        (args.out / "sweep").mkdir(parents=True, exist_ok=True)
        pd.DataFrame(sweep_rows).to_csv(args.out / "sweep" / "sweep.csv", index=False)
        _write_atomic(args.out / "sweep" / "chosen.json",
                      json.dumps({m: {k: v for k, v in c.items() if k != "trials"} for m, c in chosen.items()}, indent=2) + "\n")
    for m in plan.methods:
        extra = chosen[m]["overrides"] if m in chosen else []
        for seed in plan.seeds:
            train_run(plan.config(m, seed, extra), args.out / "runs" / m / f"seed{seed}", plan.budget, f"{m} seed{seed}",
                      eval_cache=args.out / "base_eval")
    return chosen, sweep_rows


def run(args) -> pd.DataFrame:
    torch.set_num_threads(args.threads)
    plan = Plan(args)
    prepare_out(plan)
    t0 = time.perf_counter()
    if args.report_only:
        chosen, sweep_rows = read_sweep(args.out) if args.sweep else ({}, [])
    else:
        chosen, sweep_rows = tune_and_train(plan)
    table, info = summarise(plan, chosen)
    table.to_csv(args.out / "summary.csv", index=False)
    figs, png = figures(plan, info)
    sheet = samples_sheet(plan)
    report = write_report(plan, table, info, chosen, figs, png, sweep_rows, sheet)
    shown = table[["method", "n_seeds", "steps", "final_reward_mean", "final_reward_std", "delta_reward_mean",
                   "steps_to_best_baseline", "alignment_delta_mean", "kid_vs_base_mean", "diversity_delta_mean"]]
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"wrote {args.out / 'summary.csv'}, {report}, {len(figs)} figures in {time.perf_counter() - t0:.0f} s")
    return table


def main(argv=None) -> None:
    p = parser()
    args = p.parse_args(argv)
    try:
        run(args)
    except UsageError as err:
        p.exit(2, f"error: {err}\n")
    except NothingToSummarise as err:
        p.exit(1, f"error: {err}\n")


if __name__ == "__main__":
    main()
