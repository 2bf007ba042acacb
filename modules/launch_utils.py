"""What ``launch.py`` does: pick or create the virtual environment, install torch and the pinned
dependencies from ``pyproject.toml``, then run the chosen command (the web UI by default).

Standard library only until the install step is over: nothing here imports torch or other dependencies.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import NoReturn

from modules.cmd_args import LaunchOptions, parse_command_line

REPO_ROOT = Path(__file__).resolve().parent.parent
# torch and torchvision are installed and pinned as a pair (spandrel's upscalers import torchvision, whose build must
# match torch's): a torchvision of another torch release fails to load its operators
TORCH_VERSION = "2.14.1"
TORCHVISION_VERSION = "0.29.1"
DEFAULT_TORCH_COMMAND = f"pip install torch=={TORCH_VERSION} torchvision=={TORCHVISION_VERSION}"
MARKER_NAME = "sdwebui-requirements.json"
REEXEC_ENV = "SDWEBUI_LAUNCH_REEXEC"
PYTEST_NO_TESTS_COLLECTED = 5


class LaunchError(Exception):
    """A set-up step failed; the message says what to do."""


def log(message: str) -> None:
    """One progress line of the launcher."""
    print(f"launch: {message}", flush=True)


# --- virtual environment -------------------------------------------------------------------------------------------

def venv_python(venv_dir: Path) -> Path:
    """The interpreter inside a virtual environment folder."""
    if os.name == "nt":
        return venv_dir / "Scripts" / "python.exe"
    return venv_dir / "bin" / "python"


def running_in_venv() -> bool:
    """True when this interpreter is a virtual environment's."""
    return sys.prefix != sys.base_prefix


def venv_to_enter(root: Path, environ: Mapping[str, str], in_venv: bool) -> Path | None:
    """The venv folder to restart in, or None to stay in this interpreter.

    Inside a venv: stay. An activated venv (``VIRTUAL_ENV``) whose python is not the one running: that venv.
    Otherwise: ``<root>/venv`` (created when missing).
    """
    if in_venv:
        return None
    active = environ.get("VIRTUAL_ENV")
    return Path(active) if active else root / "venv"


def create_venv(venv_dir: Path) -> None:
    """Create a venv with pip; on failure remove the partial folder and raise LaunchError."""
    log(f"creating the virtual environment {venv_dir} (first start only)")
    result = subprocess.run([sys.executable, "-m", "venv", str(venv_dir)])
    if result.returncode != 0:
        shutil.rmtree(venv_dir, ignore_errors=True)
        raise LaunchError(
            f"could not create {venv_dir} with {sys.executable} -m venv (exit code {result.returncode}); "
            "on Debian/Ubuntu install the python3-venv package"
        )


def restart_in(python: Path, script: Path, argv: Sequence[str]) -> NoReturn:
    """Run ``script argv`` with ``python`` in place of this process."""
    log(f"restarting with {python}")
    env = {**os.environ, REEXEC_ENV: "1"}
    args = [str(python), str(script), *argv]
    if os.name == "nt":  # execv on Windows detaches from the console; wait for a child instead
        sys.exit(subprocess.run(args, env=env).returncode)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(str(python), args, env)


def enter_venv(root: Path, script: Path, argv: Sequence[str]) -> None:
    """Return when running in the right venv; otherwise create it if needed and restart in it."""
    venv_dir = venv_to_enter(root, os.environ, running_in_venv())
    if venv_dir is None:
        return
    if os.environ.get(REEXEC_ENV):
        raise LaunchError(f"restarted with {sys.executable}, but it is not a virtual environment's python")
    python = venv_python(venv_dir)
    if not python.exists():
        if venv_dir != root / "venv":
            raise LaunchError(f"VIRTUAL_ENV is {venv_dir}, but {python} does not exist")
        create_venv(venv_dir)
    restart_in(python, script, argv)


# --- dependencies --------------------------------------------------------------------------------------------------

def _toml_loader():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: pip vendors the same parser
        from pip._vendor import tomli as tomllib
    return tomllib


def _requirement_class():
    try:
        from packaging.requirements import Requirement
    except ModuleNotFoundError:  # fresh venv: pip vendors packaging
        from pip._vendor.packaging.requirements import Requirement
    return Requirement


def read_requirements(pyproject: Path, extras: Iterable[str] = ()) -> list[str]:
    """``[project].dependencies`` plus the named ``[project.optional-dependencies]`` groups, in file order."""
    with open(pyproject, "rb") as f:
        project = _toml_loader().load(f)["project"]
    requirements = list(project.get("dependencies", []))
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise LaunchError(f"{pyproject} has no [project.optional-dependencies] group {extra!r}")
        requirements += optional[extra]
    return requirements


def unmet_requirements(requirements: Iterable[str]) -> list[str]:
    """The requirements whose distribution is missing or has a version outside the specifier."""
    requirement_class = _requirement_class()
    unmet = []
    for line in requirements:
        requirement = requirement_class(line)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        try:
            installed = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            unmet.append(line)
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            unmet.append(line)
    return unmet


def _recorded(marker: Path) -> set[str]:
    try:
        return set(json.loads(marker.read_text(encoding="utf-8"))["requirements"])
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def requirements_satisfied(requirements: Sequence[str], marker: Path) -> bool:
    """True when every line was installed by pip before (recorded in ``marker``) and is still installed.

    The marker proves pip resolved the transitive dependencies; the metadata check catches later changes.
    """
    return set(requirements) <= _recorded(marker) and not unmet_requirements(requirements)


def record_installed(requirements: Iterable[str], marker: Path) -> None:
    """Add the lines to the marker file (written atomically)."""
    lines = sorted(_recorded(marker) | set(requirements))
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(json.dumps({"requirements": lines}, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, marker)


def run_pip(what: str, args: Sequence[str]) -> None:
    """Run ``python -m <args>`` with this interpreter, printing a start line and the time taken."""
    command = [sys.executable, "-m", *args]
    log(f"installing {what}: {shlex.join(command)}")
    started = time.perf_counter()
    result = subprocess.run(command)
    if result.returncode != 0:
        raise LaunchError(f"installing {what} failed (exit code {result.returncode}); command: {shlex.join(command)}")
    importlib.invalidate_caches()
    log(f"installed {what} in {time.perf_counter() - started:.1f} s")


def torch_install_needed(custom_command: bool, torch_version: str | None, torchvision_version: str | None,
                         importable: bool) -> bool:
    """Decide whether to run the torch install command.

    A user's ``TORCH_COMMAND`` runs only when torch cannot be imported (it may install any build); the default
    command runs when torch or torchvision is missing or is not the tested pair (a local tag like +cpu is fine).
    """
    if custom_command:
        return not importable
    tested = {TORCH_VERSION: torch_version, TORCHVISION_VERSION: torchvision_version}
    return any(found is None or found.split("+")[0] != wanted for wanted, found in tested.items())


def install_torch(environ: Mapping[str, str]) -> None:
    """Install torch and torchvision with ``TORCH_COMMAND`` (default: the tested pair, pinned) when needed."""
    custom = environ.get("TORCH_COMMAND", "").strip()
    installed = {}
    for name in ("torch", "torchvision"):
        try:
            installed[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed[name] = None
    importable = importlib.util.find_spec("torch") is not None
    if not torch_install_needed(bool(custom), installed["torch"], installed["torchvision"], importable):
        return
    if installed["torch"] and not custom:
        log(f"torch {installed['torch']} / torchvision {installed['torchvision']} found; the tested pair is "
            f"{TORCH_VERSION} / {TORCHVISION_VERSION}")
    run_pip("torch", shlex.split(custom or DEFAULT_TORCH_COMMAND))


def install_requirements(requirements: Sequence[str], marker: Path) -> None:
    """pip-install the requirement lines unless the marker and installed metadata show them satisfied."""
    started = time.perf_counter()
    if requirements_satisfied(requirements, marker):
        elapsed = time.perf_counter() - started
        log(f"dependencies satisfied ({len(requirements)} requirements checked in {elapsed:.2f} s)")
        return
    run_pip("the dependencies from pyproject.toml", ["pip", "install", *requirements])
    record_installed(requirements, marker)


def prepare_environment(root: Path, extras: Sequence[str], environ: Mapping[str, str]) -> None:
    """Install torch, then the project's dependencies (with ``extras``) into the running venv."""
    install_torch(environ)
    requirements = read_requirements(root / "pyproject.toml", extras)
    install_requirements(requirements, Path(sys.prefix) / MARKER_NAME)


# --- commands ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Command:
    """A launcher command: the optional-dependency groups it needs and the function that runs it."""

    help: str
    extras: tuple[str, ...]
    run: Callable[[LaunchOptions, Sequence[str]], int | None]


def run_app(options: LaunchOptions, args: Sequence[str]) -> int | None:
    """Start the application (``webui.app.main``)."""
    from webui.app import main as app_main

    return app_main(options)


def pytest_exit_code(code: int) -> int:
    """pytest's exit status as the test command's: "no tests collected" (5) is success; signals become 128+N."""
    if code == PYTEST_NO_TESTS_COLLECTED:
        return 0
    return 128 - code if code < 0 else code


# The in-process Ray cluster's module runs alone after the rest: once its Ray driver has shut down, Ray can end the
# process it ran in when another Ray instance starts beside it (a server started with --workers).
RAY_CLUSTER_TESTS = "tests/test_workers.py"


def suite_runs(args: Sequence[str]) -> list[list[str]]:
    """The pytest argument lists ``launch.py test args…`` runs, in order: ``args`` as given; with none, the whole
    suite in two parallel processes (pytest-xdist, one test file per process at a time, in the order
    ``tests/conftest.py`` gives them), then the Ray-cluster module on its own."""
    if args:
        return [list(args)]
    return [["-n", "2", "--dist", "loadfile", "--no-loadscope-reorder", f"--ignore={RAY_CLUSTER_TESTS}"],
            [RAY_CLUSTER_TESTS]]


def run_tests(options: LaunchOptions, args: Sequence[str]) -> int:
    """``python -m pytest`` from the repository root for each of :func:`suite_runs`; the first failing status, else 0."""
    status = 0
    # two processes share the cores: OpenMP threads that busy-wait for work would slow both several times over
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    for run in suite_runs(args):
        command = [sys.executable, "-m", "pytest", *run]
        log(f"running {shlex.join(command)}")
        code = pytest_exit_code(subprocess.run(command, cwd=REPO_ROOT, env=env).returncode)
        status = status or code
    return status


APP = Command("start the web UI", (), run_app)
def run_txt2img(options: LaunchOptions, args: Sequence[str]) -> int:
    """Headless txt2img (``modules.cli``)."""
    from modules.cli import run

    return run("txt2img", options, args)


def run_img2img(options: LaunchOptions, args: Sequence[str]) -> int:
    """Headless img2img (``modules.cli``)."""
    from modules.cli import run

    return run("img2img", options, args)


COMMANDS: Mapping[str, Command] = MappingProxyType({
    "test": Command("install the test extras and run pytest with the given arguments", ("test",), run_tests),
    "txt2img": Command("generate images headless and print their paths (--help for options)", (), run_txt2img),
    "img2img": Command("img2img/inpaint headless and print the paths (--help for options)", (), run_img2img),
})


def command_extras(command: Command, options: LaunchOptions) -> tuple[str, ...]:
    """The optional-dependency groups to install: the command's, plus ``cluster`` (Ray) for the web UI with
    ``--workers`` or ``--ray-address``."""
    return (*command.extras, "cluster") if command is APP and options.uses_workers else command.extras


def main(argv: Sequence[str], script: Path) -> int:
    """Everything ``launch.py`` does; returns the exit status."""
    invocation = parse_command_line(argv, REPO_ROOT, commands={name: c.help for name, c in COMMANDS.items()})
    command = COMMANDS[invocation.command] if invocation.command else APP
    try:
        enter_venv(REPO_ROOT, script, argv)
        for note in invocation.options.compat_notes:  # after enter_venv: logged once, by the process that runs
            log(note)
        if invocation.options.skip_install:
            log("--skip-install: not checking dependencies")
        else:
            prepare_environment(REPO_ROOT, command_extras(command, invocation.options), os.environ)
    except LaunchError as e:
        log(f"error: {e}")
        return 1
    log(f"starting {invocation.command or 'the web UI'}")
    return command.run(invocation.options, invocation.command_args) or 0
