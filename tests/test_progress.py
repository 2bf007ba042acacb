"""A job's progress as the UI and API read it, on a real tiny checkpoint: Skip moves the bar on, never back."""
from __future__ import annotations

import pytest

from modules.hooks import HookPoint, HookRegistry
from modules.processing.params import Txt2ImgParams
from modules.processing.progress import JobProgress
from modules.processing.runner import run_job
from tests.engine_fixtures import make_state
from webui.progress_html import progress_html


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    state = make_state(tmp_path_factory.mktemp("progress"), {"tiny": "sd1"})
    state.settings.update({"samples_save": False})
    return state


def test_skip_jumps_to_the_next_batch_and_the_bar_ends_full(state):
    progress = JobProgress()
    starts, fractions = [], []
    hooks = HookRegistry()
    hooks.register(HookPoint.BEFORE_SAMPLING, lambda e: starts.append(progress_html(progress, 0)), "test")

    def look(event) -> None:
        fractions.append(progress.fraction)
        if len(starts) >= 2 and event.step == 1:  # Skip pressed in the second step of the 2nd and 3rd batches
            progress.skip()

    hooks.register(HookPoint.AFTER_CFG, look, "test")
    result = run_job(state, Txt2ImgParams(steps=4, width=64, height=64, n_iter=3, do_not_save_samples=True),
                     progress, hooks)
    assert len(result.images) == 3 and not result.interrupted
    assert "Step 8/12" in starts[2]  # the skipped batch's rest counts as done: the next one starts at its place
    fractions.append(progress.fraction)
    assert fractions == sorted(fractions) and fractions[-1] == 1
    assert progress.step == progress.total_steps == 12 and progress.state == "done"


def test_interrupt_leaves_the_bar_where_it_stopped(state):
    progress = JobProgress()
    hooks = HookRegistry()
    hooks.register(HookPoint.AFTER_CFG, lambda e: progress.interrupt() if e.step == 1 else None, "test")
    run_job(state, Txt2ImgParams(steps=4, width=64, height=64, n_iter=2, do_not_save_samples=True), progress, hooks)
    assert progress.step == 2 and progress.fraction == 0.25 and progress.state == "done"
