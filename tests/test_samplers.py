"""Samplers: determinism, batch independence, convergence on problems with a known answer, progress and stop."""

import math

import pytest
import torch

from modules.sampling import registry, samplers, schedules
from modules.sampling.discrete import DiscreteSchedule
from modules.sampling.noise import NoiseSettings, SeededNoise
from modules.sampling.samplers import SamplingControl, StepInfo

MODEL = DiscreteSchedule.from_params()
SHAPE = (4, 8, 8)
ALL = registry.SAMPLERS
STOCHASTIC = [s for s in ALL if s.stochastic]
DATA_MEAN, DATA_VAR = 0.5, 0.25


def nonlinear_denoiser(x, sigma):
    """A per-sample denoiser whose behaviour depends on the whole sample (so step-size control differs per item)."""
    s = sigma.view(-1, 1, 1, 1)
    gain = 1 + 4 * x.flatten(1).mean(1).abs().view(-1, 1, 1, 1) / s
    return torch.tanh(gain * x / (1 + s**2))


def gaussian_denoiser(x, sigma):
    """Exact denoiser for data ~ N(DATA_MEAN, DATA_VAR) per element."""
    s = sigma.view(-1, 1, 1, 1).to(x.dtype)
    return DATA_MEAN + DATA_VAR / (DATA_VAR + s**2) * (x - DATA_MEAN)


def exact_ode_result(x_start, sigma_start, sigma_end):
    """The probability-flow ODE solution for Gaussian data, from sigma_start to sigma_end."""
    scale = math.sqrt(DATA_VAR + sigma_end**2) / math.sqrt(DATA_VAR + sigma_start**2)
    return DATA_MEAN + (x_start - DATA_MEAN) * scale


def run(info, seeds, steps=8, denoiser=nonlinear_denoiser, shape=SHAPE, dtype=torch.float32, **kwargs):
    sigmas = registry.make_sigmas(registry.resolve(info.name), steps, MODEL)
    noise = SeededNoise(NoiseSettings(shape, seeds, dtype=dtype))
    x = noise.initial() * sigmas[0]
    return info.sample(denoiser, x, sigmas, noise_sampler=noise, **kwargs)


@pytest.mark.parametrize("info", ALL, ids=lambda s: s.name)
def test_same_seed_same_result_and_batch_equals_single_runs(info):
    steps = 22 if info.name == "Restart" else 8  # Restart only restarts from 20 steps on
    batch = run(info, [11, 12, 13], steps)
    assert batch.shape == (3, *SHAPE) and torch.isfinite(batch).all()
    torch.testing.assert_close(run(info, [11, 12, 13], steps), batch, rtol=0, atol=0)
    singles = torch.cat([run(info, [seed], steps) for seed in (11, 12, 13)])
    torch.testing.assert_close(singles, batch, rtol=0, atol=1e-6)
    assert not torch.allclose(batch[0], batch[1])


@pytest.mark.parametrize("info", STOCHASTIC, ids=lambda s: s.name)
def test_stochastic_samplers_use_the_per_step_noise(info):
    """The same initial noise with different per-step noise gives a different image."""
    sigmas = registry.make_sigmas(registry.resolve(info.name), 22, MODEL)
    x = SeededNoise(NoiseSettings(SHAPE, [5])).initial() * sigmas[0]
    a = info.sample(nonlinear_denoiser, x, sigmas, noise_sampler=SeededNoise(NoiseSettings(SHAPE, [1])))
    b = info.sample(nonlinear_denoiser, x, sigmas, noise_sampler=SeededNoise(NoiseSettings(SHAPE, [2])))
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="noise_sampler"):
        info.sample(nonlinear_denoiser, x, sigmas)


def test_dpm_adaptive_steps_each_item_on_its_own():
    counts = []
    for seed in (11, 12, 13, 14):
        calls = []
        run(registry.find_sampler("DPM adaptive"), [seed], denoiser=lambda x, s: calls.append(1) or
            nonlinear_denoiser(x, s))
        counts.append(len(calls))
    assert len(set(counts)) > 1, "the toy problem should need different step counts per item"


# --- convergence on Gaussian data, where the exact answer is known ---------------------------------------------

DETERMINISTIC = {  # sampler -> (max error at 40 steps, minimum error reduction from 20 to 40 steps)
    "Euler": (0.08, 1.7),
    "DDIM": (0.08, 1.7),
    "Heun": (0.01, 3.0),
    "DPM2": (0.01, 3.0),
    "LMS": (0.01, 3.0),
    "PLMS": (0.01, 3.0),
    "DPM++ 2M": (0.01, 3.0),
    "UniPC": (0.001, 8.0),
}


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_samplers_converge_to_the_ode_solution(name):
    info = registry.find_sampler(name)
    z = torch.randn(1, *SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    errors = []
    for steps in (20, 40):
        sigmas = schedules.exponential(steps, MODEL).double()
        out = info.sample(gaussian_denoiser, z * sigmas[0], sigmas)
        # every sampler ends with a plain denoising step from the smallest sigma
        last = sigmas[-2].item()
        expected = gaussian_denoiser(exact_ode_result(z * sigmas[0], sigmas[0].item(), last),
                                     torch.tensor([last]))
        errors.append((out - expected).abs().max().item())
    max_error, reduction = DETERMINISTIC[name]
    assert errors[1] < max_error, errors
    assert errors[0] / errors[1] > reduction, errors


@pytest.mark.parametrize("info", [s for s in STOCHASTIC if s.name != "LCM"], ids=lambda s: s.name)
def test_stochastic_samplers_reach_the_data_distribution(info):
    """With enough steps the samples have the data's mean and spread (Euler a, first order, is the slowest)."""
    out = run(info, [3], steps=80, denoiser=gaussian_denoiser, shape=(1, 64, 64))
    assert out.mean().item() == pytest.approx(DATA_MEAN, abs=0.03)
    assert out.std().item() == pytest.approx(math.sqrt(DATA_VAR), rel=0.1)


def test_ddim_with_eta_zero_is_euler_and_eta_adds_noise():
    sigmas = schedules.ddim(10, MODEL)
    x = SeededNoise(NoiseSettings(SHAPE, [1])).initial() * sigmas[0]
    euler = samplers.euler(nonlinear_denoiser, x, sigmas)
    torch.testing.assert_close(samplers.ddim(nonlinear_denoiser, x, sigmas), euler, rtol=1e-5, atol=1e-5)
    noisy = samplers.ddim(nonlinear_denoiser, x, sigmas, eta=1.0, noise_sampler=SeededNoise(NoiseSettings(SHAPE, [2])))
    assert not torch.allclose(noisy, euler, atol=1e-3)


@pytest.mark.parametrize("info", ALL, ids=lambda s: s.name)
def test_float16_latents_keep_their_dtype(info):
    """The samplers' own arithmetic does not promote half-precision latents (sigmas still arrive as float32)."""
    def half_denoiser(x, sigma):
        assert sigma.dtype == torch.float32
        return nonlinear_denoiser(x.float(), sigma).to(x.dtype)

    out = run(info, [1], dtype=torch.float16, denoiser=half_denoiser)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()


# --- model calls, progress and stopping ------------------------------------------------------------------------

# the most model evaluations one step can take (PLMS: its first step; DPM fast/adaptive: a third-order step)
EVALS_PER_STEP = {"Heun": 2, "DPM2": 2, "DPM2 a": 2, "DPM++ 2S a": 2, "DPM++ SDE": 2, "Restart": 2, "PLMS": 2,
                  "DPM fast": 3, "DPM adaptive": 3}


@pytest.mark.parametrize("info", [s for s in ALL if s.name != "DPM adaptive"], ids=lambda s: s.name)
def test_progress_reports_every_step_and_model_gets_per_item_sigmas(info):
    sigmas = registry.make_sigmas(registry.resolve(info.name), 6, MODEL)
    reports: list[StepInfo] = []
    seen_sigmas = []

    def denoiser(x, sigma):
        assert sigma.shape == (2,) and sigma.dtype == torch.float32
        seen_sigmas.append(sigma[0].item())
        return nonlinear_denoiser(x, sigma)

    noise = SeededNoise(NoiseSettings(SHAPE, [1, 2]))
    info.sample(denoiser, noise.initial() * sigmas[0], sigmas, noise_sampler=noise, callback=reports.append)
    assert [r.step for r in reports] == list(range(len(reports)))
    assert all(r.total == len(reports) for r in reports)
    assert reports[0].sigma == pytest.approx(sigmas[0].item(), rel=1e-6)
    assert reports[0].x.shape == reports[0].denoised.shape == (2, *SHAPE)
    if info.name not in ("DPM fast", "PLMS"):  # DPM fast uses its own step sizes; PLMS's first step costs two calls
        assert len(reports) == 6
        assert len(seen_sigmas) <= 6 * EVALS_PER_STEP.get(info.name, 1)
    if info.name == "DPM fast":
        assert len(seen_sigmas) == 6  # exactly `steps` model evaluations


def test_dpm_adaptive_reports_unknown_total():
    reports = []
    run(registry.find_sampler("DPM adaptive"), [1], callback=reports.append)
    assert reports and all(r.total is None for r in reports)


@pytest.mark.parametrize("flag", ["interrupted", "skipped"])
@pytest.mark.parametrize("info", ALL, ids=lambda s: s.name)
def test_interrupt_or_skip_stops_before_the_next_step(info, flag):
    control = SamplingControl()
    calls = []

    def denoiser(x, sigma):
        calls.append(1)
        return nonlinear_denoiser(x, sigma)

    def callback(step: StepInfo):
        if step.step == 2:
            setattr(control, flag, True)

    out = run(info, [1], steps=10, denoiser=denoiser, callback=callback, control=control)
    assert torch.isfinite(out).all()
    assert len(calls) <= 3 * EVALS_PER_STEP.get(info.name, 1)
    unstopped = []
    run(info, [1], steps=10, denoiser=lambda x, sigma: unstopped.append(1) or nonlinear_denoiser(x, sigma))
    assert len(unstopped) > len(calls)  # the bound above is below what the sampler evaluates when not stopped


def test_interrupted_euler_returns_the_partial_result():
    sigmas = schedules.karras(10, MODEL)
    x = SeededNoise(NoiseSettings(SHAPE, [1])).initial() * sigmas[0]
    control = SamplingControl()

    def callback(step):
        control.interrupted = step.step == 3

    stopped = samplers.euler(nonlinear_denoiser, x, sigmas, callback=callback, control=control)
    torch.testing.assert_close(stopped, samplers.euler(nonlinear_denoiser, x, sigmas[:5]))


def test_restart_spends_extra_evaluations_from_20_steps_on():
    counts = {}
    for steps in (19, 20):
        calls = []
        run(registry.find_sampler("Restart"), [1], steps=steps,
            denoiser=lambda x, s: calls.append(1) or nonlinear_denoiser(x, s))
        counts[steps] = len(calls)
    assert counts[19] == 2 * 19 - 1  # plain Heun: the last step is a single evaluation
    assert counts[20] > counts[19] + 1


def test_ancestral_split_conserves_variance():
    down, up = samplers.ancestral_split(5.0, 2.0)
    assert down**2 + up**2 == pytest.approx(4.0)
    assert samplers.ancestral_split(5.0, 2.0, eta=0.0) == (2.0, 0.0)
    assert samplers.ancestral_split(5.0, 0.0) == (0.0, 0.0)


def test_bad_options_raise():
    sigmas = schedules.karras(4, MODEL)
    x = torch.zeros(1, *SHAPE)
    with pytest.raises(ValueError, match="variant"):
        samplers.unipc(gaussian_denoiser, x, sigmas, variant="bh3")
    with pytest.raises(ValueError, match="order"):
        samplers.dpm_adaptive(gaussian_denoiser, x, sigmas, order=4, eta=0.0)
    with pytest.raises(ValueError, match="solver_type"):
        samplers.dpmpp_2m_sde(gaussian_denoiser, x, sigmas, solver_type="rk4", noise_sampler=lambda a, b: x)
