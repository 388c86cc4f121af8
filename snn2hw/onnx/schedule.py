"""The step graph and the sequence graph of a network, for any neuron arithmetic (integer or float).

One time step (the simulator's convention, ``snn2hw.ir``): a projection delivers its source's value of
step ``t - 1 - delay`` at step ``t``, so a node whose values are needed later keeps a **history buffer**
``hist/<node>`` of shape (batch, L, n) holding its values of steps t-1 .. t-L, newest first, with
L = 1 + the largest delay of its outgoing projections (the hop delay is the 1). Each step:

1. every projection reads its source's buffer at slot ``delay`` and computes its message;
2. every population sums its messages and updates (u, v), giving its spikes;
3. every buffer shifts by one and takes the new value (an input's buffer takes this step's input).

Step model (``build_step``): inputs ``in/<input>`` (batch, n) and the state ``u/<pop>``, ``v/<pop>``
(batch, n) and ``hist/<node>`` (batch, L, n); outputs ``spikes/<pop>`` (batch, n) and the next state
``next_u/<pop>``, ``next_v/<pop>``, ``next_hist/<node>``. Zeros are the initial state.

Sequence model (``build_sequence``): inputs ``in/<input>`` (batch, steps, n); a ``Scan`` over axis 1 runs
the step graph from the zero state; outputs ``spikes/<pop>`` (batch, steps, n), and with
``record_state`` ``u/<pop>`` and ``v/<pop>`` (batch, steps, n), the state after each step (v after the
reset), as ``RunResult`` holds them.
"""
from __future__ import annotations

from dataclasses import dataclass

from onnx import helper

from snn2hw.ir import Graph
from snn2hw.onnx.builder import UINT8, GraphBuilder


class OnnxExportError(ValueError):
    """A network cannot be written as ONNX (names the node and the reason)."""


@dataclass(frozen=True)
class Layout:
    """Names and shapes of a network's ONNX state."""

    inputs: tuple[tuple[str, int], ...]  # (input name, size)
    populations: tuple[tuple[str, int], ...]  # (population name, size)
    history: tuple[tuple[str, int, int], ...]  # (node name, depth L, size)

    @classmethod
    def of(cls, graph: Graph) -> "Layout":
        depth: dict[str, int] = {}
        for p in graph.projections:
            depth[p.src] = max(depth.get(p.src, 0), 1 + int(p.delay))
        nodes = [*graph.inputs, *graph.populations]
        return cls(tuple((i.name, i.size) for i in graph.inputs), tuple((p.name, p.size) for p in graph.populations),
                   tuple((n.name, depth[n.name], n.size) for n in nodes if n.name in depth))

    def state(self) -> list[tuple[str, str, list]]:
        """(input name, next-state name, shape) of every state tensor, in the Scan's order."""
        out = []
        for name, size in self.populations:
            out += [(f"u/{name}", f"next_u/{name}", ["batch", size]), (f"v/{name}", f"next_v/{name}", ["batch", size])]
        for name, depth, size in self.history:
            out.append((f"hist/{name}", f"next_hist/{name}", ["batch", depth, size]))
        return out


def _step_nodes(b: GraphBuilder, graph: Graph, layout: Layout, arith, io) -> tuple[dict, dict, dict]:
    """Emit one step into ``b``; ``io(name)`` is the tensor name of input/state ``name`` in ``b``.
    Returns (spikes, next state by state-input name, u/v by population)."""
    # population spikes are 0/1 by construction; inputs go through the synapse's own "payload != 0" test,
    # as Lava's binary synapses treat any non-zero payload as a spike
    binary_nodes = {p.name for p in graph.populations}
    incoming: dict[str, list[str]] = {p.name: [] for p in graph.populations}
    for p in graph.projections:
        src = b.op("Gather", io(f"hist/{p.src}"), b.const(int(p.delay)), axis=1)  # (batch, n_src) of step t-1-delay
        incoming[p.dst].append(arith.projection(b, p, src, p.src in binary_nodes))
    spikes, nxt, state = {}, {}, {}
    for pop in graph.populations:
        s, u, v = arith.neuron(b, pop, incoming[pop.name], io(f"u/{pop.name}"), io(f"v/{pop.name}"))
        spikes[pop.name], state[pop.name] = s, (u, v)
        nxt[f"u/{pop.name}"], nxt[f"v/{pop.name}"] = u, v
    inputs = {n for n, _ in layout.inputs}
    for name, depth, _ in layout.history:
        new = b.op("Unsqueeze", io(f"in/{name}") if name in inputs else spikes[name], b.const([1]))
        if depth > 1:
            kept = b.op("Slice", io(f"hist/{name}"), b.const([0]), b.const([depth - 1]), b.const([1]))
            new = b.op("Concat", new, kept, axis=1)
        nxt[f"hist/{name}"] = new
    return spikes, nxt, state


def build_step(graph: Graph, arith, name: str = "snn2hw_step", for_scan: bool = False,
               record_state: bool = True) -> GraphBuilder:
    """The step graph. ``for_scan`` orders inputs/outputs as a Scan body (state first) and adds per-step
    copies of the spikes (and of u and v with ``record_state``) as scan outputs. A Scan body's names all
    carry the prefix ``step:``, so none shadows a name of the outer graph."""
    layout = Layout.of(graph)
    pfx = "step:" if for_scan else ""
    io = lambda n: pfx + n  # noqa: E731
    b = GraphBuilder(name, prefix=pfx)
    st, vt = arith.state_type, arith.value_type
    state = layout.state()
    input_specs = [(f"in/{n}", vt, ["batch", s]) for n, s in layout.inputs]
    state_specs = [(i, vt if i.startswith("hist/") else st, shape) for i, _, shape in state]
    for n, t, shape in (state_specs + input_specs if for_scan else input_specs + state_specs):
        b.add_input(io(n), t, shape)
    spikes, nxt, states = _step_nodes(b, graph, layout, arith, io)
    outs = []
    for (inp, out, shape), (_, t, _) in zip(state, state_specs):
        outs.append((b.op("Identity", nxt[inp], out=io(out)), t, shape))
    traces = []
    for pop, size in layout.populations:
        traces.append((b.op("Cast", spikes[pop], to=UINT8, out=io(f"spikes/{pop}")), UINT8, ["batch", size]))
        if for_scan and record_state:
            u, v = states[pop]
            traces.append((b.op("Identity", u, out=io(f"trace_u/{pop}")), st, ["batch", size]))
            traces.append((b.op("Identity", v, out=io(f"trace_v/{pop}")), st, ["batch", size]))
    for n, t, shape in (outs + traces if for_scan else traces + outs):
        b.add_output(n, t, shape)
    return b


def build_sequence(graph: Graph, arith, record_state: bool = False, name: str = "snn2hw_sequence") -> GraphBuilder:
    """The whole-sequence graph: one ``Scan`` over the steps axis of every input, from the zero state."""
    if not graph.inputs:
        raise OnnxExportError("the sequence model needs at least one input node (its steps axis sets the length)")
    layout = Layout.of(graph)
    body = build_step(graph, arith, name=f"{name}_body", for_scan=True, record_state=record_state).graph()
    b = GraphBuilder(name)
    st, vt = arith.state_type, arith.value_type
    for n, size in layout.inputs:
        b.add_input(f"in/{n}", vt, ["batch", "steps", size])
    first = f"in/{layout.inputs[0][0]}"
    batch = b.op("Slice", b.op("Shape", first), b.const([0]), b.const([1]))  # [batch]
    initial = []
    for inp, _, shape in layout.state():
        dims = b.op("Concat", batch, b.const(shape[1:]), axis=0)
        zero = helper.make_tensor("zero", vt if inp.startswith("hist/") else st, [1], [0])
        initial.append(b.op("ConstantOfShape", dims, out=f"initial/{inp}", value=zero))
    scan_in = [f"in/{n}" for n, _ in layout.inputs]
    finals = [f"final/{inp}" for inp, _, _ in layout.state()]
    outputs = []
    for pop, size in layout.populations:
        outputs.append((f"spikes/{pop}", UINT8, size))
        if record_state:
            outputs += [(f"u/{pop}", st, size), (f"v/{pop}", st, size)]
    b.nodes.append(helper.make_node(
        "Scan", initial + scan_in, finals + [o for o, _, _ in outputs], name="steps", body=body,
        num_scan_inputs=len(scan_in), scan_input_axes=[1] * len(scan_in), scan_output_axes=[1] * len(outputs)))
    for o, t, size in outputs:
        b.add_output(o, t, ["batch", "steps", size])
    return b
