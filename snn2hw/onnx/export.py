"""Export: a compiled integer network (or a trained float network) as ONNX step and sequence models.

``export_integer(artefact)`` writes Loihi 2's fixed-point arithmetic as int64 ONNX operators, so any
ONNX runtime reproduces snn2hw's simulator (and Lava) bit for bit. ``export_float(model)`` writes the
trained network's float dynamics (what PyTorch computes outside quantization-aware mode). Both use the
same step schedule (``snn2hw.onnx.schedule``): a one-step model with explicit state, and a sequence
model (``Scan`` over the steps axis).
"""
from __future__ import annotations

import json
import os

import numpy as np
import onnx

from snn2hw.artefact import Artefact, atomic_write_bytes
from snn2hw.ir import Graph
from snn2hw.onnx.builder import OPSET, make_model
from snn2hw.onnx.floating import FloatArithmetic
from snn2hw.onnx.integer import IntegerArithmetic
from snn2hw.onnx.schedule import Layout, OnnxExportError, build_sequence, build_step

KINDS = ("sequence", "step")


def _metadata(graph: Graph, arithmetic: str, kind: str, record_state: bool, extra: dict | None) -> dict:
    layout = Layout.of(graph)
    return {
        "snn2hw.arithmetic": arithmetic,  # "loihi2-integer" or "float32"/"float64"
        "snn2hw.kind": kind,
        "snn2hw.opset": OPSET,
        "snn2hw.inputs": json.dumps([[n, s] for n, s in layout.inputs]),
        "snn2hw.populations": json.dumps([[n, s] for n, s in layout.populations]),
        "snn2hw.history": json.dumps([list(h) for h in layout.history]),
        "snn2hw.outputs": json.dumps(list(graph.outputs)),
        "snn2hw.record_state": json.dumps(bool(record_state)),
        "snn2hw.dt": graph.dt,
        **(extra or {}),
    }


def _build(graph: Graph, arith, arithmetic: str, kind: str, record_state: bool, extra: dict | None) -> onnx.ModelProto:
    if kind not in KINDS:
        raise OnnxExportError(f"unknown model kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind == "step":
        b = build_step(graph, arith)
        doc = ("snn2hw one-step model: inputs in/<input> and state u/<pop>, v/<pop>, hist/<node> (zeros at the "
               "start); outputs spikes/<pop> and next_u/next_v/next_hist (feed them back as the next step's state)")
    else:
        b = build_sequence(graph, arith, record_state=record_state)
        doc = ("snn2hw sequence model: inputs in/<input> (batch, steps, n); outputs spikes/<pop> (batch, steps, n)"
               + (" and u/<pop>, v/<pop> after each step" if record_state else ""))
    return make_model(b.graph(), f"{doc} [{arithmetic}]", _metadata(graph, arithmetic, kind, record_state, extra))


def export_integer(network: Artefact | Graph, kind: str = "sequence", record_state: bool = False) -> onnx.ModelProto:
    """The compiled integer network as ONNX (int64 operators only), bit-exact with ``snn2hw.backends.sim``.

    ``kind="sequence"``: one model over a whole (batch, steps, n) input; ``record_state`` adds the u and v
    traces. ``kind="step"``: one time step with explicit state inputs and outputs."""
    graph = network.graph if isinstance(network, Artefact) else network
    if not graph.is_quantized:
        raise OnnxExportError("export_integer needs a quantized (compiled) graph; use export_float for a float one")
    graph.validate()
    return _build(graph, IntegerArithmetic(graph), "loihi2-integer", kind, record_state, None)


def export_float(network, kind: str = "sequence", record_state: bool | None = None, dtype=np.float32,
                 dt: float = 1e-3) -> onnx.ModelProto:
    """The float dynamics of a trained network (a ``SpikingSequential`` or any float IR ``Graph``).

    A ``LeakyReadout``'s output is its v (``v/<pop>``): ``record_state`` defaults to True when the graph has
    a non-spiking population, else False."""
    graph = network if isinstance(network, Graph) else network.to_ir(dt)
    graph.validate()
    if record_state is None:
        record_state = any(not getattr(p.neuron, "spiking", True) for p in graph.populations)
    arith = FloatArithmetic(graph, dtype)
    return _build(graph, arith, arith.dtype.name, kind, record_state, None)


def save(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Write ``model`` atomically (a failure leaves no half-written file)."""
    data = model.SerializeToString()
    atomic_write_bytes(path, lambda f: f.write(data))
