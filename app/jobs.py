"""Background jobs of the studio's tabs (finetunes, theory runs): who runs what, who waits, and Stop.

A tab keeps one :class:`JobBoard`. A job is a unit of work with a stop flag, owned by the browser session
that started it; only that session can stop it. A board may allow one job at a time (a finetune takes both
cores): then the job holds the board's slot from its start until its thread ends, so a job whose page
closed still finishes its step and saves before the next starts. Starts that wait in gradio's queue are
counted per session, so Stop can withdraw one before it runs.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator


@dataclass(eq=False)
class Job:
    """One piece of background work. ``work(job)`` runs in the job's thread (``start``) or in the caller's
    (``JobBoard.track``); it reports through ``job.put`` and checks ``job.stopping``."""

    name: str
    session: str | None
    on_stop: Callable[[], None] | None = None  # called once by request_stop (e.g. the trainer's own stop)
    events: queue.Queue = field(default_factory=queue.Queue)  # (kind, item); the thread ends with ("done"|"error", ...)
    started: float = field(default_factory=time.time)
    stop_flag: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    info: dict = field(default_factory=dict)  # what the tab shows about it (step, reward, ...)

    @property
    def stopping(self) -> bool:
        return self.stop_flag.is_set()

    def request_stop(self) -> None:
        if not self.stop_flag.is_set():
            self.stop_flag.set()
            if self.on_stop is not None:
                self.on_stop()

    def put(self, kind: str, item=None) -> None:
        self.events.put((kind, item))

    def follow(self) -> Iterator[tuple[str, object]]:
        """The job's events until it ends: ("done", None) or ("error", exception) last."""
        while True:
            kind, item = self.events.get()
            yield kind, item
            if kind in ("done", "error"):
                return


class JobBoard:
    """The running and waiting jobs of one kind on this server."""

    def __init__(self, kind: str, *, one_at_a_time: bool = False):
        self.kind = kind
        self._slot = threading.Lock() if one_at_a_time else None  # held by the running job (one_at_a_time)
        self._state = threading.Lock()  # guards the three below
        self._running: list[Job] = []
        self._waiting: dict[str, int] = {}  # session -> starts waiting in the queue
        self._withdrawn: set[str] = set()  # sessions whose waiting start is to end as soon as it runs

    # -- the line ------------------------------------------------------------------------------------
    def note_waiting(self, session: str | None) -> None:
        """A start was clicked (it may wait in gradio's queue): Stop can withdraw it until it runs."""
        if session:
            with self._state:
                self._waiting[session] = self._waiting.get(session, 0) + 1
                self._withdrawn.discard(session)

    def take_turn(self, session: str | None) -> bool:
        """The start's turn came: False when Stop withdrew it meanwhile."""
        with self._state:
            if session and self._waiting.get(session):
                self._waiting[session] -= 1
            if session in self._withdrawn:
                self._withdrawn.discard(session)
                return False
        return True

    def wait_for_slot(self, timeout: float = 1.0) -> bool:
        """One-at-a-time boards: True once the slot is this caller's (it passes to the job :meth:`start` runs;
        call :meth:`release_slot` if no job starts). Poll with a timeout to keep a page informed meanwhile."""
        return True if self._slot is None else self._slot.acquire(timeout=timeout)

    def release_slot(self) -> None:
        if self._slot is not None:
            self._slot.release()

    @property
    def busy(self) -> bool:
        """A one-at-a-time board's slot is taken (a job runs or is being set up)."""
        return self._slot is not None and self._slot.locked()

    # -- running -------------------------------------------------------------------------------------
    def start(self, job: Job, work: Callable[[Job], None]) -> Job:
        """Runs ``work(job)`` in a thread of its own; its end (or exception) is the job's last event. On a
        one-at-a-time board the caller holds the slot (wait_for_slot); the thread releases it when done."""
        def run():
            try:
                work(job)
                job.put("done")
            except BaseException as err:  # noqa: BLE001 - reported to the page; the slot must be freed regardless
                job.put("error", err)
            finally:
                self._remove(job)
                self.release_slot()

        job.thread = threading.Thread(target=run, name=f"{self.kind}-{job.name}", daemon=True)
        with self._state:
            self._running.append(job)
        job.thread.start()
        return job

    @contextlib.contextmanager
    def track(self, job: Job) -> Iterator[Job]:
        """A job that runs in the caller's own thread (e.g. a streaming handler): listed while the block runs."""
        with self._state:
            self._running.append(job)
        try:
            yield job
        finally:
            self._remove(job)

    def _remove(self, job: Job) -> None:
        with self._state:
            if job in self._running:
                self._running.remove(job)

    def running(self, session: str | None = ...) -> list[Job]:
        """The running jobs (of ``session`` when given)."""
        with self._state:
            return [j for j in self._running if session is ... or j.session == session]

    def current(self) -> Job | None:
        """The oldest running job, if any (the one on a one-at-a-time board)."""
        jobs = self.running()
        return jobs[0] if jobs else None

    def stop(self, session: str | None) -> tuple[list[Job], bool]:
        """Stops ``session``'s running jobs after their current step, or withdraws its waiting start:
        (the jobs asked to stop, whether a waiting start was withdrawn)."""
        with self._state:
            mine = [j for j in self._running if j.session == session]
            withdrew = not mine and bool(session and self._waiting.get(session))
            if withdrew:
                self._withdrawn.add(session)
        for job in mine:
            job.request_stop()
        return mine, withdrew
