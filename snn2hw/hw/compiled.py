"""numba-compiled instances of ``snn2hw.hw.loihi2``'s formulas and a whole-sequence CUBA-LIF scan.

Nothing here defines arithmetic. ``loihi2.FORMULAS`` are ordinary Python functions written with Python
operators and six primitives that they look up as module globals (``_sign``, ``_abs``, ``_where``,
``_clamp``, and ``_int32`` and ``wrap_int32``, both a cast to int32 here). This module re-creates each of those functions from its own code object with a globals
dict in which the primitives are numba scalar functions and the other formulas are their compiled
twins, then compiles it with ``numba.njit``. The bytecode that runs is the bytecode of loihi2.py, so
the torch path and the compiled path cannot drift apart (tests/test_hw_compiled.py also checks that
they agree, bit for bit, on random inputs over the full integer ranges and on every wrap edge).

The scan kernel only schedules: for each (sample, block of neurons) it loops over time, forms each
step's input from the projections' exact accumulations with the compiled ``synaptic_output`` and
``add_messages`` (or takes a ready input), and calls the compiled ``lif_step`` and ``lif_step_flags``
per neuron, counting limit events into an array (one count per job, summed afterwards) instead of
synchronising every step. Parallelism is over samples and neuron blocks, which are independent within
a population. Kernels are cached on disk by numba (see ``formulas_fingerprint`` for why that is safe).

numba is optional: ``available()`` says whether the fast path can be used (``SNN2HW_NO_NUMBA=1``
switches it off); callers fall back to the torch functions, which also serve CUDA tensors.
"""
from __future__ import annotations

import hashlib
import multiprocessing
import os
import types
from typing import NamedTuple

import numpy as np
import torch

from snn2hw.hw import loihi2

try:  # the fast path is an accelerator, never a requirement
    import numba
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None

# Below this many neuron updates per job a thread is not worth starting; blocks also stay a multiple
# of the vector width so the inner loop vectorises.
_MIN_JOB_UPDATES = 1 << 16
_BLOCK_ALIGN = 64
_MAX_BLOCK = 1 << 20  # the kernel packs per-step event counts of a block into 21-bit fields

_formulas: dict | None = None
_kernels: dict = {}
_fingerprint: str | None = None
# The kernels call these as module globals (set by formulas()); keeping them out of the kernels'
# closures keeps the closure, which numba hashes into its on-disk cache key, small and deterministic.
_lif_step = None
_lif_step_counted = None
_synaptic_output = None
_add_messages = None
_prepared_weight = None
_conv_output = None
_add_rows = None  # set by _row_adder()
_update_neurons = None  # set by _neuron_updater()


def available() -> bool:
    """Whether the numba fast path can run (numba imported, not switched off, formulas built)."""
    if numba is None or os.environ.get("SNN2HW_NO_NUMBA", "") not in ("", "0"):
        return False
    try:
        formulas()
    except Exception:  # pragma: no cover - a numba that cannot compile is treated as absent
        return False
    return True


def _scalar_primitives() -> dict:
    """numba scalar counterparts of loihi2's torch primitives (same names, same meaning)."""

    @numba.njit
    def _sign(x):
        if x > 0:
            return 1
        if x < 0:
            return -1
        return 0

    @numba.njit
    def _abs(x):
        return -x if x < 0 else x

    @numba.njit
    def _where(cond, a, b):
        return a if cond else b

    @numba.njit
    def _clamp(x, lo, hi):
        return lo if x < lo else (hi if x > hi else x)

    @numba.njit
    def wrap_int32(x):
        # the cast keeps the low 32 bits: the same integer as loihi2.wrap_int32, typed int32, so LLVM
        # computes what depends on it in 32-bit lanes
        return np.int32(x)

    return {"_sign": _sign, "_abs": _abs, "_where": _where, "_clamp": _clamp, "_int32": wrap_int32,
            "wrap_int32": wrap_int32}


def _namespace() -> tuple[dict, set]:
    """Globals for the re-created formulas: loihi2's integer constants plus the numba primitives."""
    ns = {k: v for k, v in vars(loihi2).items() if type(v) is int}  # IntEnums and bools excluded
    ns.update(_scalar_primitives())
    allowed = set(ns) | {f.__name__ for f in loihi2.FORMULAS}
    return ns, allowed


def check_formula(fn, allowed: set) -> None:
    """Refuse a formula that uses anything but operators and the ``allowed`` global names.

    ``co_names`` holds every global AND attribute name the bytecode uses, so a method call such as
    ``x.abs()`` or a ``torch.*`` call shows up here: a formula that would only work on tensors is
    refused loudly instead of compiling into something else.
    """
    code = fn.__code__
    stray = sorted(set(code.co_names) - allowed) + list(code.co_freevars)
    if stray or any(isinstance(c, types.CodeType) for c in code.co_consts):
        raise RuntimeError(
            f"loihi2.{fn.__name__} uses {stray or 'a nested function'}: formulas may use only operators, "
            "loihi2's integer constants, the primitives (_sign, _abs, _where, _clamp, _int32, wrap_int32) and other "
            "FORMULAS"
        )


def formulas() -> dict:
    """{name: numba dispatcher} for every function in ``loihi2.FORMULAS`` (built once, lazily)."""
    global _formulas, _fingerprint, _lif_step, _lif_step_counted
    global _synaptic_output, _add_messages, _prepared_weight, _conv_output
    if _formulas is not None:
        return _formulas
    if numba is None:
        raise RuntimeError("numba is not installed; the compiled fast path is unavailable")
    ns, allowed = _namespace()
    compiled = {"wrap_int32": ns["wrap_int32"]}
    for fn in loihi2.FORMULAS:
        check_formula(fn, allowed)
        clone = types.FunctionType(fn.__code__, ns, fn.__name__, fn.__defaults__)
        clone.__doc__ = fn.__doc__
        # Every compiled formula shares ``ns``, so calls between formulas resolve to compiled twins.
        ns[fn.__name__] = compiled[fn.__name__] = numba.njit(clone)
    _fingerprint = formulas_fingerprint()
    _lif_step, _lif_step_counted = compiled["lif_step"], compiled["lif_step_counted"]
    _synaptic_output, _add_messages = compiled["synaptic_output"], compiled["add_messages"]
    _prepared_weight, _conv_output = compiled["prepared_weight"], compiled["conv_output"]
    _formulas = compiled
    return compiled


def formulas_fingerprint() -> str:
    """Hash of everything in loihi2 that the compiled code depends on: each formula's bytecode,
    literals and names, and the values of the integer constants.

    numba's on-disk cache revalidates a kernel only against its own file (compiled.py), not against
    the functions it calls; the kernels carry this fingerprint in their closure, which numba hashes
    into the cache key, so editing a formula in loihi2.py can never load a stale kernel.
    """
    h = hashlib.sha256()
    for fn in loihi2.FORMULAS:
        code = fn.__code__
        h.update(repr((fn.__name__, code.co_code, code.co_consts, code.co_names, code.co_varnames)).encode())
    h.update(repr(sorted((k, v) for k, v in vars(loihi2).items() if type(v) is int)).encode())
    return h.hexdigest()


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
    formulas()
    fingerprint = _fingerprint
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

    threads = _threads()
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
        _set_threads(threads)
    kernel(acc.numpy(), exps, graded, delayed, conv, lags, u.numpy(), v.numpy(), int(du), int(dv), int(vth_eff),
           bias.numpy(), block, spikes.numpy(), u_rec.numpy(), v_rec.numpy(), counts.numpy())
    totals = counts.sum(dim=0)
    return ScanResult(spikes, u_rec if keep_state else None, v_rec if keep_state else None,
                      totals[:3] if count_events else None, u, v, int(totals[3]))


def _check_cpu(*tensors) -> None:
    for t in tensors:
        if t is not None and t.device.type != "cpu":
            raise ValueError("the compiled scan runs on CPU tensors; use loihi2's functions on other devices")


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
    _check_cpu(a_in, u0, v0)
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
    _check_cpu(*(p[0] for p in parts), u0, v0)
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


def _weights_kernel():
    if "weights" in _kernels:
        return _kernels["weights"]
    formulas()
    fingerprint = _fingerprint

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
    _set_threads(_threads())
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
    _check_cpu(s, weight_t)
    lead = s.shape[:-1]
    s2 = s.reshape(-1, s.shape[-1])
    if s2.dtype not in (torch.bool, torch.float32):
        s2 = s2 != 0
    s2 = s2.contiguous()
    w = weight_t.contiguous()
    # columns per tile: the tile (sources x columns) stays in L2 while every row of a block adds to it
    col_block = max(_MIN_COLS, min(w.shape[1], _TILE_BYTES // max(1, w.shape[0] * w.element_size()) // 16 * 16))
    _set_threads(_threads())
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
    _check_cpu(s, weight)
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
    _set_threads(_threads())
    _conv_kernel()(x, w, dy, dx, out.numpy())
    return out


# --- binary inputs --------------------------------------------------------------------------------------
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
    threads = _threads() if flat.size >= 1 << 20 else 1
    if threads > 1:
        _set_threads(threads)
    if _binary_kernel()(flat, out, threads):
        return None
    return out.reshape(x.shape)


# --- whole networks, step by step ----------------------------------------------------------------------
# Dense projections keep their prepared weights as (src, dst) rows of the narrowest integer type that
# holds them after dividing out their common power of two (Loihi's 8-bit weights on the mixed-sign grid
# are even: 1 byte each), so an event-driven step reads an eighth of what int64 rows cost. Each row is a
# sum of a subset of one output's weights, so accumulating in int32 is exact whenever the largest sum of
# |w| times the largest input is below 2**31 (else int64). A convolution keeps, per source, segments:
# for each kernel tap, the tap's weights over the output channels, added to channels-last sums (see
# Projection); an event adds exactly the weights Lava's Conv would multiply by that input, so the sum is
# the same integer.
_UNROLL = 4  # rows added per pass over a dense segment of the accumulator
_PRECOMPUTE_MIN_SYNAPSES = 0


# A binary input's convolution whose sums fit int32 is computed densely before the scan (below) rather
# than from per-source event segments: measured 3-8x less CPU time per image on the benchmark's sum
# pooling and 3x3 conv at 10 % input density (the dense loops vectorise; events scatter). Tests switch
# it off to compare with the event path.
_DENSE_INPUT_CONV = True
_DENSE_INPUT_POOL = True  # the same for a sum pooling's dense pooling stage (dense_pool_weights)


def dense_conv_taps(geometry) -> tuple:
    """A convolution as the dense input stage takes it: ``(weights (O, T) int32, offsets (O, T) int64,
    taps (O,) int64, dims int64)``: for each output channel its non-zero kernel taps, each as a weight
    and the offset of its first input in the zero-padded image (C, Hp, Wp) flattened, and
    ``dims = (C, H, W, py, px, Hp, Wp, sy, sx, Ho, Wo)``."""
    kernel, (ch, h, w), (sy, sx), (py, px), (dy, dx), groups = geometry
    kernel = np.asarray(kernel, dtype=np.int64)
    o_n, cg, kh, kw = kernel.shape
    og = o_n // groups
    hp, wp = h + 2 * py, w + 2 * px
    ho = (hp - dy * (kh - 1) - 1) // sy + 1
    wo = (wp - dx * (kw - 1) - 1) // sx + 1
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


def _input_kernels():
    """The pre-pass kernels: (a binary input's dense projection, its convolution as events, its
    convolution densely, its sum pooling densely) to messages."""
    if "input" in _kernels:
        return _kernels["input"]
    formulas()
    fingerprint = _fingerprint
    _row_adder()

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
    def input_conv_dense(s, tw, toff, taps, dims, cv, e, dl, out, step_blocks):
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
                    for y in range(ho):
                        orow = o[ob + y * wo:ob + (y + 1) * wo]
                        if sx == 1:  # a contiguous row of sums: this loop vectorises (measured 1.6x less
                            arow = acc[y * wp:y * wp + wo]  # CPU time for the whole stage on a 3x3 conv)
                            for x in range(wo):
                                v = np.int64(arow[x])
                                if cv:  # a Conv's own output stage comes first
                                    v = _conv_output(v)
                                orow[x] = _synaptic_output(v, e, False, dl)
                        else:  # every sx-th column (gathering them into a row first measured no faster)
                            for x in range(wo):
                                v = np.int64(acc[y * wp + x * sx])
                                if cv:
                                    v = _conv_output(v)
                                orow[x] = _synaptic_output(v, e, False, dl)

    @numba.njit(parallel=True, nogil=True, boundscheck=False, cache=True)
    def input_pool_dense(s, pw, dims, cv, e, dl, out, step_blocks):
        """out[b, t] = the messages of a binary input's sum pooling: for each channel and output row,
        the window's kh input rows added into a row of counts (contiguous loops; the padding columns stay
        0), then each output's kw counts added up and times the channel's weight, then Lava Conv's output
        stage and ``synaptic_output``, in neuron order (channel, y, x). Every sum is a window count
        (at most kh * kw) times one weight, exact in int64 (the caller's bound keeps it below 2**31, as
        for the dense conv stage). Jobs: samples x step blocks."""
        _key = fingerprint  # puts the formulas' fingerprint into the cache key
        batch, steps, _ = s.shape
        ch, h, w, py, px, kh, kw, sy, sx, ho, wo = (dims[0], dims[1], dims[2], dims[3], dims[4], dims[5],
                                                    dims[6], dims[7], dims[8], dims[9], dims[10])
        for job in numba.prange(batch * step_blocks):
            b = job // step_blocks
            sb = job % step_blocks
            row = np.zeros(w + 2 * px, dtype=np.int32)
            inner = row[px:px + w]
            count = np.empty(wo, dtype=np.int32)
            for t in range(sb * steps // step_blocks, (sb + 1) * steps // step_blocks):
                img = s[b, t]
                o = out[b, t]
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
                            if cv:  # a Conv's own output stage comes first
                                v = _conv_output(v)
                            orow[x] = _synaptic_output(v, e, False, dl)

    _kernels["input"] = input_messages, input_conv_messages, input_conv_dense, input_pool_dense
    return _kernels["input"]


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
        formulas()
        fingerprint = _fingerprint

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


def _network_kernel(count_events: bool, record: bool, parallel: bool):
    key = ("network", count_events, record, parallel)
    if key in _kernels:
        return _kernels[key]
    formulas()
    fingerprint = _fingerprint
    _neuron_updater()

    @numba.njit(parallel=parallel, nogil=True, boundscheck=False, cache=True)
    def network(x_in, pop_off, du, dv, vth, bias, src_kind, src_off, src_n, dst_pop, w_off, wflat, w_shift,
                row_ptr, row_idx, is_sparse, seg_len, perm_off, exps, graded, delayed, conv, lags, ready, pre_off, pre,
                acc_buf, spk,
                u_rec, v_rec, counts):
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
                        for i in range(src_n[k]):
                            active[m] = i
                            payload[m] = 1
                            m += ss[i]
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
                    if sp:
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
                        for n in range(p0, p1):
                            a[n] = 0
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
    lags: np.ndarray  # 1 + delay
    acc_dtype: np.dtype  # int32 where every bound allows it, else int64
    ready: np.ndarray  # (K,) bool: a binary input's projection, accumulated for all steps before the scan
    pre_off: np.ndarray  # (K,) its first column in those accumulations
    dense_convs: tuple = ()  # (K,) a ready convolution's taps for the dense input stage (dense_conv_taps), or None
    dense_pools: tuple = ()  # (K,) a ready sum pooling's weights for the dense pooling stage (dense_pool_weights)

    @property
    def weight_bytes(self) -> int:
        return int(self.weights.nbytes + self.row_idx.nbytes)


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
                _set_threads(_threads())
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
    dense = [r and pr.geometry is not None and pr.bound < 2**31 and _DENSE_INPUT_CONV
             for pr, r in zip(projections, ready)]
    # ... and a sum pooling takes the dense pooling stage: window counts from contiguous row sums
    # (measured ... less CPU than the dense conv stage's per-row strided runs on the benchmark's pooling)
    dense_pools = tuple(dense_pool_weights(pr.geometry) if d and _DENSE_INPUT_POOL else None
                        for pr, d in zip(projections, dense))
    dense_convs = tuple(dense_conv_taps(pr.geometry) if d and pool is None else None
                        for pr, d, pool in zip(projections, dense, dense_pools))

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
        lags=ints(lambda p: p.lag), acc_dtype=acc_dtype, ready=np.asarray(ready, dtype=np.bool_),
        pre_off=pre_off, dense_convs=dense_convs, dense_pools=dense_pools,
    )


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
            _input_kernels()[3](s, weights, dims, bool(spec.conv[k]), int(spec.weight_exp[k]), bool(spec.delayed[k]),
                                out, step_blocks)
        elif spec.dense_convs and spec.dense_convs[k] is not None:
            taps, offs, counts, dims = spec.dense_convs[k]
            _input_kernels()[2](s, taps, offs, counts, dims, bool(spec.conv[k]), int(spec.weight_exp[k]),
                                bool(spec.delayed[k]), out, step_blocks)
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


# Bytes of the inputs' messages per slice of the batch in network_scan: a quarter of this machine's L3.
# (Measured under load at batch 256 on the pooling, conv and 100-200-10 networks: 4 MiB slices took
# 0.99x / 0.98x / 0.96x the CPU time of one whole-batch buffer, 1 MiB slices 1.13x / 1.09x / 1.06x: the
# per-slice calls cost more than the cache saved there; the slices bound the buffer's memory.)
_PRE_SLICE_BYTES = 8 << 20


# A binary input's dense projection whose weights are at least this large splits its columns over the
# threads (each core's share then stays in its L2 cache), smaller ones split the steps.
_SPLIT_COLUMNS_BYTES = 1 << 18


def network_scan(spec: NetworkSpec, x_in: torch.Tensor | np.ndarray, steps: int, keep_state: bool = False,
                 count_events: bool = False):
    """Run a whole graph (cycles allowed) step by step in one compiled call, samples in parallel.

    ``x_in`` (batch, steps, inputs) holds the input payloads (int64, or bool where all are binary). Each
    step forms every population's input from the sources' spikes (or payloads) of earlier steps with an
    exact integer ``W @ s`` over the non-zero sources only (the weight rows of the sources that fired,
    or their conv segments), then the compiled ``conv_output`` (convolutions), ``synaptic_output`` and
    ``add_messages`` in projection order, and updates every neuron with the compiled ``lif_step``. The
    projections of binary inputs are formed into messages for all steps before the scan. Graded dense
    projections with a delay (whose int32 products wrap one by one in Lava) are not supported here: the
    caller runs those graphs on its general path.

    Returns ``(spikes (batch, steps, N) bool, u_rec, v_rec or None, counts (batch, P, 4))`` where
    ``counts[..., :3]`` are ``loihi2.LIMIT_EVENTS`` (when ``count_events``) and ``counts[..., 3]`` the
    spikes.
    """
    if isinstance(x_in, torch.Tensor):
        _check_cpu(x_in)
        x_in = x_in.numpy()
    x = np.ascontiguousarray(x_in if x_in.dtype in (np.bool_, np.int64) else x_in.astype(np.int64))
    batch = x.shape[0]
    n_pop = int(spec.pop_off[-1])
    spk = np.empty((batch, steps, n_pop), dtype=np.bool_)
    if keep_state:
        u_rec = np.empty((batch, steps, n_pop), dtype=np.int64)
        v_rec = np.empty((batch, steps, n_pop), dtype=np.int64)
    else:
        u_rec = v_rec = np.empty((0, 0, 0), dtype=np.int64)
    counts = np.zeros((batch, len(spec.pop_off) - 1, 4), dtype=np.int64)
    widest = max(1, int(np.max(np.diff(spec.pop_off))) if len(spec.pop_off) > 1 else 1)
    threads = _threads()
    # The inputs' messages are formed and scanned a slice of samples at a time (at batch 256 all of them
    # at once take 26-52 MB on the benchmark's conv and pooling networks): the buffer stays in the L3
    # cache and its memory bounded. A single sample is one slice.
    per_sample = steps * int(spec.pre_off[-1]) * spec.acc_dtype.itemsize
    chunk = batch
    if batch > threads and per_sample:
        chunk = max(threads, _PRE_SLICE_BYTES // per_sample // threads * threads)
    chunk = max(1, min(chunk, batch))
    acc_buf = np.empty((chunk, widest), dtype=spec.acc_dtype)
    pre = np.empty((chunk, steps, int(spec.pre_off[-1])), dtype=spec.acc_dtype)
    parallel = threads > 1 and batch > 1  # one sample runs on one thread: no synchronisation per step
    if spec.ready.any() or parallel:
        _set_threads(threads)
    kernel = _network_kernel(count_events, keep_state, parallel)
    for lo in range(0, batch, chunk):
        hi = min(lo + chunk, batch)
        if spec.ready.any():
            _input_messages(spec, x[lo:hi], pre[:hi - lo], threads)
        kernel(x[lo:hi], spec.pop_off, spec.du, spec.dv, spec.vth_eff, spec.bias_eff, spec.src_kind, spec.src_off,
               spec.src_n, spec.dst_pop, spec.w_off, spec.weights, spec.w_shift, spec.row_ptr, spec.row_idx,
               spec.is_sparse, spec.seg_len, spec.perm_off, spec.weight_exp, spec.graded, spec.delayed, spec.conv,
               spec.lags, spec.ready, spec.pre_off, pre[:hi - lo], acc_buf[:hi - lo], spk[lo:hi],
               u_rec[lo:hi] if keep_state else u_rec, v_rec[lo:hi] if keep_state else v_rec, counts[lo:hi])
    return (torch.from_numpy(spk), torch.from_numpy(u_rec) if keep_state else None,
            torch.from_numpy(v_rec) if keep_state else None, torch.from_numpy(counts))
