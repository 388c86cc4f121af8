"""A small ONNX graph builder: named nodes, deduplicated constants, one opset for every model snn2hw writes.

Everything snn2hw exports is built through ``GraphBuilder`` so the opset (``OPSET``), the IR version
and the naming scheme live in one place. Only the ``onnx`` package is used (``onnx.helper``).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Opset 17 (ONNX 1.12, IR version 8): every op used here exists in this form since opset <= 17 and every
# maintained runtime (onnxruntime >= 1.12, OpenVINO, TensorRT's parser, tract) reads it.
OPSET = 17
IR_VERSION = 8
PRODUCER = "snn2hw"

INT64 = TensorProto.INT64
UINT8 = TensorProto.UINT8
BOOL = TensorProto.BOOL
FLOAT = TensorProto.FLOAT
DOUBLE = TensorProto.DOUBLE
NP_TO_ONNX = {np.dtype(np.int64): INT64, np.dtype(np.uint8): UINT8, np.dtype(np.bool_): BOOL,
              np.dtype(np.float32): FLOAT, np.dtype(np.float64): DOUBLE}


class GraphBuilder:
    """Accumulates nodes and initializers of one ONNX graph; ``op`` returns the output's name."""

    def __init__(self, name: str, prefix: str = ""):
        self.name = name
        self.prefix = prefix  # for internal names: a subgraph's must differ from its outer graph's
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._consts: dict[tuple, str] = {}
        self._count = 0

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}{hint}#{self._count}"

    def const(self, value, dtype=np.int64, name: str | None = None) -> str:
        """An initializer holding ``value``; small constants are shared by value."""
        arr = np.asarray(value, dtype=dtype)
        key = None
        if name is None and arr.size <= 16:
            key = (arr.dtype.str, arr.shape, arr.tobytes())
            if key in self._consts:
                return self._consts[key]
        tname = name or self.fresh("const")
        self.initializers.append(numpy_helper.from_array(arr, tname))
        if key is not None:
            self._consts[key] = tname
        return tname

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs) -> str:
        out = out or self.fresh(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def add_input(self, name: str, elem_type: int, shape: list) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def add_output(self, name: str, elem_type: int, shape: list) -> str:
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def graph(self) -> onnx.GraphProto:
        return helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.initializers)


def make_model(graph: onnx.GraphProto, doc: str, metadata: dict[str, str]) -> onnx.ModelProto:
    """A model at snn2hw's opset and IR version, checked with ``onnx.checker`` (full check)."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                              producer_name=PRODUCER, doc_string=doc)
    from snn2hw import __version__

    model.producer_version = __version__
    helper.set_model_props(model, {k: str(v) for k, v in metadata.items()})
    onnx.checker.check_model(model, full_check=True)
    return model


def metadata(model: onnx.ModelProto) -> dict[str, str]:
    """The model's ``metadata_props`` as a dict."""
    return {p.key: p.value for p in model.metadata_props}
