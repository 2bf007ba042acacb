"""The app's side of the generation workers: Ray actors (:class:`~.engine.WorkerEngine`) behind the app's queue.

``--workers N`` starts a local Ray instance with N workers (one GPU each where the machine has GPUs, else CPU
workers sharing the cores); ``--ray-address`` joins a cluster started with ``ray start`` and puts a worker on each
of its GPUs (one per node without GPUs) unless ``--workers`` says how many. The queue (:mod:`modules.job_queue`)
calls :meth:`WorkerPool.claim` for its next generation job: a free worker, the one with the job's checkpoint (and
VAE) loaded first. The job runs there while a thread here relays its progress; the app writes its images.

A worker whose process dies (killed, node lost) is restarted by Ray; its job runs again once on another worker
(same request, same seed: the same images; nothing was saved by the lost run). A job lost twice fails, naming
both losses.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError

from ..cmd_args import REPO_ROOT
from ..job_queue import Job, record_failure
from ..processing.saving import write_pending
from . import relay
from .engine import EngineSetup, WorkerEngine
from .messages import GenerationRequest, Outcome, WorkerInfo

log = logging.getLogger(__name__)
POLL_TIMEOUT_S = 10.0  # a progress poll that takes longer is skipped (the job's own result still decides)
ATTEMPTS = 2  # a job lost with its worker runs once more
RESTART_POLL_S = 0.5  # how often a restarting worker is asked whether it is back
HANDOFFS_KEPT = 100  # the last jobs' hand-off times (WorkerPool.handoffs, for bench/bench_workers.py)


class WorkerLost(RuntimeError):
    """A job's worker stopped (twice: the job failed)."""


@dataclass(frozen=True)
class PoolSettings:
    """How many workers, on which cluster."""

    count: int | None = None  # None: one per GPU of the cluster, else one per node
    address: str | None = None  # None: a local Ray instance, started here and stopped by close()
    local_cpus: int | None = None  # CPUs the local instance offers (None: this machine's)
    threads: int | None = None  # torch threads of a CPU worker (None: the CPUs Ray gives it)
    poll_s: float = 0.1  # how often a running job's progress is fetched
    ready_timeout_s: float = 900.0  # a worker's start (engine and checkpoint load)


@dataclass
class WorkerSlot:
    """One worker as the app tracks it."""

    name: str
    actor: object
    state: str = "starting"  # starting, idle, busy, restarting, failed
    info: WorkerInfo | None = None
    job: Job | None = None
    done: int = 0
    failures: int = 0  # jobs that failed here (the worker's death included)
    restarts: int = 0
    error: str = ""

    def row(self) -> dict:
        """The worker for the Workers section and ``/sdapi/v1/workers``."""
        info = self.info
        return {"name": self.name, "state": self.state, "node": info.node if info else None,
                "device": info.device if info else None, "pid": info.pid if info else None,
                "checkpoint": info.checkpoint if info else None, "vae": info.vae if info else None,
                "job": {"id": self.job.id, "label": self.job.label} if self.job is not None else None,
                "jobs_done": self.done, "failures": self.failures, "restarts": self.restarts,
                "error": self.error or None}


NO_WORKER = WorkerSlot("none", None, "failed")  # what claim() gives when every worker failed to start


def _reason(error: BaseException) -> str:
    return str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__


class WorkerPool:
    """The workers of one app (``state.queue.workers`` once :func:`start_workers` attached it)."""

    def __init__(self, state, settings: PoolSettings = PoolSettings()):
        self.state = state
        self.settings = settings
        self._cond = threading.Condition()
        self.handoffs: deque[float] = deque(maxlen=HANDOFFS_KEPT)  # a job's seconds beyond its run on the worker
        self._retrying = 0
        self._closed = False
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            ray.init(address=settings.address, num_cpus=settings.local_cpus if settings.address is None else None,
                     include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT)}})
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        count = settings.count or gpus or nodes
        if gpus and count > gpus:
            log.warning("%d workers for %d GPUs: %d wait for a free GPU", count, gpus, count - gpus)
        each = {"num_gpus": 1} if gpus else {"num_cpus": max(1, int(resources.get("CPU", 1)) // count)}
        extensions = state.extensions
        setup = EngineSetup(state.options, state.settings.current.to_dict(), dict(state.settings.extra),
                            tuple(extensions.dirs) if extensions is not None else (), "cuda" if gpus else None,
                            settings.threads or (None if gpus else each["num_cpus"]))
        actor = ray.remote(WorkerEngine).options(max_restarts=-1, max_task_retries=0, max_concurrency=4,
                                                 scheduling_strategy="SPREAD", **each)  # over the nodes
        self.slots = [WorkerSlot(f"worker-{i + 1}", actor.remote(setup)) for i in range(count)]
        log.info("starting %d generation workers (%s each)", count, each)
        for slot in self.slots:
            self._watch(slot)

    # --- workers coming up --------------------------------------------------------------------------------------

    def _watch(self, slot: WorkerSlot) -> None:
        threading.Thread(target=self._await_ready, args=(slot,), name=f"{slot.name}-ready", daemon=True).start()

    def _await_ready(self, slot: WorkerSlot) -> None:
        """Wait for the worker's engine (a restarted one's too), then offer it to the queue."""
        deadline = time.monotonic() + self.settings.ready_timeout_s
        try:
            while True:
                try:
                    info = ray.get(slot.actor.describe.remote(), timeout=max(1.0, deadline - time.monotonic()))
                    break
                except ActorUnavailableError:  # still restarting
                    if time.monotonic() > deadline or self._closed:
                        raise
                    time.sleep(RESTART_POLL_S)
        except Exception as e:  # noqa: BLE001 - shown in the Workers section
            log.error("%s did not start: %s", slot.name, e)
            with self._cond:
                slot.state, slot.error = "failed", _reason(e)
                self._cond.notify_all()
            return
        with self._cond:
            slot.info, slot.state, slot.error = info, "idle", ""
            self._cond.notify_all()
        log.info("%s ready: pid %s on %s, %s, %s", slot.name, info.pid, info.node, info.device, info.checkpoint)
        self.state.queue.wake()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until no worker is still starting; whether all are usable."""
        with self._cond:
            self._cond.wait_for(lambda: all(s.state not in ("starting", "restarting") for s in self.slots), timeout)
            return all(s.state in ("idle", "busy") for s in self.slots)

    # --- the queue's side ---------------------------------------------------------------------------------------

    def claim(self, job: Job) -> WorkerSlot | None:
        """A free worker for ``job`` (its checkpoint and VAE loaded first), reserved; None while a lost job waits
        for its retry or no worker is free; :data:`NO_WORKER` when none could start (the job fails, saying why)."""
        with self._cond:
            if all(s.state == "failed" for s in self.slots):
                return NO_WORKER
            idle = [s for s in self.slots if s.state == "idle"]
            if self._retrying or not idle:
                return None
            return self._reserve(self._choose(idle, job.remote), job)

    def _choose(self, idle: list[WorkerSlot], request: GenerationRequest) -> WorkerSlot:
        settings = self.state.settings.current
        wanted = request.checkpoint(settings.to_dict())
        info = self.state.checkpoints.find(wanted) if wanted else None
        filename = info.filename if info is not None else wanted
        vae = request.params.override_settings.get("sd_vae", settings.sd_vae)

        def rank(slot: WorkerSlot) -> tuple:
            loaded = slot.info.checkpoint if slot.info else None
            has_file = slot.info is not None and filename in slot.info.checkpoints
            return (loaded != filename, slot.info is None or slot.info.vae != vae, not has_file, slot.done)

        return min(idle, key=rank)

    @staticmethod
    def _reserve(slot: WorkerSlot, job: Job) -> WorkerSlot:
        slot.state, slot.job = "busy", job
        return slot

    def start(self, job: Job, slot: WorkerSlot, finished: Callable[[Job], None]) -> None:
        """Run ``job`` on ``slot`` in a thread; ``finished(job)`` when its result or error is set."""
        if slot is NO_WORKER:
            reasons = "; ".join(f"{s.name}: {s.error}" for s in self.slots)
            record_failure(job, WorkerLost(f"no generation worker could start ({reasons})"))
            finished(job)
            return
        threading.Thread(target=self._serve, args=(job, slot, finished), name=f"{slot.name}-job", daemon=True).start()

    # --- one job ------------------------------------------------------------------------------------------------

    def _serve(self, job: Job, slot: WorkerSlot, finished: Callable[[Job], None]) -> None:
        settings = self.state.settings
        request = dataclasses.replace(job.remote, settings=settings.current.to_dict(),
                                      extra_settings=dict(settings.extra))
        losses: list[str] = []
        started = time.perf_counter()
        try:
            while True:
                try:
                    outcome = self._run_on(slot, job, request)
                    break
                except RayActorError as e:
                    node = slot.info.node if slot.info else "?"
                    losses.append(f"{slot.name} on {node} stopped ({_reason(e)})")
                    log.warning("job %s: %s", job.id, losses[-1])
                    self._lost(slot)
                    if len(losses) >= ATTEMPTS or self._closed:
                        raise WorkerLost(f"the job failed twice: {'; '.join(losses)}") from None
                    slot = self._claim_for_retry(job, slot)
                    relay.restart(job.progress, f"retrying on {slot.name}: {losses[-1]}")
            self._release(slot, outcome)
            if outcome.failure is not None:
                raise outcome.failure.exception()
            if not losses:  # the saves are not counted: the app's process writes the same files
                self.handoffs.append(time.perf_counter() - started - outcome.seconds)
            job.result = self._write(outcome)
            job.progress.finish()
        except BaseException as e:  # noqa: BLE001 - reported to the job's owner
            record_failure(job, e)
        finally:
            finished(job)

    def _run_on(self, slot: WorkerSlot, job: Job, request: GenerationRequest) -> Outcome:
        """Run ``request`` on ``slot``, relaying progress every ``poll_s``; RayActorError when the worker died."""
        ref = slot.actor.run.remote(request, job.id)
        while True:
            ready, _ = ray.wait([ref], timeout=self.settings.poll_s)
            if ready:
                return ray.get(ref)
            sent = relay.controls_of(job.progress)
            try:
                snapshot = ray.get(slot.actor.poll.remote(sent), timeout=POLL_TIMEOUT_S)
            except GetTimeoutError:
                continue
            relay.apply(snapshot, job.progress, sent)

    def _release(self, slot: WorkerSlot, outcome: Outcome) -> None:
        with self._cond:
            slot.state, slot.job = "idle", None
            slot.info = outcome.info or slot.info
            if outcome.failure is None:
                slot.done += 1
            elif not outcome.failure.value_error:
                slot.failures += 1
            self._cond.notify_all()
        self.state.queue.wake()

    def _lost(self, slot: WorkerSlot) -> None:
        """``slot``'s process died: Ray restarts it; it is offered again once its engine is up."""
        with self._cond:
            slot.state, slot.job = "restarting", None
            slot.failures += 1
            slot.restarts += 1
            self._cond.notify_all()
        if not self._closed:
            self._watch(slot)

    def _claim_for_retry(self, job: Job, lost: WorkerSlot) -> WorkerSlot:
        """A worker for a lost job's second run, before any waiting job: another one (the restarted one when it is
        the only worker)."""
        with self._cond:
            self._retrying += 1
            try:
                while True:
                    usable = [s for s in self.slots if s.state == "idle" and (s is not lost or len(self.slots) == 1)]
                    if usable:
                        slot = self._reserve(self._choose(usable, job.remote), job)
                        break
                    if self._closed or all(s.state == "failed" for s in self.slots if s is not lost):
                        raise WorkerLost("no worker is left to retry the job")
                    self._cond.wait(1.0)
            finally:
                self._retrying -= 1
        self.state.queue.wake()  # the other free workers go back to the queue's jobs
        return slot

    def _write(self, outcome: Outcome):
        """The app writes the images and infotexts the worker made; the result's paths become the written ones."""
        result = outcome.result
        written, warnings = write_pending(outcome.saves)
        result.paths = [p for p in (written.get(p, p) for p in result.paths) if p is not None]
        if result.grid_path is not None:
            result.grid_path = written.get(result.grid_path, result.grid_path)
        result.warnings.extend(warnings)
        return result

    # --- visibility and the end ---------------------------------------------------------------------------------

    def status(self) -> list[dict]:
        """One row per worker: node, device, loaded checkpoint, current job, jobs done, failures."""
        with self._cond:
            return [s.row() for s in self.slots]

    def close(self) -> None:
        """Stop the workers (and the local Ray instance this pool started)."""
        self._closed = True
        self.state.queue.use_workers(None)
        for slot in self.slots:
            with contextlib.suppress(Exception):  # already gone
                ray.kill(slot.actor, no_restart=True)
        if self._owns_ray:
            ray.shutdown()


def pool_settings(options) -> PoolSettings:
    """The pool the launch options ask for (``--workers``, ``--ray-address``)."""
    return PoolSettings(count=options.workers, address=options.ray_address)


def start_workers(state, settings: PoolSettings) -> WorkerPool:
    """Start the workers and make ``state.queue`` hand them its generation jobs."""
    pool = WorkerPool(state, settings)
    state.queue.use_workers(pool)
    return pool
