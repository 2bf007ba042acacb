"""VAE decode of a large image, untiled and tiled (modules/processing/vae_tiling.py), on an SD1.5-size VAE.

The VAE is diffusers' AutoencoderKL with SD1.5's configuration (block_out_channels 128/256/512/512, 2 layers per
block, 32 norm groups, 4 latent channels) and random weights; the latent is random, ``--size``/8 cells a side
(2048 px: 256² cells). Each variant runs in its own process, one after the other: the VAE is built, the peak RSS
is read (``VmHWM`` from /proc/self/status: "before"), one decode is timed, and the peak RSS is read again
("peak"; "growth" = peak - before). Tiled: ``VaeTiling()``'s defaults (64-cell = 512 px tiles, 16-cell
overlap, statistics from a 48-cell copy). Also reported: how far the tiled image is from the untiled one (both
variants save theirs to a temporary file; same seed, same weights).

    python bench/bench_vae_tiling.py [--size 2048] [--threads 2] [--variants untiled,tiled] [--max-gb 20]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SD15_VAE = {"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "latent_channels": 4,
            "norm_num_groups": 32, "down_block_types": ["DownEncoderBlock2D"] * 4,
            "up_block_types": ["UpDecoderBlock2D"] * 4, "sample_size": 512}


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def run_variant(variant: str, size: int, threads: int, out: Path, max_gb: float) -> dict:
    """One decode in this process; the image is saved to ``out`` (torch.save)."""
    import torch
    from diffusers import AutoencoderKL

    from modules.processing.vae_tiling import tiled_decode

    if max_gb:  # an allocation past this fails in this process instead of waking the OOM killer for the machine
        resource.setrlimit(resource.RLIMIT_AS, (int(max_gb * 2**30),) * 2)
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    vae = AutoencoderKL(**SD15_VAE).eval()
    z = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(1))
    before = peak_rss_mb()
    start = time.perf_counter()
    if variant == "tiled":
        image = tiled_decode(vae, z)
    else:
        with torch.inference_mode():
            image = vae.decode(z).sample
    seconds = time.perf_counter() - start
    peak = peak_rss_mb()
    torch.save(image.half(), out)
    return {"variant": variant, "seconds": round(seconds, 1), "rss_before_mb": round(before),
            "rss_peak_mb": round(peak), "growth_mb": round(peak - before)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", default="untiled,tiled")
    ap.add_argument("--max-gb", type=float, default=0, help="address-space limit of each variant's process")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_variant(args.child, args.size, args.threads, Path(args.out), args.max_gb)))
        return
    import torch

    rows, images = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants.split(","):
            out = Path(tmp) / f"{variant}.pt"
            done = subprocess.run([sys.executable, __file__, "--child", variant, "--out", str(out), "--size",
                                   str(args.size), "--threads", str(args.threads),
                                   "--max-gb", str(args.max_gb)], capture_output=True, text=True, check=False)
            if done.returncode != 0:
                rows.append({"variant": variant, "failed": f"exit {done.returncode}: {done.stderr[-300:]}"})
                continue
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            images[variant] = torch.load(out).float()
            print(json.dumps(rows[-1]), flush=True)
    report = {"size": args.size, "threads": args.threads, "rows": rows}
    if {"tiled", "untiled"} <= images.keys():
        diff = (images["tiled"] - images["untiled"]).abs()
        report["tiled_vs_untiled"] = {"mean_abs": round(diff.mean().item(), 4), "max_abs": round(diff.max().item(), 3),
                                      "untiled_std": round(images["untiled"].std().item(), 4)}
        done = {r["variant"]: r for r in rows}
        report["ratios_tiled_over_untiled"] = {
            "seconds": round(done["tiled"]["seconds"] / done["untiled"]["seconds"], 2),
            "peak_rss": round(done["tiled"]["rss_peak_mb"] / done["untiled"]["rss_peak_mb"], 2),
            "growth": round(done["tiled"]["growth_mb"] / max(1, done["untiled"]["growth_mb"]), 3)}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
