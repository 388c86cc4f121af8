"""Data-driven initialisation: each spiking layer's threshold set so that it fires at a target rate.

Why (measured on the digits CNN 15c3-p2-40c2-p2-300-10, ``docs/learning-rules.md``, "Conv/pool networks
and BPTT"): a CUBA-LIF neuron integrates its input with a DC gain of 1 / (du dv) (40 at du = 0.25,
dv = 0.1), so the fan-in initialisation that suits a dense layer on pixel rates leaves a conv/pool stack
far from threshold: the sum pools (v_th 1 over 2x2 inputs) amplify, 25-32 % of their neurons fire on most
steps, and what reaches the output carries little of the input (a linear probe on the 300-layer's
counts: 50 % at init). Some output neurons never fire on any sample; the count loss then pushes the
remaining ones down until they are silent too, and a silent neuron's surrogate derivative (its membrane
is many widths below threshold) cannot bring it back: the loss settles at ln 10 with silent outputs.

Scaling the *weights* down until each layer fires at a moderate rate fixes the forward pass (probe 83 %)
but not training: Adam moves every weight by about ``lr`` per step, and the small weights a high-gain
neuron needs then change by 5-10 % per step, which drives the output layer silent again. Scaling the
*threshold* instead is the same forward network, but keeps the weights (and so ``lr / |w|``) at the
fan-in scale that trains dense networks. The surrogate's width is scaled with the threshold, so its
width relative to the threshold, and the gradient's shape, are what they were.

``calibrate_thresholds`` does this layer by layer, in order, on one batch: for each spiking layer it
bisects the threshold (in log space) until the layer's mean firing rate, given the already calibrated
layers below it, is ``target_rate``. Sum pools, which have no trainable weights, are calibrated the same
way. Non-spiking read-outs, ``Flatten`` and ``Dropout`` pass through. The thresholds are ordinary layer
parameters (``v_th`` in the config), so checkpoints, export, quantization and deployment carry them.

``Trainer`` calls it on the first training batch of a fresh run when ``TrainerConfig.calibrate_rate``
asks (default ``"auto"``: networks with a conv or pool layer, at rate 0.1; dense-only networks keep
their initialisation unchanged).

``fold="output"`` (``TrainerConfig.calibrate_fold``) calibrates the last weighted layer (the read-out)
through its weights instead: the bisection is the same, then the threshold goes back to its initial
value and the weights (and bias) are multiplied by ``v_th_initial / v_th_calibrated``, the same forward
network. Why (measured on the paper's CNN on MNIST-10k, ``docs/learning-rules.md``): the read-out's
calibrated threshold depends on the seed by a factor 20 (0.065 on seed 1, 0.85-1.27 on seeds 0 and 2),
and Adam moves each weight by about ``lr`` per step, so the read-out's step *relative to its threshold*
(what changes its spikes) was 20x larger on seed 1, the seed that started slowly for every rule. With
the threshold folded into the weights, that step is ``lr / v_th_initial`` on every seed. Hidden layers
keep threshold calibration (their weights would otherwise have to shrink, see above). Measured, it is
not enough: BPTT's validation accuracy after the first 1,600 images of seed 1 is 26.2 % with it, 23.6 %
without (``benchmarks/bench_spiketrain_accuracy.py calib-cnn4``).

``fold="neurons"`` is what fixed that start: one threshold per layer leaves the layer's *mean* rate at the
target, but its units spread from silent to saturated (the paper CNN's read-out on 256 validation images:
0.002-0.33 spikes per step on seed 1, 0.000-0.40 on seed 0), and a silent unit passes no gradient while a saturated one carries no
information. After each weighted layer's threshold, every unit (a dense neuron, a conv output channel,
whose positions share its weights) gets its own factor on its weights, bisected so that it fires at the
target rate too, within ``[1/_UNIT_RANGE, _UNIT_RANGE]`` so that the layer's weights stay within one
fixed-point exponent's useful range. It is a data-dependent init of the same kind as normalising each
unit's pre-activation statistics in non-spiking networks, and it does not depend on the learning rule.
Validation after 1,600 images (one threshold per layer in brackets): seed 0 67.3 % (63.4 %), seed 1 60.4 %
(23.6 %), seed 2 67.2 % (71.7 %): the seeds' spread falls from 48 to 7 points, not every seed gains. After
one epoch it also narrows the seeds (BPTT 90.43 +- 0.80 % deployed against 88.55 +- 11.67 %), but HM2-BP's
networks lose more in deployment with per-unit factors (up to 12.5 points), so it is not the default.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from snn2hw.nn.surrogate import get_surrogate

__all__ = ["CalibrationError", "LayerCalibration", "calibrate_thresholds", "calibration_rate", "has_conv_layers",
           "DEFAULT_RATE", "FOLDS"]

DEFAULT_RATE = 0.1  # spikes per neuron and step after calibration ("auto")
_RANGE = 1e3  # the threshold is searched within [v_th / _RANGE, v_th * _RANGE]


class CalibrationError(ValueError):
    """A target rate outside (0, 1), a model without layers, or a layer in quantization-aware mode."""


@dataclass(frozen=True)
class LayerCalibration:
    """What calibration did to one layer: its index and kind, threshold and mean rate before and after."""

    index: int
    kind: str
    v_th_before: float
    v_th_after: float
    rate_before: float
    rate_after: float
    unit_factors: tuple[float, float] | None = None  # fold="neurons": the smallest and largest unit factor


def has_conv_layers(model: nn.Module) -> bool:
    """True when ``model`` holds a ``ConvLIF`` or ``SumPoolLIF`` layer."""
    from snn2hw.nn.conv import ConvLIF, SumPoolLIF

    return any(isinstance(m, (ConvLIF, SumPoolLIF)) for m in model.modules())


def calibration_rate(rate: float | str | None, model: nn.Module) -> float | None:
    """The rate ``TrainerConfig.calibrate_rate`` asks of ``model``: ``"auto"`` is ``DEFAULT_RATE`` for networks
    with conv or pool layers and None (no calibration) for the others."""
    if rate == "auto":
        return DEFAULT_RATE if has_conv_layers(model) else None
    return None if rate is None else float(rate)


def _calibratable(layer: nn.Module) -> bool:
    return isinstance(getattr(layer, "threshold", None), torch.Tensor) and getattr(layer, "spiking", True)


def _set_threshold(layer: nn.Module, v_th: float, width_product: float) -> None:
    """Threshold ``v_th``, and a surrogate whose width keeps its ratio to the threshold."""
    layer.threshold.fill_(v_th)
    layer.surrogate_scale = width_product / v_th
    layer.surrogate = get_surrogate(layer.surrogate_name, scale=layer.surrogate_scale)


FOLDS = ("none", "output", "neurons")
_UNIT_RANGE = 10.0  # fold="neurons": each unit's weight factor is searched within [1 / _UNIT_RANGE, _UNIT_RANGE]


def _weighted(layer: nn.Module) -> bool:
    """A layer with trainable weights (a sum pool's fixed window is a buffer, not a parameter)."""
    return isinstance(getattr(layer, "weight", None), nn.Parameter)


def _unit_rates(layer: nn.Module, s: torch.Tensor) -> torch.Tensor:
    """Mean rate of each unit of ``layer`` on input ``s``: its output (batch, T, units * positions)
    is channel-major, so a conv channel's positions are one contiguous block."""
    out = layer(s)
    units = layer.weight.shape[0]
    return out.reshape(out.shape[0], out.shape[1], units, -1).mean(dim=(0, 1, 3))


def _calibrate_units(layer: nn.Module, s: torch.Tensor, target_rate: float, iterations: int) -> tuple[float, float]:
    """Per-unit factors on ``layer``'s weights (and bias) so that each unit fires at ``target_rate``;
    returns the smallest and largest factor."""
    w0 = layer.weight.detach().clone()
    bias = getattr(layer, "bias", None)
    b0 = bias.detach().clone() if isinstance(bias, torch.Tensor) else None
    units = w0.shape[0]
    lo = torch.full((units,), -math.log(_UNIT_RANGE), dtype=w0.dtype, device=w0.device)
    hi = -lo

    def put(log_c: torch.Tensor) -> None:
        c = torch.exp(log_c)
        layer.weight.copy_(w0 * c.reshape(-1, *([1] * (w0.dim() - 1))))
        if b0 is not None:  # one bias per unit (dense neuron, conv channel)
            layer.bias.copy_(b0 * c.reshape(b0.shape))

    for _ in range(int(iterations)):
        mid = 0.5 * (lo + hi)
        put(mid)
        high = _unit_rates(layer, s) > target_rate
        hi = torch.where(high, mid, hi)  # fires too much: a smaller factor
        lo = torch.where(high, lo, mid)
    c = 0.5 * (lo + hi)
    put(c)
    return float(torch.exp(c.min())), float(torch.exp(c.max()))


def calibrate_thresholds(model: nn.Module, x: torch.Tensor, target_rate: float = DEFAULT_RATE,
                         iterations: int = 24, fold: str = "none") -> list[LayerCalibration]:
    """Set each spiking layer's threshold, in order, so that it fires at ``target_rate`` on ``x``.

    ``model``: a ``SpikingSequential`` (its ``layers`` run in order); ``x``: one input batch
    (batch, T, n) as the model takes it. The rate is the mean over the batch, steps and the layer's
    neurons. ``iterations`` bisection steps in log threshold give a relative precision of about
    ``(2 ln 1000) / 2**iterations``. A layer that stays below the rate at 1/1000 of its threshold gets the
    highest threshold that gives the rate it has there (its input has too few spikes), and one still silent
    there (its input is silent on ``x`` and no bias drives it) keeps its threshold. Returns one ``LayerCalibration``
    per calibrated layer. ``fold="output"``: the last calibratable layer with weights keeps its threshold and
    takes the calibration as a factor on its weights and bias (the module docstring says why); its
    ``LayerCalibration`` then reports the equivalent threshold in ``v_th_after``. ``fold="neurons"``: after
    each weighted layer's threshold, every unit of it (a dense neuron, a conv output channel) gets its own
    factor on its weights (and bias), bisected in log space within a factor ``_UNIT_RANGE`` so that the unit
    fires at ``target_rate`` too: no unit starts silent or saturated.
    """
    if not 0.0 < float(target_rate) < 1.0:
        raise CalibrationError(f"target_rate must lie in (0, 1), got {target_rate}")
    if fold not in FOLDS:
        raise CalibrationError(f"fold must be one of {FOLDS}, got {fold!r}")
    layers = list(getattr(model, "layers", []))
    if not layers:
        raise CalibrationError(f"{type(model).__name__} has no 'layers' to calibrate")
    readout = max((i for i, l in enumerate(layers) if _calibratable(l) and _weighted(l)), default=None)
    fold_at = readout if fold == "output" else None
    for i, layer in enumerate(layers):
        if getattr(layer, "qat", None) is not None:
            raise CalibrationError(f"layer {i} ({type(layer).__name__}) is in quantization-aware mode; "
                                   "calibrate the float network before switching QAT on")
    report = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            s = x
            for i, layer in enumerate(layers):
                if not _calibratable(layer):
                    s = layer(s)
                    continue
                v0 = float(layer.threshold)
                width_product = layer.surrogate_scale * v0
                rate0 = float(layer(s).mean())
                lo, hi = math.log(v0 / _RANGE), math.log(v0 * _RANGE)
                _set_threshold(layer, v0 / _RANGE, width_product)
                top_rate = float(layer(s).mean())
                # The lowest threshold's rate bounds what any threshold gives. Silent there too (a silent input and
                # no bias): no threshold sets the rate, so v0 stays. Below the target there (too few input
                # spikes): the highest threshold that still gives that rate, not the bound, whose weights-to-
                # threshold ratio (1000x) fixed point cannot hold.
                reachable = top_rate > 0.0
                goal = target_rate if top_rate > target_rate else top_rate * (1.0 - 1e-3)
                for _ in range(int(iterations) if reachable else 0):
                    mid = 0.5 * (lo + hi)
                    _set_threshold(layer, math.exp(mid), width_product)
                    if float(layer(s).mean()) > goal:
                        lo = mid  # fires too much: raise the threshold
                    else:
                        hi = mid
                if not reachable:
                    v_th = v0
                elif goal < target_rate:  # below the target at every threshold: lo, one known to give the top rate
                    v_th = math.exp(lo)
                else:
                    v_th = math.exp(0.5 * (lo + hi))
                if i == fold_at:  # same network: threshold back to v0, weights (and bias) times v0 / v_th
                    _set_threshold(layer, v0, width_product)
                    layer.weight.mul_(v0 / v_th)
                    if isinstance(getattr(layer, "bias", None), torch.Tensor):
                        layer.bias.mul_(v0 / v_th)
                else:
                    _set_threshold(layer, v_th, width_product)
                factors = None
                if fold == "neurons" and _weighted(layer) and reachable:
                    factors = _calibrate_units(layer, s, target_rate, iterations)
                s = layer(s)
                report.append(LayerCalibration(i, type(layer).__name__, v0, v_th, rate0,
                                               float(s.mean()), factors))
    finally:
        model.train(was_training)
    return report
