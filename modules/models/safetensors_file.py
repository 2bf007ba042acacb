"""Reading safetensors files defensively: header validation, shapes without loading, pickle refusal."""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin"}
MAX_HEADER_BYTES = 100 * 1024 * 1024


class ModelFileError(ValueError):
    """A weights file that cannot be used; the message names the file and the reason."""


@dataclass(frozen=True)
class TensorEntry:
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    path: Path
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]
    data_offset: int

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: v.shape for k, v in self.tensors.items()}


def read_header(path: str | Path) -> SafetensorsHeader:
    """Parse and validate a safetensors header: a corrupt header or a truncated file raises ModelFileError."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw_len = f.read(8)
            if len(raw_len) < 8:
                raise ModelFileError(f"{path.name}: not a safetensors file (only {size} bytes)")
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
                raise ModelFileError(f"{path.name}: corrupt safetensors header (declared length {header_len}, file {size} bytes)")
            raw = f.read(header_len)
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read ({e})") from e
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (UnicodeDecodeError, ValueError) as e:
        raise ModelFileError(f"{path.name}: corrupt safetensors header ({e})") from e
    metadata = header.pop("__metadata__", None) or {}
    data_offset = 8 + header_len
    tensors: dict[str, TensorEntry] = {}
    data_end = 0
    try:
        for key, info in header.items():
            start, end = info["data_offsets"]
            tensors[key] = TensorEntry(info["dtype"], tuple(int(d) for d in info["shape"]), int(start), int(end))
            data_end = max(data_end, int(end))
    except (KeyError, TypeError, ValueError) as e:
        raise ModelFileError(f"{path.name}: corrupt safetensors header (bad tensor entry: {e})") from e
    if data_offset + data_end > size:
        missing = data_offset + data_end - size
        raise ModelFileError(f"{path.name}: file is truncated ({missing} bytes missing; an incomplete download?)")
    return SafetensorsHeader(path, tensors, {str(k): str(v) for k, v in metadata.items()}, data_offset)


def check_loadable(path: str | Path, allow_pickle: bool) -> None:
    """Refuse pickle-based weights unless the user opted in with --allow-pickle."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES and not allow_pickle:
        raise ModelFileError(
            f"{path.name}: pickle-based weights ({path.suffix}) can run arbitrary code when loaded and are refused. "
            "Convert the file to .safetensors, or start with --allow-pickle if you trust its source."
        )


def load_state_dict(path: str | Path, allow_pickle: bool = False, prefixes: tuple[str, ...] | None = None) -> dict:
    """Load tensors (memory-mapped safetensors; pickles only with ``allow_pickle`` and ``weights_only=True``).

    ``prefixes`` restricts loading to keys starting with one of them.
    """
    import torch
    from safetensors import safe_open

    path = Path(path)
    check_loadable(path, allow_pickle)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file for the user
            raise ModelFileError(f"{path.name}: cannot load pickle checkpoint ({e})") from e
        sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
        if not isinstance(sd, dict):
            raise ModelFileError(f"{path.name}: no state dict found in pickle checkpoint")
        return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor) and (prefixes is None or k.startswith(prefixes))}
    header = read_header(path)
    keys = [k for k in header.tensors if prefixes is None or k.startswith(prefixes)]
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in keys}
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for damaged data
        raise ModelFileError(f"{path.name}: cannot read tensors ({e})") from e


def read_shapes(path: str | Path, allow_pickle: bool = False) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Key → shape and the metadata, without reading tensor data for safetensors files."""
    path = Path(path)
    check_loadable(path, allow_pickle)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return {k: tuple(v.shape) for k, v in load_state_dict(path, allow_pickle).items()}, {}
    header = read_header(path)
    return header.shapes(), header.metadata
