"""ANN-to-SNN conversion: a conventional ONNX network -> an snn2hw ``SpikingSequential`` (rate coding).

Method (Diehl et al. 2015; Rueckauer et al. 2017, "robust" normalisation), calibrated on sample inputs:

1. ``parse`` reads the ONNX chain (``snn2hw.onnx.parse``); batch norm is folded into the layer before it.
2. The parsed ANN runs on the calibration inputs (values in [0, 1], the rates of the input spikes).
   Each ReLU layer's scale ``lam_l`` is the ``percentile``-th percentile of its positive activations.
3. Each Gemm/Conv + ReLU becomes an integrate-and-fire population (``LIFDense`` / ``ConvLIF`` with
   ``du = 1``: u is this step's input; ``dv = 0``: v integrates without leak) with weights
   ``W * lam_{l-1} / lam_l``, per-step bias ``b / lam_l`` and threshold 1, so its firing rate approximates
   ``relu(...) / lam_l`` (clipped to one spike per step). Average pooling becomes ``SumPoolLIF`` with
   threshold ``kh * kw - 1/2`` (the rate of the average). The last Gemm/MatMul (no ReLU) becomes a
   ``LeakyReadout`` without leak (du = 1, dv = 0): its v after T steps is the sum of T logit estimates,
   so the class is ``argmax v[:, -1]``. A softmax at the end is dropped (it keeps the arg-max).
4. **Reset.** Loihi 2's CUBA-LIF (and snn2hw's neuron) resets v to zero, not by subtraction: the charge
   above the threshold at a spike is lost, which lowers every rate by a factor that grows with the input
   per step. Mitigation: *threshold balancing by rate matching*. Layer by layer, the converted float SNN
   runs on the calibration inputs and the layer's threshold is scaled by (measured mean rate) / (the ANN's
   normalised mean activation, clipped to 1), a few times, so the population's mean rate matches what
   the ANN asks of it. The hop delay (one step per layer) is excluded from the measured window.

The result is an ordinary snn2hw network: ``to_ir`` -> quantize/compile -> any backend, and it can be
fine-tuned with the training engine (its layers carry surrogate gradients like any other).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch

from snn2hw.encode import regular_rate
from snn2hw.onnx.parse import (AnnChain, AvgPool, Conv, ConversionError, Flatten, Linear, UnsupportedOperatorError,
                               parse)

__all__ = ["ConversionConfig", "ConversionError", "ConversionReport", "UnsupportedOperatorError", "ann_module",
           "convert", "encode", "parse"]


@dataclass(frozen=True)
class ConversionConfig:
    steps: int = 64  # time steps the calibration (threshold balancing) and the read-out scale assume
    percentile: float = 99.9  # robust normalisation: this percentile of positive activations -> rate 1
    balance_thresholds: bool = True
    balance_iterations: int = 3
    readout_headroom_steps: int = 4  # the read-out's v stays in range for up to this many times ``steps``
    calibration_samples: int = 512


@dataclass
class ConversionReport:
    source: str
    scales: list = field(default_factory=list)  # lam_l per spiking stage
    thresholds: list = field(default_factory=list)  # final v_th per spiking layer
    target_rates: list = field(default_factory=list)  # mean normalised ANN activation per spiking layer
    rates: list = field(default_factory=list)  # mean measured SNN rate per spiking layer (after balancing)

    def as_dict(self) -> dict:
        return {k: [float(v) for v in getattr(self, k)] if k != "source" else self.source
                for k in ("source", "scales", "thresholds", "target_rates", "rates")}


def ann_module(chain: AnnChain) -> torch.nn.Sequential:
    """The parsed ANN as a float64 PyTorch module (input (N, *input_shape)); its outputs are the logits."""
    mods: list[torch.nn.Module] = []
    for s in chain.stages:
        if isinstance(s, Linear):
            m = torch.nn.Linear(s.weight.shape[1], s.weight.shape[0]).double()
            m.weight.data, m.bias.data = torch.as_tensor(s.weight), torch.as_tensor(s.bias)
            mods.append(m)
        elif isinstance(s, Conv):
            m = torch.nn.Conv2d(s.weight.shape[1] * s.groups, s.weight.shape[0], s.weight.shape[2:], s.stride,
                                s.padding,
                                s.dilation, s.groups).double()
            m.weight.data, m.bias.data = torch.as_tensor(s.weight), torch.as_tensor(s.bias)
            mods.append(m)
        elif isinstance(s, AvgPool):
            mods.append(torch.nn.AvgPool2d(s.kernel, s.stride, s.padding, count_include_pad=True))
        elif isinstance(s, Flatten):
            mods.append(torch.nn.Flatten())
        if isinstance(s, (Linear, Conv)) and s.relu:
            mods.append(torch.nn.ReLU())
    return torch.nn.Sequential(*mods).eval()


def encode(x: np.ndarray | torch.Tensor, steps: int) -> torch.Tensor:
    """Rate-code inputs (N, *shape) in [0, 1] as flat spike trains (N, steps, prod(shape)) (``regular_rate``)."""
    x = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    return regular_rate(x.reshape(x.shape[0], -1), steps)


def _stage_activations(chain: AnnChain, x: torch.Tensor) -> list[torch.Tensor]:
    """Output of every stage that becomes a population (after its ReLU), and the logits last."""
    acts = []
    h = x
    with torch.no_grad():
        for s, mods in zip(chain.stages, _split(ann_module(chain))):
            h = mods(h)
            if not isinstance(s, Flatten):
                acts.append(h.reshape(h.shape[0], -1))
    return acts


def _split(seq: torch.nn.Sequential) -> list[torch.nn.Sequential]:
    """Group the module's layers per stage (a linear layer and its ReLU together)."""
    groups, cur = [], []
    for m in seq:
        if isinstance(m, torch.nn.ReLU):
            cur.append(m)
            continue
        if cur:
            groups.append(torch.nn.Sequential(*cur))
        cur = [m]
    groups.append(torch.nn.Sequential(*cur))
    return groups


def _check_structure(chain: AnnChain) -> None:
    pops = [s for s in chain.stages if not isinstance(s, Flatten)]
    for s in pops[:-1]:
        if isinstance(s, (Linear, Conv)) and not s.relu:
            raise ConversionError(f"{chain.source}: layer {s.name!r} has no ReLU; only the last layer (the read-out) "
                                  f"may be linear")
    last = pops[-1]
    if not (isinstance(last, Linear) and not last.relu) and not (isinstance(last, (Linear, Conv)) and last.relu):
        raise ConversionError(f"{chain.source}: the network must end in a Gemm/MatMul read-out (or a ReLU layer), "
                              f"not {type(last).__name__} {last.name!r}")
    if isinstance(last, Conv) and not last.relu:
        raise ConversionError(f"{chain.source}: a Conv read-out is not supported; end with Gemm/MatMul")


def convert(source: str | os.PathLike | onnx.ModelProto | AnnChain, calibration: np.ndarray | torch.Tensor,
            config: ConversionConfig = ConversionConfig()):
    """Convert an ONNX ANN into a ``SpikingSequential``; returns ``(model, report)``.

    ``calibration``: sample inputs (N, *input_shape) (or flat (N, features)) with values in [0, 1],
    the same preprocessing as the ANN's inputs; the SNN's input is ``encode(x, steps)``.
    """
    from snn2hw.nn.conv import ConvLIF, LeakyReadout, SumPoolLIF
    from snn2hw.nn.conv import Flatten as FlattenLayer
    from snn2hw.nn.layers import LIFDense, SpikingSequential

    chain = source if isinstance(source, AnnChain) else parse(source)
    _check_structure(chain)
    x = torch.as_tensor(np.asarray(calibration), dtype=torch.float64)
    n_in = int(np.prod(chain.input_shape))
    if x.ndim < 2 or int(np.prod(x.shape[1:])) != n_in:
        raise ConversionError(f"{chain.source}: calibration inputs of shape {tuple(x.shape)} do not match the "
                              f"model's input {chain.input_shape}")
    if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise ConversionError(f"{chain.source}: calibration inputs must lie in [0, 1] (they are spike rates); got "
                              f"[{float(x.min()):.3g}, {float(x.max()):.3g}]: scale the data and the ANN's inputs")
    x = x[: config.calibration_samples].reshape(-1, *chain.input_shape)
    acts = _stage_activations(chain, x)

    report = ConversionReport(chain.source)
    layers, targets = [], []
    prev_lam = 1.0
    pop_stages = [s for s in chain.stages if not isinstance(s, Flatten)]
    act_of = dict(zip([id(s) for s in pop_stages], acts))
    for s in chain.stages:
        if isinstance(s, Flatten):
            layers.append(FlattenLayer())
            continue
        a = act_of[id(s)]
        if isinstance(s, AvgPool):
            kh, kw = s.kernel
            layer = SumPoolLIF(s.in_shape, s.kernel, s.stride, s.padding, du=1.0, dv=0.0, v_th=kh * kw - 0.5)
            lam = prev_lam  # the average of rates in [0, 1] is a rate
        elif s.relu:
            pos = a[a > 0]
            lam = float(np.percentile(pos.numpy(), config.percentile)) if pos.numel() else 1.0
            if isinstance(s, Linear):
                layer = LIFDense(s.weight.shape[1], s.weight.shape[0], du=1.0, dv=0.0, v_th=1.0, bias=True)
            else:
                layer = ConvLIF(s.in_shape, s.weight.shape[0], s.weight.shape[2:], s.stride, s.padding, s.dilation,
                                s.groups, du=1.0, dv=0.0, v_th=1.0, bias=True)
            with torch.no_grad():
                w = torch.as_tensor(s.weight * prev_lam / lam, dtype=torch.float32)
                layer.weight.copy_(w.reshape(layer.weight.shape))
                layer.bias.copy_(torch.as_tensor(s.bias / lam, dtype=torch.float32))
        else:  # the read-out: v sums the logit estimates of every step
            peak = float(a.abs().max()) if a.numel() else 1.0
            v_scale = max(peak, 1e-6) * config.steps * config.readout_headroom_steps / 128.0
            layer = LeakyReadout(s.weight.shape[1], s.weight.shape[0], du=1.0, dv=0.0, v_scale=v_scale, bias=True)
            with torch.no_grad():
                layer.weight.copy_(torch.as_tensor(s.weight * prev_lam, dtype=torch.float32))
                layer.bias.copy_(torch.as_tensor(s.bias, dtype=torch.float32))
            layers.append(layer)
            report.scales.append(1.0)
            continue
        layers.append(layer)
        report.scales.append(lam)
        targets.append((len(layers) - 1, float((a / lam).clamp(0, 1).mean())))
        prev_lam = lam
    model = SpikingSequential(layers).eval()
    if config.balance_thresholds:
        _balance_thresholds(model, encode(x, config.steps), targets, config, report)
    report.thresholds = [float(layers[i].threshold) for i, _ in targets]
    report.target_rates = [t for _, t in targets]
    return model, report


def _balance_thresholds(model, spikes: torch.Tensor, targets: list[tuple[int, float]], config: ConversionConfig,
                        report: ConversionReport) -> None:
    """Scale each spiking layer's threshold until its mean rate on the calibration inputs matches the ANN's
    normalised mean activation (the reset-to-zero loss and the threshold's strict '>' lower rates)."""
    layers = model.layers
    with torch.no_grad():
        h, done = spikes, 0
        for index, target in targets:
            for layer in layers[done:index]:
                h = layer(h)
            layer = layers[index]
            # the j-th population receives its first input at step j: skip the hop delays
            depth = sum(1 for m in layers[: index + 1] if hasattr(m, "threshold"))
            for k in range(config.balance_iterations + 1):
                out = layer(h)[:, depth:]
                rate = float(out.mean()) if out.numel() else 0.0
                if k == config.balance_iterations or rate <= 0 or target <= 0:
                    break
                layer.threshold.mul_(min(max(rate / target, 0.5), 2.0))
            report.rates.append(rate)
            h = layer(h)
            done = index + 1
