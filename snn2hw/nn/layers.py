"""Spiking layers for training, each describing itself in IR terms (``to_ir``).

``LIFDense`` is one Loihi hop plus its target population: a Dense projection (with the hardware's
one-step delay) into a CUBA-LIF population. ``RecurrentLIFDense`` adds a recurrent projection from the
population to itself (also a one-step Dense hop on the chip). ``SpikingSequential`` stacks them into a
network whose IR graph runs unchanged on the simulator (and, without recurrent layers, on Lava).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from snn2hw.hw import loihi2 as hw
from snn2hw.ir import LIF, Dense, Graph, Input, Population
from snn2hw.nn import functional as F
from snn2hw.nn.recurrent import recurrent_cuba_lif_sequence
from snn2hw.nn.neuron import float_neuron_args, init_decays, init_threshold, qat_neuron_args
from snn2hw.nn.surrogate import get_surrogate
from snn2hw.quantize import QuantConfig, dequantize_weights, quantize_population


def hop_delay(a: torch.Tensor, steps: int = 1) -> torch.Tensor:
    """Delay a (batch, T, n) sequence by ``steps``: what the hardware's Dense hop does."""
    if steps == 0:
        return a
    return torch.nn.functional.pad(a, (0, 0, steps, 0))[:, : a.shape[1]]


class LIFDense(nn.Module):
    """Dense projection (one-step hop) into a CUBA-LIF population.

    ``du``/``dv`` are the per-step decay fractions of current and voltage (see ``snn2hw.ir``);
    they, the bias and the threshold are trainable when ``train_decays``/``bias``/``train_threshold`` say so.
    The input product ``s_in @ W^T`` is ``functional.spike_linear``: on CPU, over the input's nonzeros
    (spikes) when it is sparse enough, else the GEMM (``snn2hw.nn.spike_dense``).

    Quantization-aware mode (``qat`` set to a ``QuantConfig``): the forward pass quantizes the layer
    with the compiler's own ``quantize_population`` and runs the integer arithmetic of
    ``snn2hw.hw.loihi2``, so its spikes are exactly the deployed network's; gradients flow straight
    through the rounding to the float parameters, along the float relaxation driven by the same
    (hardware) input spikes.
    """

    qat: QuantConfig | None = None
    record_int_state: bool = False  # QAT: keep the integer (u, v) traces in ``last_int_state``

    def __init__(self, in_features: int, out_features: int, du: float = 0.2, dv: float = 0.1,
                 v_th: float = 1.0, bias: bool = False, train_decays: bool = False,
                 surrogate: str = "fast_sigmoid", surrogate_scale: float = 10.0, weight_gain: float = 1.0,
                 detach_reset: bool = True, train_threshold: bool = False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        init_threshold(self, v_th, train_threshold)
        self.surrogate_name, self.surrogate_scale = surrogate, float(surrogate_scale)
        self.surrogate = get_surrogate(surrogate, scale=surrogate_scale)
        self.detach_reset = detach_reset
        bound = weight_gain * v_th / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(out_features, in_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        init_decays(self, du, dv, train_decays)

    def config(self) -> dict:
        return {
            "in_features": self.in_features, "out_features": self.out_features,
            "du": float(self.du), "dv": float(self.dv), "v_th": self.v_th, "bias": self.bias is not None,
            "train_decays": isinstance(self.du, nn.Parameter), "surrogate": self.surrogate_name,
            "surrogate_scale": self.surrogate_scale, "detach_reset": self.detach_reset,
            "train_threshold": isinstance(self.threshold, nn.Parameter),
        }

    @property
    def v_th(self) -> float:
        return float(self.threshold.detach())

    def forward(self, s_in: torch.Tensor) -> torch.Tensor:
        if self.qat is not None:
            return self._forward_qat(s_in)
        a = F.spike_linear(s_in, self.weight)  # the hop's one-step delay is applied by the operator (no shifted copy)
        alpha, beta, v_th = float_neuron_args(self, a)
        bias = self.bias if self.bias is not None else torch.zeros((), device=a.device, dtype=a.dtype)
        return F.cuba_lif_sequence(a, alpha, beta, v_th, bias, self.surrogate, detach_reset=self.detach_reset, delay=1)

    def quantize(self, config: QuantConfig = QuantConfig()):
        """(integer population, integer projection, report) exactly as the compiler would make them."""
        pop = self.population("lif")
        proj = Dense("fc", "in", "lif", self.weight.detach().cpu().double().numpy())
        qpop, (qproj,), report = quantize_population(pop, (proj,), config)
        return qpop, qproj, report

    def _forward_qat(self, s_in: torch.Tensor) -> torch.Tensor:
        qpop, qproj, report = self.quantize(self.qat)
        n, dev, dtype = qpop.neuron, s_in.device, s_in.dtype
        # exact integer path: what the simulator and Lava compute for this layer
        with torch.no_grad():
            w = hw.prepare_weights(torch.as_tensor(qproj.weight, device=dev), hw.SignMode(qproj.sign_mode),
                                   qproj.num_weight_bits)
            acc = hw.accumulate_exact(s_in.detach(), w.t().to(hw.accumulation_dtype(w, 1)))
            a_int = hop_delay(hw.synaptic_output(acc, qproj.weight_exp, graded=False))
            bias_eff = hw.effective_bias(torch.as_tensor(n.bias_mant, device=dev), torch.as_tensor(n.bias_exp, device=dev))
            s_int, u_int, v_int = hw.lif_scan(a_int, n.du, n.dv, hw.effective_threshold(n.vth), bias_eff,
                                              keep_state=self.record_int_state)
            self.last_int_state = (u_int, v_int) if self.record_int_state else None
        # gradient path: the float relaxation with straight-through (dequantized) parameters
        k = report.scale
        w_deq = dequantize_weights(torch.as_tensor(qproj.weight, device=dev, dtype=dtype), k, qproj.weight_exp)
        w_ste = self.weight + (w_deq - self.weight).detach()
        alpha, beta, v_th, bias = qat_neuron_args(self, n, bias_eff, k, self.bias, w_ste)
        s_float = F.cuba_lif_sequence(hop_delay(F.spike_linear(s_in, w_ste)), alpha, beta, v_th, bias, self.surrogate,
                                      detach_reset=self.detach_reset)
        return s_float + (s_int.to(dtype) - s_float).detach()

    def population(self, name: str) -> Population:
        bias = self.bias.detach().cpu().double().numpy() if self.bias is not None else np.zeros(self.out_features)
        return Population(name, self.out_features, LIF(float(self.du.clamp(0, 1)), float(self.dv.clamp(0, 1)), self.v_th, bias))


class SpikingSequential(nn.Module):
    """A stack of layers; input spikes (batch, T, n_in) -> output spikes (or v of a final ``LeakyReadout``).

    Layer kinds (``LAYER_KINDS``): ``LIFDense``, ``RecurrentLIFDense`` and, from ``snn2hw.nn.conv``,
    ``ConvLIF``, ``SumPoolLIF``, ``Flatten``, ``Dropout``, ``LeakyReadout``. Spikes between layers are
    flat (batch, T, n) tensors; a conv layer's n is the C-order flattening of its (C, H, W) image, the
    IR population's own index (``snn2hw.nn.conv`` documents the convention).

    Its ``config()`` lists each layer's config; every layer but ``LIFDense`` carries its kind under
    ``"layer"`` (a config without a ``layer`` key is a ``LIFDense``), which is how ``from_config`` and
    ``snn2hw.train.checkpoint.load_checkpoint`` rebuild the right layer.
    """

    def __init__(self, layers: list[LIFDense]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    @classmethod
    def build(cls, sizes: list[int], **layer_kwargs) -> "SpikingSequential":
        return cls([LIFDense(a, b, **layer_kwargs) for a, b in zip(sizes[:-1], sizes[1:])])

    @classmethod
    def from_config(cls, config: dict) -> "SpikingSequential":
        layers = []
        for c in config["layers"]:
            c = dict(c)
            kind = c.pop("layer", "LIFDense")
            if kind not in LAYER_KINDS:
                raise ValueError(f"unknown layer kind {kind!r}; known: {', '.join(sorted(LAYER_KINDS))}")
            layers.append(LAYER_KINDS[kind](**c))
        return cls(layers)

    def config(self) -> dict:
        return {"kind": "SpikingSequential", "layers": [l.config() for l in self.layers]}

    def set_qat(self, config: QuantConfig | None = QuantConfig()) -> "SpikingSequential":
        """Switch quantization-aware mode on (a ``QuantConfig``) or off (``None``) for every layer."""
        for layer in self.layers:
            layer.qat = config
        return self

    def forward(self, x: torch.Tensor, return_all: bool = False):
        outs = []
        for layer in self.layers:
            x = layer(x)
            outs.append(x)
        return outs if return_all else x

    def to_ir(self, dt: float = 1e-3) -> Graph:
        """The float IR graph of this network: input ``in``, populations ``lif1..`` numbered in order over
        the layers that have one (``Flatten`` and ``Dropout`` add no IR node), each fed by ``fc<i>``
        (Dense: ``LIFDense``, ``RecurrentLIFDense``, ``LeakyReadout``), ``conv<i>`` (``ConvLIF``) or
        ``pool<i>`` (``SumPoolLIF``), plus ``rec<i>`` from ``lif<i>`` to itself for a recurrent layer.
        A ``LeakyReadout`` (non-spiking) must be the last such layer; read its v with ``record_state``."""
        pop_layers = [layer for layer in self.layers if not isinstance(layer, (_conv.Flatten, _conv.Dropout))]
        if not pop_layers:
            raise ValueError("the network has no layer with a population")
        if any(isinstance(layer, _conv.LeakyReadout) for layer in pop_layers[:-1]):
            raise ValueError("a LeakyReadout (non-spiking) must be the network's last layer")
        inputs = (Input("in", pop_layers[0].in_features),)
        pops, projs, prev = [], [], "in"
        prefixes = {_conv.ConvLIF: "conv", _conv.SumPoolLIF: "pool"}
        for i, layer in enumerate(pop_layers, start=1):
            pops.append(layer.population(f"lif{i}"))
            if isinstance(layer, _conv.HopLIF):
                projs.append(layer.projection(f"{prefixes.get(type(layer), 'fc')}{i}", prev, f"lif{i}"))
            else:
                projs.append(Dense(f"fc{i}", prev, f"lif{i}", layer.weight.detach().cpu().double().numpy()))
            if isinstance(layer, RecurrentLIFDense):
                projs.append(layer.recurrent_projection(f"rec{i}", f"lif{i}"))
            prev = f"lif{i}"
        return Graph(inputs, tuple(pops), tuple(projs), (prev,), dt).validate()


class RecurrentLIFDense(LIFDense):
    """Dense input hop + recurrent projection (population to itself) into a CUBA-LIF population.

    ``a[t] = W s_in[t-1] + V s[t-1]``: both projections are one-step Dense hops, as on the chip, so the IR
    holds two ``Dense`` projections into the population (``fc`` from the previous layer, ``rec`` from the
    population to itself) and the quantizer gives both one population scale. ``rec_weight`` is V (n, n),
    ``rec_weight[i, j]`` from neuron j to neuron i; ``rec_mask`` (optional 0/1 (n, n) buffer: block or
    sparse connectivity) fixes which entries exist (``True``: a placeholder filled by ``load_state_dict``).
    ``rec_gain`` scales V's initialisation like ``weight_gain`` scales W's. ``rec_weight_scale`` (c)
    reparameterises V = c * ``rec_weight``: with Adam-type optimizers V then moves c times slower than W
    (all n**2 recurrent weights receive correlated gradients, and at the feed-forward learning rate they
    drive the population into runaway excitation within an epoch; c = 0.05 trains well on Braille).

    Quantization-aware mode quantizes ``fc`` and ``rec`` together with ``quantize_population`` and runs the
    integer step (``snn2hw.hw.loihi2``) one step at a time, feeding back the integer spikes, so its spikes
    (and ``last_int_state``) equal the simulator's; gradients as in ``LIFDense``.
    """

    def __init__(self, in_features: int, out_features: int, du: float = 0.2, dv: float = 0.1,
                 v_th: float = 1.0, bias: bool = False, train_decays: bool = False,
                 surrogate: str = "fast_sigmoid", surrogate_scale: float = 10.0, weight_gain: float = 1.0,
                 detach_reset: bool = True, rec_gain: float = 0.5,
                 rec_mask: "torch.Tensor | bool | None" = None, rec_weight_scale: float = 1.0,
                 train_threshold: bool = False):
        super().__init__(in_features, out_features, du=du, dv=dv, v_th=v_th, bias=bias,
                         train_decays=train_decays, surrogate=surrogate, surrogate_scale=surrogate_scale,
                         weight_gain=weight_gain, detach_reset=detach_reset, train_threshold=train_threshold)
        self.rec_gain = float(rec_gain)
        self.rec_weight_scale = float(rec_weight_scale)
        if not self.rec_weight_scale > 0:
            raise ValueError(f"rec_weight_scale must be positive, got {rec_weight_scale}")
        bound = self.rec_gain * self.v_th / math.sqrt(out_features) / self.rec_weight_scale
        self.rec_weight = nn.Parameter(torch.empty(out_features, out_features).uniform_(-bound, bound))
        if rec_mask is None or rec_mask is False:
            self.rec_mask = None
        else:
            mask = torch.ones(out_features, out_features) if rec_mask is True else torch.as_tensor(rec_mask).float()
            if tuple(mask.shape) != (out_features, out_features) or not ((mask == 0) | (mask == 1)).all():
                raise ValueError(f"rec_mask must be a 0/1 tensor of shape ({out_features}, {out_features})")
            self.register_buffer("rec_mask", mask.clone())
            with torch.no_grad():
                self.rec_weight.mul_(self.rec_mask)

    def config(self) -> dict:
        return {"layer": "RecurrentLIFDense", **super().config(), "rec_gain": self.rec_gain,
                "rec_mask": self.rec_mask is not None, "rec_weight_scale": self.rec_weight_scale}

    def effective_rec_weight(self) -> torch.Tensor:
        """V = rec_weight_scale * rec_weight, masked: the recurrent weights the network uses (and the IR holds)."""
        v = self.rec_weight if self.rec_weight_scale == 1.0 else self.rec_weight * self.rec_weight_scale
        return v if self.rec_mask is None else v * self.rec_mask

    def recurrent_projection(self, name: str, population: str) -> Dense:
        return Dense(name, population, population, self.effective_rec_weight().detach().cpu().double().numpy())

    def _neuron_args(self, a: torch.Tensor):
        bias = self.bias if self.bias is not None else torch.zeros((), device=a.device, dtype=a.dtype)
        return (*float_neuron_args(self, a), bias)

    def forward(self, s_in: torch.Tensor) -> torch.Tensor:
        if self.qat is not None:
            return self._forward_qat(s_in)
        a = hop_delay(F.spike_linear(s_in, self.weight))
        alpha, beta, v_th, bias = self._neuron_args(a)
        v = self.rec_weight if self.rec_weight_scale == 1.0 else self.rec_weight * self.rec_weight_scale
        return recurrent_cuba_lif_sequence(a, v, alpha, beta, v_th, bias, mask=self.rec_mask,
                                           surrogate=self.surrogate, detach_reset=self.detach_reset)

    def quantize(self, config: QuantConfig = QuantConfig()):
        """(integer population, [fc, rec] integer projections, report) exactly as the compiler makes them."""
        pop = self.population("lif")
        fc = Dense("fc", "in", "lif", self.weight.detach().cpu().double().numpy())
        qpop, qprojs, report = quantize_population(pop, (fc, self.recurrent_projection("rec", "lif")), config)
        return qpop, qprojs, report

    def _forward_qat(self, s_in: torch.Tensor) -> torch.Tensor:
        qpop, (qfc, qrec), report = self.quantize(self.qat)
        n, dev, dtype = qpop.neuron, s_in.device, s_in.dtype
        batch, steps, size = s_in.shape[0], s_in.shape[1], self.out_features
        with torch.no_grad():
            # feed-forward hop for all steps at once, then the recurrent hop step by step
            w = hw.prepare_weights(torch.as_tensor(qfc.weight, device=dev), hw.SignMode(qfc.sign_mode), qfc.num_weight_bits)
            acc = hw.accumulate_exact(s_in.detach(), w.t().to(hw.accumulation_dtype(w, 1)))
            a_ff = hop_delay(hw.synaptic_output(acc, qfc.weight_exp, graded=False))
            v_w = hw.prepare_weights(torch.as_tensor(qrec.weight, device=dev), hw.SignMode(qrec.sign_mode),
                                     qrec.num_weight_bits)
            v_t = v_w.t().to(hw.accumulation_dtype(v_w, 1))
            bias_eff = hw.effective_bias(torch.as_tensor(n.bias_mant, device=dev), torch.as_tensor(n.bias_exp, device=dev))
            vth_eff = hw.effective_threshold(n.vth)
            u = torch.zeros(batch, size, dtype=torch.int64, device=dev)
            v = torch.zeros_like(u)
            s = torch.zeros(batch, size, dtype=torch.bool, device=dev)
            s_int = torch.zeros(batch, steps, size, dtype=torch.bool, device=dev)
            keep = self.record_int_state
            u_all = torch.zeros(batch, steps, size, dtype=torch.int64, device=dev) if keep else None
            v_all = torch.zeros_like(u_all) if keep else None
            for t in range(steps):
                a_t = a_ff[:, t]
                if t > 0:  # nothing has crossed the recurrent hop at step 0
                    a_rec = hw.synaptic_output(hw.accumulate_exact(s, v_t), qrec.weight_exp, graded=False)
                    a_t = hw.sum_activations([a_t, a_rec])
                u, v, s = hw.lif_step(u, v, a_t, n.du, n.dv, vth_eff, bias_eff)
                s_int[:, t] = s
                if keep:
                    u_all[:, t], v_all[:, t] = u, v
            self.last_int_state = (u_all, v_all) if keep else None
        # gradient path: the float relaxation with straight-through (dequantized) parameters
        k = report.scale
        w_deq = dequantize_weights(torch.as_tensor(qfc.weight, device=dev, dtype=dtype), k, qfc.weight_exp)
        w_ste = self.weight + (w_deq - self.weight).detach()
        v_deq = dequantize_weights(torch.as_tensor(qrec.weight, device=dev, dtype=dtype), k, qrec.weight_exp)
        v_eff = self.effective_rec_weight()
        v_ste = v_eff + (v_deq - v_eff).detach()
        alpha, beta, v_th, bias = qat_neuron_args(self, n, bias_eff, k, self.bias, w_ste)
        s_float = recurrent_cuba_lif_sequence(hop_delay(F.spike_linear(s_in, w_ste)), v_ste, alpha, beta, v_th, bias,
                                              surrogate=self.surrogate, detach_reset=self.detach_reset)
        return s_float + (s_int.to(dtype) - s_float).detach()


LAYER_KINDS = {"LIFDense": LIFDense, "RecurrentLIFDense": RecurrentLIFDense}

# snn2hw.nn.conv imports this module only inside functions, so importing it here (last) has no cycle.
from snn2hw.nn import conv as _conv  # noqa: E402

LAYER_KINDS.update({k.__name__: k for k in (_conv.ConvLIF, _conv.SumPoolLIF, _conv.Flatten, _conv.Dropout,
                                            _conv.LeakyReadout)})
