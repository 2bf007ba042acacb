"""The refiner (A1111's "Refiner" accordion): a second checkpoint finishes the last steps of a sampling run.

One sampler run: from the step where ``step / steps`` reaches ``refiner_switch_at`` on, the denoiser calls the
refiner's UNet with the refiner's own text conditioning (an SDXL refiner has its own text encoder and aesthetic-score
ids). The latents and the sampler's state carry on: both models share the latent space. The refiner is loaded
through the model manager, so its "checkpoints to keep in RAM" setting decides whether the base stays in memory;
the latents are decoded by the model loaded then (the refiner's VAE, as in A1111), and the base model is made the
current one again before the batch goes on (hires fix, the next batch).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..models.catalog import CheckpointInfo
from ..models.safetensors_file import ModelFileError
from ..text_encoding import PromptEncoder
from .conditioning import build_conds
from .params import GenerationParams, ParamError
from .tiling import CircularPadding

FIELD = "refiner_checkpoint"


@dataclass(frozen=True)
class RefinerPlan:
    """What a job's refiner is: the checkpoint, the fraction of the steps after which it runs, and the base model's
    checkpoint to come back to."""

    info: CheckpointInfo
    switch_at: float
    base: CheckpointInfo

    def infotext(self, catalog) -> dict:
        """A1111's keys: "Refiner: <name> [<short hash>]", "Refiner switch at", and that steps decide the switch."""
        short = catalog.short_hash(self.info)
        name = self.info.path.stem if not self.info.is_diffusers else self.info.path.name
        return {"Refiner": f"{name} [{short}]" if short else name, "Refiner switch at": self.switch_at,
                "Refiner switch by sampling steps": True}


def plan_refiner(state, params: GenerationParams) -> RefinerPlan | None:
    """The job's refiner, or None without one (or when it is the model already in use); an unknown checkpoint is a
    :class:`ParamError` on ``refiner_checkpoint``."""
    name = params.refiner
    if name is None:
        return None
    info = state.checkpoints.find(name)
    if info is None:
        raise ParamError(FIELD, f"checkpoint not found: {name!r}")
    base = state.models.current_info
    if info == base:
        return None
    return RefinerPlan(info, params.switch_at, base)


@dataclass
class EncodingChoices:
    """How a job encodes its prompts, so that a model loaded mid-job encodes them the same way."""

    clip_skip: int
    emphasis: str
    steps: int
    prompts: list[str]
    negatives: list[str]


class RefinerSwitch:
    """One batch's switch (a :class:`~modules.processing.denoiser.ModelSwitch`): loads the refiner at its step and
    gives the denoiser the refiner's model and conditioning; :meth:`restore` makes the base current again."""

    def __init__(self, state, plan: RefinerPlan, encoding: EncodingChoices, padding: CircularPadding):
        self.state = state
        self.plan = plan
        self.encoding = encoding
        self.padding = padding
        self.engaged = False

    def before_call(self, denoiser) -> None:
        """From the first step at or after ``switch_at`` of the run's steps on, the refiner runs (loaded once)."""
        if self.engaged or denoiser.step < self.plan.switch_at * denoiser.total_steps - 1e-9:
            return
        base = denoiser.model
        model = self._load(self.plan.info)
        self.engaged = True
        if model.spec.vae.latent_channels != base.spec.vae.latent_channels:
            raise ParamError(FIELD, f"{self.plan.info.filename} has {model.spec.vae.latent_channels} latent channels, "
                                    f"the base model {base.spec.vae.latent_channels}: they cannot share the latents")
        if model.spec.variant == base.spec.variant:
            image_cond = denoiser.image_cond
        elif model.spec.variant == "base":
            image_cond = None
        else:
            raise ParamError(FIELD, f"a {model.spec.variant} refiner cannot follow a {base.spec.variant} model")
        if self.state.networks:  # the prompt's LoRAs are patched into the base model only
            self.state.networks.activate(model, [], [], {})
        e = self.encoding
        encoder = PromptEncoder(model, e.clip_skip, e.emphasis, {}, offloader=self.state.models.offloader)
        conds = build_conds(encoder, e.prompts, e.negatives, e.steps)
        denoiser.use_model(model, conds, encoder.encode(""), image_cond)

    def restore(self):
        """Make the base model current again (reloaded if the refiner took its place in memory); returns it."""
        return self._load(self.plan.base) if self.engaged else self.state.models.current

    def _load(self, info: CheckpointInfo):
        try:
            model = self.state.models.load(info)
        except ModelFileError as e:
            raise ParamError(FIELD, str(e)) from None
        self.padding.cover(model)
        return model
