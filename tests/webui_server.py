"""The real server (``python launch.py --skip-install``) on a free port over tiny checkpoints, for browser tests."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from modules.models import builders, keymap
from modules.models.export import save_safetensors
from tests import tiny_models

REPO = Path(__file__).resolve().parent.parent
CHECKPOINTS = {"tiny-alpha": "sd1", "tiny-beta": "sd1"}
LORA_NAME = "tinylora"
EMBEDDING_NAME = "tinyembed"
VAE_NAME = "tiny-vae.safetensors"
TE_HIDDEN = 32


def write_models(root: Path) -> dict[str, Path]:
    """Two tiny SD1 checkpoints, a VAE, a LoRA for their text encoder and an embedding, in the usual folders."""
    dirs = {name: root / sub for name, sub in (("ckpt", "models/Stable-diffusion"), ("vae", "models/VAE"),
                                                ("lora", "models/Lora"), ("emb", "embeddings"), ("data", "data"))}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    for seed, (stem, family) in enumerate(CHECKPOINTS.items()):
        path = dirs["ckpt"] / f"{stem}.safetensors"
        if not path.exists():
            tiny_models.write(family, path, seed=seed)
    vae_path = dirs["vae"] / VAE_NAME
    if not vae_path.exists():
        _, vae, _, _ = tiny_models.build("sd1", seed=7)
        spec = builders.vae_spec_from_config(vae.config)
        save_safetensors(keymap.export_vae(vae.state_dict(), spec, "first_stage_model."), vae_path)
    gen = torch.Generator().manual_seed(3)
    lora = {}
    for layer in range(2):
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            stem = f"lora_te_text_model_encoder_layers_{layer}_self_attn_{proj}"
            lora[f"{stem}.lora_down.weight"] = torch.randn(4, TE_HIDDEN, generator=gen) * 0.3
            lora[f"{stem}.lora_up.weight"] = torch.randn(TE_HIDDEN, 4, generator=gen) * 0.3
            lora[f"{stem}.alpha"] = torch.tensor(2.0)
    save_file(lora, str(dirs["lora"] / f"{LORA_NAME}.safetensors"))
    save_file({"emb_params": torch.randn(1, TE_HIDDEN, generator=gen)},
              str(dirs["emb"] / f"{EMBEDDING_NAME}.safetensors"))
    return dirs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    url: str
    process: subprocess.Popen
    log_path: Path
    data_dir: Path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def wait_for_http(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    """Until ``url`` answers (any HTTP status); RuntimeError if the process exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with status {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"server did not answer at {url} within {timeout:.0f} s")


def stop_process(process: subprocess.Popen) -> None:
    """Terminate a server process, killing it if it does not exit within 10 s."""
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def launch_args(root: Path, dirs: dict[str, Path], port: int, extra: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, str(REPO / "launch.py"), "--skip-install", "--device", "cpu", "--precision", "full",
            "--port", str(port),
            "--ckpt-dir", str(dirs["ckpt"]), "--vae-dir", str(dirs["vae"]), "--lora-dir", str(dirs["lora"]),
            "--embeddings-dir", str(dirs["emb"]), "--data-dir", str(dirs["data"]), *extra]


@contextmanager
def running_server(root: Path, extra: tuple[str, ...] = (), timeout: float = 120, data_files: dict | None = None,
                   commandline_args: str = ""):
    """Start the server process, wait for HTTP on "/", yield it, stop it. ``data_files`` (name -> text) are written
    into the data folder first (e.g. ui-config.json); ``commandline_args`` is the COMMANDLINE_ARGS it sees."""
    dirs = write_models(root)
    for name, text in (data_files or {}).items():
        (dirs["data"] / name).parent.mkdir(parents=True, exist_ok=True)
        (dirs["data"] / name).write_text(text, encoding="utf-8")
    port = free_port()
    log_path = root / f"server-{port}.log"
    env = {**os.environ, "COMMANDLINE_ARGS": commandline_args, "GRADIO_ANALYTICS_ENABLED": "False",
           "OMP_NUM_THREADS": "1", "NO_PROXY": "127.0.0.1,localhost"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(launch_args(root, dirs, port, extra), cwd=REPO, stdout=log,
                                   stderr=subprocess.STDOUT, env=env)
    server = ServerProcess(f"http://127.0.0.1:{port}", process, log_path, dirs["data"])
    try:
        wait_for_http(server.url + "/", process, timeout)
        yield server
    except RuntimeError as e:
        raise RuntimeError(f"{e}\n--- server log ---\n{server.log()[-4000:]}") from None
    finally:
        stop_process(process)
