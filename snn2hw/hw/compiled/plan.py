"""Lowering a graph's projections into the flat arrays the network kernel reads (``NetworkSpec``): narrow
weight rows, per-source conv segments, which projections run as input stages."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from snn2hw.hw.compiled import input_stages, runtime
from snn2hw.hw.compiled.twins import numba

_kernels: dict = {}

# --- whole networks, step by step ----------------------------------------------------------------------
# Dense projections keep their prepared weights as (src, dst) rows of the narrowest integer type that
# holds them after dividing out their common power of two (Loihi's 8-bit weights on the mixed-sign grid
# are even: 1 byte each), so an event-driven step reads an eighth of what int64 rows cost. Each row is a
# sum of a subset of one output's weights, so accumulating in int32 is exact whenever the largest sum of
# |w| times the largest input is below 2**31 (else int64). A convolution keeps, per source, segments:
# for each kernel tap, the tap's weights over the output channels, added to channels-last sums (see
# Projection); an event adds exactly the weights Lava's Conv would multiply by that input, so the sum is
# the same integer.
_PRECOMPUTE_MIN_SYNAPSES = 0


class NetworkSpec(NamedTuple):
    """A graph flattened for ``network_scan``: populations side by side in one neuron axis, inputs side
    by side in another, projections as index ranges into them and one flat weight array."""

    pop_off: np.ndarray  # (P + 1,) first neuron of each population
    du: np.ndarray  # (P,) per population
    dv: np.ndarray
    vth_eff: np.ndarray
    bias_eff: np.ndarray  # (N,) per neuron
    src_kind: np.ndarray  # (K,) 0: an input, 1: a population
    src_off: np.ndarray  # first source index in the input or population axis
    src_n: np.ndarray
    dst_pop: np.ndarray  # target population index
    w_off: np.ndarray  # offset of projection k's weights in ``weights``
    weights: np.ndarray  # every projection's weights >> w_shift, concatenated, in the narrowest int type
    w_shift: np.ndarray  # (K,) the power of two divided out of projection k's weights
    row_ptr: np.ndarray  # (K,) segmented projection k: its (src_n + 1) segment starts are row_idx[row_ptr[k]:]
    row_idx: np.ndarray  # per segmented projection: segment starts (positions in row_idx), the segments as
    #                      (accumulator start, table start) pairs, then perm: where neuron j's sum is
    is_sparse: np.ndarray  # (K,) bool: segmented (a convolution)
    seg_len: np.ndarray  # (K,) weights per segment
    perm_off: np.ndarray  # (K,) where projection k's perm starts in row_idx
    weight_exp: np.ndarray
    graded: np.ndarray
    delayed: np.ndarray
    conv: np.ndarray  # (K,) bool: apply Lava Conv's output stage (int32 cast, 24-bit wrap) first
    plain: np.ndarray  # (K,) bool: the bound makes every message the shifted sum (plain_messages)
    lags: np.ndarray  # 1 + delay
    acc_dtype: np.dtype  # int32 where every bound allows it, else int64
    ready: np.ndarray  # (K,) bool: a binary input's projection, accumulated for all steps before the scan
    pre_off: np.ndarray  # (K,) its first column in those accumulations
    dense_convs: tuple = ()  # (K,) a ready convolution's taps for the dense input stage (dense_conv_taps), or None
    dense_pools: tuple = ()  # (K,) a ready sum pooling's weights for the dense pooling stage (dense_pool_weights)
    table_convs: tuple = ()  # (K,) a ready convolution's pattern table (conv_message_table), or None
    pre_dtype: np.dtype | None = None  # the ready messages' type where narrower than acc_dtype (int16_messages)

    @property
    def weight_bytes(self) -> int:
        return int(self.weights.nbytes + self.row_idx.nbytes)

    @property
    def message_dtype(self) -> np.dtype:
        """The type of the buffer the input stages write the ready messages to and the scan reads."""
        return self.acc_dtype if self.pre_dtype is None else self.pre_dtype


# _STATE_NOTE: the network kernel keeps u, v and each step's summed input in int32 and passes du, dv as
# int16 and the bias and threshold as int32 where they fit (``_narrow``). That is exact: the input is a
# sum of int32-wrapped messages wrapped again (add_messages); u leaves lif_step wrapped to int32 and then
# moved by at most 2**24 towards 0 (wrap_u24_once); v is saturated to 24 bits; vth << 6 < 2**23. These
# are the domain of loihi2's formulas, which compute every value as an int32 word; with int32 loads
# and stores as well, LLVM runs the whole update in 32-bit lanes (see _neuron_updater).
def _narrow(values, dtype) -> np.ndarray:
    """``values`` as an array of ``dtype`` where every value fits, else as int64."""
    arr = np.asarray(values, dtype=np.int64)
    info = np.iinfo(dtype)
    fits = arr.size == 0 or (int(arr.min()) >= info.min and int(arr.max()) <= info.max)
    return arr.astype(dtype) if fits else arr


def _narrowest_int(lo: int, hi: int) -> np.dtype:
    for dt in (np.int8, np.int16, np.int32):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dt)
    return np.dtype(np.int64)


def common_shift(w: np.ndarray) -> int:
    """The largest k with every entry of integer ``w`` a multiple of 2**k (0 for an all-zero ``w``)."""
    nz = w[w != 0]
    if nz.size == 0:
        return 0
    low = int(np.bitwise_or.reduce(np.bitwise_and(nz, -nz)))
    return (low & -low).bit_length() - 1


class Projection(NamedTuple):
    """One projection as ``network_spec`` takes it.

    Dense: ``weight`` (dst, src) holding integers (any int or float dtype; the prepared weights), all
    multiples of ``2**shift``, within ``[lo, hi]``. Segmented (a convolution):
    ``csr = (ptr, seg_acc, seg_w, table, length, perm)``: source i adds, for each segment q in
    ``ptr[i]:ptr[i + 1]``, ``table[seg_w[q]:seg_w[q] + length]`` to the sums at ``seg_acc[q]:...+length``;
    neuron j's sum is at ``perm[j]``. ``bound``: the largest sum
    of |w| into one target times the largest input magnitude (every partial sum is below it)."""

    src_kind: int  # 0: an input, 1: a population
    src_off: int
    src_n: int
    dst_pop: int
    weight_exp: int
    graded: bool
    delayed: bool
    conv: bool
    lag: int
    bound: int
    weight: object = None
    shift: int = 0
    lo: int = 0
    hi: int = 0
    csr: tuple | None = None
    geometry: tuple | None = None  # a convolution's (kernel (O, C/g, kh, kw), in_shape, stride, padding,
    #                                dilation, groups): lets a binary input's conv take the dense path


def plain_messages(pr: Projection) -> bool:
    """Whether projection ``pr``'s bound makes each of its messages the plain shifted sum: a binary
    projection whose sums stay below ``2**23`` in magnitude (so Lava Conv's int32 cast and 24-bit wrap,
    for a convolution, leave them unchanged) and below ``2**31`` after ``synaptic_output``'s shift by
    ``weight_exp`` (so its int32 wrap does too). Every sum is a sum of some of one target's weights, so
    its magnitude is at most ``bound``. The network kernel then forms those messages in 32-bit lanes
    without the formulas' range checks and wraps (the same integers)."""
    if pr.graded:
        return False
    limit = 1 << 23 if pr.conv else 1 << 31
    return pr.bound < limit and (pr.bound << max(pr.weight_exp, 0)) < 1 << 31


def int16_messages(pr: Projection, table, pool, dense_conv) -> bool:
    """Whether ready projection ``pr``'s stage writes nothing but messages that all fit int16: the
    pattern-table stage (``table``: its messages are the table's entries), or the dense pooling stage
    (``pool``) or dense int32 conv stage (``dense_conv``; both sum in their own int32 arrays) with plain
    messages, whose magnitude is at most ``bound`` shifted by ``weight_exp`` (one more for an arithmetic
    right shift of a negative sum). The event segments and dense projections keep partial sums in the
    message buffer."""
    if table is not None:
        return table[0].size == 0 or (int(table[0].min()) >= -2**15 and int(table[0].max()) < 2**15)
    if (pool is not None or dense_conv is not None) and plain_messages(pr):
        e = pr.weight_exp
        return ((pr.bound << max(e, 0)) >> max(-e, 0)) + 1 < 2**15
    return False


def _pack_kernel():
    if "pack" in _kernels:
        return _kernels["pack"]

    @numba.njit(parallel=True, nogil=True, boundscheck=False, cache=True)
    def pack(w, shift, out):
        """out (src, dst) = w (dst, src) transposed, >> shift, in out's dtype; 64x64 tiles."""
        nd, ns = w.shape
        tiles_d = (nd + 63) // 64
        for tile in numba.prange(((ns + 63) // 64) * tiles_d):
            i0 = (tile // tiles_d) * 64
            j0 = (tile % tiles_d) * 64
            for i in range(i0, min(i0 + 64, ns)):
                o = out[i]
                for j in range(j0, min(j0 + 64, nd)):
                    o[j] = np.int64(w[j, i]) >> shift

    _kernels["pack"] = pack
    return pack


def network_spec(pop_off, du, dv, vth_eff, bias_eff, projections: list[Projection]) -> NetworkSpec:
    """Pack projections (and per-neuron parameters) into a ``NetworkSpec``: one pass over each weight."""
    sizes, shifts, ranges, csrs = [], [], [], []
    for pr in projections:
        if pr.csr is not None:
            ptr, seg_acc, seg_w, table, length, perm = pr.csr
            table = np.asarray(table, dtype=np.int64)
            sh = common_shift(table)
            table = table >> sh
            csrs.append((np.asarray(ptr, dtype=np.int64), np.asarray(seg_acc, dtype=np.int64),
                         np.asarray(seg_w, dtype=np.int64), table, int(length), np.asarray(perm, dtype=np.int64)))
            ranges += [int(table.min()) if table.size else 0, int(table.max()) if table.size else 0]
            sizes.append(table.size)
        else:
            sh = pr.shift
            csrs.append(None)
            ranges += [pr.lo >> sh, pr.hi >> sh]
            sizes.append(pr.src_n * (int(pop_off[pr.dst_pop + 1]) - int(pop_off[pr.dst_pop])))
        shifts.append(sh)
    dtype = _narrowest_int(min(ranges + [0]), max(ranges + [0]))
    w_off = np.cumsum([0] + sizes).astype(np.int64)
    weights = np.empty(int(w_off[-1]), dtype=dtype)
    idx_parts, ptrs, perm_offs, lens, idx_len = [], [], [], [], 0
    for k, (pr, csr) in enumerate(zip(projections, csrs)):
        seg = weights[w_off[k]:w_off[k + 1]]
        if csr is None:
            ptrs.append(0)
            perm_offs.append(0)
            lens.append(0)
            w = pr.weight.numpy() if isinstance(pr.weight, torch.Tensor) else np.asarray(pr.weight)
            if seg.size:
                runtime._set_threads(runtime._threads())
                _pack_kernel()(w, pr.shift, seg.reshape(pr.src_n, -1))
        else:
            ptr, seg_acc, seg_w, table, length, perm = csr
            seg[:] = table
            ptrs.append(idx_len)
            lens.append(length)
            pairs = np.stack([seg_acc, seg_w], axis=1).reshape(-1)
            # segment starts as absolute positions in row_idx, where this projection's pairs follow them
            idx_parts += [2 * ptr + idx_len + ptr.size, pairs, perm]
            perm_offs.append(idx_len + ptr.size + pairs.size)
            idx_len += ptr.size + pairs.size + perm.size
    # int32 indices (half the bytes an event reads beside its weights) while every position fits
    idx_type = np.int32 if idx_len < 2**31 else np.int64
    row_idx = np.concatenate(idx_parts).astype(idx_type) if idx_parts else np.zeros(1, dtype=idx_type)
    # payloads of graded inputs are not bounded by the kernel's caller: their sums take int64
    wide = any(pr.graded for pr in projections) or max([pr.bound for pr in projections] + [0]) >= 2**31
    acc_dtype = np.dtype(np.int64) if wide else np.dtype(np.int32)
    # A binary input's projection (dense or a convolution) is turned into messages for all steps at
    # once, before the scan: its sources are known in advance, so both threads share the work even for
    # a single sample, and the scan only adds the ready messages (see _input_messages)
    ready = [pr.src_kind == 0 and not pr.graded and size >= _PRECOMPUTE_MIN_SYNAPSES
             for pr, size in zip(projections, sizes)]
    pre_off = np.cumsum([0] + [int(pop_off[pr.dst_pop + 1] - pop_off[pr.dst_pop]) if r else 0
                               for pr, r in zip(projections, ready)]).astype(np.int64)
    # A ready convolution whose sums fit int32 takes the dense input stage (see dense_conv_taps)
    dense = [r and pr.geometry is not None and pr.bound < 2**31 and input_stages._DENSE_INPUT_CONV
             for pr, r in zip(projections, ready)]
    # ... and a sum pooling takes the dense pooling stage: window counts from contiguous row sums
    # (measured ... less CPU than the dense conv stage's per-row strided runs on the benchmark's pooling)
    dense_pools = tuple(input_stages.dense_pool_weights(pr.geometry) if d and input_stages._DENSE_INPUT_POOL else None
                        for pr, d in zip(projections, dense))
    dense_convs = tuple(input_stages.dense_conv_taps(pr.geometry) if d and pool is None else None
                        for pr, d, pool in zip(projections, dense, dense_pools))
    # ... and a convolution with a narrow patch reads its messages from a table (any bound: the table
    # holds the exact messages), ahead of both
    table_convs = tuple(input_stages.conv_message_table(pr.geometry, pr.weight_exp, pr.delayed, pr.conv, acc_dtype)
                        if r and pr.geometry is not None and pool is None and input_stages._TABLE_INPUT_CONV else None
                        for pr, r, pool in zip(projections, ready, dense_pools))

    # The ready messages in int16 where every one of them fits: the stages write, and the scan reads, half
    # the bytes (the pattern-table stage alone 1.2x, the pooling stage 1.17x less CPU, one process, under
    # load); a message is the same integer in either type.
    narrow = input_stages._NARROW_MESSAGES and any(ready) and all(
        int16_messages(pr, table, pool, dc)
        for pr, r, table, pool, dc in zip(projections, ready, table_convs, dense_pools, dense_convs) if r)
    pre_dtype = np.dtype(np.int16) if narrow else None

    def ints(f):
        return np.asarray([f(pr) for pr in projections], dtype=np.int64)

    def flags(f):
        return np.asarray([bool(f(pr)) for pr in projections], dtype=np.bool_)

    return NetworkSpec(
        pop_off=np.asarray(pop_off, dtype=np.int64), du=_narrow(du, np.int16), dv=_narrow(dv, np.int16),
        vth_eff=_narrow(vth_eff, np.int32), bias_eff=_narrow(bias_eff, np.int32),
        src_kind=ints(lambda p: p.src_kind), src_off=ints(lambda p: p.src_off), src_n=ints(lambda p: p.src_n),
        dst_pop=ints(lambda p: p.dst_pop), w_off=w_off[:-1].copy(), weights=weights,
        w_shift=np.asarray(shifts, dtype=np.int64), row_ptr=np.asarray(ptrs, dtype=np.int64), row_idx=row_idx,
        is_sparse=flags(lambda p: p.csr is not None), seg_len=np.asarray(lens, dtype=np.int64),
        perm_off=np.asarray(perm_offs, dtype=np.int64), weight_exp=ints(lambda p: p.weight_exp),
        graded=flags(lambda p: p.graded), delayed=flags(lambda p: p.delayed), conv=flags(lambda p: p.conv),
        plain=flags(plain_messages),
        lags=ints(lambda p: p.lag), acc_dtype=acc_dtype, ready=np.asarray(ready, dtype=np.bool_),
        pre_off=pre_off, dense_convs=dense_convs, dense_pools=dense_pools, table_convs=table_convs,
        pre_dtype=pre_dtype,
    )
