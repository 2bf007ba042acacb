"""Auth on every route (extension routes included), Origin/Host checks, CORS, body limit, and a schema fuzz run."""
from __future__ import annotations

import base64
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.routing import Mount, Route

from tests.api_server import EXTENSION_ROUTE, running_server

USER, PASSWORD = "alice", "s3cret:with:colons"
ALLOWED_ORIGIN = "http://allowed.example"
FLAGS = ("--small-limits", "--api-auth", f"bob:pw,{USER}:{PASSWORD}", "--cors-allow-origins", ALLOWED_ORIGIN)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("api-security"), *FLAGS) as url:
        yield url


@pytest.fixture(scope="module")
def routes(tmp_path_factory) -> list[tuple[str, str]]:
    """(method, path) of every route of the same app as the server's, built here without loading a model."""
    from modules.app_state import create_state
    from modules.cmd_args import parse_command_line
    from modules.extensions import load_extensions
    from tests.api_server import build_app

    root = tmp_path_factory.mktemp("routes")
    args = ["--data-dir", str(root / "data"), "--ckpt-dir", str(root / "models"), "--lora-dir", str(root / "lora"),
            "--vae-dir", str(root / "vae"), "--embeddings-dir", str(root / "emb"), "--device", "cpu",
            "--precision", "full", "--nowebui", *FLAGS[1:]]
    state = create_state(parse_command_line(args).options)
    load_extensions(state)  # the shipped ones, as the server does: their routes (ControlNet's) are listed too
    app = build_app(state)
    app.add_api_route(EXTENSION_ROUTE, lambda: {}, methods=["GET"])
    # API routes (also those inside included routers) from the schema; the docs routes from the route table
    found = {(method.upper(), path) for path, ops in app.openapi()["paths"].items() for method in ops}
    for route in app.routes:
        assert not isinstance(route, Mount), "a mounted app in --nowebui mode"
        if isinstance(route, Route):
            found |= {(method, route.path) for method in route.methods - {"HEAD"}}
    return sorted(found)


def test_every_route_needs_credentials(server, routes):
    assert len(routes) > 30 and ("GET", EXTENSION_ROUTE) in routes and ("GET", "/docs") in routes
    assert {("GET", "/controlnet/model_list"), ("GET", "/controlnet/module_list"),
            ("POST", "/controlnet/detect")} <= set(routes)
    with httpx.Client(base_url=server, timeout=60) as client:
        for method, path in routes:
            for auth in (None, (USER, "wrong"), ("mallory", PASSWORD)):
                response = client.request(method, path, auth=auth)
                assert response.status_code == 401, (method, path, auth, response.status_code)
                assert response.headers["www-authenticate"].startswith("Basic")
            response = client.request(method, path, auth=(USER, PASSWORD), json={} if method == "POST" else None)
            if method == "GET":
                assert response.status_code == 200, (method, path, response.text)
            else:
                assert response.status_code not in (401, 403) and response.status_code < 500, (path, response.text)
    assert httpx.get(f"{server}/sdapi/v1/samplers", auth=("bob", "pw")).status_code == 200  # the other user
    assert httpx.get(f"{server}/nothing-here", auth=(USER, PASSWORD)).status_code == 404
    assert httpx.get(f"{server}/nothing-here").status_code == 401


def test_cmd_flags_do_not_reveal_credentials(server):
    flags = httpx.get(f"{server}/sdapi/v1/cmd-flags", auth=(USER, PASSWORD)).json()
    assert flags["api_auth"] == "***" and PASSWORD not in str(flags)


def test_cross_origin_posts_are_refused_unless_allowed(server):
    port = urlsplit(server).port
    auth = (USER, PASSWORD)
    url = f"{server}/sdapi/v1/interrupt"
    evil = httpx.post(url, auth=auth, headers={"Origin": "http://evil.example"})
    assert evil.status_code == 403
    assert httpx.post(url, auth=auth, headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
    assert httpx.post(url, auth=auth, headers={"Origin": f"http://127.0.0.1:{port}"}).status_code == 200
    allowed = httpx.post(url, auth=auth, headers={"Origin": ALLOWED_ORIGIN})
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    preflight = {"Origin": ALLOWED_ORIGIN, "Access-Control-Request-Method": "POST"}
    assert httpx.options(f"{server}/sdapi/v1/txt2img", headers=preflight).status_code == 200
    refused = httpx.options(f"{server}/sdapi/v1/txt2img", headers={**preflight, "Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in refused.headers
    # a page of another name resolving to this machine (DNS rebinding) is refused
    assert httpx.get(f"{server}/sdapi/v1/samplers", auth=auth, headers={"Host": "evil.example"}).status_code == 403


def _raw_request(server: str, head: bytes, body: bytes = b"") -> bytes:
    parts = urlsplit(server)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(head + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return data


def test_bodies_over_the_limit_get_413(server):
    token = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    declared = (f"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {token}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {10**9}\r\n\r\n").encode()
    assert _raw_request(server, declared).startswith(b"HTTP/1.1 413")

    def chunks():  # no Content-Length: the limit is enforced while the body streams in
        block = b" " * (1 << 20)
        for _ in range(80):
            yield block

    streamed = httpx.post(f"{server}/sdapi/v1/png-info", auth=(USER, PASSWORD), content=chunks(),
                          headers={"content-type": "application/json"}, timeout=60)
    assert streamed.status_code == 413 and streamed.json()["error"] == "Payload Too Large"


def test_schema_fuzzing_finds_no_server_errors(server, tmp_path):
    """schemathesis over /openapi.json, bounded in time; the server runs with small engine limits."""
    cli = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert cli, "schemathesis is not installed"
    run = subprocess.run(
        [cli, "run", f"{server}/openapi.json", "--auth", "bob:pw", "--checks", "not_a_server_error",
         "--phases", "coverage,fuzzing", "--max-examples", "4", "--max-time", "20", "--seed", "1",
         "--generation-database", "none", "--request-timeout", "60", "--no-color"],
        cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "passed" in run.stdout
