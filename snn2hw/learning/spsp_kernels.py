"""Compiled CPU kernels of the spike-train rules' two time scans (numba; optional).

HM2-BP and ST-RSBP need two scans over time per layer, both elementwise per (sample, neuron):

* the forward LIF scan of ``spsp.lif_sequence`` (refractory period included), run ``chunk`` steps at a
  time with its state carried between calls, writing the spikes as ``bool`` and accumulating the
  pre-reset membrane at each spike (``vsum``: the T-PSP plus the bias part, which HM2-BP's self term
  needs, so the currents are never kept);
* the reverse-time recursion of ``spsp.spsp_adjoint`` (the S-PSP kernel ``lam_u``), also chunk by chunk
  with its state carried backwards, with the per-neuron sums of ``lam_u`` and ``lam_p`` on the way.

As a per-step loop of tensor ops these cost microseconds of dispatch per step (most of a step's time at
batch 16); here each is one call per chunk. Every product and sum is the one of the tensor code, in the
same order and rounded once in the input's dtype (numba does not fuse ``x * y + z`` without
``fastmath``), so spikes and kernels are bit-identical to ``spsp.lif_sequence`` / ``spsp.spsp_adjoint``
and, with ``t_ref = 0``, to the layers' own forward (tests/test_learning_spiketrain.py checks both).
The sums are accumulated in float64. Without numba (or on CUDA) the callers use their tensor loops.

The event-driven products (``scatter_rows``, ``spike_dots``) add rows of a gradient per input spike. Into
one shared wide output (a wide layer's weight gradient, ``spsp.dense_hop_block``) ``scatter_rows`` goes
tile by tile of 64 float32 / 32 float64 output columns, with the tile's accumulators in registers (an
array on the stack, ``_tile_accumulators``: one on the heap is reloaded and stored at every addition),
over the spikes regrouped by input per block of rows; the sums and their order are those of the
row-by-row scatter, so the result is the same bit for bit.
"""
from __future__ import annotations

import math
import threading
import types

import numpy as np
import torch

from snn2hw.nn.kernels import available

try:  # an accelerator, never a requirement
    import numba
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None



def _njit_cached(fn, parallel: bool, **options):
    """``numba.njit(..., cache=True)`` of one variant of ``fn``, with a cache entry of its own.

    numba's cache key is the signature, the machine, the bytecode and the closure's contents, not the
    compile options: the serial and the parallel compile of one function shared an entry, and whichever a
    process compiled first was what the other loaded from the cache from then on (a parallel kernel
    loaded for a one-thread call took 1.7-4.5x the CPU time of the serial one; a serial kernel that read
    a thread id crashed). A copy of the function under its own qualified name gets its own cache file."""
    tag = "parallel" if parallel else "serial"
    if options:
        tag += "_" + "_".join(sorted(options))
    copy = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__kwdefaults__ = fn.__kwdefaults__
    copy.__qualname__ = f"{fn.__qualname__}__{tag}"
    return numba.njit(parallel=parallel, nogil=True, boundscheck=False, cache=True, **options)(copy)


_L2_BYTES = 256 * 1024
# ``scatter_rows`` into one shared output (a wide layer's weight gradient) goes tile by tile of output columns
# (``_tiled_scatter_py``) for outputs at least this wide; narrower ones, and per-sample outputs, row by row.
# Module-level so that a benchmark can switch it off for an A/B (``diag_spiketrain_speed.py --variant``).
SCATTER_TILE_MIN_WIDTH = 64
# (sample, step) rows per block of the tiled scatter: a block's (rows, tile) slice of g is copied next to the
# accumulators (128 KiB at 64 float32 columns, in L2); each input's list of rows in a block is what the
# accumulators of one tile row sum in registers (about density x rows additions per load and store).
SCATTER_ROW_BLOCK = 512
# Bytes of one tile's accumulators in the tiled scatter: 64 float32 / 32 float64 columns, 8 AVX2 registers.
_TILE_ACC_BYTES = 256
# The tiled scatter's copies of g's block slices, one per tile (ceil(N / 64) x 128 KiB for float32), kept per
# thread between calls (``_tiled_scatter``): a fresh buffer would cost a page fault per 4 KiB every call.
_tile_buffers = threading.local()

__all__ = ["usable", "lif_scan_chunk", "adjoint_scan_chunk"]


def usable(*tensors: torch.Tensor, dtype: torch.dtype | None = None) -> bool:
    """True when numba is available and every tensor is a CPU float32/float64 tensor of one dtype; with ``dtype``,
    when every tensor is on the CPU and ``dtype`` is float32/float64 (the tensors as they would be once cast to it,
    without casting them)."""
    if not available():
        return False
    dtypes = {t.dtype for t in tensors} if dtype is None else {dtype}
    return all(t.device.type == "cpu" for t in tensors) and len(dtypes) == 1 and dtypes <= {torch.float32,
                                                                                            torch.float64}


def _set_threads() -> None:
    from snn2hw.hw.compiled import _set_threads as set_threads  # one place that knows numba's pitfalls

    set_threads(max(1, min(numba.config.NUMBA_NUM_THREADS, torch.get_num_threads())))


def _per_neuron(p, n: int, dtype: torch.dtype) -> np.ndarray:
    """A 0-dim or (n,) parameter (None: zeros) as a contiguous (n,) array of ``dtype``."""
    if p is None:
        return np.zeros(n, dtype=torch.empty(0, dtype=dtype).numpy().dtype)
    return torch.broadcast_to(torch.as_tensor(p).detach().to(dtype), (n,)).contiguous().numpy()


def _spec_arrays(spec, n: int, dtype: torch.dtype) -> tuple:
    """(alpha, beta, v_th, bias) of a ``spsp.NeuronSpec`` as ``_per_neuron`` arrays, made once per spec, width and
    dtype (a spec lives for one batch and serves its forward scan and every reverse scan)."""
    cache = spec.__dict__.setdefault("_arrays", {})
    key = (n, dtype)
    if key not in cache:
        cache[key] = tuple(_per_neuron(p, n, dtype) for p in (spec.alpha, spec.beta, spec.v_th, spec.bias))
    return cache[key]


def _unit(dtype: torch.dtype) -> np.ndarray:
    return torch.ones(1, dtype=dtype).numpy()


if numba is not None:
    def _lif_scan_py(a, alpha, beta, vth, bias, has_bias, t_ref, unit, u, v, ref, spikes, vsum, counts, rec_t,
                     has_rec, s_prev, first, wbias, bsum):
        batch, steps, n = a.shape
        for b in numba.prange(batch):
            zero = unit[0] - unit[0]  # 0 in the input's dtype
            r = np.zeros(n, dtype=a.dtype)
            for t in range(steps):
                add_rec = has_rec and not (first and t == 0)
                if add_rec:  # r = V s[t-1], summed over the spiking sources in ascending order
                    for i in range(n):
                        r[i] = zero
                    for j in range(n):
                        if s_prev[b, j]:
                            for i in range(n):
                                r[i] += rec_t[j, i]
                for i in range(n):
                    ai = a[b, t, i] + r[i] if add_rec else a[b, t, i]  # a[t] = a_ff[t] + V s[t-1]
                    uu = u[b, i] * alpha[i] + ai  # u[t] = alpha u[t-1] + a[t]
                    u[b, i] = uu
                    x = v[b, i] * beta[i] + uu  # v_pre = (beta v[t-1] + u[t]) + bias
                    if has_bias:
                        x = x + bias[i]
                    fire = False
                    w = wbias[b, i] * beta[i] + unit[0]  # the bias part of v per unit bias (``_plain_lif_kernel``)
                    if t_ref > 0 and ref[b, i] > 0:  # refractory: v held at 0, no spike
                        x = zero
                        w = zero
                        ref[b, i] -= 1
                    elif x > vth[i]:
                        fire = True
                        ref[b, i] = t_ref
                    spikes[b, t, i] = fire
                    if has_rec:
                        s_prev[b, i] = fire
                    if fire:
                        vsum[b, i] += x
                        counts[b, i] += 1.0
                        v[b, i] = zero
                        if has_bias:
                            bsum[b, i] += w
                        wbias[b, i] = zero
                    else:
                        v[b, i] = x
                        wbias[b, i] = w

    def _plain_lif_kernel(has_bias: bool, has_rec: bool, weights: int, parallel: bool):
        """``_lif_scan_py`` without refractory period (the deployable neuron), branch-free in its inner loop so
        that it vectorises (about 3x faster): the same products and sums in the same order, so the same
        spikes bit for bit. ``has_bias``, ``has_rec`` and ``weights`` are closure constants; ``weights`` 1 or
        2 also adds ``tw[t] a[b, t]`` over the chunk's steps to ``tsum[b]`` (float64), with ``tw`` (C, 1) or
        (C, N): a time-weighted sum of the currents made in the same loop that reads them (a separate loop over the
        step read the currents twice: 0.94x the kernel's CPU time fused). The counts are added after each sample's
        scan from its spike bytes (int32, exact), not by a float64 select-and-add per step and neuron inside it
        (0.86x the kernel's CPU time, 784-800-10's hidden layer at T = 200). ``lag`` (0 or 1): the current
        of step t is ``a[b, t - lag]`` (zero before), so a window's undelayed currents need no shifted copy. With a
        bias it also adds,
        at each spike, the bias part of the membrane per unit bias, ``sum_k beta^(t-k)`` over the steps since
        the last reset (state ``wbias``), to ``bsum`` (float64): the reverse scan's ``sum_t lam_p[t]`` of the
        real spikes, which the T-PSP's bias part needs, known after the forward."""

        def scan(a, alpha, beta, vth, bias, unit, u, v, spikes, vsum, counts, rec_t, s_prev, first, tw, tsum, wbias,
                 bsum, lag):
            batch, steps, n = a.shape
            for b in numba.prange(batch):
                one = unit[0]
                zero = one - one
                ub, vb, vs, cn, sb = u[b], v[b], vsum[b], counts[b], s_prev[b]
                ts = tsum[b]
                wb, bs = wbias[b], bsum[b]
                r = np.zeros(n, dtype=a.dtype)
                none = np.zeros(n, dtype=a.dtype)  # the current of the steps before the first input reaches the layer
                for t in range(steps):
                    at = a[b, t - lag] if t >= lag else none
                    sp = spikes[b, t]
                    add_rec = has_rec and not (first and t == 0)
                    if add_rec:  # r = V s[t-1], summed over the spiking sources in ascending order
                        for i in range(n):
                            r[i] = zero
                        for j in range(n):
                            if sb[j]:
                                for i in range(n):
                                    r[i] += rec_t[j, i]
                    k = tw[t, 0] if weights == 1 else zero
                    kt = tw[t] if weights == 2 else at  # (``at``: a placeholder, never read)
                    for i in range(n):
                        if weights == 1:  # the time-weighted sum, in the pass that reads the current anyway
                            ts[i] += k * at[i]
                        elif weights == 2:
                            ts[i] += kt[i] * at[i]
                        ai = at[i] + r[i] if add_rec else at[i]  # a[t] = a_ff[t] + V s[t-1]
                        uu = ub[i] * alpha[i] + ai  # u[t] = alpha u[t-1] + a[t]
                        ub[i] = uu
                        x = vb[i] * beta[i] + uu  # v_pre = (beta v[t-1] + u[t]) + bias
                        if has_bias:
                            x = x + bias[i]
                        fire = x > vth[i]
                        sp[i] = fire
                        vs[i] += x if fire else 0.0
                        vb[i] = zero if fire else x
                        if has_bias:  # the bias part of v per unit bias, sum_k beta^(t-k) since the last reset
                            w = wb[i] * beta[i] + one
                            bs[i] += w if fire else 0.0
                            wb[i] = zero if fire else w
                    if has_rec:
                        for i in range(n):
                            sb[i] = sp[i]
                # the counts from the chunk's spikes after the scan (integers: exact in any order), one byte add
                # per step and neuron, cheaper than a float64 select-and-add per step inside the scan
                c = np.zeros(n, dtype=np.int32)
                for t in range(steps):
                    sp = spikes[b, t]
                    for i in range(n):
                        c[i] += sp[i]
                for i in range(n):
                    cn[i] += c[i]

        return _njit_cached(scan, parallel)

    @numba.njit(inline="always", cache=True)
    def _adjoint_step(s, cut, b, t, k, i, one, zero, alpha, beta, lp, lu, lam_u, lam_p, keep_p, lu_sum, lp_sum,
                      scale, scaled):
        """One step of the reverse recursion for post neuron i of sample b (spike ``s``, reset ``cut`` at step t,
        block row k): ``lam_p[t] = s[t] + ((1 - cut[t]) beta) lam_p[t+1]``, ``lam_u[t] = lam_p[t] + alpha
        lam_u[t+1]``, summed (lam_u's from step 1) and written (lam_u times ``scale[b, i]`` when ``scaled``)."""
        p = (one if s else zero) + (zero if cut else beta[i]) * lp[b, i]
        q = p + alpha[i] * lu[b, i]
        lp[b, i] = p
        lu[b, i] = q
        lam_u[b, k, i] = q * scale[b, i] if scaled else q
        if keep_p:
            lam_p[b, k, i] = p
        lp_sum[b, i] += p
        if t >= 1:
            lu_sum[b, i] += q

    def _adjoint_scan_py(post, t0, t1, t_ref, alpha, beta, unit, lp, lu, lam_u, lam_p, keep_p, lu_sum, lp_sum, scale,
                         scaled):
        batch, steps, n = post.shape
        for b in numba.prange(batch):
            one = unit[0]
            zero = one - one
            for t in range(t1 - 1, t0 - 1, -1):
                k = t - t0
                for i in range(n):
                    s = post[b, t, i]
                    cut = s
                    for d in range(1, t_ref + 1):  # v restarts after a spike and its refractory steps
                        if t - d >= 0 and post[b, t - d, i]:
                            cut = True
                    _adjoint_step(s, cut, b, t, k, i, one, zero, alpha, beta, lp, lu, lam_u, lam_p, keep_p, lu_sum,
                                  lp_sum, scale, scaled)

    @numba.njit(inline="always", cache=True)
    def _virtual_position(m, k, steps):
        """Step of virtual spike m of ``k`` evenly spaced ones (``spsp.evenly_spaced_spikes``)."""
        return ((m + 1) * steps) // k - 1

    def _adjoint_virtual_py(steps, virt, t0, t1, t_ref, alpha, beta, unit, lp, lu, lam_u, lam_p, keep_p, lu_sum,
                            lp_sum, scale, scaled):
        """``_adjoint_scan_py`` for the neurons with ``virt[b, i] > 0`` evenly spaced virtual spikes and no spikes
        of their own, after it (which ran them as silent: zeros in lam_u and the sums), with their own state
        lp/lu. A separate kernel: in the same loop nest it slows the main loop several times. The spikes are
        walked by index (``m``: the last spike at or before step t), one division per spike, not per step."""
        batch, n = virt.shape
        for b in numba.prange(batch):
            one = unit[0]
            zero = one - one
            for i in range(n):
                kv = virt[b, i]
                if kv <= 0:
                    continue
                m = kv - 1
                pos = _virtual_position(m, kv, steps)
                while m >= 0 and pos > t1 - 1:
                    m -= 1
                    pos = _virtual_position(m, kv, steps)
                for t in range(t1 - 1, t0 - 1, -1):
                    k = t - t0
                    if m >= 0 and pos > t:
                        m -= 1
                        pos = _virtual_position(m, kv, steps)
                    s = m >= 0 and pos == t
                    cut = s
                    if t_ref > 0:  # v restarts after a spike and its refractory steps: the last spike before t
                        prev = m - 1 if s else m
                        if prev >= 0 and _virtual_position(prev, kv, steps) >= t - t_ref:
                            cut = True
                    _adjoint_step(s, cut, b, t, k, i, one, zero, alpha, beta, lp, lu, lam_u, lam_p, keep_p, lu_sum,
                                  lp_sum, scale, scaled)

    def _plain_adjoint_kernel(summed: bool, parallel: bool):
        """``_adjoint_scan_py`` for the neuron without refractory period (``cut = s``) and without ``lam_p``, over
        row views so that the loop over neurons vectorises: the same products and sums in the same order, so
        the same ``lam_u`` and sums bit for bit. ``has_virt``: the block's virtual spikes ``virt`` (B, t1 - t0,
        N, bool; ``_virtual_block``) are added to ``post`` in the same loop. The spike is ``st[i] | vt[i]``,
        not ``or``: a short-circuit ``or`` is a branch that keeps LLVM from vectorising the loop (3.5x slower).
        The sum of lam_u (steps >= 1) and the scaling are in the same loop (one pass over the block). ``summed``
        (a closure constant) False leaves out the float64 sums of lam_u and lam_p (``lu_sum``, ``lp_sum``: then
        placeholders, never read), which a caller that does not read them (the first layer's weight gradient, no
        bias) need not pay for: two float32 -> float64 conversions and float64 adds per neuron and step, 0.73x
        the scan's CPU time without them (784-800-10's hidden layer, T = 800); ``lam_u`` is the same."""

        def scan(post, t0, t1, alpha, beta, unit, lp, lu, lam_u, lu_sum, lp_sum, scale, scaled, virt, has_virt):
            batch, steps, n = post.shape
            for b in numba.prange(batch):
                one = unit[0]
                zero = one - one
                lpb, lub = lp[b], lu[b]
                lus, lps = (lu_sum[b], lp_sum[b]) if summed else (lu_sum[0], lp_sum[0])
                sc = scale[b] if scaled else scale[0]
                no_virt = np.zeros(n, np.bool_)
                for t in range(t1 - 1, t0 - 1, -1):
                    st = post[b, t]
                    vt = virt[b, t - t0] if has_virt else no_virt
                    out = lam_u[b, t - t0]
                    counted = t >= 1
                    for i in range(n):
                        s = st[i] | vt[i]
                        p = (one if s else zero) + (zero if s else beta[i]) * lpb[i]
                        q = p + alpha[i] * lub[i]
                        lpb[i] = p
                        lub[i] = q
                        if summed:
                            lps[i] += p
                            if counted:
                                lus[i] += q
                        out[i] = q * sc[i] if scaled else q

        return _njit_cached(scan, parallel)

    @numba.njit(nogil=True, boundscheck=False, cache=True)
    def _virtual_block(steps, k, t0, t1, out):
        """``out[b, t - t0, i]`` = the ``k[b, i]`` evenly spaced virtual spikes (``spsp.evenly_spaced_spikes``,
        without refractory period: spike m at ``(m + 1) steps // k - 1``) at the steps [t0, t1); ``out`` zeros."""
        batch, n = k.shape
        for b in range(batch):
            for i in range(n):
                kv = k[b, i]
                for m in range(kv):
                    t = ((m + 1) * steps) // kv - 1
                    if t0 <= t < t1:
                        out[b, t - t0, i] = True

    def _scatter_rows_py(g, s, out, per_sample, binary, blocks, lag):
        """``out[o, j, :] += s[b, t, j] g[b, t + lag, :]`` over the non-zero ``s`` (o = b, or 0 when shared)."""
        batch, steps, m = s.shape
        n = g.shape[2]
        for blk in numba.prange(blocks):  # each task owns a range of rows j of ``out``: no write races
            lo = blk * m // blocks
            hi = (blk + 1) * m // blocks
            for b in range(batch):
                o = b if per_sample else 0
                for t in range(steps):
                    gr = g[b, t + lag]
                    for j in range(lo, hi):
                        x = s[b, t, j]
                        if x != 0:
                            row = out[o, j]
                            if binary:
                                for i in range(n):
                                    row[i] += gr[i]
                            else:
                                for i in range(n):
                                    row[i] += x * gr[i]

    def _transpose_py(src, dst):
        """``dst = src.T`` block by block of 64 x 64 elements (a strided copy reads or writes one element per cache
        line; a block's lines stay in L1 while it is copied)."""
        m, n = src.shape
        for i0 in numba.prange((m + 63) // 64):
            lo, hi = i0 * 64, min(i0 * 64 + 64, m)
            for j0 in range(0, n, 64):
                for j in range(j0, min(j0 + 64, n)):
                    for i in range(lo, hi):
                        dst[j, i] = src[i, j]

    def _recurrent_system_py(pivots, rec_scaled, e_rec, counts_rec, random_spike, unit, out):
        """``out[b] = diag(pivots[b]) - rec_scaled * ratio[b]`` with ``ratio[b, i, j] = e_rec[b, i, j] / max(o_j, 1)``
        for a firing pre-synaptic neuron (``o_j = counts_rec[b, j] > 0``), else ``random_spike[b, i]``: ST-RSBP's
        matrix M in one pass, each element by the same operations as the tensor expression (a division, a product,
        a subtraction from the diagonal's pivot or from 0, each rounded once in the arrays' dtype)."""
        batch, n, _ = e_rec.shape
        one = unit[0]  # 1 and 0 in the arrays' dtype (a Python float would make the division float64)
        zero = one - one
        for b in numba.prange(batch):
            for i in range(n):
                rs = random_spike[b, i]
                for j in range(n):  # branch-free (selects), so that the loop vectorises
                    o = counts_rec[b, j]
                    r = e_rec[b, i, j] / (o if o > one else one)
                    out[b, i, j] = zero - rec_scaled[i, j] * (r if o > zero else rs)
                o = counts_rec[b, i]  # the diagonal: from the pivot instead of from 0
                r = e_rec[b, i, i] / (o if o > one else one)
                out[b, i, i] = pivots[b, i] - rec_scaled[i, i] * (r if o > zero else rs)

    def _pivots_py(counts, drive, v_th, terms, consts, out):
        """ST-RSBP's pivots ``1 - S`` kept ``min_pivot`` away from 0 (``strsbp.STRSBP.pivots``), per (sample, neuron):
        the slope ``h'(o)`` of the fitted polynomial at ``x = o / top`` (Horner in float64 over ``terms``, the
        coefficients times their powers), back in the arrays' dtype and divided by ``top``, times the drive, over
        the threshold, from 1; then its sign times its magnitude clamped below at ``min_pivot``. The tensor code's
        operations in its order, each rounded as it rounds them. ``consts`` = (1, top, min_pivot) in the dtype."""
        batch, n = counts.shape
        one, top, low = consts[0], consts[1], consts[2]
        zero = one - one
        for b in numba.prange(batch):
            cast = np.empty(1, dtype=counts.dtype)  # the float64 slope rounded to the dtype, as ``.to(dtype)``
            for i in range(n):
                x = np.float64(counts[b, i] / top)
                p = np.float64(0.0)
                for c in terms:
                    p = p * x + c
                cast[0] = p
                d = one - cast[0] / top * drive[b, i] / v_th[i]
                a = abs(d)
                out[b, i] = (one if d >= zero else -one) * (a if not a < low else low)

    def _coefficient_sum_py(out, c, e):
        """``out[i, j] += sum_b c[b, i] e[b, i, j]``, added sample by sample in ascending order as the loop of
        ``addcmul_`` it replaces; compiled with contraction allowed, so each addition is the fused multiply-add that
        torch's ``addcmul_`` makes on this machine (``coefficient_sum`` checks that once per dtype)."""
        batch, n, k = e.shape
        for i in numba.prange(n):
            row = out[i]
            for b in range(batch):
                cb = c[b, i]
                eb = e[b, i]
                for j in range(k):
                    row[j] = row[j] + cb * eb[j]

    def _spike_dots_py(g, s, wt, out, binary):
        """``out[b, j] += sum_t s[b, t, j] (g[b, t, :] . wt[j, :])`` over the non-zero ``s``."""
        batch, steps, n = g.shape
        m = s.shape[2]
        for b in numba.prange(batch):
            for t in range(steps):
                for j in range(m):
                    x = s[b, t, j]
                    if x != 0:
                        acc = g[b, t, 0] - g[b, t, 0]  # 0 in the dtype of g
                        for i in range(n):
                            acc += g[b, t, i] * wt[j, i]
                        out[b, j] += acc if binary else x * acc


if numba is not None:
    from numba.core import cgutils
    from numba.extending import intrinsic

    @intrinsic
    def _tile_width(typingctx, like):
        """The number of ``like``'s elements in ``_TILE_ACC_BYTES``, as a compile-time constant (so that loops over
        a tile have a fixed trip count and unroll)."""
        def codegen(context, builder, sig, args):
            return context.get_constant(numba.types.intp, _TILE_ACC_BYTES // (like.dtype.bitwidth // 8))
        return numba.types.intp(like), codegen

    @intrinsic
    def _tile_accumulators(typingctx, like):
        """An uninitialised array of ``_tile_width(like)`` elements of ``like``'s dtype in the caller's stack frame.
        An array from ``np.empty`` lives on the heap, where LLVM must assume that stores into it may alias the
        arrays a loop reads, so it reloads and stores it at every step; a fixed-size stack array whose elements
        are only indexed by fully unrolled loops is promoted to registers."""
        arr = numba.types.Array(like.dtype, 1, "C")

        def codegen(context, builder, sig, args):
            item = context.get_data_type(like.dtype)
            size = context.get_constant(numba.types.intp, context.get_abi_sizeof(item))
            n = _TILE_ACC_BYTES // (like.dtype.bitwidth // 8)
            ary = context.make_array(arr)(context, builder)
            context.populate_array(ary, data=cgutils.alloca_once(builder, item, size=n),
                                   shape=[context.get_constant(numba.types.intp, n)], strides=[size], itemsize=size,
                                   meminfo=None)
            return ary._getvalue()
        return arr(like), codegen

    def _column_counts_py(s, shape, rblock, counts, others):
        """``counts[q, j + 1]`` = non-zeros of input j in block q of ``rblock`` (sample, step) rows of a train (B, C,
        M), ``others[q]`` = how many of them are not 1 (none: a 0/1 train, whose values need not be kept). The
        train is ``s`` (1-D, contiguous: its rows, which need not be adjacent, vectorise), row (b, t) at
        ``s[b * shape[3] + t * shape[4]:][:M]``; ``shape`` = (B, C, M, sample stride, step stride)."""
        batch, steps, m, ss, ts = shape
        rows = batch * steps
        for q in numba.prange(counts.shape[0]):
            cnt = counts[q]
            for j in range(m + 1):
                cnt[j] = 0
            o = 0
            for r in range(q * rblock, min(q * rblock + rblock, rows)):
                b = r // steps
                at = b * ss + (r - b * steps) * ts
                row = s[at:at + m]
                for j in range(m):
                    x = row[j]
                    cnt[j + 1] += x != 0
                    o += (x != 0) & (x != 1)
            others[q] = o

    def _column_fill_py(s, shape, rblock, col_ptr, rows_local, vals, binary):
        """Each block's non-zeros of s regrouped by input (a counting sort, ascending in the row): those of input j
        in block q are ``col_ptr[q, j]:col_ptr[q, j + 1]``, ``rows_local`` their row within the block, ``vals``
        their values (not written for a 0/1 train). A row's non-zeros are first listed without a branch on the
        spike pattern (``nz``). ``s`` and ``shape`` as in ``_column_counts_py``."""
        batch, steps, m, ss, ts = shape
        rows = batch * steps
        for q in numba.prange(col_ptr.shape[0]):
            pos = col_ptr[q, :m].copy()
            nz = np.empty(m, dtype=np.int64)
            r0 = q * rblock
            for r in range(r0, min(r0 + rblock, rows)):
                b = r // steps
                at = b * ss + (r - b * steps) * ts
                row = s[at:at + m]
                c = 0
                for j in range(m):
                    nz[c] = j
                    c += row[j] != 0
                for k in range(c):
                    j = nz[k]
                    rows_local[pos[j]] = r - r0
                    if not binary:
                        vals[pos[j]] = row[j]
                    pos[j] += 1

    def _csr_column_counts_py(chunk_ptr, idx, val, kc, shape, rblock, counts, others):
        """``_column_counts_py`` from the row lists of ``spike_dense``'s CSR (``chunk_ptr``, ``idx``, ``val``: the
        non-zeros of (sample, step) rows of a train with ``T`` steps per sample, chunk by chunk of ``kc`` inputs)
        instead of the dense train: reads the non-zeros only. The rows taken are steps [t_lo, t_lo + C) of every
        sample, numbered (sample, step) from 0 as the rows of the train ``s`` (B, C, M) of ``scatter_rows``;
        ``shape`` = (B, C, M, T, t_lo)."""
        batch, steps, m, total, t_lo = shape
        rows = batch * steps
        chunks = chunk_ptr.shape[1] - 1
        values = val.shape[0] > 0
        for q in numba.prange(counts.shape[0]):
            cnt = counts[q]
            for j in range(m + 1):
                cnt[j] = 0
            o = 0
            for r in range(q * rblock, min(q * rblock + rblock, rows)):
                b = r // steps
                row = b * total + t_lo + (r - b * steps)
                for c in range(chunks):
                    base = c * kc + 1
                    for p in range(chunk_ptr[row, c], chunk_ptr[row, c + 1]):
                        cnt[base + idx[p]] += 1
                        if values:
                            o += val[p] != 1
            others[q] = o

    def _csr_column_fill_py(chunk_ptr, idx, val, kc, shape, rblock, col_ptr, rows_local, vals, binary):
        """``_column_fill_py`` from the CSR's row lists (``_csr_column_counts_py``): the same lists, since both go
        through the rows in ascending order and a row's non-zeros are those of the dense train."""
        batch, steps, m, total, t_lo = shape
        rows = batch * steps
        chunks = chunk_ptr.shape[1] - 1
        for q in numba.prange(col_ptr.shape[0]):
            pos = col_ptr[q, :m].copy()
            r0 = q * rblock
            for r in range(r0, min(r0 + rblock, rows)):
                b = r // steps
                row = b * total + t_lo + (r - b * steps)
                for c in range(chunks):
                    base = c * kc
                    for p in range(chunk_ptr[row, c], chunk_ptr[row, c + 1]):
                        j = base + idx[p]
                        rows_local[pos[j]] = r - r0
                        if not binary:
                            vals[pos[j]] = val[p]
                        pos[j] += 1

    def _tiled_scatter_py(g, steps, lag, rblock, col_ptr, rows_local, vals, binary, out, buf):
        """``out[j, :] += sum_r s[r, j] g[r + lag, :]`` over tiles of ``cb = _tile_width(g)`` output columns (a
        compile-time constant: the loops over a tile unroll, and its accumulators stay in registers). Per tile and
        block of rows (``col_ptr``/``rows_local``/``vals`` from ``_column_fill_py``), the block's slice of g is
        copied beside the accumulators (into ``buf[tile]``, zero past the last column), and each input's row of
        the tile is loaded into registers once, gets the block's rows with a non-zero at that input added in
        ascending order, and is stored once. Every sum is the row-by-row scatter's, in the same order (ascending
        (sample, step) per output element, starting from ``out``), so the result is the same bit for bit."""
        cb = _tile_width(g)
        n = g.shape[2]
        m = out.shape[0]
        rows = g.shape[0] * steps
        for tile in numba.prange((n + cb - 1) // cb):
            blk = buf[tile]
            acc = _tile_accumulators(g)
            lo = tile * cb
            width = min(cb, n - lo)
            for q in range(col_ptr.shape[0]):
                r0 = q * rblock
                if col_ptr[q, 0] == col_ptr[q, m]:
                    continue
                for r in range(r0, min(r0 + rblock, rows)):
                    b = r // steps
                    t = r - b * steps + lag
                    for k in range(width):
                        blk[r - r0, k] = g[b, t, lo + k]
                    for k in range(width, cb):
                        blk[r - r0, k] = 0
                for j in range(m):
                    p0, p1 = col_ptr[q, j], col_ptr[q, j + 1]
                    if p0 == p1:
                        continue
                    for k in range(width):
                        acc[k] = out[j, lo + k]
                    for k in range(width, cb):
                        acc[k] = 0
                    if binary:
                        for p in range(p0, p1):
                            rr = rows_local[p]
                            for k in range(cb):
                                acc[k] += blk[rr, k]
                    else:
                        for p in range(p0, p1):
                            v = vals[p]
                            rr = rows_local[p]
                            for k in range(cb):
                                acc[k] += v * blk[rr, k]
                    for k in range(width):
                        out[j, lo + k] = acc[k]


if numba is not None:
    # each scan compiled twice: parallel over the batch, and serial for one thread (a parallel kernel hands
    # its work to the thread pool even with one thread, and on a loaded machine waking it costs
    # milliseconds per call)
    _SCANS = {(name, par): _njit_cached(fn, par)
              for name, fn in (("lif", _lif_scan_py), ("adjoint", _adjoint_scan_py), ("scatter", _scatter_rows_py),
                               ("adjoint_virtual", _adjoint_virtual_py))
              for par in (False, True)}
    _SCANS.update({(name, par): _njit_cached(fn, par)
                   for name, fn in (("column_counts", _column_counts_py), ("column_fill", _column_fill_py),
                                    ("csr_column_counts", _csr_column_counts_py),
                                    ("csr_column_fill", _csr_column_fill_py), ("tiled_scatter", _tiled_scatter_py),
                                    ("transpose", _transpose_py))
                   for par in (False, True)})
    # numpy's error model: a division is the IEEE one, without the check for a zero divisor that numba's default
    # (Python's ZeroDivisionError) puts in the loop and that kept it from vectorising (114 against 20 us for
    # 8 x 100 x 100 float32); the divisors here are at least 1
    _SCANS.update({(name, par): _njit_cached(fn, par, error_model="numpy")
                   for name, fn in (("recurrent_system", _recurrent_system_py), ("pivots", _pivots_py))
                   for par in (False, True)})
    _SCANS.update({("coefficient_sum", par): _njit_cached(_coefficient_sum_py, par, fastmath={"contract"},
                                                          error_model="numpy")
                   for par in (False, True)})
    _SCANS.update({("plain_adjoint", summed, par): _plain_adjoint_kernel(summed, par)
                   for summed in (False, True) for par in (False, True)})
    _SCANS.update({("plain_lif", bias, rec, weights, par): _plain_lif_kernel(bias, rec, weights, par)
                   for bias in (False, True) for rec in (False, True) for weights in (0, 1, 2)
                   for par in (False, True)})
    # the dot products may be reassociated (vectorised): nothing here has to equal another computation
    _SCANS.update({("dots", par): _njit_cached(_spike_dots_py, par, fastmath={"reassoc", "contract"})
                   for par in (False, True)})


def _threads() -> int:
    return max(1, min(numba.config.NUMBA_NUM_THREADS, torch.get_num_threads()))


def _scan(name: str, *variant):
    threads = _threads()
    if threads > 1:
        _set_threads()
    return _SCANS[(name, *variant, threads > 1)]


def _np(s: torch.Tensor) -> np.ndarray:
    """A tensor's numpy view (bool trains as they are; float inputs may be strided views of the caller's)."""
    return s.detach().numpy()


def scatter_rows(g: torch.Tensor, s: torch.Tensor, out: torch.Tensor, per_sample: bool, lag: int = 0) -> None:
    """Event-driven ``out += s^T g``: ``out[o, j, :] += sum_t s[b, t, j] g[b, t + lag, :]`` with ``o = b`` when
    ``per_sample`` (out (B, M, N)) and ``o = 0`` otherwise (out (1, M, N)); g (B, C + lag, N), s (B, C, M)
    bool or float (a view of a longer train is read in place). Costs (non-zeros of s) x N instead of the
    GEMM's B C M N. ``lag`` pairs a spike with a later row of g (the hop delay) without slicing g, whose
    rows the kernel then reads as contiguous vectors."""
    if g.numel() == 0 or s.numel() == 0:
        return
    if g.shape[1] < s.shape[1] + lag:
        raise ValueError(f"scatter_rows: g has {g.shape[1]} steps, the spikes need {s.shape[1]} + lag {lag}")
    binary = s.dtype == torch.bool
    g = g.detach().contiguous()
    if (not per_sample and out.shape[2] >= SCATTER_TILE_MIN_WIDTH and g.dtype == out.dtype
            and (binary or s.dtype == g.dtype)):
        _tiled_scatter(g.numpy(), _np(s), out[0].numpy(), binary, int(lag))
        return
    # row blocks: one per thread, and small enough that a block of ``out`` stays in a core's L2 cache
    # while all of g streams past it (each non-zero then updates a cached row)
    rows = out.shape[0] * out.shape[1] if per_sample else out.shape[1]
    blocks = max(_threads(), min(out.shape[1], -(-rows * out.shape[2] * out.element_size() // _L2_BYTES)))
    _scan("scatter")(g.numpy(), _np(s), out.numpy(), bool(per_sample), binary, blocks, int(lag))


def _tiled_scatter(g: np.ndarray, s: np.ndarray, out: np.ndarray, binary: bool, lag: int) -> None:
    """``scatter_rows`` into one shared (M, N) ``out`` tile by tile of columns: the non-zeros of s regrouped by
    input per block of ``SCATTER_ROW_BLOCK`` rows, then ``_tiled_scatter_py`` (same sums, same order)."""
    batch, steps, m = s.shape
    if s.strides[2] != s.itemsize:
        s = np.ascontiguousarray(s)
    # the train as one contiguous span from its first to its last element, rows located by their strides (a
    # strided 3-D view, as the rule passes its stored trains, would not let the loops over a row vectorise)
    ss, ts = (st // s.itemsize for st in s.strides[:2])
    flat = np.lib.stride_tricks.as_strided(s, shape=((batch - 1) * ss + (steps - 1) * ts + m,), strides=(s.itemsize,))
    shape = (batch, steps, m, ss, ts)
    _scatter_by_columns(g, out, binary, lag, batch, steps,
                        lambda *a: _scan("column_counts")(flat, shape, *a),
                        lambda *a: _scan("column_fill")(flat, shape, *a))


def _scatter_by_columns(g: np.ndarray, out: np.ndarray, binary: bool, lag: int, batch: int, steps: int, counts,
                        fill) -> None:
    """The tiled scatter of a (B, C, M) train whose non-zeros ``counts(rblock, col_ptr, others)`` counts per block of
    rows and input and ``fill(rblock, col_ptr, rows_local, vals, binary)`` lists by input (from the dense train or
    from its CSR), then ``_tiled_scatter_py``."""
    m = out.shape[0]
    rblock = min(SCATTER_ROW_BLOCK, 1 << 16)  # a row's number within its block is 16 bits
    blocks = -(-batch * steps // rblock)
    col_ptr = np.empty((blocks, m + 1), dtype=np.int64)
    others = np.empty(blocks, dtype=np.int64)
    counts(rblock, col_ptr, others)
    binary = binary or not others.any()  # a float 0/1 train: 1 * g is g, so the sums need no products
    ends = np.cumsum(col_ptr[:, 1:], axis=None).reshape(blocks, m)  # running totals over (block, input)
    col_ptr[:, 1:] = ends
    col_ptr[0, 0] = 0
    col_ptr[1:, 0] = ends[:-1, -1]
    nnz = int(col_ptr[-1, -1])
    if nnz == 0:
        return
    rows_local = np.empty(nnz, dtype=np.uint16)
    vals = np.empty(0 if binary else nnz, dtype=out.dtype)
    fill(rblock, col_ptr, rows_local, vals, binary)
    cb = _TILE_ACC_BYTES // out.itemsize
    key = (-(-out.shape[1] // cb), rblock, cb, out.dtype)
    buf = getattr(_tile_buffers, "buf", None)
    if buf is None or (buf.shape[0], buf.shape[1], buf.shape[2], buf.dtype) != key:
        buf = _tile_buffers.buf = np.empty(key[:3], dtype=out.dtype)
    _scan("tiled_scatter")(g, steps, lag, rblock, col_ptr, rows_local, vals, binary, out, buf)


def scatter_rows_csr(g: torch.Tensor, csr: tuple, steps: int, t_lo: int, count: int, out: torch.Tensor,
                     lag: int = 0) -> bool:
    """``scatter_rows(g, s[:, t_lo:t_lo + count], out, per_sample=False, lag)`` for a train ``s`` (B, ``steps``,
    M) given by the CSR of its (sample, step) rows that ``spike_dense.spike_linear`` made for the layer's forward
    product (``csr``: ``(chunk_ptr, idx, val, kc)``, from its ``csr_out``), so that the dense train is not read
    again: the same lists of non-zeros by input, the same tiled kernel, the same sums in the same order, so the
    same result bit for bit. Returns False (and does nothing) where ``scatter_rows`` would not take the tiled
    kernel; the caller then calls it."""
    chunk_ptr, idx, val, kc = csr
    batch = chunk_ptr.shape[0] // max(steps, 1)
    m, n = out.shape[1], out.shape[2]
    if (out.shape[0] != 1 or n < SCATTER_TILE_MIN_WIDTH or g.dtype != out.dtype or g.shape[0] != batch
            or batch * steps != chunk_ptr.shape[0] or (val.shape[0] and val.dtype != out.numpy().dtype)
            or not 0 <= t_lo <= t_lo + count <= steps or g.shape[1] < count + lag):
        return False
    if g.numel() == 0 or count == 0 or m == 0:
        return True
    g = g.detach().contiguous()
    shape = (batch, int(count), m, int(steps), int(t_lo))
    _scatter_by_columns(g.numpy(), out[0].numpy(), val.shape[0] == 0, int(lag), batch, int(count),
                        lambda *a: _scan("csr_column_counts")(chunk_ptr, idx, val, kc, shape, *a),
                        lambda *a: _scan("csr_column_fill")(chunk_ptr, idx, val, kc, shape, *a))
    return True


def transposed(a: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of the transpose of the 2-D tensor ``a`` (a wide layer's event-driven weight gradient, made as
    its transpose): by 64 x 64 blocks where the kernels are usable (torch's strided copy took 1.3-1.9 ms for 784 x 800
    float32, this 0.7-0.8, one thread, under load); the same values."""
    if a.dim() != 2 or not a.is_contiguous() or not usable(a) or a.numel() == 0:
        return a.t().contiguous()
    out = torch.empty(a.shape[1], a.shape[0], dtype=a.dtype)
    _scan("transpose")(a.detach().numpy(), out.numpy())
    return out


def recurrent_system(pivots: torch.Tensor, rec_scaled: torch.Tensor, e_rec: torch.Tensor, counts_rec: torch.Tensor,
                     random_spike: torch.Tensor) -> torch.Tensor | None:
    """ST-RSBP's per-sample matrix (B, N, N), ``diag(pivots) - rec_scaled * ratio`` with the per-spike recurrent S-PSP
    ratio of ``SpikeTrainRule.per_spike_ratio(e_rec, counts_rec, random_spike)``, by one compiled pass instead of
    about seven tensor operations over (B, N, N) (a diagonal matrix, a division, a clamp, a select, a product, a
    subtraction, and their temporaries): the same operations per element, so the same values bit for bit. None
    where the kernels are not usable (the caller then evaluates the tensor expression)."""
    tensors = (pivots, rec_scaled, e_rec, counts_rec, random_spike)
    if any(t is None for t in tensors) or not usable(*tensors) or e_rec.dim() != 3 or pivots.dim() != 2:
        return None
    batch, n = pivots.shape
    if (e_rec.shape != (batch, n, n) or rec_scaled.shape != (n, n) or counts_rec.shape != (batch, n)
            or random_spike.shape != (batch, n)):
        return None
    out = torch.empty(batch, n, n, dtype=pivots.dtype)
    _scan("recurrent_system")(*(t.detach().contiguous().numpy() for t in tensors), _unit(pivots.dtype), out.numpy())
    return out


def pivots(counts: torch.Tensor, drive: torch.Tensor, v_th: torch.Tensor, coeffs: list, top: int,
           min_pivot: float) -> torch.Tensor | None:
    """ST-RSBP's pivots (B, N) from the counts, the drive ``W o_in (+ V o)`` and the fit's polynomial ``coeffs``
    (highest power first) and ``top`` (``strsbp.STRSBP.pivots``, with ``self_term``), by one compiled pass instead of
    about twenty small tensor operations: the same values bit for bit. None where the kernels are not usable."""
    if not usable(counts, drive, v_th) or counts.dim() != 2 or drive.shape != counts.shape or v_th.numel() not in (
            1, counts.shape[1]):
        return None
    deg = len(coeffs) - 1
    terms = np.array([c * (deg - k) for k, c in enumerate(coeffs[:-1])], dtype=np.float64)
    consts = torch.tensor([1.0, float(top), float(min_pivot)], dtype=counts.dtype).numpy()
    vth = torch.broadcast_to(v_th.detach(), (counts.shape[1],)).contiguous().numpy()
    out = torch.empty(counts.shape, dtype=counts.dtype)
    _scan("pivots")(counts.detach().contiguous().numpy(), drive.detach().contiguous().numpy(), vth, terms, consts,
                    out.numpy())
    return out


_ADDCMUL_MATCHES: dict = {}  # dtype -> whether the compiled coefficient sum equals torch's addcmul_ loop here


def _matches_addcmul(dtype: torch.dtype) -> bool:
    """Whether ``_coefficient_sum_py`` gives torch's ``addcmul_`` loop bit for bit in ``dtype`` on this machine and
    build (a fused multiply-add or not is the compiler's choice on both sides): checked once per process and dtype on
    a small case with vector tails, and the compiled sum is used only where it does."""
    if dtype not in _ADDCMUL_MATCHES:
        g = torch.Generator().manual_seed(0)
        e = torch.randn(3, 5, 37, generator=g, dtype=dtype)
        c = torch.randn(3, 5, generator=g, dtype=dtype)
        want = torch.randn(5, 37, generator=g, dtype=dtype)
        got = want.clone()
        for b in range(3):
            want.addcmul_(c[b].unsqueeze(1), e[b])
        _scan("coefficient_sum")(got.numpy(), c.numpy(), e.numpy())
        _ADDCMUL_MATCHES[dtype] = torch.equal(got, want)
    return _ADDCMUL_MATCHES[dtype]


def coefficient_sum(out: torch.Tensor, c: torch.Tensor, e: torch.Tensor) -> bool:
    """``out[i, j] += sum_b c[b, i] e[b, i, j]`` in place by one compiled pass, the same values as ``out.addcmul_(
    c[b].unsqueeze(1), e[b])`` for b = 0, 1, ... bit for bit (one pass over ``out`` instead of one per sample).
    Returns False (and does nothing) where the kernels are not usable or would not equal that loop; the caller then
    runs the loop."""
    if (not usable(out, c, e) or e.dim() != 3 or out.shape != e.shape[1:] or c.shape != e.shape[:2]
            or not out.is_contiguous() or not _matches_addcmul(out.dtype)):
        return False
    _scan("coefficient_sum")(out.numpy(), c.detach().contiguous().numpy(), e.detach().contiguous().numpy())
    return True


def spike_dots(g: torch.Tensor, s: torch.Tensor, wt: torch.Tensor, out: torch.Tensor) -> None:
    """Event-driven ``out[b, j] += sum_t s[b, t, j] (g[b, t] . wt[j])``: the error reaching each input at its
    spikes; g (B, C, N), s (B, C, M), wt (M, N) contiguous, out (B, M)."""
    if g.numel() == 0 or s.numel() == 0:
        return
    _scan("dots")(g.detach().contiguous().numpy(), _np(s), wt.numpy(), out.numpy(), s.dtype == torch.bool)


def lif_scan_chunk(a: torch.Tensor, spec, state: dict, spikes: torch.Tensor, vsum: torch.Tensor,
                   rec_weight: torch.Tensor | None = None, counts: torch.Tensor | None = None,
                   time_weights: torch.Tensor | None = None, weighted: torch.Tensor | None = None,
                   bias_sum: torch.Tensor | None = None, lag: int = 0) -> bool:
    """Advance the neuron of ``spec`` (a ``spsp.NeuronSpec``) over the hop-delayed currents ``a`` (B, C, N),
    writing ``spikes`` (a (B, C, N) bool view) and adding the pre-reset membrane at each spike to ``vsum``
    and 1 to ``counts`` (each (B, N, float64); counts None: not kept). ``state`` ({} at the first chunk) carries u, v, the refractory counters and the last
    spikes. ``rec_weight`` (N, N), V[i, j] from j to i: the recurrent input ``V s[t-1]``, summed over the
    spiking sources j in ascending order, which is the order (and so the rounding) of the recurrent
    operator's ``mm`` with 0/1 spikes. ``time_weights`` (C, 1) or (C, N) with ``weighted`` (B, N, float64): add
    ``sum_t time_weights[t] a[:, t]`` to ``weighted`` in the same pass, where the kernel can (the deployable
    neuron, t_ref = 0); returns whether it did (else the caller makes that sum). ``bias_sum`` (B, N, float64),
    if given and the neuron has a bias, receives the sum over the spikes of ``sum_k beta^(t-k)`` over the
    steps since the last reset (refractory steps hold it at 0): the reverse scan's ``sum_t lam_p[t]`` of the
    real spikes, the T-PSP's bias part per unit bias. (Placeholders for absent outputs: the never-read
    ``state["counts"]``.) ``lag`` 1: ``a`` holds a whole window's currents before the hop delay (the current of
    step t is ``a[:, t - 1]``, zero at step 0), read in place where the kernel can; first chunk only."""
    batch, steps, n = a.shape
    a = a.detach().contiguous()
    first = not state
    if lag and (not first or spec.t_ref):  # the refractory kernel reads hop-delayed currents: shift them here
        if not first:
            raise ValueError("lif_scan_chunk: lag is for a whole window (the first chunk)")
        a = torch.cat([a.new_zeros(batch, lag, n), a[:, :steps - lag]], 1)
        lag = 0
    if first:  # the state and the per-neuron parameters as numpy arrays, made once per window (not per chunk)
        rec_t = (rec_weight.detach().t().to(a.dtype).contiguous() if rec_weight is not None
                 else torch.zeros(1, 1, dtype=a.dtype))
        state["s"] = torch.zeros(batch, n, dtype=torch.bool)
        state["args"] = (*_spec_arrays(spec, n, a.dtype),
                         spec.bias is not None, int(spec.t_ref), _unit(a.dtype), np.zeros((batch, n), a.numpy().dtype),
                         np.zeros((batch, n), a.numpy().dtype), np.zeros((batch, n), np.int64))
        state["rec"] = (rec_t.numpy(), rec_weight is not None, state["s"].numpy())
        state["counts"] = np.zeros((batch, n), np.float64)
        state["wbias"] = np.zeros((batch, n), a.numpy().dtype)
    if a.numel() and not spec.t_ref:
        alpha, beta, vth, bias, has_bias, _, unit, u, v, _ = state["args"]
        weights, tw, tsum = 0, unit.reshape(1, 1), state["counts"]  # (placeholders, never read, when not weighted)
        if time_weights is not None:
            tw = time_weights.detach().to(a.dtype).contiguous().numpy()
            weights, tsum = (1 if tw.shape[1] == 1 else 2), weighted.numpy()
        _scan("plain_lif", has_bias, rec_weight is not None, weights)(
            a.numpy(), alpha, beta, vth, bias, unit, u, v, spikes.numpy(), vsum.numpy(),
            state["counts"] if counts is None else counts.numpy(), state["rec"][0], state["rec"][2], first, tw, tsum,
            state["wbias"], state["counts"] if bias_sum is None else bias_sum.numpy(), int(lag))
        return time_weights is not None
    if a.numel():
        _scan("lif")(a.numpy(), *state["args"], spikes.numpy(), vsum.numpy(),
                     state["counts"] if counts is None else counts.numpy(), *state["rec"], first, state["wbias"],
                     state["counts"] if bias_sum is None else bias_sum.numpy())
    return False


def _work_buffer(work: dict | None, name: str, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised contiguous tensor of ``shape``: a view of ``work[name]`` (grown when too small), or a new
    one without ``work``."""
    if work is None:
        return torch.empty(shape, dtype=dtype)
    size = math.prod(shape)  # numpy's prod of a tuple costs an array and a reduction per call
    buf = work.get(name)
    if buf is None or buf.dtype != dtype or buf.numel() < size:
        buf = work[name] = torch.empty(size, dtype=dtype)
    return buf[:size].view(shape)


def adjoint_scan_chunk(post: torch.Tensor, t0: int, t1: int, spec, dtype: torch.dtype, state: dict,
                       lu_sum: torch.Tensor, lp_sum: torch.Tensor, want_lam_p: bool = False,
                       virtual: torch.Tensor | None = None, scale: torch.Tensor | None = None,
                       work: dict | None = None):
    """Steps [t0, t1) of the reverse recursion of ``spsp.spsp_adjoint`` over the post trains ``post`` (B, T, N,
    bool or 0/1 float; the whole window, for the refractory look-back), chunks called last first with one
    ``state`` ({} at the first call). Returns ``(lam_u, lam_p or None)``, each (B, t1 - t0, N) in ``dtype``,
    and adds their sums over the chunk (lam_u's without step 0) to ``lu_sum`` / ``lp_sum`` (B, N, float64; both
    None: not wanted, and the deployable neuron's scan then leaves them out).
    ``virtual`` (B, N), if given, gives the neurons with a count there (capped by ``spsp.virtual_counts``) the
    trains ``spsp.evenly_spaced_spikes(T, virtual, t_ref)``, made on the fly rather than as a (B, T, N) tensor;
    those neurons must have no spikes in ``post`` (HM2-BP's virtual spikes are for silent neurons). ``scale``
    (B, N) of ``dtype``, if given, multiplies the returned ``lam_u`` per neuron (rounded once, as ``lam_u *
    scale.unsqueeze(1)``; the sums are the kernel's own), which saves the caller a pass over the block. ``work``
    (a dict the caller keeps between calls), if given, holds the buffers of ``lam_u`` and of the virtual spikes,
    reused by the next call with it (which overwrites the ``lam_u`` returned here): a block of a window's size
    allocated anew each call is memory the process touches for the first time (a page fault per 4 KiB)."""
    batch, steps, n = post.shape
    post = post.detach()
    if post.dtype != torch.bool:
        post = post != 0
    if not post.is_contiguous():
        post = post.contiguous()
    if not state:  # made once per window (not per chunk)
        np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
        state["args"] = (int(spec.t_ref), *_spec_arrays(spec, n, dtype)[:2],
                         _unit(dtype), np.zeros((batch, n), np_dtype), np.zeros((batch, n), np_dtype))
        if virtual is not None:  # the virtual trains' state, apart
            state["virtual"] = (virtual.detach().to(torch.int64).contiguous().numpy(), np.zeros((batch, n), np_dtype),
                                np.zeros((batch, n), np_dtype))
    t_ref, alpha, beta, unit, _, _ = state["args"]
    summed = lu_sum is not None
    if summed:
        lu_sum, lp_sum = lu_sum.numpy(), lp_sum.numpy()
    elif t_ref == 0 and not want_lam_p:  # placeholders the scan does not read
        lu_sum = lp_sum = np.zeros((1, 1), np.float64)
    else:  # the other scans always sum: into arrays dropped after the call
        lu_sum, lp_sum = np.zeros((batch, n), np.float64), np.zeros((batch, n), np.float64)
    lam_u = _work_buffer(work, "lam_u", (batch, t1 - t0, n), dtype)
    lam_p = torch.empty(batch, t1 - t0, n, dtype=dtype) if want_lam_p else torch.empty(0, 0, 0, dtype=dtype)
    scaled = scale is not None
    sc = scale.detach().to(dtype).contiguous().numpy() if scaled else np.zeros((1, 1), unit.dtype)
    if lam_u.numel() and t_ref == 0 and not want_lam_p:  # the deployable neuron: the vectorised scan
        virt = np.zeros((1, 1, 1), np.bool_)
        if "virtual" in state:  # the block's virtual spikes, read in the scan's own loop
            virt = _work_buffer(work, "virtual", (batch, t1 - t0, n), torch.bool).numpy()
            virt.fill(False)
            _virtual_block(steps, state["virtual"][0], int(t0), int(t1), virt)
        _scan("plain_adjoint", summed)(post.numpy(), int(t0), int(t1), alpha, beta, unit, *state["args"][4:],
                                       lam_u.numpy(), lu_sum, lp_sum, sc, scaled, virt, "virtual" in state)
    elif lam_u.numel():
        _scan("adjoint")(post.numpy(), int(t0), int(t1), *state["args"], lam_u.numpy(), lam_p.numpy(),
                         bool(want_lam_p), lu_sum, lp_sum, sc, scaled)
        if "virtual" in state:
            virt, vlp, vlu = state["virtual"]
            _scan("adjoint_virtual")(steps, virt, int(t0), int(t1), t_ref, alpha, beta, unit, vlp, vlu, lam_u.numpy(),
                                     lam_p.numpy(), bool(want_lam_p), lu_sum, lp_sum, sc, scaled)
    return lam_u, (lam_p if want_lam_p else None)
