"""The one interface every backend implements, and the input checks they share."""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import numpy as np

from snn2hw.ir import Graph


class BackendError(RuntimeError):
    """A backend cannot run this graph or these inputs (names the node/limit at fault)."""


@dataclass
class RunResult:
    """What a run returns; arrays are numpy, shaped (batch, steps, size).

    ``spikes`` holds the output populations plus any in ``record``; ``u``/``v`` hold the integer
    state after each step (after the spike reset, as Lava's Vars read) of populations in
    ``record_state``. ``events`` counts width-limit events per population (simulator only; the
    Lava backend leaves it empty).
    """

    spikes: dict[str, np.ndarray]
    u: dict[str, np.ndarray] = field(default_factory=dict)
    v: dict[str, np.ndarray] = field(default_factory=dict)
    events: dict[str, dict[str, int]] = field(default_factory=dict)
    backend: str = ""

    def spike_counts(self, population: str) -> np.ndarray:
        return self.spikes[population].sum(axis=1)


BACKENDS = ("sim", "lava")


def get_backend(name: str) -> Callable[..., RunResult]:
    """The ``run`` function of backend ``name`` (``sim`` or ``lava``)."""
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    module = importlib.import_module(f"snn2hw.backends.{name}")
    return module.run


def check_inputs(graph: Graph, inputs: Mapping[str, np.ndarray] | np.ndarray,
                 binary_as_bool: bool = False) -> dict[str, np.ndarray]:
    """Normalise inputs to {input name: int64 array (batch, steps, size)} and check them.

    A bare array is accepted for a graph with a single input; a 2-D array is one sample.
    ``binary_as_bool``: binary inputs come back as bool arrays (checked and converted in one pass).
    """
    if not isinstance(inputs, Mapping):
        if len(graph.inputs) != 1:
            raise BackendError(f"graph has {len(graph.inputs)} inputs; pass a dict {{name: array}}")
        inputs = {graph.inputs[0].name: inputs}
    unknown = set(inputs) - {i.name for i in graph.inputs}
    if unknown:
        raise BackendError(f"inputs given for unknown input nodes {sorted(unknown)}")
    out: dict[str, np.ndarray] = {}
    shape = None
    for node in graph.inputs:
        if node.name not in inputs:
            raise BackendError(f"no data for input {node.name!r}")
        x = np.asarray(inputs[node.name])
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3 or x.shape[2] != node.size:
            raise BackendError(
                f"input {node.name!r}: expected shape (batch, steps, {node.size}), got {np.shape(inputs[node.name])}"
            )
        # integer and bool arrays are integers by type: the checks below would only cost passes
        if x.dtype.kind not in "biu" and (not np.all(np.isfinite(x)) or np.any(x != np.round(x))):
            raise BackendError(f"input {node.name!r}: values must be integers")
        if node.num_message_bits == 0:
            x = _binary(x, node.name, binary_as_bool)
        else:
            x = x.astype(np.int64, copy=False)  # no copy for int64 input (the backends only read it)
        if node.num_message_bits > 0:
            limit = 1 << (node.num_message_bits - 1)
            if x.min(initial=0) < -limit or x.max(initial=0) >= limit:
                raise BackendError(
                    f"input {node.name!r}: graded values must fit {node.num_message_bits} signed bits"
                )
        if shape is not None and x.shape[:2] != shape:
            raise BackendError("all inputs must have the same batch size and number of steps")
        shape = x.shape[:2]
        out[node.name] = x
    return out


def _binary(x: np.ndarray, name: str, as_bool: bool) -> np.ndarray:
    """A binary input checked to hold only 0 and 1: as int64 (no copy for int64 input), or as bool."""
    from snn2hw.hw import compiled  # the simulator's dependency (numba), not every backend's

    if as_bool and compiled.available():
        b = compiled.binary_spikes(x)
        if b is not None:
            return b
    elif x.dtype == np.bool_ or not (x.min(initial=0) < 0 or x.max(initial=0) > 1):
        return (x != 0) if as_bool else x.astype(np.int64, copy=False)
    raise BackendError(f"input {name!r} is binary (num_message_bits=0) but holds values outside {{0, 1}}")


def resolve_records(graph: Graph, record: Iterable[str], record_state: Iterable[str]) -> tuple[list[str], list[str]]:
    spikes = list(dict.fromkeys([*graph.outputs, *record]))
    state = list(dict.fromkeys(record_state))
    for name in (*spikes, *state):
        try:
            graph.population(name)
        except Exception as exc:  # GraphError
            raise BackendError(f"cannot record {name!r}: {exc}") from None
    return spikes, state
