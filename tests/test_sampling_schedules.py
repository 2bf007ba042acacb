"""Discrete model schedule, sigma schedules, eps/v conversions and the sampler/schedule registry."""

import math

import pytest
import torch

from modules.sampling import registry, schedules
from modules.sampling.discrete import (
    DiscreteSchedule,
    ScheduleParams,
    c_in,
    denoised_from_eps,
    denoised_from_output,
    denoised_from_v,
    eps_from_denoised,
    v_from_denoised,
)

MODEL = DiscreteSchedule.from_params()
NAMED_SCHEDULES = [s for s in registry.SCHEDULES if s.function is not None]


# --- discrete schedule -----------------------------------------------------------------------------------------

def test_sd_sigma_range_matches_the_known_values():
    assert MODEL.sigma_min == pytest.approx(0.029168, rel=1e-4)
    assert MODEL.sigma_max == pytest.approx(14.614642, rel=1e-6)
    assert MODEL.num_timesteps == 1000


def test_alphas_cumprod_agree_with_diffusers():
    from diffusers import DDPMScheduler

    theirs = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").alphas_cumprod
    torch.testing.assert_close(MODEL.alphas_cumprod, theirs.float(), rtol=2e-6, atol=0)


def test_sigma_and_timestep_conversions_invert_each_other():
    t = torch.tensor([0.0, 1.0, 17.25, 500.0, 998.5, 999.0])
    torch.testing.assert_close(MODEL.sigma_to_t(MODEL.t_to_sigma(t)), t, atol=2e-3, rtol=0)
    # integer timesteps hit the table exactly; fractional ones interpolate in log-sigma
    assert MODEL.t_to_sigma(500.0).item() == pytest.approx(MODEL.sigmas[500].item(), rel=1e-6)
    mid = math.exp((math.log(MODEL.sigmas[10]) + math.log(MODEL.sigmas[11])) / 2)
    assert MODEL.t_to_sigma(10.5).item() == pytest.approx(mid, rel=1e-5)
    assert MODEL.sigma_to_t(torch.tensor(mid)).item() == pytest.approx(10.5, abs=1e-3)
    assert MODEL.sigma_to_t(torch.tensor(mid * 1.01), quantize=True).item() == 11.0
    assert MODEL.sigma_to_t(torch.tensor(100.0)).item() == 999.0  # clamped to the trained range
    assert MODEL.sigma_to_t(torch.tensor(1e-4)).item() == 0.0


def test_linear_betas_and_bad_schedule_name():
    linear = DiscreteSchedule.from_params(ScheduleParams(beta_start=0.0001, beta_end=0.02, beta_schedule="linear"))
    assert linear.sigma_max > 150  # the DDPM linear schedule reaches far higher noise
    with pytest.raises(ValueError, match="beta_schedule"):
        DiscreteSchedule.from_params(ScheduleParams(beta_schedule="cosine"))


def test_eps_and_v_conversions_recover_the_clean_sample():
    from diffusers import DDPMScheduler

    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    timesteps = torch.tensor([50, 900])
    ddpm = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    sigma = MODEL.sigmas[timesteps]
    x_vp = ddpm.add_noise(x0, noise, timesteps)  # what the UNet sees: x_sigma * c_in
    x = x0 + sigma.view(-1, 1, 1, 1) * noise  # the sampler's sigma-space x
    torch.testing.assert_close(x * c_in(sigma, x), x_vp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(denoised_from_eps(x, sigma, noise), x0, atol=1e-5, rtol=0)
    torch.testing.assert_close(eps_from_denoised(x, sigma, x0), noise, atol=1e-4, rtol=0)
    v = ddpm.get_velocity(x0, noise, timesteps)
    torch.testing.assert_close(denoised_from_v(x, sigma, v), x0, atol=1e-5, rtol=0)
    torch.testing.assert_close(denoised_from_output(x, sigma, v, "v_prediction"), x0, atol=1e-5, rtol=0)
    torch.testing.assert_close(v_from_denoised(x, sigma, x0), v, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="prediction_type"):
        denoised_from_output(x, sigma, v, "sample")


# --- schedules -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("schedule", NAMED_SCHEDULES, ids=lambda s: s.name)
@pytest.mark.parametrize("n", [1, 2, 7, 20, 50])
def test_every_schedule_has_n_steps_descends_and_ends_at_zero(schedule, n):
    sigmas = schedule.function(n, MODEL)
    assert sigmas.dtype == torch.float32 and sigmas.shape == (n + 1,)
    assert sigmas[-1].item() == 0.0
    assert (sigmas[:-1] > 0).all()
    assert (sigmas[:-1] <= MODEL.sigma_max * 1.0001).all()
    assert (sigmas[:-1] >= 0.028).all()
    assert (sigmas[1:] < sigmas[:-1]).all(), sigmas


@pytest.mark.parametrize("schedule", NAMED_SCHEDULES, ids=lambda s: s.name)
def test_schedules_reject_zero_steps(schedule):
    with pytest.raises(ValueError, match="at least 1"):
        schedule.function(0, MODEL)


def test_karras_runs_from_sigma_max_to_sigma_min_evenly_in_rho_space():
    sigmas = schedules.karras(12, MODEL)
    assert sigmas[0].item() == pytest.approx(MODEL.sigma_max, rel=1e-6)
    assert sigmas[-2].item() == pytest.approx(MODEL.sigma_min, rel=1e-6)
    steps = torch.diff(sigmas[:-1].double() ** (1 / 7))
    torch.testing.assert_close(steps, steps.mean().expand_as(steps), rtol=1e-4, atol=0)


def test_exponential_is_geometric_and_polyexponential_rho_1_equals_it():
    sigmas = schedules.exponential(9, MODEL)
    ratios = sigmas[1:-1] / sigmas[:-2]
    torch.testing.assert_close(ratios, ratios.mean().expand_as(ratios), rtol=1e-5, atol=0)
    torch.testing.assert_close(schedules.polyexponential(9, MODEL), sigmas, rtol=1e-6, atol=0)
    assert not torch.allclose(schedules.polyexponential(9, MODEL, rho=2.0), sigmas)


def test_uniform_and_normal_use_the_model_sigmas_at_evenly_spaced_timesteps():
    sigmas = schedules.uniform(4, MODEL)
    expected = MODEL.t_to_sigma(torch.tensor([999.0, 666.0, 333.0, 0.0]))
    torch.testing.assert_close(sigmas[:-1], expected)
    torch.testing.assert_close(schedules.normal(4, MODEL), sigmas, rtol=1e-5, atol=0)
    # SGM Uniform: 5 evenly spaced timesteps, the last (sigma_min) dropped
    expected_sgm = MODEL.t_to_sigma(torch.tensor([999.0, 749.25, 499.5, 249.75]))
    torch.testing.assert_close(schedules.sgm_uniform(4, MODEL)[:-1], expected_sgm, rtol=1e-5, atol=0)


def test_simple_and_ddim_pick_training_sigmas():
    torch.testing.assert_close(schedules.simple(4, MODEL)[:-1], MODEL.sigmas[[999, 749, 499, 249]])
    torch.testing.assert_close(schedules.ddim(4, MODEL)[:-1], MODEL.sigmas[[751, 501, 251, 1]])
    assert len(schedules.ddim(30, MODEL)) == 31  # exactly n steps even when n does not divide 1000


def test_kl_optimal_is_even_in_arctan_sigma():
    sigmas = schedules.kl_optimal(8, MODEL)
    angles = torch.atan(sigmas[:-1].double())
    steps = torch.diff(angles)
    torch.testing.assert_close(steps, steps.mean().expand_as(steps), rtol=1e-4, atol=0)
    assert sigmas[0].item() == pytest.approx(MODEL.sigma_max, rel=1e-5)
    assert sigmas[-2].item() == pytest.approx(MODEL.sigma_min, rel=1e-5)


def test_align_your_steps_uses_the_published_table_of_the_family():
    sd1 = schedules.align_your_steps(11, MODEL)
    torch.testing.assert_close(sd1[:-1], torch.tensor(schedules.AYS_SIGMAS["sd1"]))
    sdxl_model = DiscreteSchedule.from_params(ScheduleParams(family="sdxl"))
    torch.testing.assert_close(schedules.align_your_steps(11, sdxl_model)[:-1],
                               torch.tensor(schedules.AYS_SIGMAS["sdxl"]))
    # 21 points interpolated log-linearly: every other one is a table entry, the rest geometric means
    dense = schedules.align_your_steps(21, MODEL)[:-1].double()
    table = torch.tensor(schedules.AYS_SIGMAS["sd1"], dtype=torch.float64)
    torch.testing.assert_close(dense[::2], table, rtol=1e-6, atol=0)
    torch.testing.assert_close(dense[1::2], (table[:-1] * table[1:]).sqrt(), rtol=1e-6, atol=0)


def test_beta_distribution_inverse_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for a, b in [(0.6, 0.6), (0.5, 0.7), (2.0, 3.0)]:
        for p in [0.0, 1e-4, 0.1, 0.5, 0.77, 0.9999, 1.0]:
            assert schedules.beta_ppf(p, a, b) == pytest.approx(stats.beta.ppf(p, a, b), abs=1e-9)


@pytest.mark.parametrize("flag, ours", [("use_karras_sigmas", schedules.karras),
                                        ("use_exponential_sigmas", schedules.exponential),
                                        ("use_beta_sigmas", schedules.beta)])
def test_schedules_match_diffusers_sigma_options(flag, ours):
    if flag == "use_beta_sigmas":
        pytest.importorskip("scipy")
    from diffusers import EulerDiscreteScheduler

    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       **{flag: True})
    scheduler.set_timesteps(15)
    torch.testing.assert_close(ours(15, MODEL), scheduler.sigmas, rtol=2e-5, atol=0)


def test_img2img_runs_a1111s_tail_of_the_schedule():
    sigmas = schedules.karras(20, MODEL)
    tail = schedules.img2img_sigmas(sigmas, 0.75)  # t_enc = 15 -> sigmas[4:], 16 steps
    assert len(tail) == 17 and tail[0] == sigmas[4] and tail[-1] == 0
    assert len(schedules.img2img_sigmas(sigmas, 1.0)) == 21  # capped at 0.999: t_enc = 19, all 20 steps
    assert len(schedules.img2img_sigmas(sigmas, 0.0)) == 2


# --- registry --------------------------------------------------------------------------------------------------

A1111_SAMPLERS = ["Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM++ 2S a", "DPM++ 2M", "DPM++ SDE",
                  "DPM++ 2M SDE", "DPM++ 3M SDE", "DPM fast", "DPM adaptive", "Restart", "DDIM", "PLMS", "UniPC",
                  "LCM"]
A1111_SCHEDULES = ["Automatic", "Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform", "KL Optimal",
                   "Align Your Steps", "Simple", "Normal", "DDIM", "Beta"]


def test_every_a1111_name_is_listed():
    assert set(A1111_SAMPLERS) <= set(registry.sampler_names())
    assert registry.schedule_labels() == A1111_SCHEDULES
    assert registry.resolve(None).sampler.name == "DPM++ 2M"


@pytest.mark.parametrize("sampler, schedule", [
    ("DPM++ 2M", "Karras"), ("DPM++ SDE", "Karras"), ("DPM2", "Karras"), ("DPM2 a", "Karras"),
    ("DPM++ 2S a", "Karras"), ("Restart", "Karras"), ("DPM++ 2M SDE", "Exponential"),
    ("DPM++ 3M SDE", "Exponential"), ("Euler", None), ("Euler a", None), ("LMS", None), ("Heun", None),
    ("DDIM", None), ("UniPC", None), ("LCM", None),
])
def test_automatic_picks_a1111s_default_schedule(sampler, schedule):
    choice = registry.resolve(sampler, "Automatic")
    assert choice.infotext_schedule == schedule
    if schedule is not None:
        assert choice.schedule.label == schedule
    else:  # the model's own sigmas
        assert choice.schedule.name in {"uniform", "ddim", "sgm_uniform"}


@pytest.mark.parametrize("name, sampler, schedule", [
    ("DPM++ 2M Karras", "DPM++ 2M", "Karras"),
    ("Euler a Karras", "Euler a", "Karras"),
    ("DPM++ SDE Karras", "DPM++ SDE", "Karras"),
    ("DPM++ 2M SDE Exponential", "DPM++ 2M SDE", "Exponential"),
    ("DPM++ 2M SDE Heun Karras", "DPM++ 2M SDE Heun", "Karras"),
    ("LMS Karras", "LMS", "Karras"),
    ("dpm++ 2m sgm_uniform", "DPM++ 2M", "SGM Uniform"),
    ("k_euler_a", "Euler a", None),
    ("k_dpmpp_2m", "DPM++ 2M", "Karras"),
    ("DDIM", "DDIM", None),
])
def test_old_combined_names_and_aliases(name, sampler, schedule):
    choice = registry.resolve(name)
    assert choice.sampler.name == sampler
    assert choice.infotext_schedule == schedule


def test_explicit_schedule_and_suffix_precedence():
    assert registry.resolve("Euler", "karras").schedule.label == "Karras"
    assert registry.resolve("Euler", "SGMUniform").schedule.name == "sgm_uniform"
    assert registry.resolve("DPM++ 2M Karras", "Exponential").schedule.label == "Karras"  # suffix wins, as A1111


def test_unknown_names_raise_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown sampler 'Eulr'.*Euler a, Euler"):
        registry.resolve("Eulr")
    with pytest.raises(ValueError, match=r"unknown schedule type 'Karas'.*Karras"):
        registry.resolve("Euler", "Karas")
    with pytest.raises(ValueError, match="unknown sampler"):
        registry.resolve("Karras")


def test_make_sigmas_length_and_discarded_penultimate_sigma():
    euler = registry.make_sigmas(registry.resolve("Euler", "Karras"), 10, MODEL)
    torch.testing.assert_close(euler, schedules.karras(10, MODEL))
    dpm2 = registry.make_sigmas(registry.resolve("DPM2"), 10, MODEL)
    longer = schedules.karras(11, MODEL)
    assert len(dpm2) == 11
    torch.testing.assert_close(dpm2, torch.cat([longer[:-2], longer[-1:]]))
