"""Event-driven dense product for spike inputs: ``x @ W^T`` and its weight gradient over x's nonzeros only.

A spiking layer's input is mostly zeros: Bernoulli spike trains at rates 0.02-0.2 at the network input
and in every hidden layer. The two dense GEMMs of a Linear layer (``a = x @ W^T`` forward, the weight
gradient ``dW = g^T x`` backward) multiply every zero too. ``spike_linear`` does the same products over
the nonzeros of ``x`` only (rows ``r`` = all leading dimensions, e.g. batch x time)::

    a[r, :]    = sum over the nonzeros x[r, i] of  x[r, i] * W[:, i]          forward
    dW[:, i]  += x[r, i] * g[r, :]        for the same nonzeros                weight gradient
    dx         = g @ W                    (a dense GEMM, only when x requires grad)

so on a CPU it does about ``density`` of the GEMMs' multiply-adds (plus one pass over x to find the
nonzeros). Any nonzero values work, not only 0/1 spikes. Results equal the dense product to float
rounding: the sums run in ascending ``i`` (forward) and ascending ``r`` (weight gradient), each
product and sum rounded once in x's dtype, where a GEMM uses its own blocking order.

Layout, and why (measured on the 2-core AVX2 CI machine; docs/performance.md):

* both kernels work on tiles of ``kc`` inputs x ``cb`` outputs (64 float32 / 32 float64 outputs, at
  most 1024 inputs: 256 KiB) of ``W^T`` (forward) or ``dW^T`` (weight gradient), which stay in the
  core's L2 cache; ``W`` is repacked into column blocks once per call (in_features x out_features
  copies, nothing next to the gathers);
* forward jobs are (block of rows, column block) pairs: every row's nonzeros in an input chunk gather
  their rows of the W^T tile into sums held in registers;
* weight-gradient jobs are (input chunk, column block) tiles, so threads never write the same output
  and need no atomics. Rows go by blocks of 512: the block's slice of g is copied next to the tile, and
  each input's row of the tile is loaded once per block, gets the block's rows with a nonzero at that
  input added in registers (ascending r), and is stored once, rather than read and written once per
  nonzero (the nonzeros regrouped by column within each row block: a counting sort, 16-bit row numbers);
* the nonzeros are found by one compiled pass over ``x`` into CSR form (per-row start of each input
  chunk, 16-bit column indices relative to the chunk, values), which is also all the backward pass keeps
  of ``x`` (``density`` of its memory, plus indices). A 0/1 input (spikes) keeps no values, and the
  kernels add weight rows or gradient rows without multiplying: ``1 * w`` is ``w`` exactly, so the sums
  are bit for bit those with values.

Above a density threshold the event-driven kernels lose to the BLAS GEMM, which uses every core's
vector units at full width where the gathers cannot. ``spike_linear`` then takes the dense path
(``x @ W^T`` with torch's autograd), decided per call from x's density: a strided sample of rows
first (a dense Gaussian input is recognised after reading a few percent of it), then the exact count.
The threshold per size (``density_limit``) comes from ``benchmarks/diag_spike_dense.py``. Devices other
than the CPU, dtypes other than float32/float64, and machines without numba take the dense path.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np
import torch

from snn2hw.nn import buffer_pool, kernels

numba = kernels.numba

__all__ = ["spike_linear", "density_limit", "nonzero_count", "reuse_packed_weights"]

# Crossover density of the event-driven path against torch's GEMM, forward + weight gradient, by
# min(in_features, out_features) (the nearest tabulated size below it is used), rounded down;
# measured with benchmarks/diag_spike_dense.py, 8000 rows, 2 threads (docs/performance.md,
# "The event-driven input product"): event/dense time 1.0 at density ~0.1-0.2 for N = 64, ~0.2 for
# N = 128, 0.2-0.25 for N = 256..1024 and ~0.2 for N = 2048..4096.
_DENSITY_LIMITS = ((0, 0.10), (128, 0.15), (256, 0.18))
# Bytes of one (inputs, columns) tile of W^T or dW^T: half the L2 cache of the CI machine's cores.
_TILE_BYTES = 256 * 1024
_kernels: dict = {}
# Rows per block of the weight gradient: the block's (rows, 64 outputs) slice of g, 128 KiB, stays in L2 beside
# the 256 KiB tile of dW^T (measured at N = 1024 and 4096: 64 and 256 rows were slower, 1024 too); at most 65536
# (a row's number within its block is 16 bits).
_ROW_BLOCK = 512
_SAMPLE_ROWS = 64


def density_limit(in_features: int, out_features: int) -> float:
    """The density of x at or below which ``spike_linear`` uses the event-driven kernels (CPU)."""
    size = min(int(in_features), int(out_features))
    limit = _DENSITY_LIMITS[0][1]
    for at, value in _DENSITY_LIMITS:
        if size >= at:
            limit = value
    return limit


def _tile(k: int, m: int, itemsize: int) -> tuple[int, int]:
    """(cb, kc): output columns per block (64 float32 / 32 float64 values: 8 AVX2 registers; 8 for narrow
    layers) and inputs per chunk, so that a (kc, cb) tile of W^T or dW^T fills at most ``_TILE_BYTES``."""
    cb = (256 // itemsize) if m > 32 else 8
    kc = max(1, min(k, _TILE_BYTES // (cb * itemsize)))
    return cb, kc


if numba is not None:
    @numba.njit(parallel=True, nogil=True, boundscheck=False, cache=True)
    def _row_counts(x, counts, others):
        """counts[r]: row r's nonzeros; others[r]: how many of them are not 1 (all 0 for spikes)."""
        rows, k = x.shape
        for r in numba.prange(rows):
            c = 0
            o = 0
            for i in range(k):
                v = x[r, i]
                c += v != 0
                o += (v != 0) & (v != 1)
            counts[r] = c
            others[r] = o

    @numba.njit(parallel=True, nogil=True, boundscheck=False, cache=True)
    def _fill_csr(x, ptr, idx, val, kc, chunk_ptr):
        """Each row's nonzeros in ascending column order, chunk by chunk of ``kc`` columns: ``idx`` their
        column relative to the chunk's first (< kc, so 16 bits), ``val`` their values (not written when
        ``val`` is empty: a 0/1 input), ``chunk_ptr[r, c]`` where chunk c of row r starts in them
        (``chunk_ptr[r, -1]`` = row end)."""
        rows, k = x.shape
        chunks = chunk_ptr.shape[1] - 1
        values = val.shape[0] > 0
        for r in numba.prange(rows):
            p, end = ptr[r], ptr[r + 1]
            for c in range(chunks):
                chunk_ptr[r, c] = p
                lo = c * kc
                for i in range(lo, min(lo + kc, k)):
                    if p == end:  # well predicted: true only after the row's last nonzero
                        break
                    v = x[r, i]
                    idx[p] = i - lo  # written for zeros too, then overwritten: no branch on the random pattern
                    if values:
                        val[p] = v
                    p += v != 0
            chunk_ptr[r, chunks] = end

    @numba.njit(parallel=True, nogil=True, boundscheck=False, cache=True)
    def _pack_transposed(w, cb, packed):
        """packed[b, i, j] = w[b * cb + j, i] (zero past the last output): W^T in column blocks."""
        m, k = w.shape
        blocks = packed.shape[0]
        for b in numba.prange(blocks):
            lo = b * cb
            width = min(cb, m - lo)
            # inputs outer: the writes run contiguously through the block (a (k, cb) block can exceed L2),
            # the reads walk cb rows of w in step, one cache line of each serving 16 inputs
            for i in range(k):
                for j in range(width):
                    packed[b, i, j] = w[lo + j, i]
                for j in range(width, cb):
                    packed[b, i, j] = 0


if numba is not None:
    @numba.njit(parallel=True, nogil=True, boundscheck=False, cache=True)
    def _by_column(chunk_ptr, idx, val, kc, k, col_ptr, rows_local, val_by_column):
        """The nonzeros of each block of ``_ROW_BLOCK`` rows regrouped by column (a counting sort, stable in
        r): block q's nonzeros of column i are ``col_ptr[q, i]:col_ptr[q, i + 1]``, ``rows_local`` their row
        within the block, ``val_by_column`` their values (unless ``val`` is empty: 0/1 input). A block keeps
        the place its nonzeros have in the row lists."""
        rows = chunk_ptr.shape[0]
        chunks = chunk_ptr.shape[1] - 1
        values = val.shape[0] > 0
        for q in numba.prange(col_ptr.shape[0]):
            r0 = q * _ROW_BLOCK
            r1 = min(r0 + _ROW_BLOCK, rows)
            counts = np.zeros(k + 1, dtype=np.int64)
            for r in range(r0, r1):
                for c in range(chunks):
                    for p in range(chunk_ptr[r, c], chunk_ptr[r, c + 1]):
                        counts[c * kc + idx[p] + 1] += 1
            col_ptr[q, 0] = chunk_ptr[r0, 0]
            for i in range(k):
                col_ptr[q, i + 1] = col_ptr[q, i] + counts[i + 1]
            for i in range(k):
                counts[i] = col_ptr[q, i]
            for r in range(r0, r1):
                for c in range(chunks):
                    for p in range(chunk_ptr[r, c], chunk_ptr[r, c + 1]):
                        i = c * kc + idx[p]
                        rows_local[counts[i]] = r - r0
                        if values:
                            val_by_column[counts[i]] = val[p]
                        counts[i] += 1


def _columns(csr, kc: int, k: int):
    """(col_ptr, rows_local, val_by_column): ``_by_column`` of the row lists, what the weight gradient reads."""
    chunk_ptr, idx, val = csr
    row_blocks = -(-chunk_ptr.shape[0] // _ROW_BLOCK)
    col_ptr = np.empty((row_blocks, k + 1), dtype=np.int64)
    rows_local = np.empty(idx.shape[0], dtype=np.uint16)
    val_by_column = np.empty(val.shape[0], dtype=val.dtype)
    _by_column(chunk_ptr, idx, val, kc, k, col_ptr, rows_local, val_by_column)
    return col_ptr, rows_local, val_by_column


def _product_kernels(cb: int):
    """The forward and weight-gradient kernels for column blocks of ``cb`` (a closure constant, so the
    inner loops have a fixed trip count and LLVM keeps them in vector registers). Their ``val`` is empty
    when the input's nonzeros are all 1 (spikes): then no values are read and nothing is multiplied
    (``1 * w`` is ``w`` exactly, so the sums are those with values). That choice is made per row (forward)
    or per input and row block (weight gradient) at run time, so one compiled kernel serves both."""
    key = ("spike_dense", cb)
    if key in _kernels:
        return _kernels[key]
    CB = cb
    ROW_BLOCK = _ROW_BLOCK

    @numba.njit(parallel=True, nogil=True, boundscheck=False, cache=True)
    def forward(chunk_ptr, idx, val, packed, kc, row_jobs, out):
        """out[r, b*CB:(b+1)*CB] = sum over row r's nonzeros of val * packed[b, idx], chunk by chunk of kc
        inputs (a (kc, CB) tile of W^T stays in L2 while every row of the job gathers from it)."""
        blocks = packed.shape[0]
        rows, m = out.shape
        chunks = chunk_ptr.shape[1] - 1
        per = (rows + row_jobs - 1) // row_jobs
        for job in numba.prange(blocks * row_jobs):
            b = job % blocks
            r0 = (job // blocks) * per
            r1 = min(r0 + per, rows)
            lo = b * CB
            width = min(CB, m - lo)
            acc = np.empty(CB, dtype=out.dtype)
            binary = val.shape[0] == 0
            for c in range(chunks):
                base = c * kc
                for r in range(r0, r1):
                    if c == 0:
                        for j in range(CB):
                            acc[j] = 0
                    else:
                        for j in range(width):
                            acc[j] = out[r, lo + j]
                    if binary:
                        for p in range(chunk_ptr[r, c], chunk_ptr[r, c + 1]):
                            i = base + idx[p]
                            for j in range(CB):
                                acc[j] += packed[b, i, j]
                    else:
                        for p in range(chunk_ptr[r, c], chunk_ptr[r, c + 1]):
                            v = val[p]
                            i = base + idx[p]
                            for j in range(CB):
                                acc[j] += v * packed[b, i, j]
                    for j in range(width):
                        out[r, lo + j] = acc[j]

    @numba.njit(parallel=True, nogil=True, boundscheck=False, cache=True)
    def weight_grad(col_ptr, rows_local, val, g, kc, k, grad_w, g_blocks):
        """grad_w[o, i] = sum over the rows r with x[r, i] != 0 of x[r, i] * g[r, o], one (kc, CB) tile of
        dW^T per job (jobs never share a tile). Rows go by blocks of ``_ROW_BLOCK``: the block's (rows, CB)
        slice of g is copied into the thread's ``g_blocks[t]`` (in L2), then each input's row of the tile is
        loaded once per block, gets that input's rows of the block added in ascending r (``_by_column``'s
        lists) in registers, and is stored once, where adding row by row reads and writes it once per
        nonzero. The sums are the same, in the same order."""
        rows, m = g.shape
        blocks = (m + CB - 1) // CB
        chunks = (k + kc - 1) // kc
        row_blocks = col_ptr.shape[0]
        for job in numba.prange(blocks * chunks):
            b = job % blocks
            c = job // blocks
            lo = b * CB
            width = min(CB, m - lo)
            k0 = c * kc
            k1 = min(k0 + kc, k)
            tile = np.zeros((kc, CB), dtype=g.dtype)
            t = numba.get_thread_id()  # g's block goes to this thread's slice of an argument: LLVM then
            # keeps acc in registers over the additions (a slice allocated here costs a reload per row)
            acc = np.empty(CB, dtype=g.dtype)
            binary = val.shape[0] == 0
            for q in range(row_blocks):
                r0 = q * ROW_BLOCK
                if col_ptr[q, k0] == col_ptr[q, k1]:
                    continue
                for r in range(min(ROW_BLOCK, rows - r0)):
                    for j in range(width):
                        g_blocks[t, r, j] = g[r0 + r, lo + j]
                for i in range(k1 - k0):
                    p0, p1 = col_ptr[q, k0 + i], col_ptr[q, k0 + i + 1]
                    if p0 == p1:
                        continue
                    for j in range(CB):
                        acc[j] = tile[i, j]
                    if binary:
                        for p in range(p0, p1):
                            r = rows_local[p]
                            for j in range(CB):
                                acc[j] += g_blocks[t, r, j]
                    else:
                        for p in range(p0, p1):
                            v = val[p]
                            r = rows_local[p]
                            for j in range(CB):
                                acc[j] += v * g_blocks[t, r, j]
                    for j in range(CB):
                        tile[i, j] = acc[j]
            for j in range(width):
                for i in range(k1 - k0):
                    grad_w[lo + j, k0 + i] = tile[i, j]

    _kernels[key] = forward, weight_grad
    return _kernels[key]


def _weight_grad(csr, g: np.ndarray, tile: tuple[int, int], grad_w: np.ndarray) -> None:
    """grad_w (out_features, in_features) = g^T x over x's nonzeros (``csr``, from ``_csr``)."""
    cb, kc = tile
    k = grad_w.shape[1]
    columns = _columns(csr, kc, k)
    g_blocks = np.zeros((numba.config.NUMBA_NUM_THREADS, _ROW_BLOCK, cb), dtype=g.dtype)  # one per thread id
    _product_kernels(cb)[1](*columns, g, kc, k, grad_w, g_blocks)


def _row_jobs(rows: int, blocks: int, threads: int) -> int:
    """Row blocks per column block of the forward: enough (row block, column block) jobs for every thread;
    rows split only when column blocks are few."""
    return max(1, -(-2 * threads // blocks)) if rows >= 2 * threads else 1


def nonzero_count(x: torch.Tensor) -> int:
    """Number of nonzeros of x (what the event-driven product works on)."""
    return int(torch.count_nonzero(x))


def _sampled_density(x2: torch.Tensor) -> float:
    """Density of an evenly strided sample of about ``_SAMPLE_ROWS`` rows (cheap first look)."""
    rows = x2.shape[0]
    step = max(1, rows // _SAMPLE_ROWS)
    sample = x2[::step]
    return float(torch.count_nonzero(sample)) / max(1, sample.numel())


def _csr(x2: torch.Tensor, limit: float, kc: int):
    """(chunk_ptr, idx, val) of x2's nonzeros as numpy arrays (CSR with 16-bit chunk-relative column indices
    and each row's start of every chunk of ``kc`` columns; ``val`` empty when every nonzero is 1), or None
    when x2 is denser than ``limit``."""
    xa = x2.numpy()
    rows, k = xa.shape
    counts = np.empty(rows, dtype=np.int64)
    others = np.empty(rows, dtype=np.int64)
    _row_counts(xa, counts, others)
    ptr = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(counts, out=ptr[1:])
    nnz = int(ptr[-1])
    if nnz > limit * rows * k:
        return None
    idx = np.empty(nnz, dtype=np.uint16)
    val = np.empty(nnz if others.any() else 0, dtype=xa.dtype)
    chunk_ptr = np.empty((rows, -(-k // kc) + 1), dtype=np.int64)
    _fill_csr(xa, ptr, idx, val, kc, chunk_ptr)
    return chunk_ptr, idx, val


# Open ``reuse_packed_weights`` scopes, innermost last: each maps a weight to its packed W^T.
_PACK_SCOPES: list[dict] = []
_PACKS_PER_SCOPE = 8


@contextlib.contextmanager
def reuse_packed_weights():
    """Within the block, the event-driven forward packs a weight's W^T once and reuses the packing for every
    later call with the same, unchanged weight tensor, instead of repacking per call (a copy of the whole
    weight). For callers that split one product into many calls over groups of rows (HM2-BP's forward runs a
    layer group by group of samples to bound its float temporaries). A packing is reused only for the same
    storage, offset, shape, strides, dtype and version counter, and the scope holds a reference to the weight
    so its memory cannot be reused by another tensor; writing a weight through ``.data`` inside the block
    does not bump its version counter, so callers must not do that. At most ``_PACKS_PER_SCOPE`` packings are
    kept (oldest dropped); all are released when the block ends."""
    cache: dict = {}
    _PACK_SCOPES.append(cache)
    try:
        yield
    finally:
        _PACK_SCOPES.remove(cache)
        cache.clear()


def _packed(weight: torch.Tensor, cb: int, blocks: int) -> np.ndarray:
    """W^T of ``weight`` (out, in) in column blocks of ``cb`` (``_pack_transposed``), from the innermost
    ``reuse_packed_weights`` scope when it holds the same weight unchanged."""
    cache = _PACK_SCOPES[-1] if _PACK_SCOPES else None
    key = (weight.data_ptr(), weight.storage_offset(), tuple(weight.shape), weight.stride(), weight.dtype,
           weight._version, cb)
    if cache is not None and key in cache:
        return cache[key][1]
    w = weight.contiguous().numpy()
    packed = np.empty((blocks, w.shape[1], cb), dtype=w.dtype)
    _pack_transposed(w, cb, packed)
    if cache is not None:
        if len(cache) >= _PACKS_PER_SCOPE:
            del cache[next(iter(cache))]
        cache[key] = (weight, packed)  # the reference keeps the weight's storage (and its address) alive
    return packed


class _SpikeLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2, weight, csr, tile, threads):
        chunk_ptr, idx, val = csr
        cb, kc = tile
        m, k = weight.shape
        rows = x2.shape[0]
        blocks = -(-m // cb)
        forward, _ = _product_kernels(cb)
        kernels._set_threads()
        packed = _packed(weight.detach(), cb, blocks)
        out = buffer_pool.empty((rows, m), weight.dtype)  # (x2 may be a bool train)
        forward(chunk_ptr, idx, val, packed, kc, _row_jobs(rows, blocks, threads), out.numpy())
        ctx.csr, ctx.tile = csr, tile
        ctx.save_for_backward(weight)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        (weight,) = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[:2]
        grad_x = grad_w = None
        if need_x:
            grad_x = grad_out @ weight
        if need_w:
            g = grad_out.detach().contiguous()
            grad_w = torch.empty(weight.shape, dtype=g.dtype)
            kernels._set_threads()
            _weight_grad(ctx.csr, g.numpy(), ctx.tile, grad_w.numpy())
        return grad_x, grad_w, None, None, None


def as_float(s: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A spike train (or a view of one) in ``dtype``; a bool train through a copy of its bytes as uint8, which
    is several times faster on the CPU than converting from bool."""
    if s.dtype == dtype:
        return s
    if s.dtype != torch.bool:
        return s.to(dtype)
    return torch.empty(s.shape, dtype=dtype, device=s.device).copy_(s.view(torch.uint8))


def _dense(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight.t()`` by the GEMM; a bool x as 0/1 in weight's dtype."""
    return (as_float(x, weight.dtype) if x.dtype == torch.bool else x) @ weight.t()


def spike_linear(x: torch.Tensor, weight: torch.Tensor, mode: str = "auto", csr_out: list | None = None) -> torch.Tensor:
    """``x @ weight.t()`` (no bias) computed over x's nonzeros where that is faster; differentiable.

    ``x`` (..., in_features): spikes or any mostly-zero input; ``weight`` (out_features, in_features).
    Returns (..., out_features). ``mode="auto"`` takes the event-driven CPU kernels when x's density is at
    most ``density_limit(in_features, out_features)`` and the dense GEMM otherwise; ``"sparse"`` and
    ``"dense"`` force one path (tests, benchmarks). The event-driven path needs CPU float32/float64
    tensors of one dtype and numba; otherwise every mode computes ``x @ weight.t()``. Gradients: the
    weight's over the same nonzeros, x's (when x requires grad) as the dense ``grad @ weight``. ``csr_out`` (a list),
    if given, receives ``(chunk_ptr, idx, val, kc)``, the nonzeros of x's rows (all leading dimensions) as the
    event-driven path found them (``_csr``), when it took that path: for a caller that makes the weight gradient
    later over the same rows (``spsp_kernels.scatter_rows_csr``) without reading x again. A ``bool`` x (a spike
    train kept as bytes, as the spike-train rules keep theirs) is read as 0/1 in weight's dtype: its nonzeros are
    found in the bytes (no float copy; the sums are those of the float train, bit for bit), and the dense path
    multiplies a float copy; it has no gradient.
    """
    if mode not in ("auto", "sparse", "dense"):
        raise ValueError(f"mode must be 'auto', 'sparse' or 'dense', got {mode!r}")
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or weight.dim() != 2 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"spike_linear: x (..., {weight.shape[-1] if weight.dim() == 2 else '?'}) and weight "
                         f"(out_features, in_features) expected, got x {tuple(getattr(x, 'shape', ()))} and "
                         f"weight {tuple(weight.shape)}")
    binary = x.dtype == torch.bool
    if mode == "dense" or x.numel() == 0 or not kernels.usable(weight if binary else x, weight):
        return _dense(x, weight)
    m, k = weight.shape
    limit = 1.0 if mode == "sparse" else density_limit(k, m)
    x2 = x.detach().reshape(-1, k)
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    if mode == "auto" and _sampled_density(x2) > 1.5 * limit + 0.02:
        return _dense(x, weight)  # clearly dense: decided after reading a few percent of x
    kernels._set_threads()
    tile = _tile(k, m, weight.element_size())
    csr = _csr(x2, limit, tile[1])
    if csr is None:
        return _dense(x, weight)
    if csr_out is not None:
        csr_out.append((*csr, tile[1]))
    out = _SpikeLinear.apply(x.reshape(-1, k), weight, csr, tile, kernels._threads())
    return out.reshape(*x.shape[:-1], m)
