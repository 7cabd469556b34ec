"""Held-out evaluations of the Compare tab's models as server jobs, cached beside each run.

*Evaluate* queues one job per chosen adapter on its own JobQueue (app/jobs.py): one evaluation at a time, and
none while a finetune of the Finetune tab's queue trains or waits; a finetune that starts during an evaluation
waits for it (app.jobs.CPU: the two queues' heavy work holds one slot), so two jobs never split the CPU. A job
loads a fresh base (generation keeps the shared one), loads the adapter, and runs
``engine.align.evaluate.RunEvaluator`` with :data:`SETTINGS`: the 24 held-out prompts, one seed, 10 sampler steps.
The base's scores are cached on disk (``base_cache``), so only the first evaluation of a server samples them.

The result (the base's and the adapter's metrics, with the paired deltas and their standard errors) is written
atomically to ``compare_eval.json``: in the run's folder for runs made here, under ``<runs dir>/../evaluations/``
for shipped runs and uploads (the shipped folders stay as shipped). It carries a key (the adapter's files and the
settings), so a second click on an unchanged adapter reads the file instead of sampling again.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from engine.align.evaluate import EvalSettings, RunEvaluator
from engine.core.io import atomic_write_json
from engine.generate import load_model
from engine.models import lora

from .catalogue import Entry, catalogue
from .finetunes import QUEUE  # the Finetune tab's one queue
from .jobs import CPU, Job, JobQueue

RESULT_FILE = "compare_eval.json"
PROMPTS: list[str] | None = None  # None: the 24 held-out prompts (assets/prompts/eval_held_out.txt)
SEEDS, STEPS = [0], 10  # 1 seed, 10 sampler steps (the CPU cost: see the README's Compare tab)


def settings() -> EvalSettings:
    """The studio's held-out settings (cheap for a CPU; the engine's default is 2 seeds and 20 steps)."""
    extra = {"prompts": list(PROMPTS)} if PROMPTS else {}
    return EvalSettings(seeds=list(SEEDS), steps=STEPS, **extra)


def describe_settings(s: EvalSettings, short: bool = False) -> str:
    if short:
        return f"{len(s.prompts)} prompts × {len(s.seeds)} seed{'s' * (len(s.seeds) > 1)}, {s.steps} steps"
    return f"{len(s.prompts)} held-out prompts × {len(s.seeds)} seed(s), {s.steps} steps, {s.resolution} px"


def evaluations_dir() -> Path:
    return catalogue().runs_dir.parent / "evaluations"


def result_path(entry: Entry) -> Path:
    """Where ``entry``'s evaluation is kept: its run folder for runs made here, else the evaluations folder."""
    if entry.adapter is None:
        raise ValueError("The base is what every run is measured against; choose a LoRA to evaluate.")
    if entry.kind == "run" and entry.run is not None:
        return entry.run / RESULT_FILE
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", entry.label).strip("-.")
    return evaluations_dir() / slug / RESULT_FILE


def cache_key(entry: Entry, s: EvalSettings) -> str:
    """A digest of what the result depends on: the adapter's files and the settings."""
    h = hashlib.sha256()
    for name in (lora.CONFIG_FILE, lora.WEIGHTS_FILE):
        h.update(name.encode())
        h.update((entry.adapter / name).read_bytes())
    h.update(json.dumps(asdict(s), sort_keys=True, default=str).encode())
    h.update(torch.__version__.encode())
    return h.hexdigest()[:24]


def read_result(entry: Entry, s: EvalSettings | None = None) -> dict | None:
    """The stored evaluation of ``entry``; with ``s``, only when it is of the adapter as it is now and of ``s``."""
    try:
        data = json.loads(result_path(entry).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("run"), dict):
        return None
    if s is not None:
        try:
            if data.get("key") != cache_key(entry, s):
                return None
        except OSError:
            return None
    return data


class Evaluations:
    """Evaluation jobs: a JobQueue whose work is one adapter's held-out evaluation."""

    def __init__(self, make_model: Callable[[], object] | None = None, busy: Callable[[], str | None] | None = None):
        self._make_model = make_model or (lambda: load_model("tiny"))
        self._busy = busy or _finetune_busy
        self.queue = JobQueue(self._evaluate, quiet=(ValueError, FileNotFoundError))
        self.sampled = 0  # sampling passes run (tests: a cached result samples nothing)

    @staticmethod
    def job_name(entry: Entry) -> str:
        return f"evaluate {entry.label}"

    def submit(self, entry: Entry) -> Job | None:
        """Queues ``entry``'s evaluation; None when its stored result is current (nothing to do). A click while
        its job waits or runs returns that job."""
        s = settings()
        path = result_path(entry)
        if read_result(entry, s) is not None:
            return None
        known = self.queue.get(self.job_name(entry))
        if known is not None and known.live:
            return known
        return self.queue.submit(Job(self.job_name(entry), info={"entry": entry, "settings": s, "path": path,
                                                                 "phase": "waiting in line"}))

    def job(self, entry: Entry) -> Job | None:
        return self.queue.get(self.job_name(entry))

    def _evaluate(self, job: Job) -> str:
        entry, s, path = job.info["entry"], job.info["settings"], job.info["path"]
        while (other := self._busy()) and not job.stopping:  # one job on the CPU at a time
            job.info["phase"] = f"waiting for the finetune {other} to end"
            time.sleep(1.0)
        if job.stopping or not CPU.acquire(job):  # a finetune that started meanwhile holds the cores
            return "stopped"
        try:
            return self._evaluate_holding(job, entry, s, path)
        finally:
            CPU.release()

    def _evaluate_holding(self, job: Job, entry: Entry, s: EvalSettings, path: Path) -> str:
        job.state, job.started = "running", time.time()
        job.info["phase"] = "loading the base and the adapter"
        try:
            key = cache_key(entry, s)
            model = self._make_model().eval().requires_grad_(False)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a plain peft upload warns that its base is unknown
                name = lora.load_adapter(model, entry.adapter, "evaluated", activate=False)
        except (OSError, ValueError) as err:  # its reason in words, without the server's paths
            raise ValueError(_plain(err, entry)) from None
        job.info["phase"] = f"the base model (sampled once, then read from its cache): {describe_settings(s)}"
        t0 = time.perf_counter()
        evaluator = RunEvaluator(model, s, base_cache=evaluations_dir() / "base")
        base_seconds = time.perf_counter() - t0
        if job.stopping:
            return "stopped"
        job.info["phase"] = f"{entry.label}: {describe_settings(s)}"
        lora.use_adapter(model, name)
        t1 = time.perf_counter()
        metrics = evaluator.evaluate()
        self.sampled += 1
        seconds = time.perf_counter() - t1
        atomic_write_json(path, {"key": key, "label": entry.label, "settings": {**asdict(s), "prompts": len(s.prompts)},
                                 "base": evaluator.base_metrics(), "run": metrics, "seconds": round(seconds, 2),
                                 "base_seconds": round(base_seconds, 2), "evaluated": time.time()})
        job.info["phase"] = f"done in {seconds + base_seconds:.0f} s"
        return "finished"


def _plain(err: Exception, entry: Entry) -> str:
    text = str(err)
    for path, words in ((entry.adapter, f"the adapter of {entry.label}"), (entry.run, entry.label)):
        if path is not None:
            text = text.replace(str(path.resolve()), words).replace(str(path), words)
    return text


def _finetune_busy() -> str | None:
    """The finetune that trains or waits now, if any (app.finetune's queue)."""
    job = QUEUE.current() or next(iter(QUEUE.waiting()), None)
    return job.name if job is not None else None


EVALUATIONS = Evaluations()


def status_line(entry: Entry, s: EvalSettings | None = None) -> str:
    """One line on ``entry``'s evaluation: in line, running (what, for how long), failed (why), or its result."""
    job = EVALUATIONS.job(entry)
    if job is not None and job.live:
        place = EVALUATIONS.queue.position(job.name)
        if job.state == "queued":
            return f"{entry.label}: queued ({place} in line)"
        since = time.time() - (job.started or job.submitted)
        return f"{entry.label}: {job.info.get('phase', job.state)} ({since:.0f} s)"
    if job is not None and job.state == "failed":
        return f"{entry.label}: evaluation failed: {job.reason}"
    if job is not None and job.state in ("stopped", "withdrawn"):
        return f"{entry.label}: evaluation {job.state}"
    found = read_result(entry, s or settings())
    if found is not None:
        when = time.strftime("%b %d %H:%M", time.localtime(found.get("evaluated", 0)))
        return f"{entry.label}: evaluated {when} ({found.get('seconds', 0):.0f} s for the adapter)"
    return f"{entry.label}: not evaluated here yet"
