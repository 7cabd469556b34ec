"""Background jobs of the studio's tabs: who runs what, who waits, and Stop.

Two shapes, one :class:`Job`:

* :class:`JobQueue` (Finetune): jobs of the server, not of a page. Requests wait in one line and a worker
  thread runs them one at a time in order (a finetune takes both cores); any page may watch, stop or
  withdraw one, and a job goes on when the page that started it closes.
* :class:`JobBoard` (Theory): jobs that run inside a page's own streaming handler, listed while they run;
  only the session that started one can stop it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

log = logging.getLogger(__name__)
LIVE = ("queued", "starting", "running", "stopping")


@dataclass(eq=False)
class Job:
    """One piece of background work: its state, and the stop flag its work checks between steps."""

    name: str
    session: str | None = None
    on_stop: Callable[[], None] | None = None  # called once by request_stop (e.g. a trainer's own stop)
    info: dict = field(default_factory=dict)  # what the work needs and what the tab shows
    state: str = "queued"  # queued | starting | running | stopping, then the work's end state, or withdrawn
    reason: str = ""  # why it failed
    step: int = 0
    submitted: float = field(default_factory=time.time)
    started: float | None = None
    ended: float | None = None
    stop_flag: threading.Event = field(default_factory=threading.Event)

    @property
    def live(self) -> bool:
        return self.state in LIVE

    @property
    def stopping(self) -> bool:
        return self.stop_flag.is_set()

    def request_stop(self) -> None:
        if not self.stop_flag.is_set():
            self.stop_flag.set()
            if self.on_stop is not None:
                self.on_stop()


class JobQueue:
    """Server jobs run one at a time in order by one worker thread. ``work(job)`` trains (or whatever the job
    is), updates ``job.step``, honours ``job.stopping`` and returns the end state ("finished", "stopped", ...);
    an exception makes it "failed" with the message as its reason (a traceback in the log only for faults
    that are not ``quiet``: the job's own errors, e.g. a bad config, are one line)."""

    def __init__(self, work: Callable[[Job], str], quiet: tuple[type[BaseException], ...] = (ValueError,)):
        self._run, self._quiet = work, quiet
        self._cond = threading.Condition()  # re-entrant: the public methods call each other under it
        self._queue: list[Job] = []
        self._current: Job | None = None
        self._recent: dict[str, Job] = {}  # ended jobs of this server, by name
        self._worker: threading.Thread | None = None

    def submit(self, job: Job) -> Job:
        with self._cond:
            known = self.get(job.name)
            if known is not None and known.live:
                raise ValueError(f"{job.name} is already {known.state}.")
            self._recent.pop(job.name, None)
            self._queue.append(job)
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._work, name="job-worker", daemon=True)
                self._worker.start()
            self._cond.notify_all()
        return job

    def stop(self, name: str) -> tuple[Job | None, str]:
        """Asks a running job to stop after its current step, or withdraws a waiting one: (the job or None,
        "stopping" | "withdrawn" | its state when it has ended | "unknown")."""
        with self._cond:
            job = self.get(name)
            if job is None:
                return None, "unknown"
            if not job.live:
                return job, job.state
            if job.state == "queued":
                self._queue.remove(job)
                job.state, job.ended = "withdrawn", time.time()
                self._recent[name] = job
                self._cond.notify_all()
                return job, "withdrawn"
            job.state = "stopping"
        job.request_stop()
        return job, "stopping"

    def get(self, name: str) -> Job | None:
        with self._cond:
            if self._current is not None and self._current.name == name:
                return self._current
            return next((j for j in self._queue if j.name == name), None) or self._recent.get(name)

    def forget(self, name: str) -> None:
        """Drops an ended job from memory (its record, e.g. a run folder's status, is the truth after that)."""
        with self._cond:
            self._recent.pop(name, None)

    def current(self) -> Job | None:
        return self._current

    def waiting(self) -> list[Job]:
        with self._cond:
            return list(self._queue)

    def position(self, name: str) -> int | None:
        """1 for the first in line, 2 for the next, ...; 0 while it runs; None when not live."""
        with self._cond:
            if self._current is not None and self._current.name == name:
                return 0
            names = [j.name for j in self._queue]
            return names.index(name) + 1 if name in names else None

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Blocks until nothing waits or runs (tests, shutdown)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and self._current is None, timeout)

    def _work(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._queue))
                job = self._queue.pop(0)
                self._current, job.state = job, "starting"
            try:
                job.state = self._run(job)
            except self._quiet as err:  # the job's own problem: one line
                job.state, job.reason = "failed", str(err)
                log.warning("job %s failed: %s", job.name, err)
            except Exception as err:  # a fault: the whole story in the log
                job.state, job.reason = "failed", f"{type(err).__name__}: {err}"
                log.exception("job %s failed", job.name)
            finally:
                job.ended = time.time()
                with self._cond:
                    self._current = None
                    self._recent[job.name] = job
                    self._cond.notify_all()


class Slot:
    """The CPU-heavy part of server jobs from different queues, one at a time: a finetune and a held-out
    evaluation would each take both cores and split them. A job waits for the slot between checks of its stop flag."""

    def __init__(self):
        self._lock = threading.Lock()
        self.holder: Job | None = None

    def acquire(self, job: Job, poll: float = 0.5) -> bool:
        """Waits for the slot; False when ``job`` was asked to stop first (it then holds nothing)."""
        while not self._lock.acquire(timeout=poll):
            if job.stopping:
                return False
        self.holder = job
        return True

    def release(self) -> None:
        self.holder = None
        self._lock.release()


CPU = Slot()  # the server's one heavy job at a time (app/finetunes.py, app/evaluations.py)


class JobBoard:
    """Jobs that run in a page's own handler thread, listed while they run; Stop reaches one's own only."""

    def __init__(self, kind: str):
        self.kind = kind
        self._state = threading.Lock()
        self._running: list[Job] = []

    @contextlib.contextmanager
    def track(self, job: Job) -> Iterator[Job]:
        """Lists ``job`` while the block runs (the block is the job: it checks ``job.stopping``)."""
        job.state = "running"
        with self._state:
            self._running.append(job)
        try:
            yield job
        finally:
            with self._state:
                self._running.remove(job)

    def running(self, session: str | None = ...) -> list[Job]:
        """The running jobs (of ``session`` when given)."""
        with self._state:
            return [j for j in self._running if session is ... or j.session == session]

    def stop(self, session: str | None) -> list[Job]:
        """Stops ``session``'s running jobs after their current step; returns them."""
        mine = self.running(session)
        for job in mine:
            job.request_stop()
        return mine
