"""NIR graph -> snn2hw float IR.

Passes (each a small function in its own module): ``flatten`` nested ``NIRGraph`` nodes into one graph (their Input and
Output nodes become pass-throughs); ``infer_shapes`` of every node from the Inputs and the weights;
``neuron_parameters`` of every neuron node in snn2hw's per-step terms under a ``Convention``; every
route from a source (an Input or a neuron) through stateless nodes (Linear, Affine, Scale, Conv1d,
Conv2d, SumPool2d, AvgPool2d, Flatten, Delay) to a neuron becomes one IR projection (``Dense`` or
``Conv2d``, with the target's input scale folded into it); biases on the way become the target's
``bias`` (no current state) or a projection from an always-on population (current-based neurons:
a constant input into the current, which no voltage bias reproduces). That gives a *wide* graph,
whose ``LIF.du``/``LIF.dv`` may differ per neuron; ``split_by_decay`` then splits each population into
the fewest groups that share quantized decays (Loihi 2 has one per population) and records the split.

Neuron mapping (``c``: input scale folded into incoming weights; decay fractions from the convention):

=========  ====  =====  ==================================  ================
NIR        du    dv     c                                   bias
=========  ====  =====  ==================================  ================
CubaLIF    syn   mem    dv * r * w_in * (du | 1 for "jump")  dv * v_leak
CubaLI     syn   mem    same, non-spiking                   dv * v_leak
LIF        1     mem    dv * r                              dv * v_leak
LI         1     mem    dv * r, non-spiking                 dv * v_leak
IF         1     0      r                                   0
I          1     0      r, non-spiking                      0
Threshold  1     1      1 (v = this step's input)           0
=========  ====  =====  ==================================  ================

A population keeps its threshold when it is uniform; per-neuron thresholds are folded into the
incoming weights and bias (exact for this linear sub-threshold dynamics) and the population gets
threshold 1.
"""
from __future__ import annotations

import os
import warnings

import nir
import numpy as np

from snn2hw.ir import LIF, Dense, Graph, GraphError, Input, Population
from snn2hw.nir.conventions import DT_METADATA_KEY, Convention, get_convention, resolve_dt
from snn2hw.nir.errors import NIRError
from snn2hw.nir.files import read_nir_graph
from snn2hw.nir.flatten import PassThrough, flatten
from snn2hw.nir.neurons import NEURONS, neuron_parameters
from snn2hw.nir.routes import Route, projection, stateless_op
from snn2hw.nir.shapes import infer_shapes
from snn2hw.nir.split import split_by_decay

STATELESS = (nir.Linear, nir.Affine, nir.Scale, nir.Conv1d, nir.Conv2d, nir.SumPool2d, nir.AvgPool2d, nir.Flatten,
             nir.Delay)
ALWAYS_ON = "snn2hw.always_on"  # population that fires at every step: the source of constant inputs
V_SCALE_KEY = "snn2hw_v_scale"  # metadata: read-out populations' quantization scale (snn2hw exports)
SPARSE_KEY = "snn2hw_sparse"  # metadata: projections that are sparse connectivity (snn2hw exports)


def _meta(md) -> dict:
    """NIR metadata as plain Python (h5py gives bytes and numpy scalars)."""
    out = {}
    for k, v in dict(md or {}).items():
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, np.ndarray) and v.shape == ():
            v = v.item()
        elif isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, bytes):
            v = v.decode()
        out[str(k)] = v
    return out


def from_nir(ng: nir.NIRGraph, dt: float | None = None, source: str = "<graph>", convention=None,
             approximate: bool = False, split: bool = True) -> Graph:
    """NIR graph -> float IR graph.

    ``dt``: seconds per step (default: recorded by snn2hw, else the convention's); ``convention``: a
    preset name or ``Convention`` (default: auto-detected); ``approximate``: accept what has no exact
    Loihi mapping (a subtract reset becomes a reset to zero) and record it in ``metadata["nir"]``;
    ``split=False`` returns the wide graph (per-neuron ``du``/``dv`` arrays: the float model's input).
    """
    if not isinstance(ng, nir.NIRGraph):
        raise NIRError(f"{source}: expected a NIR graph, got {type(ng).__name__}")
    md = _meta(getattr(ng, "metadata", None) if isinstance(getattr(ng, "metadata", None), dict) else {})
    conv = get_convention(convention, md)
    dt = resolve_dt(conv, dt, md, source)
    recorded = md.get(DT_METADATA_KEY)
    if recorded is not None and not np.isclose(dt, resolve_dt(conv, None, md, source)):
        warnings.warn(f"{source}: written with dt={recorded}, read with dt={dt}; time constants rescale", stacklevel=2)
    try:
        graph = _build(ng, dt, conv, approximate, md)
    except NIRError as exc:
        raise NIRError([f"{source}: {p}" for p in exc.problems]) from None
    except GraphError as exc:
        raise NIRError(f"{source}: {exc}") from None
    except (ValueError, TypeError, IndexError, KeyError, AttributeError, RuntimeError, ArithmeticError) as exc:
        raise NIRError(f"{source}: malformed graph ({type(exc).__name__}: {str(exc)[:200]})") from None
    return split_by_decay(graph) if split else graph


def _build(ng: nir.NIRGraph, dt: float, conv: Convention, approximate: bool, md: dict) -> Graph:
    nodes, edges = flatten(ng)
    bad = [f"node {n!r}: unsupported type {type(v).__name__}" for n, v in nodes.items()
           if not isinstance(v, (*NEURONS, *STATELESS, nir.Input, nir.Output, PassThrough))]
    if bad:
        raise NIRError(bad)
    pred: dict[str, list[str]] = {n: [] for n in nodes}
    succ: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b in edges:
        pred[b].append(a)
        succ[a].append(b)
    inputs = [n for n, v in nodes.items() if isinstance(v, nir.Input)]
    outputs = [n for n, v in nodes.items() if isinstance(v, nir.Output)]
    if not inputs or not outputs:
        raise NIRError("the graph needs at least one Input and one Output node")
    problems = [f"input {n!r} has an incoming edge" for n in inputs if pred[n]]
    problems += [f"output {n!r} has an outgoing edge" for n in outputs if succ[n]]
    if problems:
        raise NIRError(problems)
    shape = infer_shapes(nodes, pred, inputs)
    neurons = [n for n, v in nodes.items() if isinstance(v, NEURONS)]
    notes: list[str] = []
    if conv.reset == "subtract":
        if not approximate:
            raise NIRError(f"convention {conv.name!r} resets by subtraction, which Loihi 2 cannot do; pass "
                           "approximate=True (--approximate) to reset to zero instead, or reset='zero' if the "
                           "producer's network resets to zero")
        notes.append("subtract reset approximated by reset to zero")
    if conv.threshold == ">=":
        notes.append("threshold comparison v >= v_th deployed as Loihi's v > v_th (differs only where v equals "
                     "the threshold exactly)")
    params, problems = {}, []
    for n in neurons:
        try:
            params[n] = neuron_parameters(nodes[n], n, shape[n], conv, dt)
        except NIRError as exc:
            problems += exc.problems
    if problems:
        raise NIRError(problems)
    for n in neurons:  # the population's own input size must match every incoming route
        for p in pred[n]:
            if int(np.prod(shape[p])) != params[n].size:
                problems.append(f"node {n!r}: fed {int(np.prod(shape[p]))} values by {p!r}, has {params[n].size} neurons")
    if problems:
        raise NIRError(problems)

    sources = set(inputs) | set(neurons)
    ops = {}
    for n, v in nodes.items():
        if n in sources or isinstance(v, nir.Output):
            continue
        in_shape = shape[pred[n][0]] if pred[n] else shape[n]
        try:
            ops[n] = stateless_op(v, n, in_shape, shape[n], dt)
        except NIRError as exc:
            problems += exc.problems
    if problems:
        raise NIRError(problems)

    routes: list[Route] = []
    biases: dict[str, np.ndarray] = {n: np.zeros(params[n].size) for n in neurons}
    for dst in neurons:
        def walk(node, after, delay, seen):
            for p in pred[node]:
                if p in sources:
                    routes.append(Route(p, dst, list(after), delay))
                    continue
                if isinstance(nodes[p], nir.Output):
                    raise NIRError(f"node {dst!r}: fed by output {p!r}")
                if p in seen:
                    raise NIRError(f"node {p!r}: a cycle through stateless nodes only (no neuron)")
                op, d, b = ops[p]
                if b is not None and np.any(b != 0):
                    x = b[None, :]
                    for o in after:
                        x = o.apply(x)
                    biases[dst] = biases[dst] + x[0]
                walk(p, [op, *after], delay + d, seen | {p})
        walk(dst, [], 0, frozenset())

    # thresholds: keep a uniform one, fold per-neuron ones into the weights and bias
    v_th, post, folded = {}, {}, {}
    for n, p in params.items():
        folded[n] = p.spiking and not np.all(p.v_th == p.v_th[0])
        v_th[n] = 1.0 if folded[n] or not p.spiking else float(p.v_th[0])
        post[n] = p.c / p.v_th if folded[n] else p.c

    projections, names = [], set()

    def unique(base: str) -> str:
        name, k = base, 1
        while name in names:
            k += 1
            name = f"{base}#{k}"
        names.add(name)
        return name

    for r in routes:
        core = [op.node for op in r.ops if op.kind in ("dense", "conv")]
        base = "+".join(core) if core else f"{r.src}->{r.dst}"
        proj = projection(unique(base), r, int(np.prod(shape[r.src])), post[r.dst])
        if isinstance(proj, Dense) and md.get(f"{SPARSE_KEY}.{proj.name}"):
            proj = Dense(proj.name, proj.src, proj.dst, proj.weight, proj.delay, sparse=True)
        projections.append(proj)

    populations = []
    need_always_on = False
    for n in neurons:
        p = params[n]
        bias = p.bias / p.v_th if folded[n] else p.bias
        b_in = biases[n] * post[n]
        if np.any(b_in != 0):
            if np.all(p.du == 1.0):
                bias = bias + b_in  # no current state: a constant input is a voltage bias
            else:
                need_always_on = True
                projections.append(Dense(unique(f"{n}.bias"), ALWAYS_ON, n, b_in[:, None]))
                notes.append(f"population {n!r}: the constant input (Affine/Conv bias) into its current comes from "
                             f"population {ALWAYS_ON!r}, which fires at every step")
        scale = md.get(f"{V_SCALE_KEY}.{n}")
        th = float(scale) if (not p.spiking and scale is not None) else v_th[n]
        populations.append(Population(n, p.size, LIF(p.du.copy(), p.dv.copy(), th, np.asarray(bias, dtype=np.float64),
                                                     p.spiking)))
    if need_always_on:
        populations.insert(0, Population(ALWAYS_ON, 1, LIF(np.ones(1), np.ones(1), 1.0, np.full(1, 2.0))))

    out_pops = []
    for o in outputs:
        cur, hops = o, 0
        while not isinstance(nodes[cur], NEURONS):
            ps = pred[cur]
            if len(ps) != 1 or not (isinstance(nodes[ps[0]], (PassThrough, *NEURONS)) or
                                    (isinstance(nodes[ps[0]], nir.Flatten))):
                raise NIRError(f"output {o!r}: must be fed by exactly one neuron node (got "
                               f"{[type(nodes[q]).__name__ + ' ' + repr(q) for q in ps]}); a stateless read-out "
                               "has no population on Loihi: end the graph with a neuron (LI for a read-out)")
            cur = ps[0]
            hops += 1
            if hops > len(nodes):
                raise NIRError(f"output {o!r}: cycle of pass-through nodes")
        out_pops.append(cur)
    latency = _added_latency(projections, inputs, tuple(dict.fromkeys(out_pops)))
    if conv.timing == "same_step" and latency:
        notes.append(f"deployed, the outputs answer {latency} step(s) later than in the producer's timing "
                     "(Loihi delays each hop by one step)")
    meta = {"source_convention": conv.name, "dt": dt, "timing": conv.timing, "threshold": conv.threshold,
            "added_latency_steps": latency if conv.timing == "same_step" else 0,
            "reset": "zero", "producer_reset": conv.reset, "notes": notes,
            "shapes": {n: list(shape[n]) for n in [*inputs, *neurons]},
            "producer_metadata": {k: v for k, v in md.items() if isinstance(v, (str, int, float, bool))}}
    graph = Graph(tuple(Input(n, int(np.prod(shape[n]))) for n in inputs), tuple(populations), tuple(projections),
                  tuple(dict.fromkeys(out_pops)), dt, {"nir": meta})
    return graph.validate()


def _added_latency(projections, inputs: list[str], outputs: tuple[str, ...]) -> int:
    """Hops on the longest loop-free path from an input to an output: the steps a chip adds to a
    producer that runs feed-forward edges within one step."""
    succ: dict[str, set] = {}
    for p in projections:
        if p.src != p.dst:
            succ.setdefault(p.src, set()).add(p.dst)
    best: dict[str, int] = {}

    def visit(node: str, depth: int, path: frozenset):
        if best.get(node, -1) >= depth:
            return
        best[node] = depth
        for nxt in succ.get(node, ()):
            if nxt not in path:
                visit(nxt, depth + 1, path | {nxt})

    for i in inputs:
        visit(i, 0, frozenset({i}))
    return max((best.get(o, 0) for o in outputs), default=0)


def read(path: str | os.PathLike, dt: float | None = None, convention=None, approximate: bool = False) -> Graph:
    """Read a ``.nir`` file into a float IR graph (see ``from_nir``)."""
    return from_nir(read_nir_graph(path), dt, source=str(path), convention=convention, approximate=approximate)
