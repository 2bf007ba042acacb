"""A real API server process over tiny checkpoints, for the HTTP API tests and the API benchmark.

``python -m tests.api_server ROOT PORT [--small-limits] [server flags such as --api-auth u:p]`` builds the state
(tiny SD1 checkpoints "tiny" and "tiny-b", both kept in RAM; a LoRA; a prompt style; the shipped extensions)
under ROOT and serves ``/sdapi/v1`` with uvicorn on 127.0.0.1 (on every address with ``--listen``),
through ``webui.server.create_app`` (``--nowebui``) when that exists, else an app of the API router and
``install_security``. An extension-style route (``/test-extension/hello``) is added after the app is built, as
extensions do in ``app_started``. ``--small-limits`` lowers the engine's size/steps/batch limits so that a fuzzer
exploring the whole schema only makes small jobs.

``running_server(root, *flags)`` (a context manager) starts it on a free port and yields its base URL.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from tests.webui_server import free_port, stop_process, wait_for_http

REPO = Path(__file__).resolve().parent.parent
EXTENSION_ROUTE = "/test-extension/hello"
FAMILIES = {"tiny": "sd1", "tiny-b": "sd1"}
STYLE_CSV = 'name,prompt,negative_prompt\nbright,"{prompt}, bright colors",dark\n'


def _write_lora(path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    base = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    save_file({f"{base}.lora_down.weight": torch.zeros(4, 32), f"{base}.lora_up.weight": torch.zeros(32, 4),
               f"{base}.alpha": torch.tensor(4.0)}, str(path), metadata={"ss_output_name": "tinystyle"})


def build_state(root: Path, server_flags: list[str]):
    from modules.extensions import load_extensions
    from tests.engine_fixtures import make_state

    config = root / "data" / "config.json"
    if not config.exists():  # both tiny checkpoints stay in RAM: requests switching between them stay fast
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text('{"sd_checkpoints_limit": 2}', encoding="utf-8")
    state = make_state(root, FAMILIES, load="tiny", flags=server_flags)
    state.options = dataclasses.replace(state.options, skip_install=True)
    load_extensions(state)  # the shipped ones: hires fix, X/Y/Z plot
    lora = root / "models" / "Lora" / "tiny-lora.safetensors"
    if not lora.exists():
        _write_lora(lora)
    state.networks.refresh()
    state.styles_path.parent.mkdir(parents=True, exist_ok=True)
    state.styles_path.write_text(STYLE_CSV, encoding="utf-8")
    return state


def build_app(state):
    from fastapi import FastAPI

    if importlib.util.find_spec("webui.server") is not None:
        from webui import server

        if hasattr(server, "create_app"):
            return server.create_app(state)
    from modules.api.routes import build_router
    from modules.api.security import install_security

    app = FastAPI(title="sdwebui API (test server)")
    app.include_router(build_router(state))
    install_security(app, state)
    return app


def _small_limits() -> None:
    from modules.processing import params

    params.MAX_SIZE, params.MAX_STEPS, params.MAX_BATCH_SIZE, params.MAX_N_ITER = 128, 6, 2, 2


def main(argv: list[str]) -> None:
    import uvicorn

    root, port, flags = Path(argv[0]), int(argv[1]), argv[2:]
    if "--small-limits" in flags:
        flags.remove("--small-limits")
        _small_limits()  # before modules.api.models reads them into the schema
    state = build_state(root, ["--nowebui", *flags])
    app = build_app(state)
    app.add_api_route(EXTENSION_ROUTE, lambda: {"hello": "extension"}, methods=["GET"])
    uvicorn.run(app, host=state.options.server.host, port=port, log_level="warning")  # --listen: every address


@contextlib.contextmanager
def running_server(root: Path, *flags: str, timeout: float = 180):
    """Start the server process and wait until it answers; yields ``http://127.0.0.1:PORT``."""
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COMMANDLINE_ARGS": ""}
    log = open(root / f"server-{port}.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "tests.api_server", str(root), str(port), *flags], cwd=REPO,
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_for_http(f"{url}/sdapi/v1/samplers", proc, timeout)
        except RuntimeError as e:
            raise RuntimeError(f"{e}\n{(root / f'server-{port}.log').read_text()}") from None
        yield url
    finally:
        stop_process(proc)
        log.close()


if __name__ == "__main__":
    main(sys.argv[1:])
