"""Hostile clients against the real server (``launch.py`` with the UI, the API and logins, on the bundled model).

Each request that once took the server down, filled its memory or answered 500 is now refused with a 400 that
names the field, the server keeps answering, and its peak RSS while handling the request stays under the budget
(read from ``/proc/PID/status`` after resetting the peak through ``/proc/PID/clear_refs``).
"""
from __future__ import annotations

import base64
import http.client
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from PIL import Image

from tests.webui_server import REPO, running_server

DEMO = REPO / "models" / "Stable-diffusion" / "demo-shapes.safetensors"
AUTH = ("u", "secret")
RSS_BUDGET_BYTES = 1536 * 2**20
BASE = {"prompt": "a red circle", "width": 64, "height": 64, "steps": 1}


def _bomb_png(side: int) -> str:
    """A ``side``×``side`` black PNG: a few hundred KB that would decode to ``side²`` bytes or more."""
    buffer = io.BytesIO()
    Image.new("1", (side, side)).save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    flags = ("--ckpt", str(DEMO), "--lora-dir", str(REPO / "models" / "Lora"), "--api",
             "--gradio-auth", f"{AUTH[0]}:{AUTH[1]}", "--api-auth", f"{AUTH[0]}:{AUTH[1]}")
    with running_server(tmp_path_factory.mktemp("hostile"), flags) as s:
        yield s


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


def _post_measured(server, path: str, body: dict | str) -> tuple[requests.Response, int]:
    """POST ``body`` (a dict, or JSON text sent as is) and the server's peak RSS while it was handled."""
    pid = server.process.pid
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets the peak RSS to the current RSS
    data = body if isinstance(body, str) else json.dumps(body)
    response = requests.post(server.url + path, data=data.encode("utf-8"), auth=AUTH, timeout=120,
                             headers={"Content-Type": "application/json"})
    return response, _peak_rss(pid)


HOSTILE = {
    "xyz_huge_range": ("/sdapi/v1/txt2img", {**BASE, "script_name": "x/y/z plot",
                                              "script_args": {"x_type": "Seed", "x_values": "1-1000000000"}},
                       "X axis Seed"),
    "xyz_huge_count": ("/sdapi/v1/txt2img", {**BASE, "script_name": "x/y/z plot",
                                              "script_args": {"x_type": "Seed", "x_values": "1-2 [300000000]"}},
                       "X axis Seed"),
    "too_many_images": ("/sdapi/v1/txt2img", {**BASE, "batch_size": 64, "n_iter": 1000}, "limit_images_per_request"),
    "huge_prompt": ("/sdapi/v1/txt2img", {**BASE, "prompt": "a" * 2_000_000}, "prompt"),
    "huge_seed_resize": ("/sdapi/v1/txt2img", {**BASE, "seed_resize_from_w": 100000, "seed_resize_from_h": 100000},
                         "seed_resize_from_w"),
    "million_seed_resize": ("/sdapi/v1/txt2img", {**BASE, "seed_resize_from_w": 10**6, "seed_resize_from_h": 64},
                            "seed_resize_from_w"),
    "lone_surrogate": ("/sdapi/v1/txt2img", '{"prompt": "a \\ud800 b", "width": 64, "height": 64, "steps": 1}',
                       "prompt"),
    "surrogate_in_negative": ("/sdapi/v1/txt2img",
                              '{"prompt": "a", "negative_prompt": "\\udfff", "width": 64, "height": 64, "steps": 1}',
                              "negative_prompt"),
    "lora_weight_1e308": ("/sdapi/v1/txt2img", {**BASE, "prompt": "a circle <lora:demo-checkered:1e308>"}, "prompt"),
    "limit_in_override": ("/sdapi/v1/txt2img", {**BASE, "override_settings": {"limit_upload_pixels": 10**12}},
                          "limit_upload_pixels"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_request_is_a_400_within_the_memory_budget(server, name):
    path, body, field = HOSTILE[name]
    response, peak = _post_measured(server, path, body)
    assert response.status_code == 400, response.text[:500]
    assert field in response.json()["detail"]
    assert peak < RSS_BUDGET_BYTES, f"peak RSS {peak / 2**20:.0f} MiB"
    assert requests.get(server.url + "/sdapi/v1/progress", auth=AUTH, timeout=10).status_code == 200


@pytest.fixture(scope="module")
def bomb():
    return _bomb_png(13000)


def test_a_huge_upload_is_refused_before_it_is_decoded(server, bomb):
    assert len(bomb) < 1_000_000  # 13000×13000 pixels in under a megabyte of request
    one, peak_one = _post_measured(server, "/sdapi/v1/img2img", {**BASE, "init_images": [bomb]})
    assert one.status_code == 400 and "init_images[0]" in one.json()["detail"]
    assert "limit_upload_pixels" in one.json()["detail"]
    many, peak_many = _post_measured(server, "/sdapi/v1/img2img", {**BASE, "init_images": [bomb] * 4, "mask": bomb})
    assert many.status_code == 400
    cn, peak_cn = _post_measured(server, "/controlnet/detect", {"controlnet_module": "canny",
                                                                "controlnet_input_images": [bomb]})
    assert cn.status_code == 400 and "pixels" in cn.text
    info, peak_info = _post_measured(server, "/sdapi/v1/png-info", {"image": bomb})
    assert info.status_code == 400
    assert max(peak_one, peak_many, peak_cn, peak_info) < RSS_BUDGET_BYTES


def test_uploads_share_a_budget_per_request(server):
    """Four images that are each allowed, but together over the request's total, are refused as a whole."""
    image = _bomb_png(2048)  # 4 M pixels
    settings = {"limit_upload_pixels": 5_000_000, "limit_upload_pixels_total": 9_000_000}
    old = requests.get(server.url + "/sdapi/v1/options", auth=AUTH, timeout=10).json()
    assert requests.post(server.url + "/sdapi/v1/options", json=settings, auth=AUTH, timeout=10).status_code == 200
    try:
        response = requests.post(server.url + "/sdapi/v1/img2img", json={**BASE, "init_images": [image] * 3},
                                 auth=AUTH, timeout=60)
        assert response.status_code == 400
        assert "init_images[2]" in response.json()["detail"]
        two = requests.post(server.url + "/sdapi/v1/img2img", json={**BASE, "init_images": [image] * 2,
                                                                    "width": 64, "height": 64}, auth=AUTH, timeout=120)
        assert two.status_code == 200, two.text[:300]
    finally:
        restore = {k: old[k] for k in settings}
        requests.post(server.url + "/sdapi/v1/options", json=restore, auth=AUTH, timeout=10)


def _raw_post(url: str, path: str, headers: list[tuple[str, str]]) -> int:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    connection.putrequest("POST", path)
    token = base64.b64encode(f"{AUTH[0]}:{AUTH[1]}".encode()).decode()
    for name, value in [*headers, ("Authorization", f"Basic {token}"), ("Content-Length", "0")]:
        connection.putheader(name, value)
    connection.endheaders()
    status = connection.getresponse().status
    connection.close()
    return status


def test_a_repeated_origin_header_is_refused(server):
    own = server.url
    assert _raw_post(own, "/sdapi/v1/interrupt", [("Origin", own)]) == 200
    assert _raw_post(own, "/sdapi/v1/interrupt", [("Origin", own), ("Origin", "http://evil.example")]) == 400
    assert _raw_post(own, "/sdapi/v1/interrupt", [("Origin", "http://evil.example"), ("Origin", own)]) == 400


def test_nothing_names_endpoints_models_or_settings_before_login(server):
    for path in ("/", "/?view=api", "/gradio_api/runs/"):
        page = requests.get(server.url + path, timeout=10)
        assert page.status_code == 200
        assert "demo-shapes" not in page.text and "sd_model_checkpoint" not in page.text, path
        assert '"auth_required":true' in page.text.replace(" ", "")
        assert len(page.text) < 50_000, f"{path}: {len(page.text)} characters"
    for path in ("/config", "/gradio_api/info", "/openapi.json", "/sdapi/v1/sd-models"):
        assert requests.get(server.url + path, timeout=10).status_code == 401, path
    session = requests.Session()
    login = session.post(server.url + "/login", data={"username": AUTH[0], "password": AUTH[1]}, timeout=10)
    assert login.status_code == 200
    assert "demo-shapes" in session.get(server.url + "/", timeout=10).text  # the signed-in page is whole


def test_extension_routes_answer_with_the_ui_on(server):
    models = requests.get(server.url + "/controlnet/model_list", auth=AUTH, timeout=10)
    assert models.status_code == 200
    assert any("demo-shapes-silhouette" in name for name in models.json()["model_list"])
    assert requests.get(server.url + "/controlnet/model_list", timeout=10).status_code == 401


@pytest.mark.parametrize("flags", [("--listen", "--api", "--api-auth", "a:", "--gradio-auth", "u:p"),
                                   ("--gradio-auth", ":secret"), ("--api", "--api-auth", "a:p,b:")])
def test_empty_credentials_are_refused_at_start(tmp_path, flags):
    run = subprocess.run([sys.executable, str(REPO / "launch.py"), "--skip-install", "--device", "cpu",
                          "--data-dir", str(tmp_path), *flags], cwd=REPO, capture_output=True, text=True,
                         timeout=120, env={**os.environ, "COMMANDLINE_ARGS": ""})
    assert run.returncode != 0
    assert "non-empty" in run.stdout + run.stderr
