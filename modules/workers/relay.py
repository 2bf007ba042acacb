"""The app's side of a job running on a worker: its :class:`~modules.processing.progress.JobProgress` (read by the
UI and ``/sdapi/v1/progress`` as for a job in the app's process) follows the worker's, and its interrupt/skip flags
and the wish for a preview go to the worker with each poll."""
from __future__ import annotations

import time

from ..processing.progress import JobProgress
from .messages import Controls, Snapshot


def controls_of(progress: JobProgress) -> Controls:
    """What the app asks of the worker now (a skip stays asked until a running job took it)."""
    return Controls(progress.control.interrupted, progress.control.skipped, progress.wants_preview(),
                    progress.preview_step, len(progress.images))


def apply(snapshot: Snapshot, progress: JobProgress, sent: Controls) -> None:
    """Mirror the worker's progress into the app's ``progress``; ``sent`` is what the poll carried."""
    if not snapshot.applied:
        return
    if sent.skip:
        progress.control.skipped = False
    progress.state = "running"
    progress.total_steps, progress.step, progress.textinfo = snapshot.total_steps, snapshot.step, snapshot.textinfo
    if snapshot.elapsed is not None:
        progress.started = time.perf_counter() - snapshot.elapsed
    if snapshot.preview is not None:
        progress.show_preview(snapshot.preview, snapshot.preview_step)
    progress.images.extend(snapshot.new_images)


def restart(progress: JobProgress, text: str) -> None:
    """The job starts again on another worker: its progress starts over, saying so."""
    progress.step, progress.started, progress.textinfo = 0, None, text
    progress.images.clear()
