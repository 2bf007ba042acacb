"""What travels between the app and a generation worker: the request, the progress relay's two halves, the worker's
description and the job's outcome. Plain dataclasses (pickled by Ray), no Ray import."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..processing.params import GenerationParams, ParamError
from ..processing.saving import PendingSave


@dataclass
class GenerationRequest:
    """A txt2img/img2img job as :func:`modules.scripts.submit` received it; the app's settings are added when a
    worker takes it (a job uses the settings of the moment it starts, as in the app's process)."""

    params: GenerationParams
    script_name: str | None = None
    script_args: object = None
    alwayson: dict | None = None
    settings: dict = field(default_factory=dict)  # Settings.to_dict() of the app
    extra_settings: dict = field(default_factory=dict)  # config.json's other options (extensions', …)

    def checkpoint(self, settings: dict) -> str:
        """The checkpoint the job asks for under ``settings``: its override, else the setting ("" for none)."""
        return str(self.params.override_settings.get("sd_model_checkpoint") or settings.get("sd_model_checkpoint")
                   or "")


@dataclass(frozen=True)
class Controls:
    """App → worker with each progress poll: the job's stop flags, and what the app already has."""

    interrupted: bool = False
    skip: bool = False
    wants_preview: bool = False
    preview_step: int = -1  # the step of the preview the app shows
    images: int = 0  # finished images the app has


@dataclass
class Snapshot:
    """Worker → app: the running job's progress; ``applied`` says whether the controls reached a running job."""

    applied: bool = False
    job_id: str = ""
    state: str = "queued"
    step: int = 0
    total_steps: int = 0
    elapsed: float | None = None  # seconds since sampling began (clocks differ between machines)
    textinfo: str = ""
    preview: object = None  # a newer preview than Controls.preview_step, else None
    preview_step: int = -1
    new_images: list = field(default_factory=list)  # finished images after the first Controls.images


@dataclass(frozen=True)
class WorkerInfo:
    """A worker as it describes itself."""

    pid: int
    node: str  # host name and address
    device: str
    checkpoint: str | None  # file name of the loaded checkpoint
    vae: str | None
    checkpoints: tuple[str, ...] = ()  # checkpoint files this node has


@dataclass
class JobFailure:
    """A job's error, carried as text (exception classes need not survive pickling)."""

    kind: str  # the exception's class name
    message: str
    field: str | None = None  # ParamError's field
    value_error: bool = False  # a ValueError: the request's fault, reported without a traceback

    def exception(self) -> Exception:
        """The error to raise in the app: ParamError, ValueError, or RuntimeError naming the original class."""
        if self.field is not None:
            prefix = f"{self.field}: "
            return ParamError(self.field, self.message.removeprefix(prefix))
        if self.value_error:
            return ValueError(self.message)
        return RuntimeError(f"{self.kind}: {self.message}")


@dataclass
class Outcome:
    """A finished job: the result (images, infotexts, info; paths are stand-ins), the saves the app is to write,
    and what the worker has loaded now; or the failure."""

    result: object = None  # modules.processing.runner.JobResult
    saves: list[PendingSave] = field(default_factory=list)
    info: WorkerInfo | None = None
    failure: JobFailure | None = None
    seconds: float = 0.0  # the job's time on the worker (what the hand-off adds is measured against it)
