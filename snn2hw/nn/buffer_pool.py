"""Reusable CPU buffers for the (batch, T, n) tensors the compiled LIF kernels allocate.

Every training step the LIF operators allocate the same large tensors again: the pre-reset membrane kept
for the backward pass, the spikes, the gradient of the input currents (and, when asked for, the state
traces). At (batch 16, T 500, n 1024) each is 33 MB. glibc serves allocations that large from fresh pages
(mmap, or the heap after it gave freed memory back), so every step touches them for the first time: on the
2-core CI machine (a VM) a first-touch page fault cost about 3 us, i.e. 25 ms of CPU per 33 MB tensor,
about 10 % of the two GEMMs the step must do at n = 1024 (measured: `docs/performance.md`, "Where the
time above the floor goes"). The GEMM floor itself allocates only its output.

``empty(shape, dtype)`` hands out a buffer that a previous step released instead. A pooled buffer is a
numpy array; the tensor is ``torch.from_numpy`` of it, and that tensor's storage holds a reference to the
array until the storage is freed (every view of it included). So a buffer is free exactly when the pool
holds the only reference: nothing the caller can still reach is ever handed out again.

Only float32/float64 requests of at least ``MIN_BYTES`` are pooled; everything else is ``torch.empty``.
A request that finds no free buffer of its size releases every free buffer (a training loop asks for
the same sizes every step; a miss means the shapes changed), so between steps the pool keeps about one
step's working set. Within a step it raises the peak somewhat: a buffer freed during the backward pass
stays with the pool until the next miss instead of returning to malloc while torch allocates its own
tensors (measured: +24 % on the benchmark's conv network, +5 % on one dense layer; docs/performance.md).
The pool holds at most
``SNN2HW_BUFFER_POOL_MB`` (default 1024) MiB, busy and free buffers together; a request beyond that is
served by ``torch.empty``. ``SNN2HW_BUFFER_POOL_MB=0`` switches pooling off;
``clear()`` releases every free buffer. Pooled tensors behave as ordinary CPU tensors except that their
storage cannot be resized (``resize_`` to a larger size raises), as for any ``torch.from_numpy`` tensor.
"""
from __future__ import annotations

import math
import os
import sys
import threading

import numpy as np
import torch

__all__ = ["empty", "clear", "pooled_bytes", "MIN_BYTES"]

# Smaller tensors come from malloc's heap, which keeps them mapped between steps.
MIN_BYTES = 4 << 20
_NUMPY = {torch.float32: np.float32, torch.float64: np.float64}
_lock = threading.Lock()
_pool: list[np.ndarray] = []  # least recently handed out first


def _refs(pool: list, i: int) -> int:
    return sys.getrefcount(pool[i])


def _free_refs() -> int:
    """References that ``_refs`` counts for an array held by the pool list alone (calibrated once, so the
    count does not depend on how this Python version counts an argument's references)."""
    probe = [np.empty(1)]
    return _refs(probe, 0)


_FREE = _free_refs()


def _limit_bytes() -> int:
    try:
        return max(0, int(float(os.environ.get("SNN2HW_BUFFER_POOL_MB", "1024")) * (1 << 20)))
    except ValueError:
        raise ValueError(f"SNN2HW_BUFFER_POOL_MB must be a number of MiB, got "
                         f"{os.environ['SNN2HW_BUFFER_POOL_MB']!r}") from None


def empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised contiguous CPU tensor of ``shape`` and ``dtype``, from the pool where it applies."""
    np_dtype = _NUMPY.get(dtype)
    numel = math.prod(shape)
    nbytes = numel * (np.dtype(np_dtype).itemsize if np_dtype is not None else 0)
    limit = _limit_bytes()
    if np_dtype is None or nbytes < MIN_BYTES or nbytes > limit:
        return torch.empty(shape, dtype=dtype)
    with _lock:
        found = None
        for i in range(len(_pool)):
            if _pool[i].nbytes == nbytes and _pool[i].dtype == np_dtype and _refs(_pool, i) == _FREE:
                found = _pool.pop(i)
                break
        if found is None:
            # A miss releases every free buffer: in a training loop every step asks for the same sizes, so
            # a miss means the shapes changed, and what the pool keeps stays one step's working set.
            _pool[:] = [_pool[i] for i in range(len(_pool)) if _refs(_pool, i) != _FREE]
            if sum(a.nbytes for a in _pool) + nbytes > limit:
                return torch.empty(shape, dtype=dtype)
            found = np.empty(numel, dtype=np_dtype)
        _pool.append(found)
        return torch.from_numpy(found).view(shape)


def clear() -> None:
    """Release every free buffer (busy ones stay with their tensors and leave the pool)."""
    with _lock:
        _pool.clear()


def pooled_bytes() -> tuple[int, int]:
    """``(busy, free)`` bytes held by the pool."""
    with _lock:
        free = sum(_pool[i].nbytes for i in range(len(_pool)) if _refs(_pool, i) == _FREE)
        return sum(a.nbytes for a in _pool) - free, free
