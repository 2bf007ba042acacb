"""Sampler and schedule names as users know them (A1111), their aliases and defaults.

``resolve("DPM++ 2M Karras")`` or ``resolve("DPM++ 2M", "Automatic")`` gives a :class:`SamplerChoice`;
``make_sigmas(choice, steps, model)`` its schedule; ``choice.sampler.sample(denoiser, x, sigmas, ...)`` runs it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

import torch

from modules.sampling import samplers, schedules
from modules.sampling.discrete import DiscreteSchedule

ScheduleFunction = Callable[[int, DiscreteSchedule], torch.Tensor]
AUTOMATIC = "automatic"


@dataclass(frozen=True)
class ScheduleInfo:
    """A schedule type: ``name`` for the API (``"karras"``), ``label`` for the UI and infotext (``"Karras"``)."""

    name: str
    label: str
    function: ScheduleFunction | None  # None only for Automatic
    aliases: tuple[str, ...] = ()


class EtaDefault(NamedTuple):
    """The setting that gives a sampler's eta when a request has none, its infotext key, and the value A1111 does
    not write."""

    setting: str
    infotext_key: str
    unwritten: float


@dataclass(frozen=True)
class SamplerInfo:
    """A sampler as listed to users.

    ``default_schedule``: the schedule Automatic picks as A1111 names it (written to infotext); None means the
    model's own sigmas, for which ``native_schedule`` says which of our schedules that is. ``options`` are fixed
    keyword arguments of ``function`` (e.g. the Heun variant of DPM++ 2M SDE). ``discard_next_to_last_sigma``: the
    schedule is made one step longer and its second-to-last sigma dropped (A1111 does this for DPM2, DPM2 a and
    DPM++ 3M SDE). ``stochastic``: needs a ``noise_sampler``. ``brownian_noise``: A1111 gives it Brownian-tree noise
    seeded per image (:meth:`~modules.sampling.noise.SeededNoise.brownian`) instead of the images' generators.
    """

    name: str
    function: Callable[..., torch.Tensor]
    aliases: tuple[str, ...] = ()
    default_schedule: str | None = None
    native_schedule: str = "uniform"
    stochastic: bool = False
    discard_next_to_last_sigma: bool = False
    brownian_noise: bool = False
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def eta_default(self) -> EtaDefault | None:
        """Where this sampler's ``eta`` comes from, as in A1111: ``eta_ddim`` / "Eta DDIM" / 0 for DDIM,
        ``eta_ancestral`` / "Eta" / 1 for the others; None: it has no eta."""
        if "eta" not in inspect.signature(self.function).parameters:
            return None
        if self.name == "DDIM":
            return EtaDefault("eta_ddim", "Eta DDIM", 0.0)
        return EtaDefault("eta_ancestral", "Eta", 1.0)

    def sample(self, model, x: torch.Tensor, sigmas: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """Run the sampler with its fixed options; ``kwargs`` are the common sampler arguments (and overrides).

        A model evaluation that raises :class:`~modules.sampling.samplers.Interrupted` ends it like a stop between
        steps: the x the interrupted step started from is returned."""
        try:
            return self.function(model, x, sigmas, **{**self.options, **kwargs})
        except samplers.Interrupted as e:
            if e.x is None:
                raise
            return e.x


@dataclass(frozen=True)
class SamplerChoice:
    """A resolved (sampler, schedule) pair. ``infotext_schedule`` is the "Schedule type" label to write, or None
    where A1111 writes none (Automatic resolving to the model's own sigmas)."""

    sampler: SamplerInfo
    schedule: ScheduleInfo
    infotext_schedule: str | None


SCHEDULES: tuple[ScheduleInfo, ...] = (
    ScheduleInfo(AUTOMATIC, "Automatic", None),
    ScheduleInfo("uniform", "Uniform", schedules.uniform),
    ScheduleInfo("karras", "Karras", schedules.karras),
    ScheduleInfo("exponential", "Exponential", schedules.exponential),
    ScheduleInfo("polyexponential", "Polyexponential", schedules.polyexponential),
    ScheduleInfo("sgm_uniform", "SGM Uniform", schedules.sgm_uniform, ("SGMUniform", "trailing")),
    ScheduleInfo("kl_optimal", "KL Optimal", schedules.kl_optimal),
    ScheduleInfo("align_your_steps", "Align Your Steps", schedules.align_your_steps),
    ScheduleInfo("simple", "Simple", schedules.simple),
    ScheduleInfo("normal", "Normal", schedules.normal),
    ScheduleInfo("ddim", "DDIM", schedules.ddim),
    ScheduleInfo("beta", "Beta", schedules.beta),
)

# Listed in A1111's order; the first is the default sampler.
SAMPLERS: tuple[SamplerInfo, ...] = (
    SamplerInfo("DPM++ 2M", samplers.dpmpp_2m, ("k_dpmpp_2m",), default_schedule="karras"),
    SamplerInfo("DPM++ SDE", samplers.dpmpp_sde, ("k_dpmpp_sde",), default_schedule="karras", stochastic=True,
                brownian_noise=True),
    SamplerInfo("DPM++ 2M SDE", samplers.dpmpp_2m_sde, ("k_dpmpp_2m_sde",), default_schedule="exponential",
                stochastic=True, brownian_noise=True),
    SamplerInfo("DPM++ 2M SDE Heun", samplers.dpmpp_2m_sde, ("k_dpmpp_2m_sde_heun",),
                default_schedule="exponential", stochastic=True, brownian_noise=True,
                options=MappingProxyType({"solver_type": "heun"})),
    SamplerInfo("DPM++ 2S a", samplers.dpmpp_2s_ancestral, ("k_dpmpp_2s_a",), default_schedule="karras",
                stochastic=True),
    SamplerInfo("DPM++ 3M SDE", samplers.dpmpp_3m_sde, ("k_dpmpp_3m_sde",), default_schedule="exponential",
                stochastic=True, discard_next_to_last_sigma=True, brownian_noise=True),
    SamplerInfo("Euler a", samplers.euler_ancestral, ("k_euler_a", "k_euler_ancestral"), stochastic=True),
    SamplerInfo("Euler", samplers.euler, ("k_euler",)),
    SamplerInfo("LMS", samplers.lms, ("k_lms",)),
    SamplerInfo("Heun", samplers.heun, ("k_heun",)),
    SamplerInfo("DPM2", samplers.dpm2, ("k_dpm_2",), default_schedule="karras", discard_next_to_last_sigma=True),
    SamplerInfo("DPM2 a", samplers.dpm2_ancestral, ("k_dpm_2_a",), default_schedule="karras", stochastic=True,
                discard_next_to_last_sigma=True),
    SamplerInfo("DPM fast", samplers.dpm_fast, ("k_dpm_fast",), stochastic=True),
    SamplerInfo("DPM adaptive", samplers.dpm_adaptive, ("k_dpm_ad",), stochastic=True),
    SamplerInfo("Restart", samplers.restart, ("restart",), default_schedule="karras", stochastic=True),
    SamplerInfo("DDIM", samplers.ddim, ("ddim",), native_schedule="ddim"),
    SamplerInfo("PLMS", samplers.plms, ("plms",), native_schedule="ddim"),
    SamplerInfo("UniPC", samplers.unipc, ("unipc",), native_schedule="sgm_uniform"),
    SamplerInfo("LCM", samplers.lcm, ("k_lcm",), stochastic=True),
)


def _index(items, names: Callable[[Any], tuple[str, ...]]) -> Mapping[str, Any]:
    return MappingProxyType({key.lower(): item for item in items for key in names(item)})


_SCHEDULES_BY_NAME = _index(SCHEDULES, lambda s: (s.name, s.label, *s.aliases))
_SAMPLERS_BY_NAME = _index(SAMPLERS, lambda s: (s.name, *s.aliases))


def sampler_names() -> list[str]:
    return [s.name for s in SAMPLERS]


def schedule_labels() -> list[str]:
    return [s.label for s in SCHEDULES]


def find_schedule(name: str | None) -> ScheduleInfo:
    """Schedule by name, label or alias (case-insensitive); None or "" is Automatic."""
    found = _SCHEDULES_BY_NAME.get((name or AUTOMATIC).strip().lower())
    if found is None:
        raise ValueError(f"unknown schedule type {name!r}; valid: {', '.join(schedule_labels())}")
    return found


def find_sampler(name: str) -> SamplerInfo:
    """Sampler by A1111 name or alias (case-insensitive), without a schedule suffix."""
    found = _SAMPLERS_BY_NAME.get((name or "").strip().lower())
    if found is None:
        raise ValueError(f"unknown sampler {name!r}; valid: {', '.join(sampler_names())}")
    return found


def _split_combined(name: str) -> tuple[str, ScheduleInfo | None]:
    """``"DPM++ 2M Karras"`` -> ("DPM++ 2M", Karras); names without a schedule suffix come back unchanged."""
    if name.strip().lower() in _SAMPLERS_BY_NAME:
        return name, None
    lowered = name.strip().lower()
    for key, schedule in _SCHEDULES_BY_NAME.items():
        if lowered.endswith(" " + key) and lowered[: -len(key) - 1].strip() in _SAMPLERS_BY_NAME:
            return name.strip()[: -len(key) - 1], schedule
    return name, None


def resolve(sampler_name: str | None, schedule_name: str | None = None) -> SamplerChoice:
    """Resolve a sampler name (old combined names such as "DPM++ 2M Karras" included) and a schedule type.

    A schedule named in the sampler name wins over ``schedule_name`` (as in A1111). Automatic (or None) becomes
    the sampler's default schedule. An empty sampler name means the default sampler. Unknown names raise
    ValueError listing the valid ones.
    """
    name, suffix_schedule = _split_combined(sampler_name or SAMPLERS[0].name)
    sampler = find_sampler(name)
    schedule = suffix_schedule or find_schedule(schedule_name)
    if schedule.name != AUTOMATIC:
        return SamplerChoice(sampler, schedule, schedule.label)
    if sampler.default_schedule is not None:
        default = find_schedule(sampler.default_schedule)
        return SamplerChoice(sampler, default, default.label)
    return SamplerChoice(sampler, find_schedule(sampler.native_schedule), None)


def make_sigmas(choice: SamplerChoice, steps: int, model: DiscreteSchedule) -> torch.Tensor:
    """The ``steps + 1`` sigmas (ending at 0) the chosen sampler runs on."""
    function = choice.schedule.function
    if function is None:
        raise ValueError("resolve() the schedule before making sigmas")
    if not choice.sampler.discard_next_to_last_sigma:
        return function(steps, model)
    longer = function(steps + 1, model)
    return torch.cat([longer[:-2], longer[-1:]])
