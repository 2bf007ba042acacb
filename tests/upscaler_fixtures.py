"""Upscaler model files for tests and benchmarks: random weights in Real-ESRGAN's compact layout (spandrel's
SRVGGNetCompact), and the bundled demo upscaler when it is there."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from modules.cmd_args import REPO_ROOT

DEMO_UPSCALER = REPO_ROOT / "models" / "ESRGAN" / "demo-shapes-4x.safetensors"


def compact_net(num_feat: int = 16, num_conv: int = 4, scale: int = 4, seed: int = 0) -> torch.nn.Module:
    """An SRVGGNetCompact with PyTorch's default random initialisation (its output is the nearest-neighbour
    enlarged input plus a few percent of detail: values stay in range, so tiles and seams show)."""
    from spandrel.architectures.Compact.__arch.SRVGG import SRVGGNetCompact

    torch.manual_seed(seed)
    return SRVGGNetCompact(num_in_ch=3, num_out_ch=3, num_feat=num_feat, num_conv=num_conv, upscale=scale).eval()


def write_compact(path: Path, num_feat: int = 16, num_conv: int = 4, scale: int = 4, seed: int = 0) -> Path:
    """Save :func:`compact_net`'s weights as a safetensors upscaler file at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    weights = compact_net(num_feat, num_conv, scale, seed).state_dict()
    save_file({key: value.contiguous() for key, value in weights.items()}, str(path))
    return path
