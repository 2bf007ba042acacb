"""The refiner: a second checkpoint (an SDXL refiner) finishes the last steps of one sampling run."""
from __future__ import annotations

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from modules.api.routes import build_router
from modules.hooks import HookPoint, HookRegistry
from modules.infotext import infotext_to_params, parse_infotext
from modules.processing.params import ParamError, Txt2ImgParams
from modules.processing.progress import JobProgress
from modules.processing.runner import run_job
from tests.engine_fixtures import make_state

JOB = dict(prompt="a cat", negative_prompt="blurry", steps=4, width=64, height=64, seed=3, sampler_name="DPM++ 2M",
           do_not_save_samples=True)


def run(state, progress: JobProgress | None = None, stop_in_refiner: bool = False, **extra):
    """The job's result, which checkpoint ran each UNet call (step, name), and the checkpoints that left memory."""
    calls, released = [], []

    def record(call, next_call):
        calls.append((call.step, call.model.source.stem))
        if stop_in_refiner and call.model.source.stem == "ref":
            progress.interrupt()
        return next_call(call)

    hooks = HookRegistry()
    hooks.register(HookPoint.UNET_CALL, record, "test")
    state.models.on_released.append(listener := lambda model: released.append(model.source.stem))
    try:
        result = run_job(state, Txt2ImgParams(**{**JOB, **extra}), progress, extra_hooks=hooks)
    finally:
        state.models.on_released.remove(listener)
    return result, calls, released


def px(result) -> np.ndarray:
    return np.asarray(result.images[0], dtype=np.float32)


def test_refiner_takes_over_at_the_switch_step(tmp_path):
    state = make_state(tmp_path, {"xl": "sdxl", "ref": "refiner"})
    plain, calls, _ = run(state)
    assert {name for _, name in calls} == {"xl"}

    refined, calls, released = run(state, refiner_checkpoint="ref", refiner_switch_at=0.5)
    assert calls == [(0, "xl"), (1, "xl"), (2, "ref"), (3, "ref")]  # half the steps, then the refiner
    short = state.checkpoints.short_hash(state.checkpoints.find("ref"))
    assert f"Refiner: ref [{short}], Refiner switch at: 0.5" in refined.infotexts[0]
    pasted = infotext_to_params(parse_infotext(refined.infotexts[0]))
    assert (pasted["refiner_checkpoint"], pasted["refiner_switch_at"]) == (f"ref [{short}]", 0.5)
    assert released == ["xl", "ref"]  # one checkpoint in RAM: the base leaves for the refiner and comes back
    assert state.models.current_info.filename == "xl.safetensors"
    assert np.abs(px(refined) - px(plain)).mean() > 0.1

    kept, _, released = run(state, refiner_checkpoint="ref [" + short + "]", refiner_switch_at=0.5,
                            override_settings={"sd_checkpoints_limit": 2})
    assert released == []  # both in RAM
    assert np.array_equal(px(kept), px(refined))  # the same image: the base came back intact after its reload

    progress = JobProgress()
    stopped, calls, _ = run(state, progress, stop_in_refiner=True, refiner_checkpoint="ref",
                            refiner_switch_at=0.5, n_iter=2)
    assert stopped.interrupted and len(stopped.images) == 1 and calls[-1] == (2, "ref")
    assert state.models.current_info.filename == "xl.safetensors"

    with pytest.raises(ParamError) as error:
        run_job(state, Txt2ImgParams(**JOB, refiner_checkpoint="missing"))
    assert error.value.field == "refiner_checkpoint"
    app = FastAPI()
    app.include_router(build_router(state))
    client = TestClient(app)
    answer = client.post("/sdapi/v1/txt2img", json={**JOB, "refiner_checkpoint": "missing"})
    assert answer.status_code == 400 and "refiner_checkpoint" in answer.text
    answer = client.post("/sdapi/v1/txt2img", json={**JOB, "steps": 2, "refiner_checkpoint": "ref",
                                                    "refiner_switch_at": 0.5})
    info = answer.json()["info"]
    assert answer.status_code == 200 and f"Refiner: ref [{short}], Refiner switch at: 0.5" in info
