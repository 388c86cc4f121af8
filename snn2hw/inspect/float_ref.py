"""The float network, step by step, on the IR's own timing: the reference ``compare`` measures against.

It runs a float ``Graph`` (from a checkpoint's ``to_ir`` or a NIR file) with the float neuron the IR
defines (``snn2hw.ir``'s docstring), in float64, recording spikes, u and v of every population:

    u[t] = (1 - du) u[t-1] + a[t],   v[t] = (1 - dv) v[t-1] + u[t] + bias,
    s[t] = v[t] > v_th,  v[t] = 0 where s[t]        (no threshold or reset when spiking=False)

with ``a[t]`` the sum over incoming projections of their weights applied to the source's spikes of
step ``t - 1 - delay`` (the hardware's hop delay; an input's column t is its spikes of step t). The
training layers compute the same relaxation, so this is the trained network as it behaved in training
(up to float32 vs float64 rounding at exact threshold ties).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from snn2hw.ir import LIF, Conv2d, Dense, Graph


@dataclass
class FloatRun:
    spikes: dict[str, np.ndarray]  # population -> (batch, steps, size) uint8
    u: dict[str, np.ndarray]  # float64, after the step (and the reset)
    v: dict[str, np.ndarray]


def run_float(graph: Graph, inputs: dict[str, np.ndarray]) -> FloatRun:
    """Run every population of a float graph on ``inputs`` ({input name: (batch, steps, size)})."""
    for p in graph.populations:
        if not isinstance(p.neuron, LIF):
            raise TypeError(f"population {p.name!r} is not a float LIF; run_float takes a float graph")
    first = next(iter(inputs.values()))
    batch, steps = first.shape[:2]
    sizes = {n.name: n.size for n in (*graph.inputs, *graph.populations)}
    hist = {name: torch.zeros(batch, steps, size, dtype=torch.float64) for name, size in sizes.items()}
    for name, x in inputs.items():
        hist[name] = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    u_out = {p.name: torch.zeros(batch, steps, p.size, dtype=torch.float64) for p in graph.populations}
    v_out = {p.name: torch.zeros(batch, steps, p.size, dtype=torch.float64) for p in graph.populations}
    u = {p.name: torch.zeros(batch, p.size, dtype=torch.float64) for p in graph.populations}
    v = {p.name: torch.zeros(batch, p.size, dtype=torch.float64) for p in graph.populations}
    weights = {pr.name: torch.as_tensor(np.asarray(pr.weight, dtype=np.float64)) for pr in graph.projections}
    incoming = {p.name: graph.incoming(p.name) for p in graph.populations}
    for t in range(steps):
        for pop in graph.populations:
            n = pop.neuron
            a = torch.zeros(batch, pop.size, dtype=torch.float64)
            for pr in incoming[pop.name]:
                ts = t - 1 - pr.delay
                if ts < 0:
                    continue
                s = hist[pr.src][:, ts]
                if isinstance(pr, Conv2d):
                    img = s.reshape(batch, *pr.in_shape)
                    a = a + torch.nn.functional.conv2d(img, weights[pr.name], stride=pr.stride, padding=pr.padding,
                                                       dilation=pr.dilation, groups=pr.groups).reshape(batch, -1)
                elif isinstance(pr, Dense):
                    a = a + s @ weights[pr.name].t()
            bias = torch.as_tensor(np.asarray(n.bias, dtype=np.float64))
            u[pop.name] = (1.0 - n.du) * u[pop.name] + a
            v_new = (1.0 - n.dv) * v[pop.name] + u[pop.name] + bias
            if getattr(n, "spiking", True):
                s_new = v_new > n.v_th
                v_new = torch.where(s_new, torch.zeros_like(v_new), v_new)
                hist[pop.name][:, t] = s_new.to(torch.float64)
            v[pop.name] = v_new
            u_out[pop.name][:, t] = u[pop.name]
            v_out[pop.name][:, t] = v_new
    return FloatRun(
        {p.name: hist[p.name].numpy().astype(np.uint8) for p in graph.populations},
        {k: x.numpy() for k, x in u_out.items()},
        {k: x.numpy() for k, x in v_out.items()},
    )
