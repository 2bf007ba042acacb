"""Discovery of checkpoints and VAE files on disk, with A1111-style titles, short hashes and detected families.

Only files found by a scan can be selected by name, title or hash: a request can never name an arbitrary path.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..hashing import HashCache
from .safetensors_file import ModelFileError, read_shapes
from .spec import UnknownLayoutError, detect

CHECKPOINT_SUFFIXES = (".safetensors",)
PICKLE_CHECKPOINT_SUFFIXES = (".ckpt",)
VAE_SUFFIXES = (".safetensors",)
PICKLE_VAE_SUFFIXES = (".pt", ".ckpt")


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    root: Path

    @property
    def is_diffusers(self) -> bool:
        return self.path.is_dir()

    @property
    def filename(self) -> str:
        """The path relative to its models folder, as A1111 shows it ("sub/name.safetensors")."""
        return self.path.relative_to(self.root).as_posix()

    @property
    def model_name(self) -> str:
        rel = self.path.relative_to(self.root)
        return (rel if self.is_diffusers else rel.with_suffix("")).as_posix()


class CheckpointCatalog:
    """The checkpoints under the configured folders; ``refresh()`` re-scans."""

    def __init__(self, roots: list[Path], hashes: HashCache, allow_pickle: bool = False, extra: list[Path] = ()):
        self.roots = [Path(r) for r in roots]
        self.extra = [Path(p) for p in extra]  # e.g. --ckpt outside the folders
        self.hashes = hashes
        self.allow_pickle = allow_pickle
        self._items: list[CheckpointInfo] = []
        self._families: dict[tuple, str] = {}
        self.refresh()

    def refresh(self) -> list[CheckpointInfo]:
        suffixes = CHECKPOINT_SUFFIXES + (PICKLE_CHECKPOINT_SUFFIXES if self.allow_pickle else ())
        found: dict[Path, CheckpointInfo] = {}
        for root in self.roots:
            if not root.is_dir():
                continue
            for p in sorted(root.rglob("*")):
                if (p.is_file() and p.suffix.lower() in suffixes and not p.stem.lower().endswith(".vae")
                        and not _inside_diffusers_folder(p, root)):
                    found[p.resolve()] = CheckpointInfo(p, root)
                elif p.is_dir() and (p / "model_index.json").is_file():
                    found[p.resolve()] = CheckpointInfo(p, root)
        for p in self.extra:
            if p.exists() and p.resolve() not in found:
                found[p.resolve()] = CheckpointInfo(p, p.parent)
        self._items = sorted(found.values(), key=lambda i: i.filename.lower())
        return self._items

    def items(self) -> list[CheckpointInfo]:
        return list(self._items)

    def sha256(self, info: CheckpointInfo, compute: bool = True) -> str | None:
        if info.is_diffusers:
            return None
        return self.hashes.get(info.path) if compute else self.hashes.cached(info.path)

    def short_hash(self, info: CheckpointInfo, compute: bool = True) -> str | None:
        full = self.sha256(info, compute)
        return full[:10] if full else None

    def title(self, info: CheckpointInfo, compute_hash: bool = False) -> str:
        h = self.short_hash(info, compute_hash)
        return f"{info.filename} [{h}]" if h else info.filename

    def family(self, info: CheckpointInfo) -> str:
        """Detected family summary from the header only ("SD1", "SDXL inpaint", …), or "unknown: reason"."""
        if info.is_diffusers:
            return "diffusers"
        st = info.path.stat()
        key = (str(info.path), st.st_size, st.st_mtime_ns)
        if key not in self._families:
            try:
                self._families[key] = detect(*read_shapes(info.path, self.allow_pickle)).summary
            except (ModelFileError, UnknownLayoutError) as e:
                self._families[key] = f"unknown: {e}"
        return self._families[key]

    def find(self, query: str) -> CheckpointInfo | None:
        """By title, file name, model name, stem, short or full hash; never by an arbitrary path."""
        q = query.strip()
        if not q:
            return None
        bare = q.rsplit(" [", 1)[0] if q.endswith("]") else q
        for info in self._items:
            if bare in (info.filename, info.model_name, info.path.name, info.path.stem, str(info.path)):
                return info
        for info in self._items:
            full = self.sha256(info, compute=False)
            if full and (q == full or q == full[:10]):
                return info
        return None


def _inside_diffusers_folder(p: Path, root: Path) -> bool:
    return any((parent / "model_index.json").is_file() for parent in p.parents if parent != root and root in parent.parents)


@dataclass(frozen=True)
class VaeInfo:
    path: Path
    root: Path

    @property
    def name(self) -> str:
        return self.path.relative_to(self.root).as_posix()


class VaeCatalog:
    """VAE files under the VAE folder. Choices: "Automatic", "None" or a file name."""

    AUTOMATIC = "Automatic"
    NONE = "None"

    def __init__(self, root: Path, allow_pickle: bool = False):
        self.root = Path(root)
        self.allow_pickle = allow_pickle
        self._items: list[VaeInfo] = []
        self.refresh()

    def refresh(self) -> list[VaeInfo]:
        suffixes = VAE_SUFFIXES + (PICKLE_VAE_SUFFIXES if self.allow_pickle else ())
        self._items = (
            [VaeInfo(p, self.root) for p in sorted(self.root.rglob("*")) if p.is_file() and p.suffix.lower() in suffixes]
            if self.root.is_dir() else []
        )
        return self._items

    def items(self) -> list[VaeInfo]:
        return list(self._items)

    def choices(self) -> list[str]:
        return [self.AUTOMATIC, self.NONE] + [v.name for v in self._items]

    def find(self, name: str) -> VaeInfo | None:
        return next((v for v in self._items if name in (v.name, v.path.name, v.path.stem)), None)

    def automatic_for(self, checkpoint: Path) -> Path | None:
        """A VAE named like the checkpoint: ``<stem>.vae.safetensors`` beside it, or ``<stem>[.vae].*`` in the folder."""
        stem = checkpoint.stem if checkpoint.is_file() else checkpoint.name
        for suffix in VAE_SUFFIXES + (PICKLE_VAE_SUFFIXES if self.allow_pickle else ()):
            beside = checkpoint.with_name(f"{stem}.vae{suffix}")
            if beside.is_file():
                return beside
        for v in self._items:
            if v.path.stem in (stem, f"{stem}.vae"):
                return v.path
        return None
