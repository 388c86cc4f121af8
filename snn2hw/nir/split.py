"""NIR import, pass 6: one ``du``/``dv`` per population (Loihi 2 has one per population): populations whose
neurons differ are split into groups sharing the quantized pair, and a split run's spikes reassembled."""
from __future__ import annotations

import numpy as np
import torch

from snn2hw.ir import LIF, Conv2d, Dense, Graph, Population
from snn2hw.nir.routes import conv_matrix


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
