"""NIR import, pass 2: the output shape of every node, from the Inputs' types and the weights; the
2-D convolution geometry of Conv1d/Conv2d/pooling nodes."""
from __future__ import annotations

import nir
import numpy as np

from snn2hw.nir.errors import NIRError
from snn2hw.nir.neurons import NEURONS


def node_size(x) -> int:
    return int(np.asarray(x).size)  # np.size on a torch tensor (Norse writes them) is a bound method


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


def conv_geometry(node, name: str, in_shape: tuple) -> dict:
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
        if v is not None and node_size(v) > 1:
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
                g = conv_geometry(node, n, s_in)
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
