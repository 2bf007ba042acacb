"""The FIFO job queue: order, per-job interrupt, errors reported to the job's owner."""
from __future__ import annotations

import threading

import pytest

from modules.job_queue import JobQueue


def test_jobs_run_in_order_one_at_a_time():
    q = JobQueue()
    running, order, overlap = [], [], []
    gate, started = threading.Event(), threading.Event()

    def work(name):
        def run(progress):
            running.append(name)
            overlap.append(len(running))
            if name == "a":
                started.set()
                gate.wait(5)
            order.append(name)
            running.remove(name)
            return name
        return run

    jobs = [q.submit(work(n)) for n in "abc"]
    assert started.wait(5)  # "a" runs and holds the queue; "b" and "c" wait behind it
    assert q.position(jobs[0]) == 0 and q.position(jobs[2]) == 3 and q.waiting == 2
    gate.set()
    assert [j.wait(5) for j in jobs] == ["a", "b", "c"] == order
    assert max(overlap) == 1


def test_interrupt_affects_only_its_job_and_errors_reach_the_caller():
    q = JobQueue()
    gate = threading.Event()
    first = q.submit(lambda p: gate.wait(5) and "first")
    second = q.submit(lambda p: "second")
    third = q.submit(lambda p: 1 / 0)
    second.interrupt()  # queued: never starts
    gate.set()
    assert first.wait(5) == "first"
    assert second.wait(5) is None and second.progress.state == "done"
    with pytest.raises(ZeroDivisionError):
        third.wait(5)
    assert third.progress.state == "failed" and "ZeroDivisionError" in third.progress.error
    assert q.submit(lambda p: "after").wait(5) == "after"  # the queue goes on
