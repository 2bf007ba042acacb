"""A selectable script's result made of the jobs it ran: the pieces every shipped script shares.

A script that runs several jobs (Prompt matrix, Loopback, the outpainting scripts, SD upscale) gathers their images
into one :class:`~modules.processing.runner.JobResult`, may put a grid first, saves what it made itself as samples
or grids (with the ``save_txt`` setting honoured), and ends with A1111's ``info`` lists filled from the result.
"""
from __future__ import annotations

from . import outputs
from .saving import UnsavedImages


def unsaved_images(settings) -> UnsavedImages:
    """The saver for a script's own images (a full disk gives warnings, never an exception)."""
    return UnsavedImages(settings.save_txt)


def add_job(result, one) -> None:
    """Append one job's images and their data to ``result``; its ``info`` is the first job's."""
    result.images += one.images
    result.infotexts += one.infotexts
    result.paths += one.paths
    result.seeds += one.seeds
    result.subseeds += one.subseeds
    result.prompts += one.prompts
    result.negative_prompts += one.negative_prompts
    result.warnings += [w for w in one.warnings if w not in result.warnings]
    result.info = result.info or dict(one.info)


def add_image(state, settings, params, result, source, index: int, image, unsaved: UnsavedImages) -> None:
    """Append ``image``, which the script made from image ``index`` of job ``source``, with that image's infotext,
    seed and prompts, and save it as a sample unless the request or the settings say not to."""
    infotext, seed = source.infotexts[index], source.seeds[index]
    result.images.append(image)
    result.infotexts.append(infotext)
    result.seeds.append(seed)
    result.subseeds.append(source.subseeds[index])
    result.prompts.append(source.prompts[index])
    result.negative_prompts.append(source.negative_prompts[index])
    result.info = result.info or dict(source.info)
    if settings.samples_save and not params.do_not_save_samples:
        path = unsaved.save(image, settings.output_dir(params.kind, state.options.data_dir),
                            lambda folder: outputs.next_image_path(folder, seed, settings.samples_format), infotext)
        if path is not None:
            result.paths.append(path)


def lead_with_grid(state, settings, params, result, grid, unsaved: UnsavedImages) -> None:
    """Put ``grid`` first in ``result`` with the first image's infotext, and save it as a grid (when the
    ``grid_save`` and ``samples_save`` settings are on and the request does not say ``do_not_save_grid``)."""
    result.grid, result.images = grid, [grid, *result.images]
    result.infotexts = [result.infotexts[0], *result.infotexts]
    if settings.grid_save and settings.samples_save and not params.do_not_save_grid:
        result.grid_path = unsaved.save(grid, settings.output_dir(f"{params.kind}-grids", state.options.data_dir),
                                        lambda dated: outputs.next_grid_path(dated, settings.grid_format),
                                        result.infotexts[0])


def finish_info(result, **extra) -> None:
    """Fill ``result.info``'s lists (A1111's ``all_seeds``, ``infotexts``, …) from the result, plus ``extra``."""
    result.info = {**result.info, "all_seeds": result.seeds, "all_subseeds": result.subseeds,
                   "all_prompts": result.prompts, "all_negative_prompts": result.negative_prompts,
                   "infotexts": result.infotexts, "index_of_first_image": 1 if result.grid is not None else 0,
                   "warnings": result.warnings, "interrupted": result.interrupted, **extra}
