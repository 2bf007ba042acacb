"""One FIFO queue in front of the model: UI and API jobs run one at a time, in order of arrival.

``submit`` returns a :class:`Job` at once; its ``progress`` is readable while it waits and runs, and ``wait()``
gives the result (or raises the job's error). ``interrupt`` on a job affects only that job.
"""
from __future__ import annotations

import logging
import threading
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .processing.progress import JobProgress

log = logging.getLogger(__name__)


@dataclass
class Job:
    work: Callable[[JobProgress], object]
    label: str = "job"
    progress: JobProgress = field(default_factory=JobProgress)
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


class JobQueue:
    def __init__(self):
        self._pending: deque[Job] = deque()
        self._cond = threading.Condition()
        self.current: Job | None = None
        self._thread = threading.Thread(target=self._worker, name="job-queue", daemon=True)
        self._thread.start()

    def submit(self, work: Callable[[JobProgress], object], label: str = "job") -> Job:
        job = Job(work, label)
        with self._cond:
            self._pending.append(job)
            self._cond.notify()
        return job

    def position(self, job: Job) -> int:
        """0 while running (or done), else the number of jobs ahead of it including the running one."""
        with self._cond:
            try:
                return self._pending.index(job) + (1 if self.current is not None else 0) + 1
            except ValueError:
                return 0

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._pending)

    def find(self, job_id: str) -> Job | None:
        with self._cond:
            if self.current is not None and self.current.id == job_id:
                return self.current
            return next((j for j in self._pending if j.id == job_id), None)

    def run_exclusive(self, fn: Callable[[], object], label: str = "task"):
        """Run ``fn`` in the queue's turn (e.g. a model switch from the settings) and return its result."""
        return self.submit(lambda progress: fn(), label).wait()

    def _worker(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
                job = self._pending.popleft()
                self.current = job
            try:
                if job.progress.control.interrupted:
                    job.progress.state = "done"
                else:
                    job.result = job.work(job.progress)
            except BaseException as e:  # noqa: BLE001 - reported to the job's owner, the queue goes on
                job.error = e
                job.progress.state = "failed"
                job.progress.error = f"{type(e).__name__}: {e}"
                if not isinstance(e, ValueError):
                    log.error("job %s failed:\n%s", job.label, traceback.format_exc())
            finally:
                with self._cond:
                    self.current = None
                job._done.set()


def submit_generation(state, params, extra_hooks=None, label: str | None = None) -> Job:
    """Queue a txt2img/img2img job on ``state``; UI and API both come through here."""
    from .processing.runner import run_job

    return state.queue.submit(lambda progress: run_job(state, params, progress, extra_hooks), label or params.kind)
