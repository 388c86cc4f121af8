"""The spike-train level backward pass shared by HM2-BP and ST-RSBP.

One batch: run the network forward without autograd and keep every layer's input and output spike
trains; compute the spike-count loss at the output; then, layer by layer from the top, turn the error
on the layer's firing counts ``g = dE/do`` into

* per-neuron coefficients ``c_w`` (what multiplies ``e_ij`` in ``dE/dw_ij``) and ``c_back`` (what
  multiplies ``w_ij e_ij / o_j`` in the error handed to the layer below) -- the only part where the two
  rules differ (``coefficients``);
* the weight gradient ``sum_b c_w[b, i] e_bij`` and the input error
  ``dE/do_j = sum_i c_back[b, i] w_ij e_bij / o_j``, both as one product through the layer's own hop
  (``snn2hw.learning.spsp``): S-PSPs are never materialised for feed-forward synapses.

Silent neurons (``o = 0``) would stop all learning through them: a silent neuron that receives an
error is given evenly spaced virtual spikes for its S-PSP kernel (HM2-BP gives a silent output its
target count, 35; hidden neurons get ``hidden_virtual_spikes``), and the per-spike S-PSP ``e_ij / o_j`` of a
silent pre-synaptic neuron is the S-PSP one spike at a uniformly random step would add.

Speed and memory. Every layer (the default; ``full_trace`` below is the cross-check) keeps only its
spike trains, as ``bool``, and their counts, and make everything else per group of
samples or block of steps: the forward makes a group's currents by one GEMM (over the stored rows when
whole windows fit, else per sample in blocks of steps) and runs the compiled LIF scan over them
(``spsp_kernels``; recurrent input inside the scan), recording each neuron's count and membrane summed
at its spikes, which is HM2-BP's T-PSP without keeping any current; the backward runs the compiled
reverse S-PSP recursion once per layer and group (virtual spikes made inside it), making the group's
S-PSP matrices by one batched GEMM per block, from which every gradient and the input error are
elementwise (``layer_backward_chunked``) -- or, for a feed-forward layer that hands no error down and
whose coefficients are known first, its weight gradient as one GEMM over (sample, step) rows, with no
S-PSP matrix (``hop_backward_chunked``). Products with sparse trains (at most ``EVENT_DENSITY`` non-zero) are
event-driven (cost per spike), denser ones GEMMs. Conv and pool layers make their currents by the
layer's own convolution per block of (sample, step) images, and their backward is the convolution's
weight and input gradients of ``c lam_u`` per block, BPTT's own backward products
(``hop_backward_chunked``). Float temporaries are bounded by ``CHUNK_BYTES``, not by T. The
``low_memory`` option of earlier versions is accepted and has no further effect.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from snn2hw.learning import spsp_kernels
from snn2hw.learning.base import BatchResult, LearningRule, LearningRuleError
from snn2hw.learning.spsp import (NeuronSpec, as_float, conv_hop_products, dense_current_window, dense_hop_block,
                                  dense_spsp, evenly_spaced_spikes, hop_current_chunk, layer_current, lif_sequence,
                                  lif_sequence_chunked, neuron_spec, reset_mask, spsp_adjoint, spsp_per_pre_spike,
                                  virtual_counts, whole_window)
from snn2hw.nn import functional as F
from snn2hw.nn.conv import ConvLIF, Dropout, Flatten, LeakyReadout, SumPoolLIF, _flat
from snn2hw.nn.layers import LIFDense, RecurrentLIFDense, hop_delay
from snn2hw.nn.recurrent import recurrent_cuba_lif_sequence
from snn2hw.nn.spike_dense import reuse_packed_weights

__all__ = ["SpikeTrainRule", "LayerTrace", "PostStats"]

_HOP_LAYERS = (LIFDense, ConvLIF, SumPoolLIF)  # RecurrentLIFDense is a LIFDense
# Spike trains at most this dense go through the event-driven kernels (see _event_driven). Measured on
# 784-100 and 784-800 layers (batch 16, one thread): at 10 % density the kernels and a GEMM take about
# the same time, below that the kernels win in proportion.
EVENT_DENSITY = 0.05
# A dense layer's weight gradient alone (``hop_backward_chunked``: ``(c_w lam_u)^T`` times the input spikes over
# all (sample, step) rows, summed into one matrix) is event-driven (``spsp_kernels.scatter_rows``) for a layer of
# at least WEIGHT_EVENT_MIN_WIDTH neurons when its predicted CPU time, ``density * (a + b / N)`` times the
# GEMM's, is at most WEIGHT_EVENT_BUDGET. Measured against the GEMM (784 inputs, one thread, interleaved, under
# load): 800 neurons 0.55 / 0.60 / 0.80 / 0.99x at 3 / 10 / 15 / 20 % density, 400 neurons 0.86 / 1.10x at
# 10 / 15 %, which (a, b) = (3.4, 2080) fits; 100 neurons 1.3x even at 3 % (each spike's row is too short).
# Those were measured with the row-by-row scatter; the tiled one ``scatter_rows`` now uses for such outputs
# (64 columns per tile, accumulators in registers) takes 0.7-0.9x its CPU time at 800 neurons and 10 % density,
# so the rule is conservative there (not refitted). At 100 neurons the tiled scatter still loses to the GEMM
# (the step took 1.12-1.13x with every weight gradient event-driven, T = 200 and 800, under load).
WEIGHT_EVENT_COST = (3.4, 2080.0)
WEIGHT_EVENT_BUDGET = 0.8
WEIGHT_EVENT_MIN_WIDTH = 400
# Switches of two savings, module-level so that a benchmark can turn them off for an interleaved A/B
# (``diag_spiketrain_speed.py --variant``); neither changes a result. REUSE_INPUT_CSR: a wide dense layer's
# event-driven weight gradient lists its input spikes by input from the non-zeros its forward product found
# (``LayerTrace.in_csr``) instead of two more passes over the dense train. SKIP_UNREAD_SUMS: a reverse scan whose
# sums of lam_u and lam_p nothing reads (a weight gradient alone, no bias) leaves them out.
REUSE_INPUT_CSR = True
SKIP_UNREAD_SUMS = True
# ``_add_coefficient_sum``: S-PSP matrices of at most this many elements are summed by one batched product, larger
# ones sample by sample, by one compiled pass where it equals the loop of ``addcmul_`` bit for bit
# (FUSED_COEFFICIENT_SUM; a switch for an A/B, as the two above).
COEFFICIENT_SUM_BMM_MAX = 1 << 16
FUSED_COEFFICIENT_SUM = True
# Float temporaries of the chunked path (per chunk: currents, inputs as float, kernels) are kept near this
# size by taking more than ``chunk`` steps per block when the layer is narrow (fewer, larger GEMMs and
# kernel calls); the memory stays bounded in T.
CHUNK_BYTES = 4 << 20


@dataclass
class LayerTrace:
    """One population layer's forward record."""

    layer: nn.Module
    s_in: torch.Tensor  # (B, T, N_in) input spikes
    a_ff: torch.Tensor | None  # (B, T, N) hop-delayed feed-forward current (None: low-memory trace)
    s_out: torch.Tensor  # (B, T, N) output spikes
    spec: NeuronSpec
    rec_weight: torch.Tensor | None  # effective recurrent weights V (N, N), or None
    vsum: torch.Tensor | None = None  # (B, N) pre-reset membrane summed over the spikes (chunked trace only)
    counts: torch.Tensor | None = None  # (B, N) float64 spike counts of s_out (chunked trace only)
    # (B, N_in) float64 counts of s_in (chunked trace only; a float network input's are counted on first use,
    # ``SpikeTrainRule._counts_in``)
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


def _layers(model: nn.Module) -> list:
    layers = getattr(model, "layers", None)
    if layers is None:
        raise LearningRuleError(f"spike-train rules train SpikingSequential models, got {type(model).__name__}")
    for i, layer in enumerate(layers):
        if isinstance(layer, LeakyReadout):
            raise LearningRuleError(f"layer {i} ({type(layer).__name__}): spike-train rules need a spiking output "
                                    "(their loss is on spike counts); use LIFDense")
        if not isinstance(layer, _HOP_LAYERS + (Flatten, Dropout)):
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
    """Refuse a window too short for the output to spike: each hop delays by one step, so the input reaches the
    k-th population at step k, and with T <= (number of populations) the output is silent whatever the weights."""
    hops = sum(isinstance(layer, _HOP_LAYERS) for layer in layers)
    if steps <= hops:
        raise LearningRuleError(f"{rule}: T = {steps} steps, but the input reaches the output only at step {hops} "
                                f"(one step of hop delay per layer, {hops} layers), so the output cannot spike; "
                                f"use T > {hops}")


class SpikeTrainRule(LearningRule):
    """Base of HM2-BP and ST-RSBP (see the module docstring); subclasses implement ``coefficients``.

    Options: ``target_true``/``target_false`` (output target counts), ``margin`` (errors within it are
    ignored), ``t_ref`` (refractory steps of the neuron the rule simulates: 0 is the deployable Loihi
    neuron, 2 the rules' original one), ``hidden_virtual_spikes`` (virtual spikes of silent hidden
    neurons that receive an error; 0: none), ``loss`` (what the output error ``dE/do`` comes from:
    ``"mse"``, the papers' ``1/2 sum (o - y)^2`` on counts with the targets and margin above; ``"task"``,
    the trainer's ``loss_fn`` -- the loss BPTT minimises -- evaluated on the output spike trains, whose
    gradient by autograd, averaged over time, is ``dE/do``: exact for any loss of the spike counts, such
    as the zoo's count cross-entropy), ``count_bounds`` (drop errors that push a silent neuron down or a
    neuron firing at every step up; see ``bound_error``), ``rate_penalty`` and ``rate_target`` (a hidden-activity
    term added to the loss; see ``rate_error``).
    """

    needs_tpsp = False
    # whether ``coefficients`` reads ``PostStats.counts_in`` of feed-forward layers (counted on demand)
    needs_counts_in = True
    # Every layer runs chunk by chunk with bool spike trains (``layer_backward_chunked``); True keeps float
    # trains and currents for the whole window (``layer_backward``, through the hop's autograd for conv and
    # pool layers), a slower, larger and more direct computation kept to cross-check the chunked one.
    full_trace = False
    LOSSES = ("mse", "task")

    def __init__(self, target_true: float = 35.0, target_false: float = 5.0, margin: float = 5.0, t_ref: int = 0,
                 hidden_virtual_spikes: int = 1, low_memory: bool = False, chunk: int = 32, loss: str = "mse",
                 count_bounds: bool = False, rate_penalty: float = 0.0, rate_target: float = 0.0):
        self.count_bounds = bool(count_bounds)
        number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
        if not number(rate_penalty) or not 0.0 <= rate_penalty < float("inf"):  # NaN fails every comparison
            raise LearningRuleError(f"{self.name}: rate_penalty must be a finite number >= 0, got {rate_penalty!r}")
        if not number(rate_target) or not 0.0 <= rate_target <= 1.0:
            raise LearningRuleError(f"{self.name}: rate_target must be a rate in [0, 1] (spikes per step), "
                                    f"got {rate_target!r}")
        self.rate_penalty, self.rate_target = float(rate_penalty), float(rate_target)
        if loss not in self.LOSSES:
            raise LearningRuleError(f"{self.name}: unknown loss {loss!r}; known: {', '.join(self.LOSSES)}")
        self.loss = loss
        if int(chunk) < 1:
            raise LearningRuleError(f"{self.name}: chunk must be >= 1")
        self.low_memory, self.chunk = bool(low_memory), int(chunk)
        if not margin >= 0 or not target_true >= 0 or not target_false >= 0:
            raise LearningRuleError(f"{self.name}: targets and margin must be >= 0")
        if int(t_ref) != t_ref or t_ref < 0 or int(hidden_virtual_spikes) < 0:
            raise LearningRuleError(f"{self.name}: t_ref and hidden_virtual_spikes must be integers >= 0")
        self.target_true, self.target_false, self.margin = float(target_true), float(target_false), float(margin)
        self.t_ref = int(t_ref)
        self.hidden_virtual_spikes = int(hidden_virtual_spikes)

    def describe(self) -> dict:
        return {"name": self.name, "target_true": self.target_true, "target_false": self.target_false,
                "margin": self.margin, "t_ref": self.t_ref, "hidden_virtual_spikes": self.hidden_virtual_spikes,
                "low_memory": self.low_memory, "chunk": self.chunk, "loss": self.loss,
                "count_bounds": self.count_bounds, "rate_penalty": self.rate_penalty, "rate_target": self.rate_target}

    def setup(self, model: nn.Module) -> None:
        """Refuse, before the first batch, a model the rules cannot train (``_layers`` names the layer)."""
        _layers(model)

    # -- forward -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def forward(self, model: nn.Module, x: torch.Tensor) -> tuple[list, torch.Tensor]:
        """(per-layer records, output spikes) of the neuron this rule trains (``t_ref`` included)."""
        with reuse_packed_weights():  # a dense layer's product runs group by group: pack its W^T once
            return self._forward(model, x)

    def _forward(self, model: nn.Module, x: torch.Tensor) -> tuple[list, torch.Tensor]:
        s = x
        counts = None  # (B, N) counts of ``s`` when a chunked layer made it (a bool train's sum is slow)
        records: list = []
        layers = _layers(model)
        check_steps(self.name, layers, x.shape[1])
        hop_layers = [layer for layer in layers if isinstance(layer, _HOP_LAYERS)]
        for layer in layers:
            if isinstance(layer, Flatten):
                s = _flat(s)
                counts = None if counts is None else counts.flatten(1)
                records.append(None)
                continue
            if isinstance(layer, Dropout):  # survivors are scaled in training: a float train
                s = layer(as_float(s, x.dtype) if layer.training else s)
                counts = None
                records.append(None)
                continue
            s = _flat(s) if not isinstance(layer, LIFDense) else s
            spec = neuron_spec(layer, x, self.t_ref)
            rec = layer.effective_rec_weight().detach() if isinstance(layer, RecurrentLIFDense) else None
            if not self.full_trace:  # one byte per spike, currents chunk by chunk
                s_in = s
                counts_in = counts  # None: counted in the backward if a rule needs it (``_counts_in``)
                vsum = torch.zeros(s.shape[0], layer.out_features, dtype=torch.float64, device=x.device)
                counts = torch.zeros_like(vsum)
                dense = isinstance(layer, LIFDense)
                # HM2-BP's T-PSP of a hidden neuron that will be given virtual spikes, for every neuron: their
                # kernel is the same for all (see ``virtual_kernel``), so a pass over the currents here (B T N
                # multiply-adds) saves remaking them (a convolution) or reading every S-PSP (B N N_in) in the
                # backward. Recurrent layers add their recurrent input inside the scan: not recorded there.
                kernel = (self.virtual_kernel(s.shape[1], spec, x) if self.needs_tpsp and rec is None
                          and self.hidden_virtual_spikes and layer is not hop_layers[-1] else None)
                tpsp_virtual = torch.zeros(s.shape[0], layer.out_features, dtype=x.dtype, device=x.device) \
                    if kernel is not None else None
                bias_sum = torch.zeros_like(vsum) if self.needs_tpsp and spec.bias is not None else None
                # float temporaries per step: the current, and the input as float when it is a bool train (a
                # convolution also copies its input block and pads its output)
                width = (layer.out_features + s.shape[2] * (s.dtype != x.dtype) if dense
                         else 2 * layer.out_features + s.shape[2])
                group, block = self._window_groups(*s.shape[:2], width)
                s_out = torch.empty(s.shape[0], s.shape[1], layer.out_features, dtype=torch.bool, device=x.device)
                in_csr = {} if REUSE_INPUT_CSR and dense and layer.out_features >= WEIGHT_EVENT_MIN_WIDTH else None
                for b0 in range(0, s.shape[0], group):  # the neurons of different samples are independent
                    src, rows = s_in[b0:b0 + group], slice(b0, b0 + group)
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
                                         weighted=_rows(tpsp_virtual, rows), bias_sum=_rows(bias_sum, rows), lag=lag)
                s = s_out
                if in_csr is not None:  # the groups whose product was event-driven
                    in_csr = {b0: (size, found[0]) for b0, (size, found) in in_csr.items() if len(found) == 1}
                records.append(LayerTrace(layer, s_in, None, s, spec, rec, vsum, counts, counts_in, tpsp_virtual,
                                          bias_sum, in_csr or None))
                continue
            counts = None
            s = s.to(x.dtype)
            a_ff = hop_delay(layer_current(layer, s))
            if self.t_ref:
                s_out = lif_sequence(a_ff, spec, rec)
            else:  # the layers' own float operators: exactly what the trained network computes
                bias = spec.bias if spec.bias is not None else a_ff.new_zeros(())
                if rec is None:
                    s_out = F.cuba_lif_sequence(a_ff, spec.alpha, spec.beta, spec.v_th, bias)
                else:
                    s_out = recurrent_cuba_lif_sequence(a_ff, rec, spec.alpha, spec.beta, spec.v_th, bias)
            records.append(LayerTrace(layer, s, a_ff, s_out, spec, rec))
            s = s_out
        return records, s

    def virtual_kernel(self, steps: int, spec: NeuronSpec, like: torch.Tensor) -> torch.Tensor:
        """(T, 1), or (T, N) for per-neuron decays: the S-PSP kernel ``lam_u`` of a neuron whose only spikes are
        the ``hidden_virtual_spikes`` virtual ones a silent hidden neuron is given; its T-PSP for currents
        ``a`` is ``sum_t kernel[t] a[t]``. Kept for the last (window, neuron) it was made for: every batch of a
        training run asks for the same one."""
        key = (steps, spec.t_ref, self.hidden_virtual_spikes, like.dtype, like.device)
        cached = getattr(self, "_virtual_kernel", None)
        if (cached is not None and cached[0] == key and torch.equal(cached[1], spec.alpha)
                and torch.equal(cached[2], spec.beta)):
            return cached[3]
        n = max(spec.alpha.numel(), spec.beta.numel())
        k = torch.full((1, n), float(self.hidden_virtual_spikes), dtype=like.dtype, device=like.device)
        lam_u, _ = spsp_adjoint(evenly_spaced_spikes(steps, k, spec.t_ref, dtype=like.dtype), spec.alpha, spec.beta,
                                spec.t_ref)
        self._virtual_kernel = (key, spec.alpha.clone(), spec.beta.clone(), lam_u[0])
        return lam_u[0]

    def predict(self, model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Class predictions (most active output) of the neuron this rule simulates."""
        return torch.cat([self.forward(model, x[i:i + batch_size])[1].to(x.dtype).sum(1).argmax(1)
                          for i in range(0, len(x), batch_size)])

    # -- loss ----------------------------------------------------------------------------------------------
    def targets(self, counts: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        t = torch.full_like(counts, self.target_false)
        t.scatter_(1, y.long().view(-1, 1), self.target_true)
        return t

    def count_error(self, counts: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-neuron error ``o - y`` outside the margin, per-sample loss ``1/2 sum err^2``)."""
        err = counts - self.targets(counts, y)
        err = err * (err.abs() > self.margin)
        return err, 0.5 * err.square().sum(1)

    def bound_error(self, g: torch.Tensor, s_out: torch.Tensor) -> torch.Tensor:
        """``g`` without the components that push a count out of its range: a silent neuron cannot fire less
        and one that fires at every step it can (every ``1 + t_ref`` steps from the first step an input reaches
        it) cannot fire more. The rate model ``o = a / v_th`` has no such bounds, so without this a neuron
        asked to go further keeps its error, and layers drift into silence or saturation (``count_bounds``)."""
        counts = s_out.sum(1).to(g.dtype).reshape(g.shape)
        fired = s_out.flatten(2).any(2).any(0)  # (T,): steps at which any neuron of the layer fired
        first = int(fired.nonzero()[0]) if bool(fired.any()) else 0  # the layer's first reachable step (hops)
        top = (s_out.shape[1] - 1 - first) // (1 + self.t_ref) + 1
        blocked = ((counts <= 0) & (g > 0)) | ((counts >= top) & (g < 0))
        return torch.where(blocked, torch.zeros_like(g), g)

    def rate_error(self, s_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(``dE_r/do`` (B, N), per-sample ``E_r`` (B,)) of the hidden-activity term of one hidden layer with spike
        trains ``s_out`` (B, T, ...), ``E_r = rate_penalty * sum_j max(0, o_j / T - rate_target)``: an L1 penalty on
        each neuron's rate above ``rate_target`` (spikes per step). Its gradient is ``rate_penalty / T`` for a
        neuron firing above the target and 0 otherwise (at ``o_j = rate_target T``, where the hinge has no
        derivative, 0), so it never reaches a silent neuron: its count cannot fall, and an error there would give
        it virtual spikes and push its weights further down with nothing to gain. It enters the layer's count
        error ``dE/do`` before ``count_bounds`` and the rule's own S-PSP update, so it lowers a firing neuron's
        rate through the same weights and inputs as the task's error does. The rate model ``o ~= a / v_th`` gives
        a neuron below threshold no gradient, so without such a term nothing tells a rule that a hidden neuron
        off is better than one firing at a low rate: BPTT's hidden code on the CNNs is sparse, HM2-BP's dense."""
        steps = s_out.shape[1]
        counts = s_out.sum(1, dtype=torch.float64).reshape(s_out.shape[0], -1)
        above = counts > self.rate_target * steps
        per_sample = self.rate_penalty * (counts / steps - self.rate_target).clamp(min=0.0).sum(1)
        grad = torch.where(above, torch.full_like(counts, self.rate_penalty / steps), torch.zeros_like(counts))
        return grad, per_sample

    def output_error(self, out: torch.Tensor, y: torch.Tensor, loss_fn) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-sample ``dE/do`` of the output counts (B, N), the batch's mean loss) for the rule's ``loss``."""
        if self.loss == "mse":
            err, per_sample = self.count_error(out.sum(1), y)
            return err, per_sample.mean()
        if loss_fn is None:
            raise LearningRuleError(f"{self.name}: loss='task' needs the trainer's loss_fn, got None")
        leaf = out.detach().requires_grad_(True)
        with torch.enable_grad():
            mean_loss = loss_fn(leaf, y)
            (grad,) = torch.autograd.grad(mean_loss, leaf)
        # the loss is the batch mean, so a sample's own dE/do is B times its share; a loss of the counts has
        # the same gradient at every step, and for any other loss the mean over time is its count component
        return grad.mean(1) * out.shape[0], mean_loss.detach()

    # -- backward ------------------------------------------------------------------------------------------
    def coefficients(self, trace: LayerTrace, g: torch.Tensor, stats: PostStats) -> tuple[torch.Tensor, torch.Tensor]:
        """(c_w, c_back), each (B, N), from the count error ``g`` (B, N) of the layer's neurons."""
        raise NotImplementedError

    def trains_recurrent(self) -> bool:
        return False

    def segments(self, records: list, targets: torch.Tensor):
        """The (records, output targets, weight of their update) the backward runs on: the whole sample, weight
        1 (both papers' rules). ST-RSBP's ``windows`` option yields one cropped copy per sub-window instead."""
        yield records, targets, 1.0

    def compute_gradients(self, model, x, y, loss_fn, forward_kwargs, scale=1.0) -> BatchResult:
        records, out = self.forward(model, x)
        out = out.to(x.dtype)
        counts = out.sum(1)
        err, mean_loss = self.output_error(out, y, loss_fn)
        g_out = err * (scale / x.shape[0])  # dE/do of the batch-mean loss
        pops = [k for k, r in enumerate(records) if r is not None]
        rate_g = {}  # hidden layer -> dE_r/do of the batch-mean hidden-activity term, from the whole sample's counts
        if self.rate_penalty:
            for k in pops[:-1]:
                grad, per_sample = self.rate_error(records[k].s_out)
                rate_g[k] = grad.to(x.dtype) * (scale / x.shape[0])
                mean_loss = mean_loss + per_sample.mean().to(mean_loss.dtype)
        for recs, targets, weight in self.segments(records, self.targets(counts, y)):
            g = g_out if weight == 1.0 else g_out * weight
            for k in reversed(pops):
                need_input = k != pops[0]
                backward = self.layer_backward if recs[k].a_ff is not None else self.layer_backward_chunked
                if k in rate_g:  # the whole sample's count is the sum of its segments': each gets the same dE/do
                    g = g + (rate_g[k] if weight == 1.0 else rate_g[k] * weight).reshape(g.shape)
                if self.count_bounds:
                    g = self.bound_error(g, recs[k].s_out)
                g = backward(recs[k], g, targets if k == pops[-1] else None, need_input)
        return BatchResult(mean_loss.detach(), out)

    def layer_backward(self, tr: LayerTrace, g: torch.Tensor, targets: torch.Tensor | None,
                       need_input: bool) -> torch.Tensor | None:
        """Accumulate the layer's gradients from its count error ``g``; return the error of its inputs."""
        layer, spec = tr.layer, tr.spec
        s_post = tr.s_out
        counts = s_post.sum(1)
        silent = (counts == 0) & (g != 0)
        if bool(silent.any()):
            k = targets if targets is not None else torch.full_like(counts, float(self.hidden_virtual_spikes))
            virtual = evenly_spaced_spikes(s_post.shape[1], torch.where(silent, k, torch.zeros_like(k)), spec.t_ref)
            s_post = s_post + virtual.to(s_post.dtype)
            counts = s_post.sum(1)
        lam_u, lam_p = spsp_adjoint(s_post, spec.alpha, spec.beta, spec.t_ref)
        e_rec = dense_spsp(lam_u, tr.s_out) if tr.rec_weight is not None else None
        tpsp = None
        if self.needs_tpsp:
            a_total = tr.a_ff if tr.rec_weight is None else tr.a_ff + hop_delay(tr.s_out @ tr.rec_weight.t())
            tpsp = (lam_u * a_total).sum(1)
        stats = PostStats(counts, tr.s_in.sum(1), tr.s_out.sum(1) if tr.rec_weight is not None else None,
                          spsp_per_pre_spike(lam_u), e_rec, tpsp)
        c_w, c_back = self.coefficients(tr, g, stats)

        weight = layer.weight if isinstance(layer.weight, nn.Parameter) and layer.weight.requires_grad else None
        gw, gs = self.hop_products(tr, c_w.unsqueeze(1) * lam_u if weight is not None else None,
                                   c_back.unsqueeze(1) * lam_u if need_input else None)
        if weight is not None:
            _accumulate(weight, gw)
        result = None
        if need_input:
            o_in = tr.s_in.sum(1)
            per_spike = (gs * tr.s_in).sum(1) / o_in.clamp(min=1)
            result = torch.where(o_in > 0, per_spike, gs.sum(1) / gs.shape[1])
        bias = getattr(layer, "bias", None)
        if isinstance(bias, nn.Parameter) and bias.requires_grad:
            gb = (c_w * lam_p.sum(1)).sum(0)
            _accumulate(bias, gb.reshape(bias.numel(), -1).sum(1).reshape(bias.shape))
        if tr.rec_weight is not None and self.trains_recurrent() and layer.rec_weight.requires_grad:
            n = lam_u.shape[2]
            gv = ((c_w.unsqueeze(1) * lam_u)[:, 1:].reshape(-1, n).t() @ tr.s_out[:, :-1].reshape(-1, n))
            gv = gv * layer.rec_weight_scale
            if layer.rec_mask is not None:
                gv = gv * layer.rec_mask
            _accumulate(layer.rec_weight, gv)
        return result

    @staticmethod
    def hop_products(tr: LayerTrace, g_w: torch.Tensor | None, g_in: torch.Tensor | None):
        """Back through the hop ``a = delay(current(s_in, W))`` with output gradients ``g_w`` (for W) and
        ``g_in`` (for s_in): ``sum_{b,t} g_w[b,t,i] da[b,t,i]/dW`` and ``sum_i g_in[b,t,i] da[b,t,i]/ds_in[b,g,j]``.
        Dense layers: two GEMMs over (batch x time); conv and pool layers: their convolution's autograd."""
        layer, s_in = tr.layer, tr.s_in
        if isinstance(layer, LIFDense):
            n_in = s_in.shape[2]
            gw = gs = None
            if g_w is not None:
                n = g_w.shape[2]
                gw = g_w[:, 1:].reshape(-1, n).t() @ s_in[:, :-1].reshape(-1, n_in)
            if g_in is not None:
                gs = s_in.new_zeros(s_in.shape)
                gs[:, :-1] = g_in[:, 1:] @ layer.weight.detach()
            return gw, gs
        w_leaf = layer._hop_weight().detach().requires_grad_(g_w is not None)
        x = s_in.detach().requires_grad_(g_in is not None)
        with torch.enable_grad():
            a = hop_delay(layer_current(layer, x, w_leaf))
            gw = torch.autograd.grad(a, w_leaf, g_w, retain_graph=g_in is not None)[0] if g_w is not None else None
            gs = torch.autograd.grad(a, x, g_in)[0] if g_in is not None else None
        return gw, gs

    @staticmethod
    def per_spike_ratio(e: torch.Tensor, counts_pre: torch.Tensor, random_spike: torch.Tensor) -> torch.Tensor:
        """``e_ij / o_j`` (B, N_post, N_pre); a silent pre neuron's is the S-PSP of one spike at a random step
        (``random_spike``, (B, N_post))."""
        o = counts_pre.unsqueeze(1)
        return torch.where(o > 0, e / o.clamp(min=1), random_spike.unsqueeze(2))

    # -- the chunked backward: spike trains kept as bool, everything else chunk by chunk --------------------
    @staticmethod
    def _event_driven(s: torch.Tensor, like: torch.Tensor, nonzeros: float | None = None) -> bool:
        """Whether products with the (B, T, M) train ``s`` run event-driven (``spsp_kernels.scatter_rows`` /
        ``spike_dots``, cost per non-zero) rather than as GEMMs: on the CPU with numba, when at most
        ``EVENT_DENSITY`` of ``s`` is non-zero (about where a GEMM's higher throughput wins). ``nonzeros``:
        the count, when known (a bool train's spike count)."""
        if s.device.type != "cpu" or not spsp_kernels.usable(like) or s.numel() == 0:
            return False
        if s.dtype != torch.bool and s.dtype != like.dtype:
            return False
        if nonzeros is None:  # a float input: estimated from a few steps spread over the window (a heuristic)
            head = s[:, ::max(1, s.shape[1] // 4)]
            return float(torch.count_nonzero(head)) <= EVENT_DENSITY * head.numel()
        return float(nonzeros) <= EVENT_DENSITY * s.numel()

    def _event_driven_weights(self, s: torch.Tensor, n: int, dtype: torch.dtype) -> bool:
        """Whether a dense layer of ``n`` neurons makes its weight gradient from the input trains ``s`` (B, T,
        N_in) event-driven (``WEIGHT_EVENT_*`` above): on the CPU with numba, for a wide layer and a sparse
        input (its density estimated from a few steps spread over the window, as in ``_event_driven``)."""
        if n < WEIGHT_EVENT_MIN_WIDTH or s.device.type != "cpu" or not spsp_kernels.usable(torch.empty(0, dtype=dtype)):
            return False
        if s.dtype != torch.bool and s.dtype != dtype or s.numel() == 0:
            return False
        head = s[:, ::max(1, s.shape[1] // 4)]
        a, b = WEIGHT_EVENT_COST
        return float(torch.count_nonzero(head)) / head.numel() * (a + b / n) <= WEIGHT_EVENT_BUDGET

    def _coefficients_first(self, tr: LayerTrace, g: torch.Tensor, targets: torch.Tensor | None,
                            need_input: bool) -> bool:
        """Whether a dense layer's coefficients can come before its products and nothing else needs its S-PSP
        matrix ``e``: feed-forward (no recurrent S-PSPs), no input error to hand down (``e`` makes it with
        one product, where the products of ``hop_backward_chunked`` take a second GEMM) and, for rules with a
        T-PSP, no neuron given virtual spikes whose T-PSP the forward did not record (the output's)."""
        if tr.rec_weight is not None or need_input or not isinstance(tr.layer, LIFDense):
            return False
        if not self.needs_tpsp or (targets is None and tr.tpsp_virtual is not None):
            return True
        return not bool(((tr.counts == 0) & (g != 0)).any())

    def _counts_in(self, tr: LayerTrace) -> torch.Tensor:
        """(B, N_in) float64 input counts of a chunked trace, counted here on first use when the forward did not
        (a float network input: HM2-BP's first layer never reads them)."""
        if tr.counts_in is None:
            tr.counts_in = self._time_sum(tr.s_in, torch.float64)
        return tr.counts_in

    def _time_sum(self, s: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Per-neuron sums over time (B, N) of a (B, T, N) train, ``chunk`` steps at a time (a bool tensor's
        ``sum`` converts the whole tensor to int64 first)."""
        if s.dtype != torch.bool:  # in the train's own dtype (a sum with dtype= converts the whole train first)
            return s.sum(1).to(dtype)
        out = torch.zeros(s.shape[0], s.shape[2], dtype=dtype, device=s.device)
        block = self._block(s.shape[0], 2 * s.shape[2])  # a bool chunk's sum makes an int64 copy
        for t0 in range(0, s.shape[1], block):
            out += s[:, t0:t0 + block].sum(1).to(dtype)
        return out

    def _window_groups(self, batch: int, steps: int, width: int) -> tuple[int, int]:
        """(samples per group, steps per block) for float temporaries (group, block, width) near ``CHUNK_BYTES``:
        groups of whole windows while one sample's window fits (their products then run over contiguous
        (sample, step) rows of the stored trains, in one GEMM), else one sample in blocks of steps."""
        per_sample = 4 * max(steps * width, 1)
        if CHUNK_BYTES < per_sample:
            return 1, min(steps, self._block(1, width))
        groups = -(-batch // (CHUNK_BYTES // per_sample))
        return -(-batch // groups), steps

    def _block(self, batch: int, width: int) -> int:
        """Steps per block of the chunked path for float temporaries (batch, steps, width): ``chunk``, or more
        while they stay under ``CHUNK_BYTES``."""
        return max(self.chunk, CHUNK_BYTES // (4 * max(batch * width, 1)))

    @staticmethod
    def _compiled_scan(post: torch.Tensor, spec: NeuronSpec, dtype: torch.dtype) -> bool:
        """Whether ``_scan_chunks`` runs the compiled reverse scan (CPU, numba) rather than its tensor loop."""
        # alpha and beta as they would be in ``dtype``, without casting them (a few calls per layer and step)
        return post.device.type == "cpu" and spsp_kernels.usable(spec.alpha, spec.beta, dtype=dtype)

    def _scan_chunks(self, post: torch.Tensor, virtual: torch.Tensor | None, spec: NeuronSpec, dtype: torch.dtype,
                     sums: torch.Tensor, block: int, scale: torch.Tensor | None = None, work: dict | None = None):
        """The reverse-time recursion of ``spsp_adjoint`` over ``block``-step blocks, last block first, for the
        post trains ``post`` (B, T, N) plus ``virtual`` (B, N) evenly spaced virtual spikes (None: none; made on
        the fly by the compiled scan): yields (t0, t1, lam_u[t0:t1]) and adds the per-neuron sums of lam_u
        (steps >= 1) and lam_p over the window to ``sums[0]`` and ``sums[1]`` ((2, B, N), float64; None: not
        wanted, and the compiled scan leaves them out). ``scale``
        (B, N), if given, multiplies the yielded blocks per neuron (``lam_u * scale.unsqueeze(1)``; inside the
        compiled scan, which saves a pass over each block); the sums stay the kernel's. ``work`` (a dict kept by the
        caller for a layer's backward): the compiled scan writes every block into the same buffer
        (``spsp_kernels.adjoint_scan_chunk``), so a yielded block is valid until the next one is asked for."""
        batch, steps, n = post.shape
        block = -(-steps // -(-steps // max(block, 1)))  # equal blocks (no short last one: a GEMM's K)
        if SpikeTrainRule._compiled_scan(post, spec, dtype):
            state: dict = {}
            for t1 in range(steps, 0, -block):
                t0 = max(t1 - block, 0)
                lam_u, _ = spsp_kernels.adjoint_scan_chunk(post, t0, t1, spec, dtype, state,
                                                           *((None, None) if sums is None else sums),
                                                           virtual=virtual, scale=scale, work=work)
                yield t0, t1, lam_u
            return
        if virtual is not None:
            post = evenly_spaced_spikes(steps, virtual, spec.t_ref, dtype=torch.bool).logical_or_(post)
        lp = torch.zeros(batch, n, dtype=dtype, device=post.device)
        lu = torch.zeros_like(lp)
        for t1 in range(steps, 0, -block):
            t0 = max(t1 - block, 0)
            lo = max(t0 - spec.t_ref, 0)
            window = post[:, lo:t1].to(dtype)
            keep_beta = (1.0 - reset_mask(window, spec.t_ref)[:, t0 - lo:]) * spec.beta
            sp = window[:, t0 - lo:]
            lam_u = torch.empty_like(sp)
            lam_p = torch.empty_like(sp)
            for t in range(t1 - t0 - 1, -1, -1):
                lp = sp[:, t] + keep_beta[:, t] * lp
                lu = lp + spec.alpha * lu
                lam_p[:, t] = lp
                lam_u[:, t] = lu
            first = 1 if t0 == 0 else 0
            if sums is not None:
                sums[0] += lam_u[:, first:].sum(1).to(sums.dtype)
                sums[1] += lam_p.sum(1).to(sums.dtype)
            yield t0, t1, (lam_u if scale is None else lam_u * scale.unsqueeze(1))

    def _group_and_block(self, batch: int, n: int, e_width: int, width: int, compiled: bool) -> tuple[int, int]:
        """(samples per group, steps per block) of ``layer_backward_chunked``. With the compiled scan a group's
        S-PSP matrices (G, N, ``e_width``) stay near ``CHUNK_BYTES`` (at least one sample; groups of even
        size). Elsewhere (CUDA, no numba) the whole batch is one group: the reverse scan is then a per-step
        loop of tensor ops whose cost is per call, not per sample, and the matrices are still T-independent."""
        group = batch
        if compiled:
            groups = -(-batch // max(1, CHUNK_BYTES // max(4 * n * e_width, 1)))
            group = -(-batch // groups)
        return group, self._block(group, width)

    @staticmethod
    def _add_spsp(e: torch.Tensor | None, lam: torch.Tensor, s_pre: torch.Tensor, sparse: bool) -> torch.Tensor:
        """``e[b] + lam[b]^T @ s_pre[b]`` (e None: zeros): S-PSPs (G, N, M) of one block, ``lam`` (G, C, N) the
        kernel at the steps after the pre-synaptic ones ``s_pre`` (G, C, M, bool or float), added in place.
        Sparse trains: event-driven into ``e``'s transpose, a contiguous (G, M, N), so that each pre-synaptic
        spike adds to one contiguous row; else one batched GEMM per block, K = C steps, over views of the
        stored trains (a float input is not copied)."""
        if sparse:
            if e is None:
                e = lam.new_zeros(lam.shape[0], s_pre.shape[2], lam.shape[2]).transpose(1, 2)
            spsp_kernels.scatter_rows(lam, s_pre, e.transpose(1, 2), per_sample=True)
            return e
        if e is None:  # the first block writes e (no zero fill)
            return torch.bmm(lam.transpose(1, 2), as_float(s_pre, lam.dtype))
        return e.baddbmm_(lam.transpose(1, 2), as_float(s_pre, lam.dtype))

    def _with_virtual_spikes(self, tr: LayerTrace, g: torch.Tensor, targets: torch.Tensor | None):
        """(virtual spike counts (B, N) or None, post counts (B, N) in g's dtype, mask (B, N) of the neurons given
        virtual spikes or None) of a chunked trace: silent neurons that receive an error get evenly spaced
        virtual spikes (``evenly_spaced_spikes``), ``targets`` of them at the output, ``hidden_virtual_spikes``
        elsewhere; ``_scan_chunks`` adds them to the recorded trains."""
        steps = tr.s_out.shape[1]
        counts = tr.counts.to(g.dtype)
        silent = (counts == 0) & (g != 0)
        if not bool(silent.any()):
            return None, counts, None
        k = targets if targets is not None else torch.full_like(counts, float(self.hidden_virtual_spikes))
        k = virtual_counts(steps, torch.where(silent, k, torch.zeros_like(k)), tr.spec.t_ref)
        counts = counts + k.to(g.dtype)  # silent neurons: their real count is 0
        virtual = (counts > 0).logical_and_(silent)
        return (k, counts, virtual) if bool(virtual.any()) else (None, counts, None)

    def layer_backward_chunked(self, tr: LayerTrace, g: torch.Tensor, targets: torch.Tensor | None,
                               need_input: bool) -> torch.Tensor | None:
        """``layer_backward`` for a layer whose trace holds bool spikes and no currents (conv and pool layers:
        ``hop_backward_chunked``). Dense and recurrent layers: one reverse pass over time per group of samples.

        Every coefficient of the rules is per sample, so a group of G samples makes its S-PSP matrices
        ``e`` (G, N, N_in) (and ``e_rec`` (G, N, N)) block by block during the reverse scan, one batched
        product ``lam_u^T @ s_in`` per block (``_add_spsp``), then its coefficients from its reductions; the
        weight gradient ``sum_b c_w[b, i] e[b, i, j]`` and the input error ``sum_i c_back[b, i] w_ij e[b, i, j]``
        are then elementwise (G N N_in, no factor T). Against a weight-gradient GEMM and an input-error GEMM
        per block (and a second scan to have the coefficients first) this is one scan and one GEMM of the
        same size as BPTT's weight gradient. Memory: ``e`` of a group is kept near ``CHUNK_BYTES`` (at least
        one sample) and the float blocks near ``CHUNK_BYTES`` (``_block``), whatever T.

        The T-PSP (HM2-BP's self term) is the membrane summed at the spikes, recorded by the forward
        (``vsum``), less the bias part; neurons given virtual spikes (silent ones; their membrane was never
        reset there) take the forward's ``tpsp_virtual`` in hidden feed-forward layers, else their current is
        re-made, for those columns alone.

        A feed-forward layer that hands no error down (the first) and whose coefficients are known before the
        scan needs no ``e``: ``hop_backward_chunked`` then makes its weight gradient as one GEMM over (sample,
        step) rows (``_coefficients_first``)."""
        if not isinstance(tr.layer, LIFDense) or self._coefficients_first(tr, g, targets, need_input):
            return self.hop_backward_chunked(tr, g, targets, need_input)
        layer, spec, dtype = tr.layer, tr.spec, g.dtype
        batch, steps, n = tr.s_out.shape
        n_in = tr.s_in.shape[2]
        counts_rec = tr.counts.to(dtype)
        post = tr.s_out  # plus virtual spikes, made by the reverse scan
        virtual_k, counts, virtual = self._with_virtual_spikes(tr, g, targets)
        virtual_cols = None if virtual is None else virtual.any(0).nonzero().squeeze(1)
        rec = tr.rec_weight
        w = layer.weight.detach()
        counts_in = self._counts_in(tr).to(dtype)
        weight = layer.weight if layer.weight.requires_grad else None
        bias = getattr(layer, "bias", None)
        bias = bias if isinstance(bias, nn.Parameter) and bias.requires_grad else None
        train_rec = rec is not None and self.trains_recurrent() and layer.rec_weight.requires_grad
        gw = torch.zeros_like(w) if weight is not None else None
        gb = torch.zeros(n, dtype=dtype, device=g.device) if bias is not None else None
        gv = torch.zeros(n, n, dtype=dtype, device=g.device) if train_rec else None
        result = torch.empty(batch, n_in, dtype=dtype, device=g.device) if need_input else None
        want_e = weight is not None or need_input
        want_tpsp_v = self.needs_tpsp and virtual_cols is not None and virtual_cols.numel() > 0
        recorded_v = want_tpsp_v and targets is None and tr.tpsp_virtual is not None  # by the forward
        remake_v = want_tpsp_v and not recorded_v and not want_e  # currents remade for the columns
        w_v = w[virtual_cols] if remake_v else None
        rec_v = rec[virtual_cols] if remake_v and rec is not None else None
        sparse_in = want_e and self._event_driven(tr.s_in, g, counts_in.sum() if tr.s_in.dtype == torch.bool else None)
        sparse_rec = rec is not None and self._event_driven(tr.s_out, g, counts_rec.sum())
        compiled = self._compiled_scan(post, spec, dtype)
        # float temporaries per step: lam_u, and the trains the products read as float (bool trains are converted)
        width = n + n_in * (want_e and tr.s_in.dtype != dtype) + n * (rec is not None)
        group, block = self._group_and_block(batch, n, n_in * want_e + n * (rec is not None), width, compiled)
        work: dict = {}  # the reverse scan's block buffers, reused by every group (``_scan_chunks``)
        for b0 in range(0, batch, group):
            b1 = min(b0 + group, batch)
            rows = slice(b0, b1)
            sums = torch.zeros(2, b1 - b0, n, dtype=torch.float64, device=g.device)  # lam_u (steps >= 1), lam_p
            e = e_rec = None  # (G, N, N_in) and (G, N, N), made by the first block
            # T-PSP of neurons given virtual spikes: from e when it is made (sum_j w_ij e_ij), else re-made
            tpsp_v = g.new_zeros(b1 - b0, virtual_cols.numel()) if remake_v else None
            for t0, t1, lam_u in self._scan_chunks(post[rows], _rows(virtual_k, rows), spec, dtype, sums, block,
                                                   work=work):
                f = 1 if t0 == 0 else 0  # the kernel at step t pairs with the pre spikes of step t - 1
                lam = lam_u[:, f:]
                s_prev = tr.s_in[rows, t0 + f - 1:t1 - 1]
                r_prev = tr.s_out[rows, t0 + f - 1:t1 - 1] if rec is not None else None
                if want_e:
                    e = self._add_spsp(e, lam, s_prev, sparse_in)
                if rec is not None:
                    e_rec = self._add_spsp(e_rec, lam, r_prev, sparse_rec)
                if tpsp_v is not None:
                    a = as_float(s_prev, dtype) @ w_v.t()
                    if rec is not None:
                        a = a + as_float(r_prev, dtype) @ rec_v.t()
                    tpsp_v += (lam[:, :, virtual_cols] * a).sum(1)
            if want_tpsp_v and want_e and not recorded_v:  # every neuron, then the columns: cheaper than a gather
                tpsp_v = (e * w).sum(2)[:, virtual_cols]
                if rec is not None:
                    tpsp_v += (e_rec * rec).sum(2)[:, virtual_cols]
            lam_u_sum, lam_p_sum = sums[0].to(dtype), sums[1].to(dtype)
            tpsp = None
            if self.needs_tpsp:
                tpsp = tr.vsum[rows].to(dtype, copy=True)
                if spec.bias is not None:
                    tpsp = tpsp - spec.bias * lam_p_sum
                if recorded_v:
                    tpsp = torch.where(virtual[rows], tr.tpsp_virtual[rows].to(dtype), tpsp)
                elif want_tpsp_v:
                    tpsp[:, virtual_cols] = tpsp_v
            stats = PostStats(counts[rows], counts_in[rows], counts_rec[rows] if rec is not None else None,
                              lam_u_sum / steps, e_rec, tpsp)
            c_w, c_back = self.coefficients(tr, g[rows], stats)
            if gw is not None:
                _add_coefficient_sum(gw, c_w, e)
            if gv is not None:
                _add_coefficient_sum(gv, c_w, e_rec)
            if gb is not None:
                gb += (c_w * lam_p_sum).sum(0)
            if need_input:  # dE/do_j = sum_i c_back[b, i] w_ij e_bij / o_j; a silent input: one spike at a random step
                per_spike = torch.bmm(c_back.unsqueeze(1), e.mul_(w)).squeeze(1)
                total = (c_back * lam_u_sum) @ w
                o_in = counts_in[rows]
                result[rows] = torch.where(o_in > 0, per_spike / o_in.clamp(min=1), total / steps)
        if gw is not None:
            _accumulate(weight, gw)
        if gb is not None:
            _accumulate(bias, gb)
        if gv is not None:
            gv = gv * layer.rec_weight_scale
            _accumulate(layer.rec_weight, gv * layer.rec_mask if layer.rec_mask is not None else gv)
        return result

    def hop_backward_chunked(self, tr: LayerTrace, g: torch.Tensor, targets: torch.Tensor | None,
                             need_input: bool) -> torch.Tensor | None:
        """``layer_backward`` for a conv or pool layer whose trace holds bool spikes and no currents, and for a
        dense feed-forward layer whose coefficients need no S-PSP matrix (``_coefficients_first``).

        A conv synapse's S-PSP is the dense one, ``e_ij = sum_t lam_u_i[t] s_j[t-1]``, and the weight is shared
        over positions, so the rules' weight gradient ``sum_{b,i,j sharing w} c_w[b,i] e_bij`` is the
        convolution's weight gradient for the output gradient ``c_w lam_u`` against the input spikes over
        (sample, step) rows, and the input error ``sum_i c_back[b,i] w_ij e_bij / o_j`` is
        ``sum_t s_j[t-1] convT(c_back lam_u[t])_j / o_j``: the products of BPTT's backward through the same
        convolution (``spsp.conv_hop_products``), made per block of steps from the reverse scan, so only the
        bool trains span the window. The coefficients come first (a layer's ``e`` is never formed): from the
        counts, and for HM2-BP from the T-PSP, which is the forward's membrane sums, less their bias part (the
        forward's ``bias_sum``, ``sum_t lam_p[t]``), and for neurons given virtual spikes the forward's
        ``tpsp_virtual`` (``sum_t lam_u[t] a[t]``). When a coefficient needs a reduction of the kernel the
        forward did not record (virtual spikes at the output, which the forward cannot know, and then their
        currents are remade) a first scan gives it. Float temporaries
        stay near ``CHUNK_BYTES`` whatever T (groups of whole windows while one fits, else one sample in
        blocks of steps).

        A dense layer's products are the same with the dense hop (``spsp.dense_hop_block``): the weight
        gradient is one GEMM ``(c_w lam_u)^T @ s_in`` over the (sample, step) rows of a group, BPTT's own
        weight-gradient product, where forming ``e`` would add passes over G N N_in elements."""
        layer, spec, dtype = tr.layer, tr.spec, g.dtype
        batch, steps, n = tr.s_out.shape
        n_in = tr.s_in.shape[2]
        dense = isinstance(layer, LIFDense)
        post = tr.s_out  # plus virtual spikes, made by the reverse scan
        virtual_k, counts, virtual = self._with_virtual_spikes(tr, g, targets)
        counts_in = self._counts_in(tr).to(dtype) if need_input or self.needs_counts_in else None
        weight = layer.weight if isinstance(layer.weight, nn.Parameter) and layer.weight.requires_grad else None
        bias = getattr(layer, "bias", None)
        bias = bias if isinstance(bias, nn.Parameter) and bias.requires_grad else None
        if weight is None and bias is None and not need_input:  # e.g. a first pool layer without a bias
            return None
        tpsp_v = self.needs_tpsp and virtual is not None
        remake_v = tpsp_v and (targets is not None or tr.tpsp_virtual is None)  # currents remade in a first scan
        # a first scan for what the coefficients need before the products: the remade virtual T-PSP, and the T-PSP's
        # bias part where the forward did not record it (``LayerTrace.bias_sum``)
        bias_part = self.needs_tpsp and spec.bias is not None
        first_scan = remake_v or (bias_part and tr.bias_sum is None)
        compiled = self._compiled_scan(post, spec, dtype)
        # float temporaries per step: lam_u and the two output gradients; the input as float and its error
        width = 3 * n + 2 * n_in
        if dense:  # lam_u scaled in place; the input as float when it is a bool train
            width = n + n_in * (tr.s_in.dtype != dtype) + need_input * (2 * n + n_in)
        group, block = self._window_groups(batch, steps, width) if compiled else (batch, self._block(batch, width))
        # a dense layer's weight gradient alone reads only c_w lam_u: the scan writes it so
        scaled = dense and weight is not None and not need_input
        events = None  # (1, N_in, N): the dense weight gradient's transpose when it is event-driven
        if scaled and self._event_driven_weights(tr.s_in, n, dtype):
            events = torch.zeros(1, n_in, n, dtype=dtype)  # the weight gradient's transpose, spike by spike
        # the weight gradient of the products (GEMMs, convolutions); none when it is made spike by spike
        gw = torch.zeros_like(weight, dtype=dtype) if weight is not None and events is None else None
        gb = torch.zeros(n, dtype=dtype, device=g.device) if bias is not None else None
        result = torch.empty(batch, n_in, dtype=dtype, device=g.device) if need_input else None
        work: dict = {}  # the reverse scan's block buffers, reused by every group and scan (``_scan_chunks``)
        for b0 in range(0, batch, group):
            rows = slice(b0, min(b0 + group, batch))
            sums = torch.zeros(2, rows.stop - b0, n, dtype=torch.float64, device=g.device)  # lam_u (t >= 1), lam_p
            random_spike = None  # a conv or pool layer is feed-forward: only recurrent synapses use it
            tpsp = tr.vsum[rows].to(dtype, copy=True) if self.needs_tpsp else None
            if first_scan:
                remade = g.new_zeros(rows.stop - b0, n) if remake_v else None
                for t0, t1, lam_u in self._scan_chunks(post[rows], _rows(virtual_k, rows), spec, dtype, sums,
                                                       block, work=work):
                    if remade is not None:
                        remade += (lam_u * hop_current_chunk(layer, tr.s_in[rows], t0, t1, dtype)).sum(1)
                random_spike = sums[0].to(dtype) / steps
                if bias_part and tr.bias_sum is None:
                    tpsp -= spec.bias * sums[1].to(dtype)
                sums.zero_()
            if bias_part and tr.bias_sum is not None:
                tpsp -= spec.bias * tr.bias_sum[rows].to(dtype)
            if tpsp_v:
                made = remade if remake_v else tr.tpsp_virtual[rows].to(dtype)
                tpsp = torch.where(virtual[rows], made, tpsp)
            stats = PostStats(counts[rows], None if counts_in is None else counts_in[rows], None, random_spike, None,
                              tpsp)
            c_w, c_back = self.coefficients(tr, g[rows], stats)
            per_spike = g.new_zeros(rows.stop - b0, n_in) if need_input else None
            # a dense layer's weight gradient alone reads only c_w lam_u: the scan writes it so
            # the sums of lam_u and lam_p are read only by a bias's gradient and the input error
            wanted = sums if gb is not None or need_input or not SKIP_UNREAD_SUMS else None
            for t0, t1, lam_u in self._scan_chunks(post[rows], _rows(virtual_k, rows), spec, dtype, wanted, block,
                                                   c_w if scaled else None, work):
                if weight is None and not need_input:  # a bias alone (a pool's, a frozen weight's): the sums suffice
                    continue
                if dense:
                    g_in = lam_u * c_back.unsqueeze(1) if need_input else None
                    g_w = None
                    if weight is not None:
                        g_w = lam_u if scaled else g_in if c_back is c_w else lam_u.mul_(c_w.unsqueeze(1))
                    csr = None  # the forward product's non-zeros of this group's input rows, if it kept them
                    if events is not None and tr.in_csr is not None and tr.in_csr.get(b0, (0,))[0] == rows.stop - b0:
                        csr = tr.in_csr[b0][1]
                    part_in = dense_hop_block(layer.weight, tr.s_in[rows], t0, g_w, g_in, gw, events, csr)
                    if part_in is not None:
                        per_spike += part_in
                    continue
                f = 1 if t0 == 0 else 0  # the kernel at step t pairs with the input spikes of step t - 1
                lam = lam_u[:, f:]
                s_prev = as_float(tr.s_in[rows, t0 + f - 1:t1 - 1], dtype)
                g_w = lam * c_w.unsqueeze(1) if gw is not None else None
                g_in = None
                if need_input:
                    g_in = g_w if c_back is c_w and g_w is not None else lam * c_back.unsqueeze(1)
                part_w, part_in = conv_hop_products(layer, s_prev, g_w, g_in)
                if part_w is not None:
                    gw += part_w
                if part_in is not None:  # the error reaching each input at its spikes
                    per_spike += part_in.mul_(s_prev).sum(1)
            if gb is not None:
                gb += (c_w * sums[1].to(dtype)).sum(0)
            if need_input:  # a silent input: the error of one spike at a uniformly random step
                lam_u_sum = sums[0].to(dtype)
                if dense:
                    total = (c_back * lam_u_sum) @ layer.weight.detach().to(dtype)
                else:
                    total = conv_hop_products(layer, None, None, (c_back * lam_u_sum).unsqueeze(1))[1].squeeze(1)
                o_in = counts_in[rows]
                result[rows] = torch.where(o_in > 0, per_spike / o_in.clamp(min=1), total / steps)
        if weight is not None:  # events: sums from +0.0, so never -0.0, and its transpose is 0 + it bit for bit
            _accumulate(weight, gw if events is None else spsp_kernels.transposed(events[0]))
        if gb is not None:
            _accumulate(bias, gb.reshape(bias.numel(), -1).sum(1))
        return result


def _rows(t: torch.Tensor | None, rows: slice) -> torch.Tensor | None:
    return None if t is None else t[rows]


def _add_coefficient_sum(out: torch.Tensor, c: torch.Tensor, e: torch.Tensor) -> None:
    """``out[i, j] += sum_b c[b, i] e[b, i, j]``: one pass over each sample's e for large ones (a batched product
    would copy e into (i, b, j) order first), one batched product for small ones (a per-sample op costs more
    than its arithmetic there). The per-sample passes are one compiled pass on the CPU where it gives the same
    values (``spsp_kernels.coefficient_sum``; ``FUSED_COEFFICIENT_SUM``)."""
    if e.numel() <= COEFFICIENT_SUM_BMM_MAX:
        out += torch.bmm(c.t().unsqueeze(1), e.transpose(0, 1)).squeeze(1)
        return
    if FUSED_COEFFICIENT_SUM and spsp_kernels.coefficient_sum(out, c, e):
        return
    for b in range(e.shape[0]):
        out.addcmul_(c[b].unsqueeze(1), e[b])


def _accumulate(param: torch.Tensor, grad: torch.Tensor) -> None:
    """Add ``grad`` to ``param.grad``; ``grad`` is handed over (every caller's is a fresh tensor it drops), so a
    first gradient is kept as it is rather than copied."""
    grad = grad.to(param.dtype).reshape(param.shape)
    if param.grad is None:
        param.grad = grad
    else:
        param.grad.add_(grad)
