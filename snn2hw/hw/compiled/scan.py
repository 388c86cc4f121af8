"""The layer schedule's compiled scan: one population over all steps, from its input (``lif_scan``) or
from its projections' exact accumulations (``layer_scan``).

For each (sample, block of neurons) the kernel loops over time, forms each step's input from the
projections' exact accumulations with the compiled ``synaptic_output`` and ``add_messages`` (or takes a
ready input), and calls the compiled ``lif_step`` per neuron, counting limit events into an array (one
count per job, summed afterwards) instead of synchronising every step. Parallelism is over samples and
neuron blocks, which are independent within a population.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from snn2hw.hw import loihi2
from snn2hw.hw.compiled import runtime, twins
from snn2hw.hw.compiled.twins import numba

# Below this many neuron updates per job a thread is not worth starting; blocks also stay a multiple
# of the vector width so the inner loop vectorises.
_MIN_JOB_UPDATES = 1 << 16
_BLOCK_ALIGN = 64
_MAX_BLOCK = 1 << 20  # the kernel packs per-step event counts of a block into 21-bit fields

_kernels: dict = {}
_lif_step = _lif_step_counted = _synaptic_output = _add_messages = _conv_output = None  # twins.bind


# How the kernel reads its input array: "raw" takes it as the summed int32 input of each step (what
# loihi2.lif_scan receives); "float"/"int" take exact accumulations ``W @ s`` (float32/float64 holding
# integers, or int64) of one or more projections and form the input with synaptic_output, the hop
# delay and add_messages, as the simulator's tensor path does with whole arrays.
_MODES = ("raw", "float", "int")


def _kernel(mode: str, count_events: bool, record: bool, parallel: bool):
    """The scan kernel for one combination of options. The options are closure constants, so each
    variant is compiled without branches on them in the per-neuron loops."""
    if mode not in _MODES:
        raise ValueError(f"unknown scan mode {mode!r}")
    key = (mode, count_events, record, parallel)
    if key in _kernels:
        return _kernels[key]
    fingerprint = twins.bind(globals())
    raw = mode == "raw"
    is_float = mode == "float"

    # cache=True: compiling a variant takes seconds; the closure (options + fingerprint) is part of
    # numba's cache key, so every variant and every version of the formulas has its own entry.
    @numba.njit(parallel=parallel, nogil=True, boundscheck=False, cache=True)
    def scan(acc, exps, graded, delayed, conv, lags, u, v, du, dv, vth_eff, bias, block, spikes, u_rec, v_rec,
             counts):
        _key = (fingerprint, parallel)  # only here to put both into the closure
        parts = acc.shape[0]
        batch, steps, size = spikes.shape
        blocks = (size + block - 1) // block
        for job in numba.prange(batch * blocks):
            b = job // blocks
            lo = (job % blocks) * block
            hi = min(lo + block, size)
            width = hi - lo
            # 1-D views and plain loops over them: LLVM vectorises these (indexing the
            # multi-dimensional arrays over lo..hi, or slice assignment, measured 2-4x slower)
            ub = u[b, lo:hi]
            vb = v[b, lo:hi]
            bb = bias[lo:hi]
            a_t = np.zeros(width, dtype=np.int64)  # this step's summed synaptic input
            c0 = 0
            c1 = 0
            c2 = 0
            fired = 0  # spikes of this job (the next layer picks its accumulation by spike density)
            for t in range(steps):
                if raw:
                    src = acc[0, b, t, lo:hi]
                    for n in range(width):
                        a_t[n] = src[n]
                else:
                    for k in range(parts):
                        tk = t - lags[k]  # the hop (and synaptic) delay of projection k
                        e = exps[k]
                        g = graded[k]
                        d = delayed[k]
                        cv = conv[k]
                        if tk >= 0:
                            src = acc[k, b, tk, lo:hi]
                            for n in range(width):
                                # an exact integer in a float (the accumulation bound guarantees it);
                                # rint as loihi2.accumulate_exact does
                                x = np.int64(np.rint(src[n])) if is_float else src[n]
                                if cv:  # a Conv's own output stage comes first
                                    x = _conv_output(x)
                                m = _synaptic_output(x, e, g, d)
                                a_t[n] = m if k == 0 else _add_messages(a_t[n], m)
                        else:  # nothing has arrived yet: the message is 0
                            for n in range(width):
                                a_t[n] = 0 if k == 0 else _add_messages(a_t[n], 0)
                sb = spikes[b, t, lo:hi]
                # The three event counts of this step travel packed in one int64 (21 bits each; a
                # block has fewer than 2**21 neurons): one vectorisable reduction instead of three,
                # which measured 2-3x faster. Unpacked after every step, so no field can overflow.
                packed = 0
                for n in range(width):
                    if count_events:
                        uu, vv, sp, f0, f1, f2 = _lif_step_counted(ub[n], vb[n], a_t[n], du, dv, vth_eff, bb[n])
                        packed += np.int64(f0) | (np.int64(f1) << 21) | (np.int64(f2) << 42)
                    else:
                        uu, vv, sp = _lif_step(ub[n], vb[n], a_t[n], du, dv, vth_eff, bb[n])
                    ub[n] = uu
                    vb[n] = vv
                    sb[n] = sp
                    fired += sp
                if count_events:
                    c0 += packed & 0x1FFFFF
                    c1 += (packed >> 21) & 0x1FFFFF
                    c2 += packed >> 42
                if record:
                    ur = u_rec[b, t, lo:hi]
                    vr = v_rec[b, t, lo:hi]
                    for n in range(width):
                        ur[n] = ub[n]
                        vr[n] = vb[n]
            if count_events:
                counts[job, 0] = c0
                counts[job, 1] = c1
                counts[job, 2] = c2
            counts[job, 3] = fired

    _kernels[key] = scan
    return scan


class ScanResult(NamedTuple):
    """What ``lif_scan`` and ``layer_scan`` return."""

    spikes: torch.Tensor  # (batch, steps, n), bool (or float32 0/1 when asked)
    u_rec: torch.Tensor | None  # (batch, steps, n) after each step, when keep_state
    v_rec: torch.Tensor | None
    counts: torch.Tensor | None  # int64 counts of loihi2.LIMIT_EVENTS, when count_events
    u: torch.Tensor  # (batch, n) final state
    v: torch.Tensor
    n_spikes: int  # total number of spikes


def _run(mode, acc, exps, graded, delayed, conv, lags, steps, du, dv, vth_eff, bias_eff, keep_state, u0, v0,
         count_events, spike_dtype=torch.bool):
    """Allocate outputs, split the work into jobs and call the kernel variant. ``acc`` is
    (parts, batch, steps_in, n), contiguous, in the dtype the mode expects."""
    if spike_dtype not in (torch.bool, torch.float32):
        raise ValueError(f"spikes are written as bool or float32, not {spike_dtype}")
    _, batch, _, size = acc.shape
    for name, state, limit in (("u0", u0, loihi2.U_MAX), ("v0", v0, loihi2.V_MAX)):
        # loihi2's formulas are exact on the states Lava can hold (its domain note)
        if state is not None and state.numel() and int(state.abs().max()) > limit:
            raise ValueError(f"{name} holds {int(state.abs().max())}, beyond the largest state Lava can hold "
                             f"({limit}); continue only from a state a scan returned")
    bias = torch.broadcast_to(torch.as_tensor(bias_eff, dtype=torch.int64), (size,)).contiguous()
    u = torch.zeros(batch, size, dtype=torch.int64) if u0 is None else u0.to(torch.int64).clone().contiguous()
    v = torch.zeros(batch, size, dtype=torch.int64) if v0 is None else v0.to(torch.int64).clone().contiguous()
    spikes = torch.empty(batch, steps, size, dtype=spike_dtype)
    if keep_state:
        u_rec = torch.empty(batch, steps, size, dtype=torch.int64)
        v_rec = torch.empty(batch, steps, size, dtype=torch.int64)
    else:  # never touched by the record=False kernel; empty arrays keep one signature
        u_rec = v_rec = torch.empty(0, 0, 0, dtype=torch.int64)

    threads = runtime._threads()
    parallel = threads > 1 and batch * steps * size >= 2 * _MIN_JOB_UPDATES
    block = max(size, 1)
    if parallel and batch < 2 * threads:
        # few samples: split the neurons too, in aligned blocks, so every thread has a share
        want = -(-2 * threads // max(batch, 1))
        per = -(-size // want)
        block = max(_BLOCK_ALIGN, -(-per // _BLOCK_ALIGN) * _BLOCK_ALIGN)
    block = min(block, _MAX_BLOCK)
    jobs = batch * max(1, -(-size // block))
    counts = torch.zeros(jobs, len(loihi2.LIMIT_EVENTS) + 1, dtype=torch.int64)  # events, then spikes

    kernel = _kernel(mode, count_events, keep_state, parallel)
    if parallel:
        runtime._set_threads(threads)
    kernel(acc.numpy(), exps, graded, delayed, conv, lags, u.numpy(), v.numpy(), int(du), int(dv), int(vth_eff),
           bias.numpy(), block, spikes.numpy(), u_rec.numpy(), v_rec.numpy(), counts.numpy())
    totals = counts.sum(dim=0)
    return ScanResult(spikes, u_rec if keep_state else None, v_rec if keep_state else None,
                      totals[:3] if count_events else None, u, v, int(totals[3]))


def lif_scan(a_in: torch.Tensor, du: int, dv: int, vth_eff: int, bias_eff: torch.Tensor | int,
             keep_state: bool = False, u0: torch.Tensor | None = None, v0: torch.Tensor | None = None,
             count_events: bool = False):
    """``loihi2.lif_scan`` compiled: ``a_in`` (batch, steps, n) is each step's summed int32 input.

    Returns a ``ScanResult`` ``(spikes bool, u_rec, v_rec, counts, u, v, n_spikes)``: the records are
    (batch, steps, n) when ``keep_state`` else None; ``counts`` is an int64 tensor of
    ``loihi2.LIMIT_EVENTS`` counts when ``count_events`` else None; ``u``/``v`` are the final state.
    ``u0``/``v0`` (batch, n) continue from a given state (zero when None), so a caller may scan a
    sequence piecewise.
    """
    runtime._check_cpu(a_in, u0, v0)
    acc = a_in.to(torch.int64).contiguous()[None]
    zero = np.zeros(1, dtype=np.int64)
    flag = np.zeros(1, dtype=np.bool_)
    return _run("raw", acc, zero, flag, flag, flag, zero, acc.shape[2], du, dv, vth_eff, bias_eff, keep_state,
                u0, v0, count_events)


def layer_scan(parts, steps: int, du: int, dv: int, vth_eff: int, bias_eff: torch.Tensor | int,
               keep_state: bool = False, u0: torch.Tensor | None = None, v0: torch.Tensor | None = None,
               count_events: bool = False, spike_dtype: torch.dtype = torch.bool):
    """A population driven by projections, from their exact accumulations to its spikes in one pass.

    ``parts``: non-empty list of ``(acc, weight_exp, graded, delayed, lag[, conv])``, one per incoming
    projection, where ``acc`` (batch, steps_in, n) is the exact ``W @ s`` of the source's spikes at each
    step (float32/float64 holding integers, or int64) and ``lag`` is the number of steps until it
    arrives. Step t's input is ``sum_activations`` of ``synaptic_output(acc[t - lag], ...)`` (0 before
    the first arrival; with ``conv`` true, of ``synaptic_output(conv_output(acc[t - lag]), ...)``),
    exactly the tensor path's ``_delayed``/``sum_activations`` over whole arrays; the int64 input array
    is never materialised. Returns what ``lif_scan`` returns; the spikes as
    0/1 in ``spike_dtype`` (bool, or float32 for a next layer's float32 product, saving a conversion).
    """
    if not parts:
        raise ValueError("layer_scan needs at least one incoming projection")
    runtime._check_cpu(*(p[0] for p in parts), u0, v0)
    dtypes = {p[0].dtype for p in parts}
    if dtypes <= {torch.float32}:
        dtype, mode = torch.float32, "float"
    elif dtypes <= {torch.float32, torch.float64}:
        dtype, mode = torch.float64, "float"  # float32 integers are exact in float64
    else:
        dtype, mode = torch.int64, "int"
    if len(parts) == 1:
        acc = parts[0][0].to(dtype).contiguous()[None]
    else:
        shape = torch.broadcast_shapes(*(p[0].shape for p in parts))
        acc = torch.stack([p[0].to(dtype).expand(shape) for p in parts]).contiguous()
    exps = np.array([int(p[1]) for p in parts], dtype=np.int64)
    graded = np.array([bool(p[2]) for p in parts], dtype=np.bool_)
    delayed = np.array([bool(p[3]) for p in parts], dtype=np.bool_)
    conv = np.array([bool(p[5]) if len(p) > 5 else False for p in parts], dtype=np.bool_)
    lags = np.array([int(p[4]) for p in parts], dtype=np.int64)
    return _run(mode, acc, exps, graded, delayed, conv, lags, steps, du, dv, vth_eff, bias_eff, keep_state,
                u0, v0, count_events, spike_dtype)
