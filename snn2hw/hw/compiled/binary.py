"""Binary inputs checked and converted to bool in one compiled pass."""
from __future__ import annotations

import numpy as np

from snn2hw.hw.compiled import runtime
from snn2hw.hw.compiled.twins import numba

_kernels: dict = {}


def _binary_kernel():
    if "binary" in _kernels:
        return _kernels["binary"]

    @numba.njit(parallel=True, nogil=True, boundscheck=False, cache=True)
    def to_binary(x, out, chunks):
        """out = x != 0 over flat arrays, in one pass; returns how many entries lie outside {0, 1}."""
        n = x.shape[0]
        bad = np.zeros(chunks, dtype=np.int64)
        for c in numba.prange(chunks):
            lo = n * c // chunks
            hi = n * (c + 1) // chunks
            xs = x[lo:hi]
            os_ = out[lo:hi]
            nb = 0
            for i in range(hi - lo):
                v = xs[i]
                os_[i] = v != 0
                nb += (v < 0) | (v > 1)
            bad[c] = nb
        return bad.sum()

    _kernels["binary"] = to_binary
    return to_binary


def binary_spikes(x: np.ndarray) -> np.ndarray | None:
    """``x != 0`` as a bool array for an integer array ``x`` that should hold only 0 and 1, in one
    compiled pass (checking and converting a long int64 input took three numpy passes), or None when an
    entry lies outside {0, 1}."""
    if x.dtype == np.bool_:
        return x
    flat = np.ascontiguousarray(x).reshape(-1)
    out = np.empty(flat.shape, dtype=np.bool_)
    threads = runtime._threads() if flat.size >= 1 << 20 else 1
    if threads > 1:
        runtime._set_threads(threads)
    if _binary_kernel()(flat, out, threads):
        return None
    return out.reshape(x.shape)
