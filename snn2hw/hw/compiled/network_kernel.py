"""The whole-network kernel: every step of every population of a graph in one compiled call, samples in
parallel; each step forms every population's input event-driven from the spikes of earlier steps (or
adds an input stage's ready messages) and updates its neurons."""
from __future__ import annotations

import numpy as np

from snn2hw.hw.compiled import neurons, twins
from snn2hw.hw.compiled.twins import numba

_kernels: dict = {}
_lif_step = _lif_step_counted = _synaptic_output = _add_messages = _conv_output = None  # twins.bind
_update_neurons = None  # neurons._neuron_updater(), set by _network_kernel()
_UNROLL = 4  # rows added per pass over a dense segment of the accumulator


def _network_kernel(count_events: bool, parallel: bool):
    """The kernel, parallel over samples or not, counting limit events or not (closure constants: with
    ``count_events`` a run-time argument instead, the batched runs of 9x200 and 100-200-10 took 1.1-1.2x
    the CPU time, interleaved). Recording u, v is a run-time argument: its copy sits outside the
    per-neuron loops, and each closure constant multiplies the variants that a cold numba cache compiles
    (every variant compiles this whole kernel again)."""
    key = ("network", count_events, parallel)
    if key in _kernels:
        return _kernels[key]
    fingerprint = twins.bind(globals())
    global _update_neurons
    _update_neurons = neurons._neuron_updater()

    @numba.njit(parallel=parallel, nogil=True, boundscheck=False, cache=True)
    def network(x_in, pop_off, du, dv, vth, bias, src_kind, src_off, src_n, dst_pop, w_off, wflat, w_shift,
                row_ptr, row_idx, is_sparse, seg_len, perm_off, exps, graded, delayed, conv, plain, lags, ready, pre_off,
                pre,
                acc_buf, spk,
                u_rec, v_rec, counts, record):
        _key = (fingerprint, parallel)  # puts the formulas' fingerprint into the cache key
        batch, steps, n_pop = spk.shape
        pops = pop_off.shape[0] - 1
        projs = lags.shape[0]
        widest_src = 1
        for k in range(projs):
            widest_src = max(widest_src, src_n[k])
        for b in numba.prange(batch):
            # int32 state and input (see _STATE_NOTE): exact, and the update's decays then multiply
            # sign-extended 32-bit lanes (one AVX2 instruction) instead of emulated 64-bit products
            u = np.zeros(n_pop, dtype=np.int32)
            v = np.zeros(n_pop, dtype=np.int32)
            a = np.zeros(n_pop, dtype=np.int32)  # this step's summed input of every neuron
            acc = acc_buf[b]  # int32 or int64, chosen by the caller's bound
            active = np.empty(widest_src, dtype=np.int64)
            payload = np.empty(widest_src, dtype=np.int64)
            has = np.zeros(pops, dtype=np.bool_)
            for t in range(steps):
                for p in range(pops):
                    has[p] = False
                for k in range(projs):  # graph order: the order in which the InPort adds messages
                    tk = t - lags[k]  # the hop (and synaptic) delay
                    if tk < 0:
                        continue
                    p = dst_pop[k]
                    d0 = pop_off[p]
                    nd = pop_off[p + 1] - d0
                    if ready[k]:  # a binary input's messages, formed for every step before the scan
                        pr = pre[b, tk, pre_off[k]:pre_off[k] + nd]
                        ad = a[d0:d0 + nd]
                        if has[p]:
                            for j in range(nd):
                                ad[j] = _add_messages(ad[j], pr[j])
                        else:
                            for j in range(nd):
                                ad[j] = pr[j]
                        has[p] = True
                        continue
                    for j in range(nd):
                        acc[j] = 0
                    # the non-zero sources of step tk (a binary projection takes any non-zero payload
                    # as a spike, as Lava's Dense does); branch-free, as in accumulate_events
                    m = 0
                    if src_kind[k] == 0:
                        xs = x_in[b, tk, src_off[k]:src_off[k] + src_n[k]]
                        for i in range(src_n[k]):
                            active[m] = i
                            payload[m] = xs[i]
                            m += xs[i] != 0
                    else:
                        ss = spk[b, tk, src_off[k]:src_off[k] + src_n[k]]
                        for i in range(src_n[k]):  # two stores per source, not three: only a graded
                            active[m] = i  # projection reads payloads, and a population's spike is 1
                            m += ss[i]
                        if graded[k]:
                            for q in range(m):
                                payload[q] = 1
                    g = graded[k]
                    base = w_off[k]
                    if is_sparse[k]:
                        # per-source segments: (accumulator start, table start) pairs, each adding
                        # ``ln`` contiguous weights (a kernel tap's output channels) to contiguous sums
                        r0 = row_ptr[k]
                        ln = seg_len[k]
                        for q in range(m):
                            i = active[q]
                            mult = payload[q]
                            if ln == 1:  # depthwise (sum pooling): one weight per segment, no slices
                                for e in range(row_idx[r0 + i], row_idx[r0 + i + 1], 2):
                                    acc[row_idx[e]] += mult * wflat[base + row_idx[e + 1]] if g else \
                                        wflat[base + row_idx[e + 1]]
                                continue
                            for e in range(row_idx[r0 + i], row_idx[r0 + i + 1], 2):
                                ac = acc[row_idx[e]:row_idx[e] + ln]
                                ws = wflat[base + row_idx[e + 1]:base + row_idx[e + 1] + ln]
                                if g:
                                    for c in range(ln):
                                        ac[c] += mult * ws[c]
                                else:
                                    for c in range(ln):
                                        ac[c] += ws[c]
                    elif g:
                        for q in range(m):
                            row = wflat[base + active[q] * nd:base + (active[q] + 1) * nd]
                            mult = payload[q]
                            for j in range(nd):
                                acc[j] += mult * row[j]
                    else:
                        q = 0
                        while q + _UNROLL <= m:  # bound by loads/stores of acc: four rows per pass
                            w0 = wflat[base + active[q] * nd:base + (active[q] + 1) * nd]
                            w1 = wflat[base + active[q + 1] * nd:base + (active[q + 1] + 1) * nd]
                            w2 = wflat[base + active[q + 2] * nd:base + (active[q + 2] + 1) * nd]
                            w3 = wflat[base + active[q + 3] * nd:base + (active[q + 3] + 1) * nd]
                            for j in range(nd):
                                acc[j] += (w0[j] + w1[j]) + (w2[j] + w3[j])
                            q += _UNROLL
                        while q < m:
                            row = wflat[base + active[q] * nd:base + (active[q] + 1) * nd]
                            for j in range(nd):
                                acc[j] += row[j]
                            q += 1
                    # loop invariants in locals: numba's arrays may alias, so LLVM cannot hoist
                    # array reads out of a loop that stores, and then does not vectorise it
                    first = not has[p]
                    sh = w_shift[k]
                    cv = conv[k]
                    e = exps[k]
                    dl = delayed[k]
                    ad = a[d0:d0 + nd]
                    sp = is_sparse[k]
                    po = perm_off[k]
                    if plain[k]:
                        # the bound keeps Lava Conv's output stage and synaptic_output's wrap the identity
                        # (plan.plain_messages): a message is the sum shifted, in 32-bit lanes
                        ls = sh + max(e, 0)
                        rs = max(-e, 0)
                        if sp:
                            for j in range(nd):
                                msg = np.int32(np.int32(np.int32(acc[row_idx[po + j]]) << ls) >> rs)
                                ad[j] = msg if first else _add_messages(ad[j], msg)
                        elif first:
                            for j in range(nd):
                                ad[j] = np.int32(np.int32(np.int32(acc[j]) << ls) >> rs)
                        else:
                            for j in range(nd):
                                ad[j] = _add_messages(ad[j], np.int32(np.int32(np.int32(acc[j]) << ls) >> rs))
                    elif sp:
                        for j in range(nd):
                            # a segmented projection's sums are channels-last: neuron j's is at perm[j]
                            x = np.int64(acc[row_idx[po + j]]) << sh
                            if cv:  # a Conv's own output stage comes first
                                x = _conv_output(x)
                            msg = _synaptic_output(x, e, g, dl)
                            ad[j] = msg if first else _add_messages(ad[j], msg)
                    elif first:  # separate contiguous loops: these vectorise (one loop with the gather
                        for j in range(nd):  # above as a select did not)
                            x = np.int64(acc[j]) << sh
                            ad[j] = _synaptic_output(_conv_output(x) if cv else x, e, g, dl)
                    else:
                        for j in range(nd):
                            x = np.int64(acc[j]) << sh
                            ad[j] = _add_messages(ad[j], _synaptic_output(_conv_output(x) if cv else x, e, g, dl))
                    has[p] = True
                for p in range(pops):
                    p0 = pop_off[p]
                    p1 = pop_off[p + 1]
                    if not has[p]:  # nothing arrives: Lava's LIF receives zeros
                        az = a[p0:p1]  # from 0 over the slice: the loop indexed from p0 took 4x the
                        for n in range(p1 - p0):  # time (one thread, micro-benchmark; numba checks every
                            az[n] = 0  # index that may be negative)
                    fired, f0, f1, f2 = _update_neurons(u[p0:p1], v[p0:p1], a[p0:p1], bias[p0:p1],
                                                        spk[b, t, p0:p1], du[p], dv[p], vth[p], count_events)
                    if count_events:
                        counts[b, p, 0] += f0
                        counts[b, p, 1] += f1
                        counts[b, p, 2] += f2
                    counts[b, p, 3] += fired
                if record:
                    for n in range(n_pop):
                        u_rec[b, t, n] = u[n]
                        v_rec[b, t, n] = v[n]

    _kernels[key] = network
    return network
