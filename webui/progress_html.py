"""The progress bar's HTML from a job's progress and queue position (pure functions)."""
from __future__ import annotations

import html


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = max(0, round(seconds))
    return f"ETA {seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"ETA {seconds}s"


def progress_html(progress, queue_position: int, running=None) -> str:
    """A bar with "Step x/y", the ETA, and how many jobs are ahead while others are (``queue_position``: the
    job's place in line counting the running one, 0 once it runs); while it waits, what ``running`` (the
    queue's current job's progress: a training, another tab's generation) is doing."""
    if queue_position > 1:
        ahead = queue_position - 1
        text = f"Waiting in queue: {ahead} job{'s' if ahead > 1 else ''} ahead"
        if running is not None and running.textinfo:
            now = [html.escape(running.textinfo), format_eta(running.eta_seconds)]
            text += " · now running: " + " · ".join(p for p in now if p)
        fraction = 0.0
    elif progress.state == "queued":
        text, fraction = "Starting…", 0.0
    else:
        fraction = progress.fraction
        parts = [f"Step {progress.step}/{progress.total_steps}" if progress.total_steps else "Preparing…",
                 format_eta(progress.eta_seconds), html.escape(progress.textinfo or "")]
        text = " · ".join(p for p in parts if p)
    return (f'<div class="sd-progress" role="progressbar" aria-valuenow="{fraction * 100:.0f}">'
            f'<div class="sd-progress-fill" style="width:{fraction * 100:.1f}%"></div>'
            f'<span class="sd-progress-text">{text}</span></div>')


def job_progress_html(queue, job) -> str:
    """:func:`progress_html` of a queued or running ``job`` of ``queue`` (a JobQueue)."""
    current = queue.current
    running = current.progress if current is not None and current is not job else None
    return progress_html(job.progress, queue.position(job), running)


def info_html(infotext: str, warnings: list[str] = (), error: str | None = None) -> str:
    """Generation info (HTML-escaped infotext), warnings and the error text of a failed job."""
    out = []
    if error:
        out.append(f'<div class="sd-error">{html.escape(error)}</div>')
    out.extend(f'<div class="sd-warning">{html.escape(w)}</div>' for w in warnings)
    if infotext:
        out.append(f'<div class="sd-infotext">{html.escape(infotext)}</div>')
    return "".join(out)
