"""A generation worker's engine: the app's engine in another process (a Ray actor, see :mod:`.pool`).

It is built from the app's launch options (model folders at the same paths on every node, docs/workers.md), loads
the same extensions and the start-up checkpoint, and runs each :class:`~.messages.GenerationRequest` with the app's
settings of that moment through :func:`modules.scripts.run_generation`, as the app's process would. Nothing is
written to the output folders here: saves are recorded (:func:`modules.processing.saving.deferred_saves`) and
returned for the app to write. :meth:`WorkerEngine.poll` runs beside :meth:`WorkerEngine.run` (another thread of
the actor) and relays progress and the stop flags. No Ray import: it is a plain class that Ray wraps.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import socket
import tempfile
import time
import traceback
from pathlib import Path

from ..cmd_args import LaunchOptions
from ..models.safetensors_file import ModelFileError
from ..networks.active import LORA_KINDS
from ..processing.params import ParamError
from ..processing.progress import JobProgress
from ..processing.saving import deferred_saves
from ..prompts import extract_network_tags
from .messages import Controls, GenerationRequest, JobFailure, Outcome, Snapshot, WorkerInfo

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EngineSetup:
    """How a worker builds its engine: the app's options, settings and extension folders, plus its own device and
    CPU threads."""

    options: LaunchOptions
    settings: dict
    extra_settings: dict
    extension_dirs: tuple[Path, ...] = ()
    device: str | None = None  # None: the app's --device; "cuda": the GPU Ray gave this worker
    threads: int | None = None  # torch CPU threads; None: torch's default


def _node_name() -> str:
    host = socket.gethostname()
    try:
        import ray

        return f"{host} ({ray.util.get_node_ip_address()})"
    except Exception:  # noqa: BLE001 - outside Ray (tests of the engine alone)
        return host


class WorkerEngine:
    """One worker's full engine; built once per process (again when Ray restarts the process)."""

    def __init__(self, setup: EngineSetup):
        import torch

        from ..app_state import create_state, startup_checkpoint
        from ..extensions import load_extensions
        from ..settings import Settings

        if setup.threads:
            torch.set_num_threads(setup.threads)
        private = Path(tempfile.mkdtemp(prefix="sdwebui-worker-"))  # the app's config.json is never written here
        options = dataclasses.replace(setup.options, skip_install=True, settings_file=private / "config.json",
                                      device=setup.device or setup.options.device)
        self.state = state = create_state(options)
        state.settings.current = Settings().with_overrides(setup.settings)
        state.settings.extra = dict(setup.extra_settings)
        load_extensions(state, list(setup.extension_dirs))
        self.progress: JobProgress | None = None
        self.node = _node_name()
        info = startup_checkpoint(state)
        try:
            if info is not None:
                state.models.load(info)
                if state.settings.current.sd_vae != state.models.vae_choice:
                    state.models.set_vae(state.settings.current.sd_vae)
        except ModelFileError as e:  # each job loads its checkpoint anyway, and reports what is wrong
            log.error("worker %s: the start-up checkpoint did not load: %s", os.getpid(), e)
        log.info("worker %s ready on %s with %s", os.getpid(), state.plan.device, info and info.filename)

    def describe(self) -> WorkerInfo:
        """Process, node, device and what is loaded."""
        models = self.state.models
        return WorkerInfo(os.getpid(), self.node, str(self.state.plan.device),
                          models.current_info.filename if models.current_info else None,
                          models.vae_choice if models.current_info else None,
                          tuple(i.filename for i in self.state.checkpoints.items()))

    def run(self, request: GenerationRequest, job_id: str) -> Outcome:
        """Run one job with the app's settings; its saves are recorded, not written."""
        from ..scripts import run_generation
        from ..settings import Settings

        state = self.state
        self.progress = progress = JobProgress(job_id=job_id)
        started = time.perf_counter()
        try:
            state.settings.current = Settings().with_overrides(request.settings)
            state.settings.extra = dict(request.extra_settings)
            self._check_checkpoint(request.checkpoint(request.settings))
            self._look_for_new_loras(request.params.prompt)
            with deferred_saves() as saves:
                result = run_generation(state, request.params, progress, request.script_name, request.script_args,
                                        request.alwayson)
            return Outcome(result, saves, self.describe(), seconds=time.perf_counter() - started)
        except Exception as e:  # noqa: BLE001 - the app reports it to the job's owner
            if not isinstance(e, ValueError):
                log.error("job %s failed:\n%s", job_id, traceback.format_exc())
            return Outcome(failure=JobFailure(type(e).__name__, str(e), getattr(e, "field", None)
                                              if isinstance(e, ParamError) else None, isinstance(e, ValueError)),
                           info=self.describe())
        finally:
            progress.state = "done"

    def _check_checkpoint(self, wanted: str) -> None:
        """A checkpoint this node does not have is refused naming the node (after one look for new files)."""
        catalog = self.state.checkpoints
        if not wanted or catalog.find(wanted) is not None:
            return
        catalog.refresh()
        if catalog.find(wanted) is None:
            folder = self.state.options.ckpt_dir
            raise ParamError("sd_model_checkpoint", f"node {self.node} has no checkpoint {wanted!r} in {folder} "
                                                    "(model folders must be at the same path on every node)")

    def _look_for_new_loras(self, prompt: str) -> None:
        """A LoRA the prompt names that this worker has not seen: look at the folder again (added since the start)."""
        networks = self.state.networks
        _, tags = extract_network_tags(prompt)
        if networks is not None and any(networks.loras.find(t.name) is None for t in tags if t.kind in LORA_KINDS):
            networks.loras.refresh()

    def poll(self, controls: Controls) -> Snapshot:
        """Apply the app's stop flags to the running job and return its progress since what the app has."""
        progress = self.progress
        if progress is None or progress.state == "done":
            return Snapshot()
        if controls.interrupted:
            progress.interrupt()
        if controls.skip:
            progress.skip()
        preview = progress.preview if controls.wants_preview else None  # reading it asks the job for previews
        step = progress.preview_step
        newer = preview is not None and step != controls.preview_step
        return Snapshot(True, progress.job_id, progress.state, progress.step, progress.total_steps,
                        time.perf_counter() - progress.started if progress.started else None, progress.textinfo,
                        preview if newer else None, step, list(progress.images[controls.images:]))
