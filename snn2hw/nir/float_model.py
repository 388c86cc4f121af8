"""Float model of an imported NIR graph: a trainable PyTorch network that simulates it with the
producer's timing, built on the training engine's own sequence operators
(``snn2hw.nn.functional.cuba_lif_sequence``, ``leaky_readout_sequence`` and
``snn2hw.nn.recurrent.recurrent_cuba_lif_sequence``) with per-neuron decays.

Timing: ``"same_step"`` runs a feed-forward edge within the step (snnTorch, Norse, Sinabs, ...: the
reference to compare a producer's output against); ``"next_step"`` delays every hop by one step as
Loihi 2 does (the reference to compare a deployed run against). A recurrent edge (from a population
to itself or to one earlier in the feed-forward order) delivers the previous step's spikes in both
timings, and nothing at step 0. ``threshold=">="`` emulates producers that fire at v >= v_th.

``to_graph()`` gives the wide float IR graph of the current parameters (per-neuron decays), which
``snn2hw.nir.to_nir`` exports and ``snn2hw.nir.split_by_decay`` makes compilable.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from snn2hw.ir import LIF, Conv2d, Dense, Graph, Population
from snn2hw.nir.files import read_nir_graph
from snn2hw.nir.read import from_nir
from snn2hw.nn import functional as F
from snn2hw.nn.recurrent import recurrent_cuba_lif_sequence
from snn2hw.nn.surrogate import get_surrogate


def _shift(a: torch.Tensor, steps: int) -> torch.Tensor:
    if steps == 0:
        return a
    return torch.nn.functional.pad(a, (0, 0, steps, 0))[:, : a.shape[1]]


class FloatNetwork(nn.Module):
    """A float IR graph (per-neuron ``du``/``dv`` allowed) as a trainable network.

    ``forward(x)`` takes (batch, T, n) for a single input or ``{input name: tensor}`` and returns
    ``{output population: (batch, T, n)}``: spikes, or v for a non-spiking read-out. Weights and biases
    are parameters; decays and thresholds are buffers.
    """

    def __init__(self, graph: Graph, timing: str = "same_step", threshold: str = ">",
                 surrogate: str = "fast_sigmoid", dtype: torch.dtype = torch.float32, reset: str = "zero"):
        super().__init__()
        if timing not in ("same_step", "next_step"):
            raise ValueError(f"timing must be 'same_step' or 'next_step', got {timing!r}")
        self.graph_template = graph
        if reset not in ("zero", "subtract"):
            raise ValueError(f"reset must be 'zero' or 'subtract', got {reset!r}")
        self.timing, self.threshold_mode, self.reset = timing, threshold, reset
        self.surrogate = get_surrogate(surrogate)
        self.inputs = [i.name for i in graph.inputs]
        self.sizes = {n.name: n.size for n in (*graph.inputs, *graph.populations)}
        self.order = self._order(graph)
        rank = {n: i for i, n in enumerate(self.order)}
        self.weights = nn.ParameterList()
        self.projections = []  # (projection, index into weights, hop steps)
        for k, p in enumerate(graph.projections):
            back = p.src in rank and rank[p.src] >= rank[p.dst]
            hop = 1 if (back or timing == "next_step") else 0
            self.weights.append(nn.Parameter(torch.as_tensor(np.asarray(p.weight, dtype=np.float64), dtype=dtype)))
            self.projections.append((p, k, hop + p.delay, back))
        self.biases = nn.ParameterDict()
        self._pop_index = {p.name: i for i, p in enumerate(graph.populations)}
        for pop in graph.populations:
            n = pop.neuron
            key = self._key(pop.name)
            self.register_buffer(f"du_{key}", torch.as_tensor(np.broadcast_to(np.asarray(n.du, dtype=np.float64),
                                                                             (pop.size,)).copy(), dtype=dtype))
            self.register_buffer(f"dv_{key}", torch.as_tensor(np.broadcast_to(np.asarray(n.dv, dtype=np.float64),
                                                                             (pop.size,)).copy(), dtype=dtype))
            self.biases[key] = nn.Parameter(torch.as_tensor(np.asarray(n.bias, dtype=np.float64), dtype=dtype))

    def _key(self, name: str) -> str:
        return f"p{self._pop_index[name]}"

    @staticmethod
    def _order(graph: Graph) -> list[str]:
        """Populations in feed-forward order (back edges ignored; ties in declaration order)."""
        order = graph.feedforward_order()
        if order is not None:
            return order
        done, order = {i.name for i in graph.inputs}, []
        remaining = [p.name for p in graph.populations]
        while remaining:
            ready = [n for n in remaining if all(p.src in done or p.src == n for p in graph.incoming(n))]
            pick = ready[0] if ready else remaining[0]
            order.append(pick)
            done.add(pick)
            remaining.remove(pick)
        return order

    def _current(self, proj, weight: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        if isinstance(proj, Conv2d):
            b, t = s.shape[:2]
            img = s.reshape(b * t, *proj.in_shape).to(weight.dtype)
            out = torch.nn.functional.conv2d(img, weight, stride=proj.stride, padding=proj.padding,
                                             dilation=proj.dilation, groups=proj.groups)
            return out.reshape(b, t, -1)
        return s.to(weight.dtype) @ weight.t()

    @property
    def whole_sequence(self) -> bool:
        """True when every loop is a population's undelayed projection to itself (at most one each): then
        each population runs over the whole sequence at once; otherwise the network steps through time."""
        loops = [p for p, _, _, back in self.projections if back]
        return all(p.src == p.dst and not p.delay for p in loops) and len({p.dst for p in loops}) == len(loops)

    def forward(self, x, return_all: bool = False) -> dict[str, torch.Tensor]:
        if not isinstance(x, dict):
            if len(self.inputs) != 1:
                raise ValueError(f"the network has inputs {self.inputs}; pass a dict")
            x = {self.inputs[0]: x}
        state = {k: v.reshape(v.shape[0], v.shape[1], -1) for k, v in x.items()}
        missing = set(self.inputs) - set(state)
        if missing:
            raise ValueError(f"no input given for {sorted(missing)}")
        if not self.whole_sequence or self.reset == "subtract":
            state = self._forward_steps(state)
        else:
            state = self._forward_sequence(state)
        keep = self.order if return_all else list(self.graph_template.outputs)
        return {n: state[n] for n in keep}

    def _v_th(self, pop, like: torch.Tensor) -> torch.Tensor:
        v_th = torch.full((pop.size,), float(pop.neuron.v_th), dtype=like.dtype, device=like.device)
        if self.threshold_mode == ">=":  # v >= th  <=>  v > the next smaller number
            v_th = torch.nextafter(v_th, torch.full_like(v_th, -np.inf))
        return v_th

    def _forward_steps(self, state: dict) -> dict:
        """Step by step (any loop): population by population in feed-forward order within a step."""
        g = self.graph_template
        ref = next(iter(state.values()))
        batch, steps = ref.shape[:2]
        dtype = self.weights[0].dtype if len(self.weights) else ref.dtype
        hist = {k: list(v.to(dtype).unbind(1)) for k, v in state.items()}
        zeros = {n: ref.new_zeros(batch, self.sizes[n], dtype=dtype) for n in self.sizes}
        u = dict(zeros)
        v = dict(zeros)
        for name in self.order:
            hist[name] = []
        for t in range(steps):
            for name in self.order:
                pop = g.population(name)
                key = self._key(name)
                a = zeros[name]
                for proj, k, lag, _ in self.projections:
                    if proj.dst != name or t - lag < 0:
                        continue
                    s_src = hist[proj.src][t - lag]
                    a = a + self._current(proj, self.weights[k], s_src[:, None])[:, 0]
                alpha, beta = 1.0 - getattr(self, f"du_{key}"), 1.0 - getattr(self, f"dv_{key}")
                u[name] = alpha * u[name] + a
                v_pre = beta * v[name] + u[name] + self.biases[key]
                if not pop.neuron.spiking:
                    v[name] = v_pre
                    hist[name].append(v_pre)
                    continue
                s = self.surrogate(v_pre - self._v_th(pop, v_pre))
                if self.reset == "subtract":  # the producer's reset, which Loihi cannot do (see docs/nir.md)
                    v[name] = v_pre - s.detach() * float(pop.neuron.v_th)
                else:
                    v[name] = v_pre * (1.0 - s.detach())
                hist[name].append(s)
        return {k: torch.stack(h, 1) for k, h in hist.items()}

    def _forward_sequence(self, state: dict) -> dict:
        g = self.graph_template
        ref = next(iter(state.values()))
        for name in self.order:
            pop = g.population(name)
            key = self._key(name)
            a = ref.new_zeros(ref.shape[0], ref.shape[1], pop.size, dtype=self.weights[0].dtype) \
                if len(self.weights) else None
            rec = None
            for proj, k, steps, back in self.projections:
                if proj.dst != name:
                    continue
                if back:  # self-recurrence: the sequence operator applies it with its one-step delay
                    rec = self.weights[k]
                    continue
                a = a + _shift(self._current(proj, self.weights[k], state[proj.src]), steps)
            du, dv = getattr(self, f"du_{key}"), getattr(self, f"dv_{key}")
            alpha, beta, bias = 1.0 - du, 1.0 - dv, self.biases[key]
            if not pop.neuron.spiking:
                if rec is not None:
                    return self._forward_steps({k: x for k, x in state.items() if k in self.inputs})
                state[name] = F.leaky_readout_sequence(a, alpha, beta, bias)
                continue
            v_th = self._v_th(pop, a)
            if rec is not None:
                state[name] = recurrent_cuba_lif_sequence(a, rec, alpha, beta, v_th, bias, surrogate=self.surrogate)
            else:
                state[name] = F.cuba_lif_sequence(a, alpha, beta, v_th, bias, self.surrogate)
        return state

    def to_graph(self) -> Graph:
        """The wide float IR graph of the current parameters (same names as the imported one)."""
        g = self.graph_template
        pops = []
        for pop in g.populations:
            key = self._key(pop.name)
            n = pop.neuron
            pops.append(Population(pop.name, pop.size, LIF(
                getattr(self, f"du_{key}").detach().double().cpu().numpy(),
                getattr(self, f"dv_{key}").detach().double().cpu().numpy(), n.v_th,
                self.biases[key].detach().double().cpu().numpy(), n.spiking)))
        projs = []
        for proj, k, _, _ in self.projections:
            w = self.weights[k].detach().double().cpu().numpy()
            if isinstance(proj, Conv2d):
                projs.append(Conv2d(proj.name, proj.src, proj.dst, w, proj.in_shape, proj.out_shape, proj.stride,
                                    proj.padding, proj.dilation, proj.groups, proj.delay))
            else:
                projs.append(Dense(proj.name, proj.src, proj.dst, w, proj.delay, proj.sparse))
        return Graph(g.inputs, tuple(pops), tuple(projs), g.outputs, g.dt, dict(g.metadata)).validate()


def float_model(source, dt: float | None = None, convention=None, timing: str | None = None,
                approximate: bool = False, dtype: torch.dtype = torch.float32) -> FloatNetwork:
    """Float model of a NIR graph or ``.nir`` file under a producer's ``convention``.

    ``timing`` defaults to the convention's (``same_step`` for producers, ``next_step`` for snn2hw's
    own files); pass ``"next_step"`` for the deployed network's timing. A subtract reset (the
    convention's) is simulated as the producer does it (immediately after the spike, by the
    threshold); ``approximate=True`` gives the deployed network's reset to zero instead, so the two
    models measure what the approximation costs.
    """
    if isinstance(source, (str, os.PathLike)):
        ng, name = read_nir_graph(source), str(source)
    else:
        ng, name = source, "<graph>"
    # the float model runs a subtract reset as the producer does: no approximation needed here
    wide = from_nir(ng, dt, source=name, convention=convention, approximate=True, split=False)
    meta = wide.metadata["nir"]
    reset = "zero" if approximate else meta["producer_reset"]
    return FloatNetwork(wide, timing or meta["timing"], meta["threshold"], dtype=dtype, reset=reset)


def to_sequential(graph: Graph):
    """The training engine's own layers for an imported chain (``snn2hw.nn.layers.SpikingSequential``),
    in Loihi timing (one step per hop, as those layers run): for quantization-aware fine-tuning
    (``set_qat``), checkpoints and ``snn2hw export``.

    ``graph`` is a float IR graph (``snir.read``, or ``FloatNetwork.to_graph()``) that is a chain: one
    input, each population fed by one undelayed projection from the previous one (plus, for a dense
    layer, one from itself), one decay per population, a channel-uniform bias for a convolution, a
    non-spiking read-out only at the end. Anything else is a ``NIRError`` naming the population.
    """
    from snn2hw.ir import Conv2d as IRConv2d
    from snn2hw.nir.errors import NIRError
    from snn2hw.nn.conv import ConvLIF, LeakyReadout
    from snn2hw.nn.layers import LIFDense, RecurrentLIFDense, SpikingSequential

    if len(graph.inputs) != 1:
        raise NIRError(f"to_sequential: a chain has one input, the graph has {len(graph.inputs)}")
    layers, prev = [], graph.inputs[0].name
    order = graph.feedforward_order() or [p.name for p in graph.populations]
    for i, name in enumerate(order):
        pop = graph.population(name)
        n = pop.neuron
        incoming = graph.incoming(name)
        ff = [p for p in incoming if p.src != name]
        rec = [p for p in incoming if p.src == name]
        du, dv = (np.unique(np.asarray(x, dtype=np.float64)) for x in (n.du, n.dv))
        where = f"to_sequential: population {name!r}"
        if len(ff) != 1 or ff[0].src != prev or ff[0].delay or len(rec) > 1 or (rec and rec[0].delay):
            raise NIRError(f"{where} is not one link of a chain (fed by {[p.name for p in incoming]}, previous "
                           f"{prev!r}); use FloatNetwork for this graph")
        if du.size != 1 or dv.size != 1:
            raise NIRError(f"{where} has per-neuron decays; snir.split_by_decay splits them (no longer a chain)")
        proj, bias = ff[0], np.asarray(n.bias, dtype=np.float64)
        common = dict(du=float(du[0]), dv=float(dv[0]), bias=bool(np.any(bias != 0)))
        if not n.spiking:
            if i != len(order) - 1 or isinstance(proj, IRConv2d) or rec:
                raise NIRError(f"{where}: a read-out must be the last, dense, non-recurrent layer")
            layer = LeakyReadout(proj.weight.shape[1], pop.size, v_scale=float(n.v_th), **common)
        elif isinstance(proj, IRConv2d):
            if rec:
                raise NIRError(f"{where}: a recurrent convolutional layer has no snn2hw layer")
            per_channel = bias.reshape(proj.out_shape[0], -1)
            if np.any(per_channel != per_channel[:, :1]):
                raise NIRError(f"{where}: bias differs within a channel; ConvLIF has one per channel")
            layer = ConvLIF(proj.in_shape, proj.out_shape[0], proj.kernel_size, proj.stride, proj.padding,
                            proj.dilation, proj.groups, v_th=float(n.v_th), **common)
            bias = per_channel[:, 0]
        else:
            cls = RecurrentLIFDense if rec else LIFDense
            layer = cls(proj.weight.shape[1], pop.size, v_th=float(n.v_th), **common)
        with torch.no_grad():
            layer.weight.copy_(torch.as_tensor(np.asarray(proj.weight, dtype=np.float64)))
            if layer.bias is not None:
                layer.bias.copy_(torch.as_tensor(bias))
            if rec:
                layer.rec_weight.copy_(torch.as_tensor(np.asarray(rec[0].weight, dtype=np.float64)))
        layers.append(layer)
        prev = name
    if tuple(graph.outputs) != (prev,):
        raise NIRError(f"to_sequential: the chain's output is {prev!r}, the graph's {list(graph.outputs)}")
    return SpikingSequential(layers)
