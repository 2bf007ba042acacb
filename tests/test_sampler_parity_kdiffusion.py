"""Parity with k-diffusion, the sampling code A1111 runs for most of its samplers.

k-diffusion (a test extra) is loaded without its package ``__init__``, which imports its training stack (CLIP,
kornia, wandb, ...): only ``k_diffusion/sampling.py`` and ``external.py`` (and the ``utils`` module they import) are
executed, from the installed files. Each sampler runs on the same toy denoiser, sigmas, initial latents and per-step
noise as its k-diffusion counterpart, called with the arguments A1111 gives it; results must agree to 1e-5.
"""

import importlib
import importlib.metadata
import inspect
import math
import sys
import types

import pytest
import torch

from modules.sampling import registry, samplers
from modules.sampling.discrete import DiscreteSchedule
from modules.sampling.noise import NoiseSettings, SeededNoise

TOLERANCE = 1e-5
MODEL = DiscreteSchedule.from_params()
SHAPE = (2, 4, 8, 8)


def _load_kdiffusion(*modules: str) -> list[types.ModuleType]:
    """``k_diffusion.<module>`` for each name, imported under a bare package that skips k-diffusion's __init__."""
    if "k_diffusion" not in sys.modules:
        package = types.ModuleType("k_diffusion")
        package.__path__ = [str(importlib.metadata.distribution("k-diffusion").locate_file("k_diffusion"))]
        sys.modules["k_diffusion"] = package
    return [importlib.import_module(f"k_diffusion.{name}") for name in modules]


K, K_EXTERNAL = _load_kdiffusion("sampling", "external")

# A1111's sampler name -> the k-diffusion function it calls (A1111's samplers_k_diffusion list)
K_SAMPLERS = {
    "DPM++ 2M": K.sample_dpmpp_2m,
    "DPM++ SDE": K.sample_dpmpp_sde,
    "DPM++ 2M SDE": K.sample_dpmpp_2m_sde,
    "DPM++ 2M SDE Heun": K.sample_dpmpp_2m_sde,
    "DPM++ 2S a": K.sample_dpmpp_2s_ancestral,
    "DPM++ 3M SDE": K.sample_dpmpp_3m_sde,
    "Euler a": K.sample_euler_ancestral,
    "Euler": K.sample_euler,
    "LMS": K.sample_lms,
    "Heun": K.sample_heun,
    "DPM2": K.sample_dpm_2,
    "DPM2 a": K.sample_dpm_2_ancestral,
    "DPM fast": K.sample_dpm_fast,
    "DPM adaptive": K.sample_dpm_adaptive,
}
BROWNIAN = ["DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 3M SDE"]


def toy_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A smooth nonlinear denoiser that couples each sample's elements (well conditioned, so float32 rounding in
    either implementation is not amplified past the tolerance)."""
    s = sigma.view(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    mean = x.flatten(1).mean(1).view_as(s)
    return 0.25 / (0.25 + s**2) * x + 0.3 * torch.tanh(x + mean) / (1 + s**2)


class NoiseStream:
    """Per-step noise by call order: two streams with the same seed give both samplers the same draws."""

    def __init__(self, shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float32) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.shape, self.dtype = shape, dtype
        self.calls = 0

    def __call__(self, sigma, sigma_next) -> torch.Tensor:
        self.calls += 1
        return torch.randn(self.shape, generator=self.generator, dtype=self.dtype)


def latents(seed: int, sigmas: torch.Tensor, shape=SHAPE, dtype=torch.float32) -> torch.Tensor:
    return (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * sigmas[0]).to(dtype)


def a1111_call(name: str, model, x: torch.Tensor, sigmas: torch.Tensor, steps: int, noise_sampler=None, **extra):
    """Call k-diffusion as A1111's KDiffusionSampler does: DPM fast/adaptive get the model's sigma range (and the
    step count), the others the sigmas; eta-taking samplers get A1111's default eta 1, stochastic ones the noise
    sampler, and the registry's fixed options (2M SDE Heun's ``solver_type``) pass on."""
    function = K_SAMPLERS[name]
    kwargs = dict(registry.find_sampler(name).options) | extra
    if name in ("DPM fast", "DPM adaptive"):
        kwargs |= {"sigma_min": MODEL.sigma_min, "sigma_max": MODEL.sigma_max, "eta": 1.0}
        if name == "DPM fast":
            kwargs["n"] = steps
    else:
        kwargs["sigmas"] = sigmas
    if noise_sampler is not None and "noise_sampler" in inspect.signature(function).parameters:
        kwargs["noise_sampler"] = noise_sampler
    return function(model, x, disable=True, **kwargs)


def run_both(name: str, steps: int, seed: int, shape=SHAPE) -> tuple[torch.Tensor, torch.Tensor]:
    info = registry.find_sampler(name)
    sigmas = registry.make_sigmas(registry.resolve(name), steps, MODEL)
    x = latents(seed, sigmas, shape)
    ours = info.sample(toy_denoiser, x, sigmas, noise_sampler=NoiseStream(shape, seed + 1))
    theirs = a1111_call(name, toy_denoiser, x, sigmas, steps, NoiseStream(shape, seed + 1))
    return ours, theirs


def test_every_sampler_a1111_takes_from_k_diffusion_is_covered():
    ours = {info.name for info in registry.SAMPLERS}
    assert set(K_SAMPLERS) <= ours
    # the rest are A1111's own code (Restart, LCM) or its timestep samplers (DDIM, PLMS, UniPC; UniPC and DDIM are
    # compared with diffusers in test_sampler_parity_diffusers.py)
    assert ours - set(K_SAMPLERS) == {"Restart", "DDIM", "PLMS", "UniPC", "LCM"}


@pytest.mark.parametrize("steps", [3, 10, 25])
@pytest.mark.parametrize("name", [n for n in K_SAMPLERS if n != "DPM adaptive"])
def test_sampler_matches_k_diffusion(name, steps):
    ours, theirs = run_both(name, steps, seed=steps)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, theirs, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_dpm_adaptive_matches_k_diffusions_solver_in_float64(seed, eta):
    """DPM adaptive, one image: the same steps, errors and accept/reject decisions as k-diffusion's DPMSolver.

    Compared in float64 (latents, and k-diffusion's times passed as float64): in float32 the embedded error
    estimate, a difference of two nearly equal results, is dominated by each implementation's own rounding
    (see the next test)."""
    sigmas = registry.make_sigmas(registry.resolve("DPM adaptive"), 10, MODEL)
    x = latents(seed, sigmas, (1, 4, 8, 8), torch.float64)
    counts = {"ours": 0, "theirs": 0}

    def counting(key):
        def model(x, sigma):
            counts[key] += 1
            return toy_denoiser(x, sigma)
        return model

    ours = samplers.dpm_adaptive(counting("ours"), x, sigmas, eta=eta,
                                 noise_sampler=NoiseStream(x.shape, 7, torch.float64))
    start, end = (torch.tensor(-math.log(s), dtype=torch.float64) for s in (MODEL.sigma_max, MODEL.sigma_min))
    theirs, info = K.DPMSolver(counting("theirs")).dpm_solver_adaptive(
        x, start, end, eta=eta, noise_sampler=NoiseStream(x.shape, 7, torch.float64))
    assert counts["ours"] == counts["theirs"] == info["nfe"] and info["n_reject"] >= 0
    torch.testing.assert_close(ours, theirs, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_dpm_adaptive_float32_takes_a1111s_steps(seed):
    """In A1111's float32 the two agree on every accept/reject decision (same evaluation count) and to ~5e-4."""
    sigmas = registry.make_sigmas(registry.resolve("DPM adaptive"), 10, MODEL)
    shape = (1, 4, 8, 8)
    x = latents(seed, sigmas, shape)
    ours_noise, their_noise = NoiseStream(shape, 7), NoiseStream(shape, 7)
    ours = samplers.dpm_adaptive(toy_denoiser, x, sigmas, noise_sampler=ours_noise)
    theirs = a1111_call("DPM adaptive", toy_denoiser, x, sigmas, 10, their_noise)
    assert ours_noise.calls == their_noise.calls > 5  # one draw per accepted step
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-3)


def test_the_comparison_tells_different_samplers_apart():
    """The tolerance is far below what a changed formula gives (so the tests above can fail)."""
    sigmas = registry.make_sigmas(registry.resolve("DPM++ 2M SDE"), 10, MODEL)
    x = latents(0, sigmas)
    midpoint = samplers.dpmpp_2m_sde(toy_denoiser, x, sigmas, noise_sampler=NoiseStream(SHAPE, 1))
    heun = K.sample_dpmpp_2m_sde(toy_denoiser, x, sigmas, disable=True, noise_sampler=NoiseStream(SHAPE, 1),
                                 solver_type="heun")
    third_order = samplers.dpmpp_3m_sde(toy_denoiser, x, sigmas, noise_sampler=NoiseStream(SHAPE, 1))
    assert (midpoint - heun).abs().max() > 100 * TOLERANCE
    assert (third_order - heun).abs().max() > 100 * TOLERANCE


# --- Brownian-tree noise: the same seed gives A1111's SDE samples -------------------------------------------------

def run_brownian(name: str, seeds: list[int], steps: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Ours with SeededNoise(seeds).brownian(sigmas); k-diffusion with the BrownianTreeNoiseSampler A1111 builds
    (``create_noise_sampler``: the sigmas' positive range, ``seed=`` the batch's seeds)."""
    info = registry.find_sampler(name)
    sigmas = registry.make_sigmas(registry.resolve(name), steps, MODEL)
    noise = SeededNoise(NoiseSettings(SHAPE[1:], seeds))
    x = noise.initial() * sigmas[0]
    ours = info.sample(toy_denoiser, x, sigmas, noise_sampler=noise.brownian(sigmas))
    tree = K.BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(), seed=seeds)
    theirs = a1111_call(name, toy_denoiser, x, sigmas, steps, tree)
    return ours, theirs


# k-diffusion's own queries stray a rounding error outside its trees, for which torchsde warns (ours clamp first)
@pytest.mark.filterwarnings("ignore:Should have:UserWarning")
@pytest.mark.parametrize("name", BROWNIAN)
@pytest.mark.parametrize("seeds", [[1234], [5, 6]], ids=["one image", "batch"])
def test_brownian_noise_reproduces_a1111s_sde_samples(name, seeds):
    ours, theirs = run_brownian(name, seeds)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=TOLERANCE)


@pytest.mark.filterwarnings("ignore:Should have:UserWarning")
def test_dpmpp_2m_sde_seed_gives_a1111s_image_and_seeds_are_independent():
    seed = 3_000_000_017
    ours, theirs = run_brownian("DPM++ 2M SDE", [seed])
    torch.testing.assert_close(ours, theirs, rtol=0, atol=TOLERANCE)
    other, _ = run_brownian("DPM++ 2M SDE", [seed + 1])
    assert (ours - other).abs().max() > 1e-2
    batch, _ = run_brownian("DPM++ 2M SDE", [seed, seed + 1])
    torch.testing.assert_close(batch, torch.cat([ours, other]), rtol=0, atol=1e-6)


def test_brownian_samplers_are_flagged_in_the_registry():
    assert [info.name for info in registry.SAMPLERS if info.brownian_noise] == BROWNIAN


# --- the model's discrete schedule ------------------------------------------------------------------------------

def test_timestep_sigma_maps_match_k_diffusions_discrete_schedule():
    theirs = K_EXTERNAL.DiscreteSchedule(MODEL.sigmas, quantize=False)
    t = torch.cat([torch.linspace(0, 999, 4001), torch.tensor([0.25, 998.5])])
    torch.testing.assert_close(MODEL.t_to_sigma(t), theirs.t_to_sigma(t), rtol=1e-6, atol=0)
    sigma = torch.exp(torch.linspace(math.log(MODEL.sigma_min), math.log(MODEL.sigma_max), 3001))
    torch.testing.assert_close(MODEL.sigma_to_t(sigma), theirs.sigma_to_t(sigma), rtol=1e-6, atol=1e-4)
    for steps in (1, 7, 20, 50):  # A1111's default schedule is the model wrapper's get_sigmas
        torch.testing.assert_close(registry.make_sigmas(registry.resolve("Euler"), steps, MODEL),
                                   theirs.get_sigmas(steps), rtol=1e-6, atol=0)
