"""Checkpoint Merger benchmark: peak memory and time of merging two SD1.5-size checkpoints (random fp16 weights,
original layout, ~2 GB each), each measured in a fresh child process.

Reports, for a weighted sum through :func:`modules.models.merge.run_merge` (streamed) and, as the baseline, the same
merge done the usual way (both files loaded whole with ``safetensors.torch.load_file``, merged, ``save_file``): peak
RSS, peak RSS over one model's file size, and the time. The merge's time includes hashing both inputs for the
recipe metadata (cached afterwards); the baseline writes no metadata.
Run: python bench/bench_merge.py [--keep DIR] [--no-baseline]
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

PRELUDE = """
import json, sys, time
from pathlib import Path
import torch
def hwm_kb():  # VmHWM starts anew with the process image (ru_maxrss would carry the parent's over exec)
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
"""

STREAMED = PRELUDE + """
from modules.hashing import HashCache
from modules.models.catalog import CheckpointCatalog, VaeCatalog
from modules.models.merge import MergeParams, run_merge
folder = Path(sys.argv[1])
before = hwm_kb()
start = time.perf_counter()
catalog = CheckpointCatalog([folder], HashCache(folder / "hashes.json"))
result = run_merge(catalog, VaeCatalog(folder / "no-vae"),
                   MergeParams(primary="a", secondary="b", multiplier=0.5, custom_name="streamed"))
print(json.dumps({"seconds": time.perf_counter() - start, "peak_kb": hwm_kb(),
                  "after_imports_kb": before, "output": str(result.path)}))
"""

LOADED_WHOLE = PRELUDE + """
from safetensors.torch import load_file, save_file
folder = Path(sys.argv[1])
before = hwm_kb()
start = time.perf_counter()
a, b = load_file(folder / "a.safetensors"), load_file(folder / "b.safetensors")
out = {k: (v * 0.5 + b[k] * 0.5) if k in b else v for k, v in a.items()}
save_file(out, str(folder / "whole.safetensors"), metadata={"format": "pt"})
print(json.dumps({"seconds": time.perf_counter() - start, "peak_kb": hwm_kb(),
                  "after_imports_kb": before, "output": str(folder / "whole.safetensors")}))
"""


WRITE = "import sys; from pathlib import Path; from bench.bench_models import write_sd15; " \
        "write_sd15(Path(sys.argv[1]), int(sys.argv[2]))"


def measure(code: str, folder: Path) -> dict:
    """Run ``code`` in a fresh Python; its JSON line."""
    done = subprocess.run([sys.executable, "-c", code, str(folder)], cwd=REPO, capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(label: str, numbers: dict, model_bytes: int) -> None:
    peak = numbers["peak_kb"] * 1024
    own = peak - numbers["after_imports_kb"] * 1024
    print(f"{label:>12}: peak RSS {peak / 2**30:.2f} GiB = {peak / model_bytes:.2f}× one model "
          f"({own / 2**30:.2f} GiB = {own / model_bytes:.2f}× above the interpreter with torch imported), "
          f"{numbers['seconds']:.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--keep", type=Path, help="folder to write (and reuse) the two checkpoints in")
    ap.add_argument("--no-baseline", action="store_true", help="skip the load-everything baseline")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for seed, name in enumerate("ab"):
            if not (folder / f"{name}.safetensors").exists():
                # in a child, so that this process stays small
                subprocess.run([sys.executable, "-c", WRITE, str(folder / f"{name}.safetensors"), str(seed)],
                               cwd=REPO, check=True)
        model_bytes = (folder / "a.safetensors").stat().st_size
        print(f"inputs: two SD1.5-size checkpoints of {model_bytes / 2**30:.2f} GiB (fp16)")
        (folder / "hashes.json").unlink(missing_ok=True)  # the inputs are hashed in the measured run
        streamed = measure(STREAMED, folder)
        report("streamed", streamed, model_bytes)
        if not args.no_baseline:
            report("load whole", measure(LOADED_WHOLE, folder), model_bytes)
        for name in ("streamed.safetensors", "whole.safetensors"):
            (folder / name).unlink(missing_ok=True)


if __name__ == "__main__":
    main()
