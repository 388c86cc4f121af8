"""The network kernel's neuron update: one step of loihi2's ``lif_step_counted`` over a population, in
32-bit lanes."""
from __future__ import annotations

import numpy as np

from snn2hw.hw.compiled import twins
from snn2hw.hw.compiled.twins import numba

_lif_step = _lif_step_counted = _synaptic_output = _add_messages = _conv_output = None  # twins.bind
_update_neurons = None  # set by _neuron_updater()


# Neurons per pass of the network kernel's update: its per-pass counters are int32 words with two 16-bit
# fields (spikes and activation wraps; u wraps and v saturations), and a field's count stays below 2**15.
_UPDATE_PASS = 1 << 14


def _neuron_updater():
    """``update_neurons(u, v, a, bias, spikes, du, dv, vth, count_events) -> (spikes, act, u, v events)``:
    one step of ``loihi2.lif_step_counted`` (or ``lif_step``) over a population's slices, in passes of
    ``_UPDATE_PASS`` neurons. Everything in the loop is an int32 word (loihi2's formulas in 32-bit lanes,
    int32 state, int16 du/dv, int32 bias and threshold; see ``_STATE_NOTE``), and the counts travel as
    two int32 words of two 16-bit fields each, so LLVM vectorises the loop 8 lanes wide; int64 counters
    halved that (measured 1.7x more CPU per update). The benchmark's neuron-update peak times this
    function."""
    global _update_neurons
    if _update_neurons is None:
        fingerprint = twins.bind(globals())

        @numba.njit(nogil=True, boundscheck=False, cache=True)
        def update_neurons(u, v, a, bias, spikes, du, dv, vth, count_events):
            _key = fingerprint  # puts the formulas' fingerprint into the cache key
            fired = 0
            act = 0
            wrapped = 0
            saturated = 0
            size = u.shape[0]
            for p0 in range(0, size, _UPDATE_PASS):
                p1 = min(p0 + _UPDATE_PASS, size)
                up = u[p0:p1]
                vp = v[p0:p1]
                ap = a[p0:p1]
                bp = bias[p0:p1]
                sb = spikes[p0:p1]
                low = np.int32(0)  # spikes | activation wraps << 16
                high = np.int32(0)  # u wraps | v saturations << 16
                if count_events:
                    for n in range(p1 - p0):
                        uu, vv, sp, f0, f1, f2 = _lif_step_counted(up[n], vp[n], ap[n], du, dv, vth, bp[n])
                        up[n] = uu
                        vp[n] = vv
                        sb[n] = sp
                        low = np.int32(low + (np.int32(sp) | (np.int32(f0) << 16)))
                        high = np.int32(high + (np.int32(f1) | (np.int32(f2) << 16)))
                else:
                    for n in range(p1 - p0):
                        uu, vv, sp = _lif_step(up[n], vp[n], ap[n], du, dv, vth, bp[n])
                        up[n] = uu
                        vp[n] = vv
                        sb[n] = sp
                        low = np.int32(low + np.int32(sp))
                fired += low & 0xFFFF
                act += (low >> 16) & 0xFFFF
                wrapped += high & 0xFFFF
                saturated += (high >> 16) & 0xFFFF
            return fired, act, wrapped, saturated

        _update_neurons = update_neurons
    return _update_neurons
