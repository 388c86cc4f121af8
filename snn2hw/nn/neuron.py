"""Per-population neuron parameters shared by every trainable layer kind (dense, recurrent, conv).

Each layer holds ``du``, ``dv`` (decay fractions), ``threshold`` and optionally a bias; these helpers give
the float operator its arguments, and in quantization-aware mode the straight-through versions whose
values are exactly the quantized hardware parameters.
"""
from __future__ import annotations

import torch
from torch import nn

from snn2hw.hw import loihi2 as hw


def init_decays(layer: nn.Module, du: float, dv: float, trainable: bool) -> None:
    """Give ``layer`` its ``du``/``dv`` decay fractions: parameters when trainable, else buffers."""
    du_t, dv_t = torch.tensor(float(du)), torch.tensor(float(dv))
    if trainable:
        layer.du, layer.dv = nn.Parameter(du_t), nn.Parameter(dv_t)
    else:
        layer.register_buffer("du", du_t)
        layer.register_buffer("dv", dv_t)


def init_threshold(layer: nn.Module, v_th: float, trainable: bool) -> None:
    """Give ``layer`` a ``threshold`` tensor: a parameter when trainable, else a buffer."""
    if not v_th > 0:
        raise ValueError(f"v_th must be positive, got {v_th}")
    t = torch.tensor(float(v_th))
    if trainable:
        layer.threshold = nn.Parameter(t)
    else:
        layer.register_buffer("threshold", t)


def float_neuron_args(layer: nn.Module, like: torch.Tensor):
    """(alpha, beta, v_th) of a layer's float neuron, as tensors that carry gradients when trainable."""
    alpha = 1.0 - layer.du.clamp(0.0, 1.0)
    beta = 1.0 - layer.dv.clamp(0.0, 1.0)
    return alpha, beta, layer.threshold.to(device=like.device, dtype=like.dtype).clamp(min=1e-6)


def qat_neuron_args(layer: nn.Module, neuron, bias_eff: torch.Tensor, scale: float, bias: torch.Tensor | None,
                    like: torch.Tensor):
    """(alpha, beta, v_th, bias) for the QAT gradient path: each float parameter carries the value its
    quantized twin has on hardware (``neuron`` is the ``LoihiLIF``, ``scale`` the population's k) and
    passes gradients straight through the rounding."""
    alpha, beta, v_th = float_neuron_args(layer, like)
    alpha = alpha + (hw.u_keep_fraction(neuron.du) - alpha).detach()
    beta = beta + (hw.v_keep_fraction(neuron.dv) - beta).detach()
    v_th = v_th + (neuron.vth * (1 << hw.THRESHOLD_SHIFT) / scale - v_th).detach()
    bias_deq = bias_eff.to(like.dtype) / scale
    bias = bias_deq if bias is None else bias + (bias_deq - bias).detach()
    return alpha, beta, v_th, bias
