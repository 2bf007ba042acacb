"""Command-line flags (A1111 names) and the typed options object built from them.

Standard library only: ``launch.py`` parses the command line before any dependency is installed.
The engine receives a frozen :class:`LaunchOptions` and never reads argparse itself.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

PRECISIONS = ("autocast", "full")
THEMES = ("light", "dark")
UPSCALER_FOLDERS = ("ESRGAN", "RealESRGAN", "SwinIR", "DAT", "HAT")  # A1111's upscaler folders under models/
_DEVICE_PATTERN = re.compile(r"(auto|cpu|mps|cuda(:\d+)?)")


@dataclass(frozen=True)
class ServerOptions:
    """How the web UI / API server is exposed (A1111 flag names)."""

    port: int = 7860
    listen: bool = False
    server_name: str | None = None
    share: bool = False
    gradio_auth: str | None = None
    gradio_auth_path: Path | None = None
    api: bool = False
    api_auth: str | None = None
    api_auth_path: Path | None = None
    nowebui: bool = False
    subpath: str = ""
    tls_keyfile: Path | None = None
    tls_certfile: Path | None = None
    enable_insecure_extension_access: bool = False
    autolaunch: bool = False
    insecure: bool = False
    cors_allow_origins: str | None = None
    theme: str | None = None  # "light" or "dark"; None: the browser's colour scheme
    remote_max_pixels: int | None = None  # width × height cap for clients on other machines; None: no cap
    remote_max_steps: int | None = None  # sampling steps cap for clients on other machines; None: no cap

    @property
    def host(self) -> str:
        """The address to bind: --server-name, else 0.0.0.0 with --listen, else loopback only."""
        return self.server_name or ("0.0.0.0" if self.listen else "127.0.0.1")


@dataclass(frozen=True)
class LaunchOptions:
    """Everything the flags decide, with paths made absolute.

    ``device`` is None for automatic choice (CUDA, then MPS, then CPU), else "cpu", "cuda", "cuda:N" or "mps".
    """

    skip_install: bool
    ckpt: Path | None
    ckpt_dir: Path
    vae_dir: Path
    lora_dir: Path
    embeddings_dir: Path
    data_dir: Path
    no_half: bool
    no_half_vae: bool
    medvram: bool
    lowvram: bool
    precision: str
    device: str | None
    allow_pickle: bool
    server: ServerOptions = ServerOptions()
    controlnet_dir: Path | None = None  # None: models/ControlNet beside the checkpoint folder
    allowed_output_roots: tuple[Path, ...] = ()  # folders besides data_dir that clients may name as output folders
    upscaler_dirs: tuple[tuple[str, Path], ...] = ()  # (A1111 folder kind, folder); missing kinds: beside ckpt_dir

    @property
    def upscaler_folders(self) -> dict[str, Path]:
        """Where each kind of upscaler model is looked for (``ESRGAN``: ``models/ESRGAN``, …)."""
        given = dict(self.upscaler_dirs)
        return {kind: given.get(kind, self.ckpt_dir.parent / kind) for kind in UPSCALER_FOLDERS}

    @property
    def config_path(self) -> Path:
        """``config.json`` holding the user's settings."""
        return self.data_dir / "config.json"

    @property
    def outputs_dir(self) -> Path:
        """Root of saved images (``txt2img-images/``, ``img2img-images/`` … below it)."""
        return self.data_dir / "outputs"

    @property
    def cache_dir(self) -> Path:
        """Caches that can be rebuilt (model hashes and the like)."""
        return self.data_dir / "cache"


@dataclass(frozen=True)
class Invocation:
    """A parsed command line: an optional subcommand with its own arguments, and the options."""

    command: str | None
    command_args: tuple[str, ...]
    options: LaunchOptions


def _device(value: str) -> str:
    if not _DEVICE_PATTERN.fullmatch(value):
        raise argparse.ArgumentTypeError(f"unknown device {value!r}: use auto, cpu, cuda, cuda:N or mps")
    return value


def _existing_file(value: str) -> Path:
    path = Path(value).expanduser()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"file not found: {value}")
    return path.resolve()


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {value!r}")
    return int(value)


def _directory(value: str) -> Path:
    return Path(value).expanduser().resolve()


def _directories(value: str) -> list[Path]:
    return [_directory(part) for part in value.split(",") if part.strip()]


def build_parser(root: Path = REPO_ROOT, commands: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The parser for ``launch.py [flags] [command [command args…]]``.

    Defaults are relative to ``root``; ``commands`` maps each command name to a one-line help.
    """
    root = root.resolve()
    commands = commands or {}
    command_lines = "".join(f"\n  {name:<10} {text}" for name, text in sorted(commands.items()))
    parser = argparse.ArgumentParser(
        prog="launch.py",
        usage="%(prog)s [flags] [COMMAND [ARGS ...]]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Set up the environment (venv, pinned dependencies) and start the Stable Diffusion web UI,\n"
        "or run COMMAND instead. Flags go before COMMAND; the words after it are COMMAND's own.",
        epilog=f"commands:{command_lines or ' none'}\n\n"
        "environment:\n"
        "  COMMANDLINE_ARGS  flags read before the command line's own\n"
        "  TORCH_COMMAND     how torch is installed, run as `python -m $TORCH_COMMAND` when torch is missing\n"
        "                    (default: pip install torch==<tested version>)",
    )
    setup = parser.add_argument_group("set-up")
    setup.add_argument("--skip-install", action="store_true",
                       help="do not check or install dependencies (fast start)")

    paths = parser.add_argument_group("paths")
    paths.add_argument("--ckpt", type=_existing_file, default=None, metavar="PATH",
                       help="checkpoint file to load at start")
    paths.add_argument("--ckpt-dir", type=_directory, default=root / "models" / "Stable-diffusion", metavar="DIR",
                       help="folder searched for checkpoints (default: models/Stable-diffusion)")
    paths.add_argument("--vae-dir", type=_directory, default=root / "models" / "VAE", metavar="DIR",
                       help="folder searched for VAE files (default: models/VAE)")
    paths.add_argument("--lora-dir", type=_directory, default=root / "models" / "Lora", metavar="DIR",
                       help="folder searched for LoRA files (default: models/Lora)")
    for kind in UPSCALER_FOLDERS:
        paths.add_argument(f"--{kind.lower()}-models-path", type=_directory, default=root / "models" / kind,
                           metavar="DIR", dest=f"upscaler_dir_{kind}",
                           help=f"{kind} upscaler models (default: models/{kind}; any architecture spandrel knows)")
    paths.add_argument("--controlnet-dir", type=_directory, default=root / "models" / "ControlNet", metavar="DIR",
                       help="folder searched for ControlNet models (default: models/ControlNet)")
    paths.add_argument("--embeddings-dir", type=_directory, default=root / "embeddings", metavar="DIR",
                       help="folder searched for textual-inversion embeddings (default: embeddings)")
    paths.add_argument("--data-dir", type=_directory, default=root / "data", metavar="DIR",
                       help="folder for settings (config.json), saved images (outputs/) and caches (cache/) "
                       "(default: data)")
    paths.add_argument("--allowed-output-roots", type=_directories, action="extend", default=None,
                       metavar="DIR[,DIR]", help="folders besides the data folder that the Settings tab and API "
                       "clients may choose as output folders (comma-separated; may be repeated)")

    compute = parser.add_argument_group("precision and memory")
    compute.add_argument("--no-half", action="store_true",
                         help="keep the UNet and text encoders in fp32 (slower, for GPUs with broken fp16)")
    compute.add_argument("--no-half-vae", action="store_true",
                         help="keep the VAE in fp32 (avoids black/NaN images from some VAEs)")
    memory = compute.add_mutually_exclusive_group()
    memory.add_argument("--medvram", action="store_true",
                        help="keep only the component in use (text encoder, UNet or VAE) on the GPU")
    memory.add_argument("--lowvram", action="store_true",
                        help="move the model to the GPU module by module (slowest, least memory)")
    compute.add_argument("--precision", choices=PRECISIONS, default="autocast",
                         help="autocast: compute in half precision where safe; full: compute in the weights' dtype "
                         "(default: autocast)")
    compute.add_argument("--device", type=_device, default="auto",
                         help="auto, cpu, cuda, cuda:N or mps (default: auto = CUDA, then MPS, then CPU)")

    safety = parser.add_argument_group("safety")
    safety.add_argument("--allow-pickle", action="store_true",
                        help="allow .ckpt/.pt files (Python pickles; loaded with torch.load(weights_only=True))")

    server = parser.add_argument_group("server")
    server.add_argument("--port", type=int, default=7860, help="port to serve on (default: 7860)")
    server.add_argument("--listen", action="store_true",
                        help="bind 0.0.0.0 so the LAN can connect (needs --gradio-auth/--api-auth, or --insecure)")
    server.add_argument("--server-name", default=None, metavar="HOST", help="address to bind (overrides --listen)")
    server.add_argument("--share", action="store_true", help="create a public Gradio share link (needs internet)")
    server.add_argument("--gradio-auth", default=None, metavar="USER:PASS[,USER:PASS]", help="web UI login(s)")
    server.add_argument("--gradio-auth-path", type=_existing_file, default=None, metavar="FILE",
                        help="file with USER:PASS entries (comma- or line-separated)")
    server.add_argument("--api", action="store_true", help="serve the /sdapi/v1 HTTP API beside the UI")
    server.add_argument("--api-auth", default=None, metavar="USER:PASS[,USER:PASS]", help="HTTP Basic auth for the API")
    server.add_argument("--api-auth-path", type=_existing_file, default=None, metavar="FILE",
                        help="file with USER:PASS entries for the API")
    server.add_argument("--nowebui", action="store_true", help="serve only the API (implies --api)")
    server.add_argument("--subpath", default="", metavar="PATH", help="serve under this URL path, e.g. /sd")
    server.add_argument("--tls-keyfile", type=_existing_file, default=None, metavar="FILE", help="TLS private key")
    server.add_argument("--tls-certfile", type=_existing_file, default=None, metavar="FILE", help="TLS certificate")
    server.add_argument("--enable-insecure-extension-access", action="store_true",
                        help="allow installing extensions from the UI even when not local")
    server.add_argument("--autolaunch", action="store_true", help="open the UI in the system browser at start")
    server.add_argument("--insecure", action="store_true",
                        help="allow --listen/--share without credentials (prints a warning)")
    server.add_argument("--cors-allow-origins", default=None, metavar="ORIGINS",
                        help="comma-separated origins allowed to call the API from a browser (default: none)")
    server.add_argument("--theme", choices=THEMES, default=None,
                        help="open the web UI in this theme (default: the browser's; ?__theme= in the URL overrides "
                        "it)")
    server.add_argument("--remote-max-pixels", type=_positive, default=None, metavar="N",
                        help="refuse jobs over N pixels (width × height, hires fix's target too) from clients on "
                        "other machines (default: no cap)")
    server.add_argument("--remote-max-steps", type=_positive, default=None, metavar="N",
                        help="refuse jobs over N sampling steps from clients on other machines (default: no cap)")

    parser.add_argument("command", nargs="?", default=None, help=argparse.SUPPRESS)
    return parser


def split_at_command(parser: argparse.ArgumentParser, argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``argv`` cut before the command word: (our flags, [command, its words…]).

    The command is the first word that is neither a flag nor a flag's value; what follows it is never read as our
    flags (argparse alone would, and would stop on abbreviations such as pytest's ``--co``).
    """
    takes_value = {s: a.nargs != 0 for a in parser._actions for s in a.option_strings}
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--":
            return list(argv[:i]), list(argv[i + 1:])
        if not word.startswith("-") or word == "-":
            return list(argv[:i]), list(argv[i:])
        known = [word] if word in takes_value else [s for s in takes_value if s.startswith(word)]  # exact or abbreviated
        values = {takes_value[s] for s in known}
        i += 2 if "=" not in word and values == {True} else 1  # unknown or ambiguous flags: argparse reports them
    return list(argv), []


def parse_command_line(
    argv: Sequence[str],
    root: Path = REPO_ROOT,
    commands: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Invocation:
    """Parse ``COMMANDLINE_ARGS`` + ``argv``; exit with a usage message on a bad flag or an unknown command."""
    env = os.environ if environ is None else environ
    commands = commands or {}
    parser = build_parser(root, commands)
    ours, rest = split_at_command(parser, [*shlex.split(env.get("COMMANDLINE_ARGS", "")), *argv])
    ns = parser.parse_args([*ours, *(["--", rest[0]] if rest else [])])
    if ns.command is not None and ns.command not in commands:
        parser.error(f"unknown command {ns.command!r} (commands: {', '.join(sorted(commands)) or 'none'})")
    return Invocation(command=ns.command, command_args=tuple(rest[1:]), options=options_from_namespace(ns))


def options_from_namespace(ns: argparse.Namespace) -> LaunchOptions:
    """The typed options from a namespace made by :func:`build_parser`."""
    return LaunchOptions(
        skip_install=ns.skip_install,
        ckpt=ns.ckpt,
        ckpt_dir=ns.ckpt_dir,
        vae_dir=ns.vae_dir,
        lora_dir=ns.lora_dir,
        embeddings_dir=ns.embeddings_dir,
        data_dir=ns.data_dir,
        no_half=ns.no_half,
        no_half_vae=ns.no_half_vae,
        medvram=ns.medvram,
        lowvram=ns.lowvram,
        precision=ns.precision,
        device=None if ns.device == "auto" else ns.device,
        allow_pickle=ns.allow_pickle,
        controlnet_dir=ns.controlnet_dir,
        allowed_output_roots=tuple(ns.allowed_output_roots or ()),
        upscaler_dirs=tuple((kind, getattr(ns, f"upscaler_dir_{kind}")) for kind in UPSCALER_FOLDERS),
        server=ServerOptions(
            port=ns.port, listen=ns.listen, server_name=ns.server_name, share=ns.share, gradio_auth=ns.gradio_auth,
            gradio_auth_path=ns.gradio_auth_path, api=ns.api or ns.nowebui, api_auth=ns.api_auth,
            api_auth_path=ns.api_auth_path, nowebui=ns.nowebui, subpath=ns.subpath.rstrip("/"),
            tls_keyfile=ns.tls_keyfile, tls_certfile=ns.tls_certfile,
            enable_insecure_extension_access=ns.enable_insecure_extension_access, autolaunch=ns.autolaunch,
            insecure=ns.insecure, cors_allow_origins=ns.cors_allow_origins, theme=ns.theme,
            remote_max_pixels=ns.remote_max_pixels, remote_max_steps=ns.remote_max_steps,
        ),
    )
