"""Batch img2img (modules.processing.batch_img2img) on the bundled demo checkpoint: a folder of images (one in a subfolder)
with a mask folder becomes one inpainting job per image through the real queue, saved under the images' names with
their infotext; PNG info; an interrupt keeps the finished images; folders of remote requesters are confined."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, PngImagePlugin

from modules import scripts
from modules.app_state import create_state
from modules.cmd_args import REPO_ROOT, parse_command_line
from modules.infotext import parse_infotext
from modules.processing.batch_img2img import BatchFolders, plan_batch, run_batch
from modules.processing.params import Img2ImgParams
from modules.requester import Requester

DEMO = REPO_ROOT / "models" / "Stable-diffusion" / "demo-shapes.safetensors"
INFOTEXT = "a red circle\nNegative prompt: blurry\nSteps: 3, Sampler: Euler, CFG scale: 5, Seed: 99, Size: 64x64"


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch-img2img")
    (root / "allowed").mkdir()
    state = create_state(parse_command_line(["--ckpt", str(DEMO), "--ckpt-dir", str(root / "none"), "--data-dir",
                                             str(root / "data"), "--device", "cpu", "--precision", "full",
                                             "--allowed-output-roots", str(root / "allowed")]).options)
    state.models.load(DEMO.name)
    return state


def _folders(tmp_path):
    """Input: a.png (with generation parameters), b.jpg, sub/c.png and notes.txt; a mask folder with one mask."""
    source, masks = tmp_path / "in", tmp_path / "masks"
    (source / "sub").mkdir(parents=True)
    masks.mkdir()
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", INFOTEXT)
    Image.new("RGB", (64, 64), (30, 60, 200)).save(source / "a.png", pnginfo=info)
    Image.new("RGB", (64, 64), (200, 60, 30)).save(source / "b.jpg")
    Image.new("RGB", (64, 64), (30, 200, 60)).save(source / "sub" / "c.png")
    (source / "notes.txt").write_text("not an image")
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, 31, 63), fill=255)
    mask.save(masks / "only.png")
    return source, masks


def _params(**kw) -> Img2ImgParams:
    base = {"prompt": "a square", "seed": 5, "steps": 2, "width": 64, "height": 64, "sampler_name": "Euler",
            "denoising_strength": 0.8, "mask_blur": 0, "inpaint_full_res": False}
    return Img2ImgParams(**{**base, **kw})


def _submit(state, interrupt_after: int | None = None):
    jobs = []

    def submit(params):
        job = scripts.submit(state, params)
        jobs.append(job)
        if interrupt_after is not None and len(jobs) > interrupt_after:
            job.interrupt()
        return job

    return submit


def test_batch_inpaints_every_image_saves_them_by_name_and_takes_png_info(state, tmp_path):
    source, masks = _folders(tmp_path)
    out = tmp_path / "out"
    folders = BatchFolders(str(source), str(out), str(masks), use_png_info=True, png_info_props=("Prompt", "Seed"))
    result = run_batch(state, _params(), folders, _submit(state))

    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["a.png", "b.png", "sub/c.png"]
    assert len(result.images) == 3 and not result.interrupted
    infos = {p.relative_to(out).as_posix(): parse_infotext(Image.open(p).info["parameters"]) for p in result.paths}
    assert infos["a.png"]["Prompt"] == "a square a red circle"  # appended, as A1111 does
    assert infos["a.png"]["Negative prompt"] == ""  # not chosen
    assert infos["a.png"]["Seed"] == "99" and infos["b.png"]["Seed"] == infos["sub/c.png"]["Seed"] == "5"
    assert infos["b.png"]["Prompt"] == "a square"  # no parameters in the file: the request's
    assert all(info["Mask blur"] == "0" and info["Denoising strength"] == "0.8" for info in infos.values())
    for name, given in (("b.png", "b.jpg"), ("sub/c.png", "sub/c.png")):  # the mask's right half is kept
        pixels = np.asarray(Image.open(out / name).convert("RGB"))
        original = np.asarray(Image.open(source / given).convert("RGB"))
        assert (pixels[:, 33:] == original[:, 33:]).all() and not (pixels[:, :30] == original[:, :30]).all()

    default_out = state.settings.current.output_dir("img2img", state.options.data_dir)
    before = set(default_out.rglob("*.png"))
    interrupted = run_batch(state, _params(), BatchFolders(str(source)), _submit(state, interrupt_after=1))
    assert interrupted.interrupted and len(interrupted.images) == 1  # the first image's job finished and is kept
    assert len(set(default_out.rglob("*.png")) - before) == 1  # saved as a usual sample


def test_folders_of_a_remote_requester_are_confined_and_bad_folders_are_named(state, tmp_path):
    source, _ = _folders(tmp_path)
    remote = Requester("someone", remote=True)
    with pytest.raises(ValueError, match="'Input directory'.*--allowed-output-roots"):
        plan_batch(state, BatchFolders(str(source)), remote)
    allowed = state.options.allowed_output_roots[0]
    with pytest.raises(ValueError, match="'Output directory'.*--allowed-output-roots"):
        plan_batch(state, BatchFolders(str(allowed), str(tmp_path / "out")), remote)
    Image.new("RGB", (64, 64)).save(allowed / "x.png")
    plan = plan_batch(state, BatchFolders(str(allowed), "results"), remote)  # relative: below the data folder
    assert [p.name for p in plan.images] == ["x.png"] and plan.output_dir == (state.options.data_dir / "results").resolve()
    assert len(plan_batch(state, BatchFolders(str(source))).images) == 3  # a local browser: any folder
    with pytest.raises(ValueError, match="Input directory: .* is not a folder"):
        plan_batch(state, BatchFolders(str(tmp_path / "missing")))
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "readme.txt").write_text("nothing")
    with pytest.raises(ValueError, match="Input directory: .* holds no images"):
        plan_batch(state, BatchFolders(str(tmp_path / "text")))
