"""X/Y/Z plot (the shipped selectable script): value syntax, grid layout and labels, cells equal single runs,
checkpoint axis switching and restoring, axes from other extensions."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from modules.cmd_args import REPO_ROOT
from modules.extensions import load_extensions
from modules.infotext import parse_infotext
from modules.processing.params import Txt2ImgParams
from modules.scripts import find_script, named_args, run_generation
from tests.engine_fixtures import make_state

CELL = 64


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    state = make_state(tmp_path_factory.mktemp("xyz"), {"alpha": "sd1", "beta": "sd1"}, load="alpha")
    state.settings.update({"samples_save": False})
    load_extensions(state, [REPO_ROOT / "extensions"])
    return state


@pytest.fixture(scope="module")
def xyz(state):
    return sys.modules[type(find_script(state, "txt2img", "X/Y/Z plot")).__module__]


def _params(**kw) -> Txt2ImgParams:
    base = dict(prompt="a red circle", seed=3, steps=1, width=CELL, height=CELL, sampler_name="Euler")
    return Txt2ImgParams(**{**base, **kw})


def _array(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def test_value_syntax(xyz):
    assert xyz.expand_numbers("1-5", int) == [1, 2, 3, 4, 5]
    assert xyz.expand_numbers("1-10 (+2)", int) == [1, 3, 5, 7, 9]
    assert xyz.expand_numbers("10-1 (-3)", int) == [10, 7, 4, 1]
    assert xyz.expand_numbers("1-10 [5]", int) == [1, 3, 5, 7, 10]
    assert xyz.expand_numbers("0.5-1 [3]", float) == [0.5, 0.75, 1.0]
    assert xyz.expand_numbers("1-2 (+0.5), 7", float) == [1.0, 1.5, 2.0, 7.0]
    assert xyz.expand_numbers("3, 5,9", int) == [3, 5, 9]
    assert xyz.split_values('Euler, "DPM++ 2M, odd", DDIM') == ["Euler", "DPM++ 2M, odd", "DDIM"]
    with pytest.raises(ValueError):
        xyz.expand_numbers("1-5 (-1)", int)
    assert len(xyz.expand_numbers("1-500", int, max_values=500)) == 500
    for huge in ("1-1000000000", "1-2 [300000000]", "1-10000000 (+1)", "1-400, 1-101"):
        with pytest.raises(ValueError, match="at most 500"):  # refused from its count: nothing is built
            xyz.expand_numbers(huge, int, max_values=500)


def test_grid_layout_labels_and_each_cell_equals_the_single_run(state):
    args = {"x_type": "Steps", "x_values": "1-2", "y_type": "Seed", "y_values": "5, 6"}
    result = run_generation(state, _params(), script_name="X/Y/Z plot", script_args=args)
    grid, cells = result.images[0], result.images[1:]
    assert len(cells) == 4 and result.grid is grid
    # two columns and two rows of cells, with margins for the labels above and to the left
    left, top = grid.width - 2 * CELL, grid.height - 2 * CELL
    assert left > 0 and top > 0
    for i, cell in enumerate(cells):
        x, y = left + (i % 2) * CELL, top + (i // 2) * CELL
        assert np.array_equal(_array(grid.crop((x, y, x + CELL, y + CELL))), _array(cell))
    for col in range(2):  # a label (dark text on white) above each column and left of each row
        assert _array(grid.crop((left + col * CELL, 0, left + (col + 1) * CELL, top))).min() < 128
        assert _array(grid.crop((0, top + col * CELL, left, top + (col + 1) * CELL))).min() < 128
    fields = [parse_infotext(text) for text in result.infotexts[1:]]
    assert [(f["Steps"], f["Seed"]) for f in fields] == [("1", "5"), ("2", "5"), ("1", "6"), ("2", "6")]
    for i in (1, 2):  # cells (steps 2, seed 5) and (steps 1, seed 6) equal runs without the plot
        steps, seed = (2, 5) if i == 1 else (1, 6)
        single = run_generation(state, _params(steps=steps, seed=seed)).images[0]
        assert np.array_equal(_array(cells[i]), _array(single))


def test_checkpoint_axis_switches_models_and_restores_the_original(state):
    assert state.models.current_info.model_name == "alpha"
    args = {"x_type": "Checkpoint name", "x_values": "beta"}
    result = run_generation(state, _params(), script_name="X/Y/Z plot", script_args=args)
    assert parse_infotext(result.infotexts[1])["Model"] == "beta"
    assert state.models.current_info.model_name == "alpha"


def test_axes_from_extensions_and_bad_axes(state, xyz):
    labels = [a.label for a in xyz.axes_for(state, "txt2img")]
    x_type = next(c for c in find_script(state, "txt2img", "X/Y/Z plot").controls("txt2img") if c.name == "x_type")
    assert list(x_type.choices) == labels  # the UI's axis dropdown lists the contributed axes too
    for wanted in ("Seed", "Steps", "CFG scale", "Sampler", "Schedule type", "Checkpoint name", "VAE", "Prompt S/R",
                   "Clip skip", "Hires steps", "Hires upscaler", "Denoising"):
        assert wanted in labels
    with pytest.raises(ValueError, match="x_type: .Colour. is not one of"):
        run_generation(state, _params(), script_name="X/Y/Z plot", script_args={"x_type": "Colour", "x_values": "1"})
    with pytest.raises(ValueError, match="Sampler"):
        run_generation(state, _params(), script_name="X/Y/Z plot",
                       script_args={"x_type": "Sampler", "x_values": "Euler, Nonsense"})


def test_prompt_search_replace_and_hires_axis_reach_the_jobs(state):
    args = {"x_type": "Prompt S/R", "x_values": "red, blue", "y_type": "Hires steps", "y_values": "1"}
    hires = {"Hires fix": {"args": {"enable": True, "hr_scale": 1.5, "denoising_strength": 0.3}}}
    result = run_generation(state, _params(), script_name="X/Y/Z plot", script_args=args, alwayson=hires)
    fields = [parse_infotext(text) for text in result.infotexts[1:]]
    assert [f["Prompt"] for f in fields] == ["a red circle", "a blue circle"]
    assert all(f["Hires steps"] == "1" for f in fields)
    assert all(cell.size == (96, 96) for cell in result.images[1:])


def test_a1111_axis_names_in_any_case_and_its_other_axes(state, xyz):
    state.styles_path.write_text('name,prompt,negative_prompt\nbright,"{prompt}, bright colors",\n'
                                 'flat,"{prompt}, flat",dull\n', encoding="utf-8")
    args = {"x_type": "CFG Scale", "x_values": "5.5", "y_type": "prompt ORDER", "y_values": "red, circle",
            "z_type": "Styles", "z_values": '"bright, flat"'}  # A1111's spelling; one cell with both styles
    result = run_generation(state, _params(), script_name="X/Y/Z plot", script_args=args)
    fields = [parse_infotext(text) for text in result.infotexts[1:]]
    assert [(f["Prompt"], f["CFG scale"]) for f in fields] == [("a red circle, bright colors, flat", "5.5"),
                                                               ("a circle red, bright colors, flat", "5.5")]
    assert fields[0]["Negative prompt"] == "dull"

    plot = find_script(state, "txt2img", "X/Y/Z plot")
    planned = plot.planned_jobs(state, _params(), named_args(plot, "txt2img", {
        "x_type": "Var. seed", "x_values": "11, 12", "y_type": "var. strength", "y_values": "0.5",
        "z_type": "Eta", "z_values": "0.25"}), {})
    assert [(p.subseed, p.subseed_strength, p.eta) for p, _ in planned] == [(11, 0.5, 0.25), (12, 0.5, 0.25)]
    planned = plot.planned_jobs(state, _params(), named_args(plot, "txt2img", {
        "x_type": "Refiner checkpoint", "x_values": "None, beta", "y_type": "Refiner switch at", "y_values": "0.8"}),
        {})
    assert [(p.refiner_checkpoint, p.refiner_switch_at) for p, _ in planned] == [
        (None, 0.8), (state.models.catalog.title(state.models.catalog.find("beta")), 0.8)]  # "beta.safetensors …"
    assert xyz.axis_values(xyz.axes_for(state, "txt2img")[0], "") == [None]
    for bad, message in ((("Styles", "nonexistent"), "unknown style"), (("Prompt order", "red, square"),
                                                                       "'square' is not in the prompt")):
        with pytest.raises(ValueError, match=message):
            plot.planned_jobs(state, _params(), named_args(plot, "txt2img", {"x_type": bad[0], "x_values": bad[1]}),
                              {})
