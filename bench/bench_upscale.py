"""4× upscale of a 512² image: the app's upscaler path, untiled and in tiles (ESRGAN_tile 192, overlap 8), against
spandrel called directly (``ModelLoader().load_from_file(path)``, then ``model(tensor)``, with the 8-bit image
conversions any caller needs around it), in one run.

Each case runs in its own process: the model is loaded and warmed up on a small image, the peak RSS is reset, then
``--repeats`` 4× upscales are timed (the fastest counts: the others were slowed by other work on the machine) and
the peak RSS read (``VmHWM``; "growth": above the RSS just before). Rounds run the cases in turn, each round
starting with the next case, so a busy machine slows them alike; the median of ``--rounds`` is reported.
Reported: seconds, peak RSS, our overhead ratio (ours untiled / spandrel direct; target ≤ 1.05), and how far the
tiled output is from the untiled one away from the seams (where every tile covering a pixel sees the model's whole
reach) and everywhere.

The model is the bundled demo upscaler (``models/ESRGAN/demo-shapes-4x.safetensors``) when it is there, else a
random-weight SRVGGNetCompact with ``--feat`` features and ``--conv`` convolutions; its size is read from the file.

    python bench/bench_upscale.py [--size 512] [--rounds 3] [--repeats 2] [--threads N] [--model FILE]
                                  [--feat 32] [--conv 12]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CASES = ("spandrel direct", "ours untiled", "ours tiled")
TILE, OVERLAP = 192, 8


def compact_shape(path: Path) -> tuple[int, int, int]:
    """(features, convolutions, scale) of an SRVGGNetCompact file, from its tensor shapes."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as file:
        names = file.keys()
        convs = sorted((k for k in names if k.endswith(".weight") and len(file.get_slice(k).get_shape()) == 4),
                       key=lambda k: int(k.split(".")[1]))
        feat = file.get_slice(convs[0]).get_shape()[0]
        last = file.get_slice(convs[-1]).get_shape()[0]
    return feat, len(convs) - 2, round((last / 3) ** 0.5)


def _reset_peak_rss() -> None:
    """Start the kernel's peak-RSS count (VmHWM) afresh (Linux; elsewhere the process's whole peak is kept)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _rss_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process in MiB; elsewhere than Linux, the peak from getrusage."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(case: str, model_path: Path, image_path: Path, out_path: Path, threads: int, repeats: int) -> dict:
    """One case in this process: warm up, then ``repeats`` timed upscales (the fastest counts); the output is saved
    as .npy (uint8 HWC)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    image = Image.open(image_path).convert("RGB")
    small = image.resize((64, 64))
    target = (image.width * 4, image.height * 4)
    if case == "spandrel direct":
        import spandrel

        model = spandrel.ModelLoader().load_from_file(str(model_path)).eval()

        def upscale(picture):  # what any caller needs around the model call: an 8-bit image in and out
            tensor = torch.from_numpy(np.asarray(picture, np.float32) / 255).permute(2, 0, 1).unsqueeze(0)
            with torch.inference_mode():
                out = model(tensor)
                return out[0].clamp_(0, 1).mul_(255).round_().to(torch.uint8).permute(1, 2, 0).numpy()
    else:
        from modules.upscaling.upscale import Tiling, Upscalers

        upscalers = Upscalers({"ESRGAN": model_path.parent})
        tiling = Tiling(TILE, OVERLAP) if case == "ours tiled" else Tiling(0, 0)

        def upscale(picture):
            return upscalers.upscale(picture, model_path.stem, (picture.width * 4, picture.height * 4), tiling)
    upscale(small)  # loads the model and warms the kernels up
    _reset_peak_rss()
    before = _rss_mb("VmRSS")
    times, cpu_times = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        out = upscale(image)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    seconds = min(times)
    peak = _rss_mb("VmHWM")
    result = np.asarray(out)
    assert result.shape == (target[1], target[0], 3), result.shape
    np.save(out_path, result)
    return {"case": case, "seconds": seconds, "cpu_seconds": min(cpu_times), "peak_rss_mb": peak,
            "growth_mb": peak - before}


def _far_from_seams(length: int, reach: int) -> np.ndarray:
    """Input positions along a side that every tile covering them sees with ``reach`` pixels of context."""
    from modules.upscaling.tiling import tile_starts

    keep = np.ones(length, bool)
    for start in tile_starts(length, TILE, OVERLAP):
        end = min(start + TILE, length)
        if start > 0:
            keep[start:start + reach] = False
        if end < length:
            keep[end - reach:end] = False
    return keep


def _test_image(size: int) -> Image.Image:
    """Smooth colour regions with edges: random colours enlarged bicubically, with a few hard-edged discs."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (size // 32, size // 32, 3), dtype=np.uint8)).resize(
        (size, size), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        (x, y), r = rng.integers(0, size, 2), rng.integers(8, size // 6)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="timed upscales per case and round (fastest counts)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--model", type=Path, default=None, help="an upscaler file (default: the demo's, if there)")
    parser.add_argument("--feat", type=int, default=32, help="random model: features (without a demo file)")
    parser.add_argument("--conv", type=int, default=12, help="random model: convolutions (without a demo file)")
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--image", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.model, args.image, args.out, args.threads, args.repeats)))
        return

    from tests.upscaler_fixtures import DEMO_UPSCALER, write_compact

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = args.model or (DEMO_UPSCALER if DEMO_UPSCALER.exists() else None)
        origin = "file"
        if model is None:
            origin = "random"
            model = write_compact(tmp / "models" / "random-compact-4x.safetensors", args.feat, args.conv)
        feat, conv, scale = compact_shape(model)
        assert scale == 4, f"{model.name} is a {scale}× model; a 4× one is needed"
        image_path = tmp / "input.png"
        _test_image(args.size).save(image_path)
        print(f"model: {model.name} ({origin}; SRVGGNetCompact, {feat} features, {conv} convolutions, 4×), "
              f"input {args.size}², tiles {TILE}/{OVERLAP}, {args.rounds} rounds")
        runs: dict[str, list[dict]] = {case: [] for case in CASES}
        for round_ in range(args.rounds):
            for case in CASES[round_ % 3:] + CASES[:round_ % 3]:
                out = tmp / f"{case.replace(' ', '-')}.npy"
                command = [sys.executable, __file__, "--case", case, "--model", str(model), "--image", str(image_path),
                           "--out", str(out), "--threads", str(args.threads), "--repeats", str(args.repeats)]
                done = subprocess.run(command, capture_output=True, text=True, check=False)
                if done.returncode:
                    raise SystemExit(f"{case} failed:\n{done.stderr}")
                runs[case].append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(f"  round {round_ + 1} {case:16s} {runs[case][-1]['seconds']:7.2f} s")
        summary = {case: {"seconds": statistics.median(r["seconds"] for r in found),
                          "cpu_seconds": statistics.median(r["cpu_seconds"] for r in found),
                          "peak_rss_mb": max(r["peak_rss_mb"] for r in found),
                          "growth_mb": max(r["growth_mb"] for r in found)} for case, found in runs.items()}
        print(f"\n{'case':16s} {'wall s':>7s} {'CPU s':>7s} {'peak RSS MiB':>13s} {'growth MiB':>11s}  (medians)")
        for case, row in summary.items():
            print(f"{case:16s} {row['seconds']:7.2f} {row['cpu_seconds']:7.2f} {row['peak_rss_mb']:13.0f} "
                  f"{row['growth_mb']:11.0f}")
        direct = summary["spandrel direct"]
        ratio, cpu_ratio, tiled_ratio = (summary[case][key] / direct[key] for case, key in (
            ("ours untiled", "seconds"), ("ours untiled", "cpu_seconds"), ("ours tiled", "seconds")))
        print(f"overhead ours untiled / spandrel direct: {ratio:.3f} wall, {cpu_ratio:.3f} CPU (target ≤ 1.05); "
              f"tiled / direct: {tiled_ratio:.3f} wall")

        direct_out, untiled, tiled = (np.load(tmp / f"{c.replace(' ', '-')}.npy").astype(np.int16) for c in CASES)
        print(f"ours untiled vs spandrel direct: max |diff| {np.abs(untiled - direct_out).max()}")
        keep = np.repeat(_far_from_seams(args.size, conv + 2), 4)
        difference = np.abs(tiled - untiled)
        inside = difference[keep][:, keep]
        print(f"tiled vs untiled away from seams ({keep.mean() ** 2:.0%} of pixels): max {inside.max()}, "
              f"mean {inside.mean():.4f}; everywhere: max {difference.max()}, mean {difference.mean():.4f}")
        print(json.dumps({"model": model.name, "origin": origin, "summary": summary, "overhead_untiled": ratio,
                          "overhead_untiled_cpu": cpu_ratio, "overhead_tiled": tiled_ratio,
                          "seam_free_max": int(inside.max()), "all_max": int(difference.max()),
                          "all_mean": float(difference.mean())}))


if __name__ == "__main__":
    main()
