"""Sigma schedules: pure functions ``(n, model) -> sigmas``.

Each returns a float32 CPU tensor of ``n + 1`` descending sigmas whose last value is 0 (the samplers' final
"denoise fully" target). ``model`` is the :class:`~modules.sampling.discrete.DiscreteSchedule` of the checkpoint;
its sigma range (about 0.0292 to 14.61 for SD models) bounds every schedule.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from modules.sampling.discrete import DiscreteSchedule

# Published Align Your Steps tables (10 steps, 11 sigmas), from NVIDIA's "Align Your Steps" how-to page.
AYS_SIGMAS = {
    "sd1": (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029),
    "sdxl": (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029),
}


def _finish(sigmas: torch.Tensor | np.ndarray | list[float]) -> torch.Tensor:
    """Append the final 0 and return float32 on the CPU."""
    if isinstance(sigmas, torch.Tensor):
        s = sigmas.detach().to("cpu", torch.float32).reshape(-1)
    else:
        s = torch.as_tensor(np.array(sigmas, dtype=np.float64)).to(torch.float32).reshape(-1)
    return torch.cat([s, s.new_zeros(1)])


def _check_steps(n: int) -> None:
    if n < 1:
        raise ValueError(f"number of steps must be at least 1, got {n}")


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022): sigmas evenly spaced in ``sigma ** (1 / rho)`` from sigma_max to sigma_min, then 0."""
    _check_steps(n)
    ramp = np.linspace(0.0, 1.0, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _finish((hi + ramp * (lo - hi)) ** rho)


def uniform(n: int, model: DiscreteSchedule) -> torch.Tensor:
    """The model's own discrete sigmas at ``n`` timesteps evenly spaced from the last to the first (A1111 Automatic)."""
    _check_steps(n)
    t = torch.linspace(model.num_timesteps - 1, 0, n)
    return _finish(model.t_to_sigma(t))


def normal(n: int, model: DiscreteSchedule) -> torch.Tensor:
    """Timesteps evenly spaced between those of sigma_max and sigma_min (same as :func:`uniform` for the full range)."""
    _check_steps(n)
    start = float(model.sigma_to_t(model.sigma_max))
    end = float(model.sigma_to_t(model.sigma_min))
    return _finish(model.t_to_sigma(torch.linspace(start, end, n)))


def sgm_uniform(n: int, model: DiscreteSchedule) -> torch.Tensor:
    """Like :func:`normal` but with ``n + 1`` timesteps of which the last (sigma_min) is dropped."""
    _check_steps(n)
    start = float(model.sigma_to_t(model.sigma_max))
    end = float(model.sigma_to_t(model.sigma_min))
    return _finish(model.t_to_sigma(torch.linspace(start, end, n + 1)[:-1]))


def simple(n: int, model: DiscreteSchedule) -> torch.Tensor:
    """Every ``num_timesteps / n``-th training sigma, counting down from the largest."""
    _check_steps(n)
    stride = model.num_timesteps / n
    idx = [model.num_timesteps - 1 - int(i * stride) for i in range(n)]
    return _finish(model.sigmas[idx])


def ddim(n: int, model: DiscreteSchedule) -> torch.Tensor:
    """DDIM's "leading" timesteps ``i * (T // n) + 1`` for i = n-1 … 0 (diffusers' SD default, steps_offset 1).

    For ``n`` dividing 1000 these are exactly A1111's DDIM timesteps; A1111's loop can yield one step more than
    asked when ``n`` does not divide 1000, this always yields ``n``.
    """
    _check_steps(n)
    stride = max(model.num_timesteps // n, 1)
    idx = [min(i * stride + 1, model.num_timesteps - 1) for i in reversed(range(n))]
    return _finish(model.sigmas[idx])


def karras(n: int, model: DiscreteSchedule, rho: float = 7.0) -> torch.Tensor:
    """:func:`karras_sigmas` over the model's sigma range."""
    return karras_sigmas(n, model.sigma_min, model.sigma_max, rho)


def exponential(n: int, model: DiscreteSchedule) -> torch.Tensor:
    """Sigmas evenly spaced in log-sigma from sigma_max to sigma_min."""
    _check_steps(n)
    return _finish(np.exp(np.linspace(math.log(model.sigma_max), math.log(model.sigma_min), n)))


def polyexponential(n: int, model: DiscreteSchedule, rho: float = 1.0) -> torch.Tensor:
    """Log-sigma interpolated along ``ramp ** rho`` (rho = 1 is :func:`exponential`)."""
    _check_steps(n)
    ramp = np.linspace(1.0, 0.0, n) ** rho
    lo, hi = math.log(model.sigma_min), math.log(model.sigma_max)
    return _finish(np.exp(lo + ramp * (hi - lo)))


def kl_optimal(n: int, model: DiscreteSchedule) -> torch.Tensor:
    """"KL optimal" (Sabour et al. 2024): evenly spaced in ``arctan(sigma)`` from sigma_max to sigma_min, then 0.

    A1111 returns ``n + 1`` values ending at sigma_min (no final 0); here the last step denoises to 0 like every
    other schedule, over the same n arctan-spaced sigmas.
    """
    _check_steps(n)
    frac = np.linspace(0.0, 1.0, n)
    lo, hi = math.atan(model.sigma_min), math.atan(model.sigma_max)
    return _finish(np.tan(frac * lo + (1 - frac) * hi))


def align_your_steps(n: int, model: DiscreteSchedule) -> torch.Tensor:
    """NVIDIA's Align Your Steps table for the model family (SDXL table for SDXL, SD1 table otherwise).

    Other step counts interpolate the 11-entry table linearly in log-sigma onto ``n`` evenly spaced positions
    (the same points as A1111 for n >= 2; a single step starts at the table's top, where A1111 picks its bottom).
    """
    _check_steps(n)
    table = np.asarray(AYS_SIGMAS["sdxl" if model.family == "sdxl" else "sd1"], dtype=np.float64)
    if n == len(table):
        return _finish(table)
    resampled = np.interp(np.linspace(0, 1, n), np.linspace(0, 1, len(table)), np.log(table))
    return _finish(np.exp(resampled))


def beta(n: int, model: DiscreteSchedule, alpha: float = 0.6, beta_: float = 0.6) -> torch.Tensor:
    """"Beta sampling" (Lee et al. 2024): sigma_min + (sigma_max - sigma_min) * BetaPPF(1 - i / (n - 1))."""
    _check_steps(n)
    q = 1.0 - np.linspace(0.0, 1.0, n)
    fractions = [beta_ppf(float(p), alpha, beta_) for p in q]
    return _finish([model.sigma_min + f * (model.sigma_max - model.sigma_min) for f in fractions])


def _incomplete_beta_fraction(x: float, a: float, b: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz evaluation)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 300):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return result


def beta_cdf(x: float, a: float, b: float) -> float:
    """Regularized incomplete beta function I_x(a, b), the CDF of the Beta(a, b) distribution."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _incomplete_beta_fraction(x, a, b) / a
    return 1.0 - math.exp(log_front) * _incomplete_beta_fraction(1.0 - x, b, a) / b


def beta_ppf(p: float, a: float, b: float) -> float:
    """Inverse of :func:`beta_cdf` by bisection (the CDF is monotone; 100 halvings reach float64 resolution)."""
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if beta_cdf(mid, a, b) < p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def img2img_sigmas(sigmas: torch.Tensor, denoising_strength: float) -> torch.Tensor:
    """The tail of an ``n``-step schedule that img2img runs, as A1111 slices it.

    With ``t_enc = int(min(strength, 0.999) * n)`` A1111 keeps ``sigmas[n - t_enc - 1:]``: ``t_enc + 1`` steps
    starting at ``sigmas[n - t_enc - 1]``, the level to which the init latents are noised. Strength 0 keeps one
    step from the smallest non-zero sigma.
    """
    n = len(sigmas) - 1
    t_enc = int(min(max(denoising_strength, 0.0), 0.999) * n)
    return sigmas[n - t_enc - 1:]
