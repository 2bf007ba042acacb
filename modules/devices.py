"""Device and precision choice, and moving model components to the compute device when memory is short.

Defaults: CUDA in bf16 where the GPU supports it, else fp16; MPS in fp16; a CPU with native bf16 arithmetic (AMX
or AVX512-BF16) computes the UNet, the text encoders and the VAE in bf16, the UNet and VAE in channels_last memory
format with their convolution weights kept in oneDNN's blocked layout (:mod:`modules.models.packed_conv`); other
CPUs compute in fp32. ``--no-half`` keeps the UNet and text encoders in fp32, ``--no-half-vae`` the VAE;
``--precision full`` means fp32 everywhere. ``--medvram`` keeps every component on the CPU and moves the one in use
to the GPU (``--medvram-sdxl``: only while an SDXL model is loaded); ``--lowvram`` moves the model block by block with
forward hooks. On a CPU, ``--medvram`` and ``--lowvram`` leave the convolution weights unpacked (no second copy).
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
from dataclasses import dataclass
from pathlib import Path

# CPU flags (Linux /proc/cpuinfo names) of native bf16 matrix arithmetic: AMX tiles or AVX512-BF16 dot products.
BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
# The VAE computes in bf16 on such a CPU too: measured (bench/bench_precision.py), a decode differs from fp32 by 1%
# (relative; 5/255 at most) on the demo model and by 0.35% on SD1.5-size weights, in a quarter of the time at 256².
CPU_BF16_VAE = True


@dataclass(frozen=True)
class DevicePlan:
    device: str
    dtype: object  # torch.dtype of UNet and text encoders
    vae_dtype: object
    offload: str = "none"  # "none", "medvram", "medvram-sdxl" (medvram for SDXL models only) or "lowvram"
    channels_last: bool = False  # UNet and VAE 4-D weights (and so activations) in channels_last memory format
    packed_convs: bool = False  # UNet and VAE convolutions keep their weights in oneDNN's blocked layout

    @property
    def is_cpu(self) -> bool:
        return self.device == "cpu"

    @property
    def precision(self) -> str:
        """What the UNet computes in: "fp32", "fp16" or "bf16" (the infotext's "Precision" when not fp32)."""
        return dtype_name(self.dtype)


def dtype_name(dtype) -> str:
    """"fp32", "fp16" or "bf16" for a torch floating dtype."""
    import torch

    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, str(dtype))


def precision_label(unet_dtype, vae_dtype) -> str | None:
    """The infotext's "Precision": None for fp32 (as every UI computes on a CPU, and as infotexts were before), else
    the UNet's dtype, with the VAE's when it differs ("bf16 (VAE fp32)")."""
    unet, vae = dtype_name(unet_dtype), dtype_name(vae_dtype)
    if unet == vae == "fp32":
        return None
    return unet if vae == unet else f"{unet} (VAE {vae})"


def cpuinfo_flags(text: str) -> frozenset[str]:
    """The feature flags of a Linux ``/proc/cpuinfo`` text (the first processor's ``flags`` line)."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def cpu_has_native_bf16(flags: frozenset[str] | None = None) -> bool:
    """Whether this CPU (or one with ``flags``) computes bf16 matrix products natively (AMX or AVX512-BF16).

    Without ``flags``: torch's own CPU feature probe where it has one, else ``/proc/cpuinfo``.
    """
    if flags is None:
        flags = _this_cpu_flags()
    return bool(flags & BF16_CPU_FLAGS)


def _this_cpu_flags() -> frozenset[str]:
    import torch

    probe = getattr(torch.cpu, "get_capabilities", None)  # torch >= 2.8
    if probe is not None:
        with contextlib.suppress(Exception):
            return frozenset(name for name, present in probe().items() if present is True)
    try:
        return cpuinfo_flags(Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return frozenset()


def pick_device(requested: str | None) -> str:
    import torch

    if requested:
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"--device {requested}: CUDA is not available in this torch build or on this machine")
        if requested == "mps" and not torch.backends.mps.is_available():
            raise RuntimeError("--device mps: MPS is not available on this machine")
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def plan_devices(device: str | None = None, no_half: bool = False, no_half_vae: bool = False,
                 medvram: bool = False, lowvram: bool = False, precision: str = "autocast",
                 medvram_sdxl: bool = False, cpu_bf16: bool | None = None) -> DevicePlan:
    """Choose device, dtypes and offload mode from the command-line flags.

    ``cpu_bf16``: whether the CPU has native bf16 (None: detect it, :func:`cpu_has_native_bf16`).
    """
    import torch

    dev = pick_device(device)
    full = no_half or precision == "full"  # "full": evaluate everything in fp32, as A1111's --precision full
    channels_last = False
    if dev == "cpu":
        bf16 = not full and (cpu_has_native_bf16() if cpu_bf16 is None else cpu_bf16)
        half = torch.bfloat16 if bf16 else torch.float32
        channels_last = bf16
        vae_half = half if CPU_BF16_VAE else torch.float32
    elif dev.startswith("cuda"):
        half = vae_half = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        half = vae_half = torch.float16
    dtype = torch.float32 if full else half
    vae_dtype = torch.float32 if full or no_half_vae else vae_half
    keep_large_allocations_returnable()
    offload = "none" if dev == "cpu" else ("lowvram" if lowvram else "medvram" if medvram
                                           else "medvram-sdxl" if medvram_sdxl else "none")
    packed_convs = channels_last and not (medvram or lowvram)
    return DevicePlan(dev, dtype, vae_dtype, offload, channels_last, packed_convs)


M_MMAP_THRESHOLD = -3
LARGE_ALLOCATION = 4 << 20


def keep_large_allocations_returnable() -> None:
    """Serve allocations over 4 MiB with mmap so freed weights go back to the system (glibc only).

    glibc raises its mmap threshold after large frees, after which new weight tensors come from the heap and
    fragment it: repeated checkpoint switches would then grow the process. A fixed threshold prevents that.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, LARGE_ALLOCATION)


def free_memory() -> None:
    """Return freed memory to the system (Python, glibc heap and the CUDA cache)."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class Offloader:
    """Keeps components on the CPU and brings the one in use to the device (medvram) or block by block (lowvram)."""

    def __init__(self, plan: DevicePlan):
        self.plan = plan
        self._active = None
        self._hooked: set[int] = set()
        self._swapped: set[int] = set()  # ids of the components that wait on the CPU and are swapped in by use()

    def place(self, module, sdxl: bool = False) -> None:
        """Initial placement of a freshly loaded component (``sdxl``: of an SDXL model, for ``--medvram-sdxl``)."""
        mode = self.plan.offload
        if mode == "medvram" or (mode == "medvram-sdxl" and sdxl):
            self._swapped.add(id(module))
        elif mode == "lowvram":
            self._hook_blocks(module)
        else:
            self._swapped.discard(id(module))
            module.to(self.plan.device)

    @contextlib.contextmanager
    def use(self, module):
        """Context in which ``module`` is on the compute device."""
        if id(module) in self._swapped and self._active is not module:
            if self._active is not None:
                self._active.to("cpu")
            module.to(self.plan.device)
            self._active = module
        yield module

    def release(self, module) -> None:
        if self._active is module:
            self._active = None

    def _hook_blocks(self, module) -> None:
        import torch

        if id(module) in self._hooked:
            return
        self._hooked.add(id(module))
        device = self.plan.device

        def move(value):
            return value.to(device) if isinstance(value, torch.Tensor) else value

        def before(block, args, kwargs):  # inputs too: diffusers passes hidden states and the context by keyword
            block.to(device)
            return tuple(move(a) for a in args), {k: move(v) for k, v in kwargs.items()}

        def after(block, args, output):
            block.to("cpu")
            return output

        for block in _blocks(module):
            block.register_forward_pre_hook(before, with_kwargs=True)
            block.register_forward_hook(after)


def _blocks(module):
    """Units for block-by-block offload: members of ModuleLists, and other children, split further while they hold a
    ModuleList (a CLIP text model's layers sit two levels down, and its forward is not what the encoder calls)."""
    import torch

    for child in module.children():
        if isinstance(child, torch.nn.ModuleList):
            yield from child
        elif any(True for _ in child.parameters()):
            if any(isinstance(c, torch.nn.ModuleList) for c in child.modules()):
                yield from _blocks(child)
            else:
                yield child
