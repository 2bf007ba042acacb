"""Live previews are made only while someone reads them (the UI's poll, /sdapi/v1/progress with images), on a real
tiny checkpoint."""
from __future__ import annotations

import time

import pytest

from modules.hooks import HookPoint, HookRegistry
from modules.processing.params import Txt2ImgParams
from modules.processing.progress import PREVIEW_INTEREST_SECONDS, JobProgress
from modules.processing.runner import run_job
from tests.engine_fixtures import make_state


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    return make_state(tmp_path_factory.mktemp("preview"), {"tiny": "sd1"})


def run(state, watch_from: int | None) -> tuple[JobProgress, list[int]]:
    """A 4-step job; from step ``watch_from`` on (None: never) a poller reads the preview before each step's
    callback, as the UI does. Returns the progress and the preview steps the poller saw."""
    progress, seen = JobProgress(), []

    def poll(event) -> None:
        if watch_from is not None and event.step >= watch_from and progress.preview is not None:
            seen.append(progress.preview_step)

    hooks = HookRegistry()
    hooks.register(HookPoint.AFTER_CFG, poll, "test")
    params = Txt2ImgParams(prompt="a red circle", seed=1, steps=4, width=64, height=64, do_not_save_samples=True,
                           do_not_save_grid=True)
    run_job(state, params, progress, extra_hooks=hooks)
    return progress, seen


def test_a_job_nobody_watches_makes_no_preview(state):
    progress, _ = run(state, None)
    assert progress.preview_step == -1 and progress.preview_asked is None


def test_a_watched_job_previews_each_step_from_the_first_read(state):
    progress, seen = run(state, 0)
    assert seen == [1, 2, 3]  # read before steps 2, 3 and 4: the previews of steps 1, 2 and 3
    assert progress.preview_step == 4 and progress.preview.size == (64, 64)
    late, seen = run(state, 2)  # the first read comes before step 3's callback: previews from step 3 on
    assert seen == [3] and late.preview_step == 4


def test_interest_lapses_and_reaches_nested_jobs():
    parent = JobProgress()
    child = parent.nested("Hires pass {step}")
    assert not parent.wants_preview() and not child.wants_preview()
    assert parent.preview is None  # a read asks, even before there is anything to show
    assert parent.wants_preview() and child.wants_preview()  # the UI reads the parent of a second pass
    parent.preview_asked = time.monotonic() - PREVIEW_INTEREST_SECONDS - 1
    assert not child.wants_preview()
