"""Progress of one job: steps, ETA, live preview, finished images, and the interrupt/skip flags."""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from ..sampling import SamplingControl


@dataclass
class JobProgress:
    """Written by the job's thread, read by UI/API threads (plain attribute reads)."""

    job_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    state: str = "queued"  # queued, running, done, failed
    total_steps: int = 0
    step: int = 0
    started: float | None = None
    textinfo: str = ""
    preview: object = None  # PIL image of the current latents (approximation)
    preview_step: int = -1
    images: list = field(default_factory=list)  # finished images, in order
    control: SamplingControl = field(default_factory=SamplingControl)
    error: str | None = None

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total_steps) if self.total_steps else 0.0

    @property
    def eta_seconds(self) -> float | None:
        if not self.started or not self.step or not self.total_steps:
            return None
        elapsed = time.perf_counter() - self.started
        return elapsed / self.step * (self.total_steps - self.step)

    def interrupt(self) -> None:
        """Stop the job within one sampling step; images already made are kept."""
        self.control.interrupted = True

    def skip(self) -> None:
        """Stop the current batch and go on with the next one."""
        self.control.skipped = True
