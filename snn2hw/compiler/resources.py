"""The Loihi-2 resource model: named, overridable limits, each with where its figure comes from.

Chip-level figures are Intel's published ones. Per-core figures are partly published (128 neuro
cores, 8192 neurons per core follows from 1M neurons / 128 cores, 128 KB of SRAM per core) and
partly not (Intel has not published Loihi 2's axon and routing table sizes); the unpublished ones
default to the Loihi 1 figures of Davies et al. 2018, which Loihi 2 is described as exceeding, and
are marked ``confirmed=False`` in ``LIMIT_SOURCES``. Every limit is a field of ``CoreLimits``; override
any of them (``CoreLimits(neurons_per_core=4096)``, ``--limit input_axons_per_core=8192`` on the CLI).

How weights are stored (the model behind ``synaptic_memory_bits_per_core``), per core:

- dense projection: one ``num_weight_bits`` entry per (target neuron on the core, source neuron with
  any synapse into the core) -- a dense block, zeros included;
- sparse projection: ``num_weight_bits`` plus a source index (ceil(log2(source size)) bits) per
  non-zero synapse;
- convolution: the kernel is shared, so a core stores the kernels of the output channels it holds,
  once each (``channels x in_ch/groups x kh x kw x num_weight_bits``).

See docs/compiler.md ("Resource model") for the citations.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from snn2hw.hw import loihi2 as hw


class LimitError(ValueError):
    """A resource limit is malformed (not an integer, below its minimum, or unknown)."""


@dataclass(frozen=True)
class CoreLimits:
    """Limits the design rules and the allocator use (Loihi 2 defaults; every field overridable)."""

    neurons_per_core: int = 8192
    synaptic_memory_bits_per_core: int = 128 * 1024 * 8
    input_axons_per_core: int = 4096
    output_routes_per_core: int = 4096
    cores_per_chip: int = 128
    neurons_per_chip: int = 1_048_576
    synapses_per_chip: int = 120_000_000
    chips_per_board: int = 8
    boards: int = 1
    max_delay: int = hw.MAX_DELAY
    weight_bits: int = hw.WEIGHT_BITS_MAX
    state_bits: int = hw.STATE_BITS
    message_bits: int = hw.MESSAGE_BITS_MAX

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise LimitError(f"limit {f.name} must be an integer, got {v!r}")
            low = 0 if f.name == "max_delay" else 1
            if v < low:
                raise LimitError(f"limit {f.name} must be >= {low}, got {v}")

    @property
    def max_chips(self) -> int:
        return self.chips_per_board * self.boards

    def replace(self, **overrides) -> "CoreLimits":
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise LimitError(f"unknown limit(s) {sorted(unknown)}; known: {sorted(LIMIT_SOURCES)}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


LOIHI2 = CoreLimits()

# name -> (source, confirmed). "confirmed" means a published Loihi 2 figure, not an inference.
LIMIT_SOURCES: dict[str, tuple[str, bool]] = {
    "neurons_per_core": ("Intel Loihi 2 brief: up to 1M neurons on 128 cores = 8192 per core (upper bound; "
                         "the real count depends on neuron-state size)", True),
    "synaptic_memory_bits_per_core": ("Intel (2021 Loihi 2 announcement): 128 KB of SRAM per core, flexibly "
                                      "partitioned between synapses, neuron state and routing; all of it counted "
                                      "as synaptic memory here (an upper bound)", True),
    "input_axons_per_core": ("not published for Loihi 2; Loihi 1: 4096 input axons per core (Davies et al. "
                             "2018, IEEE Micro 38(1))", False),
    "output_routes_per_core": ("not published for Loihi 2; Loihi 1: 4096 output axons per core (Davies et al. "
                               "2018)", False),
    "cores_per_chip": ("Intel Loihi 2 brief: 128 neuromorphic cores (plus 6 embedded x86 cores)", True),
    "neurons_per_chip": ("Intel Loihi 2 brief: up to 1M neurons per chip", True),
    "synapses_per_chip": ("Intel Loihi 2 brief: up to 120M synapses per chip (at the smallest weight width)", True),
    "chips_per_board": ("Intel Kapoho Point board: 8 Loihi 2 chips", True),
    "boards": ("how many boards the target has (a deployment choice, default 1)", True),
    "max_delay": ("Lava 0.10 DelayDense: 6-bit synaptic delay, 0..63 steps", True),
    "weight_bits": ("Lava 0.10 Dense: weights up to 8 bits (mantissa) with a shared weight_exp", True),
    "state_bits": ("Lava 0.10 LIF fixed point: 24-bit u and v", True),
    "message_bits": ("Lava 0.10 CPU models: graded spikes up to 24 bits (Loihi 2 up to 32 on chip)", True),
}


def index_bits(n: int) -> int:
    """Bits of an index into ``n`` sources (at least 1)."""
    return max(1, (max(int(n), 1) - 1).bit_length())
