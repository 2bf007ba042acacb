"""launch.py: flags, requirement checks, venv choice, command dispatch — and real runs of the launcher."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from modules.cmd_args import parse_command_line
from modules.launch_utils import (
    LaunchError,
    pytest_exit_code,
    read_requirements,
    record_installed,
    requirements_satisfied,
    suite_runs,
    torch_install_needed,
    unmet_requirements,
    venv_python,
    venv_to_enter,
)

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = {"test": "run the tests"}
LAUNCHER_FILES = ("launch.py", "modules/__init__.py", "modules/cmd_args.py", "modules/launch_utils.py")
# the application stand-in used by the copies: prints what it was started with
APP_STANDIN = """
import json, sys

def main(options):
    print("APP " + json.dumps({"prefix": sys.prefix, "medvram": options.medvram, "device": options.device,
                               "data_dir": str(options.data_dir)}))
    return 0
"""


def parse(argv, environ=None, root=ROOT):
    return parse_command_line(argv, root, commands=COMMANDS, environ=environ or {})


def parse_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        parse(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


# --- flags ---------------------------------------------------------------------------------------------------------

def test_defaults_live_in_the_repository():
    invocation = parse([])
    options = invocation.options
    assert invocation.command is None and invocation.command_args == ()
    assert options.ckpt is None
    assert options.ckpt_dir == ROOT / "models" / "Stable-diffusion"
    assert options.vae_dir == ROOT / "models" / "VAE"
    assert options.lora_dir == ROOT / "models" / "Lora"
    assert options.embeddings_dir == ROOT / "embeddings"
    assert options.data_dir == ROOT / "data"
    assert options.config_path == ROOT / "data" / "config.json"
    assert options.outputs_dir == ROOT / "data" / "outputs"
    assert options.cache_dir == ROOT / "data" / "cache"
    assert options.precision == "autocast" and options.device is None
    assert not any([options.skip_install, options.no_half, options.no_half_vae, options.medvram, options.lowvram,
                    options.allow_pickle])


def test_every_flag_reaches_the_options(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")
    options = parse([
        "--skip-install", "--ckpt", "model.safetensors", "--ckpt-dir", "ck", "--vae-dir", "vae", "--lora-dir", "lo",
        "--embeddings-dir", "emb", "--data-dir", "d", "--no-half", "--no-half-vae", "--lowvram",
        "--precision", "full", "--device", "cuda:1", "--allow-pickle",
    ]).options
    assert options.ckpt == tmp_path / "model.safetensors"
    assert (options.ckpt_dir, options.vae_dir, options.lora_dir, options.embeddings_dir, options.data_dir) == tuple(
        tmp_path / name for name in ("ck", "vae", "lo", "emb", "d"))
    assert options.skip_install and options.no_half and options.no_half_vae and options.lowvram
    assert not options.medvram and options.allow_pickle
    assert options.precision == "full" and options.device == "cuda:1"


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:0", "cuda:12", "mps"])
def test_valid_devices(device):
    assert parse(["--device", device]).options.device == device


@pytest.mark.parametrize("argv, message", [
    (["--device", "gpu"], "unknown device 'gpu'"),
    (["--device", "cuda:x"], "unknown device"),
    (["--ckpt", "no/such/model.safetensors"], "file not found: no/such/model.safetensors"),
    (["--medvram", "--lowvram"], "not allowed with argument"),
    (["--precision", "half"], "invalid choice: 'half'"),
    (["--no-such-flag", "1"], "unrecognized arguments: --no-such-flag"),
    (["txt2img"], "unknown command 'txt2img' (commands: test)"),
])
def test_bad_command_lines_exit_with_a_message(argv, message, capsys):
    assert message in parse_error(argv, capsys)


def test_flags_before_the_command_are_ours_words_after_it_are_its_own():
    invocation = parse(["--medvram", "test", "-k", "slow", "--medvram"])
    assert invocation.command == "test"
    assert invocation.command_args == ("-k", "slow", "--medvram")
    assert invocation.options.medvram
    assert parse(["test", "--medvram"]).options.medvram is False


@pytest.mark.parametrize("argv, ours, theirs", [
    (["test", "-q", "-x", "--co"], [], ["-q", "-x", "--co"]),  # --co: --controlnet-dir or --cors-allow-origins
    (["--data-dir", "test", "test", "--data-dir", "x"], ["--data-dir", "test"], ["--data-dir", "x"]),
    (["--device=cpu", "--skip-i", "test", "--ckpt", "--help"], ["--device=cpu", "--skip-i"], ["--ckpt", "--help"]),
    (["--medvram", "--", "test", "--", "-k"], ["--medvram"], ["--", "-k"]),
])
def test_words_after_the_command_are_never_read_as_our_flags(tmp_path, argv, ours, theirs):
    invocation = parse(argv, root=tmp_path)
    assert invocation.command == "test" and list(invocation.command_args) == theirs
    assert invocation.options == parse(ours, root=tmp_path).options  # flags before it (abbreviated too) still are


def test_commandline_args_environment_variable_comes_first():
    invocation = parse(["--no-half-vae", "test", "-x"],
                       environ={"COMMANDLINE_ARGS": "--no-half --data-dir '/tmp/with space'"})
    assert invocation.options.no_half and invocation.options.no_half_vae
    assert invocation.options.data_dir == Path("/tmp/with space")
    assert invocation.command_args == ("-x",)


def test_options_are_frozen():
    options = parse([]).options
    with pytest.raises(AttributeError):
        options.medvram = True


def test_launcher_modules_import_no_heavy_dependency():
    code = ("import sys, modules.launch_utils; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'diffusers', 'transformers', 'numpy'}))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# --- requirements --------------------------------------------------------------------------------------------------

def write_pyproject(path: Path) -> Path:
    path.write_text(
        '[project]\nname = "x"\ndependencies = ["b==1", "a>=2"]\n'
        '[project.optional-dependencies]\ntest = ["pytest>=8"]\ndocs = ["sphinx"]\n',
        encoding="utf-8",
    )
    return path


def test_requirements_come_from_pyproject_with_the_requested_extras(tmp_path):
    pyproject = write_pyproject(tmp_path / "pyproject.toml")
    assert read_requirements(pyproject) == ["b==1", "a>=2"]
    assert read_requirements(pyproject, ["test"]) == ["b==1", "a>=2", "pytest>=8"]
    with pytest.raises(LaunchError, match="no .* group 'bench'"):
        read_requirements(pyproject, ["bench"])


def test_the_whole_suite_runs_in_two_processes_then_the_ray_cluster_module_alone():
    whole = suite_runs([])
    assert whole[0][:4] == ["-n", "2", "--dist", "loadfile"] and "--ignore=tests/test_workers.py" in whole[0]
    assert "--no-loadscope-reorder" in whole[0]  # files run in tests/conftest.py's order: the browser files first
    assert whole[1] == ["tests/test_workers.py"] and (ROOT / whole[1][0]).is_file()
    assert suite_runs(["-x", "tests/test_launch.py"]) == [["-x", "tests/test_launch.py"]]  # given: as given


def test_project_pyproject_leaves_torch_to_the_launcher():
    requirements = read_requirements(ROOT / "pyproject.toml", ["test"])
    assert any(line.startswith("pytest") for line in requirements)
    assert not any(line.split("=")[0].split(">")[0].strip() == "torch" for line in requirements)


def test_unmet_requirements_read_installed_metadata():
    lines = ["pytest>=1", "pytest<1", "surely-not-an-installed-dist==1.0", 'pytest<1; python_version < "3"']
    assert unmet_requirements(lines) == ["pytest<1", "surely-not-an-installed-dist==1.0"]


def test_requirements_satisfied_needs_the_marker_and_the_installed_versions(tmp_path):
    marker = tmp_path / "marker.json"
    installed = ["pytest>=1", "packaging"]
    assert not requirements_satisfied(installed, marker)  # never installed by the launcher
    record_installed(installed, marker)
    assert requirements_satisfied(installed, marker)
    assert requirements_satisfied(["pytest>=1"], marker)  # a subset, e.g. the app after the test command
    assert not requirements_satisfied([*installed, "hypothesis>=1"], marker)  # a line added to pyproject
    record_installed(["pytest<1"], marker)  # recorded, but the installed version no longer fits
    assert not requirements_satisfied(["pytest<1"], marker)
    assert json.loads(marker.read_text())["requirements"] == ["packaging", "pytest<1", "pytest>=1"]
    marker.write_text("{not json")
    assert not requirements_satisfied(["pytest>=1"], marker)


@pytest.mark.parametrize("custom, torch, torchvision, importable, needed", [
    (False, None, None, False, True),                # fresh venv: default command
    (False, "2.14.1", "0.29.1", True, False),
    (False, "2.14.1+cpu", "0.29.1+cpu", True, False),  # local build tags are the same version
    (False, "2.14.1", None, True, True),             # torchvision missing: install the pair
    (False, "2.13.0", "0.29.1", True, True),         # another torch: install the tested pair
    (False, "2.14.1", "0.28.0", True, True),         # a torchvision of another torch release
    (True, "2.12.1+cu121", None, True, False),       # the user's TORCH_COMMAND chose it
    (True, None, None, False, True),
])
def test_when_torch_is_installed(custom, torch, torchvision, importable, needed):
    assert torch_install_needed(custom, torch, torchvision, importable) is needed


@pytest.mark.parametrize("pytest_code, ours", [(0, 0), (1, 1), (2, 2), (4, 4), (5, 0), (-2, 130)])
def test_test_command_exit_codes(pytest_code, ours):
    assert pytest_exit_code(pytest_code) == ours


# --- venv choice ---------------------------------------------------------------------------------------------------

def test_venv_choice(tmp_path):
    assert venv_to_enter(tmp_path, {"VIRTUAL_ENV": "/elsewhere"}, in_venv=True) is None
    assert venv_to_enter(tmp_path, {"VIRTUAL_ENV": "/elsewhere"}, in_venv=False) == Path("/elsewhere")
    assert venv_to_enter(tmp_path, {}, in_venv=False) == tmp_path / "venv"


# --- real launcher runs --------------------------------------------------------------------------------------------

def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in {"VIRTUAL_ENV", "COMMANDLINE_ARGS", "TORCH_COMMAND", "PYTHONPATH", "SDWEBUI_LAUNCH_REEXEC"}}
    return {**env, **extra}


def run_launcher(python, root: Path, *argv: str, env=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), str(root / "launch.py"), *argv], cwd=root, env=env or clean_env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def launcher_copy(tmp_path) -> Path:
    """The launcher alone in a fresh folder, with a stand-in application and an empty tests/."""
    for name in LAUNCHER_FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / "webui").mkdir(exist_ok=True)
    (tmp_path / "webui" / "__init__.py").write_text("", encoding="utf-8")
    (tmp_path / "webui" / "app.py").write_text(APP_STANDIN, encoding="utf-8")
    (tmp_path / "tests").mkdir()
    write_pyproject(tmp_path / "pyproject.toml")
    return tmp_path


def app_report(stdout: str) -> dict:
    return json.loads(next(line[4:] for line in stdout.splitlines() if line.startswith("APP ")))


def test_help_in_the_project_venv():
    result = run_launcher(sys.executable, ROOT, "--skip-install", "--help")
    assert result.returncode == 0, result.stderr
    assert "--allow-pickle" in result.stdout and "TORCH_COMMAND" in result.stdout


def test_launcher_starts_the_app_with_the_options(launcher_copy):
    result = run_launcher(sys.executable, launcher_copy, "--skip-install", "--medvram", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    report = app_report(result.stdout)
    assert report == {"prefix": sys.prefix, "medvram": True, "device": "cpu", "data_dir": str(launcher_copy / "data")}


@pytest.mark.parametrize("test_file, code", [
    (None, 0),  # no tests collected: success for CI
    ("def test_ok():\n    assert True\n", 0),
    ("def test_broken():\n    assert False\n", 1),
])
def test_test_command_runs_pytest_in_the_project(launcher_copy, test_file, code):
    if test_file:
        (launcher_copy / "tests" / "test_sample.py").write_text(test_file, encoding="utf-8")
    result = run_launcher(sys.executable, launcher_copy, "--skip-install", "test", "-q", "-p", "no:cacheprovider")
    assert result.returncode == code, result.stdout + result.stderr
    assert ("no tests ran" in result.stdout) == (test_file is None)


def test_test_command_passes_pytest_its_own_abbreviations(launcher_copy):
    (launcher_copy / "tests" / "test_sample.py").write_text("def test_listed():\n    assert False\n", encoding="utf-8")
    result = run_launcher(sys.executable, launcher_copy, "--skip-install", "test", "-q", "-x", "--co",
                          "-p", "no:cacheprovider")
    assert result.returncode == 0, result.stdout + result.stderr  # collected only: the failing test did not run
    assert "test_sample.py::test_listed" in result.stdout and "ambiguous option" not in result.stderr


@pytest.mark.slow
def test_fresh_machine_creates_then_reuses_the_venv_and_installs_once(launcher_copy):
    base_python = Path(getattr(sys, "_base_executable", ""))
    if not base_python.is_file():
        pytest.skip("no base interpreter outside the venv")
    pyproject = launcher_copy / "pyproject.toml"
    pyproject.write_text('[project]\nname = "x"\ndependencies = ["pip>=20"]\n', encoding="utf-8")
    # torch cannot be installed here: a custom TORCH_COMMAND stands in and must run once torch is found missing
    env = clean_env(TORCH_COMMAND="pip --version")

    first = run_launcher(base_python, launcher_copy, env=env, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    venv = launcher_copy / "venv"
    assert "creating the virtual environment" in first.stdout
    assert app_report(first.stdout)["prefix"] == str(venv)
    assert "installing torch" in first.stdout and "installing the dependencies" in first.stdout

    second = run_launcher(base_python, launcher_copy, env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "creating the virtual environment" not in second.stdout
    assert "dependencies satisfied (1 requirements" in second.stdout
    assert "installing the dependencies" not in second.stdout
    assert app_report(second.stdout)["prefix"] == str(venv)
    assert venv_python(venv).exists()
