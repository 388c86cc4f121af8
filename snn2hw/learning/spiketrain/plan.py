"""How the chunked path runs, decided from shapes and densities: event-driven products or GEMMs, samples per group
and steps per block, compiled scans or tensor loops. None of these decisions changes a result's meaning; the
constants are module-level so that tests and benchmarks (``diag_spiketrain_speed.py --variant
snn2hw.learning.spiketrain.plan:NAME=VALUE``) can change them, and each is read here at call time."""
from __future__ import annotations

import torch

from snn2hw.learning import spsp_kernels
from snn2hw.learning.spsp import NeuronSpec

# Spike trains at most this dense go through the event-driven kernels (see event_driven). Measured on
# 784-100 and 784-800 layers (batch 16, one thread): at 10 % density the kernels and a GEMM take about
# the same time, below that the kernels win in proportion.
EVENT_DENSITY = 0.05
# A dense layer's weight gradient alone (``hop.hop_backward_chunked``: ``(c_w lam_u)^T`` times the input spikes over
# all (sample, step) rows, summed into one matrix) is event-driven (``spsp_kernels.scatter_rows``) for a layer of
# at least WEIGHT_EVENT_MIN_WIDTH neurons when its predicted CPU time, ``density * (a + b / N)`` times the
# GEMM's, is at most WEIGHT_EVENT_BUDGET. Measured against the GEMM (784 inputs, one thread, interleaved, under
# load): 800 neurons 0.55 / 0.60 / 0.80 / 0.99x at 3 / 10 / 15 / 20 % density, 400 neurons 0.86 / 1.10x at
# 10 / 15 %, which (a, b) = (3.4, 2080) fits; 100 neurons 1.3x even at 3 % (each spike's row is too short).
# Those were measured with the row-by-row scatter; the tiled one ``scatter_rows`` now uses for such outputs
# (64 columns per tile, accumulators in registers) takes 0.7-0.9x its CPU time at 800 neurons and 10 % density,
# so the rule is conservative there (not refitted). At 100 neurons the tiled scatter still loses to the GEMM
# (the step took 1.12-1.13x with every weight gradient event-driven, T = 200 and 800, under load).
WEIGHT_EVENT_COST = (3.4, 2080.0)
WEIGHT_EVENT_BUDGET = 0.8
WEIGHT_EVENT_MIN_WIDTH = 400
# Float temporaries of the chunked path (per chunk: currents, inputs as float, kernels) are kept near this
# size by taking more than ``chunk`` steps per block when the layer is narrow (fewer, larger GEMMs and
# kernel calls); the memory stays bounded in T.
CHUNK_BYTES = 4 << 20


def event_driven(s: torch.Tensor, like: torch.Tensor, nonzeros: float | None = None) -> bool:
    """Whether products with the (B, T, M) train ``s`` run event-driven (``spsp_kernels.scatter_rows`` /
    ``spike_dots``, cost per non-zero) rather than as GEMMs: on the CPU with numba, when at most
    ``EVENT_DENSITY`` of ``s`` is non-zero (about where a GEMM's higher throughput wins). ``nonzeros``:
    the count, when known (a bool train's spike count)."""
    if s.device.type != "cpu" or not spsp_kernels.usable(like) or s.numel() == 0:
        return False
    if s.dtype != torch.bool and s.dtype != like.dtype:
        return False
    if nonzeros is None:  # a float input: estimated from a few steps spread over the window (a heuristic)
        head = s[:, ::max(1, s.shape[1] // 4)]
        return float(torch.count_nonzero(head)) <= EVENT_DENSITY * head.numel()
    return float(nonzeros) <= EVENT_DENSITY * s.numel()


def event_driven_weights(s: torch.Tensor, n: int, dtype: torch.dtype) -> bool:
    """Whether a dense layer of ``n`` neurons makes its weight gradient from the input trains ``s`` (B, T,
    N_in) event-driven (``WEIGHT_EVENT_*`` above): on the CPU with numba, for a wide layer and a sparse
    input (its density estimated from a few steps spread over the window, as in ``event_driven``)."""
    if n < WEIGHT_EVENT_MIN_WIDTH or s.device.type != "cpu" or not spsp_kernels.usable(torch.empty(0, dtype=dtype)):
        return False
    if s.dtype != torch.bool and s.dtype != dtype or s.numel() == 0:
        return False
    head = s[:, ::max(1, s.shape[1] // 4)]
    a, b = WEIGHT_EVENT_COST
    return float(torch.count_nonzero(head)) / head.numel() * (a + b / n) <= WEIGHT_EVENT_BUDGET


def may_be_event_driven_weights(n: int) -> bool:
    """Whether a dense layer of ``n`` neurons is wide enough that its weight gradient may be event-driven (the
    forward then keeps its product's non-zeros of the input, ``LayerTrace.in_csr``)."""
    return n >= WEIGHT_EVENT_MIN_WIDTH


def window_groups(batch: int, steps: int, width: int, chunk: int) -> tuple[int, int]:
    """(samples per group, steps per block) for float temporaries (group, block, width) near ``CHUNK_BYTES``:
    groups of whole windows while one sample's window fits (their products then run over contiguous
    (sample, step) rows of the stored trains, in one GEMM), else one sample in blocks of steps."""
    per_sample = 4 * max(steps * width, 1)
    if CHUNK_BYTES < per_sample:
        return 1, min(steps, block(1, width, chunk))
    groups = -(-batch // (CHUNK_BYTES // per_sample))
    return -(-batch // groups), steps


def block(batch: int, width: int, chunk: int) -> int:
    """Steps per block of the chunked path for float temporaries (batch, steps, width): ``chunk``, or more
    while they stay under ``CHUNK_BYTES``."""
    return max(chunk, CHUNK_BYTES // (4 * max(batch * width, 1)))


def group_and_block(batch: int, n: int, e_width: int, width: int, compiled: bool, chunk: int) -> tuple[int, int]:
    """(samples per group, steps per block) of ``chunked.layer_backward_chunked``. With the compiled scan a group's
    S-PSP matrices (G, N, ``e_width``) stay near ``CHUNK_BYTES`` (at least one sample; groups of even
    size). Elsewhere (CUDA, no numba) the whole batch is one group: the reverse scan is then a per-step
    loop of tensor ops whose cost is per call, not per sample, and the matrices are still T-independent."""
    group = batch
    if compiled:
        groups = -(-batch // max(1, CHUNK_BYTES // max(4 * n * e_width, 1)))
        group = -(-batch // groups)
    return group, block(group, width, chunk)


def compiled_scan(post: torch.Tensor, spec: NeuronSpec, dtype: torch.dtype) -> bool:
    """Whether ``scan.scan_chunks`` runs the compiled reverse scan (CPU, numba) rather than its tensor loop."""
    # alpha and beta as they would be in ``dtype``, without casting them (a few calls per layer and step)
    return post.device.type == "cpu" and spsp_kernels.usable(spec.alpha, spec.beta, dtype=dtype)
