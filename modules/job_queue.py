"""The queue in front of the model: UI and API jobs run one at a time, taking turns between users.

Each job belongs to the user who submitted it (:func:`modules.requester.current`; "" for local use and servers
without logins). Waiting jobs start in round robin between users, each user's own in order of arrival: the next
job is that of the user whose last job started longest ago (a user not served yet goes first), so one user's ten
jobs delay another user's job by at most one. With a single user this is plain FIFO.

``submit`` returns a :class:`Job` at once; its ``progress`` is readable while it waits and runs, and ``wait()``
gives the result (or raises the job's error). ``interrupt`` on a job affects only that job.

With generation workers (:meth:`JobQueue.use_workers`, ``--workers``/``--ray-address``) this stays the one queue:
a job that a worker can run (it carries a ``remote`` request) starts when a worker is free for it and runs there,
so several such jobs run at once; every other job (model loads, Extras, merges) runs in the app's process, in
turn. :attr:`JobQueue.current` is then the longest-running job.
"""
from __future__ import annotations

import itertools
import logging
import threading
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from . import requester
from .processing.progress import JobProgress

log = logging.getLogger(__name__)


@dataclass(eq=False)  # a job is equal only to itself
class Job:
    work: Callable[[JobProgress], object]
    label: str = "job"
    user: str = ""  # who submitted it; the queue takes turns between users
    arrival: int = 0  # order of submission
    progress: JobProgress = field(default_factory=JobProgress)
    remote: object = None  # what a worker runs instead of ``work`` (modules.workers.messages.GenerationRequest)
    result: object = None
    error: BaseException | None = None
    _done: threading.Event = field(default_factory=threading.Event)

    @property
    def id(self) -> str:
        return self.progress.job_id

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None):
        """The job's result; raises its error. ``TimeoutError`` if it is not done within ``timeout``."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"job {self.id} still running")
        if self.error is not None:
            raise self.error
        return self.result

    def wait_done(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the job to end (without raising its error); whether it has."""
        return self._done.wait(timeout)

    def interrupt(self) -> None:
        """Stop this job (if queued, it will not start)."""
        self.progress.interrupt()


class Workers(Protocol):
    """Where the queue sends jobs with a ``remote`` request (:class:`modules.workers.pool.WorkerPool`)."""

    def claim(self, job: Job) -> object | None:
        """A free worker for ``job``, now reserved for it; None: none now (the pool calls ``JobQueue.wake`` later).
        Called under the queue's lock."""

    def start(self, job: Job, worker: object, finished: Callable[[Job], None]) -> None:
        """Run ``job`` on the claimed ``worker`` in the background; ``finished(job)`` when it is over."""


class JobQueue:
    def __init__(self):
        self._pending: dict[str, deque[Job]] = {}  # user -> waiting jobs in order of arrival; never empty
        self._last_start: dict[str, int] = {}  # user -> number of the turn their last job started in
        self._turns = itertools.count()
        self._arrivals = itertools.count()
        self._cond = threading.Condition()
        self._running: list[Job] = []  # in order of start
        self.workers: Workers | None = None
        self._thread = threading.Thread(target=self._worker, name="job-queue", daemon=True)
        self._thread.start()

    @property
    def current(self) -> Job | None:
        """The running job (with workers: the one running longest), or None."""
        with self._cond:
            return self._running[0] if self._running else None

    @property
    def running(self) -> list[Job]:
        """The jobs running now, longest-running first."""
        with self._cond:
            return list(self._running)

    def use_workers(self, workers: Workers | None) -> None:
        """Send jobs that carry a ``remote`` request to ``workers`` from now on (None: run them here again)."""
        with self._cond:
            self.workers = workers
            self._cond.notify_all()

    def wake(self) -> None:
        """Look again for jobs that can start (a worker became free)."""
        with self._cond:
            self._cond.notify_all()

    def submit(self, work: Callable[[JobProgress], object], label: str = "job", remote: object = None) -> Job:
        """Queue ``work`` for the requester of the current request (:func:`modules.requester.current`); with
        workers, ``remote`` (if given) is run on one of them instead."""
        with self._cond:
            job = Job(work, label, requester.current().user, next(self._arrivals), remote=remote)
            self._pending.setdefault(job.user, deque()).append(job)
            self._cond.notify()
        return job

    def _rotation(self) -> list[str]:
        """Users with waiting jobs, next first: whose last job started longest ago (never: first), then arrival."""
        return sorted(self._pending, key=lambda u: (self._last_start.get(u, -1), self._pending[u][0].arrival))

    def _order(self) -> list[Job]:
        """The waiting jobs in the order they will start if no other job arrives."""
        rotation = deque(self._rotation())
        queues = {user: deque(self._pending[user]) for user in rotation}
        order = []
        while rotation:
            user = rotation.popleft()
            order.append(queues[user].popleft())
            if queues[user]:
                rotation.append(user)
        return order

    def position(self, job: Job) -> int:
        """0 while running (or done), else the number of jobs that start before it, the running one included."""
        with self._cond:
            if job not in self._pending.get(job.user, ()):
                return 0
            return self._order().index(job) + len(self._running) + 1

    @property
    def waiting(self) -> int:
        with self._cond:
            return sum(len(jobs) for jobs in self._pending.values())

    def find(self, job_id: str) -> Job | None:
        with self._cond:
            running = next((j for j in self._running if j.id == job_id), None)
            if running is not None:
                return running
            return next((j for jobs in self._pending.values() for j in jobs if j.id == job_id), None)

    def run_exclusive(self, fn: Callable[[], object], label: str = "task"):
        """Run ``fn`` in the queue's turn (e.g. a model switch from the settings) and return its result."""
        return self.submit(lambda progress: fn(), label).wait()

    def _take(self) -> Job:
        """Remove and return the next job (the caller holds the lock; a job is waiting)."""
        user = self._rotation()[0]
        jobs = self._pending[user]
        job = jobs.popleft()
        if not jobs:
            del self._pending[user]
        self._last_start[user] = next(self._turns)
        return job

    def _next_start(self) -> tuple[Job, object] | None:
        """The next job if it can start now, with the worker claimed for it (None: it runs here); the caller holds
        the lock. A job for the workers waits for a free one, and the jobs behind it wait too (one FIFO)."""
        if not self._pending:
            return None
        job = self._pending[self._rotation()[0]][0]
        worker = None
        if job.remote is not None and self.workers is not None and not job.progress.control.interrupted:
            worker = self.workers.claim(job)
            if worker is None:
                return None
        return self._take(), worker

    def _worker(self) -> None:
        while True:
            with self._cond:
                while (ready := self._next_start()) is None:
                    self._cond.wait()
                job, worker = ready
                workers = self.workers  # the one that claimed the worker, even if use_workers() changes it now
                self._running.append(job)
            if worker is not None:
                workers.start(job, worker, self._finished)
                continue
            try:
                if job.progress.control.interrupted:
                    job.progress.state = "done"
                else:
                    job.result = job.work(job.progress)
            except BaseException as e:  # noqa: BLE001 - reported to the job's owner, the queue goes on
                record_failure(job, e)
            finally:
                self._finished(job)

    def _finished(self, job: Job) -> None:
        """``job`` is over (its result or error is set)."""
        with self._cond:
            self._running.remove(job)
            self._cond.notify_all()
        job._done.set()


def record_failure(job: Job, error: BaseException) -> None:
    """``error`` ends ``job``: kept for its owner, shown in its progress, logged unless a request's fault."""
    job.error = error
    job.progress.state = "failed"
    job.progress.error = f"{type(error).__name__}: {error}"
    if not isinstance(error, ValueError):
        log.error("job %s failed:\n%s", job.label, "".join(traceback.format_exception(error)))


def submit_generation(state, params, extra_hooks=None, label: str | None = None) -> Job:
    """Queue a txt2img/img2img job on ``state`` (without scripts; with workers and no ``extra_hooks``, it runs on
    one of them)."""
    from .processing.runner import run_job

    remote = None
    if state.queue.workers is not None and extra_hooks is None:
        from .workers.messages import GenerationRequest

        remote = GenerationRequest(params)
    return state.queue.submit(lambda progress: run_job(state, params, progress, extra_hooks), label or params.kind,
                              remote)
