"""An application state over a folder of tiny checkpoints, for engine-level tests."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from modules.app_state import AppState, create_state
from modules.cmd_args import parse_command_line
from tests import tiny_models


def make_state(root: Path, families: dict[str, str], load: str | None = None, flags: Sequence[str] = ()) -> AppState:
    """``families``: checkpoint stem → tiny family ("sd1", "sd2", …); loads ``load`` (or the first); ``flags`` are
    further command-line flags."""
    ckpt = root / "models" / "Stable-diffusion"
    ckpt.mkdir(parents=True, exist_ok=True)
    for seed, (stem, family) in enumerate(families.items()):
        path = ckpt / f"{stem}.safetensors"
        if not path.exists():
            tiny_models.write(family, path, seed=seed)
    args = ["--ckpt-dir", str(ckpt), "--data-dir", str(root / "data"), "--lora-dir", str(root / "models" / "Lora"),
            "--vae-dir", str(root / "models" / "VAE"), "--embeddings-dir", str(root / "embeddings"),
            "--controlnet-dir", str(root / "models" / "ControlNet"), "--device", "cpu", "--precision", "full", *flags]
    state = create_state(parse_command_line(args).options)
    state.models.load(load or next(iter(families)))
    return state
