"""snn2hw float IR -> NIR 1.0.8.

Every projection and population kind the training engine produces has a NIR node:

==========================================  ===========================================================
IR                                          NIR
==========================================  ===========================================================
spiking population, du < 1                  ``CubaLIF`` (tau_syn = dt/du, tau_mem = dt/dv, r = 1/dv,
                                            w_in = 1/du, v_leak = bias/dv, v_reset = 0)
spiking population, du = 1                  ``LIF`` (tau = dt/dv, r = 1/dv, v_leak = bias/dv)
non-spiking read-out (``LeakyReadout``)     ``CubaLI`` (du < 1) or ``LI`` (du = 1)
``Dense`` (feed-forward, recurrent)         ``Linear`` (a ``Flatten`` first when the source is an image)
``Conv2d``                                  ``Conv2d`` (zero bias)
sum pooling (depthwise all-ones kernel)     ``SumPool2d``
projection ``delay`` d                      ``Delay`` of d * dt seconds after the projection
==========================================  ===========================================================

Populations fed by a convolution get their (C, H, W) shape (per-neuron arrays of that shape).
``Flatten`` and ``Dropout`` layers have no IR node (identity) and so none in NIR. The graph's metadata
records what NIR cannot state: ``snn2hw_dt``, reset to zero, the strict ``>`` comparison, Loihi's one
step per hop (``snn2hw_timing = next_step``) and each read-out's quantization scale. Parameters are in
forward-Euler form; ``snn2hw.nir.read`` with the ``snn2hw`` convention (auto-detected from
``snn2hw_dt``) gives back the same graph.
"""
from __future__ import annotations

import os

import nir
import numpy as np

import snn2hw
from snn2hw.artefact import atomic_write_path
from snn2hw.ir import Conv2d, Graph
from snn2hw.nir.conventions import DT_METADATA_KEY
from snn2hw.nir.errors import NIRError
from snn2hw.nir.read import SPARSE_KEY, V_SCALE_KEY


def population_shapes(graph: Graph) -> dict[str, tuple[int, ...]]:
    """(C, H, W) of every input or population a convolution reads or writes; (n,) for the others."""
    shapes = {n.name: (n.size,) for n in (*graph.inputs, *graph.populations)}
    for p in graph.projections:
        if isinstance(p, Conv2d):
            for name, shape in ((p.src, p.in_shape), (p.dst, p.out_shape)):
                if len(shapes[name]) > 1 and tuple(shapes[name]) != tuple(shape):
                    raise NIRError(f"projection {p.name!r}: {name!r} is read or written as {shape} and as "
                                   f"{shapes[name]}; NIR needs one shape per node")
                shapes[name] = tuple(int(d) for d in shape)
    return shapes


def _pool_kind(p: Conv2d) -> type | None:
    w = np.asarray(p.weight, dtype=np.float64)
    c, kh, kw = p.in_shape[0], w.shape[2], w.shape[3]
    if p.groups != c or w.shape[:2] != (c, 1) or p.dilation != (1, 1) or not np.all(w == w.flat[0]):
        return None
    if w.flat[0] == 1.0:
        return nir.SumPool2d
    if np.isclose(w.flat[0], 1.0 / (kh * kw), rtol=1e-12, atol=0):
        return nir.AvgPool2d
    return None


def _neuron_node(pop, shape: tuple, dt: float) -> nir.NIRNode:
    n = pop.neuron
    # per-neuron arrays (a float model's wide graph) or one value per population
    du = np.broadcast_to(np.asarray(n.du, dtype=np.float64).reshape(-1), (pop.size,)).reshape(shape)
    dv = np.broadcast_to(np.asarray(n.dv, dtype=np.float64).reshape(-1), (pop.size,)).reshape(shape)
    ones = np.ones(shape)
    bias = np.asarray(n.bias, dtype=np.float64).reshape(shape)
    if not (np.all(dv > 0) and np.all(dv <= 1) and np.all(du > 0) and np.all(du <= 1)):
        raise NIRError(f"population {pop.name!r}: du={du.min():.4g}..{du.max():.4g}, dv={dv.min():.4g}..{dv.max():.4g}; "
                       "NIR needs finite time constants (0 < du, dv <= 1)")
    common = dict(r=ones / dv, v_leak=bias / dv)
    if not getattr(n, "spiking", True):
        if np.all(du == 1.0):
            return nir.LI(tau=ones * dt / dv, **common)
        return nir.CubaLI(tau_syn=ones * dt / du, tau_mem=ones * dt / dv, w_in=ones / du, **common)
    spiking = dict(v_threshold=ones * float(n.v_th), v_reset=np.zeros(shape))
    if np.all(du == 1.0):
        return nir.LIF(tau=ones * dt / dv, **common, **spiking)
    return nir.CubaLIF(tau_syn=ones * dt / du, tau_mem=ones * dt / dv, w_in=ones / du, **common, **spiking)


def to_nir(graph: Graph) -> nir.NIRGraph:
    """Float IR graph -> NIR graph (see the module docstring for the mapping)."""
    graph.validate()
    if graph.is_quantized:
        raise NIRError("NIR export takes a float graph (export before quantizing)")
    dt = graph.dt
    shapes = population_shapes(graph)
    nodes: dict[str, nir.NIRNode] = {}
    edges: list[tuple[str, str]] = []
    for i in graph.inputs:
        nodes[i.name] = nir.Input(input_type={"input": np.array(shapes[i.name])})
    problems = []
    for p in graph.populations:
        try:
            nodes[p.name] = _neuron_node(p, shapes[p.name], dt)
        except NIRError as exc:
            problems += exc.problems
    if problems:
        raise NIRError(problems)
    for pr in graph.projections:
        src = pr.src
        if isinstance(pr, Conv2d):
            kind = _pool_kind(pr)
            kh, kw = pr.kernel_size
            if kind is not None:
                nodes[pr.name] = kind(kernel_size=np.array([kh, kw]), stride=np.array(pr.stride),
                                      padding=np.array(pr.padding))
            else:
                w = np.asarray(pr.weight, dtype=np.float64)
                nodes[pr.name] = nir.Conv2d(input_shape=tuple(pr.in_shape[1:]), weight=w, stride=pr.stride,
                                            padding=pr.padding, dilation=pr.dilation, groups=pr.groups,
                                            bias=np.zeros(w.shape[0]))
        else:
            if len(shapes[src]) > 1:  # an image into a dense projection: flatten it (C order, as snn2hw's index)
                flat = f"{pr.name}.flatten"
                nodes[flat] = nir.Flatten(input_type={"input": np.array(shapes[src])}, start_dim=0, end_dim=-1)
                edges.append((src, flat))
                src = flat
            if len(shapes[pr.dst]) > 1:
                raise NIRError(f"projection {pr.name!r}: a dense projection into the image population {pr.dst!r} "
                               f"{shapes[pr.dst]} has no NIR form (NIR has no reshape)")
            nodes[pr.name] = nir.Linear(weight=np.asarray(pr.weight, dtype=np.float64))
        edges.append((src, pr.name))
        if pr.delay:
            delay_name = f"{pr.name}.delay"
            nodes[delay_name] = nir.Delay(delay=np.full(shapes[pr.dst], pr.delay * dt))
            edges += [(pr.name, delay_name), (delay_name, pr.dst)]
        else:
            edges.append((pr.name, pr.dst))
    for o in graph.outputs:
        out_name = f"{o}.output"
        nodes[out_name] = nir.Output(output_type={"output": np.array(shapes[o])})
        edges.append((o, out_name))
    meta = {DT_METADATA_KEY: float(dt), "snn2hw_version": snn2hw.__version__, "snn2hw_reset": "zero",
            "snn2hw_threshold": ">", "snn2hw_timing": "next_step"}
    for p in graph.populations:
        if not getattr(p.neuron, "spiking", True):
            meta[f"{V_SCALE_KEY}.{p.name}"] = float(p.neuron.v_th)
    for pr in graph.projections:
        if getattr(pr, "sparse", False):  # NIR has no sparse matrix: the zeros are written, the flag here
            meta[f"{SPARSE_KEY}.{pr.name}"] = 1
    try:
        return nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta)
    except Exception as exc:  # nir's own type check: a bug here, but report it as an export error
        raise NIRError(f"NIR rejected the exported graph ({type(exc).__name__}: {str(exc)[:200]})") from None


def write(graph: Graph, path: str | os.PathLike) -> None:
    """Write a float IR graph as a ``.nir`` file, atomically."""
    ng = to_nir(graph)
    atomic_write_path(path, lambda tmp: nir.write(tmp, ng))


__all__ = ["population_shapes", "to_nir", "write"]
