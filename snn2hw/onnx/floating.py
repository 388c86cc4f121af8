"""The float network (training-time dynamics, ``snn2hw.nn.functional``) lowered to ONNX float operators.

The float CUBA-LIF of ``snn2hw.ir`` / ``snn2hw.nn.functional``, evaluated in the same order as the
training operators (each product and sum rounded once)::

    u[t] = alpha * u[t-1] + a[t]            alpha = 1 - du
    v[t] = (beta * v[t-1] + u[t]) + bias    beta  = 1 - dv
    s[t] = v[t] > v_th ;  v[t] = 0 where s[t]        (a non-spiking read-out keeps v and never spikes)

Projections: ``Dense`` is a ``MatMul`` with W^T, ``Conv2d`` is ONNX ``Conv`` (same cross-correlation,
padding, stride, dilation and groups as PyTorch) on the (C, H, W) view of the flat spikes.
"""
from __future__ import annotations

import numpy as np

from snn2hw.ir import LIF, Conv2d, Dense, Graph, Population
from snn2hw.onnx.builder import DOUBLE, FLOAT, GraphBuilder
from snn2hw.onnx.integer import conv_accumulate
from snn2hw.onnx.schedule import OnnxExportError


class FloatArithmetic:
    """The float relaxation for the step-graph scheduler, in float32 or float64."""

    def __init__(self, graph: Graph, dtype=np.float32):
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise OnnxExportError(f"float export supports float32 and float64, not {self.dtype}")
        self.state_type = self.value_type = FLOAT if self.dtype == np.float32 else DOUBLE
        bad = [p.name for p in graph.populations if not isinstance(p.neuron, LIF)]
        bad += [p.name for p in graph.projections if not isinstance(p, (Dense, Conv2d))]
        if bad:
            raise OnnxExportError(f"float export needs a float graph; integer nodes: {', '.join(bad)}")

    def projection(self, b: GraphBuilder, p, src: str, src_binary: bool) -> str:
        w = np.asarray(p.weight, dtype=self.dtype)
        if isinstance(p, Dense):
            return b.op("MatMul", src, b.const(w.T.copy(), dtype=self.dtype, name=b.fresh(f"weight/{p.name}")))
        if self.dtype == np.float64:  # onnxruntime has no float64 Conv: gather the taps, one MatMul (exact sums)
            return conv_accumulate(b, p, src, w, self.dtype)
        img = b.op("Reshape", src, b.const([0, *p.in_shape]))
        out = b.op("Conv", img, b.const(w, dtype=self.dtype, name=b.fresh(f"weight/{p.name}")),
                   kernel_shape=list(p.kernel_size), strides=list(p.stride), dilations=list(p.dilation),
                   pads=[p.padding[0], p.padding[1], p.padding[0], p.padding[1]], group=int(p.groups))
        return b.op("Reshape", out, b.const([0, -1]))

    def neuron(self, b: GraphBuilder, pop: Population, parts: list[str], u: str, v: str):
        n = pop.neuron
        c = lambda x: b.const(x, dtype=self.dtype)  # noqa: E731
        alpha, beta = 1.0 - min(max(float(n.du), 0.0), 1.0), 1.0 - min(max(float(n.dv), 0.0), 1.0)
        u_new = b.op("Mul", u, c(alpha))
        if parts:  # a[t]: the messages summed in projection order, then added to alpha * u
            a = parts[0]
            for part in parts[1:]:
                a = b.op("Add", a, part)
            u_new = b.op("Add", u_new, a)
        v_pre = b.op("Add", b.op("Mul", v, c(beta)), u_new)
        bias = np.asarray(n.bias, dtype=self.dtype)
        if np.any(bias != 0):
            v_pre = b.op("Add", v_pre, b.const(bias, dtype=self.dtype, name=b.fresh(f"bias/{pop.name}")))
        if not n.spiking:
            zero = b.op("Mul", v_pre, c(0.0))
            return zero, u_new, v_pre
        fired = b.op("Greater", v_pre, c(float(n.v_th)))
        return b.op("Cast", fired, to=self.value_type), u_new, b.op("Where", fired, c(0.0), v_pre)
