"""The server's finetunes as jobs (app/jobs.py's JobQueue): requested runs wait in one line and train one at a
time; a job does not belong to a page.

A job goes on when the page that started it is closed or reloaded; any page (any browser) can watch it, stop
it or resume it. Its state is also written into its run folder (``status.json``: state, reason, steps,
times, the server's pid), so the runs list and a restarted server know a run that was cut off: a
``running`` status that no job of this server trains reads as ``killed``, and resumes from its last
checkpoint. Each job trains its own freshly loaded base, so generation (the catalogue's shared model) keeps
serving meanwhile.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

from engine.align.config import RunConfig
from engine.align.run_folder import RunFolder
from engine.align.trainer import Trainer, TrainingError
from engine.core.io import atomic_write_json
from engine.generate import load_model

from .jobs import CPU, LIVE, Job, JobQueue


class Finetunes:
    """Finetune jobs: a JobQueue whose work is a Trainer run into a run folder."""

    def __init__(self, make_model: Callable[[], object] | None = None):
        self._make_model = make_model
        self.queue = JobQueue(self._train, quiet=(ValueError, FileNotFoundError, TrainingError))

    def submit(self, config: RunConfig, out: Path, *, resume: bool = False) -> Job:
        """Queues a run into ``out`` (``resume``: continue that run folder from its checkpoint)."""
        return self.queue.submit(Job(Path(out).name, info={"config": config.validate(), "out": Path(out), "resume": resume}))

    def _train(self, job: Job) -> str:
        if not CPU.acquire(job):  # an evaluation holds the cores; stopped while it waited
            return "withdrawn"
        try:
            return self._train_holding(job)
        finally:
            CPU.release()

    def _train_holding(self, job: Job) -> str:
        cfg, folder = job.info["config"], RunFolder(job.info["out"])
        trainer = Trainer(cfg, folder.path, resume=job.info["resume"],
                          model=self._make_model() if self._make_model else None)
        job.on_stop = trainer.request_stop
        if job.stopping:  # stopped while it loaded
            trainer.request_stop()
        job.step, job.state = trainer.step, ("stopping" if job.stopping else "running")
        job.info["from_step"] = trainer.step  # where this job began (a resumed run: its checkpoint's step)
        job.started = job.started or time.time()
        write_status(folder, job)
        try:
            for metrics in trainer.run():  # run() saves checkpoint + adapter on the way out (end or stop)
                job.step = int(metrics["step"])
                write_status(folder, job)
            job.state = "finished" if trainer.step >= cfg.steps else "stopped"
            return job.state
        except BaseException as err:
            job.state, job.reason = "failed", str(err)
            raise
        finally:
            job.ended = time.time()
            write_status(folder, job)


def write_status(folder: RunFolder, job: Job) -> None:
    cfg = job.info["config"]
    atomic_write_json(folder.status_file, {
        "state": job.state, "reason": job.reason, "steps": job.step, "planned_steps": cfg.steps, "method": cfg.method,
        "reward": cfg.reward, "submitted": job.submitted, "started": job.started, "ended": job.ended,
        "from_step": job.info.get("from_step"), "pid": os.getpid()})


def job_status(job: Job) -> dict:
    cfg = job.info["config"]
    return {"state": job.state, "reason": job.reason, "steps": job.step, "planned_steps": cfg.steps,
            "method": cfg.method, "reward": cfg.reward, "submitted": job.submitted, "started": job.started,
            "ended": job.ended, "from_step": job.info.get("from_step")}


def read_status(folder: str | Path, queue: JobQueue | None = None) -> dict:
    """A run's state: its live job's when this server has one, else its status.json, where a live state that no
    job of this server trains reads as ``killed`` (its server was stopped or killed); {} without a status."""
    folder = RunFolder(folder)
    job = queue.get(folder.path.name) if queue is not None else None
    if job is not None and job.live:
        return job_status(job)
    try:
        status = json.loads(folder.status_file.read_text())
    except (OSError, ValueError):
        return {}
    if status.get("state") in LIVE:
        status = {**status, "state": "killed", "reason": "the server stopped while it trained; resume it"}
    return status


FINETUNES = Finetunes(lambda: load_model("tiny"))  # the server's one line; its own fresh base per run (the shared Pool keeps serving)
QUEUE = FINETUNES.queue
