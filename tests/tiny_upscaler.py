"""A small Real-ESRGAN Compact upscaler (random weights) whose output is easy to judge: its last layer is scaled
down and biased, so a 4× upscale is the nearest-neighbour upscale plus a small random residual plus a red tint."""
from __future__ import annotations

from pathlib import Path

from safetensors.torch import save_file

from tests.upscaler_fixtures import compact_net

NAME = "tiny-compact-4x"
RED_TINT = 0.1  # added to the red channel (of 1.0): what tells its output from a plain resize


def write(folder: Path, name: str = NAME, seed: int = 0) -> Path:
    """``folder/<name>.safetensors`` (created with the folder; kept when it exists)."""
    path = Path(folder) / f"{name}.safetensors"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    net = compact_net(num_feat=16, num_conv=4, scale=4, seed=seed)
    weights = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    last = f"body.{len(net.body) - 1}"
    weights[f"{last}.weight"] *= 0.01
    bias = weights[f"{last}.bias"].zero_()
    bias[: bias.numel() // 3] = RED_TINT  # pixel shuffle: the first 16 output channels become the red one
    save_file(weights, str(path))
    return path
