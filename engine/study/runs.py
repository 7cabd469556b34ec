"""One budgeted run of the study: trained (or resumed, or skipped) through the engine's trainer into an ordinary
run folder, stopped by its steps or a wall-clock budget, with the images its training reward scored counted.

Beside the run folder ``<name>/`` it writes ``<name>.status.json`` (finished / failed, why it stopped, steps,
training seconds, reward images) and ``<name>.rewards.csv`` (cumulative reward calls and images per step).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..align.config import RunConfig
from ..align.run_folder import read_csv, write_csv
from ..core.io import atomic_write_json
from .fmt import log
from .plan import UsageError


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
    """Trains (or resumes, or skips) one run folder; returns its status (also written beside it). ``budget``:
    training wall seconds (None: steps only). ``eval_cache``: where the base's held-out scores are shared
    between runs (sampled once per evaluation setting)."""
    from ..align.trainer import Trainer, TrainingError

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
    counter = trainer.path  # counts its reward calls and images scored
    counts = [r for r in read_csv(counts_path) if int(r["step"]) <= trainer.step]
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
            ensure_final_eval(trainer)
        except ValueError as err:
            error = f"evaluation failed: {err}"
    status = {"state": "failed" if error else "finished", "stopped_by": stopped_by, "error": error, "steps": trainer.step,
              "train_seconds": round(trainer.wall, 3), "budget_steps": config.steps, "budget_seconds": budget,
              "reward_images": int(counts[-1]["reward_images"]) if counts and int(counts[-1]["step"]) == trainer.step else None,
              "elapsed_seconds": round(time.perf_counter() - t0, 1)}
    atomic_write_json(status_path, status)
    log(f"[{tag}] {status['state']}: {trainer.step} steps, {trainer.wall:.1f} s training" + (f" ({error})" if error else ""))
    return status


def ensure_final_eval(trainer) -> None:
    """The base row and a run row at the final step in eval.csv (the trainer writes them unless a run was
    cut between its checkpoint and its evaluation, or eval_every is 0 and the base was never written), with their
    per-asset scores, through the trainer's own recorder (Trainer.record_eval)."""
    cfg = trainer.config
    if not (cfg.eval_at_end or cfg.eval_every):
        return
    have = {(int(float(r["step"])), r["label"]) for r in trainer.folder.eval_rows()}
    if (0, "base") not in have:
        trainer.record_eval("base")
    if trainer.step > 0 and (trainer.step, "run") not in have:
        trainer.record_eval("run")
