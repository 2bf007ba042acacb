"""Application start: build the state, queue the default checkpoint's load, serve the web UI meanwhile.

A checkpoint that failed on every job last time is not loaded again silently (``avoid_failed_checkpoint``), and
what a save interrupted by a crash left in the output folders is removed in a thread (``clean_after_crash``).

Start-up order matters on a machine with few cores: the cheap refusal checks come before any heavy import, and the
web UI's packages (gradio, fastapi, uvicorn) are imported in a thread while the main thread imports the engine
(torch) and builds the state.
"""
from __future__ import annotations

import importlib
import logging
import threading
import time

from modules.cmd_args import LaunchOptions

log = logging.getLogger("sdwebui")
# Imported in a thread beside the engine's imports. Third-party packages only: two threads importing modules that
# import each other could deadlock on the import locks.
UI_MODULES = ("gradio", "fastapi", "uvicorn")


def start_model_load(state, after: threading.Event | None = None, wait_s: float = 30):
    """Queue the default checkpoint's load as the queue's first job (generation jobs wait behind it).

    With ``after``, the load waits (up to ``wait_s``) until that event is set, e.g. until the server listens, so
    that the page is served first on a machine with few cores.
    """
    from modules.app_state import startup_checkpoint
    from modules.models.safetensors_file import ModelFileError

    started = time.perf_counter()
    options = state.options

    def load(progress):
        if after is not None:
            after.wait(wait_s)
        info = startup_checkpoint(state)
        if info is None:
            raise ModelFileError(f"no checkpoint found in {options.ckpt_dir}: put a .safetensors checkpoint there "
                                 "(or pass --ckpt)")
        progress.textinfo = f"loading {info.filename}"
        try:
            model = state.models.load(info)
        except ModelFileError as e:
            state.failures.failed(info, str(e))
            raise
        if state.settings.current.sd_vae != state.models.vae_choice:
            try:
                state.models.set_vae(state.settings.current.sd_vae)
            except ModelFileError as e:
                log.warning("%s; using the checkpoint's own VAE", e)
        log.info("ready: %s (%s) in %.1f s", info.filename, model.spec.summary, time.perf_counter() - started)
        return model

    return state.queue.submit(load, "load model")


def _import_ahead(names: tuple[str, ...]) -> threading.Thread:
    """Import ``names`` in a daemon thread (errors are left for the main thread's own import to raise)."""

    def run():
        for name in names:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001
                return

    thread = threading.Thread(target=run, name="import-ahead", daemon=True)
    thread.start()
    return thread


def main(options: LaunchOptions) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .server import check_startup

    problem = check_startup(options.server)
    if problem:
        log.error("%s", problem)
        return 2
    if not options.server.nowebui:
        _import_ahead(UI_MODULES)
    from modules.app_state import avoid_failed_checkpoint, create_state
    from modules.extensions import load_extensions
    from modules.processing.debris import clean_after_crash

    from .restart import Restarter, exec_again
    from .server import serve

    started = time.time()
    state = create_state(options)
    load_extensions(state)
    avoid_failed_checkpoint(state)
    threading.Thread(target=clean_after_crash, args=(state, started), name="clean-outputs", daemon=True).start()
    log.info("device %s, weights %s, VAE %s, offload %s", state.plan.device, state.plan.dtype, state.plan.vae_dtype,
             state.plan.offload)
    workers = None
    if options.uses_workers:
        try:
            from modules.workers.pool import pool_settings, start_workers
        except ModuleNotFoundError as e:
            log.error("--workers/--ray-address need Ray (%s): run launch.py without --skip-install, or "
                      "pip install '.[cluster]'", e)
            return 2
        workers = start_workers(state, pool_settings(options))
    listening = threading.Event()
    restarter = Restarter()
    try:
        status = serve(state, start_model_load(state, after=listening), on_started=listening.set, restarter=restarter)
    finally:
        if workers is not None:
            workers.close()
    if restarter.requested.is_set():
        log.info("restarting")
        exec_again()
    return status
