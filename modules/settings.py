"""User settings (``config.json`` in the data folder), typed, with A1111's option names.

A job never changes the stored settings: ``override_settings`` of a request produce a copy for that job only.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import threading
from dataclasses import dataclass, fields
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    # models
    sd_model_checkpoint: str = ""
    sd_vae: str = "Automatic"
    sd_checkpoints_limit: int = 1
    CLIP_stop_at_last_layers: int = 1
    emphasis: str = "Original"
    # saving images
    samples_save: bool = True
    samples_format: str = "png"
    grid_save: bool = True
    grid_format: str = "png"
    save_txt: bool = False
    # sampler defaults and noise
    randn_source: str = "CPU"  # "CPU" or "GPU" (the compute device)
    eta_noise_seed_delta: int = 0
    img2img_fix_steps: bool = False
    initial_noise_multiplier: float = 1.0
    # live preview
    live_previews_enable: bool = True
    show_progress_every_n_steps: int = 1
    # inpainting
    inpainting_mask_weight: float = 1.0

    def with_overrides(self, overrides: dict | None) -> "Settings":
        """A copy with ``overrides`` applied; unknown names or wrong types raise ValueError naming the option."""
        if not overrides:
            return self
        return dataclasses.replace(self, **_validated(overrides))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_FIELDS = {f.name: f for f in fields(Settings)}


def _validated(values: dict) -> dict:
    out = {}
    for name, value in values.items():
        f = _FIELDS.get(name)
        if f is None:
            raise ValueError(f"unknown setting {name!r}")
        kind = type(getattr(Settings(), name))
        try:
            if kind is bool:
                if not isinstance(value, (bool, int)):
                    raise TypeError
                value = bool(value)
            elif kind in (int, float):
                if isinstance(value, bool):
                    raise TypeError
                value = kind(value)
            elif kind is str:
                if not isinstance(value, str):
                    raise TypeError
        except (TypeError, ValueError):
            raise ValueError(f"setting {name!r} must be {kind.__name__}, got {value!r}") from None
        out[name] = value
    if out.get("CLIP_stop_at_last_layers", 1) < 1:
        raise ValueError("setting 'CLIP_stop_at_last_layers' must be >= 1")
    return out


class SettingsStore:
    """The stored settings; ``update`` validates, replaces and saves atomically."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self.extra: dict = {}  # options of extensions or newer versions, kept as they are
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raw = {}
        known = {k: v for k, v in raw.items() if k in _FIELDS}
        self.extra = {k: v for k, v in raw.items() if k not in _FIELDS}
        try:
            self.current = Settings().with_overrides(known)
        except ValueError:
            self.current = Settings()

    def update(self, values: dict) -> Settings:
        with self._lock:
            self.current = self.current.with_overrides(values)
            self._save()
            return self.current

    def reset(self) -> Settings:
        with self._lock:
            self.current = Settings()
            self._save()
            return self.current

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({**self.extra, **self.current.to_dict()}, f, indent=2)
        os.replace(tmp, self.path)
