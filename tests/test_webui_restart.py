"""When the UI may restart the server (webui/restart.py), with the real job queue."""
from __future__ import annotations

import threading

import pytest

from modules.job_queue import JobQueue
from webui.restart import Restarter


def test_restart_waits_for_no_job_but_ignores_the_start_up_model_load():
    stops = []
    restarter = Restarter(stop_server=lambda: stops.append(1))
    queue = JobQueue()
    release = threading.Event()
    running = threading.Event()

    def work(progress):
        running.set()
        release.wait(10)

    job = queue.submit(work, "generate")
    running.wait(10)
    with pytest.raises(ValueError, match="jobs are running"):
        restarter.request(queue)
    assert stops == [] and not restarter.requested.is_set()
    restarter.request(queue, startup_job=job)  # the same job as the model load at start: no reason to wait
    assert stops == [1] and restarter.requested.is_set()
    release.set()
    job.wait(10)


def test_a_server_without_restart_support_says_so():
    with pytest.raises(ValueError, match="cannot restart itself"):
        Restarter().request(JobQueue())
