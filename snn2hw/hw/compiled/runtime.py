"""Threads and devices of the compiled kernels: how many threads they use, and setting numba's count
without side effects on ``multiprocessing``."""
from __future__ import annotations

import multiprocessing

import torch

from snn2hw.hw.compiled.twins import numba


def _threads() -> int:
    return max(1, min(numba.config.NUMBA_NUM_THREADS, torch.get_num_threads()))


def _set_threads(n: int) -> None:
    """``numba.set_num_threads`` without its process-wide side effect.

    numba starts its thread pool on first use and asks ``multiprocessing.get_start_method()`` while
    doing so, which fixes the default start method. Lava calls ``set_start_method('fork')`` when it is
    first imported and fails if a method is already fixed, so a simulator run before the first use of
    the Lava backend would break it. An unset method is put back as it was.
    """
    before = multiprocessing.get_start_method(allow_none=True)
    numba.set_num_threads(n)
    if before is None and multiprocessing.get_start_method(allow_none=True) is not None:
        multiprocessing.set_start_method(None, force=True)


def _check_cpu(*tensors) -> None:
    for t in tensors:
        if t is not None and t.device.type != "cpu":
            raise ValueError("the compiled scan runs on CPU tensors; use loihi2's functions on other devices")
