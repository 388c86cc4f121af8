"""snn2hw's intermediate representation: a small typed graph of populations and projections.

One IR serves every stage. A float graph (from training or NIR) holds ``LIF`` neurons and float
weights; the quantizer turns it into an integer graph holding ``LoihiLIF`` neurons and
``LoihiDense`` projections, which is what compiled artefacts store and backends run.

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
    """Float CUBA-LIF parameters (per-step fractions, not time constants)."""

    du: float
    dv: float
    v_th: float
    bias: np.ndarray  # (size,) float


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


Projection = Union[Dense, LoihiDense]
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
            isinstance(p, LoihiDense) for p in self.projections
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
            if tuple(p.weight.shape) != (dst.size, src.size):
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
        for o in self.outputs:
            self.population(o)
        if not self.outputs:
            raise GraphError("graph has no outputs")
        return self

    def summary(self) -> dict:
        """Resource figures: neurons and synapses (non-zero weights)."""
        return {
            "inputs": sum(i.size for i in self.inputs),
            "neurons": sum(p.size for p in self.populations),
            "synapses": int(sum(int(np.count_nonzero(p.weight)) for p in self.projections)),
            "populations": len(self.populations),
            "projections": len(self.projections),
        }
