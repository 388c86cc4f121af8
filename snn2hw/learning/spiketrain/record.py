"""The forward of one population layer, recorded for the backward: the chunked record (bool spike trains, counts and
the membrane sums the rules' coefficients need, currents made group by group and never kept) and the whole-window
record (float trains and currents, the cross-check ``full_trace``)."""
from __future__ import annotations

import torch
from torch import nn

from snn2hw.learning.spiketrain import plan
from snn2hw.learning.spiketrain.trace import LayerTrace, take_rows
from snn2hw.learning.spsp import (NeuronSpec, dense_current_window, hop_current_chunk, layer_current, lif_sequence,
                                  lif_sequence_chunked, whole_window)
from snn2hw.nn import functional as F
from snn2hw.nn.layers import LIFDense, hop_delay
from snn2hw.nn.recurrent import recurrent_cuba_lif_sequence

# A wide dense layer's event-driven weight gradient lists its input spikes by input from the non-zeros its forward
# product found (``LayerTrace.in_csr``) instead of two more passes over the dense train. Module-level so that a
# benchmark can switch it off for an interleaved A/B (``diag_spiketrain_speed.py --variant``); it changes no result.
REUSE_INPUT_CSR = True


def record_chunked(layer: nn.Module, s: torch.Tensor, counts_in: torch.Tensor | None, spec: NeuronSpec,
                   rec: torch.Tensor | None, x: torch.Tensor, kernel: torch.Tensor | None, bias_part: bool,
                   chunk: int) -> LayerTrace:
    """The layer's record with one byte per spike: its input train ``s`` (B, T, N_in) and ``counts_in`` (None: counted
    in the backward if a rule needs them, ``trace.layer_counts_in``) as given, its output train as bool, with the
    counts and the pre-reset membrane summed at the spikes (HM2-BP's T-PSP), made by one GEMM per group of whole
    windows (or per sample in blocks of steps) and the compiled LIF scan. ``kernel`` (``scan.virtual_kernel``, or
    None): also record each neuron's T-PSP with only virtual spikes. ``bias_part``: also record the membrane's bias
    part per unit bias summed at the spikes (for rules with a T-PSP, when the layer has a bias)."""
    vsum = torch.zeros(s.shape[0], layer.out_features, dtype=torch.float64, device=x.device)
    counts = torch.zeros_like(vsum)
    dense = isinstance(layer, LIFDense)
    tpsp_virtual = torch.zeros(s.shape[0], layer.out_features, dtype=x.dtype, device=x.device) \
        if kernel is not None else None
    bias_sum = torch.zeros_like(vsum) if bias_part and spec.bias is not None else None
    # float temporaries per step: the current, and the input as float when it is a bool train (a
    # convolution also copies its input block and pads its output)
    width = (layer.out_features + s.shape[2] * (s.dtype != x.dtype) if dense
             else 2 * layer.out_features + s.shape[2])
    group, block = plan.window_groups(*s.shape[:2], width, chunk)
    s_out = torch.empty(s.shape[0], s.shape[1], layer.out_features, dtype=torch.bool, device=x.device)
    in_csr = {} if REUSE_INPUT_CSR and dense and plan.may_be_event_driven_weights(layer.out_features) else None
    for b0 in range(0, s.shape[0], group):  # the neurons of different samples are independent
        src, rows = s[b0:b0 + group], slice(b0, b0 + group)
        current = lambda t0, t1, src=src: hop_current_chunk(layer, src, t0, t1, x.dtype)  # noqa: E731
        lag = int(block >= src.shape[1] and whole_window(layer, src, 0, src.shape[1]))
        if lag:  # the window's currents as the product makes them, read one step late by the scan
            found = [] if in_csr is not None else None
            if found is not None:
                in_csr[b0] = (src.shape[0], found)
            current = lambda t0, t1, src=src, found=found: dense_current_window(  # noqa: E731
                layer, src, x.dtype, found)
        lif_sequence_chunked(current, src.shape[0], src.shape[1], layer.out_features, spec, rec, block, x,
                             torch.bool, vsum[rows], counts[rows], out=s_out[rows], time_weights=kernel,
                             weighted=take_rows(tpsp_virtual, rows), bias_sum=take_rows(bias_sum, rows), lag=lag)
    if in_csr is not None:  # the groups whose product was event-driven
        in_csr = {b0: (size, found[0]) for b0, (size, found) in in_csr.items() if len(found) == 1}
    return LayerTrace(layer, s, None, s_out, spec, rec, vsum, counts, counts_in, tpsp_virtual, bias_sum,
                      in_csr or None)


def record_whole(layer: nn.Module, s: torch.Tensor, spec: NeuronSpec, rec: torch.Tensor | None, t_ref: int,
                 dtype: torch.dtype) -> LayerTrace:
    """The layer's record with float trains and its hop-delayed current for the whole window (``full_trace``)."""
    s = s.to(dtype)
    a_ff = hop_delay(layer_current(layer, s))
    if t_ref:
        s_out = lif_sequence(a_ff, spec, rec)
    else:  # the layers' own float operators: exactly what the trained network computes
        bias = spec.bias if spec.bias is not None else a_ff.new_zeros(())
        if rec is None:
            s_out = F.cuba_lif_sequence(a_ff, spec.alpha, spec.beta, spec.v_th, bias)
        else:
            s_out = recurrent_cuba_lif_sequence(a_ff, rec, spec.alpha, spec.beta, spec.v_th, bias)
    return LayerTrace(layer, s, a_ff, s_out, spec, rec)
