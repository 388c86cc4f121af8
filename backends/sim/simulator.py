"""snn2hw's bit-accurate simulator: Lava ``fixed_pt`` semantics, batched over samples, vectorised.

Every integer operation is one of ``snn2hw.hw.loihi2``'s functions; this module only schedules them.

Step mapping: simulator step t (0-based) is Lava time step t + 1. Input column t is what Lava's
RingBuffer sends at step t + 1. A projection delivers spikes of step t at step t + 1 + delay (Lava's
Dense sends the previous step's accumulation), so nothing arrives at step 0.

Speed: synaptic accumulation ``W @ s`` is done as a floating-point matrix product when it is provably
exact (every partial sum is an integer of magnitude below 2**24 for float32, 2**53 for float64; the
bound is the largest row sum of |W| times the largest input magnitude) and in int64 otherwise. For
graphs without cycles the accumulation of a whole layer is one product over all steps and samples;
only the element-wise neuron update loops over time. On CPU tensors that loop is
``snn2hw.hw.compiled``'s numba kernel, which runs loihi2's own ``lif_step`` code compiled (not a copy of
it) and counts limit events into arrays; on other devices, or without numba, it is a loop of tensor
``lif_step`` calls. Both give identical results. Event counts stay tensors until the run ends, so
accounting costs no per-step synchronisation (strict mode, which must stop at the first event, does
synchronise).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np
import torch

from snn2hw.artefact import Artefact
from snn2hw.backends.base import BackendError, RunResult, check_inputs, resolve_records
from snn2hw.hw import compiled
from snn2hw.hw import loihi2 as hw
from snn2hw.ir import Graph, LoihiConv2d, LoihiDense

EVENT_KINDS = hw.LIMIT_EVENTS  # ("activation_int32_wrap", "u_wrap", "v_saturation")


class ArithmeticLimitError(BackendError):
    """Strict mode: a value hit a hardware width limit (names population, neuron and step)."""


@dataclass
class _Synapse:
    proj: LoihiDense | LoihiConv2d
    weight_t: torch.Tensor  # (src, dst), in the accumulation dtype; a conv's int64 kernel (O, C/g, kh, kw)
    graded: bool
    max_input: int = 1  # largest input magnitude (bounds the accumulation; picks the exact path)
    conv: LoihiConv2d | None = None
    conv_f32: bool = False  # a conv for compiled.conv_accumulate: few taps, float32 sums exact
    rows: torch.Tensor | None = None  # weight_t made contiguous, for event-driven accumulation (lazily)


def _accumulation_dtype(weight: torch.Tensor, max_input: int) -> torch.dtype:
    bound = int(weight.abs().sum(dim=1).max().item()) * max_input if weight.numel() else 0
    if bound < 2**24:
        return torch.float32
    if bound < 2**53:
        return torch.float64
    return torch.int64


def _prepare_synapses(graph: Graph, device: torch.device) -> list[_Synapse]:
    graded_inputs = {i.name: i.num_message_bits for i in graph.inputs if i.num_message_bits > 0}
    synapses = []
    for p in graph.projections:
        if isinstance(p, LoihiConv2d):
            synapses.append(_conv_synapse(p, graded_inputs, device))
            continue
        # sparse LoihiDense: Lava's Sparse computes exactly what Dense does (clip/truncate, sum, shift)
        graded = p.num_message_bits > 0
        max_input = 1
        if graded:
            bits = graded_inputs.get(p.src, p.num_message_bits)
            max_input = 1 << max(bits - 1, 0)
        if _use_kernel(device):
            # one compiled pass straight to float32; kept (dst, src): the product takes the transposed
            # view without a copy. Exact while the bound holds, else the general path below.
            w32, row_abs = compiled.prepare_weights(p.weight, p.sign_mode, p.num_weight_bits)
            if row_abs * max_input < 2**24:
                synapses.append(_Synapse(p, w32.t(), graded, max_input))
                continue
        w = hw.prepare_weights(torch.as_tensor(np.asarray(p.weight), device=device), hw.SignMode(p.sign_mode), p.num_weight_bits)
        dtype = _accumulation_dtype(w, max_input)
        synapses.append(_Synapse(p, w.t().contiguous().to(dtype), graded, max_input))
    return synapses


def _conv_synapse(p: LoihiConv2d, graded_inputs: dict, device: torch.device) -> _Synapse:
    """A convolution as Lava's Conv runs it: weights as given (no clip/truncate), weight_exp ignored.

    The synapse's ``proj`` carries ``weight_exp = 0`` so that the shared ``synaptic_output`` (a shift by
    0 and an int32 wrap) leaves the already 24-bit-wrapped ``conv_output`` unchanged.
    """
    graded = p.num_message_bits > 0
    max_input = 1 << max(graded_inputs.get(p.src, p.num_message_bits) - 1, 0) if graded else 1
    kernel = torch.as_tensor(np.array(p.weight, dtype=np.int64), device=device)  # a copy: Prepared keeps it
    # The compiled direct conv for kernels of few taps per output (one input channel or depthwise, as
    # sum pooling): oneDNN's conv2d runs those at 1-8 % of the GEMM peak; with more input channels per
    # group its im2col product was faster (2-4x on an 8-channel 3x3 conv, under load)
    direct = int(np.prod(kernel.shape[1:])) <= _DIRECT_CONV_MAX_TAPS and hw.conv_bound(kernel, max_input) < 2**24
    return _Synapse(dataclasses.replace(p, weight_exp=0), kernel, graded, max_input, p, conv_f32=direct)


_DIRECT_CONV_MAX_TAPS = 9


def _conv_accumulate(syn: _Synapse, s: torch.Tensor) -> torch.Tensor:
    """Lava Conv's output for spikes ``s`` (..., C*H*W): exact correlation, int32 cast, 24-bit wrap."""
    acc = _conv_accumulate_native(syn, s)
    if acc.dtype != torch.int64:
        acc = torch.round(acc).to(torch.int64)
    return hw.conv_output(acc)


def _conv_accumulate_native(syn: _Synapse, s: torch.Tensor) -> torch.Tensor:
    """The exact correlation alone (float32/float64 holding integers, or int64), shaped (..., Co*Ho*Wo):
    the compiled path applies ``conv_output`` element by element. On the CPU with numba, a conv whose
    bound makes float32 exact runs ``compiled.conv_accumulate`` (a direct convolution), else
    ``loihi2.conv_accumulate``."""
    c = syn.conv
    lead = s.shape[:-1]
    if not syn.graded and s.dtype != torch.bool:
        s = s != 0  # Lava's binary Conv takes any non-zero payload as a spike
    img = s.reshape(-1, *c.in_shape)  # batch and steps folded into the conv batch
    if syn.conv_f32 and _use_kernel(img.device):
        acc = compiled.conv_accumulate(img, syn.weight_t, c.stride, c.padding, c.dilation, c.groups)
    else:
        acc = hw.conv_accumulate(img, syn.weight_t, c.stride, c.padding, c.dilation, c.groups, syn.max_input)
    return acc.reshape(*lead, -1)


def _accumulate(syn: _Synapse, s: torch.Tensor) -> torch.Tensor:
    """Exact ``W @ s`` over the last axis, returned as int64 (as Lava's Dense/DelayDense accumulate).
    A convolution returns Lava Conv's (24-bit wrapped) output."""
    acc = _accumulate_native(syn, s)
    return acc if acc.dtype == torch.int64 else torch.round(acc).to(torch.int64)


def _accumulate_native(syn: _Synapse, s: torch.Tensor, density: float | None = None) -> torch.Tensor:
    """Exact ``W @ s`` in the accumulation dtype: float32/float64 holding integers, or int64.

    The compiled scan takes this directly, which saves several passes over int64 arrays per layer.
    ``density`` (the fraction of non-zero entries of ``s``, if known) picks event-driven accumulation.
    A convolution returns Lava Conv's (24-bit wrapped) output as int64.
    """
    if syn.conv is not None:
        return _conv_accumulate(syn, s)
    # float32 spikes are the compiled path's own 0/1 output (graded inputs are int64)
    if not syn.graded and s.dtype not in (torch.bool, torch.float32):
        # Lava's binary Dense takes any non-zero payload (e.g. from a graded input) as a spike.
        s = s != 0
    if not syn.graded and _event_driven(syn, s, density):
        if syn.rows is None:
            syn.rows = syn.weight_t.contiguous()
        return compiled.accumulate_events(s, syn.rows)
    if syn.weight_t.dtype == torch.int64:
        acc = s.to(torch.int64) @ syn.weight_t
    else:
        acc = s.to(syn.weight_t.dtype) @ syn.weight_t
    if syn.graded and syn.proj is not None and syn.proj.delay > 0:
        if acc.dtype != torch.int64:
            acc = torch.round(acc).to(torch.int64)
        acc = acc + hw.delay_dense_product_wraps(syn.weight_t, s)
    return acc


# Event-driven accumulation (adding the weight rows of the spiking sources) beats a dense product
# below about this spike density, for layers wide enough to fill vector registers and with weights that
# stay cache-sized (measured on 100..1000-wide layers: 1.4-2.3x at density 0.1, 1.3-1.7x at 0.2; narrow
# outputs (<= 64) lose to the product, and 4000-wide layers stream their weights from memory and lose).
_EVENT_DENSITY = 0.2
_EVENT_MIN_OUTPUTS = 128
_EVENT_WEIGHT_BYTES = 8 << 20


def _event_driven(syn: _Synapse, s: torch.Tensor, density: float | None = None) -> bool:
    w = syn.weight_t
    if (not _use_kernel(s.device) or s.numel() == 0 or w.shape[1] < _EVENT_MIN_OUTPUTS
            or w.numel() * w.element_size() > _EVENT_WEIGHT_BYTES):
        return False
    if density is None:
        density = int(torch.count_nonzero(s)) / s.numel()
    return density < _EVENT_DENSITY


class _Neurons:
    """Integer parameters of one population as tensors on the device."""

    def __init__(self, graph: Graph, name: str, device: torch.device):
        pop = graph.population(name)
        n = pop.neuron
        self.name = name
        self.size = pop.size
        self.du, self.dv = int(n.du), int(n.dv)
        self.vth_eff = hw.effective_threshold(int(n.vth))
        self.bias_eff = hw.effective_bias(
            torch.as_tensor(np.asarray(n.bias_mant), device=device, dtype=torch.int64),
            torch.as_tensor(np.asarray(n.bias_exp), device=device, dtype=torch.int64),
        )


class _EventLog:
    """Limit events per population, as int64 tensors of ``EVENT_KINDS`` counts.

    Counts are only added up on the device; ``counts`` reads them once, at the end of the run.
    """

    def __init__(self, strict: bool):
        self.strict = strict
        self.sample_offset = 0  # index of the current batch slice's first sample (error messages)
        self._totals: dict[str, torch.Tensor] = {}

    def add(self, name: str, counts: torch.Tensor) -> None:
        if name in self._totals:
            self._totals[name] = self._totals[name] + counts
        else:
            self._totals[name] = counts.clone()

    def observe(self, neurons: _Neurons, u, v, a_in, step: int) -> None:
        """Account for one step with the tensor formulas (raises at the first event when strict)."""
        flags = hw.lif_step_flags(u, v, a_in, neurons.du, neurons.dv, neurons.bias_eff)
        if self.strict:
            self.raise_first(neurons.name, flags, step)
        self.add(neurons.name, torch.stack([hits.sum() for hits in flags]))

    def raise_first(self, name: str, flags, step: int) -> None:
        for kind, hits in zip(EVENT_KINDS, flags):
            if bool(hits.any()):
                sample, neuron = (int(i) for i in torch.nonzero(hits)[0].tolist())
                raise ArithmeticLimitError(
                    f"{kind.replace('_', ' ')} in population {name!r}, neuron {neuron}, "
                    f"step {step}, sample {sample + self.sample_offset}"
                )

    @property
    def counts(self) -> dict[str, dict[str, int]]:
        return {name: dict(zip(EVENT_KINDS, (int(n) for n in c.tolist()))) for name, c in self._totals.items()}


def _use_kernel(dev: torch.device) -> bool:
    return dev.type == "cpu" and compiled.available()


class Prepared:
    """A graph made ready to run once: weights prepared (Lava's clip/truncate, in the accumulation dtype),
    neuron parameters as tensors and, when a run first needs it, the whole-network kernel's packed
    weights. ``run`` accepts it in place of the graph, so evaluating many batches pays this once (as
    Lava compiles a network once and then runs it). It keeps its own copies: changing the graph's arrays
    afterwards does not change a ``Prepared``.
    """

    def __init__(self, graph: Graph | Artefact, device: str | torch.device | None = None):
        if isinstance(graph, Artefact):
            graph = graph.graph
        if not graph.is_quantized:
            raise BackendError("the simulator runs quantized graphs; quantize/compile the network first")
        self.graph = graph
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.synapses = _prepare_synapses(graph, self.device)
        self.neurons = {p.name: _Neurons(graph, p.name, self.device) for p in graph.populations}
        self._network = None
        self._network_built = False
        self.order = graph.feedforward_order()  # None for a graph with cycles

    def network(self) -> compiled.NetworkSpec | None:
        """The whole-network kernel's spec (built on first use), or None where it does not apply."""
        if not self._network_built:
            self._network = _network_spec(self.graph, self.synapses, self.neurons) if _use_kernel(self.device) else None
            self._network_built = True
        return self._network


def prepare(graph: Graph | Artefact, device: str | torch.device | None = None) -> Prepared:
    """``Prepared(graph, device)``: do the per-graph work of ``run`` once, for many runs."""
    return Prepared(graph, device)


def run(
    graph: Graph | Artefact | Prepared,
    inputs: Mapping[str, np.ndarray] | np.ndarray,
    record: Iterable[str] = (),
    record_state: Iterable[str] = (),
    *,
    strict: bool = False,
    count_events: bool = True,
    device: str | torch.device | None = None,
) -> RunResult:
    """Run an integer graph (or a ``Prepared`` one) on a batch of inputs shaped (batch, steps, size).

    ``strict=True`` raises ``ArithmeticLimitError`` at the first int32 wrap of a synaptic
    activation, 24-bit wrap of u or saturation of v; otherwise those events are counted in
    ``RunResult.events`` (``count_events=False`` skips the accounting for speed).
    """
    if isinstance(graph, Prepared):
        prepared = graph
        if device is not None and torch.device(device) != prepared.device:
            raise BackendError(f"the graph was prepared for {prepared.device}, not for {torch.device(device)}")
    else:
        prepared = Prepared(graph, device)
    graph, dev = prepared.graph, prepared.device
    x = check_inputs(graph, inputs, binary_as_bool=True)
    spike_names, state_names = resolve_records(graph, record, record_state)
    batch, steps = next(iter(x.values())).shape[:2]
    events = _EventLog(strict) if (strict or count_events) else None

    synapses, neurons = prepared.synapses, prepared.neurons
    order = prepared.order
    sizes = {p.name: p.size for p in graph.populations}
    out_spikes = {k: np.empty((batch, steps, sizes[k]), dtype=np.uint8) for k in spike_names}
    out_u = {k: np.empty((batch, steps, sizes[k]), dtype=np.int64) for k in state_names}
    out_v = {k: np.empty((batch, steps, sizes[k]), dtype=np.int64) for k in state_names}

    # Samples are independent, so a large batch runs in slices: memory stays bounded and each layer's
    # arrays stay small enough to be reused from cache by the next pass over them.
    # The whole-network kernel (every step of every population in one compiled call, event-driven) for
    # graphs with cycles, and for feed-forward graphs at small batches, where the layer-by-layer
    # schedule's per-layer calls and whole-sequence arrays cost more than they save.
    network = prepared.network() if order is None or _FEEDFORWARD_NETWORK_KERNEL else None
    chunk = _batch_chunk(graph, batch, steps, dev, order is not None and network is None)
    if network is not None:  # the inputs' messages for all steps stay within _MESSAGE_BYTES per slice
        per_sample = steps * int(network.pre_off[-1]) * network.message_dtype.itemsize
        chunk = max(1, min(chunk, _MESSAGE_BYTES // max(1, per_sample)))
    for lo in range(0, max(batch, 1), chunk):  # once even for an empty batch: same events keys
        hi = min(lo + chunk, batch)
        if events is not None:
            events.sample_offset = lo
        # binary inputs as bool (check_inputs made them so): what a binary Dense sees (s != 0) at an
        # eighth of int64's memory traffic
        spikes: dict[str, torch.Tensor] = {k: torch.as_tensor(v[lo:hi], device=dev) for k, v in x.items()}
        u_rec: dict[str, torch.Tensor] = {}
        v_rec: dict[str, torch.Tensor] = {}
        density: dict[str, float] = {}  # filled by the compiled layers (they count their spikes)
        n = hi - lo
        if network is not None:
            _run_network_compiled(graph, network, synapses, neurons, spikes, u_rec, v_rec, state_names, n, steps,
                                  dev, events)
        elif order is not None:
            for name in order:
                keep = name in state_names
                incoming = [syn for syn in synapses if syn.proj.dst == name]
                if _use_kernel(dev) and incoming:
                    outgoing = [syn for syn in synapses if syn.proj.src == name]
                    # spikes straight in the dtype the next products take, when that is float32
                    as_float = bool(outgoing) and all(
                        syn.conv is None and syn.weight_t.dtype == torch.float32 for syn in outgoing)
                    spikes[name], u_rec[name], v_rec[name] = _scan_layer_compiled(
                        neurons[name], incoming, spikes, steps, events, keep,
                        lambda name=name, spikes=spikes, n=n: _layer_input(name, synapses, spikes, n, steps, dev,
                                                                          neurons[name].size),
                        torch.float32 if as_float else torch.bool, density,
                    )
                    continue
                a_in = _layer_input(name, synapses, spikes, n, steps, dev, neurons[name].size)
                spikes[name], u_rec[name], v_rec[name] = _scan_lif(neurons[name], a_in, events, keep_state=keep)
        else:
            _run_stepwise(graph, synapses, neurons, spikes, u_rec, v_rec, state_names, n, steps, dev, events)

        for k in spike_names:
            out_spikes[k][lo:hi] = spikes[k].detach().cpu().numpy()
        for k in state_names:
            out_u[k][lo:hi] = u_rec[k].detach().cpu().numpy()
            out_v[k][lo:hi] = v_rec[k].detach().cpu().numpy()

    return RunResult(
        spikes=out_spikes,
        u=out_u,
        v=out_v,
        events=events.counts if events else {},
        backend="sim",
    )


# Feed-forward graphs take the whole-network kernel too: measured at batch 1, 16 and 256 on the six
# feed-forward networks of benchmarks/bench_sim.py it was as fast as the layer-by-layer schedule or
# faster (up to 2x) on all but one (1000-1000-10 at batch 256: within 5 %). The layer schedule remains for what the
# kernel does not take (see _network_spec), and tests switch this off to exercise it.
_FEEDFORWARD_NETWORK_KERNEL = True


# Elements (samples x steps x widest layer) per slice of the batch on the compiled path: about 8 MB of
# float32 accumulations per layer, which measured 1.5x faster than whole batches of 256 and keeps
# matrix products large enough to run near the machine's peak.
_CHUNK_ELEMENTS = 1 << 21
# Bytes of the inputs' ready messages (compiled.network_scan) per slice of the batch on the network kernel.
_MESSAGE_BYTES = 1 << 28


def _batch_chunk(graph: Graph, batch: int, steps: int, dev: torch.device, feedforward: bool) -> int:
    """Samples per slice: all of them, except for feed-forward graphs on the compiled path."""
    if batch == 0 or not feedforward or not _use_kernel(dev):
        return max(batch, 1)
    widest = max([p.size for p in graph.populations] + [i.size for i in graph.inputs] + [1])
    return max(1, min(batch, _CHUNK_ELEMENTS // max(1, steps * widest)))


def _delayed(a: torch.Tensor, lag: int) -> torch.Tensor:
    """Shift (batch, steps, n) forward in time by ``lag`` steps, filling with zeros."""
    out = torch.zeros_like(a)
    if lag < a.shape[1]:
        out[:, lag:] = a[:, : a.shape[1] - lag]
    return out


def _layer_input(name, synapses, spikes, batch, steps, dev, size: int = 0) -> torch.Tensor:
    parts = []
    for syn in synapses:
        if syn.proj.dst != name:
            continue
        acc = _accumulate(syn, spikes[syn.proj.src])
        out = hw.synaptic_output(acc, syn.proj.weight_exp, syn.graded, syn.proj.delay > 0)
        parts.append(_delayed(out, 1 + syn.proj.delay))
    if not parts:
        # Driven by its bias alone: Lava's LIF receives zeros on an unconnected a_in (as _run_stepwise does).
        return torch.zeros(batch, steps, size, dtype=torch.int64, device=dev)
    return hw.sum_activations(parts) if len(parts) > 1 else parts[0]


def _scan_layer_compiled(neurons: _Neurons, incoming: list[_Synapse], spikes, steps: int,
                         events: _EventLog | None, keep_state: bool, layer_input, spike_dtype=torch.bool,
                         density: dict | None = None):
    """Feed-forward population on the CPU: accumulations in, spikes out, in one compiled pass.

    ``layer_input()`` builds the int64 input array the tensor path uses; it is only needed to replay
    the population when strict mode must name an event. ``density`` maps node names to the fraction of
    non-zero entries of their spikes where known; this population's is added.
    """
    density = {} if density is None else density
    parts = []
    for syn in incoming:
        s = spikes[syn.proj.src]
        if syn.conv is not None:  # the Conv's int32 cast and 24-bit wrap happen in the kernel
            acc, conv = _conv_accumulate_native(syn, s), True
        else:
            acc, conv = _accumulate_native(syn, s, density.get(syn.proj.src)), False
        parts.append((acc, syn.proj.weight_exp, syn.graded, syn.proj.delay > 0, 1 + syn.proj.delay, conv))
    s_all, u_all, v_all, counts, _, _, fired = compiled.layer_scan(
        parts, steps, neurons.du, neurons.dv, neurons.vth_eff, neurons.bias_eff, keep_state,
        count_events=events is not None, spike_dtype=spike_dtype,
    )
    density[neurons.name] = fired / max(1, s_all.numel())
    if events is not None:
        _check_strict(events, neurons, counts, lambda: _scan_lif_torch(neurons, layer_input(), events, keep_state))
        events.add(neurons.name, counts)
    return s_all, u_all, v_all


def _check_strict(events: _EventLog, neurons: _Neurons, counts: torch.Tensor, replay) -> None:
    """The kernel counts events but does not stop at one. When strict mode sees a count, ``replay``
    re-runs the population with the tensor formulas, which names the first event exactly as the slow
    path would and raises."""
    if events.strict and int(counts.sum()):
        replay()
        raise AssertionError(f"compiled and tensor LIF disagree on limit events in {neurons.name!r}")


def _scan_lif(neurons: _Neurons, a_in: torch.Tensor, events: _EventLog | None, keep_state: bool):
    if _use_kernel(a_in.device):
        s_all, u_all, v_all, counts, _, _, _ = compiled.lif_scan(
            a_in, neurons.du, neurons.dv, neurons.vth_eff, neurons.bias_eff, keep_state,
            count_events=events is not None,
        )
        if events is not None:
            _check_strict(events, neurons, counts, lambda: _scan_lif_torch(neurons, a_in, events, keep_state))
            events.add(neurons.name, counts)
        return s_all, u_all, v_all
    return _scan_lif_torch(neurons, a_in, events, keep_state)


def _scan_lif_torch(neurons: _Neurons, a_in: torch.Tensor, events: _EventLog | None, keep_state: bool):
    def observe(t, u, v, a_t):
        events.observe(neurons, u, v, a_t, t)

    return hw.lif_scan_torch(a_in, neurons.du, neurons.dv, neurons.vth_eff, neurons.bias_eff, keep_state,
                             on_step=observe if events is not None else None)


# A convolution joins the network kernel as per-source segments while it has at most this many
# (input neurons x kernel taps); larger ones run on the layer-by-layer schedule.
_CONV_MAX_SEGMENTS = 1 << 22


def _conv_rows(c: LoihiConv2d, kernel: np.ndarray):
    """A convolution as ``compiled.Projection.csr``: ``(ptr, seg_acc, seg_w, table, length, perm)``.

    The sums are kept channels-last within each group, (group, y, x, out channel), so that an input
    spike adds, for each kernel tap that lands on an output, one contiguous vector: the tap's weights
    over the group's output channels (``table`` holds them as (in channel, ky, kx, out channel)).
    Exactly the kernel entries Lava's Conv multiplies that input by, so the sums are the same integers.
    None when too large."""
    o_n, cg, kh, kw = kernel.shape
    ch, h, w = c.in_shape
    _, ho, wo = c.out_shape
    groups = c.groups
    og = o_n // groups
    if ch * h * w * kh * kw > _CONV_MAX_SEGMENTS:
        return None
    (sy, sx), (py, px), (dy, dx) = c.stride, c.padding, c.dilation
    table = kernel.reshape(groups, og, cg, kh, kw).transpose(0, 2, 3, 4, 1).reshape(-1)  # (C, kh, kw, og)
    ci = np.arange(ch).reshape(-1, 1, 1, 1, 1)
    iy = np.arange(h).reshape(1, -1, 1, 1, 1)
    ix = np.arange(w).reshape(1, 1, -1, 1, 1)
    ky = np.arange(kh).reshape(1, 1, 1, -1, 1)
    kx = np.arange(kw).reshape(1, 1, 1, 1, -1)
    ny, nx = iy + py - ky * dy, ix + px - kx * dx  # output position times the stride
    y, x = ny // sy, nx // sx
    shape = (ch, h, w, kh, kw)
    keep = np.broadcast_to((ny % sy == 0) & (y >= 0) & (y < ho) & (nx % sx == 0) & (x >= 0) & (x < wo), shape)
    seg_acc = np.broadcast_to((((ci // cg) * ho + y) * wo + x) * og, shape)[keep]
    seg_w = np.broadcast_to(((ci * kh + ky) * kw + kx) * og, shape)[keep]
    counts = keep.reshape(ch * h * w, -1).sum(axis=1)  # C-order: segments come out sorted by source
    ptr = np.zeros(ch * h * w + 1, dtype=np.int64)
    np.cumsum(counts, out=ptr[1:])
    o = np.arange(o_n).reshape(-1, 1, 1)
    perm = ((((o // og) * ho + np.arange(ho).reshape(1, -1, 1)) * wo + np.arange(wo).reshape(1, 1, -1)) * og
            + o % og).reshape(-1)
    return ptr, seg_acc, seg_w, table, og, perm


def _prepared_range(p: LoihiDense) -> tuple[int, int, int]:
    """``(lo, hi, drop)``: the range of ``p``'s prepared weights and the low bits they all have clear."""
    sign, lo, hi, drop = hw.weight_preparation(hw.SignMode(p.sign_mode), p.num_weight_bits)
    lo, hi = (lo >> drop) << drop, (hi >> drop) << drop
    return (-hi, -lo, drop) if sign < 0 else (lo, hi, drop)


def _network_spec(graph: Graph, synapses: list[_Synapse], neurons: dict) -> compiled.NetworkSpec | None:
    """The graph flattened for ``compiled.network_scan``, or None if it has a projection that the
    compiled network kernel does not take (graded dense projections with a delay; huge convolutions)."""
    if any(syn.conv is None and syn.graded and syn.proj.delay > 0 for syn in synapses):
        return None
    pops = [p.name for p in graph.populations]
    pop_index = {name: i for i, name in enumerate(pops)}
    pop_off = np.cumsum([0] + [neurons[n].size for n in pops]).astype(np.int64)
    in_off, total = {}, 0
    for node in graph.inputs:
        in_off[node.name], total = total, total + node.size

    def per_neuron(value) -> np.ndarray:
        return np.concatenate([np.broadcast_to(np.asarray(value(neurons[n]), dtype=np.int64), (neurons[n].size,))
                               for n in pops]).astype(np.int64) if pops else np.zeros(0, dtype=np.int64)

    projections = []
    for syn in synapses:
        p = syn.proj
        is_input = p.src in in_off
        common = dict(src_kind=0 if is_input else 1, src_off=int(in_off[p.src] if is_input else pop_off[pop_index[p.src]]),
                      dst_pop=pop_index[p.dst], weight_exp=int(p.weight_exp), graded=syn.graded,
                      delayed=p.delay > 0, conv=syn.conv is not None, lag=1 + int(p.delay))
        if syn.conv is not None:
            kernel = syn.weight_t.cpu().numpy()
            csr = _conv_rows(syn.conv, kernel)
            if csr is None:
                return None
            bound = int(np.abs(kernel).reshape(kernel.shape[0], -1).sum(axis=1).max(initial=0)) * syn.max_input
            c = syn.conv
            geometry = (kernel, tuple(c.in_shape), tuple(c.stride), tuple(c.padding), tuple(c.dilation), c.groups)
            projections.append(compiled.Projection(src_n=int(np.prod(c.in_shape)), bound=bound, csr=csr,
                                                   geometry=geometry, **common))
        else:
            lo, hi, drop = _prepared_range(p)
            src_n = int(syn.weight_t.shape[0])
            projections.append(compiled.Projection(
                src_n=src_n, bound=src_n * max(-lo, hi) * syn.max_input, weight=syn.weight_t.t().cpu(),
                shift=drop, lo=lo, hi=hi, **common))
    def per_pop(value) -> np.ndarray:
        return np.asarray([value(neurons[n]) for n in pops], dtype=np.int64)

    return compiled.network_spec(pop_off, per_pop(lambda n: n.du), per_pop(lambda n: n.dv),
                                 per_pop(lambda n: n.vth_eff), per_neuron(lambda n: n.bias_eff.cpu().numpy()),
                                 projections)


def _run_network_compiled(graph, network, synapses, neurons, spikes, u_rec, v_rec, state_names, batch, steps, dev,
                          events):
    """The whole network over all steps in one compiled call (``compiled.network_scan``)."""
    inputs = [i.name for i in graph.inputs]
    # binary inputs stay bool (an eighth of int64's memory traffic); graded payloads need int64
    dtype = torch.bool if all(spikes[k].dtype == torch.bool for k in inputs) else torch.int64
    if len(inputs) == 1:
        x_in = spikes[inputs[0]].to(dtype)
    else:
        x_in = (torch.cat([spikes[k].to(dtype) for k in inputs], dim=2) if inputs
                else torch.zeros(batch, steps, 0, dtype=dtype))
    spk, u_all, v_all, counts = compiled.network_scan(network, x_in, steps, keep_state=bool(state_names),
                                                      count_events=events is not None)
    totals = counts.sum(dim=0)
    if events is not None and events.strict and int(totals[:, :3].sum()):
        # the kernel counts events but does not stop at one: the tensor schedule names the first and raises
        replay = {k: spikes[k] for k in inputs}
        _run_stepwise(graph, synapses, neurons, replay, {}, {}, [], batch, steps, dev, events, kernel=False)
        raise AssertionError("compiled and tensor networks disagree on limit events")
    for i, p in enumerate(graph.populations):
        lo, hi = int(network.pop_off[i]), int(network.pop_off[i + 1])
        spikes[p.name] = spk[:, :, lo:hi]
        if p.name in state_names:
            u_rec[p.name], v_rec[p.name] = u_all[:, :, lo:hi], v_all[:, :, lo:hi]
        if events is not None:
            events.add(p.name, totals[i, :3])


def _run_stepwise(graph, synapses, neurons, spikes, u_rec, v_rec, state_names, batch, steps, dev, events,
                  kernel: bool | None = None):
    """General schedule for graphs with cycles: one step at a time, projections as delay lines.

    Each step runs on the compiled scan (``kernel``, default: on the CPU with numba) or the tensor
    formulas."""
    pops = [p.name for p in graph.populations]
    for name in pops:
        spikes[name] = torch.zeros(batch, steps, neurons[name].size, dtype=torch.bool, device=dev)
        if name in state_names:
            u_rec[name] = torch.zeros(batch, steps, neurons[name].size, dtype=torch.int64, device=dev)
            v_rec[name] = torch.zeros_like(u_rec[name])
    u = {n: torch.zeros(batch, neurons[n].size, dtype=torch.int64, device=dev) for n in pops}
    v = {n: torch.zeros_like(u[n]) for n in pops}
    kernel = _use_kernel(dev) if kernel is None else kernel
    for t in range(steps):
        new_spikes = {}
        for name in pops:
            arriving = [syn for syn in synapses if syn.proj.dst == name and t - 1 - syn.proj.delay >= 0]

            def step_input(name=name, arriving=arriving, t=t):
                parts = []
                for syn in arriving:
                    acc = _accumulate(syn, spikes[syn.proj.src][:, t - 1 - syn.proj.delay])
                    parts.append(hw.synaptic_output(acc, syn.proj.weight_exp, syn.graded, syn.proj.delay > 0))
                return hw.sum_activations(parts) if parts else torch.zeros_like(u[name])

            nrn = neurons[name]
            if kernel:
                # one step of the compiled scan, continuing from this population's state
                count = events is not None
                if arriving:
                    parts = [
                        (_accumulate_native(syn, spikes[syn.proj.src][:, t - 1 - syn.proj.delay])[:, None],
                         syn.proj.weight_exp, syn.graded, syn.proj.delay > 0, 0)
                        for syn in arriving
                    ]
                    out = compiled.layer_scan(parts, 1, nrn.du, nrn.dv, nrn.vth_eff, nrn.bias_eff,
                                              u0=u[name], v0=v[name], count_events=count)
                else:
                    out = compiled.lif_scan(torch.zeros_like(u[name])[:, None], nrn.du, nrn.dv, nrn.vth_eff,
                                            nrn.bias_eff, u0=u[name], v0=v[name], count_events=count)
                s, _, _, counts, u_new, v_new, _ = out
                if events is not None:
                    _check_strict(events, nrn, counts, lambda nrn=nrn, name=name, t=t, step_input=step_input:
                                  events.observe(nrn, u[name], v[name], step_input(), t))
                    events.add(name, counts)
                u[name], v[name], new_spikes[name] = u_new, v_new, s[:, 0]
            else:
                a_in = step_input()
                if events is not None:
                    events.observe(nrn, u[name], v[name], a_in, t)
                u[name], v[name], new_spikes[name] = hw.lif_step(u[name], v[name], a_in, nrn.du, nrn.dv, nrn.vth_eff,
                                                                 nrn.bias_eff)
            if name in state_names:
                u_rec[name][:, t], v_rec[name][:, t] = u[name], v[name]
        for name, s in new_spikes.items():
            spikes[name][:, t] = s
