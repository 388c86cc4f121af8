"""NIR (nir 1.0.8) <-> snn2hw float IR.

NIR stores time constants in seconds and no ``dt``, so ``dt`` is an explicit argument of both
directions. Forward Euler maps a NIR CubaLIF onto snn2hw's discrete neuron:

    du = dt / tau_syn,  dv = dt / tau_mem,
    input scale c = (dt / tau_mem) * r * (dt / tau_syn) * w_in   (folded into incoming weight rows)
    bias = (dt / tau_mem) * v_leak

A NIR LIF is the same with du = 1 (no current state), a NIR IF with du = 1, dv = 0. Export writes
r = tau_mem/dt, w_in = tau_syn/dt (so c = 1) and v_leak = bias/dv, and records dt in the graph's
metadata (``snn2hw_dt``); import warns when it disagrees with the dt it is given.

Import normalises every neuron to threshold 1 (dividing its incoming weights and bias by its
threshold: exact for this linear sub-threshold dynamics), because Loihi 2 has one threshold per
population but NIR allows one per neuron. du and dv must be uniform within a population.

Timing: snn2hw's graphs, like Loihi, delay every projection hop by one step; ``nir.Delay`` nodes add
``round(delay / dt)`` steps more. Graphs written by frameworks that run feed-forward layers within one
step will see their outputs delayed by one step per layer (documented in docs/nir.md).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import h5py
import nir
import numpy as np

from snn2hw.artefact import atomic_write_path
from snn2hw.ir import LIF, Conv2d, Dense, Graph, GraphError, Input, Population

DT_METADATA_KEY = "snn2hw_dt"
_NEURONS = (nir.CubaLIF, nir.LIF, nir.IF)
_PROJECTIONS = (nir.Linear, nir.Affine)


class NIRError(ValueError):
    """A NIR file or graph cannot be read, or uses something snn2hw cannot map (names the node)."""


# --- export -------------------------------------------------------------------------------------------
def to_nir(graph: Graph) -> nir.NIRGraph:
    """Float IR graph -> NIR graph (dt recorded in metadata; see module docstring for the mapping)."""
    graph.validate()
    if graph.is_quantized:
        raise NIRError("NIR export takes a float graph (export before quantizing)")
    dt = graph.dt
    nodes: dict[str, nir.NIRNode] = {}
    edges: list[tuple[str, str]] = []
    for i in graph.inputs:
        nodes[i.name] = nir.Input(input_type={"input": np.array([i.size])})
    for p in graph.populations:
        n = p.neuron
        if not getattr(n, "spiking", True):
            raise NIRError(f"population {p.name!r}: non-spiking read-out export to NIR is not supported yet")
        if not (0.0 < n.du <= 1.0 and 0.0 < n.dv <= 1.0):
            raise NIRError(
                f"population {p.name!r}: du={n.du}, dv={n.dv}; NIR needs finite time constants (0 < du, dv <= 1)"
            )
        ones = np.ones(p.size)
        nodes[p.name] = nir.CubaLIF(
            tau_syn=ones * dt / n.du,
            tau_mem=ones * dt / n.dv,
            r=ones / n.dv,
            v_leak=np.asarray(n.bias, dtype=np.float64) / n.dv,
            v_threshold=ones * n.v_th,
            v_reset=np.zeros(p.size),
            w_in=ones / n.du,
        )
    for pr in graph.projections:
        if isinstance(pr, Conv2d):  # nir.Conv2d export is not implemented yet; never write it as a Linear
            raise NIRError(f"projection {pr.name!r}: Conv2d export to NIR is not supported yet")
        # a sparse Dense is written as a Linear with its zeros (NIR has no sparse connectivity)
        nodes[pr.name] = nir.Linear(weight=np.asarray(pr.weight, dtype=np.float64))
        edges.append((pr.src, pr.name))
        if pr.delay:
            delay_name = f"{pr.name}.delay"
            nodes[delay_name] = nir.Delay(delay=np.full(graph.node(pr.dst).size, pr.delay * dt))
            edges += [(pr.name, delay_name), (delay_name, pr.dst)]
        else:
            edges.append((pr.name, pr.dst))
    for o in graph.outputs:
        out_name = f"{o}.output"
        nodes[out_name] = nir.Output(output_type={"output": np.array([graph.population(o).size])})
        edges.append((o, out_name))
    meta = {DT_METADATA_KEY: float(dt)}
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta)


def write(graph: Graph, path: str | os.PathLike) -> None:
    """Write a float IR graph as a ``.nir`` file, atomically."""
    ng = to_nir(graph)
    atomic_write_path(path, lambda tmp: nir.write(tmp, ng))


# --- import -------------------------------------------------------------------------------------------
def read(path: str | os.PathLike, dt: float) -> Graph:
    """Read a ``.nir`` file into a float IR graph, interpreting time constants with step ``dt``."""
    path = Path(path)
    if not path.is_file():
        raise NIRError(f"{path}: no such file")
    if not h5py.is_hdf5(path):
        raise NIRError(f"{path}: not a NIR file (not HDF5)")
    _check_dataset_sizes(path)
    try:
        ng = nir.read(path)
    except Exception as exc:  # nir raises many kinds on malformed files; report them as one type
        raise NIRError(f"{path}: corrupt or unsupported NIR file ({type(exc).__name__}: {exc})") from None
    try:
        return from_nir(ng, dt, source=str(path))
    except NIRError:
        raise
    except (TypeError, ValueError, IndexError, KeyError, AttributeError, OverflowError, ZeroDivisionError) as exc:
        # a node whose arrays are not what its type promises (strings, wrong rank, None...)
        raise NIRError(f"{path}: malformed NIR node data ({type(exc).__name__}: {exc})") from None


MAX_NIR_BYTES = 1 << 32  # datasets a NIR file may declare in total (4 GiB): larger is refused before reading


def _check_dataset_sizes(path: Path) -> None:
    """Refuse files whose datasets declare more than ``MAX_NIR_BYTES`` (HDF5 can declare huge datasets in a
    tiny file, which reading would allocate)."""
    total = 0

    def visit(_name, obj):
        nonlocal total
        if isinstance(obj, h5py.Dataset):
            total += int(np.prod(obj.shape, dtype=np.float64)) * max(int(obj.dtype.itemsize), 1)

    try:
        with h5py.File(path, "r") as f:
            f.visititems(visit)
    except Exception as exc:  # h5py raises OSError, KeyError, RuntimeError... on corrupt files
        raise NIRError(f"{path}: corrupt NIR file ({type(exc).__name__}: {exc})") from None
    if total > MAX_NIR_BYTES:
        raise NIRError(f"{path}: datasets declare {total} bytes, more than the {MAX_NIR_BYTES} snn2hw reads")


def _uniform(values, what: str, node: str) -> float:
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0 or not np.allclose(arr, arr[0], rtol=1e-9, atol=0):
        raise NIRError(f"node {node!r}: {what} differs between neurons; Loihi 2 has one per population")
    return float(arr[0])


def _size_of(node: nir.NIRNode, name: str) -> int:
    if isinstance(node, nir.Input):
        shape = np.asarray(next(iter(node.input_type.values()))).ravel()
    elif isinstance(node, _NEURONS):
        shape = np.asarray(np.shape(node.v_threshold))
    else:
        raise NIRError(f"node {name!r}: cannot size a {type(node).__name__}")
    if shape.size != 1:
        raise NIRError(f"node {name!r}: only 1-D populations are supported, got shape {tuple(shape)}")
    return int(shape[0])


def from_nir(ng: nir.NIRGraph, dt: float, source: str = "<graph>") -> Graph:
    """NIR graph -> float IR graph (see module docstring)."""
    if not dt > 0:
        raise NIRError(f"dt must be positive, got {dt}")
    recorded = (ng.metadata or {}).get(DT_METADATA_KEY)
    if recorded is not None and not np.isclose(float(recorded), dt):
        warnings.warn(f"{source}: written with dt={recorded}, read with dt={dt}; time constants rescale", stacklevel=2)
    nodes = ng.nodes
    for name, node in nodes.items():
        if not isinstance(node, (*_NEURONS, *_PROJECTIONS, nir.Input, nir.Output, nir.Delay)):
            raise NIRError(f"{source}: node {name!r} has unsupported type {type(node).__name__}")
    succ: dict[str, list[str]] = {n: [] for n in nodes}
    pred: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b in ng.edges:
        if a not in nodes or b not in nodes:
            raise NIRError(f"{source}: edge ({a!r}, {b!r}) names an unknown node")
        succ[a].append(b)
        pred[b].append(a)

    inputs = tuple(Input(n, _size_of(node, n)) for n, node in nodes.items() if isinstance(node, nir.Input))
    sizes = {i.name: i.size for i in inputs}
    neuron_names = [n for n, node in nodes.items() if isinstance(node, _NEURONS)]
    for n in neuron_names:
        sizes[n] = _size_of(nodes[n], n)

    # Per-neuron parameters: decays, input scale c, bias, threshold.
    params = {}
    for n in neuron_names:
        node = nodes[n]
        size = sizes[n]
        b = lambda x: np.broadcast_to(np.asarray(x, dtype=np.float64), (size,))  # noqa: E731
        if node.v_reset is not None and np.any(b(node.v_reset) != 0):
            raise NIRError(f"{source}: node {n!r}: v_reset != 0 is not supported (Loihi resets v to 0)")
        if isinstance(node, nir.CubaLIF):
            du_arr, dv_arr = dt / b(node.tau_syn), dt / b(node.tau_mem)
            c = dv_arr * b(node.r) * du_arr * b(node.w_in)
            bias = dv_arr * b(node.v_leak)
        elif isinstance(node, nir.LIF):
            du_arr, dv_arr = np.ones(size), dt / b(node.tau)
            c, bias = dv_arr * b(node.r), dv_arr * b(node.v_leak)
        else:  # IF
            du_arr, dv_arr = np.ones(size), np.zeros(size)
            c, bias = b(node.r), np.zeros(size)
        du, dv = _uniform(du_arr, "dt/tau_syn", n), _uniform(dv_arr, "dt/tau_mem", n)
        if not (0 <= du <= 1 and 0 <= dv <= 1):
            raise NIRError(f"{source}: node {n!r}: dt={dt} exceeds a time constant (decay fraction du={du:.3g}, dv={dv:.3g})")
        v_th = b(node.v_threshold)
        if np.any(v_th <= 0):
            raise NIRError(f"{source}: node {n!r}: thresholds must be positive")
        params[n] = (du, dv, c / v_th, bias / v_th)

    projections = []
    for name, node in nodes.items():
        if not isinstance(node, _PROJECTIONS):
            continue
        if len(pred[name]) != 1 or len(succ[name]) != 1:
            raise NIRError(f"{source}: projection {name!r} must have exactly one source and one target")
        src, dst, delay = pred[name][0], succ[name][0], 0
        if isinstance(nodes[dst], nir.Delay):
            d = np.asarray(nodes[dst].delay, dtype=np.float64).ravel()
            steps = np.round(d / dt)
            if d.size == 0 or np.any(steps != steps[0]) or len(succ[dst]) != 1:
                raise NIRError(f"{source}: delay node {dst!r}: only a uniform delay feeding one population is supported")
            delay, dst = int(steps[0]), succ[dst][0]
        if src not in sizes or dst not in params:
            raise NIRError(f"{source}: projection {name!r} must connect an input or neuron to a neuron ({src!r} -> {dst!r})")
        w = np.asarray(node.weight, dtype=np.float64)
        if w.shape != (sizes[dst], sizes[src]):
            raise NIRError(f"{source}: projection {name!r}: weight shape {w.shape} != ({sizes[dst]}, {sizes[src]})")
        du, dv, c, bias_scaled = params[dst]
        if isinstance(node, nir.Affine) and np.any(np.asarray(node.bias) != 0):
            if du != 1:
                raise NIRError(
                    f"{source}: projection {name!r}: an Affine bias into a current-based neuron has no Loihi "
                    "equivalent; use the neuron's v_leak"
                )
            params[dst] = (du, dv, c, bias_scaled + c * np.broadcast_to(np.asarray(node.bias, dtype=np.float64), c.shape))
        projections.append(Dense(name, src, dst, w * c[:, None], delay))

    for n, node in nodes.items():
        if isinstance(node, _NEURONS):
            for t in succ[n]:
                if not isinstance(nodes[t], (*_PROJECTIONS, nir.Output)):
                    raise NIRError(f"{source}: neuron node {n!r} feeds {type(nodes[t]).__name__} {t!r}; expected a projection or output")
            for s in pred[n]:
                if not isinstance(nodes[s], (*_PROJECTIONS, nir.Delay)):
                    raise NIRError(f"{source}: neuron node {n!r} is fed directly by {type(nodes[s]).__name__} {s!r}; expected a projection")
    populations = tuple(
        Population(n, sizes[n], LIF(params[n][0], params[n][1], 1.0, params[n][3])) for n in neuron_names
    )
    outputs = []
    for n, node in nodes.items():
        if isinstance(node, nir.Output):
            if len(pred[n]) != 1 or pred[n][0] not in params:
                raise NIRError(f"{source}: output {n!r} must be fed by exactly one neuron population")
            outputs.append(pred[n][0])
    try:
        return Graph(inputs, populations, tuple(projections), tuple(outputs), dt, {"source": source}).validate()
    except GraphError as exc:
        raise NIRError(f"{source}: {exc}") from None
