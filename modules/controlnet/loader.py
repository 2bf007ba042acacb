"""Finding and loading ControlNet weights into diffusers ``ControlNetModel`` (offline, safetensors first).

Accepted: an original-layout single file (``control_model.`` keys as lllyasviel and A1111 share them, or the same
names without the prefix), a diffusers-named single file (config read from shapes), or a diffusers folder
(``config.json`` + ``diffusion_pytorch_model.safetensors``). Pickle files (.pth/.ckpt/.pt) only with
``--allow-pickle``, through :mod:`modules.models.safetensors_file`.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..models import builders
from ..models.safetensors_file import PICKLE_SUFFIXES, ModelFileError, load_state_dict, read_shapes
from ..models.spec import UnknownLayoutError
from . import layout

SUFFIXES = (".safetensors",)
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors")


def legacy_hash(path: Path) -> str:
    """A1111's old short model hash (sha256 of 64 KiB at offset 1 MiB, 8 hex digits), which sd-webui-controlnet
    shows after ControlNet model names ("control_sd15_canny [fef5e48e]")."""
    with open(path, "rb") as f:
        f.seek(0x100000)
        return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]


@dataclass(frozen=True)
class ControlNetInfo:
    """One ControlNet model on disk (a file, or a diffusers folder)."""

    path: Path
    root: Path

    @property
    def name(self) -> str:
        rel = self.path.relative_to(self.root)
        return (rel if self.path.is_dir() else rel.with_suffix("")).as_posix()

    @property
    def weights(self) -> Path:
        if not self.path.is_dir():
            return self.path
        present = [self.path / n for n in DIFFUSERS_WEIGHTS if (self.path / n).is_file()]
        return present[0] if present else self.path / DIFFUSERS_WEIGHTS[0]

    @property
    def title(self) -> str:
        """``name [hash]`` as sd-webui-controlnet lists models."""
        try:
            return f"{self.name} [{legacy_hash(self.weights)}]"
        except OSError:
            return self.name


class ControlNetCatalog:
    """The ControlNet models under ``root`` (``models/ControlNet``); ``refresh()`` re-scans."""

    def __init__(self, root: Path, allow_pickle: bool = False):
        self.root = Path(root)
        self.allow_pickle = allow_pickle
        self._items: list[ControlNetInfo] = []
        self.refresh()

    def refresh(self) -> list[ControlNetInfo]:
        suffixes = SUFFIXES + (tuple(PICKLE_SUFFIXES) if self.allow_pickle else ())
        found = []
        if self.root.is_dir():
            folders = [p for p in self.root.rglob("config.json") if _is_controlnet_config(p)]
            inside = {f.parent for f in folders}
            found += [ControlNetInfo(f.parent, self.root) for f in folders]
            found += [ControlNetInfo(p, self.root) for p in self.root.rglob("*")
                      if p.is_file() and p.suffix.lower() in suffixes and p.parent not in inside]
        self._items = sorted(found, key=lambda i: i.name.lower())
        return self._items

    def items(self) -> list[ControlNetInfo]:
        return list(self._items)

    def titles(self) -> list[str]:
        return [i.title for i in self._items]

    def find(self, query: str) -> ControlNetInfo | None:
        """By title ("name [hash]"), name, file name or stem; never by an arbitrary path."""
        q = query.strip()
        if not q or q.lower() == "none":
            return None
        bare = q.rsplit(" [", 1)[0] if q.endswith("]") else q
        for info in self._items:
            if bare in (info.name, info.path.name, info.path.stem):
                return info
        return None


def _is_controlnet_config(path: Path) -> bool:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("_class_name") == "ControlNetModel"
    except (OSError, ValueError, AttributeError):
        return False


def load_controlnet(path: str | Path, allow_pickle: bool = False, dtype=None):
    """A diffusers ``ControlNetModel`` (eval mode, no gradients) from a file or diffusers folder.

    Raises ModelFileError naming the file when it cannot be used.
    """
    path = Path(path)
    try:
        if path.is_dir():
            return _load_folder(path, dtype)
        return _load_file(path, allow_pickle, dtype)
    except ModelFileError:
        raise
    except (UnknownLayoutError, ValueError, KeyError, RuntimeError) as e:
        raise ModelFileError(f"{path.name}: cannot load as a ControlNet ({e})") from e


def _build(config: dict, sd: dict, dtype):
    from diffusers import ControlNetModel

    model = builders.build_on_meta(lambda: ControlNetModel.from_config(config))
    builders.fill(model, {k: _owned(v, dtype) for k, v in sd.items()}, "ControlNet")
    return model.eval().requires_grad_(False)


def _owned(v, dtype):
    return v.to(dtype) if dtype is not None and v.is_floating_point() and v.dtype != dtype else v.clone()


def _load_file(path: Path, allow_pickle: bool, dtype):
    shapes, _ = read_shapes(path, allow_pickle)
    sd = load_state_dict(path, allow_pickle)
    if layout.is_original_layout(shapes):
        spec, prefix = layout.detect_original(shapes)
        return _build(layout.controlnet_config(spec), layout.to_diffusers(sd, spec, prefix), dtype)
    spec = layout.detect_diffusers(shapes)
    return _build(layout.controlnet_config(spec), sd, dtype)


def _load_folder(path: Path, dtype):
    config_path = path / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelFileError(f"{path.name}: no readable config.json ({e})") from e
    weights = ControlNetInfo(path, path.parent).weights
    if not weights.is_file():
        raise ModelFileError(f"{path.name}: no diffusion_pytorch_model.safetensors "
                             "(pickle .bin weights are not loaded)")
    return _build(config, load_state_dict(weights), dtype)


def original_state_dict(model, dtype=None) -> dict:
    """A ``ControlNetModel``'s tensors under their original single-file names (``control_model.…``)."""
    out = layout.to_original(model.state_dict(), layout.spec_from_model(model))
    if dtype is not None:
        out = {k: v.to(dtype) if v.is_floating_point() else v for k, v in out.items()}
    return {k: v.detach().contiguous() for k, v in out.items()}


def export_controlnet(model, path: str | Path, metadata: dict[str, str] | None = None, dtype=None) -> Path:
    """Write ``model`` as an original-layout single-file ControlNet (safetensors, atomic)."""
    from ..models.export import save_safetensors

    return save_safetensors(original_state_dict(model, dtype), path, metadata)


class ControlNetCache:
    """Loaded ControlNets by file (path, size, mtime) and device/dtype; the least recently used goes first."""

    def __init__(self, capacity: int = 2):
        self.capacity = capacity
        self._models: dict[tuple, object] = {}

    def get(self, info: ControlNetInfo, device, dtype, allow_pickle: bool = False):
        st = info.weights.stat()
        key = (str(info.path), st.st_size, st.st_mtime_ns, str(device), dtype)
        model = self._models.pop(key, None)
        if model is None:
            model = load_controlnet(info.path, allow_pickle, dtype).to(device)
        self._models[key] = model
        while len(self._models) > self.capacity:
            self._models.pop(next(iter(self._models)))
        return model
