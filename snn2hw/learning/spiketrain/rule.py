"""``SpikeTrainRule``: the batch loop of the spike-train rules (forward record, output error, layer backward from the
top), kept thin; the passes are the package's modules (see the package docstring)."""
from __future__ import annotations

import torch
from torch import nn

from snn2hw.learning.base import BatchResult, LearningRule, LearningRuleError
from snn2hw.learning.spiketrain import chunked, errors, scan, whole
from snn2hw.learning.spiketrain.record import record_chunked, record_whole
from snn2hw.learning.spiketrain.trace import (HOP_LAYERS, BackwardOptions, LayerTrace, PostStats, check_steps,
                                              per_spike_ratio, spiking_layers)
from snn2hw.learning.spsp import NeuronSpec, as_float, neuron_spec
from snn2hw.nn.conv import Dropout, Flatten, _flat
from snn2hw.nn.layers import LIFDense, RecurrentLIFDense
from snn2hw.nn.spike_dense import reuse_packed_weights


class SpikeTrainRule(LearningRule):
    """Base of HM2-BP and ST-RSBP (see the package docstring); subclasses implement ``coefficients``.

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
    # Every layer runs chunk by chunk with bool spike trains (``chunked.layer_backward_chunked``); True keeps float
    # trains and currents for the whole window (``whole.layer_backward``, through the hop's autograd for conv and
    # pool layers), a slower, larger and more direct computation kept to cross-check the chunked one.
    full_trace = False
    LOSSES = ("mse", "task")
    pre_derivative = "spikes"  # ``BackwardOptions.pre_derivative``; HM2-BP makes it an option

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
        """Refuse, before the first batch, a model the rules cannot train (``spiking_layers`` names the layer)."""
        spiking_layers(model)

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
        layers = spiking_layers(model)
        check_steps(self.name, layers, x.shape[1])
        hop_layers = [layer for layer in layers if isinstance(layer, HOP_LAYERS)]
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
            if self.full_trace:
                tr = record_whole(layer, s, spec, rec, self.t_ref, x.dtype)
            else:  # one byte per spike, currents chunk by chunk
                # HM2-BP's T-PSP of a hidden neuron that will be given virtual spikes, for every neuron: their
                # kernel is the same for all (see ``virtual_kernel``), so a pass over the currents here (B T N
                # multiply-adds) saves remaking them (a convolution) or reading every S-PSP (B N N_in) in the
                # backward. Recurrent layers add their recurrent input inside the scan: not recorded there.
                kernel = (self.virtual_kernel(s.shape[1], spec, x) if self.needs_tpsp and rec is None
                          and self.hidden_virtual_spikes and layer is not hop_layers[-1] else None)
                tr = record_chunked(layer, s, counts, spec, rec, x, kernel, self.needs_tpsp, self.chunk)
            records.append(tr)
            s, counts = tr.s_out, tr.counts
        return records, s

    def virtual_kernel(self, steps: int, spec: NeuronSpec, like: torch.Tensor) -> torch.Tensor:
        """``scan.virtual_kernel`` for this rule's ``hidden_virtual_spikes``, kept for the last (window, neuron) it
        was made for: every batch of a training run asks for the same one."""
        key = (steps, spec.t_ref, self.hidden_virtual_spikes, like.dtype, like.device)
        cached = getattr(self, "_virtual_kernel", None)
        if (cached is not None and cached[0] == key and torch.equal(cached[1], spec.alpha)
                and torch.equal(cached[2], spec.beta)):
            return cached[3]
        kernel = scan.virtual_kernel(steps, spec, self.hidden_virtual_spikes, like)
        self._virtual_kernel = (key, spec.alpha.clone(), spec.beta.clone(), kernel)
        return kernel

    def predict(self, model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Class predictions (most active output) of the neuron this rule simulates."""
        return torch.cat([self.forward(model, x[i:i + batch_size])[1].to(x.dtype).sum(1).argmax(1)
                          for i in range(0, len(x), batch_size)])

    # -- loss ----------------------------------------------------------------------------------------------
    def targets(self, counts: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return errors.count_targets(counts, y, self.target_true, self.target_false)

    def count_error(self, counts: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-neuron error ``o - y`` outside the margin, per-sample loss ``1/2 sum err^2``)."""
        return errors.count_error(counts, self.targets(counts, y), self.margin)

    def bound_error(self, g: torch.Tensor, s_out: torch.Tensor, counts: torch.Tensor | None = None) -> torch.Tensor:
        """``errors.bound_error`` for this rule's neuron (``count_bounds``)."""
        return errors.bound_error(g, s_out, self.t_ref, counts)

    def rate_error(self, s_out: torch.Tensor, counts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``errors.rate_error`` with this rule's ``rate_penalty`` and ``rate_target``."""
        return errors.rate_error(s_out, self.rate_penalty, self.rate_target, counts)

    def output_error(self, out: torch.Tensor, y: torch.Tensor, loss_fn) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-sample ``dE/do`` of the output counts (B, N), the batch's mean loss) for the rule's ``loss``."""
        if self.loss == "mse":
            err, per_sample = self.count_error(out.sum(1), y)
            return err, per_sample.mean()
        return errors.task_error(out, y, loss_fn, self.name)

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

    per_spike_ratio = staticmethod(per_spike_ratio)

    def backward_options(self) -> BackwardOptions:
        """What the layer backward needs of this rule (made per batch: subclasses set options in ``__init__``)."""
        return BackwardOptions(self.coefficients, self.needs_tpsp, self.needs_counts_in, self.trains_recurrent(),
                               self.hidden_virtual_spikes, self.chunk, self.pre_derivative)

    def compute_gradients(self, model, x, y, loss_fn, forward_kwargs, scale=1.0) -> BatchResult:
        records, out = self.forward(model, x)
        out = out.to(x.dtype)
        counts = out.sum(1)
        err, mean_loss = self.output_error(out, y, loss_fn)
        g_out = err * (scale / x.shape[0])  # dE/do of the batch-mean loss
        opts = self.backward_options()
        pops = [k for k, r in enumerate(records) if r is not None]
        rate_g = {}  # hidden layer -> dE_r/do of the batch-mean hidden-activity term, from the whole sample's counts
        if self.rate_penalty:
            for k in pops[:-1]:
                grad, per_sample = self.rate_error(records[k].s_out, records[k].counts)
                rate_g[k] = grad.to(x.dtype) * (scale / x.shape[0])
                mean_loss = mean_loss + per_sample.mean().to(mean_loss.dtype)
        for recs, targets, weight in self.segments(records, self.targets(counts, y)):
            g = g_out if weight == 1.0 else g_out * weight
            for k in reversed(pops):
                need_input = k != pops[0]
                backward = whole.layer_backward if recs[k].a_ff is not None else chunked.layer_backward_chunked
                if k in rate_g:  # the whole sample's count is the sum of its segments': each gets the same dE/do
                    g = g + (rate_g[k] if weight == 1.0 else rate_g[k] * weight).reshape(g.shape)
                if self.count_bounds:
                    g = self.bound_error(g, recs[k].s_out, recs[k].counts)  # counts: the forward's
                g = backward(recs[k], g, targets if k == pops[-1] else None, need_input, opts)
        return BatchResult(mean_loss.detach(), out)

