"""A1111 1.10's command-line flags: every one is accepted, those that mean nothing here say so in one line, and
``--help`` groups them. (A real start with a user's COMMANDLINE_ARGS, A1111's options and
``info.extra_generation_params`` are tested over the server of tests/test_webui_habits.py.)"""
from __future__ import annotations

from modules.cmd_args import COMPAT_FLAGS, build_parser, parse_command_line


def test_every_a1111_flag_is_accepted_and_explained(tmp_path):
    argv = [word for flag in COMPAT_FLAGS for word in ([flag.flag] if flag.metavar is None else [flag.flag, "1"])]
    options = parse_command_line(argv, root=tmp_path, environ={}).options
    assert [note.split(":")[0] for note in options.compat_notes] == [flag.flag for flag in COMPAT_FLAGS]
    assert parse_command_line([], root=tmp_path, environ={}).options.compat_notes == ()
    helped = build_parser(tmp_path).format_help()
    assert "A1111 flags accepted for compatibility" in helped and "--xformers" in helped

    # the ones that act: the device, the settings file
    settings = tmp_path / "elsewhere.json"
    options = parse_command_line(["--use-cpu", "all", "--ui-settings-file", str(settings)], root=tmp_path,
                                 environ={}).options
    assert options.device == "cpu" and options.config_path == settings
    assert parse_command_line(["--device-id", "1"], root=tmp_path, environ={}).options.device == "cuda:1"
    assert parse_command_line(["--use-cpu", "interrogate"], root=tmp_path, environ={}).options.compat_notes


def test_models_dir_styles_file_and_disable_all_extensions_act(tmp_path):
    from modules.app_state import create_state
    from modules.extensions import load_extensions
    from modules.prompts.styles import PromptStyle, load_styles, save_style

    models, styles = tmp_path / "elsewhere", tmp_path / "team-styles.csv"
    argv = ["--models-dir", str(models), "--lora-dir", str(tmp_path / "loras"), "--styles-file", str(styles),
            "--data-dir", str(tmp_path / "data"), "--disable-all-extensions", "--skip-install", "--device", "cpu"]
    options = parse_command_line(argv, root=tmp_path, environ={}).options
    assert options.ckpt_dir == models / "Stable-diffusion" and options.vae_dir == models / "VAE"
    assert options.upscaler_folders["ESRGAN"] == models / "ESRGAN" and options.controlnet_dir == models / "ControlNet"
    assert options.lora_dir == tmp_path / "loras"  # given by its own flag: stays
    assert not options.compat_notes
    state = create_state(options)
    save_style(state.styles_path, PromptStyle("team", "watercolor", ""))
    assert state.styles_path == styles and "team" in load_styles(styles)
    assert load_extensions(state).scripts == []  # not even the shipped ones
