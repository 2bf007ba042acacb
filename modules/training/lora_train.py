"""Train a LoRA on any loaded SD1/SD2/SDXL checkpoint from a folder of captioned images; write a kohya file.

    python -m modules.training.lora_train --ckpt MODEL.safetensors --data DIR --out models/Lora/NAME.safetensors
        [--rank 8 --alpha 4 --unet-lr 1e-3 --te-lr 5e-4 --steps 1000 --batch 8 --resolution 512 --seed 0]

The base model stays frozen; low-rank pairs are added (as forward hooks, so module names stay the model's) to
every linear and 1×1 convolution inside the UNet's transformer blocks (attention, feed-forward, proj_in/out) and,
with ``--te-lr``, to the text encoders' attention and MLP linears. Loss: MSE to the noise (eps models) or to v
(v-prediction models, from the checkpoint's spec), uniform timesteps on the model's 1000-step schedule, optional
min-SNR weighting. The same command resumes from ``--work-dir`` (state saved every ``--checkpoint-minutes``, when
the LoRA file is also written). Output: kohya layout (``lora_unet_…``, ``lora_te_…`` / ``lora_te1_…`` /
``lora_te2_…``; ``lora_down`` / ``lora_up`` / ``alpha``; SDXL UNet names in the original LDM naming as kohya
writes them) with kohya's ``ss_*`` metadata.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from modules.training.buckets import bucket_sizes, size_step
from modules.training.datasets import (
    CaptionTokenizer,
    LatentCache,
    bucket_groups,
    encode_images,
    encode_text,
    repeated_indices,
    scan_folder,
    tag_frequency,
)

BASE_MODEL_VERSION = {"SD1": "sd_v1", "SD2": "sd_v2", "SDXL": "sdxl_base_v1-0", "SDXL Refiner": "sdxl_refiner_v1-0"}
_TE_TARGET_PARENTS = (".self_attn.", ".mlp.")


@dataclass
class LoraConfig:
    """What to train and how (defaults suit small datasets on a full-size model)."""

    rank: int = 8
    alpha: float = 4.0
    unet_lr: float = 1e-3
    te_lr: float | None = None  # None: the text encoders get no LoRA
    steps: int = 1000
    batch: int = 8
    resolution: int | None = None  # None: the model's native size
    warmup: int = 20
    seed: int = 0
    max_grad_norm: float = 1.0
    min_snr_gamma: float | None = None
    checkpoint_minutes: float = 5.0
    comment: str = ""
    buckets: bool = False  # aspect-ratio buckets (modules.training.buckets) instead of square crops
    repeats: int = 1  # times each image counts per epoch, on top of a folder's own <repeats>_name
    gradient_checkpointing: bool = False  # recompute UNet activations in the backward pass: less memory, slower


# --------------------------------------------------------------------------- the network

class LoraModule(torch.nn.Module):
    """A low-rank pair for one Linear or Conv2d: output += up(down(input)) · alpha/rank · multiplier.

    For a k×k convolution ``down`` is a k×k convolution with the target's stride and padding and ``up`` a 1×1 one
    (kohya's LoCon layout)."""

    def __init__(self, target: torch.nn.Module, rank: int, alpha: float):
        super().__init__()
        if isinstance(target, torch.nn.Linear):
            self.down = torch.nn.Linear(target.in_features, rank, bias=False)
            self.up = torch.nn.Linear(rank, target.out_features, bias=False)
        else:
            self.down = torch.nn.Conv2d(target.in_channels, rank, target.kernel_size, target.stride, target.padding,
                                        target.dilation, bias=False)
            self.up = torch.nn.Conv2d(rank, target.out_channels, 1, bias=False)
        torch.nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        torch.nn.init.zeros_(self.up.weight)
        self.rank, self.alpha, self.multiplier = rank, float(alpha), 1.0

    def hook(self, _module, inputs, output):
        delta = self.up(self.down(inputs[0].to(self.down.weight.dtype)))  # the pair stays float32 on a half model
        return output + (delta * (self.alpha / self.rank * self.multiplier)).to(output.dtype)


def _is_target(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.Linear) or (
        isinstance(module, torch.nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1)


def lora_targets(model, text_encoders: bool) -> dict[str, tuple[str, torch.nn.Module]]:
    """kohya key stem → (role, module) for every module a LoRA of ``model`` (an SDModel) trains."""
    from modules.models.spec import Family
    from modules.networks.active import ldm_names

    sdxl = model.family in (Family.SDXL, Family.SDXL_REFINER)
    to_ldm = {}
    if sdxl:  # kohya names SDXL UNet modules as the original checkpoint does
        to_ldm = {d[: -len(".weight")]: ldm[: -len(".weight")] for ldm, d in ldm_names(model.unet).items()
                  if d.endswith(".weight")}
    targets = {}
    for name, module in model.unet.named_modules():
        if ".attentions." in f".{name}" and _is_target(module):
            targets["lora_unet_" + to_ldm.get(name, name).replace(".", "_")] = ("unet", module)
    if text_encoders:
        for i, encoder in enumerate(model.text_encoders):
            prefix = f"lora_te{i + 1}_" if sdxl else "lora_te_"
            for name, module in encoder.named_modules():
                if isinstance(module, torch.nn.Linear) and any(p in f".{name}." for p in _TE_TARGET_PARENTS):
                    full = name if name.startswith("text_model.") else "text_model." + name
                    targets[prefix + full.replace(".", "_")] = (f"te{i + 1}", module)
    return targets


class LoraNetwork(torch.nn.Module):
    """The trainable LoRA pairs of a model, attached with forward hooks (``attach``/``detach``)."""

    def __init__(self, targets: dict[str, tuple[str, torch.nn.Module]], rank: int, alpha: float):
        super().__init__()
        self.roles = {stem: role for stem, (role, _) in targets.items()}
        self._targets = {stem: module for stem, (_, module) in targets.items()}
        self.pairs = torch.nn.ModuleDict({stem: LoraModule(m, rank, alpha) for stem, m in self._targets.items()})
        self._handles: list = []

    def attach(self) -> None:
        self.detach()
        self._handles = [module.register_forward_hook(self.pairs[stem].hook) for stem, module in self._targets.items()]

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def set_multiplier(self, value: float) -> None:
        for pair in self.pairs.values():
            pair.multiplier = value

    def parameters_of(self, unet: bool) -> list[torch.nn.Parameter]:
        """The UNet's (``unet``) or the text encoders' LoRA parameters."""
        return [p for stem, pair in self.pairs.items() if (self.roles[stem] == "unet") == unet
                for p in pair.parameters()]

    def kohya_state(self, dtype=torch.float16) -> dict[str, torch.Tensor]:
        """The kohya-layout tensors: ``<stem>.lora_down.weight``, ``.lora_up.weight``, ``.alpha``."""
        state = {}
        for stem, pair in self.pairs.items():
            state[f"{stem}.lora_down.weight"] = pair.down.weight.detach().to(dtype).contiguous()
            state[f"{stem}.lora_up.weight"] = pair.up.weight.detach().to(dtype).contiguous()
            state[f"{stem}.alpha"] = torch.tensor(pair.alpha, dtype=dtype)
        return state


# --------------------------------------------------------------------------- diffusion loss (shared with embeddings)

def model_resolution(model, requested: int | None) -> int:
    """The training resolution: ``requested``, else the model's native size (its metadata's, else its family's)."""
    return int(requested or max(model.native_size))


def noise_schedule(model) -> torch.Tensor:
    """alphas_cumprod of the model's discrete schedule (the one the samplers use for it)."""
    from modules.sampling import DiscreteSchedule, ScheduleParams

    return DiscreteSchedule.from_params(ScheduleParams()).alphas_cumprod


def diffusion_loss(model, latents: torch.Tensor, context: torch.Tensor, pooled: torch.Tensor | None,
                   time_ids: torch.Tensor | None, alphas_cumprod: torch.Tensor, generator: torch.Generator,
                   min_snr_gamma: float | None = None) -> torch.Tensor:
    """Mean denoising loss of a batch: noise at uniform timesteps, MSE to eps or v (the model's prediction)."""
    b = latents.shape[0]
    noise = torch.randn(latents.shape, generator=generator)
    t = torch.randint(0, alphas_cumprod.shape[0], (b,), generator=generator)
    a = alphas_cumprod[t].view(-1, 1, 1, 1)
    noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
    target = a.sqrt() * noise - (1 - a).sqrt() * latents if model.spec.prediction == "v" else noise
    device, dtype = model.unet.device, model.unet.dtype
    added = None
    if model.spec.unet.adm_in_channels is not None:
        added = {"text_embeds": pooled.to(device, dtype), "time_ids": time_ids.to(device, dtype)}
    pred = model.unet(noisy.to(device, dtype), t.to(device), encoder_hidden_states=context.to(device, dtype),
                      added_cond_kwargs=added).sample
    loss = ((pred.float() - target.to(pred.device)) ** 2).mean(dim=(1, 2, 3)).cpu()
    if min_snr_gamma:
        snr = (a / (1 - a)).flatten()
        weight = torch.clamp(snr, max=min_snr_gamma) / (snr + 1 if model.spec.prediction == "v" else snr)
        loss = loss * weight
    return loss.mean()


def prepare_model(model, gradient_checkpointing: bool = False) -> None:
    """Freeze every base weight and switch the modules to training mode (dropout stays off in SD models);
    optionally turn on the UNet's gradient checkpointing (:func:`release_model` undoes both)."""
    for module in (model.unet, model.vae, *model.text_encoders):
        module.requires_grad_(False)
    model.unet.train()
    for encoder in model.text_encoders:
        encoder.train()
    if gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()


def release_model(model) -> None:
    """Back to inference after training in place: evaluation mode, no gradient checkpointing."""
    for module in (model.unet, *model.text_encoders):
        module.eval()
    if model.unet.is_gradient_checkpointing:
        model.unet.disable_gradient_checkpointing()


def lr_factor(step: int, warmup: int) -> float:
    """Linear warm-up to 1, then constant."""
    return min(1.0, (step + 1) / max(1, warmup))


def batch_indices(groups: list[list[int]], batch: int, seed: int, step: int) -> torch.Tensor:
    """The dataset rows of one step: a bucket drawn in proportion to its rows (when there are several), then rows of
    it at random with replacement; reproducible from (seed, step) on resume."""
    rng = np.random.default_rng([seed, 21, step])
    rows = groups[0]
    if len(groups) > 1:
        counts = np.array([len(g) for g in groups], dtype=np.float64)
        rows = groups[int(rng.choice(len(groups), p=counts / counts.sum()))]
    return torch.tensor([rows[i] for i in rng.integers(len(rows), size=batch)])


def training_rows(model, items, cfg) -> tuple[LatentCache, list[list[int]], int]:
    """Encode a dataset for ``cfg`` (buckets, repeats, resolution): the latent cache, the rows grouped by bucket, and
    the resolution."""
    resolution = model_resolution(model, cfg.resolution)
    buckets = bucket_sizes(resolution, size_step(model)) if cfg.buckets else None
    cache = encode_images(model.vae, items, resolution, buckets)
    rows = [r for r in repeated_indices(items) for _ in range(max(1, cfg.repeats))]
    return cache, bucket_groups(rows, cache.sizes), resolution


@dataclass
class TrainObserver:
    """What a caller of a trainer sees and steers: each step's loss, each save, and a stop request.

    ``save_every``: also write the output (and the resume state) every that many steps; ``on_save(step)`` follows
    each write. ``should_stop()`` is asked before every step: a stop writes both and ends the run early.
    """

    on_step: Callable[[int, float], None] = lambda step, loss: None
    on_save: Callable[[int], None] = lambda step: None
    should_stop: Callable[[], bool] = lambda: False
    save_every: int = 0
    stopped_at: int | None = field(default=None, init=False)  # the step a stop request ended the run at

    def save_due(self, step: int, last_save: float, total: int, minutes: float) -> bool:
        return (step == total or (self.save_every > 0 and step % self.save_every == 0)
                or time.time() - last_save > minutes * 60)


def load_state(path: Path | None) -> dict | None:
    """A trainer's resume state (tensors, numbers and strings only), or None when there is none."""
    if path is None or not path.exists():
        return None
    return torch.load(path, weights_only=True)


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def save_atomic(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def write_safetensors_atomic(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.chmod(0o644)
    tmp.replace(path)


def legacy_model_hash(path: Path) -> str:
    """A1111's old 8-digit model hash: sha256 of 64 KiB at offset 1 MiB."""
    with open(path, "rb") as f:
        f.seek(0x100000)
        return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]


def base_model_metadata(model) -> dict[str, str]:
    """Name and hashes of the base checkpoint, as kohya records them."""
    from modules.hashing import sha256_file

    source = Path(model.source)
    meta = {"ss_sd_model_name": source.name, "ss_base_model_version": BASE_MODEL_VERSION[model.family.value],
            "ss_v2": str(model.family.value == "SD2"), "ss_v_parameterization": str(model.spec.prediction == "v")}
    if source.is_file():
        meta["ss_new_sd_model_hash"] = sha256_file(source)
        meta["ss_sd_model_hash"] = legacy_model_hash(source)
    return meta


# --------------------------------------------------------------------------- training

def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _text_inputs(model, tokenizer: CaptionTokenizer, cache: LatentCache, index: torch.Tensor, fixed):
    """(context, pooled, time_ids) of the rows ``index``: from ``fixed`` (pre-encoded) or encoded now."""
    if fixed is not None:
        context, pooled = fixed
        return context[index], None if pooled is None else pooled[index], cache.time_ids[index]
    context, pooled = encode_text(model, tokenizer([cache.captions[i] for i in index.tolist()]))
    return context, pooled, cache.time_ids[index]


def _lora_metadata(model, cfg: LoraConfig, items, out: Path, step: int, started: float, resolution: int) -> dict:
    meta = base_model_metadata(model)
    meta.update({
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(cfg.rank),
        "ss_network_alpha": str(cfg.alpha),
        "ss_network_args": json.dumps({"target": "unet transformer linears + 1x1 proj" + (
            ", text encoder attention/MLP linears" if cfg.te_lr else "")}),
        "ss_output_name": out.stem,
        "ss_resolution": f"({resolution}, {resolution})",
        "ss_steps": str(step),
        "ss_max_train_steps": str(cfg.steps),
        "ss_learning_rate": str(cfg.unet_lr),
        "ss_unet_lr": str(cfg.unet_lr),
        "ss_text_encoder_lr": str(cfg.te_lr or 0.0),
        "ss_network_train_unet_only": str(not cfg.te_lr),
        "ss_batch_size_per_device": str(cfg.batch),
        "ss_num_train_images": str(sum(i.repeats for i in items) * max(1, cfg.repeats)),
        "ss_enable_bucket": str(cfg.buckets),
        "ss_lr_warmup_steps": str(cfg.warmup),
        "ss_lr_scheduler": "constant_with_warmup",
        "ss_optimizer": "torch.optim.AdamW",
        "ss_min_snr_gamma": str(cfg.min_snr_gamma),
        "ss_seed": str(cfg.seed),
        "ss_mixed_precision": "no",
        "ss_training_started_at": str(started),
        "ss_training_finished_at": str(time.time()),
        "ss_training_comment": cfg.comment,
        "ss_tag_frequency": json.dumps(tag_frequency(items)),
        "modelspec.architecture": f"{_architecture(model)}/lora",
        "modelspec.title": out.stem,
        "modelspec.resolution": f"{resolution}x{resolution}",
        "training.trainer": "modules.training.lora_train",
        "training.config": json.dumps(asdict(cfg)),
    })
    return meta


def _architecture(model) -> str:
    return {"SD1": "stable-diffusion-v1", "SD2": "stable-diffusion-v2", "SDXL": "stable-diffusion-xl-v1-base",
            "SDXL Refiner": "stable-diffusion-xl-v1-refiner"}[model.family.value]


def train_lora(model, data: str | Path, out: str | Path, cfg: LoraConfig, work_dir: str | Path | None = None,
               progress: bool = True, observer: TrainObserver | None = None) -> LoraNetwork:
    """Train a LoRA for ``model`` on the captioned images under ``data``; write ``out``.

    The base weights stay frozen in their dtype; the pairs train in float32. Resumes from ``work_dir/state.pt`` when
    present (the same config; more steps may be asked). ``observer`` sees each step and save, and can stop the run
    (the file and the state are written at that step). Returns the trained network, attached to the model
    (``network.detach()`` removes it).
    """
    from tqdm import tqdm

    observer = observer or TrainObserver()
    out, work_dir = Path(out), Path(work_dir) if work_dir else None
    items = scan_folder(data)
    torch.manual_seed(cfg.seed)
    prepare_model(model, cfg.gradient_checkpointing)
    network = LoraNetwork(lora_targets(model, bool(cfg.te_lr)), cfg.rank, cfg.alpha).to(model.unet.device)
    groups = [{"params": network.parameters_of(unet=True), "lr": cfg.unet_lr, "base_lr": cfg.unet_lr}]
    if cfg.te_lr:
        groups.append({"params": network.parameters_of(unet=False), "lr": cfg.te_lr, "base_lr": cfg.te_lr})
    opt = torch.optim.AdamW(groups, weight_decay=0.01)
    step, started = 0, time.time()
    state_path = work_dir / "state.pt" if work_dir else None
    if (state := load_state(state_path)) is not None:
        network.load_state_dict(state["network"])
        opt.load_state_dict(state["opt"])
        step, started = int(state["step"]), float(state["started"])
        _log(f"resumed at step {step}")
    cache, rows, resolution = training_rows(model, items, cfg)
    _log(f"{len(items)} images in {len(rows)} bucket(s), {len(network.pairs)} LoRA modules, "
         f"{sum(p.numel() for p in network.parameters()):,} parameters, resolution {resolution}, {cfg.steps} steps "
         f"of batch {cfg.batch}")
    tokenizer = CaptionTokenizer(model)
    fixed = None
    if not cfg.te_lr:  # frozen text encoders: encode every caption once
        with torch.no_grad():
            fixed = encode_text(model, tokenizer(cache.captions))
    alphas = noise_schedule(model)
    network.attach()
    last_save = time.time()

    def save() -> None:
        if state_path:
            save_atomic({"network": network.state_dict(), "opt": opt.state_dict(), "step": step,
                         "started": started, "config": json.dumps(asdict(cfg))}, state_path)
        write_safetensors_atomic(network.kohya_state(), _lora_metadata(model, cfg, items, out, step, started,
                                                                       resolution), out)
        observer.on_save(step)

    bar = tqdm(total=cfg.steps, initial=step, desc="lora", mininterval=10, file=sys.stderr, disable=not progress)
    losses = []
    while step < cfg.steps:
        if observer.should_stop():
            observer.stopped_at = step
            save()
            break
        index = batch_indices(rows, cfg.batch, cfg.seed, step)
        gen = step_generator(cfg.seed, step)
        latents = cache.sample(index, gen)
        context, pooled, time_ids = _text_inputs(model, tokenizer, cache, index, fixed)
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * lr_factor(step, cfg.warmup)
        loss = diffusion_loss(model, latents, context, pooled, time_ids, alphas, gen, cfg.min_snr_gamma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), cfg.max_grad_norm)
        opt.step()
        step += 1
        losses.append(loss.item())
        observer.on_step(step, losses[-1])
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses):.4f}")
            losses = []
        if observer.save_due(step, last_save, cfg.steps, cfg.checkpoint_minutes):
            save()
            last_save = time.time()
    bar.close()
    if step == cfg.steps and not out.exists():  # resumed after the end: write the file once more
        save()
    _log(f"wrote {out} (step {step})")
    return network


def load_for_training(path: str | Path, threads: int | None = None):
    """Load a checkpoint in float32 for training (the trainers' shared entry point)."""
    from modules.models.loader import LoadOptions, load_checkpoint

    if threads:
        torch.set_num_threads(threads)
    return load_checkpoint(path, LoadOptions(dtype=torch.float32, vae_dtype=torch.float32))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, required=True, help="base checkpoint (.safetensors or diffusers folder)")
    parser.add_argument("--data", type=Path, required=True, help="folder of images with .txt captions")
    parser.add_argument("--out", type=Path, required=True, help="output LoRA file (.safetensors)")
    parser.add_argument("--work-dir", type=Path, help="resume state folder (default runs/train/<out stem>)")
    parser.add_argument("--rank", type=int, default=LoraConfig.rank)
    parser.add_argument("--alpha", type=float, default=LoraConfig.alpha)
    parser.add_argument("--unet-lr", type=float, default=LoraConfig.unet_lr)
    parser.add_argument("--te-lr", type=float, default=None, help="also train text-encoder LoRA at this rate")
    parser.add_argument("--steps", type=int, default=LoraConfig.steps)
    parser.add_argument("--batch", type=int, default=LoraConfig.batch)
    parser.add_argument("--resolution", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=LoraConfig.warmup)
    parser.add_argument("--min-snr-gamma", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-minutes", type=float, default=LoraConfig.checkpoint_minutes)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--gradient-checkpointing", action="store_true", help="less memory, slower steps")
    parser.add_argument("--comment", default="")
    args = parser.parse_args(argv)
    cfg = LoraConfig(rank=args.rank, alpha=args.alpha, unet_lr=args.unet_lr, te_lr=args.te_lr, steps=args.steps,
                     batch=args.batch, resolution=args.resolution, warmup=args.warmup, seed=args.seed,
                     min_snr_gamma=args.min_snr_gamma, checkpoint_minutes=args.checkpoint_minutes,
                     comment=args.comment, gradient_checkpointing=args.gradient_checkpointing)
    model = load_for_training(args.ckpt, args.threads)
    train_lora(model, args.data, args.out, cfg, args.work_dir or Path("runs/train") / args.out.stem)


if __name__ == "__main__":
    main()
