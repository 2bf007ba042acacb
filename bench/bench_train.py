"""LoRA training speed through the app's training job (the Train tab's path), each case in a fresh child process:
steps per second and peak RSS, on the bundled demo model at 64² (batch 4, the tab's default) and on an SD1.5-size
random-weight checkpoint at 512² (batch 1, rank 8, UNet only). Samples are off so only training steps are timed;
the first steps (warm-up, the dataset's VAE encoding) are left out of the rate.

Run: python bench/bench_train.py [--sd15-steps 4] [--demo-steps 60] [--keep DIR] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHILD = """
import json, sys, time
from pathlib import Path
from modules.app_state import create_state
from modules.cmd_args import parse_command_line
from modules.training import shapes_world as world
from modules.training.lora_train import LoraConfig
from modules.training.train_job import SampleSettings, TrainParams, submit_training

def hwm_kb():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])

root, ckpt_dir, ckpt, steps, batch, resolution = sys.argv[1:7]
steps, batch, resolution = int(steps), int(batch), int(resolution)
data = Path(root) / "data" / "set"
if not data.exists():
    world.concept_dataset(data, 20, (world.STAR,), seed=0, resolution=resolution)
args = ["--ckpt-dir", ckpt_dir, "--data-dir", str(Path(root) / "data"), "--lora-dir", str(Path(root) / "Lora"),
        "--embeddings-dir", str(Path(root) / "emb"), "--device", "cpu", "--precision", "full"]
state = create_state(parse_command_line(args).options)
state.models.load(ckpt)
cfg = LoraConfig(rank=8, alpha=8, unet_lr=1e-3, steps=steps, batch=batch, resolution=resolution, buckets=True)
job, run = submit_training(state, TrainParams("lora", "bench", folder="set", lora=cfg, sample=SampleSettings(every=0)))
times = []
while not job.done:
    n = len(run.losses)
    if n and (not times or times[-1][0] != n):
        times.append((n, time.perf_counter()))
    time.sleep(0.005)
job.wait()
times.append((len(run.losses), time.perf_counter()))
warm = max(1, steps // 5)
(s0, t0), (s1, t1) = next(t for t in times if t[0] >= warm), times[-1]
print(json.dumps({"steps_per_second": (s1 - s0) / (t1 - t0), "peak_rss_mb": hwm_kb() / 1024, "steps": steps,
                  "batch": batch, "resolution": resolution, "last_loss": run.losses[-1][1]}))
"""


def run_case(root: Path, ckpt_dir: Path, ckpt: str, steps: int, batch: int, resolution: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(root), str(ckpt_dir), ckpt, str(steps), str(batch),
                          str(resolution)], cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--demo-steps", type=int, default=60)
    ap.add_argument("--sd15-steps", type=int, default=4)
    ap.add_argument("--keep", type=Path, help="folder for the SD1.5-size checkpoint (reused)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from bench.bench_models import write_sd15

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        results["demo 64² batch 4"] = run_case(tmp / "demo", REPO / "models" / "Stable-diffusion",
                                               "demo-shapes.safetensors", args.demo_steps, 4, 64)
        ckpt_dir = args.keep or tmp / "sd15"
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        if not (ckpt_dir / "sd15.safetensors").exists():
            write_sd15(ckpt_dir / "sd15.safetensors", 0)
        results["SD1.5-size 512² batch 1"] = run_case(tmp / "sd15-run", ckpt_dir, "sd15.safetensors",
                                                      args.sd15_steps, 1, 512)
    for name, r in results.items():
        print(f"{name}: {r['steps_per_second']:.3f} steps/s ({1 / r['steps_per_second']:.2f} s/step), "
              f"peak RSS {r['peak_rss_mb']:.0f} MB")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
