"""snn2hw's intermediate representation: a small typed graph of populations and projections.

One IR serves every stage. A float graph (from training or NIR) holds ``LIF`` neurons and float
weights; the quantizer turns it into an integer graph holding ``LoihiLIF`` neurons and
``LoihiDense`` / ``LoihiConv2d`` projections, which is what compiled artefacts store and backends run.

Projection kinds:

- ``Dense`` / ``LoihiDense``: a (dst.size, src.size) weight matrix. ``sparse=True`` marks the same
  matrix as sparse connectivity (zeros are absent synapses): it lowers to Lava's ``Sparse`` process,
  whose arithmetic is Dense's. The IR keeps the dense array (zeros and all), which keeps one code path.
- ``Conv2d`` / ``LoihiConv2d``: a 2-D convolution in PyTorch/NIR orientation (cross-correlation,
  weight (out_ch, in_ch/groups, kh, kw), images (C, H, W)). A population's flat index is the C-order
  index of its (C, H, W) image: ``c * H * W + y * W + x``.
- Sum pooling has no class of its own: ``sum_pool2d`` builds a ``Conv2d``/``LoihiConv2d`` with
  groups = C and an all-equal kernel (every channel pooled on its own). Lava has no pooling process;
  on Lava it is a Conv like any other.

Timing convention (the hardware's): a population's spikes at step t reach a target population at
step ``t + 1 + delay`` through a projection. Populations have no delay of their own. Inputs are
populations whose spikes are given from outside.

Float neuron (the continuous relaxation of the integer one in ``snn2hw.hw.loihi2``)::

    u[t] = (1 - du) * u[t-1] + a[t]                  a[t]: sum of incoming projections
    v[t] = (1 - dv) * v[t-1] + u[t] + bias
    s[t] = v[t] > v_th ;  v[t] = 0 where s[t]
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import numpy as np


class GraphError(ValueError):
    """A graph is malformed (unknown node, shape mismatch, cycle without delay...)."""


@dataclass(frozen=True)
class Input:
    """Spikes (binary, or graded with ``num_message_bits`` > 0) fed from outside."""

    name: str
    size: int
    num_message_bits: int = 0


@dataclass(frozen=True)
class LIF:
    """Float CUBA-LIF parameters (per-step fractions, not time constants).

    ``spiking=False`` marks a non-spiking leaky read-out (the same neuron without threshold and reset,
    whose v is read). ``v_th`` then only sets the quantizer's scale: the v magnitude that gets
    ``threshold_target`` integer units. On hardware it is a LIF with the maximum threshold
    (``vth = 2**17 - 1``), which never fires while |v| < 128 * v_th at the default target.
    """

    du: float
    dv: float
    v_th: float
    bias: np.ndarray  # (size,) float
    spiking: bool = True


@dataclass(frozen=True)
class LoihiLIF:
    """Integer CUBA-LIF parameters as Lava's LIF process takes them."""

    du: int
    dv: int
    vth: int
    bias_mant: np.ndarray  # (size,) int
    bias_exp: np.ndarray  # (size,) int


@dataclass(frozen=True)
class Population:
    name: str
    size: int
    neuron: Union[LIF, LoihiLIF]


@dataclass(frozen=True)
class Dense:
    """Float all-to-all projection; ``weight`` has shape (dst.size, src.size)."""

    name: str
    src: str
    dst: str
    weight: np.ndarray
    delay: int = 0
    sparse: bool = False  # sparse connectivity (Lava ``Sparse``); zeros are absent synapses


@dataclass(frozen=True)
class LoihiDense:
    """Integer projection as Lava's Dense takes it (weights before Lava's clip/truncate)."""

    name: str
    src: str
    dst: str
    weight: np.ndarray  # int
    weight_exp: int = 0
    num_weight_bits: int = 8
    sign_mode: int = 1  # snn2hw.hw.loihi2.SignMode
    num_message_bits: int = 0
    delay: int = 0
    sparse: bool = False  # lowers to Lava's ``Sparse`` (same arithmetic as ``Dense``)


def _pair(value, what: str) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    t = tuple(int(v) for v in value)
    if len(t) != 2:
        raise GraphError(f"{what} must be an int or a pair (h, w), got {value!r}")
    return t


def conv_output_hw(in_hw: tuple[int, int], kernel_hw: tuple[int, int], stride, padding, dilation) -> tuple[int, int]:
    """(H_out, W_out) of a 2-D convolution (PyTorch's formula, which is also Lava's)."""
    return tuple(
        (in_hw[i] + 2 * padding[i] - dilation[i] * (kernel_hw[i] - 1) - 1) // stride[i] + 1 for i in range(2)
    )


class _ConvFields:
    """Shared normalisation and geometry of ``Conv2d`` and ``LoihiConv2d`` (a mixin, no fields)."""

    def __post_init__(self):
        for f in ("stride", "padding", "dilation"):
            object.__setattr__(self, f, _pair(getattr(self, f), f"{self.name}: {f}"))
        object.__setattr__(self, "in_shape", tuple(int(d) for d in self.in_shape))
        out = tuple(int(d) for d in self.out_shape) if self.out_shape is not None else self.expected_out_shape()
        object.__setattr__(self, "out_shape", out)
        object.__setattr__(self, "groups", int(self.groups))

    @property
    def kernel_size(self) -> tuple[int, int]:
        return tuple(int(d) for d in np.shape(self.weight)[2:4])

    def expected_out_shape(self) -> tuple[int, int, int]:
        if len(self.in_shape) != 3 or np.ndim(self.weight) != 4:
            return (0, 0, 0)
        h, w = conv_output_hw(self.in_shape[1:], self.kernel_size, self.stride, self.padding, self.dilation)
        return (int(np.shape(self.weight)[0]), h, w)

    def geometry_errors(self) -> list[str]:
        """Why this convolution is malformed (empty when fine)."""
        errs = []
        w = np.shape(self.weight)
        if len(self.in_shape) != 3 or min(self.in_shape, default=0) < 1:
            errs.append(f"in_shape {self.in_shape} must be (C, H, W) with positive sizes")
            return errs
        if len(w) != 4 or min(w) < 1:
            errs.append(f"weight shape {w} must be (out_ch, in_ch/groups, kh, kw)")
            return errs
        if min(self.stride) < 1 or min(self.dilation) < 1 or min(self.padding) < 0:
            errs.append(f"stride {self.stride} and dilation {self.dilation} must be >= 1, padding {self.padding} >= 0")
            return errs
        c = self.in_shape[0]
        if self.groups < 1 or c % self.groups or w[0] % self.groups:
            errs.append(f"groups {self.groups} must divide in channels {c} and out channels {w[0]}")
        elif w[1] != c // self.groups:
            errs.append(f"weight shape {w}: dim 1 must be in_ch/groups = {c // self.groups}")
        expected = self.expected_out_shape()
        if min(expected) < 1:
            errs.append(f"kernel {self.kernel_size} (dilation {self.dilation}) does not fit the padded input {self.in_shape}")
        elif tuple(self.out_shape) != expected:
            errs.append(f"out_shape {self.out_shape} != {expected} computed from the geometry")
        return errs


@dataclass(frozen=True)
class Conv2d(_ConvFields):
    """Float 2-D convolution (PyTorch/NIR cross-correlation) from a (C,H,W) image to one.

    ``weight`` (out_ch, in_ch/groups, kh, kw); ``stride``/``padding``/``dilation`` as (h, w) or an int;
    ``out_shape`` None computes it. Source and target populations are the flat C-order images.
    """

    name: str
    src: str
    dst: str
    weight: np.ndarray
    in_shape: tuple
    out_shape: tuple | None = None
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    groups: int = 1
    delay: int = 0


@dataclass(frozen=True)
class LoihiConv2d(_ConvFields):
    """Integer 2-D convolution (same geometry and orientation as ``Conv2d``).

    Lava's ``Conv`` ignores ``weight_exp`` and ``num_weight_bits`` (it neither shifts nor clips nor
    truncates) and wraps its output to 24 bits; the quantizer therefore emits ``weight_exp = 0`` and
    weights already on the ``num_weight_bits``/``sign_mode`` grid, and the design rules check both
    (see docs/fixed-point.md, "Convolution, pooling and sparse connectivity").
    """

    name: str
    src: str
    dst: str
    weight: np.ndarray  # int
    in_shape: tuple
    out_shape: tuple | None = None
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    groups: int = 1
    weight_exp: int = 0
    num_weight_bits: int = 8
    sign_mode: int = 1  # snn2hw.hw.loihi2.SignMode (Lava's Conv ignores it; the design rules use it)
    num_message_bits: int = 0
    delay: int = 0


def sum_pool2d(name: str, src: str, dst: str, in_shape: tuple, kernel_size, stride=None, padding=0,
               weight: float | int = 1, integer: bool | None = None) -> "Conv2d | LoihiConv2d":
    """Sum pooling as a depthwise convolution: groups = C, kernel all ``weight`` (PyTorch's
    ``avg_pool2d`` times kh*kw when weight is 1). ``stride`` defaults to the kernel size.
    ``integer`` (default: ``weight`` is an int) picks ``LoihiConv2d`` over ``Conv2d``."""
    kh, kw = _pair(kernel_size, f"{name}: kernel_size")
    stride = (kh, kw) if stride is None else stride
    c = int(in_shape[0])
    integer = isinstance(weight, (int, np.integer)) if integer is None else integer
    kernel = np.full((c, 1, kh, kw), weight, dtype=np.int64 if integer else np.float64)
    cls = LoihiConv2d if integer else Conv2d
    return cls(name, src, dst, kernel, tuple(in_shape), None, stride, padding, 1, c)


def synapse_count(proj: "Projection") -> int:
    """Synapses of a projection: non-zero entries of its (dst, src) connectivity matrix.

    Dense/sparse: non-zero weights. Conv: for every non-zero kernel entry, the number of output
    positions at which it lands inside the (unpadded) input, i.e. non-zero kernel entries times their
    valid positions -- the synapse count of the equivalent dense matrix (weights are shared on
    hardware, so this overstates weight memory; it is the fan-in count).
    """
    if not isinstance(proj, (Conv2d, LoihiConv2d)):
        return int(np.count_nonzero(proj.weight))
    w = np.asarray(proj.weight)
    if w.size == 0:
        return 0
    counts = []
    for axis in range(2):
        n_in, n_out = proj.in_shape[1 + axis], proj.out_shape[1 + axis]
        k = proj.kernel_size[axis]
        pos = np.arange(n_out)[:, None] * proj.stride[axis] - proj.padding[axis] + np.arange(k)[None, :] * proj.dilation[axis]
        counts.append(((pos >= 0) & (pos < n_in)).sum(axis=0))  # (k,) valid output positions per tap
    valid = counts[0][:, None] * counts[1][None, :]  # (kh, kw)
    return int(((w != 0) * valid[None, None]).sum())


def _check_finite(graph: "Graph") -> None:
    """NaN or infinite parameters are named (node, parameter, first index), not passed on to become
    nonsense integers further down."""
    def bad(what: str, values) -> None:
        arr = np.asarray(values)
        if arr.dtype.kind not in "fc":
            return
        finite = np.isfinite(arr)
        if not finite.all():
            idx = tuple(int(i) for i in np.argwhere(~finite)[0]) if arr.ndim else ()
            val = arr[idx] if arr.ndim else arr
            raise GraphError(f"{what} holds {val} at index {list(idx)}: parameters must be finite numbers")

    for p in graph.projections:
        bad(f"projection {p.name!r}: weight", p.weight)
    for pop in graph.populations:
        n = pop.neuron
        if isinstance(n, LIF):
            for field_name in ("du", "dv", "v_th", "bias"):
                bad(f"population {pop.name!r}: {field_name}", np.asarray(getattr(n, field_name), dtype=np.float64)
                    if np.asarray(getattr(n, field_name)).dtype.kind in "biuf" else getattr(n, field_name))


Projection = Union[Dense, LoihiDense, Conv2d, LoihiConv2d]
Node = Union[Input, Population]


@dataclass(frozen=True)
class Graph:
    inputs: tuple[Input, ...]
    populations: tuple[Population, ...]
    projections: tuple[Projection, ...]
    outputs: tuple[str, ...]  # population names whose spikes are the network's output
    dt: float = 1e-3  # seconds per step (NIR stores time constants in seconds)
    metadata: dict = field(default_factory=dict, compare=False)

    # -- lookups ------------------------------------------------------------------------------------
    def node(self, name: str) -> Node:
        for n in (*self.inputs, *self.populations):
            if n.name == name:
                return n
        raise GraphError(f"unknown node {name!r}")

    def population(self, name: str) -> Population:
        node = self.node(name)
        if not isinstance(node, Population):
            raise GraphError(f"{name!r} is an input, not a population")
        return node

    def incoming(self, name: str) -> tuple[Projection, ...]:
        return tuple(p for p in self.projections if p.dst == name)

    @property
    def is_quantized(self) -> bool:
        return all(isinstance(p.neuron, LoihiLIF) for p in self.populations) and all(
            isinstance(p, (LoihiDense, LoihiConv2d)) for p in self.projections
        )

    def feedforward_order(self) -> list[str] | None:
        """Populations in an order where every projection goes forward, or None if there is a cycle."""
        input_names = {i.name for i in self.inputs}
        remaining = [p.name for p in self.populations]
        done: set[str] = set(input_names)
        order: list[str] = []
        while remaining:
            ready = [n for n in remaining if all(p.src in done for p in self.incoming(n))]
            if not ready:
                return None
            for n in ready:
                order.append(n)
                done.add(n)
                remaining.remove(n)
        return order

    def validate(self) -> "Graph":
        names = [n.name for n in (*self.inputs, *self.populations)]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise GraphError(f"duplicate node names: {sorted(dup)}")
        proj_names = [p.name for p in self.projections]
        dup = {n for n in proj_names if proj_names.count(n) > 1}
        if dup:
            raise GraphError(f"duplicate projection names: {sorted(dup)}")
        for p in self.projections:
            src, dst = self.node(p.src), self.node(p.dst)
            if isinstance(dst, Input):
                raise GraphError(f"projection {p.name!r} targets input {p.dst!r}")
            if isinstance(p, (Conv2d, LoihiConv2d)):
                errs = p.geometry_errors()
                if errs:
                    raise GraphError(f"projection {p.name!r}: " + "; ".join(errs))
                if int(np.prod(p.in_shape)) != src.size or int(np.prod(p.out_shape)) != dst.size:
                    raise GraphError(
                        f"projection {p.name!r}: in_shape {p.in_shape} / out_shape {p.out_shape} do not match "
                        f"({p.src} size {src.size}, {p.dst} size {dst.size}); population size must equal "
                        f"prod(shape)"
                    )
            elif tuple(p.weight.shape) != (dst.size, src.size):
                raise GraphError(
                    f"projection {p.name!r}: weight shape {tuple(p.weight.shape)} does not match "
                    f"({p.dst} size {dst.size}, {p.src} size {src.size})"
                )
            if p.delay < 0:
                raise GraphError(f"projection {p.name!r}: negative delay {p.delay}")
        for pop in self.populations:
            bias = pop.neuron.bias if isinstance(pop.neuron, LIF) else pop.neuron.bias_mant
            if np.shape(bias) != (pop.size,):
                raise GraphError(f"population {pop.name!r}: bias shape {np.shape(bias)} != ({pop.size},)")
        _check_finite(self)
        for o in self.outputs:
            self.population(o)
        if not self.outputs:
            raise GraphError("graph has no outputs")
        return self

    def summary(self) -> dict:
        """Resource figures: neurons and synapses (``synapse_count``: non-zero weights of the equivalent
        dense connectivity; for a convolution, non-zero kernel entries times their valid positions)."""
        return {
            "inputs": sum(i.size for i in self.inputs),
            "neurons": sum(p.size for p in self.populations),
            "synapses": int(sum(synapse_count(p) for p in self.projections)),
            "populations": len(self.populations),
            "projections": len(self.projections),
        }
