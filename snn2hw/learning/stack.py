"""What the rules beyond BPTT share: the dense stacks they train, their float forward with a replaceable
projection, and their fixed random matrices.

FA, DFA, DECOLLE, e-prop and SuperSpike train the deployable dense layers of a ``SpikingSequential``
(``LIFDense``, ``RecurrentLIFDense``, ``LeakyReadout``; ``Flatten`` is skipped), so whatever they train
exports, quantizes and deploys like any snn2hw network. ``dense_stack`` checks a model and names the
first layer a rule cannot train.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from snn2hw.learning.base import LearningRuleError, float_option
from snn2hw.nn import functional as F
from snn2hw.nn.conv import ConvLIF, Dropout, Flatten, LeakyReadout, SumPoolLIF
from snn2hw.nn.layers import LIFDense, RecurrentLIFDense, SpikingSequential, hop_delay
from snn2hw.nn.neuron import float_neuron_args
from snn2hw.nn.recurrent import recurrent_cuba_lif_sequence

__all__ = ["dense_stack", "layer_forward", "hops_to_output", "random_matrix", "check_float_weights_only",
           "load_matrices", "error_of", "check_forward_kwargs", "check_rate_options", "rate_error", "check_window"]

DENSE_KINDS = (LIFDense, RecurrentLIFDense, LeakyReadout)  # RecurrentLIFDense subclasses LIFDense


def dense_stack(model: nn.Module, rule: str, allow_dropout: bool = False) -> list[nn.Module]:
    """The layers of ``model`` that a rule trains, in order; a ``LearningRuleError`` names anything else."""
    if not isinstance(model, SpikingSequential):
        raise LearningRuleError(f"rule {rule!r} trains a SpikingSequential of dense layers, got {type(model).__name__}")
    layers = []
    for i, layer in enumerate(model.layers):
        if isinstance(layer, Flatten) or (allow_dropout and isinstance(layer, Dropout)):
            continue
        if not isinstance(layer, DENSE_KINDS):
            raise LearningRuleError(
                f"rule {rule!r}: layer {i} ({type(layer).__name__}) is not supported; the rule trains LIFDense, "
                f"RecurrentLIFDense and LeakyReadout layers (use rule 'bptt' for this network)")
        if isinstance(layer, LeakyReadout) and i != len(model.layers) - 1:
            raise LearningRuleError(f"rule {rule!r}: layer {i} is a LeakyReadout but not the last layer")
        layers.append(layer)
    if not layers:
        raise LearningRuleError(f"rule {rule!r}: the model has no trainable dense layer")
    return layers


def check_float_weights_only(layers: list[nn.Module], rule: str) -> None:
    """The online rules train weights and biases of float layers; say which layer/parameter is out of reach."""
    for i, layer in enumerate(layers):
        if layer.qat is not None:
            raise LearningRuleError(f"rule {rule!r}: layer {i} ({type(layer).__name__}) is in QAT mode; the rule "
                                    f"trains float layers (fine-tune quantization-aware with rule 'bptt')")
        for name in ("du", "dv", "threshold"):
            if isinstance(getattr(layer, name, None), nn.Parameter) and getattr(layer, name).requires_grad:
                raise LearningRuleError(f"rule {rule!r}: layer {i} ({type(layer).__name__}) has a trainable "
                                        f"'{name}'; the rule trains weights and biases only (build the layer with "
                                        f"train_decays=False, train_threshold=False, or use rule 'bptt')")


# Layer kinds whose delay is known exactly: one step per hop (the Dense/Conv hop; the neuron adds none), none for
# Flatten and Dropout. Exact types: a user's subclass may do anything in its forward.
_ONE_STEP_HOPS = (LIFDense, RecurrentLIFDense, ConvLIF, SumPoolLIF, LeakyReadout)
_NO_DELAY = (Flatten, Dropout)


def check_window(rule: str, model: nn.Module, steps: int, reads_hidden: bool) -> None:
    """Refuse a window in which everything the loss reads is exactly 0 whatever the parameters.

    Each hop delays by one step, so layer k (counting hop layers from 1) gets its first input at step k - 1
    and can spike, or move its read-out, at step k at the earliest (0-based steps 0..T-1) -- unless a bias
    drives it before any input arrives, so the check applies only when no layer has a bias (the thresholds
    are positive: ``float_neuron_args`` clamps them, so a neuron at v = 0 never fires). A loss that reads
    only the output (``reads_hidden`` False) then is constant for T <= (number of hop layers); one that also
    reads hidden layers (``return_all``, the rate regularisers, DECOLLE's local losses) for T <= 1. A model
    with any other layer kind (a ``GatedQIF``, a user's module, a subclass) is not checked: its delay is not
    known here."""
    layers = list(getattr(model, "layers", [])) if isinstance(model, SpikingSequential) else []
    if not layers or any(type(layer) not in _ONE_STEP_HOPS + _NO_DELAY for layer in layers):
        return
    if any(getattr(layer, "bias", None) is not None for layer in layers):
        return
    hops = sum(type(layer) in _ONE_STEP_HOPS for layer in layers)
    first = 1 if reads_hidden else hops
    if steps <= first:
        what = "the first layer" if reads_hidden else f"the output (layer {hops})"
        raise LearningRuleError(f"rule {rule!r}: T = {steps} steps, but {what} can respond to the input only from "
                                f"step {first} on (one step of hop delay per layer) and no layer has a bias, so "
                                f"everything the loss reads is 0 whatever the weights; use T > {first}")


def hops_to_output(layers: list[nn.Module], index: int) -> int:
    """Steps before layer ``index``'s spikes can reach the output: one per Dense hop above it."""
    return len(layers) - 1 - index


def _bias(layer: nn.Module, like: torch.Tensor) -> torch.Tensor:
    return layer.bias if layer.bias is not None else torch.zeros((), device=like.device, dtype=like.dtype)


def layer_forward(layer: nn.Module, s_in: torch.Tensor,
                  project: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                  rec_feedback: torch.Tensor | None = None) -> torch.Tensor:
    """A dense layer's float forward, with ``project(s_in, weight)`` in place of ``s_in @ weight.T``.

    With ``project=None`` this is the layer's own ``forward`` (same operators, same arguments); feedback
    alignment passes a projection whose backward uses a fixed random matrix, and may pass
    ``rec_feedback`` for a ``RecurrentLIFDense``: the matrix its backward uses in place of the recurrent
    weights to carry the error back through time."""
    a = s_in @ layer.weight.t() if project is None else project(s_in, layer.weight)
    a = hop_delay(a)
    alpha, beta, v_th = float_neuron_args(layer, a)
    bias = _bias(layer, a)
    if isinstance(layer, LeakyReadout):
        return F.leaky_readout_sequence(a, alpha, beta, bias)
    if isinstance(layer, RecurrentLIFDense):
        v = layer.rec_weight if layer.rec_weight_scale == 1.0 else layer.rec_weight * layer.rec_weight_scale
        return recurrent_cuba_lif_sequence(a, v, alpha, beta, v_th, bias, mask=layer.rec_mask,
                                           surrogate=layer.surrogate, detach_reset=layer.detach_reset,
                                           feedback=rec_feedback)
    return F.cuba_lif_sequence(a, alpha, beta, v_th, bias, layer.surrogate, detach_reset=layer.detach_reset)


def random_matrix(rows: int, cols: int, generator: torch.Generator, like: torch.Tensor,
                  kind: str = "random") -> torch.Tensor:
    """A fixed feedback or read-out matrix (rows, cols): uniform with unit variance per entry scaled by
    1/sqrt(rows) (so a projected error keeps the size of one output's error), or all ones/sqrt(rows)
    for ``kind="uniform"``. Drawn on the CPU from ``generator``, so it is the same on every device."""
    if kind == "uniform":
        m = torch.ones(rows, cols, device="cpu")
    else:
        m = (torch.rand(rows, cols, generator=generator, dtype=torch.float64, device="cpu") * 2 - 1) * math.sqrt(3.0)
    return (m / math.sqrt(rows)).to(device=like.device, dtype=like.dtype)


def load_matrices(rule: str, current: list, saved: list, what: str) -> list:
    """Saved fixed matrices checked against the ones ``setup`` built for this model (same count and shapes)."""
    if len(saved) != len(current):
        raise LearningRuleError(f"rule {rule!r}: the checkpoint holds {len(saved)} {what}, this model needs {len(current)}")
    out = []
    for i, (cur, new) in enumerate(zip(current, saved)):
        if cur is None or new is None:
            if (cur is None) != (new is None):
                raise LearningRuleError(f"rule {rule!r}: {what} {i} is missing in the checkpoint or the model")
            out.append(None)
            continue
        if tuple(new.shape) != tuple(cur.shape):
            raise LearningRuleError(f"rule {rule!r}: {what} {i} has shape {tuple(new.shape)} in the checkpoint, "
                                    f"this model needs {tuple(cur.shape)}")
        out.append(new.to(device=cur.device, dtype=cur.dtype).clone())
    return out


def error_of(outputs: list[torch.Tensor], y: torch.Tensor, loss_fn, collect_all: bool):
    """(loss, [dL/d output_l]) for gradient-free layer outputs: the errors the rules broadcast or project.

    ``outputs`` are the layers' (batch, T, n) outputs; the loss sees the last one, or the list of all
    when the trainer's forward kwargs ask for ``return_all`` (activity regularisers then give every
    layer a direct error term). Entries a loss does not use are ``None``."""
    leaves = [o.detach().requires_grad_(True) for o in outputs]
    with torch.enable_grad():
        loss = loss_fn(leaves if collect_all else leaves[-1], y)
        grads = torch.autograd.grad(loss, leaves if collect_all else leaves[-1:], allow_unused=True)
    if not collect_all:
        grads = [None] * (len(outputs) - 1) + list(grads)
    return loss.detach(), list(grads)


def check_forward_kwargs(rule: str, forward_kwargs: dict) -> bool:
    """The rules accept the trainer's ``return_all`` forward option only; returns its value."""
    extra = sorted(set(forward_kwargs) - {"return_all"})
    if extra:
        raise LearningRuleError(f"rule {rule!r}: unsupported forward options {extra} (only return_all)")
    return bool(forward_kwargs.get("return_all", False))


def check_rate_options(rule: str, rate_target, rate_cost) -> tuple[float | None, float]:
    """Validated options of the firing-rate regulariser (``rate_target`` None: off)."""
    if rate_target is not None:
        rate_target = float_option(rule, "rate_target (a spike probability per step)", rate_target, 0.0, 1.0)
    return rate_target, float_option(rule, "rate_cost", rate_cost, 0.0)


def rate_error(spike_count: torch.Tensor, steps: int, rate_target: float, rate_cost: float) -> torch.Tensor:
    """Per-step error (batch, n) of Bellec et al.'s firing-rate regulariser
    ``(rate_cost * T / 2) sum_j (f_j - f_target)^2`` on a layer with spike counts ``spike_count`` (batch, n):
    ``f_j`` is neuron j's spikes per step over the batch and the T steps, and the derivative of the
    regulariser with respect to each spike s_bj[t] is ``rate_cost (f_j - f_target) / batch``."""
    batch = spike_count.shape[0]
    rate = spike_count.mean(0) / steps
    return ((rate - rate_target) * (rate_cost / batch)).expand(batch, -1)
