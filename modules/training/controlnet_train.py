"""Train a ControlNet for a loaded checkpoint (frozen UNet, text encoder and VAE) on CPU or GPU.

    python -m modules.training.controlnet_train --out runs/controlnet [--steps 6500] [--batch 16] [--threads 2]
        [--base models/Stable-diffusion/demo-shapes.safetensors] [--data FOLDER]
    python -m modules.training.controlnet_train --out runs/controlnet
        --export-to models/ControlNet/demo-shapes-silhouette.safetensors

The ControlNet starts as ``ControlNetModel.from_unet`` of the base UNet (zero output convolutions, so it begins
as a no-op; the hint encoder's last convolution starts random, see ``zero_hint_output``) and learns the usual
noise-prediction loss through the frozen UNet. The same command resumes from ``<out>/controlnet_ckpt.pt``; every
``--checkpoint-minutes`` (and at the end) it also writes the EMA weights as ``<out>/latest.safetensors`` in the
original ``control_model.`` layout, which ``--export-to`` copies (fp16) with metadata.

A dataset gives ``(condition image, target image)`` pairs (RGB uint8) and captions; targets are VAE-encoded
once into ``<out>/pool.pt``. The built-in shapes dataset renders the shapes world of the demo model with the
shape's silhouette (white on black, drawn from the same scene) as the condition.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from modules.training import shapes_world as world
from modules.training.demo_model import NUM_TRAIN_TIMESTEPS, alphas_cumprod

DEFAULT_BASE = Path("models/Stable-diffusion/demo-shapes.safetensors")
# the silhouette is the demo world drawn white on black: render() gives these two palette values, stretched to 0–255
_SILHOUETTE_LOW, _SILHOUETTE_HIGH = world.COLORS["black"][0], world.COLORS["white"][0]


@dataclass
class ControlNetTrainConfig:
    """Schedule of a ControlNet run (defaults sized for the 64×64 demo model on a CPU)."""

    seed: int = 0
    steps: int = 6500
    batch: int = 16
    lr: float = 5e-4
    # diffusers also zero-initialises the hint encoder's last convolution; with it and the output convolutions both
    # at zero the hint got almost no gradient (after 1,700 steps the residuals did not depend on the hint: change
    # < 1e-3). A random start there keeps the untrained ControlNet a no-op (the output convolutions are still zero).
    zero_hint_output: bool = False
    warmup: int = 100
    ema_decay: float = 0.998
    empty_prob: float = 0.5  # captions dropped entirely, so the control alone must carry the layout
    drop_prob: float = 0.15
    cubic_timesteps: bool = True  # t = (1 − u³)·T as T2I-Adapter trains: more steps where the layout is decided
    resolution: int = 64
    # the hint encoder's stages: narrower at the end than SD's (16, 32, 96, 256), which saves 0.35 M parameters
    # (0.7 MB) for a 64² model whose hints are silhouettes
    embedding_channels: tuple[int, ...] = (16, 32, 64, 64)
    checkpoint_minutes: float = 5.0
    threads: int = 2
    condition: str = "the shape's silhouette, white on black"  # what the condition images show (metadata)


def render_silhouette(scene: world.Scene, resolution: int = 64, supersample: int = 4) -> np.ndarray:
    """The scene's shape as a white-on-black RGB uint8 silhouette (same geometry and anti-aliasing as render)."""
    mono = world.render(replace(scene, color="white", background="black"), resolution, supersample).astype(np.float32)
    scaled = (mono - _SILHOUETTE_LOW) * 255.0 / (_SILHOUETTE_HIGH - _SILHOUETTE_LOW)
    return scaled.clip(0, 255).round().astype(np.uint8)


class ShapesDataset:
    """The demo dataset: every shapes-world scene × ``jitters`` jittered renders; the condition is the shape's
    silhouette; captions are drawn per step with attribute dropout (and ``empty_prob`` empty captions)."""

    def __init__(self, cfg: ControlNetTrainConfig, jitters: int = 3):
        rng = np.random.default_rng([cfg.seed, 21])
        self.scenes = [world.jittered(s, rng) for s in world.all_scenes() for _ in range(jitters)]
        self.cfg = cfg

    def __len__(self) -> int:
        return len(self.scenes)

    def example(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(condition, target) as RGB uint8 arrays at the training resolution."""
        scene, size = self.scenes[i], self.cfg.resolution
        return render_silhouette(scene, size), world.render(scene, size)

    def caption(self, i: int, rng: np.random.Generator) -> str:
        return world.caption(self.scenes[i], rng, self.cfg.drop_prob, self.cfg.empty_prob)


class FolderDataset:
    """``<name>.png`` targets with ``<name>.cond.png`` conditions and optional ``<name>.txt`` captions."""

    def __init__(self, folder: Path, cfg: ControlNetTrainConfig):
        targets = sorted(p for p in Path(folder).glob("*.png") if not p.name.endswith(".cond.png"))
        self.pairs = [(t, t.with_name(t.stem + ".cond.png")) for t in targets
                      if t.with_name(t.stem + ".cond.png").is_file()]
        if not self.pairs:
            raise ValueError(f"{folder}: no <name>.png with <name>.cond.png found")
        self.cfg = cfg

    def __len__(self) -> int:
        return len(self.pairs)

    def _load(self, path: Path) -> np.ndarray:
        from PIL import Image

        size = self.cfg.resolution
        return np.asarray(Image.open(path).convert("RGB").resize((size, size), Image.Resampling.LANCZOS))

    def example(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        target, cond = self.pairs[i]
        return self._load(cond), self._load(target)

    def caption(self, i: int, rng: np.random.Generator) -> str:
        text = self.pairs[i][0].with_suffix(".txt")
        if rng.random() < self.cfg.empty_prob or not text.is_file():
            return ""
        return text.read_text(encoding="utf-8").strip()


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _save_atomic(obj, path: Path) -> None:
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def _lr_factor(step: int, warmup: int) -> float:
    return min(1.0, (step + 1) / max(warmup, 1))


class ControlNetTrainer:
    """A ControlNet learning to steer a frozen base model (an :class:`~modules.models.loader.SDModel`)."""

    def __init__(self, base, cfg: ControlNetTrainConfig, out: Path):
        import torch
        from diffusers import ControlNetModel

        from modules.clip_tokenizer import load_clip_tokenizer

        self.base, self.cfg, self.out = base, cfg, Path(out)
        for module in (base.unet, base.vae, *base.text_encoders):
            module.float().eval().requires_grad_(False)
        torch.manual_seed(cfg.seed)
        self.controlnet = ControlNetModel.from_unet(base.unet,
                                                    conditioning_embedding_out_channels=cfg.embedding_channels)
        if not cfg.zero_hint_output:
            self.controlnet.controlnet_cond_embedding.conv_out.reset_parameters()  # PyTorch's default init
        self.ema = copy.deepcopy(self.controlnet).requires_grad_(False)
        self.opt = torch.optim.AdamW(self.controlnet.parameters(), lr=cfg.lr, weight_decay=0.0)
        self.step = 0
        self.tokenizer = load_clip_tokenizer()
        self.alphas = alphas_cumprod()
        self.scaling = float(base.vae.config.scaling_factor)

    @property
    def checkpoint_path(self) -> Path:
        return self.out / "controlnet_ckpt.pt"

    def resume(self) -> None:
        import torch

        if self.checkpoint_path.exists():
            state = torch.load(self.checkpoint_path, weights_only=False)
            self.controlnet.load_state_dict(state["controlnet"])
            self.ema.load_state_dict(state["ema"])
            self.opt.load_state_dict(state["opt"])
            self.step = state["step"]
            _log(f"resumed at step {self.step}")

    def save(self) -> None:
        _save_atomic({"controlnet": self.controlnet.state_dict(), "ema": self.ema.state_dict(),
                      "opt": self.opt.state_dict(), "step": self.step, "config": asdict(self.cfg)},
                     self.checkpoint_path)
        export(self.ema, self.out / "latest.safetensors", self.cfg, self.step, self.base)

    def _context(self, captions: list[str]):
        ids = self.tokenizer(captions, padding="max_length", max_length=77, truncation=True,
                             return_tensors="pt").input_ids
        return self.base.text_encoders[0](ids).last_hidden_state

    def build_pool(self, dataset) -> dict:
        """Every example's condition (uint8) and VAE posterior (mean, std), encoded once and kept in
        ``<out>/pool.pt`` (the VAE is frozen, so this is most of a step's work done ahead)."""
        import torch

        path = self.out / "pool.pt"
        source = Path(self.base.source).stat()
        base = f"{Path(self.base.source).name}:{source.st_size}:{source.st_mtime_ns}"
        if path.exists():
            pool = torch.load(path, weights_only=False)
            if len(pool["mean"]) == len(dataset) and pool.get("base") == base:
                return pool
        conds, means, stds = [], [], []
        with torch.no_grad():
            for lo in range(0, len(dataset), 64):
                pairs = [dataset.example(i) for i in range(lo, min(lo + 64, len(dataset)))]
                conds.append(torch.from_numpy(np.stack([c for c, _ in pairs])).permute(0, 3, 1, 2).contiguous())
                x = torch.from_numpy(np.stack([t for _, t in pairs])).permute(0, 3, 1, 2).float() / 127.5 - 1.0
                dist = self.base.vae.encode(x).latent_dist
                means.append(dist.mean)
                stds.append(dist.std)
        pool = {"cond": torch.cat(conds), "mean": torch.cat(means), "std": torch.cat(stds), "base": base}
        _save_atomic(pool, path)
        _log(f"pool: {len(dataset)} examples encoded")
        return pool

    def loss(self, pool: dict, dataset):
        """Noise-prediction MSE of the frozen UNet steered by the ControlNet, for this step's random batch."""
        import torch

        rng = np.random.default_rng([self.cfg.seed, 23, self.step])
        gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.step)
        idx = torch.from_numpy(rng.integers(len(dataset), size=self.cfg.batch))
        cond = pool["cond"][idx].float() / 255.0
        with torch.no_grad():
            latents = (pool["mean"][idx] + pool["std"][idx] * torch.randn(pool["mean"][idx].shape, generator=gen))
            latents = latents * self.scaling
            context = self._context([dataset.caption(i, rng) for i in idx.tolist()])
        noise = torch.randn(latents.shape, generator=gen)
        u = torch.rand(len(idx), generator=gen)
        if self.cfg.cubic_timesteps:
            u = 1 - u ** 3
        t = (u * NUM_TRAIN_TIMESTEPS).long().clamp(max=NUM_TRAIN_TIMESTEPS - 1)
        a = self.alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        down, mid = self.controlnet(noisy, t, encoder_hidden_states=context, controlnet_cond=cond, return_dict=False)
        pred = self.base.unet(noisy, t, encoder_hidden_states=context, down_block_additional_residuals=down,
                              mid_block_additional_residual=mid).sample
        return torch.nn.functional.mse_loss(pred, noise)

    def train(self, dataset) -> None:
        """Run to ``cfg.steps`` (resumable), checkpointing every ``cfg.checkpoint_minutes`` and at the end.

        ``dataset``: ``len()``, ``example(i) -> (condition, target)`` RGB uint8 arrays at the training resolution,
        ``caption(i, rng) -> str`` (:class:`ShapesDataset`, :class:`FolderDataset`)."""
        import torch
        from tqdm import tqdm

        cfg = self.cfg
        pool = self.build_pool(dataset)
        self.controlnet.train()
        bar = tqdm(total=cfg.steps, initial=self.step, desc="controlnet", mininterval=30, file=sys.stderr)
        last_save, running, started = time.time(), [], time.time()
        first = self.step
        while self.step < cfg.steps:
            for group in self.opt.param_groups:
                group["lr"] = cfg.lr * _lr_factor(self.step, cfg.warmup)
            loss = self.loss(pool, dataset)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.controlnet.parameters(), 1.0)
            self.opt.step()
            self.step += 1
            with torch.no_grad():
                decay = min(cfg.ema_decay, (1 + self.step) / (10 + self.step))
                torch._foreach_lerp_(list(self.ema.parameters()),
                                     [p.detach() for p in self.controlnet.parameters()], 1.0 - decay)
            running.append(loss.item())
            bar.update(1)
            if self.step % 25 == 0:
                per_step = (time.time() - started) / (self.step - first)
                _log(f"step {self.step} loss {np.mean(running):.4f} ({per_step:.2f} s/step)")
                running = []
            if time.time() - last_save > cfg.checkpoint_minutes * 60 or self.step == cfg.steps:
                self.save()
                last_save = time.time()
        bar.close()
        self.save()


def export(model, path: Path, cfg: ControlNetTrainConfig, step: int, base=None, dtype=None) -> Path:
    """Write ``model`` as an original-layout ControlNet file with training metadata (in ``dtype`` if given)."""
    from modules.controlnet.loader import export_controlnet

    metadata = {
        "modelspec.title": Path(path).stem,
        "modelspec.architecture": "stable-diffusion-v1/controlnet",
        "modelspec.resolution": f"{cfg.resolution}x{cfg.resolution}",
        "modelspec.description": (f"ControlNet trained by modules/training/controlnet_train.py for {step} steps "
                                  f"(condition: {cfg.condition})."),
        "training.config": json.dumps(asdict(cfg)),
        "training.steps": str(step),
    }
    if cfg.condition == ControlNetTrainConfig.condition:  # the demo dataset: procedural data made here
        metadata["modelspec.license"] = "AGPL-3.0-or-later (trained by this project on procedural data)"
    if base is not None:
        metadata["training.base_model"] = Path(base.source).name
    return export_controlnet(model, path, metadata, dtype)


def load_base(path: Path):
    """The base checkpoint in fp32 on the CPU."""
    import torch

    from modules.models.loader import LoadOptions, load_checkpoint

    return load_checkpoint(path, LoadOptions(dtype=torch.float32, vae_dtype=torch.float32))


def main(argv: list[str] | None = None) -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/controlnet"))
    parser.add_argument("--base", type=Path, default=DEFAULT_BASE, help="checkpoint to steer (frozen)")
    parser.add_argument("--data", type=Path, default=None,
                        help="folder of <name>.png + <name>.cond.png (+ <name>.txt); default: the shapes world")
    parser.add_argument("--steps", type=int, default=ControlNetTrainConfig.steps)
    parser.add_argument("--batch", type=int, default=ControlNetTrainConfig.batch)
    parser.add_argument("--lr", type=float, default=ControlNetTrainConfig.lr)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=ControlNetTrainConfig.threads)
    parser.add_argument("--uniform-timesteps", action="store_true", help="sample t uniformly (default: cubic)")
    parser.add_argument("--checkpoint-minutes", type=float, default=ControlNetTrainConfig.checkpoint_minutes)
    parser.add_argument("--export-to", type=Path, default=None,
                        help="only write <out>'s EMA weights to this original-layout fp16 file, with metadata")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = ControlNetTrainConfig(seed=args.seed, steps=args.steps, batch=args.batch, lr=args.lr,
                                threads=args.threads, checkpoint_minutes=args.checkpoint_minutes,
                                cubic_timesteps=not args.uniform_timesteps)
    if args.data:
        cfg = replace(cfg, condition=f"the .cond.png images of {args.data.name}")
    args.out.mkdir(parents=True, exist_ok=True)
    saved = args.out / "config.json"
    if args.export_to is not None and saved.exists():  # describe the run as it was trained
        cfg = ControlNetTrainConfig(**json.loads(saved.read_text()))
    trainer = ControlNetTrainer(load_base(args.base), cfg, args.out)
    trainer.resume()
    if args.export_to is not None:
        _log(f"wrote {export(trainer.ema, args.export_to, cfg, trainer.step, trainer.base, torch.float16)}")
        return
    (args.out / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    dataset = FolderDataset(args.data, cfg) if args.data else ShapesDataset(cfg)
    _log(f"ControlNet: {sum(p.numel() for p in trainer.controlnet.parameters()):,} parameters; "
         f"{cfg.steps} steps of batch {cfg.batch}")
    trainer.train(dataset)
    _log(f"done: {args.out / 'latest.safetensors'}")


if __name__ == "__main__":
    main()
