"""Parity with diffusers' schedulers: the same analytic eps-model, steps and initial latents give the same result.

The "model" is an exact eps-predictor for Gaussian data written the way a UNet is called: from the scaled input
``u`` and the timestep ``t``. diffusers' loop drives it through ``scale_model_input``/``step``; ours through a
sigma-space denoiser (``x - sigma * eps(x * c_in(sigma), sigma_to_t(sigma))``) and our own schedule functions.
How the sigmas line up for each scheduler is described in docs/samplers.md.
"""

import math

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LMSDiscreteScheduler,
    UniPCMultistepScheduler,
)

from modules.sampling import samplers, schedules
from modules.sampling.discrete import DiscreteSchedule, c_in

MODEL = DiscreteSchedule.from_params()
SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
DATA_MEAN, DATA_VAR = 0.3, 0.4


class GaussianEpsModel:
    """eps(u, t) for data ~ N(DATA_MEAN, DATA_VAR), with sigma(t) interpolated linearly in t from diffusers' table."""

    def __init__(self, alphas_cumprod: torch.Tensor) -> None:
        self.sigmas = ((1 - alphas_cumprod.double()) / alphas_cumprod.double()) ** 0.5

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64).clamp(0, len(self.sigmas) - 1)
        low = t.floor().long()
        high = t.ceil().long()
        return self.sigmas[low] + (t - low) * (self.sigmas[high] - self.sigmas[low])

    def __call__(self, u: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = self.sigma(t).reshape(-1, *([1] * (u.ndim - 1))).to(u.dtype) if torch.as_tensor(t).ndim else \
            self.sigma(t).to(u.dtype)
        x = u * (1 + s**2) ** 0.5
        denoised = DATA_MEAN + DATA_VAR / (DATA_VAR + s**2) * (x - DATA_MEAN)
        return (x - denoised) / s


EPS = GaussianEpsModel(EulerDiscreteScheduler(**SD_BETAS).alphas_cumprod)


def our_denoiser(quantize: bool):
    def denoiser(x, sigma):
        s = sigma.view(-1, 1, 1, 1)
        return x - s * EPS(x * c_in(sigma, x), MODEL.sigma_to_t(sigma, quantize=quantize))
    return denoiser


def run_diffusers(scheduler, steps: int, x_start: torch.Tensor, sigma_start: float, variance_preserving: bool):
    """diffusers' denoising loop from sigma-space ``x_start``; VP schedulers work on x / sqrt(1 + sigma²)."""
    scheduler.set_timesteps(steps)
    latents = x_start / math.sqrt(1 + sigma_start**2) if variance_preserving else x_start.clone()
    for t in scheduler.timesteps:
        eps = EPS(scheduler.scale_model_input(latents, t), t)
        latents = scheduler.step(eps, t, latents).prev_sample
    return latents


def start(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * sigmas[0]


CASES = {
    # name: (diffusers scheduler, our sampler, our schedule, VP?, quantized timesteps?)
    "Euler (leading)": (lambda: EulerDiscreteScheduler(**SD_BETAS, timestep_spacing="leading", steps_offset=1),
                        samplers.euler, schedules.ddim, False, False),
    "Euler (linspace) ~ Uniform": (lambda: EulerDiscreteScheduler(**SD_BETAS, timestep_spacing="linspace"),
                                   samplers.euler, schedules.uniform, False, False),
    "Heun (leading)": (lambda: HeunDiscreteScheduler(**SD_BETAS, timestep_spacing="leading", steps_offset=1),
                       samplers.heun, schedules.ddim, False, False),
    "LMS (leading)": (lambda: LMSDiscreteScheduler(**SD_BETAS, timestep_spacing="leading", steps_offset=1),
                      samplers.lms, schedules.ddim, False, False),
    "DPM++ 2M Karras": (lambda: DPMSolverMultistepScheduler(**SD_BETAS, use_karras_sigmas=True, solver_order=2,
                                                            algorithm_type="dpmsolver++"),
                        samplers.dpmpp_2m, schedules.karras, True, True),
    "DDIM": (lambda: DDIMScheduler(**SD_BETAS, timestep_spacing="leading", steps_offset=1, set_alpha_to_one=True,
                                   clip_sample=False),
             samplers.ddim, schedules.ddim, True, False),
    "UniPC bh2 Karras": (lambda: UniPCMultistepScheduler(**SD_BETAS, use_karras_sigmas=True, solver_order=3,
                                                         solver_type="bh2", final_sigmas_type="zero"),
                         samplers.unipc, schedules.karras, True, True),
}


@pytest.mark.parametrize("steps", [7, 20])
@pytest.mark.parametrize("name", CASES)
def test_matches_diffusers(name, steps):
    if name.startswith("LMS"):
        pytest.importorskip("scipy")  # diffusers' LMS integrates its coefficients with scipy
    make_scheduler, sampler, schedule, vp, quantize = CASES[name]
    sigmas = schedule(steps, MODEL)
    x = start(sigmas)
    options = {"variant": "bh2"} if sampler is samplers.unipc else {}
    ours = sampler(our_denoiser(quantize), x, sigmas, **options)
    theirs = run_diffusers(make_scheduler(), steps, x, float(sigmas[0]), vp)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-5)
    assert (ours - x).abs().mean() > 0.1  # the comparison is not between two untouched inputs


def test_ddim_with_sd_config_stops_at_the_first_training_sigma():
    """SD's own DDIM config (set_alpha_to_one=False) ends at timestep 0 (sigma_min) instead of sigma 0."""
    steps = 10
    sigmas = schedules.ddim(steps, MODEL)
    to_sigma_min = torch.cat([sigmas[:-1], MODEL.sigmas[:1]])
    x = start(sigmas)
    ours = samplers.ddim(our_denoiser(False), x, to_sigma_min)
    scheduler = DDIMScheduler(**SD_BETAS, timestep_spacing="leading", steps_offset=1, set_alpha_to_one=False,
                              clip_sample=False)
    theirs = run_diffusers(scheduler, steps, x, float(sigmas[0]), True) * math.sqrt(1 + MODEL.sigma_min**2)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-5)


def test_unipc_bh1_matches_diffusers_ending_at_sigma_min():
    """A1111's UniPC variant bh1; diffusers only supports it with a final sigma_min (bh1 to sigma 0 gives NaN).

    diffusers then repeats sigma_min as the last sigma: a last step that only applies the corrector.
    """
    steps = 12
    karras = schedules.karras(steps, MODEL)
    sigmas = torch.cat([karras[:-1], karras[-2:-1]])
    x = start(sigmas)
    ours = samplers.unipc(our_denoiser(True), x, sigmas, variant="bh1")
    scheduler = UniPCMultistepScheduler(**SD_BETAS, use_karras_sigmas=True, solver_order=3, solver_type="bh1",
                                        final_sigmas_type="sigma_min")
    theirs = run_diffusers(scheduler, steps, x, float(sigmas[0]), True) * math.sqrt(1 + MODEL.sigma_min**2)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-5)
