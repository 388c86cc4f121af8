"""The input stages of the network kernel: a binary input's projections (dense, a convolution as event
segments or densely, a sum pooling densely) turned into messages for every step before the scan, on all
threads even for one sample (``_input_messages``)."""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import numpy as np
import torch

from snn2hw.hw import loihi2
from snn2hw.hw.compiled import products, twins
from snn2hw.hw.compiled.twins import numba

if TYPE_CHECKING:
    from snn2hw.hw.compiled.plan import NetworkSpec

_kernels: dict = {}
_lif_step = _lif_step_counted = _synaptic_output = _add_messages = _conv_output = None  # twins.bind
_add_rows = None  # products._row_adder(), set by _input_kernels()

# A binary input's dense projection whose weights are at least this large splits its columns over the
# threads (each core's share then stays in its L2 cache), smaller ones split the steps.
_SPLIT_COLUMNS_BYTES = 1 << 18



# A binary input's convolution whose sums fit int32 is computed densely before the scan (below) rather
# than from per-source event segments: measured 3-8x less CPU time per image on the benchmark's sum
# pooling and 3x3 conv at 10 % input density (the dense loops vectorise; events scatter). Tests switch
# it off to compare with the event path.
_DENSE_INPUT_CONV = True
_DENSE_INPUT_POOL = True  # the same for a sum pooling's dense pooling stage (dense_pool_weights)
# Tiled 2-wide sum poolings on rows of whole uint64 words take the word pass (input_pool_dense); tests switch
# it off to compare with the byte pass. The word pass reads a word's 16-bit lanes in memory order.
_POOL_WORDS = True
# The ready messages go to an int16 buffer where every one of them fits (plan.int16_messages); tests switch it
# off to compare with the buffer of the accumulator's type.
_NARROW_MESSAGES = True
_LITTLE_ENDIAN = sys.byteorder == "little"


def _conv_shape(geometry) -> tuple:
    """``(kernel int64, O, C/groups, kh, kw, O/groups, Hp, Wp, Ho, Wo)`` of a convolution's geometry."""
    kernel, (ch, h, w), (sy, sx), (py, px), (dy, dx), groups = geometry
    kernel = np.asarray(kernel, dtype=np.int64)
    o_n, cg, kh, kw = kernel.shape
    hp, wp = h + 2 * py, w + 2 * px
    ho = (hp - dy * (kh - 1) - 1) // sy + 1
    wo = (wp - dx * (kw - 1) - 1) // sx + 1
    return kernel, o_n, cg, kh, kw, o_n // groups, hp, wp, ho, wo


def dense_conv_taps(geometry) -> tuple:
    """A convolution as the dense input stage takes it: ``(weights (O, T) int32, offsets (O, T) int64,
    taps (O,) int64, dims int64)``: for each output channel its non-zero kernel taps, each as a weight
    and the offset of its first input in the zero-padded image (C, Hp, Wp) flattened, and
    ``dims = (C, H, W, py, px, Hp, Wp, sy, sx, Ho, Wo)``."""
    kernel, (ch, h, w), (sy, sx), (py, px), (dy, dx), groups = geometry
    kernel, o_n, cg, kh, kw, og, hp, wp, ho, wo = _conv_shape(geometry)
    taps = np.zeros(o_n, dtype=np.int64)
    weights = np.zeros((o_n, max(1, cg * kh * kw)), dtype=np.int32)
    offsets = np.zeros((o_n, max(1, cg * kh * kw)), dtype=np.int64)
    for o in range(o_n):
        c0 = (o // og) * cg
        for c in range(cg):
            for ky in range(kh):
                for kx in range(kw):
                    if kernel[o, c, ky, kx]:
                        m = taps[o]
                        weights[o, m] = kernel[o, c, ky, kx]
                        offsets[o, m] = ((c0 + c) * hp + ky * dy) * wp + kx * dx
                        taps[o] = m + 1
    dims = np.array([ch, h, w, py, px, hp, wp, sy, sx, ho, wo], dtype=np.int64)
    return weights, offsets, taps, dims


def dense_pool_weights(geometry) -> tuple | None:
    """A sum pooling (``ir.sum_pool2d``: one channel per group, all of a channel's taps one value, no
    dilation) as the dense pooling stage takes it: ``(weights (C,) int64, dims int64)`` with
    ``dims = (C, H, W, py, px, kh, kw, sy, sx, Ho, Wo)``; None for any other convolution."""
    kernel, (ch, h, w), (sy, sx), (py, px), (dy, dx), groups = geometry
    kernel = np.asarray(kernel, dtype=np.int64)
    o_n, cg, kh, kw = kernel.shape
    if not (cg == 1 and o_n == groups == ch and dy == dx == 1) or kernel.size == 0:
        return None
    per_channel = kernel.reshape(o_n, -1)
    if not (per_channel == per_channel[:, :1]).all():
        return None
    ho = (h + 2 * py - kh) // sy + 1
    wo = (w + 2 * px - kw) // sx + 1
    dims = np.array([ch, h, w, py, px, kh, kw, sy, sx, ho, wo], dtype=np.int64)
    return per_channel[:, 0].copy(), dims
# A binary input's convolution whose group patch (input channels per group x kernel taps, all-zero taps
# left out) has at most this many taps takes the pattern-table stage (conv_message_table): each output
# position's patch of 0/1 inputs is a number below 2**bits, and every output channel's message is read
# from a table of 2**bits entries formed when the graph is prepared.
_TABLE_INPUT_CONV = True
_TABLE_BITS = 10
_TABLE_MAX_ENTRIES = 1 << 16  # output channels x 2**bits (256 KiB of int32 messages)


def conv_message_table(geometry, weight_exp: int, delayed: bool, conv: bool, dtype) -> tuple | None:
    """A binary input's convolution as the pattern-table stage takes it, or None where the patch is too
    wide (``_TABLE_BITS``, ``_TABLE_MAX_ENTRIES``).

    Returns ``(table (O, 2**bits) dtype, offsets (groups, bits) int64, taps (groups,) int64, dims int64)``
    with ``dims = (C, H, W, py, px, Hp, Wp, sy, sx, Ho, Wo, groups, O / groups)``. Group g's taps are the
    (input channel, ky, kx) of its kernels that are non-zero for at least one of its output channels; tap
    i's offset is the position of its input in the zero-padded image (C, Hp, Wp) flattened, relative to
    output position (0, 0). An output position's pattern has bit i set when tap i's input is 1, and
    ``table[o, pattern]`` is output channel o's message for it: the exact sum of those taps' weights
    (int64), then Lava Conv's output stage (``conv``), then ``synaptic_output`` (binary), computed here
    with loihi2's own formulas. So the stage needs no bound on the sums: it is exact for any weights."""
    kernel, (ch, h, w), (sy, sx), (py, px), (dy, dx), groups = geometry
    kernel, o_n, cg, kh, kw, og, hp, wp, ho, wo = _conv_shape(geometry)
    flat = kernel.reshape(groups, og, cg * kh * kw)
    used = [np.flatnonzero((flat[g] != 0).any(axis=0)) for g in range(groups)]
    bits = max([len(u) for u in used] + [0])
    if bits > _TABLE_BITS or o_n << bits > _TABLE_MAX_ENTRIES:
        return None
    offsets = np.zeros((groups, max(bits, 1)), dtype=np.int64)
    taps = np.array([len(u) for u in used], dtype=np.int64)
    patterns = (np.arange(1 << bits)[:, None] >> np.arange(bits)[None, :]) & 1  # (2**bits, bits)
    sums = np.zeros((o_n, 1 << bits), dtype=np.int64)
    for g, u in enumerate(used):
        c, rest = np.divmod(u, kh * kw)
        ky, kx = np.divmod(rest, kw)
        offsets[g, :len(u)] = ((g * cg + c) * hp + ky * dy) * wp + kx * dx
        sums[g * og:(g + 1) * og] = flat[g][:, u] @ patterns[:, :len(u)].T  # exact: int64, |w| < 2**31
    x = torch.from_numpy(sums)
    if conv:
        x = loihi2.conv_output(x)
    table = loihi2.synaptic_output(x, int(weight_exp), False, bool(delayed)).numpy().astype(dtype)
    dims = np.array([ch, h, w, py, px, hp, wp, sy, sx, ho, wo, groups, og], dtype=np.int64)
    return table, offsets, taps, dims


def _input_kernels():
    """The pre-pass kernels: (a binary input's dense projection, its convolution as events, its
    convolution densely, its sum pooling densely) to messages."""
    if "input" in _kernels:
        return _kernels["input"]
    fingerprint = twins.bind(globals())
    global _add_rows
    _add_rows = products._row_adder()

    @numba.njit(parallel=True, nogil=True, boundscheck=False, cache=True)
    def input_messages(s, w, sh, e, dl, out, col_blocks, step_blocks):
        """out[b, t] = the message ``synaptic_output((s[b, t] @ w) << sh)`` of a binary input's dense
        projection, for every step: the rows of w of the active sources added up (as the network
        kernel adds them), then formed into messages. Jobs: samples x column blocks x step blocks."""
        _key = fingerprint  # puts the formulas' fingerprint into the cache key
        batch, steps, n_in = s.shape
        nd = w.shape[1]
        per_b = col_blocks * step_blocks
        for job in numba.prange(batch * per_b):
            b = job // per_b
            cb = (job % per_b) // step_blocks
            sb = job % step_blocks
            c0 = cb * nd // col_blocks
            c1 = (cb + 1) * nd // col_blocks
            active = np.empty(n_in, dtype=np.int64)
            for t in range(sb * steps // step_blocks, (sb + 1) * steps // step_blocks):
                sr = s[b, t]
                m = 0
                for i in range(n_in):
                    active[m] = i
                    m += sr[i]
                o = out[b, t, c0:c1]
                _add_rows(o, w, active, 0, m, c0, c1)
                for j in range(c1 - c0):
                    o[j] = _synaptic_output(np.int64(o[j]) << sh, e, False, dl)

    @numba.njit(parallel=True, nogil=True, boundscheck=False, cache=True)
    def input_conv_messages(s, table, row_idx, r0, ln, po, cv, sh, e, dl, out, scratch, step_blocks):
        """out[b, t] = the messages of a binary input's convolution (per-source segments, as the network
        kernel adds them; Lava Conv's output stage, then ``synaptic_output``), in neuron order, for
        every step. Jobs: samples x step blocks, each with its own row of ``scratch`` for the sums."""
        _key = fingerprint  # puts the formulas' fingerprint into the cache key
        batch, steps, n_in = s.shape
        nd = out.shape[2]
        for job in numba.prange(batch * step_blocks):
            b = job // step_blocks
            sb = job % step_blocks
            acc = scratch[job]
            active = np.empty(n_in, dtype=np.int64)
            for t in range(sb * steps // step_blocks, (sb + 1) * steps // step_blocks):
                for j in range(nd):
                    acc[j] = 0
                sr = s[b, t]
                m = 0
                for i in range(n_in):
                    active[m] = i
                    m += sr[i]
                for q in range(m):
                    i = active[q]
                    if ln == 1:  # depthwise (sum pooling): one weight per segment
                        for g in range(row_idx[r0 + i], row_idx[r0 + i + 1], 2):
                            acc[row_idx[g]] += table[row_idx[g + 1]]
                        continue
                    for g in range(row_idx[r0 + i], row_idx[r0 + i + 1], 2):
                        ac = acc[row_idx[g]:row_idx[g] + ln]
                        ws = table[row_idx[g + 1]:row_idx[g + 1] + ln]
                        for c in range(ln):
                            ac[c] += ws[c]
                o = out[b, t]
                for j in range(nd):  # the sums are channels-last: neuron j's is at perm[j]
                    x = np.int64(acc[row_idx[po + j]]) << sh
                    if cv:  # a Conv's own output stage comes first
                        x = _conv_output(x)
                    o[j] = _synaptic_output(x, e, False, dl)

    @numba.njit(parallel=True, nogil=True, boundscheck=False, cache=True)
    def input_conv_dense(s, tw, toff, taps, dims, cv, e, dl, plain, out, step_blocks):
        """out[b, t] = the messages of a binary input's convolution, computed densely: each image is
        copied into a zero-padded int32 plane of masks (0 or -1), and each output channel's sums are,
        for every non-zero tap, ``w & mask`` added over a contiguous run of the plane (all output rows
        at once when the row stride is 1, else one run per output row, at the input's resolution in x;
        every sx-th column is an output). Four taps per pass over the sums, which bound the loop. Every
        partial sum is a sum of some of one output's weights, so int32 is exact under the caller's
        bound (< 2**31). Then Lava Conv's output stage and ``synaptic_output``, in neuron order
        (channel, y, x). Jobs: samples x step blocks, each with its own planes."""
        _key = fingerprint  # puts the formulas' fingerprint into the cache key
        batch, steps, _ = s.shape
        ch, h, w, py, px, hp, wp, sy, sx, ho, wo = (dims[0], dims[1], dims[2], dims[3], dims[4], dims[5],
                                                    dims[6], dims[7], dims[8], dims[9], dims[10])
        o_n = tw.shape[0]
        lw = (wo - 1) * sx + 1  # the input-resolution columns an output row spans
        runs = 1 if sy == 1 else ho
        run = (ho - 1) * wp + lw if sy == 1 else lw
        ls = max(e, 0)
        rs = max(-e, 0)
        for job in numba.prange(batch * step_blocks):
            b = job // step_blocks
            sb = job % step_blocks
            plane = np.zeros(ch * hp * wp, dtype=np.int32)  # the padding stays 0
            acc = np.empty(ho * wp, dtype=np.int32)
            for t in range(sb * steps // step_blocks, (sb + 1) * steps // step_blocks):
                img = s[b, t]
                for c in range(ch):
                    for y in range(h):
                        src = img[(c * h + y) * w:(c * h + y + 1) * w]
                        dst = plane[(c * hp + y + py) * wp + px:(c * hp + y + py) * wp + px + w]
                        for i in range(w):
                            dst[i] = -np.int32(src[i])
                o = out[b, t]
                for oc in range(o_n):
                    for f in range(ho * wp):
                        acc[f] = 0
                    nt = taps[oc]
                    for r in range(runs):
                        a = acc[r * wp:r * wp + run]
                        base = r * sy * wp
                        q = 0
                        while q + 4 <= nt:
                            w0 = tw[oc, q]
                            w1 = tw[oc, q + 1]
                            w2 = tw[oc, q + 2]
                            w3 = tw[oc, q + 3]
                            s0 = plane[base + toff[oc, q]:base + toff[oc, q] + run]
                            s1 = plane[base + toff[oc, q + 1]:base + toff[oc, q + 1] + run]
                            s2 = plane[base + toff[oc, q + 2]:base + toff[oc, q + 2] + run]
                            s3 = plane[base + toff[oc, q + 3]:base + toff[oc, q + 3] + run]
                            for f in range(run):
                                a[f] += ((w0 & s0[f]) + (w1 & s1[f])) + ((w2 & s2[f]) + (w3 & s3[f]))
                            q += 4
                        while q < nt:
                            w0 = tw[oc, q]
                            s0 = plane[base + toff[oc, q]:base + toff[oc, q] + run]
                            for f in range(run):
                                a[f] += w0 & s0[f]
                            q += 1
                    ob = oc * ho * wo
                    # one row loop per case, the branches outside it (as in input_conv_table)
                    if plain and sx == 1:  # the bound makes the message the shifted sum
                        for y in range(ho):
                            orow = o[ob + y * wo:ob + (y + 1) * wo]
                            arow = acc[y * wp:y * wp + wo]
                            for x in range(wo):
                                orow[x] = np.int32(np.int32(arow[x] << ls) >> rs)
                    elif plain:
                        for y in range(ho):
                            orow = o[ob + y * wo:ob + (y + 1) * wo]
                            for x in range(wo):
                                orow[x] = np.int32(np.int32(acc[y * wp + x * sx] << ls) >> rs)
                    elif sx == 1:  # a contiguous row of sums: this loop vectorises (measured 1.6x less
                        for y in range(ho):  # CPU time for the whole stage on a 3x3 conv)
                            orow = o[ob + y * wo:ob + (y + 1) * wo]
                            arow = acc[y * wp:y * wp + wo]
                            for x in range(wo):
                                v = np.int64(arow[x])
                                if cv:  # a Conv's own output stage comes first
                                    v = _conv_output(v)
                                orow[x] = _synaptic_output(v, e, False, dl)
                    else:  # every sx-th column (gathering them into a row first measured no faster)
                        for y in range(ho):
                            orow = o[ob + y * wo:ob + (y + 1) * wo]
                            for x in range(wo):
                                v = np.int64(acc[y * wp + x * sx])
                                if cv:
                                    v = _conv_output(v)
                                orow[x] = _synaptic_output(v, e, False, dl)

    @numba.njit(nogil=True, boundscheck=False, cache=True)
    def _pool_messages(cnt, pw, ch, n, cv, e, dl, plain, ls, rs, o):
        """o = the messages of a tiled sum pooling's window counts ``cnt`` (channel, y, x; bytes or 16-bit
        lanes): each count times its channel's weight, then Lava Conv's output stage and
        ``synaptic_output``, one loop per channel."""
        _key = fingerprint  # puts the formulas' fingerprint into the cache key
        for c in range(ch):
            weight = np.int32(pw[c])
            cc = cnt[c * n:(c + 1) * n]
            oc = o[c * n:(c + 1) * n]
            if plain:  # the bound makes the message the shifted sum (plan.plain_messages)
                for f in range(n):
                    oc[f] = np.int32(np.int32(np.int32(np.int32(cc[f]) * weight) << ls) >> rs)
                continue
            for f in range(n):
                v = np.int32(np.int32(cc[f]) * weight)  # exact: below the bound, 2**31
                if cv:  # a Conv's own output stage comes first
                    v = _conv_output(v)
                oc[f] = _synaptic_output(v, e, False, dl)

    @numba.njit(parallel=True, nogil=True, boundscheck=False, cache=True)
    def input_pool_dense(s, pw, dims, cv, e, dl, plain, words, out, step_blocks):
        """out[b, t] = the messages of a binary input's sum pooling: for each channel and output row,
        the window's kh input rows added into a row of counts (contiguous loops; the padding columns stay
        0), then each output's kw counts added up and times the channel's weight, then Lava Conv's output
        stage and ``synaptic_output``, in neuron order (channel, y, x). Every sum is a window count
        (at most kh * kw) times one weight, exact in int64 (the caller's bound keeps it below 2**31, as
        for the dense conv stage). ``words``: tiled windows with kw = 2 on rows of a multiple of 8 pixels
        (little-endian) take the uint64-word pass below. Jobs: samples x step blocks."""
        _key = fingerprint  # puts the formulas' fingerprint into the cache key
        batch, steps, _ = s.shape
        ch, h, w, py, px, kh, kw, sy, sx, ho, wo = (dims[0], dims[1], dims[2], dims[3], dims[4], dims[5],
                                                    dims[6], dims[7], dims[8], dims[9], dims[10])
        # Windows that tile the image exactly (no padding, no overlap: the usual 2x2 sum pooling of even
        # sizes) take whole-image passes over bytes instead (a count is at most kh * kw < 256): each output
        # row's kh input rows added (32 lanes per AVX2 op), the kw columns of each output added in one loop
        # over the whole image, the messages in one loop per channel. The per-row loops below are 16-32
        # elements long, and their setup, not the adds, took most of the time.
        ls = max(e, 0)
        rs = max(-e, 0)
        tiled = py == 0 and px == 0 and kh == sy and kw == sx and h == ho * sy and w == wo * sx and kh * kw < 256
        # 2x2-style windows on rows of whole words: 8 pixels per uint64, each word's kh rows added in
        # byte lanes (a column's count is at most kh < 256: no carries between lanes), then the byte
        # pairs added into 16-bit lanes, which are then the counts of 4 outputs in order (little-endian),
        # in one flat loop over all the image's words: the byte pass's loops per output row, a few words
        # each, took longer than their adds (one thread, 4x32x32: 783 against 1061 CPU-ns per image)
        words = words and tiled and kw == 2 and w % 8 == 0
        wpr = w // 8  # words per input row
        n_words = ch * ho * wpr if words else 0
        m8 = np.uint64(0x00FF00FF00FF00FF)
        for job in numba.prange(batch * step_blocks):
            b = job // step_blocks
            sb = job % step_blocks
            row = np.zeros(w + 2 * px, dtype=np.int32)
            inner = row[px:px + w]
            count = np.empty(wo, dtype=np.int32)
            vert = np.empty(ch * ho * w if tiled and not words else 0, dtype=np.uint8)
            cnt = np.empty(ch * ho * wo if tiled and not words else 0, dtype=np.uint8)
            first = np.empty(n_words, dtype=np.int64)  # an output word's first input word
            for f in range(n_words):
                first[f] = (f // wpr) * kh * wpr + f % wpr
            pairs = np.empty(n_words, dtype=np.uint64)
            for t in range(sb * steps // step_blocks, (sb + 1) * steps // step_blocks):
                img = s[b, t]
                o = out[b, t]
                if words:
                    iw = img.view(np.uint64)
                    if kh == 2:
                        for f in range(n_words):
                            v = iw[first[f]] + iw[first[f] + wpr]
                            pairs[f] = (v & m8) + ((v >> np.uint64(8)) & m8)
                    else:
                        for f in range(n_words):
                            v = iw[first[f]]
                            for ky in range(1, kh):
                                v += iw[first[f] + ky * wpr]
                            pairs[f] = (v & m8) + ((v >> np.uint64(8)) & m8)
                    _pool_messages(pairs.view(np.uint16), pw, ch, ho * wo, cv, e, dl, plain, ls, rs, o)
                    continue
                if tiled:
                    for r in range(ch * ho):  # input rows r * kh ... r * kh + kh - 1 make output row r
                        dst = vert[r * w:(r + 1) * w]
                        src = img[r * kh * w:(r * kh + 1) * w]
                        for i in range(w):
                            dst[i] = src[i]
                        for ky in range(1, kh):
                            src = img[(r * kh + ky) * w:(r * kh + ky + 1) * w]
                            for i in range(w):
                                dst[i] += src[i]
                    if kw == 2:  # a literal stride: interleaved loads, which LLVM vectorises
                        for f in range(ch * ho * wo):
                            cnt[f] = vert[2 * f] + vert[2 * f + 1]
                    else:
                        for f in range(ch * ho * wo):
                            total = 0
                            for kx in range(kw):
                                total += vert[f * kw + kx]
                            cnt[f] = total
                    _pool_messages(cnt, pw, ch, ho * wo, cv, e, dl, plain, ls, rs, o)
                    continue
                for c in range(ch):
                    weight = pw[c]
                    for y in range(ho):
                        for i in range(w):
                            inner[i] = 0
                        for ky in range(kh):
                            iy = y * sy + ky - py
                            if 0 <= iy < h:
                                src = img[(c * h + iy) * w:(c * h + iy + 1) * w]
                                for i in range(w):
                                    inner[i] += src[i]
                        # a literal stride lets LLVM vectorise the strided reads (interleaved loads)
                        for kx in range(kw):
                            part = row[kx:]
                            if sx == 2:
                                for x in range(wo):
                                    count[x] = part[2 * x] if kx == 0 else count[x] + part[2 * x]
                            elif sx == 1:
                                for x in range(wo):
                                    count[x] = part[x] if kx == 0 else count[x] + part[x]
                            else:
                                for x in range(wo):
                                    count[x] = part[x * sx] if kx == 0 else count[x] + part[x * sx]
                        orow = o[(c * ho + y) * wo:(c * ho + y + 1) * wo]
                        for x in range(wo):
                            v = np.int32(count[x] * weight)  # exact: below the bound, 2**31
                            if plain:
                                orow[x] = np.int32(np.int32(v << ls) >> rs)
                                continue
                            if cv:  # a Conv's own output stage comes first
                                v = _conv_output(v)
                            orow[x] = _synaptic_output(v, e, False, dl)

    @numba.njit(parallel=True, nogil=True, boundscheck=False, cache=True)
    def input_conv_table(s, table, toff, taps, dims, out, step_blocks):
        """out[b, t] = the messages of a binary input's convolution read from its pattern table
        (``conv_message_table``): each image is copied into a zero-padded plane of bytes; per group, each
        output position's pattern (bit i: tap i's input) is formed at the input's resolution in x, in
        contiguous runs of the plane (all output rows at once when the row stride is 1, else one run per
        output row; three taps per pass) in 16-bit lanes, and gathered into one row per image; then each
        output channel's messages are its table's entries for that row (one flat loop per channel), in
        neuron order (channel, y, x). Jobs: samples x step blocks, each with its own planes."""
        batch, steps, _ = s.shape
        ch, h, w, py, px, hp, wp, sy, sx, ho, wo, groups, og = (dims[0], dims[1], dims[2], dims[3], dims[4],
                                                                dims[5], dims[6], dims[7], dims[8], dims[9],
                                                                dims[10], dims[11], dims[12])
        lw = (wo - 1) * sx + 1  # the input-resolution columns an output row spans
        runs = 1 if sy == 1 else ho
        run = (ho - 1) * wp + lw if sy == 1 else lw
        n = ho * wo
        for job in numba.prange(batch * step_blocks):
            b = job // step_blocks
            sb = job % step_blocks
            plane = np.zeros(ch * hp * wp, dtype=np.uint8)  # the padding stays 0
            pat = np.zeros(ho * wp, dtype=np.uint16)
            row = np.empty(n, dtype=np.uint16)  # the output positions' patterns, row-major
            for t in range(sb * steps // step_blocks, (sb + 1) * steps // step_blocks):
                img = s[b, t]
                for c in range(ch):
                    for y in range(h):
                        src = img[(c * h + y) * w:(c * h + y + 1) * w]
                        dst = plane[(c * hp + y + py) * wp + px:(c * hp + y + py) * wp + px + w]
                        for i in range(w):
                            dst[i] = src[i]
                o = out[b, t]
                for g in range(groups):
                    nt = taps[g]
                    for r in range(runs):
                        pr = pat[r * wp:r * wp + run]
                        base = r * sy * wp
                        if nt == 0:
                            for f in range(run):
                                pr[f] = 0
                        i = 0
                        while i < nt:  # three taps per pass over the patterns (they bound the loop)
                            s0 = plane[base + toff[g, i]:base + toff[g, i] + run]
                            if i + 3 <= nt:
                                s1 = plane[base + toff[g, i + 1]:base + toff[g, i + 1] + run]
                                s2 = plane[base + toff[g, i + 2]:base + toff[g, i + 2] + run]
                                for f in range(run):
                                    bits = np.uint16(np.uint16(s0[f]) | (np.uint16(s1[f]) << 1) |
                                                     (np.uint16(s2[f]) << 2))
                                    pr[f] = np.uint16(bits << i) if i == 0 else np.uint16(pr[f] | (bits << i))
                                i += 3
                            else:
                                for f in range(run):
                                    pr[f] = np.uint16(np.uint16(s0[f]) << i) if i == 0 else \
                                        np.uint16(pr[f] | (np.uint16(s0[f]) << i))
                                i += 1
                    # the stride's branch outside the row loop: inside it, the stage took 1.3-1.4x the CPU
                    # time (the benchmark conv's first layer, 1 and 2 threads, interleaved with the
                    # kernel before; LLVM compiled the table reads below worse)
                    if sx == 1:
                        for y in range(ho):
                            rr = row[y * wo:(y + 1) * wo]
                            pp = pat[y * wp:y * wp + wo]
                            for x in range(wo):
                                rr[x] = pp[x]
                    else:
                        for y in range(ho):
                            rr = row[y * wo:(y + 1) * wo]
                            for x in range(wo):
                                rr[x] = pat[y * wp + x * sx]
                    for oc in range(g * og, (g + 1) * og):
                        tab = table[oc]
                        oo = o[oc * n:(oc + 1) * n]
                        for f in range(n):
                            oo[f] = tab[row[f]]

    _kernels["input"] = input_messages, input_conv_messages, input_conv_dense, input_pool_dense, input_conv_table
    return _kernels["input"]



def _input_messages(spec: NetworkSpec, x: np.ndarray, pre: np.ndarray, threads: int) -> None:
    """Fill ``pre`` (batch, steps, ready targets) with the messages of every projection from a binary
    input (``spec.ready``), for every step, on all threads: a few samples split each dense
    projection's columns (wide weights, which then stay in each core's cache) or the steps."""
    batch, steps = x.shape[:2]
    for k in np.flatnonzero(spec.ready):
        off, n = int(spec.src_off[k]), int(spec.src_n[k])
        nd = int(spec.pop_off[spec.dst_pop[k] + 1] - spec.pop_off[spec.dst_pop[k]])
        s = x[:, :, off:off + n]
        s = np.ascontiguousarray(s if s.dtype == np.bool_ else s != 0)
        out = pre[:, :, spec.pre_off[k]:spec.pre_off[k] + nd]
        share = max(1, threads // max(batch, 1))  # jobs per sample that give every thread work
        step_blocks = max(1, min(share, steps))
        args = (int(spec.w_shift[k]), int(spec.weight_exp[k]), bool(spec.delayed[k]))
        if spec.dense_pools and spec.dense_pools[k] is not None:
            weights, dims = spec.dense_pools[k]
            # the spikes as bytes: the tiled windows add them in 8-bit lanes
            _input_kernels()[3](s.view(np.uint8), weights, dims, bool(spec.conv[k]), int(spec.weight_exp[k]),
                                bool(spec.delayed[k]), bool(spec.plain[k]), _POOL_WORDS and _LITTLE_ENDIAN, out,
                                step_blocks)
        elif spec.table_convs and spec.table_convs[k] is not None:
            table, offs, taps, dims = spec.table_convs[k]
            _input_kernels()[4](s.view(np.uint8), table, offs, taps, dims, out, step_blocks)
        elif spec.dense_convs and spec.dense_convs[k] is not None:
            taps, offs, counts, dims = spec.dense_convs[k]
            _input_kernels()[2](s, taps, offs, counts, dims, bool(spec.conv[k]), int(spec.weight_exp[k]),
                                bool(spec.delayed[k]), bool(spec.plain[k]), out, step_blocks)
        elif spec.is_sparse[k]:
            r0 = int(spec.row_ptr[k])
            table = spec.weights[spec.w_off[k]:]
            scratch = np.empty((batch * step_blocks, nd), dtype=pre.dtype)
            _input_kernels()[1](s, table, spec.row_idx, r0, int(spec.seg_len[k]), int(spec.perm_off[k]),
                                 bool(spec.conv[k]), *args,
                                 out, scratch, step_blocks)
        else:
            rows = spec.weights[spec.w_off[k]:spec.w_off[k] + n * nd].reshape(n, nd)
            col_blocks = 1
            if rows.nbytes >= _SPLIT_COLUMNS_BYTES:  # each core then reads its own share of the weights
                col_blocks, step_blocks = max(1, min(share, nd // 64)), 1
            _input_kernels()[0](s, rows, *args, out, col_blocks, step_blocks)
