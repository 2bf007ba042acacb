"""Convolutions whose weights stay in oneDNN's blocked layout between calls, on CPUs with native bf16.

A bf16 convolution on such a CPU (AMX tiles) runs on a weight layout blocked for the tiles. ``F.conv2d`` gets the
plain tensor each call and oneDNN re-lays it out every time: measured on an SD1.5-size UNet step at 256², those
reorders took 29% of the step (docs/performance.md). :func:`pack_convolutions` makes each ``nn.Conv2d`` of a model
keep the blocked copy it computed last, and reuse it while the weight tensor, its version counter (bumped by every
in-place write: a LoRA patched in or restored, a checkpoint loaded into the same memory) and the input's shape stay
the same (the layout oneDNN picks depends on batch × height × width); anything else computes it again. Calls that
need gradients, other dtypes or devices, other padding modes, or that torch.compile traces run the plain
convolution. The blocked copies cost as much memory as the convolution weights they mirror.
"""
from __future__ import annotations

import torch
from torch import nn


class PackedConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` that keeps its weight in oneDNN's blocked layout for the input shape it last saw."""

    _packed: tuple | None = None  # (key, blocked weight) of the last packed call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if not self._packable(x, weight):
            return super().forward(x)
        key = (weight.data_ptr(), weight._version, weight.dtype, tuple(x.shape))
        packed = self._packed
        if packed is None or packed[0] != key:
            blocked = torch._C._nn.mkldnn_reorder_conv2d_weight(
                weight.detach().to_mkldnn(), list(self.padding), list(self.stride), list(self.dilation), self.groups,
                list(x.shape))
            packed = self._packed = (key, blocked)
        return torch.ops.mkldnn._convolution_pointwise(
            x, packed[1], self.bias, list(self.padding), list(self.stride), list(self.dilation), self.groups,
            "none", [], "")

    def _packable(self, x: torch.Tensor, weight: torch.Tensor) -> bool:
        if torch.compiler.is_compiling():  # --compile: the graph gets the plain convolution, inductor lowers it
            return False
        grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                            or (self.bias is not None and self.bias.requires_grad))
        return (not grad and x.dim() == 4 and x.device.type == "cpu" and weight.device.type == "cpu"
                and x.dtype == weight.dtype == torch.bfloat16 and (self.bias is None or self.bias.dtype == x.dtype)
                and self.padding_mode == "zeros" and not isinstance(self.padding, str))


def pack_convolutions(model: nn.Module) -> int:
    """Make every plain ``nn.Conv2d`` of ``model`` a :class:`PackedConv2d`, in place (the same module objects, so
    their parameters, names and hooks stay); the number changed."""
    count = 0
    for module in model.modules():
        if type(module) is nn.Conv2d:
            module.__class__ = PackedConv2d
            count += 1
    return count
