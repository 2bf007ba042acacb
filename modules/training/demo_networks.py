"""The demo networks of the bundled model, trained with the general trainers and judged through the app's own
generation path: a LoRA that teaches a concept the base model cannot draw and an embedding for a new word.

Concepts: "star" (a new shape), "checkered" (background checks of the background color and black) and
"midnight" (a new word for the black background). Defaults: the LoRA teaches "checkered" (a texture the base
UNet never drew: only changed weights can add it), the embedding "midnight" (an embedding can only steer the
model to what it already draws). A star cannot pass the bundled VAE (its round trips are judged star 0 of 60;
``vae-check`` measures this), and textual inversion did not make the base model draw checks.
``--lora-concept`` / ``--embedding-concept`` choose others.

    python -m modules.training.demo_networks vae-check  # judge the VAE's round trips of the concepts (upper bound)
    python -m modules.training.demo_networks datasets   # runs/demo-networks/<concept>-{lora,embedding}/ (png + txt)
    python -m modules.training.demo_networks lora       # -> models/Lora/demo-<concept>.safetensors
    python -m modules.training.demo_networks embedding  # -> embeddings/<concept>.safetensors
    python -m modules.training.demo_networks eval       # judge both: LoRA weight 1 vs 0, embedding with vs without
    python -m modules.training.demo_networks all        # datasets, lora, embedding, eval

Options: ``--ckpt`` (default the bundled demo model), ``--work`` (datasets, resume state, eval.json),
``--lora-steps`` / ``--embedding-steps``, ``--eval-images``, ``--threads``. Training resumes where it stopped.
Evaluation uses :func:`modules.processing.runner.run_job` on app states over scratch folders that link the
checkpoint and one network each: DPM++ 2M Karras, 20 steps, CFG 7, 64×64, seed = scene index.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from modules.training import shapes_world as world

DEFAULT_CKPT = Path("models/Stable-diffusion/demo-shapes.safetensors")
DEFAULT_WORK = Path("runs/demo-networks")
MIDNIGHT = "midnight"  # a new word for the black background


@dataclass(frozen=True)
class Concept:
    """What a demo network learns: scenes of ``shapes`` on ``pattern`` backgrounds (of color ``background``,
    called ``background_word`` in captions, when given)."""

    shapes: tuple[str, ...]
    pattern: str = "plain"
    background: str | None = None
    background_word: str | None = None

    def scenes(self, count: int, seed: int) -> list[world.ConceptScene]:
        """A fixed list of ``count`` evaluation scenes without jitter."""
        rng = np.random.default_rng([seed, 31])
        return [world.sample_concept_scene(rng, self.shapes, self.pattern, False, self.background)
                for _ in range(count)]

    def caption(self, scene: world.Scene) -> str:
        return world.concept_caption(scene, background_word=self.background_word)


CONCEPTS = {
    "star": Concept((world.STAR,)),
    "checkered": Concept(world.SHAPES, world.CHECKERED),
    MIDNIGHT: Concept(world.SHAPES, background="black", background_word=MIDNIGHT),
}


@dataclass(frozen=True)
class DemoNetworkConfig:
    """Concepts, datasets and training settings of the two demo networks (defaults = the bundled files)."""

    lora_concept: str = "checkered"
    embedding_concept: str = MIDNIGHT
    dataset_size: int = 600
    lora_regularization: float = 0.2
    lora_rank: int = 8
    lora_alpha: float = 8.0
    lora_unet_lr: float = 2e-3
    lora_te_lr: float = 1e-3
    lora_steps: int = 1500
    embedding_vectors: int = 2
    embedding_init_word: str = "pattern"
    embedding_lr: float = 2e-2
    embedding_steps: int = 300
    batch: int = 16
    seed: int = 0

    def lora_path(self) -> Path:
        return Path("models/Lora") / f"demo-{self.lora_concept}.safetensors"

    def embedding_path(self) -> Path:
        return Path("embeddings") / f"{self.embedding_concept}.safetensors"


def concept_present(judgement, concept: str) -> bool:
    """Whether a :func:`~modules.training.judge.judge_concepts` reading shows ``concept``."""
    if concept == "star":
        return judgement.shape == world.STAR
    if concept == MIDNIGHT:
        return judgement.background == "black" and judgement.pattern == "plain"
    return judgement.pattern == world.CHECKERED


def build_datasets(work: Path, cfg: DemoNetworkConfig) -> tuple[Path, Path]:
    """Render (once) the LoRA's dataset (with ordinary scenes as regularization) and the embedding's."""
    folders = []
    for kind, concept, regularization in (("lora", cfg.lora_concept, cfg.lora_regularization),
                                          ("embedding", cfg.embedding_concept, 0.0)):
        folder = work / f"{concept}-{kind}"
        if not (folder / f"{cfg.dataset_size - 1:05d}.txt").exists():
            c = CONCEPTS[concept]
            world.concept_dataset(folder, cfg.dataset_size, c.shapes, c.pattern, cfg.seed, regularization,
                                  background=c.background, background_word=c.background_word)
        folders.append(folder)
    return folders[0], folders[1]


def train_demo_lora(ckpt: Path, work: Path, out: Path, cfg: DemoNetworkConfig, threads: int | None) -> None:
    from modules.training.lora_train import LoraConfig, load_for_training, train_lora

    data, _ = build_datasets(work, cfg)
    lora = LoraConfig(rank=cfg.lora_rank, alpha=cfg.lora_alpha, unet_lr=cfg.lora_unet_lr, te_lr=cfg.lora_te_lr,
                      steps=cfg.lora_steps, batch=cfg.batch, seed=cfg.seed,
                      comment=f"demo LoRA: teaches '{cfg.lora_concept}' to the bundled shapes-world model")
    train_lora(load_for_training(ckpt, threads), data, out, lora, work / f"{out.stem}-state")


def train_demo_embedding(ckpt: Path, work: Path, out: Path, cfg: DemoNetworkConfig, threads: int | None) -> None:
    from modules.training.embedding_train import EmbeddingConfig, train_embedding
    from modules.training.lora_train import load_for_training

    _, data = build_datasets(work, cfg)
    emb = EmbeddingConfig(vectors=cfg.embedding_vectors, init_word=cfg.embedding_init_word, lr=cfg.embedding_lr,
                          steps=cfg.embedding_steps, batch=cfg.batch, seed=cfg.seed)
    train_embedding(load_for_training(ckpt, threads), data, out, emb, work / f"{out.stem}-state")


# --------------------------------------------------------------------------- evaluation

def vae_roundtrip(ckpt: Path, count: int = 60, seed: int = 0) -> dict[str, dict[str, float]]:
    """Judge accuracy on the checkpoint's VAE reconstructions of concept renders: what the networks can reach
    at best (the UNet only ever produces latents this VAE decodes)."""
    import torch

    from modules.training.judge import concept_accuracy
    from modules.training.lora_train import load_for_training

    vae = load_for_training(ckpt).vae.eval()
    out = {}
    for label, concept in {**CONCEPTS, "base shapes": Concept(world.SHAPES)}.items():
        scenes = concept.scenes(count, seed)
        x = torch.from_numpy(np.stack([world.render_concept(s) for s in scenes])).permute(0, 3, 1, 2)
        with torch.no_grad():
            decoded = vae.decode(vae.encode(x.float() / 127.5 - 1).latent_dist.mean).sample
        images = list(((decoded.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
        out[label] = {k: round(v, 3) for k, v in concept_accuracy(images, scenes).items()}
    return out


# --------------------------------------------------------------------------- evaluation through the app

def make_eval_state(root: Path, ckpt: Path, lora: Path | None = None, embedding: Path | None = None,
                    flags: tuple[str, ...] = ()):
    """An app state over ``root`` whose folders link only the given files (the checkpoint loaded); ``flags`` are
    further command-line flags (e.g. ``--precision full``)."""
    from modules.app_state import create_state
    from modules.cmd_args import parse_command_line

    folders = {name: root / name for name in ("models/Stable-diffusion", "models/Lora", "embeddings", "data")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    for path, folder in ((ckpt, "models/Stable-diffusion"), (lora, "models/Lora"), (embedding, "embeddings")):
        if path is not None and not (folders[folder] / path.name).exists():
            (folders[folder] / path.name).symlink_to(path.resolve())
    args = ["--ckpt-dir", str(folders["models/Stable-diffusion"]), "--lora-dir", str(folders["models/Lora"]),
            "--embeddings-dir", str(folders["embeddings"]), "--data-dir", str(folders["data"]),
            "--vae-dir", str(root / "models"), "--device", "cpu", *flags]
    state = create_state(parse_command_line(args).options)
    state.models.load(ckpt.stem)
    return state


def generate(state, prompt: str, seed: int) -> np.ndarray:
    """One 64×64 image as the app makes it (DPM++ 2M Karras, 20 steps, CFG 7)."""
    from modules.processing.params import Txt2ImgParams
    from modules.processing.runner import run_job

    params = Txt2ImgParams(prompt=prompt, seed=seed, steps=20, cfg_scale=7.0, sampler_name="DPM++ 2M",
                           scheduler="Karras", width=64, height=64, do_not_save_samples=True, do_not_save_grid=True)
    return np.asarray(run_job(state, params).images[0].convert("RGB"))


def evaluate(ckpt: Path, lora: Path, lora_concept: str, embedding: Path, embedding_concept: str,
             count: int = 60, seed: int = 0) -> dict:
    """Concept rates (judge_concepts) with each network on and off, and bit-equality of "off" with the base.

    LoRA: full concept captions with ``<lora:name:1>`` and ``<lora:name:0>``; weight 0 is compared with the
    base model (no LoRA in its folder). Embedding: the same captions with and without the embedding file, and
    captions without the word (the embedding present) compared with the base.
    """
    from modules.training.judge import judge_concepts

    with tempfile.TemporaryDirectory() as tmp:
        base = make_eval_state(Path(tmp) / "base", ckpt)
        with_lora = make_eval_state(Path(tmp) / "lora", ckpt, lora=lora)
        with_embedding = make_eval_state(Path(tmp) / "embedding", ckpt, embedding=embedding)
        lora_on = lora_off = lora_equal = 0
        for i, scene in enumerate(CONCEPTS[lora_concept].scenes(count, seed)):
            text = CONCEPTS[lora_concept].caption(scene)
            zero = generate(with_lora, f"{text} <lora:{lora.stem}:0>", i)
            lora_on += concept_present(judge_concepts(generate(with_lora, f"{text} <lora:{lora.stem}:1>", i)),
                                       lora_concept)
            lora_off += concept_present(judge_concepts(zero), lora_concept)
            lora_equal += np.array_equal(zero, generate(base, text, i))
        emb_on = emb_off = emb_equal = 0
        for i, scene in enumerate(CONCEPTS[embedding_concept].scenes(count, seed)):
            text = CONCEPTS[embedding_concept].caption(scene)
            emb_on += concept_present(judge_concepts(generate(with_embedding, text, i)), embedding_concept)
            emb_off += concept_present(judge_concepts(generate(base, text, i)), embedding_concept)
            plain = text.replace(f"{embedding.stem} ", "")  # the word absent: the embedding must change nothing
            emb_equal += np.array_equal(generate(with_embedding, plain, i), generate(base, plain, i))
    return {
        "images": count,
        "lora": {"concept": lora_concept, "rate_weight_1": lora_on / count, "rate_weight_0": lora_off / count,
                 "weight_0_equals_base": lora_equal / count},
        "embedding": {"concept": embedding_concept, "rate_with": emb_on / count, "rate_without": emb_off / count,
                      "unused_equals_base": emb_equal / count},
    }


def main(argv: list[str] | None = None) -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=("vae-check", "datasets", "lora", "embedding", "eval", "all"))
    parser.add_argument("--ckpt", type=Path, default=DEFAULT_CKPT)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    parser.add_argument("--lora-concept", choices=tuple(CONCEPTS), default=DemoNetworkConfig.lora_concept)
    parser.add_argument("--embedding-concept", choices=tuple(CONCEPTS), default=DemoNetworkConfig.embedding_concept)
    parser.add_argument("--lora-out", type=Path, help="default models/Lora/demo-<concept>.safetensors")
    parser.add_argument("--embedding-out", type=Path, help="default embeddings/<concept>.safetensors")
    parser.add_argument("--lora-steps", type=int, default=DemoNetworkConfig.lora_steps)
    parser.add_argument("--embedding-steps", type=int, default=DemoNetworkConfig.embedding_steps)
    parser.add_argument("--eval-images", type=int, default=60)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    cfg = DemoNetworkConfig(lora_concept=args.lora_concept, embedding_concept=args.embedding_concept,
                            lora_steps=args.lora_steps, embedding_steps=args.embedding_steps)
    lora_out, embedding_out = args.lora_out or cfg.lora_path(), args.embedding_out or cfg.embedding_path()
    if embedding_out.stem != cfg.embedding_concept:
        parser.error(f"the embedding file must be named {cfg.embedding_concept}.safetensors (its stem is the word)")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    if args.stage == "vae-check":
        print(json.dumps(vae_roundtrip(args.ckpt, args.eval_images), indent=1))
    if args.stage in ("datasets", "all"):
        print("datasets:", *build_datasets(args.work, cfg), file=sys.stderr)
    if args.stage in ("lora", "all"):
        train_demo_lora(args.ckpt, args.work, lora_out, cfg, args.threads)
    if args.stage in ("embedding", "all"):
        train_demo_embedding(args.ckpt, args.work, embedding_out, cfg, args.threads)
    if args.stage in ("eval", "all"):
        result = evaluate(args.ckpt, lora_out, cfg.lora_concept, embedding_out, cfg.embedding_concept,
                          args.eval_images)
        (args.work / "eval.json").write_text(json.dumps(result, indent=1))
        print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
