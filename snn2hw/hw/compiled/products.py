"""The layer schedule's exact products, compiled: Lava's weight preparation of a whole matrix
(``prepare_weights``), the event-driven ``s @ W`` of binary spikes (``accumulate_events``) and the direct
convolution of few-tap kernels (``conv_accumulate``)."""
from __future__ import annotations

import numpy as np
import torch

from snn2hw.hw import loihi2
from snn2hw.hw.compiled import runtime, twins
from snn2hw.hw.compiled.twins import numba

_kernels: dict = {}
_prepared_weight = None  # twins.bind
_add_rows = None  # set by _row_adder()


def _weights_kernel():
    if "weights" in _kernels:
        return _kernels["weights"]
    fingerprint = twins.bind(globals())

    @numba.njit(parallel=True, nogil=True, boundscheck=False, cache=True)
    def prepare(w, sign, lo, hi, drop, out, row_abs):
        _key = fingerprint  # puts the formulas' fingerprint into the cache key
        rows, cols = w.shape
        for r in numba.prange(rows):
            total = 0
            for c in range(cols):
                x = _prepared_weight(w[r, c], sign, lo, hi, drop)
                out[r, c] = x
                total += abs(x)
            row_abs[r] = total

    _kernels["weights"] = prepare
    return prepare


def prepare_weights(weight, sign_mode, num_weight_bits: int) -> tuple[torch.Tensor, int]:
    """``loihi2.prepare_weights`` of a (dst, src) integer matrix in one compiled pass, as float32.

    Returns the prepared weights (float32 holds every prepared weight, |w| <= 256, exactly) and the
    largest row sum of their magnitudes, the bound the caller needs to decide whether a float32
    product is exact (``loihi2.accumulation_dtype``). The tensor path takes about ten passes over int64
    arrays for the same, which dominated one-sample runs of wide layers.
    """
    w = np.ascontiguousarray(np.asarray(weight), dtype=np.int64)
    if w.ndim != 2:
        raise ValueError(f"expected a (dst, src) weight matrix, got shape {w.shape}")
    out = torch.empty(w.shape, dtype=torch.float32)
    row_abs = np.zeros(w.shape[0], dtype=np.int64)
    sign, lo, hi, drop = loihi2.weight_preparation(loihi2.SignMode(sign_mode), num_weight_bits)
    runtime._set_threads(runtime._threads())
    _weights_kernel()(w, sign, lo, hi, drop, out.numpy(), row_abs)
    return out, int(row_abs.max()) if row_abs.size else 0


# --- event-driven accumulation ---------------------------------------------------------------------------
# Bytes of a weight tile (sources x output columns) that the accumulation reuses across the rows of a
# block: about half an L2 cache.
_TILE_BYTES = 1 << 19
_MIN_COLS = 256  # below this the per-segment overhead dominates (wide layers: the tile outgrows L2)
_ROW_BLOCK = 64


def _row_adder():
    """``add_rows(o, w, idx, j, end, c0, c1)``: ``o[:] = sum of w[idx[q], c0:c1] for q in j..end-1``.

    Four rows per pass over ``o``: the loop is bound by loads and stores of ``o``, so this does four times
    the adds per store. 1-D slices, not offsets into flat arrays: with these LLVM knows the segments and
    vectorises (computed flat offsets measured 3-4x slower). Integer rows into a wider ``o`` are summed
    in ``o``'s type (numba computes in int64 and LLVM narrows the vector adds back)."""
    global _add_rows
    if _add_rows is None:
        @numba.njit(nogil=True, boundscheck=False, cache=True)
        def add_rows(o, w, idx, j, end, c0, c1):
            width = c1 - c0
            for c in range(width):
                o[c] = 0
            while j + 4 <= end:
                w0 = w[idx[j], c0:c1]
                w1 = w[idx[j + 1], c0:c1]
                w2 = w[idx[j + 2], c0:c1]
                w3 = w[idx[j + 3], c0:c1]
                for c in range(width):
                    o[c] += (w0[c] + w1[c]) + (w2[c] + w3[c])
                j += 4
            while j < end:
                wr = w[idx[j], c0:c1]
                for c in range(width):
                    o[c] += wr[c]
                j += 1

        _add_rows = add_rows
    return _add_rows


def _events_kernel():
    if "events" in _kernels:
        return _kernels["events"]
    _row_adder()

    @numba.njit(parallel=True, nogil=True, boundscheck=False, cache=True)
    def accumulate(s, w, out, col_block):
        rows, n_in = s.shape
        n_out = w.shape[1]
        blocks = (rows + _ROW_BLOCK - 1) // _ROW_BLOCK
        for rb in numba.prange(blocks):
            r0 = rb * _ROW_BLOCK
            r1 = min(r0 + _ROW_BLOCK, rows)
            # the active sources of each row of the block, as a CSR list
            ptr = np.zeros(r1 - r0 + 1, dtype=np.int64)
            idx = np.empty((r1 - r0) * n_in, dtype=np.int64)
            m = 0
            for r in range(r0, r1):
                sr = s[r]
                for i in range(n_in):
                    # branch-free: at ~10% density a branch here mispredicts on most spikes
                    idx[m] = i
                    m += sr[i] != 0
                ptr[r - r0 + 1] = m
            for c0 in range(0, n_out, col_block):
                c1 = min(c0 + col_block, n_out)
                for r in range(r0, r1):
                    _add_rows(out[r, c0:c1], w, idx, ptr[r - r0], ptr[r - r0 + 1], c0, c1)

    _kernels["events"] = accumulate
    return accumulate


def accumulate_events(s: torch.Tensor, weight_t: torch.Tensor, out: np.ndarray | None = None) -> torch.Tensor:
    """Exact ``s @ weight_t`` for binary ``s`` (..., src) by adding the weight rows of active sources.

    ``weight_t`` (src, dst) holds integers in float32, float64 or int64; the result has its dtype. Every
    partial sum of a row is a sum of a subset of that row's weights, so the bound that makes a float
    product exact (``loihi2.accumulation_dtype``) makes this exact too, in any order. The work is
    proportional to the number of spikes, as in Lava's Dense (which sums the active columns), instead of
    to the size of the matrix. ``out`` (rows, dst), of any integer or float dtype that the caller's bound
    makes exact (e.g. int32 sums of int8 rows), receives the result instead; it is then returned as is.
    """
    runtime._check_cpu(s, weight_t)
    lead = s.shape[:-1]
    s2 = s.reshape(-1, s.shape[-1])
    if s2.dtype not in (torch.bool, torch.float32):
        s2 = s2 != 0
    s2 = s2.contiguous()
    w = weight_t.contiguous()
    # columns per tile: the tile (sources x columns) stays in L2 while every row of a block adds to it
    col_block = max(_MIN_COLS, min(w.shape[1], _TILE_BYTES // max(1, w.shape[0] * w.element_size()) // 16 * 16))
    runtime._set_threads(runtime._threads())
    if out is not None:
        _events_kernel()(s2.numpy(), w.numpy(), out, col_block)
        return out
    result = torch.empty(s2.shape[0], w.shape[1], dtype=w.dtype)
    _events_kernel()(s2.numpy(), w.numpy(), result.numpy(), col_block)
    return result.reshape(*lead, w.shape[1])


# --- exact direct convolution -----------------------------------------------------------------------------
def _conv_kernel():
    if "conv" in _kernels:
        return _kernels["conv"]

    @numba.njit(parallel=True, nogil=True, boundscheck=False, cache=True)
    def conv(x, w, dy, dx, out):
        """out[n, o] = the cross-correlation of image n with w[o], in w's dtype (float32 holding integers).

        ``x`` (N, C, sy, sx, Hq, Wq): the padded images split into stride phases (phase (p, q) holds rows
        p, p + sy, ... and columns q, q + sx, ...), so that each kernel tap adds one contiguous run of a
        phase, flattened over rows, to the output image computed at the phase's width Wq (the columns
        beyond the output's width are discarded). That inner loop is hundreds of elements long and
        vectorises. One job per (image, output channel). Exact whenever the caller's bound holds: every
        product and partial sum is then an integer below 2**24."""
        n_img, ch, sy, sx, hq, wq = x.shape
        o_n, cg, kh, kw = w.shape
        _, _, ho, wo = out.shape
        og = o_n // (ch // cg)
        size = ho * wq
        xf = x.reshape(n_img, ch * sy * sx, hq * wq)  # a view: each phase plane flattened over its rows
        # the non-zero taps of every output channel: weight, phase plane, start of its run
        taps = np.zeros(o_n, dtype=np.int64)
        tw = np.empty((o_n, cg * kh * kw), dtype=w.dtype)
        tplane = np.empty((o_n, cg * kh * kw), dtype=np.int64)
        tstart = np.empty((o_n, cg * kh * kw), dtype=np.int64)
        for o in range(o_n):
            c0 = (o // og) * cg
            for c in range(cg):
                for ky in range(kh):
                    for kx in range(kw):
                        if w[o, c, ky, kx] != 0:
                            ry = ky * dy
                            rx = kx * dx
                            m = taps[o]
                            tw[o, m] = w[o, c, ky, kx]
                            tplane[o, m] = ((c0 + c) * sy + ry % sy) * sx + rx % sx
                            tstart[o, m] = (ry // sy) * wq + rx // sx
                            taps[o] = m + 1
        for job in numba.prange(n_img * o_n):
            n = job // o_n
            o = job % o_n
            acc = np.zeros(size, dtype=w.dtype)
            nt = taps[o]
            q = 0
            # four taps per pass over the sums (the loop is bound by their loads and stores); every
            # partial sum is a sum of some of one output's products, so it stays below the bound
            while q + 4 <= nt:
                s0 = xf[n, tplane[o, q], tstart[o, q]:tstart[o, q] + size]
                s1 = xf[n, tplane[o, q + 1], tstart[o, q + 1]:tstart[o, q + 1] + size]
                s2 = xf[n, tplane[o, q + 2], tstart[o, q + 2]:tstart[o, q + 2] + size]
                s3 = xf[n, tplane[o, q + 3], tstart[o, q + 3]:tstart[o, q + 3] + size]
                w0 = tw[o, q]
                w1 = tw[o, q + 1]
                w2 = tw[o, q + 2]
                w3 = tw[o, q + 3]
                for f in range(size):
                    acc[f] += (w0 * s0[f] + w1 * s1[f]) + (w2 * s2[f] + w3 * s3[f])
                q += 4
            while q < nt:
                s0 = xf[n, tplane[o, q], tstart[o, q]:tstart[o, q] + size]
                w0 = tw[o, q]
                for f in range(size):
                    acc[f] += w0 * s0[f]
                q += 1
            for y in range(ho):
                o_row = out[n, o, y]
                a_row = acc[y * wq:y * wq + wo]
                for i in range(wo):
                    o_row[i] = a_row[i]

    _kernels["conv"] = conv
    return conv


def conv_accumulate(s: torch.Tensor, weight: torch.Tensor, stride, padding, dilation, groups: int) -> torch.Tensor:
    """Exact integer cross-correlation of images ``s`` (N, C, H, W; bool or integers) with integer
    ``weight`` (O, C / groups, kh, kw), as float32 (N, O, Ho, Wo), by a compiled direct convolution.

    The caller guarantees the bound of ``loihi2.conv_accumulate``'s float32 path: the largest
    per-output-channel sum of |w| times the largest |input| is below 2**24, so every product and every
    partial sum, in any order, is an exactly represented integer. oneDNN's ``conv2d`` runs such
    small-channel convolutions (spiking layers' 1-16 channels) at a few percent of the GEMM peak.
    """
    runtime._check_cpu(s, weight)
    n, ch, h, wd = s.shape
    o_n, cg, kh, kw = weight.shape
    (sy, sx), (py, px), (dy, dx) = stride, padding, dilation
    ho = (h + 2 * py - dy * (kh - 1) - 1) // sy + 1
    wo = (wd + 2 * px - dx * (kw - 1) - 1) // sx + 1
    out = torch.empty(n, o_n, max(ho, 0), max(wo, 0), dtype=torch.float32)
    if out.numel() == 0:
        return out.zero_()
    # phase planes: wide enough for every tap's run (wo + its column offset), one spare row for the
    # runs of the last output row that spill into the next, and room for the whole padded image
    wq = max(wo + dx * (kw - 1) // sx, -(-(wd + px) // sx))
    hq = max(ho + dy * (kh - 1) // sy + 1, -(-(h + py) // sy))
    # spikes stay one byte each (a quarter of float32's traffic in the padded copies), converted in the loop
    x = np.zeros((n, ch, hq * sy, wq * sx), dtype=np.uint8 if s.dtype == torch.bool else np.float32)
    x[:, :, py:py + h, px:px + wd] = s.numpy()
    x = np.ascontiguousarray(x.reshape(n, ch, hq, sy, wq, sx).transpose(0, 1, 3, 5, 2, 4))
    w = np.ascontiguousarray(weight.numpy(), dtype=np.float32)
    runtime._set_threads(runtime._threads())
    _conv_kernel()(x, w, dy, dx, out.numpy())
    return out
