"""The Finetune tab's status line of a run, in words: what it trains, where it stands (waiting, starting, step i/N
with the training time per step and the time left), its latest held-out change from the base with the 95%
interval (app/heldout.py), the training reward's trend, and where its adapter is listed."""

from __future__ import annotations

import time

import pandas as pd

from engine.align.config import RunConfig
from engine.prompts import EVAL_PROMPTS, read_prompts

from . import heldout
from .catalogue import _method_title as title
from .catalogue import catalogue, display_name
from .finetunes import QUEUE


def heldout_size(cfg: RunConfig) -> str:
    try:
        n = len(read_prompts(cfg.eval_prompts, EVAL_PROMPTS))
    except (OSError, ValueError):
        return ""
    return f"{n} prompts × {cfg.eval_seeds} seeds"


def _fmt_seconds(s: float) -> str:
    s = max(0, int(round(s)))
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


def _head(status: dict, cfg: RunConfig | None) -> str:
    started = status.get("started") or status.get("submitted")
    when = f", started {time.strftime('%H:%M', time.localtime(started))}" if started else ""
    prompts = ""
    if cfg is not None:
        prompts = " on the built-in training prompts" if not cfg.prompts else f" on {_count(cfg.prompts)} prompts of your own"
    return (f"{title(status.get('method', ''))} on {status.get('reward', '?')}, {status.get('planned_steps', '?')} steps"
            f"{prompts}{when}.")


def _count(path: str) -> int | str:
    try:
        return len(read_prompts(path))
    except (OSError, ValueError):
        return "your"


def _adapter_words(name: str) -> str:
    try:
        shown = display_name(catalogue().get(f"run: {name}"))
    except (KeyError, ValueError):
        return "The adapter is saved with the run."
    return f"The adapter is in the Generate and Compare lists as **{shown}**; its zip is below."


def status_line(name: str, status: dict, rows: list[dict], cfg: RunConfig | None = None,
                 evals: pd.DataFrame | None = None) -> str:
    state, steps, planned = status.get("state", "unknown"), len(rows), status.get("planned_steps", "?")
    head = _head(status, cfg)
    if state == "queued":
        return f"{head}\n\n**Waiting in line**: number {QUEUE.position(name)}. It starts when the run ahead of it ends."
    if state == "starting":
        return f"{head}\n\n**Starting**: loading the base model and drawing the 'before' samples…"
    checks = cfg is not None and cfg.eval_every > 0
    if state in ("running", "stopping") and not rows:
        first = (f"scoring the base on the held-out prompts ({heldout_size(cfg)}), then step 1…"
                 if checks and (evals is None or evals.empty) else "step 1 running…")
        return f"{head}\n\n**Starting**: {first}" + (" (stopping after it)" if state == "stopping" else "")
    if not rows:
        return f"{head}\n\n**{state.capitalize()}**" + (f": {status['reason']}" if status.get("reason") else ".")
    last, first = rows[-1], rows[0]
    trend = (f"Training reward (batch of {cfg.batch_size if cfg else '?'}, noisy): {first['reward_mean']:.4g} at step 1 → "
             f"{last['reward_mean']:.4g} at step {int(last['step'])}.")
    held = heldout.summary(cfg.reward, evals, *_heldout_counts(cfg)) if cfg is not None and evals is not None else ""
    if not held and checks:
        held = f"Held-out check: the first comparison with the base comes at step {cfg.eval_every}."
    if state in ("running", "stopping"):
        per_step = last["wall_seconds"] / max(1, last["step"])
        left = ""
        if isinstance(planned, int) and status.get("started") and status.get("from_step") is not None:
            done_here = int(last["step"]) - int(status["from_step"])
            if done_here > 0:  # wall clock since this job began: held-out checks and samples included
                left = f" · about {_fmt_seconds((time.time() - status['started']) / done_here * (planned - last['step']))} left"
        return (f"{head}\n\n**Step {int(last['step'])}/{planned}** · {per_step:.1f} s per training step (checks and samples "
                f"not counted){left}" + (" · **stopping after this step**" if state == "stopping" else "")
                + f"\n\n{held} {trend}")
    how = {"finished": "Run finished", "stopped": f"Run stopped at step {steps}/{planned}",
           "killed": f"Run cut off at step {steps}/{planned} (the server stopped)",
           "failed": "Run failed"}.get(state, f"Run {state}")
    reason = f" ({status['reason']})" if status.get("reason") and state == "failed" else ""
    more = " Resume continues it from its last checkpoint." if state in ("stopped", "killed", "failed") else ""
    return f"{head}\n\n**{how}.**{reason} {held} {trend} {_adapter_words(name)}{more}"


def _heldout_counts(cfg: RunConfig) -> tuple[int | None, int | None]:
    try:
        return len(read_prompts(cfg.eval_prompts, EVAL_PROMPTS)), cfg.eval_seeds
    except (OSError, ValueError):
        return None, None
