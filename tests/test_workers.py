"""Generation workers on a real local Ray cluster (issue 21): two CPU workers with one torch thread each over the
bundled demo model, behind the app's own queue and API (in this process, over ASGI).

Every job through a worker must give the image the app's own process gives for the same request, with the same
infotext, and the app must write it once; progress, preview, skip and interrupt reach the worker; a worker killed
mid-job costs one retry on the other worker, and comes back.

This module is named to run last: after a Ray driver in the pytest process shuts down, Ray can still end the
process a minute later (seen in a full run: the next module's server start died with exit 1, no summary), so
nothing may run after it."""
from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import signal
import time

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray")

from modules.cmd_args import REPO_ROOT, parse_command_line
from modules.processing.params import Txt2ImgParams

DEMO = "demo-shapes.safetensors"
SILHOUETTE = REPO_ROOT / "models" / "ControlNet" / "demo-shapes-silhouette.safetensors"
BASE = {"prompt": "a large red circle on a blue background", "width": 64, "height": 64, "steps": 8,
        "sampler_name": "DPM++ 2M", "scheduler": "Karras", "cfg_scale": 7}
API = {**BASE, "save_images": True}  # the API saves only when asked (A1111's default)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The app: state, queue, extensions and API over the demo model, with two workers attached."""
    import torch
    from fastapi import FastAPI

    from modules.api.routes import build_router
    from modules.app_state import create_state
    from modules.extensions import load_extensions
    from modules.workers.pool import PoolSettings, start_workers

    data = tmp_path_factory.mktemp("workers")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker: the in-process references compute exactly as the workers do
    state = create_state(parse_command_line(["--data-dir", str(data), "--device", "cpu"]).options)
    state.settings.update({"sd_model_checkpoint": DEMO})
    load_extensions(state, [REPO_ROOT / "extensions"])
    state.models.load(DEMO)
    app = FastAPI()
    app.include_router(build_router(state))
    pool = start_workers(state, PoolSettings(count=2, local_cpus=2, threads=1))
    try:
        assert pool.wait_ready(180), pool.status()
        yield state, pool, app
    finally:
        pool.close()
        torch.set_num_threads(threads)


def _post_all(app, path: str, bodies: list[dict]) -> list[dict]:
    """POST the bodies at once (the API's handlers run in threads, as under uvicorn)."""
    import httpx

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app", timeout=300) as client:
            responses = await asyncio.gather(*(client.post(path, json=b) for b in bodies))
        for r in responses:
            assert r.status_code == 200, r.text
        return [r.json() for r in responses]

    return asyncio.run(go())


def _pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def _in_process(state, fn):
    """``fn()`` with the workers detached: the app's own process runs the jobs, as without ``--workers``."""
    pool = state.queue.workers
    state.queue.use_workers(None)
    try:
        return fn()
    finally:
        state.queue.use_workers(pool)


def _saved(state) -> list:
    return sorted(state.options.outputs_dir.rglob("*.png"))


def _slot_of(pool, job, timeout: float = 60):
    """The worker running ``job`` once it has made a sampling step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        slot = next((s for s in pool.slots if s.job is job), None)
        if slot is not None and job.progress.step > 0:
            return slot
        time.sleep(0.02)
    raise AssertionError(f"job never ran: {pool.status()}")


def test_concurrent_api_requests_match_the_app_process_and_use_both_workers(cluster):
    state, pool, app = cluster
    overrides = [{}, {"CLIP_stop_at_last_layers": 2}, {"eta_noise_seed_delta": 31337}, {"randn_source": "CPU"}]
    bodies = [{**API, "seed": 100 + i, "steps": 6 + i % 3, "cfg_scale": 5 + i,
               "sampler_name": ("DPM++ 2M", "Euler a")[i % 2], "override_settings": overrides[i % 4]}
              for i in range(8)]
    before = len(_saved(state))
    done_before = [s.done for s in pool.slots]
    remote = _post_all(app, "/sdapi/v1/txt2img", bodies)
    assert len(_saved(state)) == before + 8  # written by the app, once each
    assert all(s.done > d for s, d in zip(pool.slots, done_before)), pool.status()  # both workers ran jobs
    local = _in_process(state, lambda: _post_all(app, "/sdapi/v1/txt2img", bodies))
    for body, r, l in zip(bodies, remote, local):
        assert np.array_equal(_pixels(r["images"][0]), _pixels(l["images"][0])), body
        assert json.loads(r["info"])["infotexts"] == json.loads(l["info"])["infotexts"]
        assert f"Seed: {body['seed']}" in json.loads(r["info"])["infotexts"][0]


def test_a_lora_a_controlnet_unit_and_a_script_run_on_a_worker_as_in_the_app(cluster):
    from modules.training.controlnet_eval import evaluation_scenes
    from modules.training.controlnet_train import render_silhouette

    state, _, app = cluster
    buffer = io.BytesIO()
    Image.fromarray(render_silhouette(evaluation_scenes(1, seed=5)[0])).save(buffer, format="PNG")
    unit = {"input_image": base64.b64encode(buffer.getvalue()).decode(), "module": "none",
            "model": SILHOUETTE.stem}
    bodies = [{**API, "seed": 7, "prompt": BASE["prompt"] + " <lora:demo-checkered:1>"},
              {**API, "seed": 8, "alwayson_scripts": {"ControlNet": {"args": [unit]}}},
              {**API, "seed": 9, "script_name": "x/y/z plot", "script_args": {"x_type": "Seed", "x_values": "1,2"}}]
    before = len(_saved(state))
    remote = _post_all(app, "/sdapi/v1/txt2img", bodies)
    written = len(_saved(state)) - before
    local = _in_process(state, lambda: _post_all(app, "/sdapi/v1/txt2img", bodies))
    assert len(_saved(state)) - before == 2 * written == 2 * 5  # 1 + 1 + (2 images and the grid), here and there
    infotexts = [json.loads(r["info"])["infotexts"][0] for r in remote]
    assert "Lora hashes" in infotexts[0] and "ControlNet 0" in infotexts[1] and len(remote[2]["images"]) == 3
    for r, l in zip(remote, local):
        assert len(r["images"]) == len(l["images"])
        assert all(np.array_equal(_pixels(a), _pixels(b)) for a, b in zip(r["images"], l["images"]))
        assert json.loads(r["info"])["infotexts"] == json.loads(l["info"])["infotexts"]


def test_a_checkpoint_missing_on_the_node_is_named_with_the_node(cluster):
    from modules import scripts
    from modules.processing.params import ParamError

    state, _, _ = cluster
    job = scripts.submit(state, Txt2ImgParams(**BASE, override_settings={"sd_model_checkpoint": "elsewhere"}))
    with pytest.raises(ParamError, match=r"node .+ has no checkpoint 'elsewhere' in .+Stable-diffusion") as caught:
        job.wait(60)
    assert caught.value.field == "sd_model_checkpoint"


def test_progress_preview_skip_and_interrupt_reach_the_worker(cluster):
    import httpx

    from modules import scripts

    state, pool, app = cluster
    params = Txt2ImgParams(**{**BASE, "steps": 150}, seed=3, n_iter=3)
    job = scripts.submit(state, params)
    _slot_of(pool, job)

    async def api(method: str, path: str):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client:
            response = await client.request(method, path)
            assert response.status_code == 200, response.text
            return response.json()

    deadline = time.monotonic() + 30
    while (progress := asyncio.run(api("GET", "/sdapi/v1/progress")))["current_image"] is None:
        assert time.monotonic() < deadline, "no live preview came from the worker"
        time.sleep(0.1)
    assert progress["current_task"] == job.id and progress["state"]["sampling_step"] > 0
    assert 0 < progress["progress"] < 1 and progress["eta_relative"] > 0
    assert progress["textinfo"].startswith("Batch 1/3")
    preview = Image.open(io.BytesIO(base64.b64decode(progress["current_image"])))
    assert preview.size == (64, 64)
    asyncio.run(api("POST", "/sdapi/v1/skip"))  # batch 1 ends early, batch 2 starts
    deadline = time.monotonic() + 30
    while not job.progress.textinfo.startswith("Batch 2/3"):
        assert time.monotonic() < deadline, job.progress.textinfo
        time.sleep(0.02)
    asyncio.run(api("POST", "/sdapi/v1/interrupt"))
    result = job.wait(60)
    assert result.interrupted and len(result.images) == 2  # the skipped and the interrupted batch, as decoded
    assert job.progress.step < job.progress.total_steps


def test_a_worker_killed_mid_job_costs_one_retry_and_comes_back(cluster):
    from modules import scripts
    from modules.processing.saving import deferred_saves

    state, pool, app = cluster
    params = Txt2ImgParams(**{**BASE, "steps": 60}, seed=42)
    before = _saved(state)
    job = scripts.submit(state, params)
    slot = _slot_of(pool, job)
    killed_pid = slot.info.pid
    os.kill(killed_pid, signal.SIGKILL)
    result = job.wait(120)
    other = next(s for s in pool.slots if s is not slot)
    assert job.progress.state == "done" and other.job is None
    new = [p for p in _saved(state) if p not in before]
    assert new == result.paths and len(new) == 1  # saved once, by the app
    with deferred_saves():  # the reference writes nothing
        reference = _in_process(state, lambda: scripts.run_generation(state, params))
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(reference.images[0]))
    assert result.infotexts == reference.infotexts
    deadline = time.monotonic() + 120
    while slot.state != "idle":
        assert time.monotonic() < deadline, pool.status()
        time.sleep(0.2)
    assert slot.info.pid != killed_pid and slot.restarts == 1 and slot.failures == 1
    listing = asyncio.run(_get(app, "/sdapi/v1/workers"))
    assert listing["enabled"] and [w["restarts"] for w in listing["workers"]] == [s.restarts for s in pool.slots]
    assert {w["checkpoint"] for w in listing["workers"]} == {DEMO}


async def _get(app, path: str) -> dict:
    import httpx

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client:
        return (await client.get(path)).json()


def test_a_job_lost_twice_fails_with_both_reasons(cluster):
    """Last in the module: it leaves both workers restarting."""
    from modules import scripts

    state, pool, _ = cluster
    before = _saved(state)
    job = scripts.submit(state, Txt2ImgParams(**{**BASE, "steps": 150}, seed=9, n_iter=4))
    first = _slot_of(pool, job)
    os.kill(first.info.pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while (second := next((s for s in pool.slots if s.job is job and s is not first), None)) is None \
            or not job.progress.textinfo.startswith("Batch"):
        assert time.monotonic() < deadline, pool.status()
        time.sleep(0.02)
    os.kill(second.info.pid, signal.SIGKILL)
    with pytest.raises(RuntimeError, match=r"the job failed twice: worker-\d on .+ stopped .+; worker-\d on .+ stopped"):
        job.wait(60)
    assert job.progress.state == "failed" and _saved(state) == before  # nothing saved
