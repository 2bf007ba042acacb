"""Loading an upscaler file into a spandrel model: tensors read as checkpoints are (safetensors memory-mapped,
pickles only with --allow-pickle and ``weights_only=True``), the architecture detected by spandrel's registry."""
from __future__ import annotations

from pathlib import Path

from ..models.safetensors_file import ModelFileError, load_state_dict


class UnusableUpscaler(ModelFileError):
    """The file holds weights, but not of an image upscaler spandrel can build."""


def load_upscaler(path: Path, allow_pickle: bool = False):
    """A spandrel ``ImageModelDescriptor`` on the CPU, in eval mode; ModelFileError (or its subclass
    :class:`UnusableUpscaler`) with a message naming the file when it cannot be one."""
    import spandrel

    state_dict = load_state_dict(path, allow_pickle)
    if not state_dict:
        raise ModelFileError(f"{Path(path).name}: holds no tensors")
    try:
        model = spandrel.ModelLoader(device="cpu").load_from_state_dict(spandrel.canonicalize_state_dict(state_dict))
    except spandrel.UnsupportedModelError:
        raise UnusableUpscaler(f"{Path(path).name}: not an upscaler architecture spandrel knows") from None
    except Exception as e:  # noqa: BLE001 - a damaged file of a known architecture fails while building
        raise UnusableUpscaler(f"{Path(path).name}: cannot build the model ({e})") from None
    if not isinstance(model, spandrel.ImageModelDescriptor) or model.purpose not in ("SR", "Restoration"):
        raise UnusableUpscaler(f"{Path(path).name}: a {model.architecture.name} model ({model.purpose}), not an "
                               "image upscaler")
    if model.input_channels != 3 or model.output_channels != 3:
        raise UnusableUpscaler(f"{Path(path).name}: takes {model.input_channels} channels and gives "
                               f"{model.output_channels}; an upscaler for RGB images is needed")
    return model.eval()


def probe(path: Path, allow_pickle: bool = False) -> tuple[str, int]:
    """``(architecture name, scale)`` of an upscaler file; raises with the reason when it cannot be used."""
    model = load_upscaler(path, allow_pickle)
    return model.architecture.name, int(model.scale)
