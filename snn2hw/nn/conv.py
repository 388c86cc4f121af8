"""Convolutional spiking layers, spike dropout and flattening, each describing itself in IR terms.

Tensor convention (the whole ``SpikingSequential`` stack): spikes are **flat** ``(batch, T, C*H*W)``
tensors, the C-order flattening of each (C, H, W) image (``c * H * W + y * W + x``), which is exactly the
flat index of an IR population. Conv layers therefore take their image shape as ``in_shape=(C, H, W)``
and return flat spikes; a following ``LIFDense`` takes ``prod(C, H, W)`` inputs directly (``Flatten``
is an identity kept for readability). For convenience, conv layers and ``Flatten`` also accept
``(batch, T, C, H, W)`` and flatten it.

- ``ConvLIF``: a ``Conv2d`` hop (the hardware's one-step delay) into a CUBA-LIF population of shape
  (out_channels, H_out, W_out); trainable kernel (out_ch, in_ch/groups, kh, kw), one bias per channel.
- ``SumPoolLIF``: sum pooling (a fixed all-ones kernel per channel, ``ir.sum_pool2d``: a depthwise
  ``Conv2d``, which Lava runs as a Conv) into a CUBA-LIF population.
- ``Flatten``: identity on flat spikes; no IR node.
- ``Dropout``: spike dropout while training only; identity in the IR and in eval mode.

Quantization-aware mode (``qat`` set to a ``QuantConfig``) works as in ``LIFDense``: the layer is
quantized with the compiler's ``quantize_population`` (a convolution gets ``weight_exp = 0``; a larger
exponent is folded into the population's scale), the integer forward runs the simulator's functions
(``hw.conv_accumulate_exact``, ``hw.conv_output``, ``hw.synaptic_output``, ``hw.lif_scan``), and
gradients pass straight through the rounding along the float relaxation.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from snn2hw.hw import loihi2 as hw
from snn2hw.ir import LIF, Conv2d, Dense, Population, _pair, conv_output_hw, sum_pool2d
from snn2hw.nn import functional as F
from snn2hw.nn.neuron import float_neuron_args, init_decays, init_threshold, qat_neuron_args
from snn2hw.nn.surrogate import get_surrogate
from snn2hw.quantize import QuantConfig, dequantize_weights, quantize_population


def _hop_delay(a: torch.Tensor, steps: int = 1) -> torch.Tensor:
    from snn2hw.nn.layers import hop_delay  # layers imports this module at its end

    return hop_delay(a, steps)


def _flat(s: torch.Tensor) -> torch.Tensor:
    """(batch, T, C, H, W) -> (batch, T, C*H*W); flat input passes unchanged."""
    if s.dim() == 5:
        return s.reshape(s.shape[0], s.shape[1], -1)
    if s.dim() != 3:
        raise ValueError(f"spikes must be (batch, T, n) or (batch, T, C, H, W), got shape {tuple(s.shape)}")
    return s


class HopLIF(nn.Module):
    """One projection hop (one-step delay) into a CUBA-LIF population; subclasses define the hop.

    Subclasses set ``in_features``/``out_features`` and implement ``projection(name, src, dst)`` (the
    float IR projection), ``_current(s_in, weight)`` (float synaptic input before the delay),
    ``_int_current(s_in, qproj)`` (the integer one, as the simulator computes it) and ``_hop_weight()``
    (the float weight that ``projection`` holds; a trainable parameter or a fixed buffer).
    """

    qat: QuantConfig | None = None
    record_int_state: bool = False  # QAT: keep the integer (u, v) traces in ``last_int_state``
    spiking: bool = True

    def _init_neuron(self, size: int, n_bias: int, du: float, dv: float, v_th: float, bias: bool,
                     train_decays: bool, surrogate: str, surrogate_scale: float, detach_reset: bool,
                     train_threshold: bool = False):
        self.out_features = int(size)
        init_threshold(self, v_th, train_threshold)
        self.surrogate_name, self.surrogate_scale = surrogate, float(surrogate_scale)
        self.surrogate = get_surrogate(surrogate, scale=surrogate_scale)
        self.detach_reset = detach_reset
        self.bias = nn.Parameter(torch.zeros(n_bias)) if bias else None
        init_decays(self, du, dv, train_decays)

    def _neuron_config(self) -> dict:
        return {"du": float(self.du.detach()), "dv": float(self.dv.detach()), "v_th": self.v_th, "bias": self.bias is not None,
                "train_decays": isinstance(self.du, nn.Parameter), "surrogate": self.surrogate_name,
                "surrogate_scale": self.surrogate_scale, "detach_reset": self.detach_reset,
                "train_threshold": isinstance(self.threshold, nn.Parameter)}

    @property
    def v_th(self) -> float:
        return float(self.threshold.detach())

    # -- per-neuron bias (a conv layer trains one bias per channel) ----------------------------------------
    def neuron_bias(self) -> torch.Tensor | None:
        if self.bias is None:
            return None
        reps = self.out_features // self.bias.numel()
        return self.bias if reps == 1 else self.bias.repeat_interleave(reps)

    def population(self, name: str) -> Population:
        b = self.neuron_bias()
        bias = b.detach().cpu().double().numpy() if b is not None else np.zeros(self.out_features)
        return Population(name, self.out_features, LIF(float(self.du.detach().clamp(0, 1)), float(self.dv.detach().clamp(0, 1)),
                                                       self.v_th, bias, self.spiking))

    def quantize(self, config: QuantConfig = QuantConfig()):
        """(integer population, integer projection, report) exactly as the compiler would make them."""
        qpop, (qproj,), report = quantize_population(self.population("lif"), (self.projection("hop", "in", "lif"),),
                                                     config)
        return qpop, qproj, report

    # -- forward ------------------------------------------------------------------------------------------
    def _neuron_float(self, a: torch.Tensor, alpha, beta, v_th, bias, delay: int = 0) -> torch.Tensor:
        return F.cuba_lif_sequence(a, alpha, beta, v_th, bias, self.surrogate, detach_reset=self.detach_reset,
                                   delay=delay)

    def forward(self, s_in: torch.Tensor) -> torch.Tensor:
        s_in = _flat(s_in)
        if self.qat is not None:
            return self._forward_qat(s_in)
        a = self._current(s_in, self._hop_weight())  # the one-step hop delay: applied by the neuron operator
        alpha, beta, v_th = float_neuron_args(self, a)
        bias = self.neuron_bias()
        if bias is None:
            bias = torch.zeros((), device=a.device, dtype=a.dtype)
        return self._neuron_float(a, alpha, beta, v_th, bias, delay=1)

    def _forward_qat(self, s_in: torch.Tensor) -> torch.Tensor:
        qpop, qproj, report = self.quantize(self.qat)
        n, dev, dtype = qpop.neuron, s_in.device, s_in.dtype
        keep = self.record_int_state or not self.spiking
        # exact integer path: what the simulator (and Lava) compute for this layer
        with torch.no_grad():
            a_int = _hop_delay(hw.synaptic_output(self._int_current(s_in.detach(), qproj), qproj.weight_exp,
                                                  graded=False))
            bias_eff = hw.effective_bias(torch.as_tensor(n.bias_mant, device=dev),
                                         torch.as_tensor(n.bias_exp, device=dev))
            s_int, u_int, v_int = hw.lif_scan(a_int, n.du, n.dv, hw.effective_threshold(n.vth), bias_eff,
                                              keep_state=keep)
            self.last_int_state = (u_int, v_int) if self.record_int_state else None
        # gradient path: the float relaxation with straight-through (dequantized) parameters
        k = report.scale
        w = self._hop_weight()
        w_deq = dequantize_weights(torch.as_tensor(qproj.weight, device=dev, dtype=dtype), k, qproj.weight_exp)
        w_ste = w + (w_deq.reshape(w.shape) - w).detach()
        alpha, beta, v_th, bias = qat_neuron_args(self, n, bias_eff, k, self.neuron_bias(), w_ste)
        out_float = self._neuron_float(_hop_delay(self._current(s_in, w_ste)), alpha, beta, v_th, bias)
        out_int = s_int.to(dtype) if self.spiking else v_int.to(dtype) / k
        return out_float + (out_int - out_float).detach()


class _ConvHop(HopLIF):
    """A ``Conv2d`` hop: geometry shared by ``ConvLIF`` and ``SumPoolLIF``."""

    def _init_geometry(self, in_shape, out_channels: int, kernel_size, stride, padding, dilation, groups: int):
        self.in_shape = tuple(int(d) for d in in_shape)
        if len(self.in_shape) != 3:
            raise ValueError(f"in_shape must be (C, H, W), got {in_shape!r}")
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride, self.padding, self.dilation = (_pair(stride, "stride"), _pair(padding, "padding"),
                                                    _pair(dilation, "dilation"))
        self.groups = int(groups)
        if self.in_shape[0] % self.groups or out_channels % self.groups:
            raise ValueError(f"groups {groups} must divide in channels {self.in_shape[0]} and out channels {out_channels}")
        h, w = conv_output_hw(self.in_shape[1:], self.kernel_size, self.stride, self.padding, self.dilation)
        if h < 1 or w < 1:
            raise ValueError(f"kernel {self.kernel_size} does not fit the padded input {self.in_shape}")
        self.out_shape = (int(out_channels), int(h), int(w))
        self.in_features = int(np.prod(self.in_shape))
        return int(np.prod(self.out_shape))

    def _geometry_config(self) -> dict:
        return {"in_shape": list(self.in_shape), "kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": list(self.padding)}

    def _current(self, s_in: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        batch, steps = s_in.shape[:2]
        img = s_in.reshape(batch * steps, *self.in_shape).to(weight.dtype)
        out = torch.nn.functional.conv2d(img, weight, stride=self.stride, padding=self.padding,
                                         dilation=self.dilation, groups=self.groups)
        return out.reshape(batch, steps, self.out_features)  # not -1: a block of 0 steps is (batch, 0, N)

    def dense_equivalent(self, dtype: torch.dtype | None = None):
        """(``LIFDense`` twin, kernel leaf, matrix): the layer with its hop written as an (N_out, N_in) matrix and the
        same neuron, the kernel as a leaf (requiring grad for a conv, fixed for a pool) and the matrix as a function
        of it, so a gradient of the twin's weight gives the kernel's by the chain rule. For cross-checking rules and
        paths on conv/pool networks against dense ones."""
        from snn2hw.nn.layers import LIFDense  # layers imports this module at its end

        dtype = dtype or self._hop_weight().dtype
        kernel = self._hop_weight().detach().clone().requires_grad_(isinstance(self, ConvLIF))
        matrix = self._current(torch.eye(self.in_features, dtype=dtype).unsqueeze(0), kernel)[0].t()
        dense = LIFDense(self.in_features, matrix.shape[0], du=float(self.du), dv=float(self.dv), v_th=self.v_th,
                         bias=getattr(self, "bias", None) is not None).to(dtype)
        with torch.no_grad():
            dense.weight.copy_(matrix)
            dense.du.copy_(self.du)
            dense.dv.copy_(self.dv)
            if dense.bias is not None:
                dense.bias.copy_(self.neuron_bias())
        if isinstance(self, SumPoolLIF):
            dense.weight.requires_grad_(False)  # the pool's kernel is fixed
        return dense, kernel, matrix

    def _int_current(self, s_in: torch.Tensor, qproj) -> torch.Tensor:
        """Lava Conv's output, as the simulator computes it (binary spikes: any non-zero payload is a spike)."""
        batch, steps = s_in.shape[:2]
        img = (s_in != 0).reshape(batch * steps, *self.in_shape)
        kernel = torch.as_tensor(np.asarray(qproj.weight, dtype=np.int64), device=s_in.device)
        acc = hw.conv_accumulate_exact(img, kernel, qproj.stride, qproj.padding, qproj.dilation, qproj.groups, 1)
        return hw.conv_output(acc).reshape(batch, steps, -1)


class ConvLIF(_ConvHop):
    """2-D convolution hop (one-step delay) into a CUBA-LIF population of shape (out_channels, H_out, W_out).

    Input: flat spikes (batch, T, prod(in_shape)) (or (batch, T, C, H, W)); output: flat spikes
    (batch, T, prod(out_shape)) in C order. ``weight`` (out_ch, in_ch/groups, kh, kw), PyTorch orientation
    (cross-correlation), as the IR's ``Conv2d``. ``bias`` is one trainable value per output channel.
    ``du``/``dv``/``v_th``/``train_decays``/surrogate arguments as ``LIFDense``.
    """

    def __init__(self, in_shape, out_channels: int, kernel_size, stride=1, padding=0, dilation=1, groups: int = 1,
                 du: float = 0.2, dv: float = 0.1, v_th: float = 1.0, bias: bool = False, train_decays: bool = False,
                 surrogate: str = "fast_sigmoid", surrogate_scale: float = 10.0, weight_gain: float = 1.0,
                 detach_reset: bool = True,
                 train_threshold: bool = False):
        super().__init__()
        size = self._init_geometry(in_shape, out_channels, kernel_size, stride, padding, dilation, groups)
        self._init_neuron(size, out_channels, du, dv, v_th, bias, train_decays, surrogate, surrogate_scale, detach_reset,
                          train_threshold)
        fan_in = self.in_shape[0] // self.groups * self.kernel_size[0] * self.kernel_size[1]
        bound = weight_gain * v_th / math.sqrt(fan_in)
        self.weight = nn.Parameter(torch.empty(out_channels, self.in_shape[0] // self.groups,
                                               *self.kernel_size).uniform_(-bound, bound))

    @property
    def out_channels(self) -> int:
        return self.out_shape[0]

    def config(self) -> dict:
        return {"layer": "ConvLIF", **self._geometry_config(), "out_channels": self.out_channels,
                "dilation": list(self.dilation), "groups": self.groups, **self._neuron_config()}

    def _hop_weight(self) -> torch.Tensor:
        return self.weight

    def projection(self, name: str, src: str, dst: str) -> Conv2d:
        return Conv2d(name, src, dst, self.weight.detach().cpu().double().numpy(), self.in_shape, self.out_shape,
                      self.stride, self.padding, self.dilation, self.groups)


class SumPoolLIF(_ConvHop):
    """Sum pooling hop (fixed all-ones kernel per channel; one-step delay) into a CUBA-LIF population.

    In the IR it is ``ir.sum_pool2d``: a depthwise ``Conv2d`` (groups = C) with an all-ones kernel, which
    Lava runs as a Conv. ``stride`` defaults to the kernel size. Trainable: bias (per channel) and the
    decays when asked; the kernel is a fixed buffer. Choose ``v_th`` relative to the kernel area (a
    kxk pool of one step's spikes delivers at most k*k).
    """

    def __init__(self, in_shape, kernel_size, stride=None, padding=0, du: float = 0.2, dv: float = 0.1,
                 v_th: float = 1.0, bias: bool = False, train_decays: bool = False, surrogate: str = "fast_sigmoid",
                 surrogate_scale: float = 10.0, detach_reset: bool = True,
                 train_threshold: bool = False):
        super().__init__()
        kernel = _pair(kernel_size, "kernel_size")
        c = int(in_shape[0])
        size = self._init_geometry(in_shape, c, kernel, kernel if stride is None else stride, padding, 1, c)
        self._init_neuron(size, c, du, dv, v_th, bias, train_decays, surrogate, surrogate_scale, detach_reset,
                          train_threshold)
        self.register_buffer("weight", torch.ones(c, 1, *kernel), persistent=False)

    def config(self) -> dict:
        return {"layer": "SumPoolLIF", **self._geometry_config(), **self._neuron_config()}

    def _hop_weight(self) -> torch.Tensor:
        return self.weight

    def projection(self, name: str, src: str, dst: str) -> Conv2d:
        return sum_pool2d(name, src, dst, self.in_shape, self.kernel_size, self.stride, self.padding, weight=1.0)


class Flatten(nn.Module):
    """Identity on flat spikes (batch, T, n); flattens (batch, T, C, H, W). No IR node: populations are
    already flat (C-order), so the next ``LIFDense`` takes ``prod(C, H, W)`` inputs."""

    qat: QuantConfig | None = None

    def config(self) -> dict:
        return {"layer": "Flatten"}

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return _flat(s)


class Dropout(nn.Module):
    """Spike dropout while training: each spike is dropped with probability ``p``. Identity in eval mode
    and in the IR (nothing runs on hardware).

    In float training survivors are scaled by 1/(1 - p) (inverted dropout: the expected drive equals the
    deployed network's). In QAT mode the spikes stay binary (masked, not scaled), because the integer
    path of the next layer takes binary spikes as the hardware does.
    """

    qat: QuantConfig | None = None

    def __init__(self, p: float = 0.1):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must lie in [0, 1), got {p}")
        self.p = float(p)

    def config(self) -> dict:
        return {"layer": "Dropout", "p": self.p}

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return s
        keep = (torch.rand_like(s) >= self.p).to(s.dtype)
        return s * keep if self.qat is not None else s * keep / (1.0 - self.p)


class LeakyReadout(HopLIF):
    """Non-spiking leaky read-out: a Dense hop (one-step delay) into CUBA neurons whose v is the output.

    Training: ``functional.leaky_readout_sequence`` (no threshold, no reset); ``forward`` returns v
    (batch, T, out_features). IR: ``LIF(..., v_th=v_scale, spiking=False)``; the quantizer takes the scale
    from ``v_scale`` (v = ``v_scale`` gets ``threshold_target`` integer units, i.e. 128x headroom below
    the 24-bit v limit at the default target) and deploys the population as a LIF with the maximum
    threshold ``vth = 2**17 - 1``, which never fires while |v| < ~128 * v_scale. On hardware read v with
    ``run(..., record_state=[name])`` and divide ``RunResult.v[name]`` by the layer's scale
    (``quantize(...)[2].scale``) for float units; QAT mode returns exactly that.
    """

    spiking = False

    def __init__(self, in_features: int, out_features: int, du: float = 0.2, dv: float = 0.1, v_scale: float = 1.0,
                 bias: bool = False, train_decays: bool = False, weight_gain: float = 1.0):
        super().__init__()
        self.in_features = int(in_features)
        self._init_neuron(out_features, out_features, du, dv, v_scale, bias, train_decays, "fast_sigmoid", 10.0, True)
        bound = weight_gain / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(out_features, in_features).uniform_(-bound, bound))

    @property
    def v_scale(self) -> float:
        return self.v_th

    def config(self) -> dict:
        return {"layer": "LeakyReadout", "in_features": self.in_features, "out_features": self.out_features,
                "du": float(self.du.detach()), "dv": float(self.dv.detach()), "v_scale": self.v_th, "bias": self.bias is not None,
                "train_decays": isinstance(self.du, nn.Parameter)}

    def _hop_weight(self) -> torch.Tensor:
        return self.weight

    def projection(self, name: str, src: str, dst: str) -> Dense:
        return Dense(name, src, dst, self.weight.detach().cpu().double().numpy())

    def _current(self, s_in: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.spike_linear(s_in, weight)

    def _int_current(self, s_in: torch.Tensor, qproj) -> torch.Tensor:
        w = hw.prepare_weights(torch.as_tensor(qproj.weight, device=s_in.device), hw.SignMode(qproj.sign_mode),
                               qproj.num_weight_bits)
        return hw.accumulate_exact(s_in, w.t().to(hw.accumulation_dtype(w, 1)))

    def _neuron_float(self, a: torch.Tensor, alpha, beta, v_th, bias, delay: int = 0) -> torch.Tensor:
        return F.leaky_readout_sequence(_hop_delay(a, delay), alpha, beta, bias)
