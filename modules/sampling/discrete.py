"""The model's discrete DDPM noise schedule and the sigma-space conversions built on it.

Stable Diffusion models are trained on 1000 discrete timesteps with "scaled linear" betas. The samplers of this
package work in sigma space ("variance exploding": ``x = x0 + sigma * noise``); this module maps between the two
views and converts a UNet's output (eps or v prediction) into the denoised estimate the samplers consume.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

PredictionType = Literal["epsilon", "v_prediction"]
ModelFamily = Literal["sd1", "sd2", "sdxl"]


@dataclass(frozen=True)
class ScheduleParams:
    """Training-time noise schedule of a model (defaults are those of SD1, SD2 and SDXL)."""

    beta_start: float = 0.00085
    beta_end: float = 0.012
    num_train_timesteps: int = 1000
    beta_schedule: Literal["scaled_linear", "linear"] = "scaled_linear"
    prediction_type: PredictionType = "epsilon"
    family: ModelFamily = "sd1"


@dataclass(frozen=True)
class DiscreteSchedule:
    """A model's discrete schedule: ``alphas_cumprod`` and the sigmas ``sqrt((1 - a) / a)`` per timestep.

    ``sigmas`` ascend with the timestep (``sigmas[0]`` is sigma_min, ``sigmas[-1]`` sigma_max). Build one with
    :meth:`from_params`. ``family`` only selects the Align Your Steps table; ``prediction_type`` tells the UNet
    wrapper which conversion to use.
    """

    alphas_cumprod: torch.Tensor
    prediction_type: PredictionType = "epsilon"
    family: ModelFamily = "sd1"
    sigmas: torch.Tensor = field(init=False, repr=False)
    log_sigmas: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        alphas_cumprod = self.alphas_cumprod.detach().to("cpu", torch.float32)
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        object.__setattr__(self, "alphas_cumprod", alphas_cumprod)
        object.__setattr__(self, "sigmas", sigmas)
        object.__setattr__(self, "log_sigmas", sigmas.log())

    @classmethod
    def from_params(cls, params: ScheduleParams | None = None) -> DiscreteSchedule:
        """Build the schedule from betas (computed in float64 as the original LDM code does, stored in float32)."""
        params = params or ScheduleParams()
        n = params.num_train_timesteps
        if params.beta_schedule == "scaled_linear":
            betas = np.linspace(params.beta_start**0.5, params.beta_end**0.5, n, dtype=np.float64) ** 2
        elif params.beta_schedule == "linear":
            betas = np.linspace(params.beta_start, params.beta_end, n, dtype=np.float64)
        else:
            raise ValueError(f"unknown beta_schedule {params.beta_schedule!r}; expected 'scaled_linear' or 'linear'")
        alphas_cumprod = torch.from_numpy(np.cumprod(1.0 - betas))
        return cls(alphas_cumprod, prediction_type=params.prediction_type, family=params.family)

    @property
    def num_timesteps(self) -> int:
        return int(self.sigmas.shape[0])

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: torch.Tensor | float, quantize: bool = False) -> torch.Tensor:
        """Continuous timestep of ``sigma``, interpolating linearly in log-sigma between neighbouring timesteps.

        Values outside the trained range clamp to 0 or ``num_timesteps - 1``. ``quantize`` rounds to the nearest
        integer timestep (what diffusers passes to the UNet for Karras sigmas).
        """
        sigma = torch.as_tensor(sigma, dtype=torch.float32)
        log_sigma = sigma.to("cpu").clamp_min(1e-10).log().reshape(-1)
        high = torch.searchsorted(self.log_sigmas, log_sigma).clamp(1, self.num_timesteps - 1)
        low = high - 1
        lo, hi = self.log_sigmas[low], self.log_sigmas[high]
        w = ((log_sigma - lo) / (hi - lo)).clamp(0, 1)
        t = (low.to(torch.float32) + w).reshape(sigma.shape)
        if quantize:
            t = t.round()
        return t.to(sigma.device)

    def t_to_sigma(self, t: torch.Tensor | float) -> torch.Tensor:
        """Sigma at a (possibly fractional) timestep: log-sigma interpolated linearly from the two timesteps around
        it (exact at integer timesteps); ``t`` is clamped to [0, num_timesteps - 1]."""
        t = torch.as_tensor(t, dtype=torch.float32)
        position = t.to("cpu").clamp(0, self.num_timesteps - 1)
        below = position.floor().clamp(max=self.num_timesteps - 2).long()
        log_sigma = torch.lerp(self.log_sigmas[below], self.log_sigmas[below + 1], position - below)
        return log_sigma.exp().to(t.device)


def broadcast_sigma(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """``sigma`` (a number or one value per batch item) shaped to broadcast against ``x``."""
    sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype)
    if sigma.ndim == 0:
        return sigma
    return sigma.reshape(sigma.shape + (1,) * (x.ndim - sigma.ndim))


def c_in(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Input scaling for the UNet: ``1 / sqrt(sigma² + 1)`` (maps sigma-space x to the model's unit-variance input)."""
    s = broadcast_sigma(sigma, x)
    return (s**2 + 1) ** -0.5


def denoised_from_eps(x: torch.Tensor, sigma: torch.Tensor | float, eps: torch.Tensor) -> torch.Tensor:
    """Denoised estimate from an eps-prediction: ``x - sigma * eps``."""
    return x - broadcast_sigma(sigma, x) * eps


def eps_from_denoised(x: torch.Tensor, sigma: torch.Tensor | float, denoised: torch.Tensor) -> torch.Tensor:
    """The eps a denoised estimate implies: ``(x - denoised) / sigma``."""
    return (x - denoised) / broadcast_sigma(sigma, x)


def denoised_from_v(x: torch.Tensor, sigma: torch.Tensor | float, v: torch.Tensor) -> torch.Tensor:
    """Denoised estimate from a v-prediction: ``x / (sigma² + 1) - sigma * v / sqrt(sigma² + 1)``."""
    s = broadcast_sigma(sigma, x)
    return x / (s**2 + 1) - s * v * (s**2 + 1) ** -0.5


def v_from_denoised(x: torch.Tensor, sigma: torch.Tensor | float, denoised: torch.Tensor) -> torch.Tensor:
    """The v a denoised estimate implies (inverse of :func:`denoised_from_v`)."""
    s = broadcast_sigma(sigma, x)
    return (x / (s**2 + 1) - denoised) * (s**2 + 1) ** 0.5 / s


def denoised_from_output(
    x: torch.Tensor, sigma: torch.Tensor | float, output: torch.Tensor, prediction_type: PredictionType
) -> torch.Tensor:
    """Denoised estimate from a UNet output of the given prediction type."""
    if prediction_type == "epsilon":
        return denoised_from_eps(x, sigma, output)
    if prediction_type == "v_prediction":
        return denoised_from_v(x, sigma, output)
    raise ValueError(f"unknown prediction_type {prediction_type!r}; expected 'epsilon' or 'v_prediction'")
