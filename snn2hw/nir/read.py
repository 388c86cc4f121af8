"""NIR graph -> snn2hw float IR.

Steps (each a small function): ``flatten`` nested ``NIRGraph`` nodes into one graph (their Input and
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
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import nir
import numpy as np
import torch

from snn2hw.ir import LIF, Conv2d, Dense, Graph, GraphError, Input, Population
from snn2hw.nir.conventions import DT_METADATA_KEY, Convention, get_convention, resolve_dt
from snn2hw.nir.errors import NIRError

NEURONS = (nir.CubaLIF, nir.CubaLI, nir.LIF, nir.LI, nir.IF, nir.I, nir.Threshold)
STATELESS = (nir.Linear, nir.Affine, nir.Scale, nir.Conv1d, nir.Conv2d, nir.SumPool2d, nir.AvgPool2d, nir.Flatten,
             nir.Delay)
ALWAYS_ON = "snn2hw.always_on"  # population that fires at every step: the source of constant inputs
MATERIALIZE_LIMIT = 1 << 24  # largest dense matrix (entries) a composed route may become
V_SCALE_KEY = "snn2hw_v_scale"  # metadata: read-out populations' quantization scale (snn2hw exports)
SPARSE_KEY = "snn2hw_sparse"  # metadata: projections that are sparse connectivity (snn2hw exports)


def _size(x) -> int:
    return int(np.asarray(x).size)  # np.size on a torch tensor (Norse writes them) is a bound method


class _Pass:
    """A subgraph's Input or Output node after flattening: passes its input on unchanged."""


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


# --- 1. flatten nested graphs -----------------------------------------------------------------------------
def flatten(ng: nir.NIRGraph) -> tuple[dict, list[tuple[str, str]]]:
    """(nodes, edges) of one flat graph; node ``n`` of subgraph ``s`` is named ``s.n``."""
    nodes: dict = {}
    edges: list[tuple[str, str]] = []

    def ends(graph, kind) -> list[str]:
        return [n for n, v in graph.nodes.items() if isinstance(v, kind)]

    def add(graph, prefix: str, top: bool):
        for name, node in graph.nodes.items():
            full = prefix + str(name)
            if isinstance(node, nir.NIRGraph):
                add(node, full + ".", False)
            elif not top and isinstance(node, (nir.Input, nir.Output)):
                nodes[full] = _Pass()
            else:
                nodes[full] = node

        def resolve(ref: str, side: str) -> list[str]:
            ref = str(ref)
            if ref in graph.nodes:
                node = graph.nodes[ref]
                if isinstance(node, nir.NIRGraph):  # an edge to/from a subgraph means its Input/Output nodes
                    inner = ends(node, nir.Input if side == "dst" else nir.Output)
                    if len(inner) != 1:
                        raise NIRError(f"node {prefix + ref!r}: subgraph has {len(inner)} "
                                       f"{'Input' if side == 'dst' else 'Output'} nodes; name one in the edge")
                    return [prefix + ref + "." + inner[0]]
                return [prefix + ref]
            head, _, tail = ref.partition(".")
            if tail and isinstance(graph.nodes.get(head), nir.NIRGraph):
                return [prefix + ref]
            raise NIRError(f"edge ({ref!r}) names an unknown node")

        for a, b in graph.edges:
            for x in resolve(a, "src"):
                for y in resolve(b, "dst"):
                    edges.append((x, y))

    add(ng, "", True)
    for a, b in edges:
        for x in (a, b):
            if x not in nodes:
                raise NIRError(f"edge ({a!r}, {b!r}) names an unknown node {x!r}")
            if isinstance(nodes[x], nir.NIRGraph):
                raise NIRError(f"edge ({a!r}, {b!r}): {x!r} is a subgraph")
    return nodes, edges


# --- 2. shapes ----------------------------------------------------------------------------------------------
def _pair(v, what: str, node: str) -> tuple[int, int]:
    arr = np.asarray(v).ravel()
    if arr.size == 1:
        return int(arr[0]), int(arr[0])
    if arr.size == 2:
        return int(arr[0]), int(arr[1])
    raise NIRError(f"node {node!r}: {what} {v!r} must be one or two integers")


def _io_shape(types, node: str, what: str) -> tuple[int, ...]:
    if isinstance(types, dict):
        if len(types) != 1:
            raise NIRError(f"node {node!r}: {what} has {len(types)} entries; expected one")
        types = next(iter(types.values()))
    shape = tuple(int(d) for d in np.asarray(types).ravel())
    if not shape or min(shape) < 1:
        raise NIRError(f"node {node!r}: {what} {shape} must be a non-empty shape of positive sizes")
    return shape


def _conv_geometry(node, name: str, in_shape: tuple) -> dict:
    """Conv1d/Conv2d/pooling as 2-D convolution geometry on a (C, H, W) image."""
    if isinstance(node, (nir.SumPool2d, nir.AvgPool2d)):
        if len(in_shape) != 3:
            raise NIRError(f"node {name!r}: {type(node).__name__} needs a (C, H, W) input, got shape {in_shape}")
        kh, kw = _pair(node.kernel_size, "kernel_size", name)
        c = in_shape[0]
        value = 1.0 if isinstance(node, nir.SumPool2d) else 1.0 / (kh * kw)
        return _checked_geometry(dict(weight=np.full((c, 1, kh, kw), value), stride=_pair(node.stride, "stride", name),
                                      padding=_pair(node.padding, "padding", name), dilation=(1, 1), groups=c,
                                      in_shape=in_shape), name)
    w = np.asarray(node.weight, dtype=np.float64)
    one_d = isinstance(node, nir.Conv1d)
    if w.ndim != (3 if one_d else 4):
        raise NIRError(f"node {name!r}: weight shape {w.shape} must be (C_out, C_in/groups, "
                       f"{'k' if one_d else 'kh, kw'})")
    if len(in_shape) != (2 if one_d else 3):
        raise NIRError(f"node {name!r}: input shape {in_shape} must be {'(C, L)' if one_d else '(C, H, W)'}")
    if one_d:
        w = w[:, :, None, :]
        in_shape = (in_shape[0], 1, in_shape[1])
        stride, dilation = (1, int(np.ravel(node.stride)[0])), (1, int(np.ravel(node.dilation)[0]))
        pad = node.padding
    else:
        stride, dilation = _pair(node.stride, "stride", name), _pair(node.dilation, "dilation", name)
        pad = node.padding
    kh, kw = w.shape[2:]
    if isinstance(pad, str):
        if pad == "valid":
            padding = (0, 0)
        elif pad == "same" and stride == (1, 1) and (dilation[0] * (kh - 1)) % 2 == 0 and (dilation[1] * (kw - 1)) % 2 == 0:
            padding = (dilation[0] * (kh - 1) // 2, dilation[1] * (kw - 1) // 2)
        else:
            raise NIRError(f"node {name!r}: padding {pad!r} is not supported with stride {stride} and kernel "
                           f"{(kh, kw)} (symmetric 'same' padding needs stride 1 and an odd kernel extent)")
    elif one_d:
        padding = (0, int(np.ravel(pad)[0]))
    else:
        padding = _pair(pad, "padding", name)
    geometry = dict(weight=w, stride=stride, padding=padding, dilation=dilation, groups=int(node.groups),
                    in_shape=in_shape)
    return _checked_geometry(geometry, name)


def _checked_geometry(g: dict, name: str) -> dict:
    if min(g["stride"]) < 1 or min(g["dilation"]) < 1 or min(g["padding"]) < 0 or min(g["weight"].shape) < 1:
        raise NIRError(f"node {name!r}: stride {g['stride']} and dilation {g['dilation']} must be >= 1, padding "
                       f"{g['padding']} >= 0 and the kernel {g['weight'].shape} non-empty")
    return g


def _neuron_shape(node) -> tuple[int, ...] | None:
    for attr in ("v_threshold", "threshold", "tau_mem", "tau", "r"):
        v = getattr(node, attr, None)
        if v is not None and _size(v) > 1:
            return tuple(np.asarray(v).shape)
    return None


def infer_shapes(nodes: dict, pred: dict, inputs: list[str]) -> dict[str, tuple[int, ...]]:
    """Output shape of every node (neurons: their population shape)."""
    shape: dict[str, tuple] = {n: _io_shape(nodes[n].input_type, n, "input_type") for n in inputs}
    changed = True
    while changed:
        changed = False
        for n, node in nodes.items():
            if n in shape:
                continue
            known = [shape[p] for p in pred[n] if p in shape]
            s_in = known[0] if known else None
            s = None
            if isinstance(node, (nir.Linear, nir.Affine)):
                w = np.asarray(node.weight)
                if w.ndim != 2:
                    raise NIRError(f"node {n!r}: weight must be 2-D (out, in), got shape {w.shape}")
                s = (int(w.shape[0]),)
            elif isinstance(node, NEURONS):
                s = s_in if s_in is not None else _neuron_shape(node)
            elif isinstance(node, nir.Output):
                s = s_in
            elif s_in is None:
                s = None
            elif isinstance(node, (nir.Conv1d, nir.Conv2d, nir.SumPool2d, nir.AvgPool2d)):
                g = _conv_geometry(node, n, s_in)
                h_w = [(g["in_shape"][1 + i] + 2 * g["padding"][i] - g["dilation"][i] * (g["weight"].shape[2 + i] - 1)
                        - 1) // g["stride"][i] + 1 for i in range(2)]
                if min(h_w) < 1:
                    raise NIRError(f"node {n!r}: kernel does not fit the input of shape {s_in}")
                out_c = g["weight"].shape[0]
                s = (out_c, h_w[1]) if isinstance(node, nir.Conv1d) else (out_c, *h_w)
            elif isinstance(node, nir.Flatten):
                d = len(s_in)
                a, b = int(node.start_dim) % d if d else 0, int(node.end_dim) % d if d else 0
                s = s_in[:a] + (int(np.prod(s_in[a:b + 1])),) + s_in[b + 1:] if a <= b else s_in
            else:  # Scale, Delay, pass-through
                s = s_in
            if s is not None:
                shape[n] = tuple(int(d) for d in s)
                changed = True
    missing = [n for n in nodes if n not in shape and not isinstance(nodes[n], nir.Output)]
    if missing:
        raise NIRError([f"node {n!r}: cannot infer its shape (not connected to an Input, no sized parameters)"
                        for n in missing])
    return shape


# --- 3. neuron parameters ----------------------------------------------------------------------------------
@dataclass
class NeuronParams:
    """One NIR neuron node in snn2hw's per-step terms (arrays over the flat population)."""

    kind: str
    shape: tuple
    du: np.ndarray
    dv: np.ndarray
    c: np.ndarray  # input scale
    bias: np.ndarray  # voltage bias per step
    v_th: np.ndarray
    spiking: bool

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


def neuron_parameters(node, name: str, shape: tuple, conv: Convention, dt: float) -> NeuronParams:
    n = int(np.prod(shape))
    problems = []

    def arr(attr, default=None):
        v = getattr(node, attr, default)
        if v is None:
            v = default
        a = np.asarray(v, dtype=np.float64).ravel()
        if a.size == 1:
            return np.full(n, a[0])
        if a.size != n:
            problems.append(f"node {name!r}: {attr} has {a.size} values for a population of {n} {shape}")
            return np.full(n, np.nan)
        return a

    kind = type(node).__name__
    ones, zeros = np.ones(n), np.zeros(n)
    if isinstance(node, (nir.CubaLIF, nir.CubaLI)):
        du, dv = conv.decay_fraction(arr("tau_syn"), dt), conv.decay_fraction(arr("tau_mem"), dt)
        c = dv * arr("r") * arr("w_in", 1.0) * (du if conv.current_input == "euler" else 1.0)
        bias = dv * arr("v_leak", 0.0)
    elif isinstance(node, (nir.LIF, nir.LI)):
        du, dv = ones, conv.decay_fraction(arr("tau"), dt)
        c, bias = dv * arr("r"), dv * arr("v_leak", 0.0)
    elif isinstance(node, (nir.IF, nir.I)):
        du, dv, c, bias = ones, zeros, arr("r"), zeros
    else:  # Threshold: spikes where this step's input exceeds the threshold
        du, dv, c, bias = ones, ones, ones, zeros
    spiking = not isinstance(node, (nir.CubaLI, nir.LI, nir.I))
    if spiking:
        th_name = "threshold" if isinstance(node, nir.Threshold) else "v_threshold"
        v_th = arr(th_name)
        if not problems and not (np.all(np.isfinite(v_th)) and np.all(v_th > 0)):
            problems.append(f"node {name!r}: {th_name} must be positive and finite (Loihi 2 fires above a positive "
                            f"threshold; min {np.nanmin(v_th):.4g})")
        if getattr(node, "v_reset", None) is not None and not problems and np.any(arr("v_reset") != 0):
            problems.append(f"node {name!r}: v_reset != 0 is not supported (Loihi 2 resets v to 0)")
    else:
        v_th = ones
    if not problems:
        for what, x in (("dt/tau_syn (du)", du), ("dt/tau (dv)", dv)):
            if not np.all(np.isfinite(x)) or np.any(x < 0) or np.any(x > 1):
                bad = x[~(np.isfinite(x) & (x >= 0) & (x <= 1))]
                problems.append(f"node {name!r}: decay fraction {what} = {bad[0]:.4g} outside [0, 1] at dt = {dt} "
                                f"(convention {conv.name!r}: is dt right?)")
        for what, x in (("input scale (r, w_in)", c), ("v_leak", bias)):
            if not np.all(np.isfinite(x)):
                problems.append(f"node {name!r}: {what} is not finite")
    if problems:
        raise NIRError(problems)
    # r = tau/dt written by snnTorch and snn2hw: dv * r is 1 up to rounding; keep it exactly 1
    c = np.where(np.abs(c - 1.0) <= 1e-12, 1.0, c)
    return NeuronParams(kind, tuple(shape), du, dv, c, bias, v_th, spiking)


# --- 4. stateless routes -------------------------------------------------------------------------------------
@dataclass
class _Op:
    kind: str  # "dense" | "conv" | "scale" | "pass"
    node: str
    in_size: int
    out_size: int
    weight: np.ndarray | None = None
    scale: np.ndarray | None = None
    geometry: dict = field(default_factory=dict)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """The op on a batch of flat vectors (N, in_size) -> (N, out_size)."""
        if self.kind == "dense":
            return x @ self.weight.T
        if self.kind == "scale":
            return x * self.scale
        if self.kind == "conv":
            g = self.geometry
            img = torch.as_tensor(x, dtype=torch.float64).reshape(x.shape[0], *g["in_shape"])
            out = torch.nn.functional.conv2d(img, torch.as_tensor(g["weight"]), stride=g["stride"],
                                             padding=g["padding"], dilation=g["dilation"], groups=g["groups"])
            return out.reshape(x.shape[0], -1).numpy()
        return x


def stateless_op(node, name: str, in_shape: tuple, out_shape: tuple, dt: float) -> tuple[_Op, int, np.ndarray | None]:
    """(op, delay in steps, bias in the output space or None) of a stateless node."""
    n_in, n_out = int(np.prod(in_shape)), int(np.prod(out_shape))
    bias = None
    if isinstance(node, (nir.Linear, nir.Affine)):
        w = np.asarray(node.weight, dtype=np.float64)
        if w.shape[1] != n_in:
            raise NIRError(f"node {name!r}: weight shape {w.shape} does not take its input of {n_in} values {in_shape}")
        if isinstance(node, nir.Affine) and node.bias is not None:
            bias = np.broadcast_to(np.asarray(node.bias, dtype=np.float64).ravel(), (n_out,)).copy() \
                if _size(node.bias) in (1, n_out) else None
            if bias is None:
                raise NIRError(f"node {name!r}: bias has {_size(node.bias)} values, expected {n_out}")
        return _Op("dense", name, n_in, n_out, weight=w), 0, bias
    if isinstance(node, (nir.Conv1d, nir.Conv2d, nir.SumPool2d, nir.AvgPool2d)):
        g = _conv_geometry(node, name, in_shape)
        c, cg = g["in_shape"][0], g["weight"].shape[1]
        o = g["weight"].shape[0]
        if g["groups"] < 1 or c % g["groups"] or o % g["groups"] or cg != c // g["groups"]:
            raise NIRError(f"node {name!r}: weight shape {g['weight'].shape} and groups {g['groups']} do not fit "
                           f"{c} input channels")
        b = getattr(node, "bias", None)
        if b is not None and np.any(np.asarray(b) != 0):
            b = np.asarray(b, dtype=np.float64).ravel()
            if b.size not in (1, o):
                raise NIRError(f"node {name!r}: bias has {b.size} values, expected {o} (one per output channel)")
            bias = np.repeat(np.broadcast_to(b, (o,)), n_out // o)
        return _Op("conv", name, n_in, n_out, geometry=g), 0, bias
    if isinstance(node, nir.Scale):
        s = np.asarray(node.scale, dtype=np.float64).ravel()
        if s.size not in (1, n_in):
            raise NIRError(f"node {name!r}: scale has {s.size} values for an input of {n_in}")
        return _Op("scale", name, n_in, n_out, scale=np.broadcast_to(s, (n_in,)).copy()), 0, None
    if isinstance(node, nir.Delay):
        d = np.asarray(node.delay, dtype=np.float64).ravel() / dt
        steps = np.round(d)
        if d.size == 0 or np.any(np.abs(d - steps) > 1e-6 * np.maximum(1, d)) or np.any(steps < 0):
            raise NIRError(f"node {name!r}: delay {np.asarray(node.delay).ravel()[:4]} s is not a whole number of "
                           f"steps of dt = {dt}")
        if np.any(steps != steps[0]):
            raise NIRError(f"node {name!r}: per-neuron delays differ ({sorted(set(steps.astype(int)))[:6]} steps); "
                           "Loihi 2 delays a whole projection by one value")
        return _Op("pass", name, n_in, n_out), int(steps[0]), None
    return _Op("pass", name, n_in, n_out), 0, None  # Flatten, pass-through


@dataclass
class Route:
    src: str
    dst: str
    ops: list
    delay: int


# --- 5. the graph ---------------------------------------------------------------------------------------------
def conv_matrix(proj: Conv2d) -> np.ndarray:
    """The (dst, src) matrix of a float ``Conv2d`` projection."""
    op = _Op("conv", proj.name, int(np.prod(proj.in_shape)), int(np.prod(proj.out_shape)),
             geometry=dict(weight=np.asarray(proj.weight, dtype=np.float64), stride=proj.stride,
                           padding=proj.padding, dilation=proj.dilation, groups=proj.groups, in_shape=proj.in_shape))
    return op.apply(np.eye(op.in_size)).T


def _materialize(ops: list, n_src: int, n_dst: int, where: str) -> np.ndarray:
    if n_src * n_dst > MATERIALIZE_LIMIT:
        raise NIRError(f"{where}: composing these nodes needs a {n_dst} x {n_src} matrix, more than "
                       f"{MATERIALIZE_LIMIT} entries; put a neuron between them")
    x = np.eye(n_src)
    for op in ops:
        x = op.apply(x)
    return x.T


def _channel_uniform(v: np.ndarray, channels: int) -> np.ndarray | None:
    m = v.reshape(channels, -1)
    return m[:, 0].copy() if np.all(m == m[:, :1]) else None


def _projection(name: str, route: Route, n_src: int, post: np.ndarray) -> Dense | Conv2d:
    """One route as an IR projection; ``post`` (per target neuron) multiplies its output."""
    ops = [op for op in route.ops if op.kind != "pass"]
    cores = [i for i, op in enumerate(ops) if op.kind in ("dense", "conv")]
    where = f"route {route.src!r} -> {route.dst!r} (through {', '.join(op.node for op in route.ops) or 'nothing'})"
    if len(cores) == 1:
        k = cores[0]
        pre = np.ones(n_src)
        for op in ops[:k]:
            pre = pre * op.scale
        after = post.copy()
        for op in ops[k + 1:]:
            after = after * op.scale
        core = ops[k]
        if core.kind == "dense":
            return Dense(name, route.src, route.dst, after[:, None] * core.weight * pre[None, :], route.delay)
        g = core.geometry
        o, cg = g["weight"].shape[:2]
        pre_c, post_c = _channel_uniform(pre, g["in_shape"][0]), _channel_uniform(after, o)
        if pre_c is not None and post_c is not None:
            per_group = o // g["groups"]
            in_ch = (np.arange(o)[:, None] // per_group) * cg + np.arange(cg)[None, :]
            w = g["weight"] * post_c[:, None, None, None] * pre_c[in_ch][:, :, None, None]
            return Conv2d(name, route.src, route.dst, w, tuple(g["in_shape"]), None, g["stride"], g["padding"],
                          g["dilation"], g["groups"], route.delay)
    if not cores:
        s = np.ones(n_src)
        for op in ops:
            s = s * op.scale
        if n_src != post.size:
            raise NIRError(f"{where}: connects {n_src} neurons to {post.size} without a weight")
        return Dense(name, route.src, route.dst, np.diag(s * post), route.delay)
    m = _materialize(ops, n_src, post.size, where)
    return Dense(name, route.src, route.dst, m * post[:, None], route.delay)


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
           if not isinstance(v, (*NEURONS, *STATELESS, nir.Input, nir.Output, _Pass))]
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
        proj = _projection(unique(base), r, int(np.prod(shape[r.src])), post[r.dst])
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
            if len(ps) != 1 or not (isinstance(nodes[ps[0]], (_Pass, *NEURONS)) or
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


# --- 6. one decay per population ------------------------------------------------------------------------------
def decay_groups(du: np.ndarray, dv: np.ndarray) -> list[np.ndarray]:
    """Neuron indices grouped by their quantized (du, dv), in order of first appearance."""
    from snn2hw.quantize import decay_u_int, decay_v_int

    du_i = decay_u_int(torch.tensor(np.asarray(du, dtype=np.float64))).numpy()
    dv_i = decay_v_int(torch.tensor(np.asarray(dv, dtype=np.float64))).numpy()
    keys = list(zip(du_i.tolist(), dv_i.tolist()))
    groups: dict = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    return [np.asarray(g) for g in groups.values()]


def split_by_decay(graph: Graph) -> Graph:
    """A graph whose populations have one ``du``/``dv`` each: populations whose neurons differ are split
    into the fewest groups sharing a quantized value (``name[k]``), projections into and out of them
    into the matching blocks (a convolution touching a split population becomes a dense matrix). The
    split is recorded in ``metadata["nir"]["split"]`` ({population: {group: [indices]}})."""
    groups, pops = {}, []
    for p in graph.populations:
        du, dv = np.atleast_1d(np.asarray(p.neuron.du, dtype=np.float64)), np.atleast_1d(np.asarray(p.neuron.dv, dtype=np.float64))
        du, dv = np.broadcast_to(du, (p.size,)), np.broadcast_to(dv, (p.size,))
        gs = decay_groups(du, dv)
        groups[p.name] = gs
        n = p.neuron
        if len(gs) == 1:
            pops.append(Population(p.name, p.size, LIF(float(du.mean()), float(dv.mean()), n.v_th, n.bias, n.spiking)))
        else:
            for k, idx in enumerate(gs):
                pops.append(Population(f"{p.name}[{k}]", len(idx), LIF(float(du[idx].mean()), float(dv[idx].mean()),
                                                                       n.v_th, np.asarray(n.bias)[idx], n.spiking)))
    split = {name: gs for name, gs in groups.items() if len(gs) > 1}
    if not split:
        return Graph(graph.inputs, tuple(pops), graph.projections, graph.outputs, graph.dt, graph.metadata).validate()

    def parts(name: str, size: int) -> list[tuple[str, np.ndarray]]:
        if name in split:
            return [(f"{name}[{k}]", idx) for k, idx in enumerate(split[name])]
        return [(name, np.arange(size))]

    projs = []
    for pr in graph.projections:
        if pr.src not in split and pr.dst not in split:
            projs.append(pr)
            continue
        w = conv_matrix(pr) if isinstance(pr, Conv2d) else np.asarray(pr.weight, dtype=np.float64)
        for dname, didx in parts(pr.dst, w.shape[0]):
            for sname, sidx in parts(pr.src, w.shape[1]):
                block = w[np.ix_(didx, sidx)]
                if np.any(block != 0):
                    projs.append(Dense(f"{pr.name}[{sname}->{dname}]", sname, dname, block, pr.delay))
    outputs = tuple(x for o in graph.outputs for x, _ in parts(o, 0 if o in split else 1))
    meta = dict(graph.metadata)
    nir_meta = dict(meta.get("nir", {}))
    nir_meta["split"] = {name: {f"{name}[{k}]": idx.tolist() for k, idx in enumerate(gs)} for name, gs in split.items()}
    nir_meta["notes"] = list(nir_meta.get("notes", [])) + [
        f"population {name!r}: per-neuron time constants split into {len(gs)} populations sharing quantized "
        f"(du, dv)" for name, gs in split.items()]
    meta["nir"] = nir_meta
    return Graph(graph.inputs, tuple(pops), tuple(projs), outputs, graph.dt, meta).validate()


def merge_split(spikes: dict[str, np.ndarray], graph: Graph) -> dict[str, np.ndarray]:
    """Per-population arrays (batch, T, n) of a split graph's run, reassembled in the NIR node's order."""
    out = dict(spikes)
    for name, members in graph.metadata.get("nir", {}).get("split", {}).items():
        present = [m for m in members if m in spikes]
        if not present:
            continue
        first = spikes[present[0]]
        size = sum(len(v) for v in members.values())
        full = np.zeros(first.shape[:-1] + (size,), dtype=first.dtype)
        for m in present:
            full[..., members[m]] = spikes[m]
            out.pop(m)
        out[name] = full
    return out


# --- files ----------------------------------------------------------------------------------------------------
MAX_NIR_BYTES = 1 << 32  # datasets a NIR file may declare in total (4 GiB): larger is refused before reading


def _vlen_lengths(obj: h5py.Dataset, raw) -> list[int]:
    """Byte lengths declared by the variable-length elements of a contiguous dataset, read from the file's
    own bytes (``raw``, the file opened for binary reading): each element is a (uint32 length, heap address,
    uint32 index) descriptor, and HDF5 allocates ``length`` before it finds that the heap object is not there."""
    offset = obj.id.get_offset()
    if offset is None:  # chunked (or not yet written): no raw descriptors to inspect here
        return []
    step = 4 + obj.file.id.get_create_plist().get_sizes()[0] + 4
    n = int(np.prod(obj.shape, dtype=np.int64))
    raw.seek(offset)
    block = raw.read(n * step)
    if len(block) < n * step:
        raise NIRError(f"dataset {obj.name!r} lies past the end of the file")
    tid = obj.id.get_type()
    unit = 1 if tid.get_class() == h5py.h5t.STRING else max(int(tid.get_super().get_size()), 1)
    return [int.from_bytes(block[k * step:k * step + 4], "little") * unit for k in range(n)]


def _check_dataset_sizes(path: Path) -> None:
    """Refuse files whose datasets declare more than ``MAX_NIR_BYTES``, or a variable-length element longer
    than the file: HDF5 can declare a huge dataset in a tiny file (unwritten chunks), and a corrupt
    variable-length descriptor makes libhdf5 allocate its declared length, both before any error."""
    total = 0
    size = path.stat().st_size
    problems: list[str] = []

    def visit(_name, obj):
        nonlocal total
        if not isinstance(obj, h5py.Dataset):
            return
        total += int(np.prod(obj.shape, dtype=np.float64)) * max(int(obj.dtype.itemsize), 1)
        tid = obj.id.get_type()
        if tid.get_class() == h5py.h5t.VLEN or (tid.get_class() == h5py.h5t.STRING and tid.is_variable_str()):
            for length in _vlen_lengths(obj, raw):
                total += length
                if length > size:
                    problems.append(f"dataset {obj.name!r} declares a {length}-byte element in a {size}-byte file")
                    return

    try:
        with open(path, "rb") as raw, h5py.File(path, "r") as f:
            f.visititems(visit)
    except NIRError as exc:
        raise NIRError(f"{path}: corrupt NIR file ({exc})") from None
    except Exception as exc:  # h5py raises OSError, KeyError, RuntimeError... on corrupt files
        raise NIRError(f"{path}: corrupt NIR file ({type(exc).__name__}: {str(exc)[:200]})") from None
    if problems:
        raise NIRError(f"{path}: corrupt NIR file ({problems[0]})")
    if total > MAX_NIR_BYTES:
        raise NIRError(f"{path}: datasets declare {total} bytes, more than the {MAX_NIR_BYTES} snn2hw reads")


def read_nir_graph(path: str | os.PathLike) -> nir.NIRGraph:
    """The NIR graph in a ``.nir`` file (typed errors for a missing, non-HDF5 or corrupt file)."""
    path = Path(path)
    if not path.is_file():
        raise NIRError(f"{path}: no such file")
    if not h5py.is_hdf5(path):
        raise NIRError(f"{path}: not a NIR file (not HDF5)")
    _check_dataset_sizes(path)
    try:
        ng = nir.read(path)
    except Exception as exc:  # nir raises many kinds on malformed files; report them as one type
        raise NIRError(f"{path}: corrupt or unsupported NIR file ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(ng, nir.NIRGraph):
        raise NIRError(f"{path}: holds a single {type(ng).__name__} node, not a graph")
    return ng


def read(path: str | os.PathLike, dt: float | None = None, convention=None, approximate: bool = False) -> Graph:
    """Read a ``.nir`` file into a float IR graph (see ``from_nir``)."""
    return from_nir(read_nir_graph(path), dt, source=str(path), convention=convention, approximate=approximate)
