"""The one explicit application state, created at start and passed to whatever needs it."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from .cmd_args import LaunchOptions
from .devices import DevicePlan, plan_devices
from .hashing import HashCache
from .hooks import HookRegistry
from .job_queue import JobQueue
from .models.catalog import CheckpointCatalog, CheckpointInfo, VaeCatalog
from .models.compile import CompileSettings, compile_unet
from .models.failures import CheckpointFailures
from .upscaling.upscale import Upscalers
from .models.manager import ModelManager
from .networks.active import ActiveNetworks
from .settings import SettingsStore

DEMO_CHECKPOINT = "demo-shapes.safetensors"
log = logging.getLogger(__name__)


@dataclass
class AppState:
    options: LaunchOptions
    plan: DevicePlan
    hashes: HashCache
    checkpoints: CheckpointCatalog
    vaes: VaeCatalog
    models: ModelManager
    settings: SettingsStore
    hooks: HookRegistry
    networks: ActiveNetworks
    queue: JobQueue
    failures: CheckpointFailures
    upscalers: Upscalers
    extensions: object = None  # modules.extensions.Extensions, set by modules.extensions.load_extensions
    notices: list[str] = field(default_factory=list)  # what the start did about a problem, shown in the page

    @property
    def styles_path(self) -> Path:
        return self.options.styles_file or self.options.data_dir / "styles.csv"


def create_state(options: LaunchOptions) -> AppState:
    """Build catalogs and the model manager from the launch options (no model is loaded yet)."""
    plan = plan_devices(options.device, options.no_half, options.no_half_vae, options.medvram, options.lowvram,
                        options.precision, options.medvram_sdxl)
    hashes = HashCache(options.cache_dir / "hashes.json")
    extra = [options.ckpt] if options.ckpt else []
    checkpoints = CheckpointCatalog([options.ckpt_dir], hashes, options.allow_pickle, extra)
    vaes = VaeCatalog(options.vae_dir, options.allow_pickle)
    settings = SettingsStore(options.config_path, options.allowed_output_roots)
    models = ModelManager(checkpoints, vaes, plan, options.allow_pickle, settings.current.sd_checkpoints_limit)
    embedding_dirs = [options.embeddings_dir, options.ckpt_dir.parent / "embeddings"]
    networks = ActiveNetworks(options.lora_dir, embedding_dirs, hashes, options.allow_pickle)
    models.on_released.append(networks.forget)
    if options.compile:
        models.on_loaded.append(unet_compiler(options.cache_dir / "torchinductor", plan))
    models.on_loaded.append(lambda model: hashes.prefetch(model.source) if model.source.is_file() else None)
    failures = CheckpointFailures(options.data_dir / "checkpoint-failures.json")
    half = plan.device != "cpu" and not options.no_half  # fp16 where the model supports it, as A1111 on a GPU
    upscalers = Upscalers(options.upscaler_folders, plan.device, options.allow_pickle, half)
    return AppState(options, plan, hashes, checkpoints, vaes, models, settings, HookRegistry(), networks, JobQueue(),
                    failures, upscalers)


def unet_compiler(cache_dir: Path, plan: DevicePlan):
    """``--compile``: the callback that compiles each loaded model's UNet (not while components are offloaded:
    their block hooks move weights, which a compiled graph would not see)."""
    settings = CompileSettings(cache_dir)

    def compile_loaded(model) -> None:
        if plan.offload != "none":
            log.warning("--compile has no effect with --medvram/--lowvram: the UNet runs uncompiled")
            return
        compile_unet(model.unet, settings)

    return compile_loaded


def default_checkpoint(state: AppState) -> CheckpointInfo | None:
    """``--ckpt`` if given; else the first checkpoint that is not the bundled demo; else the demo model."""
    items = state.checkpoints.items()
    if state.options.ckpt:
        wanted = Path(state.options.ckpt).resolve()
        return next((i for i in items if i.path.resolve() == wanted), None)
    users = [i for i in items if i.path.name != DEMO_CHECKPOINT]
    return (users or items or [None])[0]


def startup_checkpoint(state: AppState) -> CheckpointInfo | None:
    """The checkpoint loaded at start: the one chosen last time (the ``sd_model_checkpoint`` setting) unless
    ``--ckpt`` names one, else :func:`default_checkpoint`."""
    wanted = state.settings.current.sd_model_checkpoint
    chosen = state.checkpoints.find(wanted) if wanted and not state.options.ckpt else None
    return chosen or default_checkpoint(state)


def avoid_failed_checkpoint(state: AppState) -> str | None:
    """When the checkpoint this start would load failed on every job since it last worked (NaN/inf output, load
    errors: :class:`~modules.models.failures.CheckpointFailures`), choose another one for this start: the first
    that has not failed, the bundled demo last. Without one, or with ``--ckpt``, it stays. The notice is logged
    loudly, kept in :attr:`AppState.notices` and returned."""
    chosen = startup_checkpoint(state)
    reason = state.failures.reason(chosen) if chosen is not None else None
    if reason is None:
        return None
    items = state.checkpoints.items()
    candidates = [] if state.options.ckpt else sorted(items, key=lambda i: i.path.name == DEMO_CHECKPOINT)
    fallback = next((i for i in candidates if i != chosen and state.failures.reason(i) is None), None)
    failed = f"{chosen.filename} failed on its last jobs ({reason})"
    if fallback is None:
        why = "it was given with --ckpt" if state.options.ckpt else "no other checkpoint works"
        notice = f"{failed}; it is loaded again because {why}"
    else:
        state.settings.update({"sd_model_checkpoint": fallback.filename})
        notice = f"{failed}; starting with {fallback.filename} instead (choose it again to retry)"
    log.error("%s", notice)
    state.notices.append(notice)
    return notice
