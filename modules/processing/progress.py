"""Progress of one job: steps, ETA, live preview, finished images, and the interrupt/skip flags.

The live preview costs a VAE decode (or a small matrix product) per step, so a job makes one only while someone
watches: reading :attr:`JobProgress.preview` (the web UI's progress poll, ``/sdapi/v1/progress`` without
``skip_current_image``) asks for previews for the next :data:`PREVIEW_INTEREST_SECONDS`. A job nobody polls (the
CLI, an API client that only waits for its images) makes none.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from ..sampling import SamplingControl

PREVIEW_INTEREST_SECONDS = 10.0  # a read of the preview keeps the job making previews this long


@dataclass
class JobProgress:
    """Written by the job's thread, read by UI/API threads (plain attribute reads)."""

    job_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    state: str = "queued"  # queued, running, done, failed
    total_steps: int = 0
    step: int = 0
    started: float | None = None
    textinfo: str = ""
    _preview: object = field(default=None, repr=False)  # PIL image of the sampler's estimate, at the output's size
    preview_step: int = -1
    preview_asked: float | None = None  # time.monotonic() of the last read of ``preview``
    images: list = field(default_factory=list)  # finished images, in order
    control: SamplingControl = field(default_factory=SamplingControl)
    error: str | None = None
    batches: int = 1  # the job's batch count (n_iter)
    parent: JobProgress | None = field(default=None, repr=False)  # a nested job's: its steps count there too
    parent_text: str = ""  # a nested job's line in the parent's textinfo; "{step}" becomes its step number

    @property
    def preview(self):
        """The last live preview (from step ``preview_step``), or None; reading it asks the job for previews for the
        next :data:`PREVIEW_INTEREST_SECONDS`."""
        self.preview_asked = time.monotonic()
        return self._preview

    def wants_preview(self) -> bool:
        """Whether someone read the preview (of this job, or of the job it is nested in) lately."""
        asked = self.preview_asked
        if asked is not None and time.monotonic() - asked <= PREVIEW_INTEREST_SECONDS:
            return True
        return self.parent is not None and self.parent.wants_preview()

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total_steps) if self.total_steps else 0.0

    @property
    def eta_seconds(self) -> float | None:
        if not self.started or not self.step or not self.total_steps:
            return None
        elapsed = time.perf_counter() - self.started
        return elapsed / self.step * (self.total_steps - self.step)

    def begin(self, batch_steps: int, batches: int) -> None:
        """Start counting a job of ``batches`` batches of ``batch_steps`` sampling steps each."""
        self.total_steps, self.batches, self.step = batch_steps * batches, batches, 0
        self.state, self.started = "running", time.perf_counter()

    def add_batch_steps(self, steps: int) -> None:
        """Count ``steps`` more in each batch (a second pass, e.g. hires fix's); from a ``JOB_START`` hook."""
        self.total_steps += steps * self.batches

    def start_batch(self, index: int) -> None:
        """Batch ``index`` starts: the steps of the batches before it count as done (a skipped one's too)."""
        self.step = max(self.step, self.total_steps * index // self.batches)

    def advance(self, text: str) -> None:
        """One sampling step is done; ``text`` tells which. A nested job's step also counts in its parent."""
        self.step += 1
        self.textinfo = text
        if self.parent is not None:
            self.parent.advance(self.parent_text.format(step=self.step))

    def nested(self, text: str) -> JobProgress:
        """The progress of a job run inside this one (a second pass): it shares the stop flags, and each of its
        steps also counts here, shown as ``text`` ("{step}" becomes the nested job's step number)."""
        return JobProgress(control=self.control, parent=self, parent_text=text)

    def finish(self) -> None:
        """The job is over; unless interrupted, all its steps count as done (a skipped batch's rest too)."""
        if not self.control.interrupted:
            self.step = max(self.step, self.total_steps)
        self.state = "done"

    def show_preview(self, image, step: int | None = None) -> None:
        """``image`` is the live preview from the step just done (or from ``step``, relayed from a worker); a nested
        job's shows in its parent too."""
        self._preview, self.preview_step = image, self.step if step is None else step
        if self.parent is not None:
            self.parent.show_preview(image)

    def interrupt(self) -> None:
        """Stop the job within one sampling step; images already made are kept."""
        self.control.interrupted = True

    def skip(self) -> None:
        """Stop the current batch and go on with the next one."""
        self.control.skipped = True
