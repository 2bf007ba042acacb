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
class CompatFlag:
    """An A1111 1.10 flag accepted so that its command lines start, with why it changes nothing here."""

    flag: str
    reason: str
    metavar: str | None = None  # the value it takes; None: a switch
    nargs: str | None = None  # "+" for one or more values


_ATTENTION = "has no effect here: PyTorch's scaled-dot-product attention is always used"
_LAUNCHER = "has no effect here: an A1111 launcher step this launcher does not have"
_A1111_NOOP = "has no effect (it does nothing in A1111 either)"
_NO_MODEL = "has no effect here: that kind of model is not supported"
_NO_FEATURE = "has no effect here: the feature it configures does not exist in this web UI"
_DATA_FOLDER = "has no effect here: that file is kept in the data folder (--data-dir)"
_EXTENSIONS = "has no effect here: turn extensions off in the Extensions tab, or all with --disable-all-extensions"

# A1111 1.10's flags that this project accepts without acting on them (its modules/cmd_args.py, with the flags
# its paths module and built-in extensions add).
COMPAT_FLAGS: tuple[CompatFlag, ...] = (
    CompatFlag("-f", "has no effect here: running as root is not refused"),
    CompatFlag("--update-all-extensions", _LAUNCHER),
    CompatFlag("--skip-python-version-check", _LAUNCHER),
    CompatFlag("--skip-torch-cuda-test", "has no effect here: the CUDA check happens only with --device cuda"),
    CompatFlag("--reinstall-xformers", "has no effect here: xformers is not used"),
    CompatFlag("--reinstall-torch", "has no effect here: torch is reinstalled when its version differs from the "
               "tested one (or set TORCH_COMMAND)"),
    CompatFlag("--update-check", _LAUNCHER),
    CompatFlag("--test-server", _LAUNCHER),
    CompatFlag("--log-startup", _LAUNCHER),
    CompatFlag("--dump-sysinfo", _LAUNCHER),
    CompatFlag("--loglevel", "has no effect here: the log level is fixed", "LEVEL"),
    CompatFlag("--do-not-download-clip", "has no effect here: nothing is ever downloaded"),
    CompatFlag("--no-download-sd-model", "has no effect here: nothing is ever downloaded (the demo model ships)"),
    CompatFlag("--config", "has no effect here: the model's architecture is read from its tensor shapes", "PATH"),
    CompatFlag("--gfpgan-dir", _NO_MODEL, "DIR"),
    CompatFlag("--gfpgan-model", _NO_MODEL, "NAME"),
    CompatFlag("--gfpgan-models-path", _NO_MODEL, "DIR"),
    CompatFlag("--codeformer-models-path", _NO_MODEL, "DIR"),
    CompatFlag("--bsrgan-models-path", _NO_MODEL, "DIR"),
    CompatFlag("--ldsr-models-path", _NO_MODEL, "DIR"),
    CompatFlag("--clip-models-path", _NO_MODEL, "DIR"),
    CompatFlag("--hypernetwork-dir", _NO_MODEL, "DIR"),
    CompatFlag("--lyco-dir-backcompat", "has no effect here: LyCORIS files go in the --lora-dir folder", "DIR"),
    CompatFlag("--textual-inversion-templates-dir", _NO_FEATURE, "DIR"),
    CompatFlag("--localizations-dir", _NO_FEATURE, "DIR"),
    CompatFlag("--no-progressbar-hiding", _A1111_NOOP),
    CompatFlag("--max-batch-count", "has no effect here: the setting limit_images_per_request caps a request",
               "N"),
    CompatFlag("--allow-code", _NO_FEATURE),
    CompatFlag("--lowram", "has no effect here: safetensors files are read through a memory map"),
    CompatFlag("--always-batch-cond-uncond", _A1111_NOOP),
    CompatFlag("--unload-gfpgan", _A1111_NOOP),
    CompatFlag("--upcast-sampling", "has no effect here: use --no-half (or --precision full) to compute in fp32"),
    CompatFlag("--ngrok", "has no effect here: ngrok tunnels are not supported (see --share)", "TOKEN"),
    CompatFlag("--ngrok-region", _A1111_NOOP, "REGION"),
    CompatFlag("--ngrok-options", "has no effect here: ngrok tunnels are not supported (see --share)", "JSON"),
    CompatFlag("--xformers", _ATTENTION),
    CompatFlag("--force-enable-xformers", _ATTENTION),
    CompatFlag("--xformers-flash-attention", _ATTENTION),
    CompatFlag("--deepdanbooru", _A1111_NOOP),
    CompatFlag("--opt-split-attention", _ATTENTION),
    CompatFlag("--opt-sub-quad-attention", _ATTENTION),
    CompatFlag("--sub-quad-q-chunk-size", _ATTENTION, "N"),
    CompatFlag("--sub-quad-kv-chunk-size", _ATTENTION, "N"),
    CompatFlag("--sub-quad-chunk-threshold", _ATTENTION, "PERCENT"),
    CompatFlag("--opt-split-attention-invokeai", _ATTENTION),
    CompatFlag("--opt-split-attention-v1", _ATTENTION),
    CompatFlag("--opt-sdp-attention", "has no effect here: it is what is used anyway"),
    CompatFlag("--opt-sdp-no-mem-attention", _ATTENTION),
    CompatFlag("--disable-opt-split-attention", _ATTENTION),
    CompatFlag("--opt-channelslast", "has no effect here: the default memory layout is used"),
    CompatFlag("--disable-nan-check", "has no effect here: a VAE decode that gives NaN is retried in fp32"),
    CompatFlag("--use-ipex", "has no effect here: Intel XPUs are not supported (--device picks the device)"),
    CompatFlag("--disable-model-loading-ram-optimization", "has no effect here: models load the same way always"),
    CompatFlag("--show-negative-prompt", _A1111_NOOP),
    CompatFlag("--ui-config-file", _DATA_FOLDER, "PATH"),
    CompatFlag("--hide-ui-dir-config", "has no effect here: clients may only choose output folders inside the data "
               "folder or --allowed-output-roots"),
    CompatFlag("--freeze-settings", _NO_FEATURE),
    CompatFlag("--freeze-settings-in-sections", _NO_FEATURE, "SECTIONS"),
    CompatFlag("--freeze-specific-settings", _NO_FEATURE, "NAMES"),
    CompatFlag("--gradio-debug", _NO_FEATURE),
    CompatFlag("--gradio-img2img-tool", _A1111_NOOP, "TOOL"),
    CompatFlag("--gradio-inpaint-tool", _A1111_NOOP, "TOOL"),
    CompatFlag("--gradio-allowed-path", "has no effect here: the UI serves only the images it made", "PATH"),
    CompatFlag("--use-textbox-seed", _NO_FEATURE),
    CompatFlag("--disable-console-progressbars", _NO_FEATURE),
    CompatFlag("--enable-console-prompts", _A1111_NOOP),
    CompatFlag("--vae-path", "has no effect here: choose the VAE with the sd_vae setting (files in --vae-dir)",
               "PATH"),
    CompatFlag("--disable-safe-unpickle", "has no effect here: pickles load only with --allow-pickle, and then "
               "always with torch.load(weights_only=True)"),
    CompatFlag("--api-log", _NO_FEATURE),
    CompatFlag("--ui-debug-mode", _NO_FEATURE),
    CompatFlag("--administrator", _NO_FEATURE),
    CompatFlag("--cors-allow-origins-regex", "has no effect here: list the origins with --cors-allow-origins",
               "REGEX"),
    CompatFlag("--disable-tls-verify", _NO_FEATURE),
    CompatFlag("--gradio-queue", _A1111_NOOP),
    CompatFlag("--no-gradio-queue", "has no effect here: the Gradio queue is always used"),
    CompatFlag("--skip-version-check", _LAUNCHER),
    CompatFlag("--no-hashing", "has no effect here: hashes are computed once and cached in the data folder"),
    CompatFlag("--add-stop-route", _A1111_NOOP),
    CompatFlag("--api-server-stop", _NO_FEATURE),
    CompatFlag("--disable-extra-extensions", _EXTENSIONS),
    CompatFlag("--skip-load-model-at-start", "has no effect here: the model loads in the background at start"),
    CompatFlag("--unix-filenames-sanitization", "has no effect here: file names are NNNNN-SEED, never the prompt"),
    CompatFlag("--filenames-max-length", "has no effect here: file names are NNNNN-SEED, never the prompt", "N"),
    CompatFlag("--no-prompt-history", "has no effect here: no params.txt is written"),
)


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
    timeout_keep_alive: int = 5  # seconds an idle HTTP connection stays open (uvicorn's; A1111's flag)

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
    settings_file: Path | None = None  # --ui-settings-file; None: config.json in the data folder
    styles_file: Path | None = None  # --styles-file; None: styles.csv in the data folder
    disable_all_extensions: bool = False  # --disable-all-extensions: load none of extensions/
    medvram_sdxl: bool = False  # --medvram only while an SDXL model is loaded
    compat_notes: tuple[str, ...] = ()  # one line per given A1111 flag that has no effect here (logged at start)
    workers: int | None = None  # --workers: generation workers on Ray (None: jobs run in the app's process)
    ray_address: str | None = None  # --ray-address: the Ray cluster to join (None: a local one with --workers)
    compile: bool = False  # --compile: torch.compile the UNet (modules/models/compile.py)

    @property
    def uses_workers(self) -> bool:
        """Whether generation runs on Ray workers (``--workers`` or ``--ray-address``)."""
        return self.workers is not None or self.ray_address is not None

    @property
    def upscaler_folders(self) -> dict[str, Path]:
        """Where each kind of upscaler model is looked for (``ESRGAN``: ``models/ESRGAN``, …)."""
        given = dict(self.upscaler_dirs)
        return {kind: given.get(kind, self.ckpt_dir.parent / kind) for kind in UPSCALER_FOLDERS}

    @property
    def config_path(self) -> Path:
        """``config.json`` holding the user's settings (``--ui-settings-file`` names another file)."""
        return self.settings_file or self.data_dir / "config.json"

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


def _device_id(value: str) -> str:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected a GPU number, got {value!r}")
    return value


def _compat_dest(flag: CompatFlag) -> str:
    return "compat_" + flag.flag.lstrip("-").replace("-", "_")


def compat_notes(ns: argparse.Namespace) -> tuple[str, ...]:
    """One line per A1111 flag in ``ns`` that was given but has no effect here ("--xformers: has no effect …")."""
    notes = [f"{flag.flag}: {flag.reason}" for flag in COMPAT_FLAGS if getattr(ns, _compat_dest(flag)) not in
             (None, False)]
    ignored = [m for m in ns.use_cpu if m not in ("all", "sd")]
    if ignored:
        notes.append(f"--use-cpu {' '.join(ignored)}: has no effect here: every part of the model runs on one "
                     "device ('all' or 'sd' means --device cpu)")
    return tuple(notes)


def _chosen_device(ns: argparse.Namespace) -> str | None:
    """--device, else A1111's --use-cpu all/sd or --device-id N; None for automatic choice."""
    if ns.device != "auto":
        return ns.device
    if {"all", "sd"} & set(ns.use_cpu):
        return "cpu"
    return f"cuda:{ns.device_id}" if ns.device_id is not None else None


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
    setup.add_argument("--skip-install", "--skip-prepare-environment", action="store_true",
                       help="do not check or install dependencies (fast start)")
    setup.add_argument("--disable-all-extensions", action="store_true",
                       help="load none of the extensions (the shipped scripts included), e.g. to rule them out")

    paths = parser.add_argument_group("paths")
    paths.add_argument("--ckpt", type=_existing_file, default=None, metavar="PATH",
                       help="checkpoint file to load at start")
    paths.add_argument("--models-dir", type=_directory, default=None, metavar="DIR",
                       help="base folder of the model folders below (default: models); a folder given by its own "
                       "flag stays where it is given")
    parser.set_defaults(default_models_dir=root / "models")
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
    paths.add_argument("--ui-settings-file", type=_directory, default=None, metavar="FILE",
                       help="settings file (default: config.json in the data folder)")
    paths.add_argument("--styles-file", type=_directory, default=None, metavar="FILE",
                       help="prompt styles file (default: styles.csv in the data folder)")
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
                        help="keep only the component in use (text encoder, UNet or VAE) on the GPU; on a CPU: "
                        "no second, blocked copy of the convolution weights (less memory, slower bf16 steps)")
    memory.add_argument("--lowvram", action="store_true",
                        help="move the model to the GPU module by module (slowest, least memory); on a CPU: as "
                        "--medvram")
    compute.add_argument("--medvram-sdxl", action="store_true",
                         help="--medvram only while an SDXL model is loaded (SD1/SD2 models stay on the GPU)")
    compute.add_argument("--precision", choices=PRECISIONS, default="autocast",
                         help="autocast: compute in half precision where safe; full: compute in the weights' dtype "
                         "(default: autocast)")
    compute.add_argument("--compile", action="store_true",
                         help="compile the UNet with torch.compile (inductor): faster steps after a first step that "
                         "compiles, once per image size; compiled code is cached in the data folder for the next "
                         "start. Falls back to the uncompiled UNet with a warning where compiling fails")
    compute.add_argument("--device", type=_device, default="auto",
                         help="auto, cpu, cuda, cuda:N or mps (default: auto = CUDA, then MPS, then CPU)")
    compute.add_argument("--device-id", type=_device_id, default=None, metavar="N",
                         help="A1111's way to pick GPU N: the same as --device cuda:N")
    compute.add_argument("--use-cpu", nargs="+", type=str.lower, default=[], metavar="MODULE",
                         help="A1111's way to compute on the CPU: 'all' or 'sd' is the same as --device cpu")

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
    server.add_argument("--timeout-keep-alive", type=_positive, default=5, metavar="S",
                        help="seconds an idle HTTP connection is kept open (default: 5)")
    server.add_argument("--remote-max-steps", type=_positive, default=None, metavar="N",
                        help="refuse jobs over N sampling steps from clients on other machines (default: no cap)")

    workers = parser.add_argument_group("generation workers (Ray; docs/workers.md)")
    workers.add_argument("--workers", type=_positive, default=None, metavar="N",
                         help="run generation jobs on N workers: a local Ray instance, one GPU each (CPU workers "
                              "without GPUs); with --ray-address: how many to start on that cluster")
    workers.add_argument("--ray-address", default=None, metavar="ADDRESS",
                         help="run generation jobs on the Ray cluster at ADDRESS (host:6379 of `ray start --head`), "
                              "one worker per GPU unless --workers says how many")
    compat = parser.add_argument_group("A1111 flags accepted for compatibility",
                                       "They have no effect here; each one given logs a line saying why.")
    for flag in COMPAT_FLAGS:
        if flag.metavar is None:
            compat.add_argument(flag.flag, action="store_true", dest=_compat_dest(flag), help=flag.reason)
        else:
            compat.add_argument(flag.flag, nargs=flag.nargs, default=None, metavar=flag.metavar,
                                dest=_compat_dest(flag), help=flag.reason)

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


def _in_models_dir(ns: argparse.Namespace, folder: Path) -> Path:
    """With ``--models-dir``, a model folder left at its default under ``models/`` moves below the given folder."""
    if ns.models_dir is None or not folder.is_relative_to(ns.default_models_dir):
        return folder
    return ns.models_dir / folder.relative_to(ns.default_models_dir)


def options_from_namespace(ns: argparse.Namespace) -> LaunchOptions:
    """The typed options from a namespace made by :func:`build_parser`."""
    return LaunchOptions(
        skip_install=ns.skip_install,
        ckpt=ns.ckpt,
        ckpt_dir=_in_models_dir(ns, ns.ckpt_dir),
        vae_dir=_in_models_dir(ns, ns.vae_dir),
        lora_dir=_in_models_dir(ns, ns.lora_dir),
        embeddings_dir=ns.embeddings_dir,
        data_dir=ns.data_dir,
        no_half=ns.no_half,
        no_half_vae=ns.no_half_vae,
        medvram=ns.medvram,
        medvram_sdxl=ns.medvram_sdxl,
        lowvram=ns.lowvram,
        precision=ns.precision,
        device=_chosen_device(ns),
        allow_pickle=ns.allow_pickle,
        controlnet_dir=_in_models_dir(ns, ns.controlnet_dir),
        allowed_output_roots=tuple(ns.allowed_output_roots or ()),
        upscaler_dirs=tuple((kind, _in_models_dir(ns, getattr(ns, f"upscaler_dir_{kind}")))
                            for kind in UPSCALER_FOLDERS),
        settings_file=ns.ui_settings_file,
        styles_file=ns.styles_file,
        disable_all_extensions=ns.disable_all_extensions,
        compile=ns.compile,
        compat_notes=compat_notes(ns),
        workers=ns.workers,
        ray_address=ns.ray_address,
        server=ServerOptions(
            port=ns.port, listen=ns.listen, server_name=ns.server_name, share=ns.share, gradio_auth=ns.gradio_auth,
            gradio_auth_path=ns.gradio_auth_path, api=ns.api or ns.nowebui, api_auth=ns.api_auth,
            api_auth_path=ns.api_auth_path, nowebui=ns.nowebui, subpath=ns.subpath.rstrip("/"),
            tls_keyfile=ns.tls_keyfile, tls_certfile=ns.tls_certfile,
            enable_insecure_extension_access=ns.enable_insecure_extension_access, autolaunch=ns.autolaunch,
            insecure=ns.insecure, cors_allow_origins=ns.cors_allow_origins, theme=ns.theme,
            remote_max_pixels=ns.remote_max_pixels, remote_max_steps=ns.remote_max_steps,
            timeout_keep_alive=ns.timeout_keep_alive,
        ),
    )
