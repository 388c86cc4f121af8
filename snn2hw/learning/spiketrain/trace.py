"""What the forward records and the backward reads: one layer's trace (``LayerTrace``), the per-sample reductions of
its S-PSP kernel that the rules' coefficients need (``PostStats``), and what a rule hands the layer backward
(``BackwardOptions``); the walk over a model's layers (``spiking_layers``) and the window check (``check_steps``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from snn2hw.learning.base import LearningRuleError
from snn2hw.learning.spiketrain import plan
from snn2hw.learning.spsp import NeuronSpec
from snn2hw.nn.conv import ConvLIF, Dropout, Flatten, LeakyReadout, SumPoolLIF
from snn2hw.nn.layers import LIFDense

HOP_LAYERS = (LIFDense, ConvLIF, SumPoolLIF)  # RecurrentLIFDense is a LIFDense


@dataclass
class LayerTrace:
    """One population layer's forward record (mutable: ``counts_in`` of a float network input is counted on first
    use, ``layer_counts_in``)."""

    layer: nn.Module
    s_in: torch.Tensor  # (B, T, N_in) input spikes
    a_ff: torch.Tensor | None  # (B, T, N) hop-delayed feed-forward current (None: low-memory trace)
    s_out: torch.Tensor  # (B, T, N) output spikes
    spec: NeuronSpec
    rec_weight: torch.Tensor | None  # effective recurrent weights V (N, N), or None
    vsum: torch.Tensor | None = None  # (B, N) pre-reset membrane summed over the spikes (chunked trace only)
    counts: torch.Tensor | None = None  # (B, N) float64 spike counts of s_out (chunked trace only)
    # (B, N_in) float64 counts of s_in (chunked trace only; a float network input's are counted on first use,
    # ``layer_counts_in``)
    counts_in: torch.Tensor | None = None
    # (B, N) T-PSP each neuron would have with only ``hidden_virtual_spikes`` virtual spikes (chunked hidden
    # feed-forward layers of rules with ``needs_tpsp``; else None and the backward remakes what it needs)
    tpsp_virtual: torch.Tensor | None = None
    # (B, N) float64 sum over the real spikes of the membrane's bias part per unit bias, ``sum_t lam_p[t]`` (chunked
    # layers with a bias, for rules with ``needs_tpsp``: the T-PSP less its bias part without a reverse scan)
    bias_sum: torch.Tensor | None = None
    # {first sample of a group: (samples, CSR of the group's input rows)}: the forward product's non-zeros of s_in
    # (``spike_dense.spike_linear``'s ``csr_out``) for a wide dense layer whose weight gradient may be event-driven,
    # so that its backward lists them by input without reading the train again (``spsp_kernels.scatter_rows_csr``)
    in_csr: dict | None = None


@dataclass
class PostStats:
    """Per-sample reductions over time of one layer's S-PSP kernel: all the rules' coefficients need."""

    counts: torch.Tensor  # (B, N) post counts, virtual spikes included
    counts_in: torch.Tensor | None  # (B, N_in) pre-synaptic counts (None: the rule does not read them)
    counts_rec: torch.Tensor | None  # (B, N) real counts of the layer (the recurrent pre-synaptic neurons)
    random_spike: torch.Tensor | None  # (B, N) S-PSP one pre spike at a uniformly random step adds (None: not
    # made, for conv and pool layers whose coefficients do not need it; only recurrent synapses use it)
    e_rec: torch.Tensor | None  # (B, N, N) recurrent S-PSPs
    tpsp: torch.Tensor | None  # (B, N) T-PSP a_i (only for rules with ``needs_tpsp``)


@dataclass(frozen=True)
class BackwardOptions:
    """What the layer backward needs of a rule: its coefficients and the options that decide what to make."""

    # (trace, count error g (B, N), stats) -> (c_w, c_back), each (B, N): the only part where the rules differ
    coefficients: Callable[[LayerTrace, torch.Tensor, PostStats], tuple[torch.Tensor, torch.Tensor]]
    needs_tpsp: bool  # the coefficients read ``PostStats.tpsp``
    needs_counts_in: bool  # they read ``PostStats.counts_in`` of feed-forward layers (counted on demand)
    trains_recurrent: bool  # recurrent weights get a gradient
    hidden_virtual_spikes: int  # virtual spikes of a silent hidden neuron that receives an error
    chunk: int  # least steps per block of the chunked path (``plan.block``)
    # d e_ij / d o_j of a firing input j: "spikes", the S-PSP per spike it has (``e_ij / o_j``, the papers');
    # "uniform", that of one spike at a uniformly random step (the papers' choice for a silent input, for all)
    pre_derivative: str = "spikes"


def spiking_layers(model: nn.Module) -> list:
    """The layers of a ``SpikingSequential`` model, refused with the layer named when the rules cannot train it."""
    layers = getattr(model, "layers", None)
    if layers is None:
        raise LearningRuleError(f"spike-train rules train SpikingSequential models, got {type(model).__name__}")
    for i, layer in enumerate(layers):
        if isinstance(layer, LeakyReadout):
            raise LearningRuleError(f"layer {i} ({type(layer).__name__}): spike-train rules need a spiking output "
                                    "(their loss is on spike counts); use LIFDense")
        if not isinstance(layer, HOP_LAYERS + (Flatten, Dropout)):
            raise LearningRuleError(f"layer {i}: {type(layer).__name__} is not supported by spike-train rules")
        if getattr(layer, "qat", None) is not None:
            raise LearningRuleError(f"layer {i}: quantization-aware mode is on; spike-train rules train the float "
                                    "network (fine-tune QAT with 'bptt')")
        for name in ("du", "dv", "threshold"):  # the rules' gradients are for weights and biases: say so, not skip
            p = getattr(layer, name, None)
            if isinstance(p, nn.Parameter) and p.requires_grad:
                raise LearningRuleError(f"layer {i} ({type(layer).__name__}) has a trainable '{name}'; spike-train "
                                        "rules train weights and biases only (build the layer with "
                                        "train_decays=False, train_threshold=False, or use rule 'bptt')")
    return list(layers)


def check_steps(rule: str, layers: list, steps: int) -> None:
    """Refuse a window too short for the output to see the input: each hop delays by one step, so the input reaches
    the k-th population at step k, and with T <= (number of populations) the output cannot respond to the input
    whatever the weights (without biases it is silent; with them it can only fire the same way for every input)."""
    hops = sum(isinstance(layer, HOP_LAYERS) for layer in layers)
    if steps <= hops:
        raise LearningRuleError(f"{rule}: T = {steps} steps, but the input reaches the output only at step {hops} "
                                f"(one step of hop delay per layer, {hops} layers), so the output cannot respond to the input; "
                                f"use T > {hops}")


def take_rows(t: torch.Tensor | None, rows: slice) -> torch.Tensor | None:
    """``t[rows]``, or None for None (an optional per-sample record)."""
    return None if t is None else t[rows]


def per_spike_ratio(e: torch.Tensor, counts_pre: torch.Tensor, random_spike: torch.Tensor) -> torch.Tensor:
    """``e_ij / o_j`` (B, N_post, N_pre); a silent pre neuron's is the S-PSP of one spike at a random step
    (``random_spike``, (B, N_post))."""
    o = counts_pre.unsqueeze(1)
    return torch.where(o > 0, e / o.clamp(min=1), random_spike.unsqueeze(2))


def spike_counts(s: torch.Tensor) -> torch.Tensor:
    """(B, ...) float64 counts over time (dim 1) of a (B, T, ...) train. A bool train is summed through its bytes in
    int32 (exact, and 3.7x faster than a float64 sum of the bools: 1.4 against 5.1 ms for 16 x 200 x 800)."""
    if s.dtype == torch.bool:
        return s.view(torch.uint8).sum(1, dtype=torch.int32).to(torch.float64)
    return s.sum(1, dtype=torch.float64)


def layer_counts_in(tr: LayerTrace, chunk: int) -> torch.Tensor:
    """(B, N_in) float64 input counts of a chunked trace, counted here on first use when the forward did not
    (a float network input: HM2-BP's first layer never reads them)."""
    if tr.counts_in is None:
        tr.counts_in = time_sum(tr.s_in, torch.float64, chunk)
    return tr.counts_in


def time_sum(s: torch.Tensor, dtype: torch.dtype, chunk: int) -> torch.Tensor:
    """Per-neuron sums over time (B, N) of a (B, T, N) train, ``plan.block`` steps at a time (a bool tensor's
    ``sum`` converts the whole tensor to int64 first)."""
    if s.dtype != torch.bool:  # in the train's own dtype (a sum with dtype= converts the whole train first)
        return s.sum(1).to(dtype)
    out = torch.zeros(s.shape[0], s.shape[2], dtype=dtype, device=s.device)
    block = plan.block(s.shape[0], 2 * s.shape[2], chunk)  # a bool chunk's sum makes an int64 copy
    for t0 in range(0, s.shape[1], block):
        out += s[:, t0:t0 + block].sum(1).to(dtype)
    return out
