"""The studio's shared job board (app/jobs.py): one at a time, Stop only one's own, withdraw while waiting."""

import threading

from app.jobs import Job, JobBoard


def test_one_at_a_time_board_holds_the_slot_until_the_job_ends_even_when_it_fails():
    board = JobBoard("test", one_at_a_time=True)
    release = threading.Event()

    def work(job):
        release.wait(5)
        raise RuntimeError("broken")

    assert board.wait_for_slot()
    job = board.start(Job("a", "s1"), work)
    assert board.busy and board.current() is job and not board.wait_for_slot(timeout=0.05)
    release.set()
    events = list(job.follow())
    assert events[-1][0] == "error" and str(events[-1][1]) == "broken"
    job.thread.join(5)
    assert not board.busy and board.current() is None and board.wait_for_slot(timeout=0.05)


def test_stop_reaches_only_the_sessions_own_job_and_calls_its_stop_once():
    board = JobBoard("test")
    calls = []
    with board.track(Job("a", "s1", on_stop=lambda: calls.append("a"))) as a:
        assert board.stop("s2") == ([], False)
        mine, withdrew = board.stop("s1")
        assert mine == [a] and not withdrew and a.stopping
        board.stop("s1")
        assert calls == ["a"]
    assert board.running("s1") == []


def test_a_waiting_start_is_withdrawn_by_stop_and_the_next_one_runs():
    board = JobBoard("test")
    board.note_waiting("s1")
    assert board.stop("s1") == ([], True)
    assert board.take_turn("s1") is False  # the withdrawn start ends as soon as its turn comes
    board.note_waiting("s1")
    assert board.take_turn("s1") is True
