"""The web UI served with ``--workers 2`` (a local Ray instance, two CPU workers over tiny checkpoints) in a real
browser: the Workers tab lists the workers, and a job's progress and live preview come from the worker that runs it.
"""
from __future__ import annotations

import re

import pytest

from tests.browser_support import (  # noqa: F401 - browser and chromium_path are fixtures
    browser,
    chromium_path,
    record_progress,
    shot,
    small_job,
    watched_page,
)
from tests.webui_server import running_server

pytest.importorskip("ray")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("webui-workers"), extra=("--workers", "2")) as s:
        yield s


def _cells(page, key: str) -> list[str]:
    return page.eval_on_selector_all(f"#workers_table td[data-key={key}]", "cells => cells.map(c => c.innerText)")


def test_workers_tab_and_progress_from_a_worker(browser, server):  # noqa: F811 - the fixture
    with watched_page(browser, server.url) as page:
        page.get_by_role("tab", name="Workers").click()
        page.wait_for_function("() => [...document.querySelectorAll('#workers_table td[data-key=state]')]"
                               ".filter(c => c.innerText === 'idle').length === 2", timeout=180_000)
        assert _cells(page, "name") == ["worker-1", "worker-2"]
        assert set(_cells(page, "checkpoint")) == {"tiny-alpha.safetensors"}
        assert set(_cells(page, "device")) == {"cpu"} and _cells(page, "jobs_done") == ["0", "0"]
        page.get_by_role("tab", name="txt2img").first.click()
        page.fill("#txt2img_prompt textarea", "a job on a worker")
        small_job(page, steps=150)
        record_progress(page)
        page.click("#txt2img_generate")
        page.wait_for_selector("#txt2img_preview img", state="visible")  # the worker's live preview
        shot(page, "workers-progress")
        info = page.wait_for_selector("#txt2img_info .sd-infotext").inner_text()
        assert "a job on a worker" in info and "Steps: 150" in info
        seen = page.evaluate("window.sdSeenProgress")
        steps = [int(m.group(1)) for text, _ in seen if (m := re.search(r"Step (\d+)/150", text))]
        assert len(set(steps)) >= 2 and steps == sorted(steps)  # several steps relayed, in order
        page.get_by_role("tab", name="Workers").click()
        page.wait_for_function("() => [...document.querySelectorAll('#workers_table td[data-key=jobs_done]')]"
                               ".map(c => +c.innerText).reduce((a, b) => a + b, 0) === 1")
        shot(page, "workers-tab")
