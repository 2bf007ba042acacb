"""Textual inversion: learn N token vectors for a new word on any SD1/SD2/SDXL checkpoint; write an A1111 file.

    python -m modules.training.embedding_train --ckpt MODEL.safetensors --data DIR --out embeddings/NAME.safetensors
        [--vectors 2 --init-word pattern --lr 5e-3 --steps 1000 --batch 8 --resolution 512 --seed 0]

The word is the output file's stem (that is how the generation path finds the embedding): captions in ``--data``
must contain it, and wherever its tokens appear the trained vectors replace them, exactly as in generation. The
vectors start as the token embeddings of ``--init-word`` (spread over the N vectors); everything else stays
frozen. SDXL trains one set per text encoder. Loss and schedule as in :mod:`modules.training.lora_train`.
Output: ``emb_params`` [N, width] (SD1/SD2) or ``clip_l`` + ``clip_g`` (SDXL) with metadata; resumable from
``--work-dir``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from modules.training.datasets import CaptionTokenizer, encode_text, scan_folder
from modules.training.lora_train import (
    TrainObserver,
    base_model_metadata,
    batch_indices,
    diffusion_loss,
    load_for_training,
    load_state,
    lr_factor,
    noise_schedule,
    prepare_model,
    save_atomic,
    step_generator,
    training_rows,
    write_safetensors_atomic,
)


@dataclass
class EmbeddingConfig:
    """What to train and how (A1111's defaults where it has them)."""

    vectors: int = 2
    init_word: str = "*"
    lr: float = 5e-3
    steps: int = 1000
    batch: int = 8
    resolution: int | None = None
    warmup: int = 0
    seed: int = 0
    min_snr_gamma: float | None = None
    checkpoint_minutes: float = 5.0
    buckets: bool = False  # aspect-ratio buckets (modules.training.buckets) instead of square crops
    repeats: int = 1  # times each image counts per epoch, on top of a folder's own <repeats>_name
    gradient_checkpointing: bool = False  # recompute UNet activations in the backward pass: less memory, slower


def initial_vectors(model, tokenizer: CaptionTokenizer, word: str, count: int) -> list[torch.Tensor]:
    """Per text encoder, ``count`` vectors copied from the token embeddings of ``word`` (zeros if it has none)."""
    ids = tokenizer.tokenize(word)
    out = []
    for encoder in model.text_encoders:
        table = getattr(encoder, "text_model", encoder).embeddings.token_embedding.weight.detach()
        if ids:
            rows = [ids[k * len(ids) // count] for k in range(count)]
            out.append(table[rows].clone().float())
        else:
            out.append(torch.zeros(count, table.shape[1]))
    return out


def embedding_tensors(model, vectors: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """The A1111 safetensors layout: ``clip_l``/``clip_g`` for two text encoders, else ``emb_params``."""
    if len(vectors) == 2:
        return {"clip_l": vectors[0].detach().float().contiguous(), "clip_g": vectors[1].detach().float().contiguous()}
    return {"emb_params": vectors[0].detach().float().contiguous()}


def _metadata(model, cfg: EmbeddingConfig, name: str, step: int, images: int) -> dict[str, str]:
    base = base_model_metadata(model)
    return {
        "name": name,
        "step": str(step),
        "sd_checkpoint": base.get("ss_sd_model_hash", ""),
        "sd_checkpoint_name": Path(model.source).stem,
        "sd_checkpoint_sha256": base.get("ss_new_sd_model_hash", ""),
        "base_model": model.family.value,
        "vectors": str(cfg.vectors),
        "init_word": cfg.init_word,
        "images": str(images),
        "training.trainer": "modules.training.embedding_train",
        "training.config": json.dumps(asdict(cfg)),
    }


def train_embedding(model, data: str | Path, out: str | Path, cfg: EmbeddingConfig,
                    work_dir: str | Path | None = None, progress: bool = True,
                    observer: TrainObserver | None = None) -> list[torch.Tensor]:
    """Train the embedding named ``Path(out).stem`` for ``model`` and write ``out``.

    Resumes from ``work_dir/state.pt`` when present; ``observer`` as for
    :func:`~modules.training.lora_train.train_lora`. Returns the vectors (one tensor per text encoder).
    Raises ValueError when no caption contains the name.
    """
    from tqdm import tqdm

    observer = observer or TrainObserver()
    out, work_dir = Path(out), Path(work_dir) if work_dir else None
    name = out.stem
    items = scan_folder(data)
    tokenizer = CaptionTokenizer(model, {name: cfg.vectors})
    mentions = sum(1 for item in items if tokenizer([item.caption]).slots)
    if mentions == 0:
        raise ValueError(f"no caption under {data} contains the embedding's name {name!r}")
    if mentions < len(items):
        print(f"warning: {len(items) - mentions} of {len(items)} captions do not contain {name!r}", file=sys.stderr)
    torch.manual_seed(cfg.seed)
    prepare_model(model, cfg.gradient_checkpointing)
    vectors = [torch.nn.Parameter(v) for v in initial_vectors(model, tokenizer, cfg.init_word, cfg.vectors)]
    opt = torch.optim.AdamW(vectors, lr=cfg.lr, weight_decay=0.0)
    step = 0
    state_path = work_dir / "state.pt" if work_dir else None
    if (state := load_state(state_path)) is not None:
        with torch.no_grad():
            for v, saved in zip(vectors, state["vectors"], strict=True):
                v.copy_(saved)
        opt.load_state_dict(state["opt"])
        step = int(state["step"])
        print(f"resumed at step {step}", file=sys.stderr)
    cache, rows, _ = training_rows(model, items, cfg)
    alphas = noise_schedule(model)
    last_save = time.time()

    def save() -> None:
        if state_path:
            save_atomic({"vectors": [v.detach() for v in vectors], "opt": opt.state_dict(), "step": step,
                         "config": json.dumps(asdict(cfg))}, state_path)
        write_safetensors_atomic(embedding_tensors(model, vectors), _metadata(model, cfg, name, step, len(items)),
                                 out)
        observer.on_save(step)

    bar = tqdm(total=cfg.steps, initial=step, desc=f"embedding {name}", mininterval=10, file=sys.stderr,
               disable=not progress)
    losses = []
    while step < cfg.steps:
        if observer.should_stop():
            observer.stopped_at = step
            save()
            break
        index = batch_indices(rows, cfg.batch, cfg.seed, step)
        gen = step_generator(cfg.seed, step)
        latents = cache.sample(index, gen)
        context, pooled = encode_text(model, tokenizer([cache.captions[i] for i in index.tolist()]), {name: vectors})
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_factor(step, cfg.warmup)
        loss = diffusion_loss(model, latents, context, pooled, cache.time_ids[index], alphas, gen, cfg.min_snr_gamma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
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
    if not out.exists():  # resumed after the end
        save()
    print(f"wrote {out} (step {step})", file=sys.stderr)
    return [v.detach() for v in vectors]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, required=True, help="base checkpoint (.safetensors or diffusers folder)")
    parser.add_argument("--data", type=Path, required=True, help="folder of images with .txt captions naming the word")
    parser.add_argument("--out", type=Path, required=True, help="output file; its stem is the word (.safetensors)")
    parser.add_argument("--work-dir", type=Path, help="resume state folder (default runs/train/<out stem>)")
    parser.add_argument("--vectors", type=int, default=EmbeddingConfig.vectors)
    parser.add_argument("--init-word", default=EmbeddingConfig.init_word)
    parser.add_argument("--lr", type=float, default=EmbeddingConfig.lr)
    parser.add_argument("--steps", type=int, default=EmbeddingConfig.steps)
    parser.add_argument("--batch", type=int, default=EmbeddingConfig.batch)
    parser.add_argument("--resolution", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--min-snr-gamma", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-minutes", type=float, default=EmbeddingConfig.checkpoint_minutes)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    cfg = EmbeddingConfig(vectors=args.vectors, init_word=args.init_word, lr=args.lr, steps=args.steps,
                          batch=args.batch, resolution=args.resolution, warmup=args.warmup, seed=args.seed,
                          min_snr_gamma=args.min_snr_gamma, checkpoint_minutes=args.checkpoint_minutes)
    model = load_for_training(args.ckpt, args.threads)
    train_embedding(model, args.data, args.out, cfg, args.work_dir or Path("runs/train") / args.out.stem)


if __name__ == "__main__":
    main()
