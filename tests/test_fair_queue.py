"""Sharing the server fairly: users take turns in the queue, remote clients are held to the owner's caps, and
Interrupt acts inside a UNet call instead of at the end of the step."""
from __future__ import annotations

import ipaddress
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from modules import scripts
from modules.extensions import load_extensions
from modules.hooks import HookPoint, HookRegistry
from modules.job_queue import JobQueue
from modules.processing.interrupt import checkpoints
from modules.processing.params import ParamError, Txt2ImgParams
from modules.processing.progress import JobProgress
from modules.processing.runner import run_job
from modules.requester import Requester, acting_as, is_loopback
from tests.api_server import running_server
from tests.engine_fixtures import make_state

CAPS = ("--remote-max-pixels", "4096", "--remote-max-steps", "4")  # 64×64, 4 steps
USERS = {"alice": "pa", "bob": "pb"}


# --- turns between users ------------------------------------------------------------------------------------------

def test_one_users_ten_jobs_delay_another_users_job_by_one_and_positions_say_so():
    q = JobQueue()
    gate, order = threading.Event(), []

    def work(name):
        def run(progress):
            if name == "a0":
                gate.wait(5)
            order.append(name)
        return run

    with acting_as(Requester("alice")):
        alice = [q.submit(work(f"a{i}")) for i in range(10)]
    for _ in range(100):
        if q.current is alice[0]:
            break
        time.sleep(0.01)
    with acting_as(Requester("bob")):
        bob = q.submit(work("b"))
    local = q.submit(work("local"))  # no login: its own user ""
    assert q.waiting == 11
    # the UI's "N jobs ahead": users not served yet come first (bob, then the local user), then turns
    assert [q.position(j) for j in (bob, local, alice[1], alice[2], alice[9])] == [2, 3, 4, 5, 12]
    gate.set()
    for job in [*alice, bob, local]:
        job.wait(5)
    assert order == ["a0", "b", "local", *(f"a{i}" for i in range(1, 10))]
    assert q.position(bob) == 0 and q.waiting == 0


def test_a_single_user_still_gets_first_in_first_out():
    q = JobQueue()
    gate, order = threading.Event(), []
    jobs = [q.submit(lambda p, i=i: (gate.wait(5) if i == 0 else None, order.append(i))) for i in range(5)]
    gate.set()
    for job in jobs:
        job.wait(5)
    assert order == list(range(5))


def _lan_address() -> str | None:
    """An address of this machine that is not loopback (a client connecting to it is remote), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # sends nothing: only picks the outgoing interface
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if ipaddress.ip_address(address).is_loopback else address


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    flags = ("--listen", "--api-auth", ",".join(f"{u}:{p}" for u, p in USERS.items()), *CAPS)
    with running_server(tmp_path_factory.mktemp("fair-queue"), *flags) as url:
        yield url


def _txt2img(url: str, user: str, **fields) -> httpx.Response:
    body = {"prompt": f"a circle for {user}", "seed": 1, "width": 64, "height": 64, "steps": 4,
            "sampler_name": "Euler", "save_images": False, **fields}
    return httpx.post(f"{url}/sdapi/v1/txt2img", json=body, auth=(user, USERS[user]), timeout=300)


def test_over_http_the_second_users_job_runs_second_not_eleventh(server):
    finished, lock = [], threading.Lock()

    def generate(user: str, steps: int) -> None:
        response = _txt2img(server, user, steps=steps)
        assert response.status_code == 200, response.text
        with lock:
            finished.append(user)

    with ThreadPoolExecutor(11) as pool:
        alice = [pool.submit(generate, "alice", 40) for _ in range(10)]
        for _ in range(600):  # until all ten are in: one running, nine waiting
            state = httpx.get(f"{server}/sdapi/v1/progress", auth=("bob", USERS["bob"])).json()["state"]
            if state["job_count"] == 10:
                break
            time.sleep(0.02)
        assert state["job_count"] == 10, "alice's jobs did not queue up in time"
        bob = pool.submit(generate, "bob", 4)
        bob.result(300)
        for f in alice:
            f.result(300)
    assert finished.index("bob") <= 2, f"bob's job finished after {finished.index('bob')} of alice's: {finished}"


# --- remote limits -------------------------------------------------------------------------------------------------

def test_remote_caps_refuse_a_lan_client_with_the_field_and_let_this_machine_through(server):
    lan = _lan_address()
    if lan is None:
        pytest.skip("this machine has no non-loopback address to connect from")
    remote = server.replace("127.0.0.1", lan)
    assert _txt2img(remote, "alice").status_code == 200  # at the caps
    for fields, field in (({"width": 72}, "width"), ({"steps": 5}, "steps"),
                          ({"enable_hr": True, "hr_scale": 2, "denoising_strength": 0.5}, "hr_scale")):
        response = _txt2img(remote, "alice", **fields)
        assert response.status_code == 400, response.text
        assert response.json()["detail"].startswith(f"{field}:"), response.json()
    local = _txt2img(server, "alice", width=96, steps=6)  # the owner's own machine is not capped
    assert local.status_code == 200, local.text


@pytest.mark.parametrize("host, local", [
    ("127.0.0.1", True), ("127.0.1.1", True), ("::1", True), ("::ffff:127.0.0.1", True), (None, True),
    ("192.168.1.20", False), ("::ffff:10.0.0.2", False), ("fe80::1%eth0", False), ("example.org", False),
])
def test_which_clients_are_capped_as_remote(host, local):
    assert is_loopback(host) is local


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    state = make_state(tmp_path_factory.mktemp("fair-engine"), {"tiny": "sd1"}, flags=["--skip-install", *CAPS])
    state.settings.update({"samples_save": False})
    load_extensions(state)  # hires fix and the X/Y/Z plot
    return state


HIRES = {"Hires fix": {"args": {"enable": True, "hr_scale": 2.0, "denoising_strength": 0.5}}}
XYZ_STEPS = {"x_type": "Steps", "x_values": "2, 8"}


@pytest.mark.parametrize("fields, request_kw, field", [
    ({"width": 128}, {}, "width"),
    ({"steps": 8}, {}, "steps"),
    ({}, {"alwayson": HIRES}, "hr_scale"),  # 64×64 → 128×128 second pass
    ({}, {"script_name": "X/Y/Z plot", "script_args": XYZ_STEPS}, "steps"),  # the second cell has 8 steps
])
def test_a_remote_request_over_a_cap_is_refused_before_it_is_queued(state, fields, request_kw, field):
    def params() -> Txt2ImgParams:
        return Txt2ImgParams(**{"prompt": "a red circle", "width": 64, "height": 64, "steps": 4, **fields})

    with acting_as(Requester("carol", remote=True)), pytest.raises(ParamError) as refused:
        scripts.submit(state, params(), **request_kw)
    assert refused.value.field == field and "--remote-max-" in str(refused.value)
    assert state.queue.waiting == 0 and state.queue.current is None  # nothing was queued
    result = scripts.submit(state, params(), **request_kw).wait(120)  # the same from this machine runs
    assert result.images


# --- interrupt inside a UNet call ------------------------------------------------------------------------------------

def _params() -> Txt2ImgParams:
    return Txt2ImgParams(prompt="a red circle", seed=7, steps=6, width=64, height=64, n_iter=2, sampler_name="Euler",
                         do_not_save_samples=True)


def _hook_counts(unet) -> list[int]:
    return [len(m._forward_pre_hooks) for m in unet.modules()]


def _submit_held(state, params, **kw):
    """Submit a job behind a short gate, so that test hooks can reach the job before it starts."""
    gate = threading.Event()
    state.queue.submit(lambda p: gate.wait(30))
    job = scripts.submit(state, params, **kw)
    return job, gate


def test_interrupt_during_a_unet_call_ends_the_job_before_that_step_finishes(state):
    unet = state.models.current.unet
    hooks_before = _hook_counts(unet)
    stop_at = 6 + 2  # the third step of the second batch (steps are counted over the job)
    inside_mid_block, go_on = threading.Event(), threading.Event()
    up_calls: list[int] = []  # the job's step count at each up block call
    job, gate = _submit_held(state, _params())

    def in_mid_block(module, args) -> None:
        if job.progress.step == stop_at and not inside_mid_block.is_set():
            inside_mid_block.set()
            go_on.wait(30)  # the UNet call is half done when Interrupt is pressed

    handles = [unet.mid_block.register_forward_pre_hook(in_mid_block)]
    handles += [b.register_forward_pre_hook(lambda m, a: up_calls.append(job.progress.step)) for b in unet.up_blocks]
    try:
        gate.set()
        assert inside_mid_block.wait(60)
        job.interrupt()  # from this thread, as the UI's and API's Interrupt do
        go_on.set()
        result = job.wait(60)
    finally:
        for h in handles:
            h.remove()
    assert result.interrupted and job.progress.state == "done"
    assert stop_at not in up_calls  # the up blocks of the interrupted call never ran
    assert up_calls.count(stop_at - 1) == len(unet.up_blocks)  # the step before ran whole
    assert job.progress.step == stop_at  # the interrupted step was not counted as done
    assert _hook_counts(unet) == hooks_before  # no check stays on the model

    # the finished batch is kept as an uninterrupted job makes it; the one in progress is what an interrupt
    # between steps (just before that step) gives
    full = run_job(state, _params())
    progress = JobProgress()
    between = HookRegistry()
    between.register(HookPoint.AFTER_CFG, lambda e: progress.interrupt() if progress.step == stop_at - 1 else None,
                     "test")
    before_step = run_job(state, _params(), progress, between)
    assert len(result.images) == 2 and before_step.interrupted
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(full.images[0]))
    assert np.array_equal(np.asarray(result.images[1]), np.asarray(before_step.images[1]))
    assert not np.array_equal(np.asarray(result.images[1]), np.asarray(full.images[1]))

    after = scripts.submit(state, _params()).wait(60)  # the next job runs whole
    assert not after.interrupted and len(after.images) == 2


def test_interrupt_inside_the_hires_pass_stops_its_unet_call_too(state):
    """The hires pass runs its UNet calls under the same checks (its progress shares the job's stop flags)."""
    unet = state.models.current.unet
    hires_calls: list[int] = []  # latent width of each UNet call at the hires size
    up_after_interrupt: list[bool] = []
    job, gate = _submit_held(state, Txt2ImgParams(prompt="a red circle", seed=3, steps=4, width=64, height=64,
                                                  sampler_name="Euler"), alwayson=HIRES)

    def watch(module, args) -> None:
        if args[0].shape[-1] == 16:  # 128×128 pass
            hires_calls.append(1)
            if len(hires_calls) == 2:
                job.interrupt()

    handles = [unet.conv_in.register_forward_pre_hook(watch),  # a UNet call starts
               unet.up_blocks[-1].register_forward_pre_hook(
                   lambda m, a: up_after_interrupt.append(job.progress.control.interrupted))]
    try:
        gate.set()
        result = job.wait(60)
    finally:
        for h in handles:
            h.remove()
    assert result.interrupted and result.images[0].size == (128, 128)
    assert len(hires_calls) == 2 and True not in up_after_interrupt


def test_checkpoints_cover_every_block_and_their_layers(state):
    unet = state.models.current.unet
    found = {id(m) for m in checkpoints(unet)}
    blocks = [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
    assert all(id(b) in found for b in blocks)
    assert all(id(r) in found for b in blocks for r in b.resnets)
    assert id(unet.conv_in) not in found  # only blocks and what is inside them
