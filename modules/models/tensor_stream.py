"""Tensors read and written one at a time, so that a job over several checkpoints holds a few tensors, not models.

:class:`TensorReader` reads a safetensors file's tensors at their offsets with plain file reads (no memory map, so
pages already used do not stay in the process's memory); a pickle checkpoint (``--allow-pickle``) is loaded whole.
:func:`write_streamed` writes a safetensors file whose header is known in advance (names, dtypes, shapes), then
each tensor's bytes as it is made.
"""
from __future__ import annotations

import json
import math
import os
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .safetensors_file import PICKLE_SUFFIXES, ModelFileError, load_state_dict, read_header

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


class TensorReader:
    """The tensors of one checkpoint file: names, shapes and dtypes from the header, values on request."""

    def __init__(self, path: str | Path, allow_pickle: bool = False):
        self.path = Path(path)
        self._whole: dict[str, torch.Tensor] | None = None
        self._file = None
        if self.path.suffix.lower() in PICKLE_SUFFIXES:
            self._whole = load_state_dict(self.path, allow_pickle)
            self.metadata: dict[str, str] = {}
            self.shapes = {k: tuple(v.shape) for k, v in self._whole.items()}
            self.dtypes = {k: v.dtype for k, v in self._whole.items()}
            return
        header = read_header(self.path)
        unknown = sorted({e.dtype for e in header.tensors.values()} - DTYPES.keys())
        if unknown:
            raise ModelFileError(f"{self.path.name}: tensors of an unsupported type ({', '.join(unknown)})")
        self.metadata = header.metadata
        self.shapes = header.shapes()
        self.dtypes = {k: DTYPES[e.dtype] for k, e in header.tensors.items()}
        self._entries = header.tensors
        self._offset = header.data_offset
        self._file = open(self.path, "rb")  # noqa: SIM115 - closed by close()

    def get(self, key: str) -> torch.Tensor:
        """The tensor ``key``, read now (a fresh tensor the caller owns)."""
        if self._whole is not None:
            return self._whole[key].clone()
        entry = self._entries[key]
        data = bytearray(entry.end - entry.start)
        if not data:
            return torch.empty(entry.shape, dtype=self.dtypes[key])
        self._file.seek(self._offset + entry.start)
        if self._file.readinto(data) != len(data):
            raise ModelFileError(f"{self.path.name}: {key} is cut short (the file changed while it was read?)")
        return torch.frombuffer(data, dtype=self.dtypes[key]).reshape(entry.shape)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._whole = None


@dataclass(frozen=True)
class PlannedTensor:
    """One tensor of a file to be written: its name, dtype and shape, known before its values are."""

    key: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


def _header(planned: list[PlannedTensor], metadata: dict[str, str]) -> bytes:
    """The length-prefixed JSON header of a safetensors file holding ``planned`` in this order."""
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for t in planned:
        header[t.key] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape),
                         "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as the safetensors library writes it
    return struct.pack("<Q", len(raw)) + raw


def write_streamed(path: Path, planned: list[PlannedTensor], make: Callable[[PlannedTensor], torch.Tensor],
                   metadata: dict[str, str] | None = None, keep_going: Callable[[], bool] = lambda: True) -> bool:
    """Write ``planned`` to ``path`` as a safetensors file, calling ``make`` for each tensor in order.

    The file appears only complete: it is written under a temporary name beside ``path`` and renamed at the end.
    ``keep_going`` is asked before each tensor; False (or an error) removes the temporary file. Whether written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_header(planned, metadata or {}))
            for t in planned:
                if not keep_going():
                    return False
                f.write(_tensor_bytes(make(t), t))
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a model file is shared like any other
        os.replace(tmp, path)
        return True
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _tensor_bytes(tensor: torch.Tensor, planned: PlannedTensor) -> memoryview:
    if tensor.dtype != planned.dtype or tuple(tensor.shape) != planned.shape:
        raise ValueError(f"{planned.key}: made {tensor.dtype} {tuple(tensor.shape)}, planned {planned.dtype} "
                         f"{planned.shape}")
    return memoryview(tensor.contiguous().reshape(-1).view(torch.uint8).numpy())

