"""Many clients at once: each request gets its own correct result; settings and model switches never leak."""
from __future__ import annotations

import base64
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.api_server import running_server

OVERRIDES = [{"CLIP_stop_at_last_layers": 2}, {"sd_model_checkpoint": "tiny-b"}, {"eta_noise_seed_delta": 31337}, {}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("api-concurrency")) as url:
        yield url


def request(i: int) -> dict:
    return {"prompt": f"shape {i}", "seed": 100 + i, "steps": 3, "width": 64, "height": 64,
            "sampler_name": "Euler a", "override_settings": OVERRIDES[i % len(OVERRIDES)]}


def generate(url: str, body: dict) -> tuple[np.ndarray, dict]:
    response = httpx.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=300)
    assert response.status_code == 200, response.text
    payload = response.json()
    image = Image.open(io.BytesIO(base64.b64decode(payload["images"][0])))
    return np.asarray(image.convert("RGB")), json.loads(payload["info"])


def test_20_concurrent_requests_each_equal_the_same_request_alone(server):
    bodies = [request(i) for i in range(20)]
    with ThreadPoolExecutor(20) as pool:
        together = list(pool.map(lambda b: generate(server, b), bodies))
    alone = [generate(server, b) for b in bodies]
    for i, ((image, info), (image_alone, _)) in enumerate(zip(together, alone)):
        overrides = OVERRIDES[i % len(OVERRIDES)]
        assert info["seed"] == 100 + i and info["prompt"] == f"shape {i}"
        assert np.array_equal(image, image_alone), f"request {i} differs from the same request run alone"
        assert info["sd_model_name"] == ("tiny-b" if "sd_model_checkpoint" in overrides else "tiny")
        assert ("Clip skip: 2" in info["infotexts"][0]) == ("CLIP_stop_at_last_layers" in overrides)
    # the same seed under different settings gives a different image: the overrides really applied
    assert not np.array_equal(together[0][0], generate(server, {**bodies[0], "override_settings": {}})[0])
    options = httpx.get(f"{server}/sdapi/v1/options").json()
    assert options["sd_model_checkpoint"].startswith("tiny.safetensors")
    assert options["CLIP_stop_at_last_layers"] == 1 and options["eta_noise_seed_delta"] == 0


def test_model_switch_from_options_waits_for_the_running_job(server):
    box = {}
    long_job = threading.Thread(target=lambda: box.update(long=generate(server, {**request(3), "steps": 60})))
    long_job.start()
    step = 0
    for _ in range(400):
        step = httpx.get(f"{server}/sdapi/v1/progress").json()["state"]["sampling_step"]
        if step > 0:
            break
        time.sleep(0.05)
    try:
        assert 0 < step < 40, "the switch must be asked for while the long job samples"
        switched = httpx.post(f"{server}/sdapi/v1/options", json={"sd_model_checkpoint": "tiny-b"}, timeout=300)
        assert switched.status_code == 200
        # the switch answered only after its turn: the long job had taken all its steps by then
        assert httpx.get(f"{server}/sdapi/v1/progress").json()["state"]["job_count"] == 0
        long_job.join(300)
        assert box["long"][1]["sd_model_name"] == "tiny"  # the job that was running kept its model
        assert generate(server, {**request(3)})[1]["sd_model_name"] == "tiny-b"
    finally:
        httpx.post(f"{server}/sdapi/v1/options", json={"sd_model_checkpoint": "tiny"}, timeout=300)
