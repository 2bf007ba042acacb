"""The web UI's pure parts: card toggling, panel headers, the queue text of the progress bar."""
from __future__ import annotations

import pytest

from modules.processing.progress import JobProgress
from modules.scripts import Control
from webui.extra_networks import toggle_in_prompt
from webui.progress_html import progress_html
from webui.script_controls import panel_header


@pytest.mark.parametrize("prompt, kind, name, expected", [
    ("a cat", "lora", "x", "a cat <lora:x:1>"),
    ("a cat <lora:x:1>", "lora", "x", "a cat"),
    ("a cat <lora:x:0.4>, tinyembed", "lora", "x", "a cat, tinyembed"),
    ("<lora:x:1>, a cat", "lora", "x", "a cat"),
    ("a cat <lora:xy:1>", "lora", "x", "a cat <lora:xy:1> <lora:x:1>"),  # another LoRA's tag stays
    ("", "embedding", "midnight", "midnight"),
    ("a cat", "embedding", "midnight", "a cat, midnight"),
    ("a cat, midnight", "embedding", "midnight", "a cat"),
    ("a midnights cat", "embedding", "midnight", "a midnights cat, midnight"),  # only the whole word
    ("<lora:midnight:0.8>", "embedding", "midnight", "<lora:midnight:0.8>, midnight"),  # not a tag's name
])
def test_a_card_click_adds_its_tag_or_takes_it_out(prompt, kind, name, expected):
    assert toggle_in_prompt(prompt, kind, name) == expected


def test_panel_header_names_what_is_on():
    one = [Control("enable", "checkbox", "Hires. fix", False, switch=True)]
    assert panel_header("Hires fix", one, [False]) == "Hires fix"
    assert panel_header("Hires fix", one, [True]) == "Hires fix — on"
    units = [Control(f"unit{i}_enabled", "checkbox", "enable", False, switch=True, group=f"Unit {i}")
             for i in range(3)]
    assert panel_header("ControlNet", units, [False, True, True]) == "ControlNet — on: Unit 1, Unit 2"


def test_queue_text_only_when_jobs_are_ahead():
    waiting = JobProgress()
    assert "Waiting" not in progress_html(waiting, 1)  # first in line: it starts now
    assert "Waiting in queue: 1 job ahead" in progress_html(waiting, 2)
    assert "Waiting in queue: 3 jobs ahead" in progress_html(waiting, 4)


def test_a_waiting_job_shows_what_runs_ahead_of_it():
    import time

    running = JobProgress()
    running.begin(150, 1)
    running.started = time.perf_counter() - 10
    running.step, running.textinfo = 50, "Training lora mystar: step 50/150, loss 0.0300"
    text = progress_html(JobProgress(), 2, running)
    assert "Waiting in queue: 1 job ahead · now running: Training lora mystar: step 50/150" in text
    assert "ETA 20s" in text
    assert "now running" not in progress_html(JobProgress(), 1, running)  # its own turn: its own steps
