"""The parts of the generation workers that need no Ray: the queue's dispatch to workers, deferred saves, the
progress relay, the error carried back, the flags and the optional install; and that the default mode never
imports Ray."""
from __future__ import annotations

import subprocess
import sys
import threading

import pytest
from PIL import Image

from modules.cmd_args import REPO_ROOT, parse_command_line
from modules.job_queue import JobQueue
from modules.launch_utils import APP, COMMANDS, command_extras, read_requirements
from modules.processing.params import ParamError
from modules.processing.progress import JobProgress
from modules.processing.saving import UnsavedImages, deferred_saves, write_pending
from modules.workers import relay
from modules.workers.messages import JobFailure, Snapshot


class FakeWorkers:
    """Two workers that run a job's ``remote`` callable in a thread."""

    def __init__(self, count: int = 2):
        self.free = count
        self.queue: JobQueue | None = None

    def claim(self, job):
        if not self.free:
            return None
        self.free -= 1
        return "worker"

    def start(self, job, worker, finished):
        def run():
            job.result = job.remote()
            self.free += 1
            finished(job)
            self.queue.wake()

        threading.Thread(target=run, daemon=True).start()


def test_remote_jobs_run_side_by_side_and_a_local_job_keeps_its_turn():
    queue, workers = JobQueue(), FakeWorkers()
    workers.queue = queue
    queue.use_workers(workers)
    gates = [threading.Event() for _ in range(3)]
    started = []

    def remote(i):
        def run():
            started.append(i)
            gates[i].wait(5)
            return f"remote {i}"
        return run

    jobs = [queue.submit(lambda p: "here", "gen", remote=remote(i)) for i in range(3)]
    local = queue.submit(lambda p: "local", "load")  # behind the third job, which waits for a free worker
    for _ in range(100):
        if len(started) == 2:
            break
        threading.Event().wait(0.02)
    assert sorted(started) == [0, 1] and queue.current is jobs[0] and len(queue.running) == 2
    assert queue.position(jobs[2]) == 3 and queue.position(local) == 4 and not local.done
    gates[1].set()
    assert jobs[1].wait(5) == "remote 1" and jobs[2].wait_done(0.2) is False  # job 2 took the free worker
    gates[0].set(), gates[2].set()
    assert [j.wait(5) for j in jobs] == ["remote 0", "remote 1", "remote 2"] and local.wait(5) == "local"
    queue.use_workers(None)
    assert queue.submit(lambda p: "here again", remote=remote(0)).wait(5) == "here again"  # without workers


def test_deferred_saves_write_nothing_until_the_app_writes_them(tmp_path):
    image = Image.new("RGB", (8, 8), "red")
    with deferred_saves() as pending:
        stand_in = UnsavedImages(save_txt=True).save(image, tmp_path / "out", lambda f: f / "00000-1.png", "text")
    assert not (tmp_path / "out").exists() and len(pending) == 1
    written, warnings = write_pending(pending)
    path = written[stand_in]
    assert path.is_file() and path.parent.parent == tmp_path / "out" and warnings == []
    assert path.with_suffix(".txt").read_text(encoding="utf-8") == "text"
    assert UnsavedImages().save(image, tmp_path / "now", lambda f: f / "a.png", None).is_file()  # outside: at once


def test_relay_mirrors_progress_and_keeps_a_skip_until_a_running_job_took_it():
    progress = JobProgress()
    progress.skip()
    sent = relay.controls_of(progress)
    relay.apply(Snapshot(), progress, sent)  # the worker had not started the job
    assert progress.control.skipped and progress.state == "queued"
    preview = Image.new("RGB", (8, 8))
    relay.apply(Snapshot(True, progress.job_id, "running", 3, 10, 1.5, "Batch 1/1, step 3/10", preview, 2,
                         ["image"]), progress, sent)
    assert not progress.control.skipped and (progress.step, progress.total_steps) == (3, 10)
    assert progress.preview_step == 2 and progress.preview is preview and progress.images == ["image"]
    assert 1.5 <= progress.eta_seconds * 3 / 7 < 2.5  # the worker's elapsed time gives the ETA
    assert relay.controls_of(progress).wants_preview  # the read above asks the worker for previews


def test_a_job_error_comes_back_as_the_same_kind():
    error = JobFailure("ParamError", "sd_model_checkpoint: node a has no checkpoint 'x'", "sd_model_checkpoint",
                       True).exception()
    assert isinstance(error, ParamError) and error.field == "sd_model_checkpoint" and str(error).count(":") == 1
    assert type(JobFailure("ValueError", "bad", None, True).exception()) is ValueError
    assert str(JobFailure("NonFiniteOutput", "NaN", None, False).exception()) == "NonFiniteOutput: NaN"


def test_flags_and_the_optional_install():
    options = parse_command_line(["--workers", "3", "--ray-address", "10.0.0.1:6379"]).options
    assert (options.workers, options.ray_address, options.uses_workers) == (3, "10.0.0.1:6379", True)
    plain = parse_command_line([]).options
    assert not plain.uses_workers and command_extras(APP, plain) == ()
    assert command_extras(APP, options) == ("cluster",) and command_extras(COMMANDS["test"], options) == ("test",)
    pyproject = REPO_ROOT / "pyproject.toml"
    assert not any(r.startswith("ray") for r in read_requirements(pyproject))  # the default install does not grow
    assert "ray==2.60.0" in read_requirements(pyproject, ["cluster"])
    assert "ray==2.60.0" in read_requirements(pyproject, ["test"])
    with pytest.raises(SystemExit):
        parse_command_line(["--workers", "0"])


def test_the_default_mode_never_imports_ray():
    code = ("import sys; import modules.scripts, modules.job_queue, modules.processing.runner, webui.app; "
            "from modules.workers import messages, relay; print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"

