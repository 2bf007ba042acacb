"""``--compile``: the UNet through ``torch.compile`` (inductor), with its caches in the data folder.

Inductor keeps compiled graphs on disk (its FX graph and AOT autograd caches, under ``TORCHINDUCTOR_CACHE_DIR``), so
a second start with the same model, size and torch finds them and skips most of the work. Where compiling fails —
an option torch refuses, no C++ compiler, an operator inductor cannot lower — the UNet stays as it was (eager) and
the failure is logged as a warning; nothing else changes. A compiled UNet is interruptible between steps only
(the per-block stop checks of :mod:`modules.processing.interrupt` are hooks that a compiled graph would not see).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompileSettings:
    """How ``--compile`` compiles: the cache folder, torch.compile's mode and backend, and inductor options."""

    cache_dir: Path
    mode: str | None = None  # torch.compile's mode; None = its default (measured fastest here: docs/performance.md)
    backend: str = "inductor"
    options: tuple[tuple[str, object], ...] = ()  # inductor options, e.g. (("cpp.cxx", ("g++",)),)


def use_cache_dir(folder: Path) -> None:
    """Point inductor's on-disk caches at ``folder`` (before the first compile of this process)."""
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    os.environ["TORCHINDUCTOR_FX_GRAPH_CACHE"] = "1"
    os.environ["TORCHINDUCTOR_AUTOGRAD_CACHE"] = "1"


def is_compiled(module) -> bool:
    """Whether :func:`compile_unet` compiled ``module`` (``nn.Module.compile`` in place)."""
    return getattr(module, "_compiled_call_impl", None) is not None


def compile_unet(unet, settings: CompileSettings) -> bool:
    """Compile ``unet`` in place (the same module object: its config, dtype and weights stay as they are); False,
    with a warning, where torch refuses the settings. The work happens at the first call; a graph that fails to
    compile then (no C++ compiler, an operator inductor cannot lower) runs as traced, eagerly, with a warning."""
    if is_compiled(unet):
        return True
    use_cache_dir(settings.cache_dir)
    try:
        backend = _inductor(settings) if settings.backend == "inductor" else settings.backend
        unet.compile(backend=_falling_back(backend) if callable(backend) else backend)
    except Exception as e:  # noqa: BLE001 - any refusal leaves the eager UNet
        log.warning("--compile: torch.compile refused the UNet (%s: %s); running it uncompiled", type(e).__name__,
                    _short(e))
        return False
    log.info("--compile: the UNet is compiled with %s (mode %s) at its first step for each size", settings.backend,
             settings.mode or "default")
    return True


def _inductor(settings: CompileSettings):
    """Inductor as torch.compile builds it for ``mode`` and ``options`` (which it checks here, at once)."""
    import torch

    return torch._TorchCompileInductorWrapper(settings.mode, dict(settings.options) or None, None)


def _falling_back(backend):
    """``backend`` where it compiles a graph; the graph as traced (eager kernels) where it raises."""
    warned = []

    def compile_graph(graph, example_inputs):
        try:
            return backend(graph, example_inputs)
        except Exception as e:  # noqa: BLE001 - a graph that does not compile still runs
            if not warned:
                log.warning("--compile: compiling the UNet failed (%s: %s); running it uncompiled",
                            type(e).__name__, _short(e))
                warned.append(e)
            return graph.forward

    return compile_graph


def _short(error: Exception, limit: int = 300) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[:limit] + " …"
