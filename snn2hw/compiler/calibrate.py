"""Calibration: run a float graph on sample inputs and record what quantization needs to know.

The float run follows the IR's definition (``snn2hw.ir``, module docstring) and its timing convention
(a projection delivers the spikes of step t at step t + 1 + delay). It records, per population, the
peak |u| and |v| (in float units) and every neuron's firing rate; per input, the rate of every channel;
per population, every sample's spike count per neuron (what the spike-matching scale search of
``snn2hw.compiler.ptq`` compares the quantized network with), and the inputs used.
Nothing else in snn2hw runs a float IR graph, and nothing here is used by a backend.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from snn2hw.ir import LIF, Conv2d, Graph


@dataclass(frozen=True)
class Calibration:
    """Per node: ``rates`` (mean value per step and neuron, over samples and steps); per population:
    ``peak_u``/``peak_v`` (largest magnitudes reached), ``counts`` (spikes per sample and neuron,
    (samples, size)); the number of samples and steps used and the ``inputs`` themselves (by input name,
    (samples, steps, size))."""

    rates: dict[str, np.ndarray]
    peak_u: dict[str, float]
    peak_v: dict[str, float]
    samples: int
    steps: int
    counts: dict[str, np.ndarray] | None = None
    inputs: dict[str, np.ndarray] | None = None


def _as_inputs(graph: Graph, inputs) -> dict[str, torch.Tensor]:
    if not isinstance(inputs, dict):
        if len(graph.inputs) != 1:
            raise ValueError(f"the graph has {len(graph.inputs)} inputs; give calibration inputs as a dict by name")
        inputs = {graph.inputs[0].name: inputs}
    out = {}
    for i in graph.inputs:
        if i.name not in inputs:
            raise ValueError(f"calibration inputs lack input {i.name!r}")
        x = torch.as_tensor(np.asarray(inputs[i.name]), dtype=torch.float64)
        if x.ndim != 3 or x.shape[2] != i.size:
            raise ValueError(f"calibration input {i.name!r}: shape {tuple(x.shape)}, expected (samples, steps, {i.size})")
        out[i.name] = x
    return out


def calibrate(graph: Graph, inputs, max_samples: int = 256) -> Calibration:
    """Run float ``graph`` on ``inputs`` ((samples, steps, size) array, or a dict by input name)."""
    graph.validate()
    if graph.is_quantized or not all(isinstance(p.neuron, LIF) for p in graph.populations):
        raise ValueError("calibration needs a float graph")
    x = {k: v[:max_samples] for k, v in _as_inputs(graph, inputs).items()}
    batch, steps = next(iter(x.values())).shape[:2]
    zeros = {p.name: torch.zeros(batch, p.size, dtype=torch.float64) for p in graph.populations}
    # a population's spikes are read back at most 1 + delay steps later: keep only those steps
    keep = 1 + max((int(pr.delay) for pr in graph.projections), default=0)
    recent = {p.name: deque(maxlen=keep) for p in graph.populations}
    totals = {p.name: torch.zeros(batch, p.size, dtype=torch.float64) for p in graph.populations}
    u = {k: z.clone() for k, z in zeros.items()}
    v = {k: z.clone() for k, z in zeros.items()}
    peak_u = {p.name: 0.0 for p in graph.populations}
    peak_v = dict(peak_u)
    weights = {pr.name: torch.as_tensor(np.asarray(pr.weight, dtype=np.float64)) for pr in graph.projections}
    for t in range(steps):
        new = {}
        for p in graph.populations:
            n = p.neuron
            a = torch.zeros(batch, p.size, dtype=torch.float64)
            for pr in graph.incoming(p.name):
                lag = t - 1 - int(pr.delay)
                if lag < 0:
                    continue
                s = x[pr.src][:, lag] if pr.src in x else recent[pr.src][-1 - int(pr.delay)]
                if isinstance(pr, Conv2d):
                    img = s.reshape(batch, *pr.in_shape)
                    a = a + F.conv2d(img, weights[pr.name], stride=pr.stride, padding=pr.padding,
                                     dilation=pr.dilation, groups=pr.groups).reshape(batch, -1)
                else:
                    a = a + s @ weights[pr.name].T
            u[p.name] = (1 - n.du) * u[p.name] + a
            v[p.name] = (1 - n.dv) * v[p.name] + u[p.name] + torch.as_tensor(np.asarray(n.bias, dtype=np.float64))
            peak_u[p.name] = max(peak_u[p.name], float(u[p.name].abs().max()))
            peak_v[p.name] = max(peak_v[p.name], float(v[p.name].abs().max()))
            if getattr(n, "spiking", True):
                s = (v[p.name] > n.v_th).to(torch.float64)
                v[p.name] = torch.where(s > 0, torch.zeros_like(v[p.name]), v[p.name])
            else:
                s = torch.zeros_like(v[p.name])
            new[p.name] = s
        for k, s in new.items():
            recent[k].append(s)
            totals[k] += s
    rates = {k: xk.mean(dim=(0, 1)).numpy() for k, xk in x.items()}
    rates.update({k: (c.sum(0) / (batch * steps)).numpy() for k, c in totals.items()})
    counts = {k: c.numpy() for k, c in totals.items()}
    return Calibration(rates, peak_u, peak_v, batch, steps, counts, {k: v.numpy() for k, v in x.items()})
