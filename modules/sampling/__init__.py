"""Sampling: the discrete model schedule, sigma schedules, samplers and seeded noise.

- :mod:`.discrete`: ``DiscreteSchedule`` (alphas_cumprod, sigmas, sigma <-> timestep) and eps/v conversions.
- :mod:`.schedules`: ``(n, model) -> sigmas`` functions (Karras, Exponential, Align Your Steps, ...).
- :mod:`.samplers`: ``sampler(model, x, sigmas, *, extra_args, callback, noise_sampler, control) -> x``.
- :mod:`.noise`: ``SeededNoise`` for batch-independent initial and per-step noise, ``BrownianNoise`` for the SDE
  samplers; seed helpers.
- :mod:`.registry`: A1111 names and aliases, Automatic's defaults, ``resolve`` and ``make_sigmas``.

See docs/samplers.md.
"""

from modules.sampling.discrete import DiscreteSchedule, ScheduleParams
from modules.sampling.noise import BrownianNoise, NoiseSettings, SeededNoise, batch_seeds, resolve_seed
from modules.sampling.registry import SAMPLERS, SCHEDULES, SamplerChoice, make_sigmas, resolve
from modules.sampling.samplers import Interrupted, SamplingControl, StepInfo

__all__ = [
    "BrownianNoise",
    "DiscreteSchedule",
    "Interrupted",
    "NoiseSettings",
    "SAMPLERS",
    "SCHEDULES",
    "SamplerChoice",
    "SamplingControl",
    "ScheduleParams",
    "SeededNoise",
    "StepInfo",
    "batch_seeds",
    "make_sigmas",
    "resolve",
    "resolve_seed",
]
