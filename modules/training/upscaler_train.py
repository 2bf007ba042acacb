"""Train the bundled demo upscaler: a compact VGG-style super-resolution net on shapes-world renders, on CPU.

    python -m modules.training.upscaler_train --out test-artifacts/upscaler-train [--steps 6000] [--threads 1]
    python -m modules.training.upscaler_train --out test-artifacts/upscaler-train
        --export-to models/ESRGAN/demo-shapes-4x.safetensors
    python -m modules.training.upscaler_train --evaluate models/ESRGAN/demo-shapes-4x.safetensors [--images 64]

The network has the key layout of Real-ESRGAN's SRVGGNetCompact, which upscaler loaders (spandrel) recognise:
``body.0`` a 3×3 convolution from RGB, then ``num_conv`` × (PReLU, 3×3 convolution), a PReLU and a last
convolution to ``3·scale²`` channels, all in one ``body`` list; a pixel shuffle makes the image ``scale``× larger
and the nearest-neighbour enlarged input is added, so the body learns only the correction.

Data: shapes-world scenes (jittered) rendered at 128–256 px (multiples of the scale) as the high-resolution
targets; each step takes random crops (flipped and turned by multiples of 90°), and the input is the crop's area
(box) downscale, as ``shapes_world.render`` anti-aliases. A share ``degrade_prob`` of the inputs is degraded like
a generated image: Gaussian blur, Gaussian noise and/or JPEG (see :func:`degrade`). Mean squared error, Adam with
warm-up and cosine decay. (L1, as Real-ESRGAN's PSNR stage uses, stalled at the nearest-neighbour image even after
an MSE start: ~96% of the target pixels are flat, and L1's gradient there has full size for any tiny residual,
drowning the few edge pixels; MSE's vanishes there.) The same command resumes from ``<out>/upscaler_ckpt.pt``,
written every ``--checkpoint-minutes`` with the held-out PSNR in ``<out>/eval.jsonl``. One thread is the default:
on 2 shared cores a step took 0.22 s with one and 0.50 s with two.

Held-out evaluation: scenes from a random stream training never uses, rendered at 64·scale px and area-downscaled
to 64 px (the demo model's size). PSNR is over the whole set (pooled mean squared error of uint8 images).
"""
from __future__ import annotations

import argparse
import io
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from modules.training import shapes_world as world

DEFAULT_OUT = Path("test-artifacts/upscaler-train")
ARCHITECTURE = "ESRGAN/SRVGGNetCompact"
_TRAIN_STREAM, _HELDOUT_STREAM = 41, 97  # numpy seed-sequence keys: training and held-out scenes never overlap


@dataclass
class UpscalerConfig:
    """Network, data and schedule of an upscaler run (defaults = the bundled model)."""

    scale: int = 4
    num_feat: int = 48
    num_conv: int = 12
    seed: int = 0
    steps: int = 6000
    batch: int = 16
    lr: float = 1e-3
    warmup: int = 100
    min_lr_factor: float = 0.02
    pool_size: int = 1500  # rendered high-resolution images, cropped afresh every step
    render_sizes: tuple[int, int] = (128, 256)
    input_crop: int = 32  # low-resolution crop side; the target crop is input_crop · scale
    degrade_prob: float = 0.3
    checkpoint_minutes: float = 5.0
    threads: int = 1


class CompactUpscaler(nn.Module):
    """SRVGGNetCompact-shaped super-resolution net (RGB in [0, 1] → RGB ``scale``× larger, unclamped)."""

    def __init__(self, num_feat: int = 48, num_conv: int = 12, scale: int = 4):
        super().__init__()
        self.scale = scale
        layers: list[nn.Module] = [nn.Conv2d(3, num_feat, 3, padding=1), nn.PReLU(num_feat)]
        for _ in range(num_conv):
            layers += [nn.Conv2d(num_feat, num_feat, 3, padding=1), nn.PReLU(num_feat)]
        layers.append(nn.Conv2d(num_feat, 3 * scale * scale, 3, padding=1))
        self.body = nn.ModuleList(layers)
        self.shuffle = nn.PixelShuffle(scale)
        # He initialisation for PReLU's starting slope keeps the activations' scale through the depth (PyTorch's
        # default shrinks them ~10× over the 13 layers); the last convolution starts small, so the untrained net is
        # close to the nearest-neighbour enlargement.
        for layer in self.body:
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, a=0.25)
                nn.init.zeros_(layer.bias)
        layers[-1].weight.data.mul_(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self.body:
            out = layer(out)
        return self.shuffle(out) + F.interpolate(x, scale_factor=self.scale, mode="nearest")


def shape_of(state: dict[str, torch.Tensor]) -> tuple[int, int, int]:
    """(num_feat, num_conv, scale) of an SRVGGNetCompact state dict."""
    last = max(int(key.split(".")[1]) for key in state if key.startswith("body."))
    out_channels = state[f"body.{last}.weight"].shape[0]
    return state["body.0.weight"].shape[0], (last - 2) // 2, math.isqrt(out_channels // 3)


def load_upscaler(path: str | Path) -> CompactUpscaler:
    """The upscaler in a ``.safetensors`` file, in fp32 and eval mode."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    num_feat, num_conv, scale = shape_of(state)
    model = CompactUpscaler(num_feat, num_conv, scale)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval()


@torch.no_grad()
def upscale(model: CompactUpscaler, image: np.ndarray) -> np.ndarray:
    """Upscale an RGB uint8 (H, W, 3) array with ``model``; the result is rounded to uint8."""
    x = torch.from_numpy(np.array(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    y = model(x)[0].clamp(0, 1).permute(1, 2, 0) * 255.0
    return y.round().to(torch.uint8).numpy()


def downscale(image: np.ndarray, scale: int) -> np.ndarray:
    """Area (box) downscale of an RGB uint8 array whose sides are multiples of ``scale``, rounded to uint8."""
    h, w, c = image.shape
    blocks = image.reshape(h // scale, scale, w // scale, scale, c).astype(np.float32)
    return blocks.mean(axis=(1, 3)).round().astype(np.uint8)


def degrade(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A low-resolution input made a little worse, like a generated image: each of Gaussian blur (σ 0.2–0.8 px),
    Gaussian noise (σ 1–4 of 255) and JPEG (quality 60–95) with probability 1/2, at least one of them."""
    from PIL import Image, ImageFilter

    chosen = rng.random(3) < 0.5
    if not chosen.any():
        chosen[rng.integers(3)] = True
    out = image
    if chosen[0]:
        blurred = Image.fromarray(out).filter(ImageFilter.GaussianBlur(float(rng.uniform(0.2, 0.8))))
        out = np.asarray(blurred)
    if chosen[1]:
        noise = rng.normal(0.0, rng.uniform(1.0, 4.0), out.shape)
        out = (out + noise).clip(0, 255).round().astype(np.uint8)
    if chosen[2]:
        buffer = io.BytesIO()
        Image.fromarray(out).save(buffer, format="JPEG", quality=int(rng.integers(60, 96)))
        out = np.asarray(Image.open(buffer).convert("RGB"))
    return out


def heldout_pairs(count: int, scale: int, size: int = 64, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(input, target) pairs of held-out scenes: renders at ``size · scale`` px and their area downscales."""
    rng = np.random.default_rng([seed, _HELDOUT_STREAM])
    targets = [world.render(world.sample_scene(rng), size * scale) for _ in range(count)]
    return [(downscale(t, scale), t) for t in targets]


def psnr(outputs: list[np.ndarray], targets: list[np.ndarray]) -> float:
    """PSNR in dB of uint8 images against their targets, from the mean squared error over the whole set."""
    errors = [np.mean((o.astype(np.float64) - t.astype(np.float64)) ** 2) for o, t in zip(outputs, targets,
                                                                                           strict=True)]
    return float(10 * np.log10(255.0 ** 2 / np.mean(errors)))


def resize(image: np.ndarray, scale: int, method: str) -> np.ndarray:
    """Pillow's ``method`` ("lanczos", "bicubic") enlargement of an RGB uint8 array by ``scale``."""
    from PIL import Image

    h, w = image.shape[:2]
    resample = {"lanczos": Image.Resampling.LANCZOS, "bicubic": Image.Resampling.BICUBIC}[method]
    return np.asarray(Image.fromarray(image).resize((w * scale, h * scale), resample))


def evaluate(model: CompactUpscaler, pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """PSNR (dB) of the model, Lanczos and bicubic on ``pairs``."""
    targets = [t for _, t in pairs]
    model.eval()
    result = {"model": psnr([upscale(model, x) for x, _ in pairs], targets)}
    for method in ("lanczos", "bicubic"):
        result[method] = psnr([resize(x, model.scale, method) for x, _ in pairs], targets)
    return result


class CropSampler:
    """Training batches: random aligned crops of a pool of jittered renders and their (sometimes degraded)
    area downscales."""

    def __init__(self, cfg: UpscalerConfig):
        rng = np.random.default_rng([cfg.seed, _TRAIN_STREAM])
        low, high = (s // cfg.scale for s in cfg.render_sizes)
        self.cfg = cfg
        self.pool = [world.render(world.sample_scene(rng), int(rng.integers(low, high + 1)) * cfg.scale)
                     for _ in range(cfg.pool_size)]

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) as float NCHW tensors in [0, 1]; the same step always gives the same batch."""
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, _TRAIN_STREAM, step])
        inputs, targets = [], []
        for index in rng.integers(len(self.pool), size=cfg.batch):
            image = self.pool[index]
            side = cfg.input_crop
            top, left = (int(rng.integers(n // cfg.scale - side + 1)) * cfg.scale for n in image.shape[:2])
            crop = image[top:top + side * cfg.scale, left:left + side * cfg.scale]
            crop = np.rot90(crop[:, ::-1] if rng.random() < 0.5 else crop, int(rng.integers(4)))
            small = downscale(np.ascontiguousarray(crop), cfg.scale)
            inputs.append(degrade(small, rng) if rng.random() < cfg.degrade_prob else small)
            targets.append(crop)
        return _as_batch(inputs), _as_batch(targets)


def _as_batch(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _lr_factor(step: int, cfg: UpscalerConfig) -> float:
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(cfg.steps - cfg.warmup, 1))
    return cfg.min_lr_factor + (1 - cfg.min_lr_factor) * 0.5 * (1 + math.cos(math.pi * progress))


def train(cfg: UpscalerConfig, out: Path) -> CompactUpscaler:
    """Train to ``cfg.steps`` (resuming from ``<out>/upscaler_ckpt.pt``), checkpointing every
    ``cfg.checkpoint_minutes`` and at the end; returns the model."""
    torch.manual_seed(cfg.seed)
    model = CompactUpscaler(cfg.num_feat, cfg.num_conv, cfg.scale)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    out.mkdir(parents=True, exist_ok=True)
    ckpt, step = out / "upscaler_ckpt.pt", 0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
        _log(f"resumed at step {step}")
    sampler = CropSampler(cfg)
    heldout = heldout_pairs(16, cfg.scale)
    _log(f"{sum(p.numel() for p in model.parameters()):,} parameters; pool of {len(sampler.pool)} renders")

    def save() -> None:
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "config": asdict(cfg)}, tmp)
        tmp.replace(ckpt)
        scores = evaluate(model, heldout)
        with (out / "eval.jsonl").open("a") as log:
            log.write(json.dumps({"step": step, "time": time.time(), **scores}) + "\n")
        _log(f"checkpoint at step {step}; held-out PSNR {scores}")
        model.train()

    model.train()
    started, first, last_save, running = time.time(), step, time.time(), []
    while step < cfg.steps:
        for group in opt.param_groups:
            group["lr"] = cfg.lr * _lr_factor(step, cfg)
        inputs, targets = sampler.batch(step)
        loss = F.mse_loss(model(inputs), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        running.append(loss.item())
        if step % 50 == 0:
            per_step = (time.time() - started) / (step - first)
            _log(f"step {step} MSE {np.mean(running):.6f} ({per_step:.2f} s/step)")
            running = []
        if time.time() - last_save > cfg.checkpoint_minutes * 60:
            save()
            last_save = time.time()
    save()
    return model


def export(model: CompactUpscaler, path: Path, cfg: UpscalerConfig, step: int) -> Path:
    """Write ``model`` (fp32) as a SRVGGNetCompact ``.safetensors`` file with metadata."""
    from safetensors.torch import save_file

    metadata = {
        "modelspec.title": Path(path).stem,
        "modelspec.architecture": ARCHITECTURE,
        "modelspec.license": "AGPL-3.0-or-later (trained by this project on procedural data)",
        "modelspec.description": (
            f"{cfg.scale}x super-resolution for the demo model's shapes world, trained by "
            f"modules/training/upscaler_train.py for {step} steps on area-downscaled renders "
            f"({cfg.degrade_prob:.0%} also blurred, noised or JPEG-compressed); MSE loss."),
        "upscaler.scale": str(cfg.scale),
        "upscaler.num_feat": str(cfg.num_feat),
        "upscaler.num_conv": str(cfg.num_conv),
        "training.config": json.dumps(asdict(cfg)),
        "training.steps": str(step),
    }
    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items() if k.startswith("body.")}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata)
    return Path(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="checkpoint folder (resumed from)")
    parser.add_argument("--scale", type=int, default=UpscalerConfig.scale, choices=(2, 4))
    parser.add_argument("--num-feat", type=int, default=UpscalerConfig.num_feat)
    parser.add_argument("--num-conv", type=int, default=UpscalerConfig.num_conv)
    parser.add_argument("--steps", type=int, default=UpscalerConfig.steps)
    parser.add_argument("--batch", type=int, default=UpscalerConfig.batch)
    parser.add_argument("--lr", type=float, default=UpscalerConfig.lr)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=UpscalerConfig.threads)
    parser.add_argument("--checkpoint-minutes", type=float, default=UpscalerConfig.checkpoint_minutes)
    parser.add_argument("--export-to", type=Path, default=None, help="only write <out>'s checkpoint to this file")
    parser.add_argument("--evaluate", type=Path, default=None, help="only measure this file's held-out PSNR")
    parser.add_argument("--images", type=int, default=64, help="held-out images for --evaluate")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.evaluate is not None:
        model = load_upscaler(args.evaluate)
        _log(f"{args.evaluate}: PSNR over {args.images} held-out images "
             f"{evaluate(model, heldout_pairs(args.images, model.scale))}")
        return
    cfg = UpscalerConfig(scale=args.scale, num_feat=args.num_feat, num_conv=args.num_conv, seed=args.seed,
                         steps=args.steps, batch=args.batch, lr=args.lr, threads=args.threads,
                         checkpoint_minutes=args.checkpoint_minutes)
    args.out.mkdir(parents=True, exist_ok=True)
    saved = args.out / "config.json"
    if args.export_to is not None:
        cfg = UpscalerConfig(**json.loads(saved.read_text()))
        state = torch.load(args.out / "upscaler_ckpt.pt", weights_only=False)
        model = CompactUpscaler(cfg.num_feat, cfg.num_conv, cfg.scale)
        model.load_state_dict(state["model"])
        _log(f"wrote {export(model, args.export_to, cfg, state['step'])}")
        return
    saved.write_text(json.dumps(asdict(cfg), indent=1))
    train(cfg, args.out)
    _log(f"done: {args.out / 'upscaler_ckpt.pt'}")


if __name__ == "__main__":
    main()
