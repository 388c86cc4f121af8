"""Reading a conventional (ANN) ONNX model into a chain of typed stages, with the ``onnx`` package only.

Nothing in the file is executed: the graph is read as data (``onnx.load`` without external data, tensors
through ``numpy_helper``), checked with ``onnx.checker`` and walked node by node. Supported, as a chain
from the single graph input:

- ``Gemm`` (any alpha/beta/transB, transA = 0), ``MatMul`` (+ ``Add`` of a constant bias), ``Conv``
  (symmetric pads, ``auto_pad`` NOTSET or VALID) -> a linear stage;
- ``BatchNormalization`` directly after a linear stage -> folded into its weights and bias;
- ``Relu`` after a linear stage; ``AveragePool`` (``ceil_mode`` 0; pads only with ``count_include_pad``)
  and ``GlobalAveragePool``; ``MaxPool`` only where it is the identity (1x1 kernel, stride 1);
- ``Flatten`` / ``Reshape`` to (batch, features); ``Identity`` and ``Dropout`` (inference: identity);
- ``Softmax`` / ``LogSoftmax`` as the very last node (dropped: arg-max is unchanged).

Every node of another type is reported at once in one ``UnsupportedOperatorError``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

import numpy as np
import onnx
from onnx import numpy_helper

SUPPORTED = {"Gemm", "MatMul", "Add", "Conv", "BatchNormalization", "Relu", "AveragePool", "GlobalAveragePool",
             "MaxPool", "Flatten", "Reshape", "Identity", "Dropout", "Softmax", "LogSoftmax", "Constant"}


class ConversionError(ValueError):
    """An ONNX model cannot be converted (names the file, node and reason)."""


class UnsupportedOperatorError(ConversionError):
    """The model holds operators the conversion does not support; ``nodes`` lists (name, op_type) of all."""

    def __init__(self, source: str, nodes: list[tuple[str, str]]):
        self.nodes = nodes
        listing = ", ".join(f"{name or '<unnamed>'} ({op})" for name, op in nodes)
        why = ("; MaxPool maps only where it is the identity (1x1, stride 1): the maximum of spike counts is not a "
               "sum of spikes, so rate-coded CUBA-LIF neurons cannot compute it -- retrain with AveragePool"
               if any(op == "MaxPool" for _, op in nodes) else "")
        super().__init__(f"{source}: {len(nodes)} unsupported ONNX node(s): {listing}{why}; supported operators: "
                         f"{', '.join(sorted(SUPPORTED - {'Constant'}))}")


@dataclass(frozen=True)
class Linear:
    """A fully connected stage: ``y = x @ weight.T + bias``; ``relu`` when a ReLU follows."""

    name: str
    weight: np.ndarray  # (out, in)
    bias: np.ndarray  # (out,)
    relu: bool = False


@dataclass(frozen=True)
class Conv:
    """A 2-D convolution stage (PyTorch/ONNX cross-correlation), NCHW."""

    name: str
    weight: np.ndarray  # (out, in/groups, kh, kw)
    bias: np.ndarray  # (out,)
    in_shape: tuple
    out_shape: tuple
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    groups: int = 1
    relu: bool = False


@dataclass(frozen=True)
class AvgPool:
    """Average pooling (padding counted in the divisor); non-negative input assumed (it follows a ReLU)."""

    name: str
    kernel: tuple
    stride: tuple
    padding: tuple
    in_shape: tuple
    out_shape: tuple


@dataclass(frozen=True)
class Flatten:
    name: str


Stage = Linear | Conv | AvgPool | Flatten


@dataclass(frozen=True)
class AnnChain:
    """A parsed network: its input shape (without batch) and its stages in order."""

    source: str
    input_name: str
    input_shape: tuple
    stages: tuple = field(default_factory=tuple)


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _mappable(node: onnx.NodeProto) -> bool:
    """MaxPool converts only where it is the identity."""
    if node.op_type != "MaxPool":
        return True
    a = _attrs(node)
    k = a.get("kernel_shape", [])
    return all(v == 1 for v in k) and all(v == 1 for v in a.get("strides", [1] * len(k))) and not any(a.get("pads", []))


def _pool_out(size: int, k: int, s: int, p: int, d: int = 1) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def load_model(source: str | os.PathLike | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    if isinstance(source, onnx.ModelProto):
        return source, "<model>"
    path = str(source)
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends: the file is not an ONNX model
        raise ConversionError(f"{path}: not an ONNX model ({type(exc).__name__}: {str(exc)[:200]})") from None
    return model, path


def parse(source: str | os.PathLike | onnx.ModelProto) -> AnnChain:
    model, where = load_model(source)
    g = model.graph
    for t in g.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            raise ConversionError(f"{where}: initializer {t.name!r} keeps its data in an external file; "
                                  f"save the model with its weights inside "
                                  f"(onnx.save(..., save_as_external_data=False))")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ConversionError(f"{where}: invalid ONNX model ({str(exc).splitlines()[0][:300]})") from None
    unsupported = [(n.name, n.op_type) for n in g.node
                   if n.op_type not in SUPPORTED or n.domain not in ("", "ai.onnx") or not _mappable(n)]
    if unsupported:
        raise UnsupportedOperatorError(where, unsupported)

    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    for n in g.node:
        if n.op_type == "Constant":
            a = _attrs(n)
            if "value" not in a:
                raise ConversionError(f"{where}: Constant node {n.name!r}: only tensor 'value' constants are supported")
            consts[n.output[0]] = numpy_helper.to_array(a["value"])
    inputs = [i for i in g.input if i.name not in consts]
    if len(inputs) != 1:
        raise ConversionError(f"{where}: expected one graph input, found {[i.name for i in inputs]}")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) not in (2, 4) or any(d is None or d < 1 for d in dims[1:]):
        raise ConversionError(f"{where}: input {inputs[0].name!r} must be (batch, features) or (batch, C, H, W) with "
                              f"fixed sizes, got {dims}")
    shape = tuple(int(d) for d in dims[1:])

    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in g.output}
    stages: list[Stage] = []
    current = inputs[0].name
    relu_pending_ok = False  # the last stage is linear and may take a ReLU / BatchNorm / bias Add

    def fail(node, why: str):
        raise ConversionError(f"{where}: node {node.name or '<unnamed>'} ({node.op_type}): {why}")

    def const(node, name: str, what: str) -> np.ndarray:
        if name not in consts:
            fail(node, f"{what} {name!r} must be a constant (an initializer)")
        return np.asarray(consts[name], dtype=np.float64)

    while current not in outputs or consumers.get(current):
        nxt = [n for n in consumers.get(current, []) if n.op_type != "Constant"]
        if len(nxt) != 1:
            if not nxt:
                break
            raise ConversionError(f"{where}: tensor {current!r} feeds {len(nxt)} nodes "
                                  f"({', '.join(n.name or n.op_type for n in nxt)}); only chains are supported")
        node = nxt[0]
        a = _attrs(node)
        op = node.op_type
        data_inputs = [i for i in node.input if i and i not in consts]
        if data_inputs != [current]:
            fail(node, "joins several activations (residual/concatenation); only chains are supported")
        last = stages[-1] if stages else None
        if op in ("Identity", "Dropout"):
            pass
        elif op == "Gemm":
            if a.get("transA", 0):
                fail(node, "transA = 1 is not supported")
            if len(shape) != 1:
                fail(node, f"input of shape {shape} must be flat (add a Flatten)")
            b = const(node, node.input[1], "weight")
            w = (b if a.get("transB", 0) else b.T) * a.get("alpha", 1.0)
            bias = np.zeros(w.shape[0]) if len(node.input) < 3 or not node.input[2] else \
                np.broadcast_to(const(node, node.input[2], "bias") * a.get("beta", 1.0), (w.shape[0],)).copy()
            if w.shape[1] != shape[0]:
                fail(node, f"weight takes {w.shape[1]} inputs, the input has {shape[0]}")
            stages.append(Linear(node.name or f"gemm{len(stages)}", w, bias))
            shape, relu_pending_ok = (w.shape[0],), True
        elif op == "MatMul":
            if len(shape) != 1:
                fail(node, f"input of shape {shape} must be flat (add a Flatten)")
            b = const(node, node.input[1], "weight")
            if b.ndim != 2 or b.shape[0] != shape[0]:
                fail(node, f"weight of shape {b.shape} does not take {shape[0]} inputs")
            stages.append(Linear(node.name or f"matmul{len(stages)}", b.T.copy(), np.zeros(b.shape[1])))
            shape, relu_pending_ok = (b.shape[1],), True
        elif op == "Add":
            if not (relu_pending_ok and isinstance(last, (Linear, Conv))):
                fail(node, "Add is supported only as the bias of the Gemm/MatMul/Conv just before it")
            c = const(node, [i for i in node.input if i != current][0], "bias")
            bias = last.bias + (c.reshape(-1) if c.size == last.bias.size else np.broadcast_to(c, last.bias.shape))
            stages[-1] = replace(last, bias=np.asarray(bias, dtype=np.float64))
        elif op == "Conv":
            if len(shape) != 3:
                fail(node, f"input of shape {shape} is not an image (C, H, W)")
            w = const(node, node.input[1], "weight")
            if w.ndim != 4:
                fail(node, f"only 2-D convolutions are supported (weight shape {w.shape})")
            bias = const(node, node.input[2], "bias") if len(node.input) > 2 and node.input[2] else np.zeros(w.shape[0])
            auto_pad = a.get("auto_pad", b"NOTSET")
            auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
            if auto_pad not in ("NOTSET", "VALID"):
                fail(node, f"auto_pad {auto_pad} is not supported (export with explicit pads)")
            pads = list(a.get("pads", [0, 0, 0, 0])) if auto_pad == "NOTSET" else [0, 0, 0, 0]
            if pads[0] != pads[2] or pads[1] != pads[3]:
                fail(node, f"asymmetric pads {pads} are not supported")
            stride, dil = tuple(a.get("strides", [1, 1])), tuple(a.get("dilations", [1, 1]))
            groups = int(a.get("group", 1))
            if w.shape[1] * groups != shape[0]:
                fail(node, f"weight {w.shape} with group {groups} does not take {shape[0]} channels")
            out = (w.shape[0], _pool_out(shape[1], w.shape[2], stride[0], pads[0], dil[0]),
                   _pool_out(shape[2], w.shape[3], stride[1], pads[1], dil[1]))
            stages.append(Conv(node.name or f"conv{len(stages)}", w, bias, shape, out, stride, (pads[0], pads[1]), dil,
                               groups))
            shape, relu_pending_ok = out, True
        elif op == "BatchNormalization":
            if not (relu_pending_ok and isinstance(last, (Linear, Conv)) and not last.relu):
                fail(node, "BatchNormalization is folded into the Gemm/MatMul/Conv just before it; there is none")
            scale, beta, mean, var = (const(node, node.input[k], n) for k, n in
                                      zip(range(1, 5), ("scale", "bias", "mean", "var")))
            f = scale / np.sqrt(var + a.get("epsilon", 1e-5))
            w = last.weight * f.reshape(-1, *([1] * (last.weight.ndim - 1)))
            stages[-1] = replace(last, weight=w, bias=(last.bias - mean) * f + beta)
        elif op == "Relu":
            if not (relu_pending_ok and isinstance(last, (Linear, Conv))):
                fail(node, "a ReLU must follow a Gemm/MatMul/Conv (optionally with BatchNormalization)")
            stages[-1] = replace(last, relu=True)
            relu_pending_ok = False
        elif op in ("AveragePool", "GlobalAveragePool"):
            if len(shape) != 3:
                fail(node, f"input of shape {shape} is not an image")
            if not (isinstance(last, AvgPool) or (isinstance(last, Conv) and last.relu)):
                fail(node, "average pooling must follow a Conv + ReLU (the spiking rates it averages are non-negative)")
            if op == "GlobalAveragePool":
                k, s, p = shape[1:], shape[1:], (0, 0)
            else:
                if a.get("ceil_mode", 0):
                    fail(node, "ceil_mode = 1 is not supported")
                k = tuple(a["kernel_shape"])
                s = tuple(a.get("strides", [1, 1]))
                pads = list(a.get("pads", [0, 0, 0, 0]))
                if pads[0] != pads[2] or pads[1] != pads[3]:
                    fail(node, f"asymmetric pads {pads} are not supported")
                p = (pads[0], pads[1])
                if any(p) and not a.get("count_include_pad", 0):
                    fail(node, "padding with count_include_pad = 0 divides by a per-position count, which sum "
                               "pooling cannot express; use count_include_pad=1 or no padding")
            out = (shape[0], _pool_out(shape[1], k[0], s[0], p[0]), _pool_out(shape[2], k[1], s[1], p[1]))
            stages.append(AvgPool(node.name or f"pool{len(stages)}", tuple(k), tuple(s), tuple(p), shape, out))
            shape, relu_pending_ok = out, False
        elif op == "MaxPool":  # the identity (_mappable refused every other one)
            pass
        elif op in ("Flatten", "Reshape"):
            if op == "Flatten" and a.get("axis", 1) != 1:
                fail(node, f"Flatten axis {a.get('axis')} is not supported (use axis 1)")
            if op == "Reshape":
                target = [int(v) for v in const(node, node.input[1], "shape")]
                if len(target) != 2 or target[1] not in (-1, int(np.prod(shape))):
                    fail(node, f"only a reshape to (batch, features) is supported, got {target}")
            if len(shape) != 1:
                stages.append(Flatten(node.name or f"flatten{len(stages)}"))
            shape = (int(np.prod(shape)),)
        elif op in ("Softmax", "LogSoftmax"):
            rest = consumers.get(node.output[0], [])
            if rest or node.output[0] not in outputs:
                fail(node, f"{op} is dropped only as the network's last node")
        current = node.output[0]
    if not any(isinstance(s, (Linear, Conv)) for s in stages):
        raise ConversionError(f"{where}: the model has no Gemm/MatMul/Conv layer")
    return AnnChain(where, inputs[0].name, shape_of_input(dims), tuple(stages))


def shape_of_input(dims: list) -> tuple:
    return tuple(int(d) for d in dims[1:])
