"""Streaming several samples through one Lava run with ``LIFReset``: when it is exact, and how.

Lava runs one sample at a time and each run starts OS processes (about a second), so a batch is
streamed through one run: sample ``i`` gets the window of Lava steps ``i * W + 1 .. i * W + W`` with
``W = steps + gap``; its input occupies the first ``steps`` steps and the ``gap`` is silent. Each
window must then behave exactly like a fresh run, i.e. at its first step every u, v and every
synaptic buffer must be zero.

A plain reset of all populations at the window start is not enough: a Dense process sends at step t
what it accumulated at step t - 1, so the previous sample's last spikes would still arrive. Instead
each population is reset (``LIFReset``: u = v = 0 at steps with ``time_step % W == offset``, *before*
that step's input is integrated) once everything upstream of it is provably silent, in feed-forward
order. With all biases zero, a population with u = v = 0 and zero input stays exactly zero and never
spikes (v = 0 is not above a threshold >= 0), so silence propagates:

    quiet(input)      = steps + 1                         (first silent window step of an input)
    r(population)     = max over incoming projections p of quiet(p.src) + 1 + p.delay
                        (steps + 1 for a population with no incoming projection)
    quiet(population) = r(population)                      (reset there, silent from there on)

The next window starts at window step ``W + 1``; every population must have been reset by then
(``r <= W + 1``), which gives ``gap = max(r) - 1 - steps``. A reset at ``r = W + 1`` falls on the next
window's first step, where it zeroes a state that a fresh run also starts from. No reset falls on any
other step of a window's active part (``r >= steps + 1``).

The preconditions are checked, not assumed: the graph must be acyclic (a cycle can keep itself
active forever) and every effective bias (``bias_mant << bias_exp``) must be zero (a bias drives a
zeroed neuron again). Otherwise ``stream_plan`` raises ``StreamPlanError`` and the runner uses its
exact fallback (state writes between windows, see ``harness.py``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from snn2hw.backends.lava.lower import LoweringError
from snn2hw.hw import loihi2 as hw
from snn2hw.ir import Graph


class StreamPlanError(LoweringError):
    """Samples of this graph cannot be separated by ``LIFReset`` alone (says which precondition fails)."""


@dataclass(frozen=True)
class StreamPlan:
    """Window layout and per-population reset offsets for streaming samples of ``steps`` steps."""

    steps: int
    gap: int
    reset_steps: dict[str, int]  # population -> window step (1-based) of its reset, in [steps+1, W+1]

    @property
    def window(self) -> int:
        return self.steps + self.gap

    def reset(self) -> dict[str, tuple[int, int]]:
        """``{population: (reset_interval, reset_offset)}`` for ``lower(..., reset=...)``."""
        return {name: (self.window, r % self.window) for name, r in self.reset_steps.items()}

    def input_columns(self, sample: int) -> slice:
        """Lava source columns (0-based time index) that carry ``sample``'s input."""
        return slice(sample * self.window, sample * self.window + self.steps)


def stream_plan(graph: Graph, steps: int) -> StreamPlan:
    """The ``LIFReset`` schedule that makes every window of ``steps + gap`` steps a fresh run."""
    if steps < 1:
        raise StreamPlanError("streaming needs at least one step per sample")
    if not graph.is_quantized:
        raise StreamPlanError("streaming needs a quantized graph")
    order = graph.feedforward_order()
    if order is None:
        raise StreamPlanError("the graph has a cycle (recurrent projection), which can stay active between samples")
    for pop in graph.populations:
        bias = hw.effective_bias(
            torch.as_tensor(np.asarray(pop.neuron.bias_mant, dtype=np.int64)),
            torch.as_tensor(np.asarray(pop.neuron.bias_exp, dtype=np.int64)),
        )
        if bool(torch.any(bias != 0)):
            raise StreamPlanError(
                f"population {pop.name!r} has a non-zero bias, which drives it again after a reset"
            )
    quiet = {i.name: steps + 1 for i in graph.inputs}
    reset_steps: dict[str, int] = {}
    for name in order:
        incoming = graph.incoming(name)
        r = max((quiet[p.src] + 1 + p.delay for p in incoming), default=steps + 1)
        reset_steps[name] = r
        quiet[name] = r
    gap = max(max(reset_steps.values(), default=steps + 1) - 1 - steps, 0)
    return StreamPlan(steps, gap, reset_steps)
