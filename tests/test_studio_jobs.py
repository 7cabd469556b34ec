"""The studio's jobs (app/jobs.py): a server queue run one at a time in order, and page-scoped jobs."""

import threading
import time

from app.jobs import Job, JobBoard, JobQueue


def test_the_queue_runs_jobs_one_at_a_time_in_order_and_a_failure_does_not_stop_it():
    order, gate = [], threading.Event()

    def work(job):
        order.append((job.name, "start"))
        if job.name == "a":
            gate.wait(5)
        if job.name == "b":
            raise ValueError("bad config")
        order.append((job.name, "end"))
        return "finished"

    queue = JobQueue(work)
    for name in "abc":
        queue.submit(Job(name))
    time.sleep(0.2)
    assert queue.current().name == "a" and queue.position("a") == 0 and queue.position("c") == 2
    gate.set()
    assert queue.wait_idle(timeout=5)
    assert order == [("a", "start"), ("a", "end"), ("b", "start"), ("c", "start"), ("c", "end")]
    assert queue.get("b").state == "failed" and queue.get("b").reason == "bad config"
    assert queue.get("c").state == "finished" and queue.get("a").ended <= queue.get("c").ended


def test_stop_reaches_a_running_job_once_and_withdraws_a_waiting_one():
    calls, gate = [], threading.Event()

    def work(job):
        gate.wait(5)
        return "stopped" if job.stopping else "finished"

    queue = JobQueue(work)
    running = queue.submit(Job("a", on_stop=lambda: calls.append("a")))
    queue.submit(Job("b"))
    time.sleep(0.2)
    assert queue.stop("b")[1] == "withdrawn" and queue.position("b") is None
    assert queue.stop("a") == (running, "stopping") and queue.stop("a")[1] == "stopping"
    assert calls == ["a"]  # the job's own stop, once
    gate.set()
    assert queue.wait_idle(timeout=5)
    assert queue.get("a").state == "stopped" and queue.stop("a")[1] == "stopped" and queue.stop("x") == (None, "unknown")


def test_a_board_lists_a_pages_jobs_while_they_run_and_stops_only_its_own():
    board = JobBoard("test")
    with board.track(Job("a", "s1")) as a:
        assert board.stop("s2") == []
        assert board.stop("s1") == [a] and a.stopping
    assert board.running("s1") == []


def test_heavy_work_of_two_queues_holds_one_slot_and_a_stop_ends_the_wait():
    """A finetune submitted while an evaluation runs waits for it (they would split both cores), and a job stopped
    while it waits holds nothing."""
    from app.jobs import Slot

    cpu, order, gate = Slot(), [], threading.Event()

    def heavy(job):
        if not cpu.acquire(job, poll=0.05):
            return "withdrawn"
        try:
            order.append((job.name, "start"))
            gate.wait(5) if job.name == "evaluation" else None
            order.append((job.name, "end"))
            return "finished"
        finally:
            cpu.release()

    evaluations, finetunes = JobQueue(heavy), JobQueue(heavy)
    evaluations.submit(Job("evaluation"))
    time.sleep(0.2)
    finetunes.submit(Job("finetune"))
    time.sleep(0.3)
    assert order == [("evaluation", "start")] and cpu.holder.name == "evaluation"  # the finetune waits
    gate.set()
    assert finetunes.wait_idle(timeout=5) and evaluations.wait_idle(timeout=5)
    assert order == [("evaluation", "start"), ("evaluation", "end"), ("finetune", "start"), ("finetune", "end")]
    gate.clear()
    order.clear()
    evaluations.submit(Job("evaluation"))
    time.sleep(0.2)
    finetunes.submit(Job("late"))
    time.sleep(0.2)
    finetunes.stop("late")  # stopped while waiting for the slot
    assert finetunes.wait_idle(timeout=5) and finetunes.get("late").state == "withdrawn"
    gate.set()
    assert evaluations.wait_idle(timeout=5) and cpu.holder is None and order == [("evaluation", "start"), ("evaluation", "end")]
