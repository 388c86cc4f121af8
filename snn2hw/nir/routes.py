"""NIR import, pass 4: each stateless node (Linear, Affine, Scale, Conv, pooling, Flatten, Delay) as an
``Op``, and a route of them from a source to a neuron as one IR projection (``Dense`` or ``Conv2d``),
composed into a dense matrix when it holds more than one weighted node."""
from __future__ import annotations

from dataclasses import dataclass, field

import nir
import numpy as np
import torch

from snn2hw.ir import Conv2d, Dense
from snn2hw.nir.errors import NIRError
from snn2hw.nir.shapes import conv_geometry, node_size

MATERIALIZE_LIMIT = 1 << 24  # largest dense matrix (entries) a composed route may become


@dataclass
class Op:
    kind: str  # "dense" | "conv" | "scale" | "pass"
    node: str
    in_size: int
    out_size: int
    weight: np.ndarray | None = None
    scale: np.ndarray | None = None
    geometry: dict = field(default_factory=dict)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """The op on a batch of flat vectors (N, in_size) -> (N, out_size)."""
        if self.kind == "dense":
            return x @ self.weight.T
        if self.kind == "scale":
            return x * self.scale
        if self.kind == "conv":
            g = self.geometry
            img = torch.as_tensor(x, dtype=torch.float64).reshape(x.shape[0], *g["in_shape"])
            out = torch.nn.functional.conv2d(img, torch.as_tensor(g["weight"]), stride=g["stride"],
                                             padding=g["padding"], dilation=g["dilation"], groups=g["groups"])
            return out.reshape(x.shape[0], -1).numpy()
        return x


def stateless_op(node, name: str, in_shape: tuple, out_shape: tuple, dt: float) -> tuple[Op, int, np.ndarray | None]:
    """(op, delay in steps, bias in the output space or None) of a stateless node."""
    n_in, n_out = int(np.prod(in_shape)), int(np.prod(out_shape))
    bias = None
    if isinstance(node, (nir.Linear, nir.Affine)):
        w = np.asarray(node.weight, dtype=np.float64)
        if w.shape[1] != n_in:
            raise NIRError(f"node {name!r}: weight shape {w.shape} does not take its input of {n_in} values {in_shape}")
        if isinstance(node, nir.Affine) and node.bias is not None:
            bias = np.broadcast_to(np.asarray(node.bias, dtype=np.float64).ravel(), (n_out,)).copy() \
                if node_size(node.bias) in (1, n_out) else None
            if bias is None:
                raise NIRError(f"node {name!r}: bias has {node_size(node.bias)} values, expected {n_out}")
        return Op("dense", name, n_in, n_out, weight=w), 0, bias
    if isinstance(node, (nir.Conv1d, nir.Conv2d, nir.SumPool2d, nir.AvgPool2d)):
        g = conv_geometry(node, name, in_shape)
        c, cg = g["in_shape"][0], g["weight"].shape[1]
        o = g["weight"].shape[0]
        if g["groups"] < 1 or c % g["groups"] or o % g["groups"] or cg != c // g["groups"]:
            raise NIRError(f"node {name!r}: weight shape {g['weight'].shape} and groups {g['groups']} do not fit "
                           f"{c} input channels")
        b = getattr(node, "bias", None)
        if b is not None and np.any(np.asarray(b) != 0):
            b = np.asarray(b, dtype=np.float64).ravel()
            if b.size not in (1, o):
                raise NIRError(f"node {name!r}: bias has {b.size} values, expected {o} (one per output channel)")
            bias = np.repeat(np.broadcast_to(b, (o,)), n_out // o)
        return Op("conv", name, n_in, n_out, geometry=g), 0, bias
    if isinstance(node, nir.Scale):
        s = np.asarray(node.scale, dtype=np.float64).ravel()
        if s.size not in (1, n_in):
            raise NIRError(f"node {name!r}: scale has {s.size} values for an input of {n_in}")
        return Op("scale", name, n_in, n_out, scale=np.broadcast_to(s, (n_in,)).copy()), 0, None
    if isinstance(node, nir.Delay):
        d = np.asarray(node.delay, dtype=np.float64).ravel() / dt
        steps = np.round(d)
        if d.size == 0 or np.any(np.abs(d - steps) > 1e-6 * np.maximum(1, d)) or np.any(steps < 0):
            raise NIRError(f"node {name!r}: delay {np.asarray(node.delay).ravel()[:4]} s is not a whole number of "
                           f"steps of dt = {dt}")
        if np.any(steps != steps[0]):
            raise NIRError(f"node {name!r}: per-neuron delays differ ({sorted(set(steps.astype(int)))[:6]} steps); "
                           "Loihi 2 delays a whole projection by one value")
        return Op("pass", name, n_in, n_out), int(steps[0]), None
    return Op("pass", name, n_in, n_out), 0, None  # Flatten, pass-through


@dataclass
class Route:
    src: str
    dst: str
    ops: list
    delay: int


def conv_matrix(proj: Conv2d) -> np.ndarray:
    """The (dst, src) matrix of a float ``Conv2d`` projection."""
    op = Op("conv", proj.name, int(np.prod(proj.in_shape)), int(np.prod(proj.out_shape)),
             geometry=dict(weight=np.asarray(proj.weight, dtype=np.float64), stride=proj.stride,
                           padding=proj.padding, dilation=proj.dilation, groups=proj.groups, in_shape=proj.in_shape))
    return op.apply(np.eye(op.in_size)).T


def materialize(ops: list, n_src: int, n_dst: int, where: str) -> np.ndarray:
    if n_src * n_dst > MATERIALIZE_LIMIT:
        raise NIRError(f"{where}: composing these nodes needs a {n_dst} x {n_src} matrix, more than "
                       f"{MATERIALIZE_LIMIT} entries; put a neuron between them")
    x = np.eye(n_src)
    for op in ops:
        x = op.apply(x)
    return x.T


def _channel_uniform(v: np.ndarray, channels: int) -> np.ndarray | None:
    m = v.reshape(channels, -1)
    return m[:, 0].copy() if np.all(m == m[:, :1]) else None


def projection(name: str, route: Route, n_src: int, post: np.ndarray) -> Dense | Conv2d:
    """One route as an IR projection; ``post`` (per target neuron) multiplies its output."""
    ops = [op for op in route.ops if op.kind != "pass"]
    cores = [i for i, op in enumerate(ops) if op.kind in ("dense", "conv")]
    where = f"route {route.src!r} -> {route.dst!r} (through {', '.join(op.node for op in route.ops) or 'nothing'})"
    if len(cores) == 1:
        k = cores[0]
        pre = np.ones(n_src)
        for op in ops[:k]:
            pre = pre * op.scale
        after = post.copy()
        for op in ops[k + 1:]:
            after = after * op.scale
        core = ops[k]
        if core.kind == "dense":
            return Dense(name, route.src, route.dst, after[:, None] * core.weight * pre[None, :], route.delay)
        g = core.geometry
        o, cg = g["weight"].shape[:2]
        pre_c, post_c = _channel_uniform(pre, g["in_shape"][0]), _channel_uniform(after, o)
        if pre_c is not None and post_c is not None:
            per_group = o // g["groups"]
            in_ch = (np.arange(o)[:, None] // per_group) * cg + np.arange(cg)[None, :]
            w = g["weight"] * post_c[:, None, None, None] * pre_c[in_ch][:, :, None, None]
            return Conv2d(name, route.src, route.dst, w, tuple(g["in_shape"]), None, g["stride"], g["padding"],
                          g["dilation"], g["groups"], route.delay)
    if not cores:
        s = np.ones(n_src)
        for op in ops:
            s = s * op.scale
        if n_src != post.size:
            raise NIRError(f"{where}: connects {n_src} neurons to {post.size} without a weight")
        return Dense(name, route.src, route.dst, np.diag(s * post), route.delay)
    m = materialize(ops, n_src, post.size, where)
    return Dense(name, route.src, route.dst, m * post[:, None], route.delay)
