"""Application start: build the state, load the default checkpoint, report ready."""
from __future__ import annotations

import logging
import time

from .app_state import create_state, default_checkpoint
from .cmd_args import LaunchOptions
from .models.safetensors_file import ModelFileError

log = logging.getLogger("sdwebui")


def main(options: LaunchOptions) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    state = create_state(options)
    log.info("device %s, weights %s, VAE %s, offload %s", state.plan.device, state.plan.dtype, state.plan.vae_dtype,
             state.plan.offload)
    info = default_checkpoint(state)
    if info is None:
        log.error("no checkpoint found in %s: put a .safetensors checkpoint there (or pass --ckpt)", options.ckpt_dir)
        return 1
    try:
        model = state.models.load(info)
    except ModelFileError as e:
        log.error("%s", e)
        return 1
    log.info("ready: %s (%s) in %.1f s", info.filename, model.spec.summary, time.perf_counter() - started)
    return 0
