"""Accuracy and speed of bf16 (channels_last) against fp32 on this CPU: the quality guard of the default precision.

For SD1.5-size random weights (the file bench_models.write_sd15 makes) and the bundled demo model: along a 20-step
Euler trajectory on DPM++ 2M's Karras sigmas, computed in fp32, the relative error ‖ε_bf16 − ε_fp32‖ / ‖ε_fp32‖ of
the UNet's output at every step (same inputs; each precision's own text encoder context); then the VAE decode of the
final latents: relative error and largest difference in 8-bit levels; with the seconds of one UNet call and of the
decode in each precision. Targets (issue 18): per-step relative error ≤ 2% on SD1.5-size weights.
Run: python bench/bench_precision.py [--size 256] [--keep DIR] [--steps 20]
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_models import kept_sd15

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "models" / "Stable-diffusion" / "demo-shapes.safetensors"


def relative(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def compare(path: Path, size: int, steps: int) -> None:
    import torch

    from modules.models.loader import LoadOptions, load_checkpoint
    from modules.sampling import DiscreteSchedule, make_sigmas, resolve
    from modules.text_encoding import PromptEncoder

    full = load_checkpoint(path, LoadOptions(dtype=torch.float32, vae_dtype=torch.float32))
    half = load_checkpoint(path, LoadOptions(dtype=torch.bfloat16, vae_dtype=torch.bfloat16, channels_last=True))
    schedule = DiscreteSchedule.from_params()
    sigmas = make_sigmas(resolve("DPM++ 2M", "Karras"), steps, schedule)
    with torch.inference_mode():
        contexts = [PromptEncoder(m).encode("a photo of a cat, highly detailed").context for m in (full, half)]
        x = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(0)) * sigmas[0]
        errors, times = [], {"fp32": [], "bf16": []}
        for sigma, following in itertools.pairwise(sigmas):
            x_in = x / (sigma ** 2 + 1) ** 0.5
            t = schedule.sigma_to_t(sigma.reshape(1))
            outputs = []
            for name, model, context in (("fp32", full, contexts[0]), ("bf16", half, contexts[1])):
                dtype = model.unet.dtype
                start = time.perf_counter()
                outputs.append(model.unet(x_in.to(dtype), t, encoder_hidden_states=context.to(dtype)).sample)
                times[name].append(time.perf_counter() - start)
            errors.append(relative(outputs[1], outputs[0]))
            x = x + outputs[0].float() * (following - sigma)  # Euler in ε form, on the fp32 output
        images = []
        for model in (full, half):
            vae = model.vae
            start = time.perf_counter()
            images.append(vae.decode((x / vae.config.scaling_factor).to(vae.dtype)).sample.float().clamp(-1, 1))
            times[f"decode {vae.dtype}"] = time.perf_counter() - start
    levels = float((images[1] - images[0]).abs().max()) * 127.5
    print(f"{path.name} at {size}²: UNet relative error per step: max {max(errors):.4f}, mean "
          f"{sum(errors) / len(errors):.4f} ({', '.join(f'{e:.3f}' for e in errors)})")
    print(f"  VAE decode: relative error {relative(images[1], images[0]):.4f}, largest difference {levels:.1f}/255")
    unet32, unet16 = (sorted(times[k])[len(times[k]) // 2] for k in ("fp32", "bf16"))
    decodes = [v for k, v in times.items() if k.startswith("decode")]
    print(f"  seconds: UNet call fp32 {unet32:.3f}, bf16 {unet16:.3f} (ratio {unet16 / unet32:.2f}); decode fp32 "
          f"{decodes[0]:.2f}, bf16 {decodes[1]:.2f} (ratio {decodes[1] / decodes[0]:.2f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256, help="image side for the SD1.5-size model (demo: 64)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--keep", type=Path, help="folder for the SD1.5-size checkpoint (reused if present)")
    args = ap.parse_args()
    sd15 = kept_sd15(args.keep, "sd-bench-precision-")
    compare(DEMO, 64, args.steps)
    compare(sd15, args.size, args.steps)


if __name__ == "__main__":
    main()
