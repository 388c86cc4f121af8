"""Compiled CPU kernels for the float CUBA-LIF scan of ``snn2hw.nn.functional`` and its backward pass.

The operators in ``functional`` run their per-step loop as a few tensor ops per step; on a CPU each op
costs microseconds of dispatch, which at (batch 16, n 512) is most of a step's time. These kernels run
the whole time loop of a (sample, block of neurons) job in one numba-compiled call instead, in
parallel over jobs:

* ``lif_forward`` evaluates exactly the products and sums of ``functional``'s docstring, in the same
  order and each rounded once in the input's dtype (numba does not contract ``x * y + z`` into a fused
  multiply-add without ``fastmath``), so its spikes and states are bit-identical to the unrolled
  reference; tests/test_nn_functional.py checks that on random inputs.
* ``lif_backward`` runs the adjoint recursions of the same docstring. The derivative of a built-in
  surrogate is computed inside the loop (``fused_surrogate``: the surrogate's own tensor ops in their
  order, so equal to them bit for bit except for ``exp``, where numba's and torch's may differ in the
  last bit); any other surrogate's is computed before it with its own whole-tensor op. Incoming
  gradients that autograd expanded (the gradient of ``s.sum()``, or of a sum over time) are read in
  place rather than copied out to (batch, T, n). Parameter gradients are accumulated in float64 per
  (sample, neuron) and summed by the caller.

Why numba (measured on the 2-core CI machine, N = 512, T = 500, batch 16, forward + backward):
it needs no C++ toolchain at run time (a ``torch.utils.cpp_extension`` build takes about a minute per
fresh environment and fails without a compiler), it caches compiled kernels on disk, and numba is
already the simulator's dependency. ``torch.compile`` of the 500-step loop unrolls it and compiles for
minutes. See docs/training.md for the figures.

numba is optional: ``available()`` is False without it or with ``SNN2HW_NO_NUMBA=1``; the operators
then use their tensor loop. CUDA tensors use ``snn2hw.nn.triton_kernels`` (see ``triton_for``).
"""
from __future__ import annotations

import os

import numpy as np
import torch

try:  # an accelerator, never a requirement
    import numba
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None

from snn2hw.nn import buffer_pool
from snn2hw.nn.surrogate import Arctan, Boxcar, Exponential, FastSigmoid, Gaussian, Sigmoid, Triangle

__all__ = ["available", "usable", "triton_for", "fused_surrogate", "lif_forward", "lif_backward"]

_BLOCK_ALIGN = 64
_kernels: dict = {}


def available() -> bool:
    """Whether the compiled CPU kernels can be used (numba importable and not switched off)."""
    return numba is not None and os.environ.get("SNN2HW_NO_NUMBA", "") in ("", "0")


def usable(*tensors) -> bool:
    """True when every given tensor (None skipped) is a CPU float32/float64 tensor and numba is available."""
    if not available():
        return False
    dtype = None
    for t in tensors:
        if t is None:
            continue
        if t.device.type != "cpu" or t.dtype not in (torch.float32, torch.float64):
            return False
        if dtype is None:
            dtype = t.dtype
        elif t.dtype != dtype:
            return False
    return True


def triton_for(*tensors):
    """``snn2hw.nn.triton_kernels`` when these tensors can use it (CUDA, or CPU under Triton's interpreter,
    ``TRITON_INTERPRET=1``), else None. Triton is imported only then, so CPU-only use never pays for it."""
    if os.environ.get("TRITON_INTERPRET", "") != "1" and not any(t is not None and t.device.type == "cuda"
                                                                 for t in tensors):
        return None
    from snn2hw.nn import triton_kernels

    return triton_kernels if triton_kernels.usable(*tensors) else None


def _threads() -> int:
    return max(1, min(numba.config.NUMBA_NUM_THREADS, torch.get_num_threads()))


def _block(batch: int, n: int, threads: int) -> int:
    """Neurons per job: whole rows when the batch alone gives every thread work, else aligned blocks."""
    if threads <= 1 or batch >= 2 * threads:
        return max(n, 1)
    want = -(-2 * threads // max(batch, 1))
    per = -(-n // want)
    return max(_BLOCK_ALIGN, -(-per // _BLOCK_ALIGN) * _BLOCK_ALIGN)


if numba is not None:
    @numba.njit(inline="always", cache=True)
    def _job_span(job, blocks, block, n):
        """Sample and neuron range [lo, hi) of one job of (sample, block of neurons)."""
        lo = (job % blocks) * block
        return job // blocks, lo, min(lo + block, n)

    @numba.njit(inline="always", cache=True)
    def surrogate_at(kind, c0, c1, c2, one, x):
        """The derivative at ``x = v_pre - v_th`` of the surrogate ``kind`` with constants ``c0..c2`` and
        ``one`` (from ``fused_surrogate``; scalars, so they stay in registers). Each kind repeats its
        ``derivative_``'s tensor ops in their order, in the input's dtype. ``kind`` is a closure constant
        of the calling kernel, so LLVM folds the branches away and the caller's loop vectorises."""
        if kind == 1:  # FastSigmoid: 1 / (|x| scale + 1)^2
            q = abs(x) * c0 + one
            return one / (q * q)
        if kind == 2:  # Sigmoid: e = exp(-|x scale|); e / (e + 1)^2 * scale
            e = np.exp(-abs(x * c0))
            q = e + one
            return (e / (q * q)) * c0
        if kind == 3:  # Arctan: 1 / ((x pi scale / 2)^2 + 1) * scale / 2
            y = x * c0
            return (one / (y * y + one)) * c1
        if kind == 4:  # Triangle: max(|x| (-scale) + 1, 0) * scale
            y = abs(x) * c0 + one
            return (y if y > one - one else one - one) * c1
        if kind == 5:  # Exponential: exp(|x| (-scale)) * scale / 2
            return np.exp(abs(x) * c0) * c1
        if kind == 6:  # Gaussian: exp((x scale)^2 (-1/2)) * scale / sqrt(2 pi)
            y = x * c0
            return np.exp((y * y) * c1) * c2
        # kind 7, Boxcar: (|x| < 1 / scale) * scale / 2
        return c1 if abs(x) < c0 else one - one


# The surrogates whose derivative the kernels compute themselves: kind (see ``surrogate_at``) and
# constants from the scale, each rounded to the input's dtype as torch rounds a Python scalar operand.
# An exact type match only: a subclass may redefine ``derivative_``.
_SURROGATE_FORMS = {
    FastSigmoid: (1, lambda s: (s, 0.0, 0.0)),
    Sigmoid: (2, lambda s: (s, 0.0, 0.0)),
    Arctan: (3, lambda s: (0.5 * np.pi * s, 0.5 * s, 0.0)),
    Triangle: (4, lambda s: (-s, s, 0.0)),
    Exponential: (5, lambda s: (-s, 0.5 * s, 0.0)),
    Gaussian: (6, lambda s: (s, -0.5, s / np.sqrt(2.0 * np.pi))),
    Boxcar: (7, lambda s: (1.0 / s, 0.5 * s, 0.0)),
}


def fused_surrogate(surrogate, dtype) -> tuple[int, np.ndarray] | None:
    """``(kind, constants)`` when the kernels compute ``surrogate``'s derivative inside their backward
    loop (the built-in surrogates), else None: then it is computed before with its own tensor op.
    ``constants`` holds three coefficients and 1, in ``dtype`` (a numpy dtype)."""
    form = _SURROGATE_FORMS.get(type(surrogate))
    if form is None:
        return None
    kind, coefficients = form
    return kind, np.array([*coefficients(float(surrogate.scale)), 1.0], dtype=dtype)


def _broadcast_grad(g: torch.Tensor | None, like: torch.Tensor) -> tuple[np.ndarray, int, int]:
    """An incoming gradient (batch, T, n) as ``(array, batch step, time step)``: a batch or time dimension
    that autograd expanded (stride 0, e.g. the gradient of ``s.sum()`` or of a sum over time) is kept at
    size 1 and read with step 0 instead of being copied out to the full size."""
    if g is None:
        return _empty(like), 0, 0
    g = g.detach()
    batch_step = 0 if g.shape[0] <= 1 or g.stride(0) == 0 else 1
    time_step = 0 if g.shape[1] <= 1 or g.stride(1) == 0 else 1
    return g[: 1 if not batch_step else None, : 1 if not time_step else None].contiguous().numpy(), batch_step, time_step


def _forward_kernel(alpha_zero: bool, has_bias: bool):
    """The forward scan. The options inside its inner loop are closure constants, so each variant compiles
    without branches on them there (and the loop vectorises); recording u and v happens in loops of its own,
    so ``keep_u`` / ``keep_v`` are run-time arguments (fewer variants to compile)."""
    key = ("forward", alpha_zero, has_bias)
    if key in _kernels:
        return _kernels[key]

    @numba.njit(parallel=True, nogil=True, boundscheck=False, cache=True)
    def forward(a, alpha, beta, vth, bias, unit, block, delay, v_pre, spikes, keep_u, u_all, keep_v, v_all):
        _key = (alpha_zero, has_bias)  # only here to put the options into the closure
        batch, steps, n = a.shape
        blocks = (n + block - 1) // block
        for job in numba.prange(batch * blocks):
            b, lo, hi = _job_span(job, blocks, block, n)
            width = hi - lo
            al = alpha[lo:hi]
            be = beta[lo:hi]
            th = vth[lo:hi]
            bi = bias[lo:hi]
            one = unit[0]  # 1 in the input's dtype: every product and sum stays in that dtype
            zero = one - one
            u = np.zeros(width, dtype=a.dtype)
            v = np.zeros(width, dtype=a.dtype)
            silent = np.zeros(width, dtype=a.dtype)  # the input before the first delayed step arrives
            for t in range(steps):
                at = a[b, t - delay, lo:hi] if t >= delay else silent
                vp = v_pre[b, t, lo:hi]
                sp = spikes[b, t, lo:hi]
                for i in range(width):
                    # u[t] = alpha u[t-1] + a[t] (a[t] itself when alpha is 0)
                    if alpha_zero:
                        uu = at[i]
                    else:
                        uu = u[i] * al[i] + at[i]
                        u[i] = uu
                    # v_pre = (beta v[t-1] + u[t]) + bias; s = v_pre > v_th; v = v_pre (1 - s)
                    x = v[i] * be[i] + uu
                    if has_bias:
                        x = x + bi[i]
                    vp[i] = x
                    sv = one if x > th[i] else zero
                    sp[i] = sv
                    v[i] = x * (one - sv)
                if keep_u:
                    ur = u_all[b, t, lo:hi]
                    for i in range(width):
                        ur[i] = at[i] if alpha_zero else u[i]
                if keep_v:
                    vr = v_all[b, t, lo:hi]
                    for i in range(width):
                        vr[i] = v[i]

    _kernels[key] = forward
    return forward


def _backward_kernel(kind: int, has_gs: bool, alpha_zero: bool, state: bool, params: tuple | None):
    """The backward recursions. Closure constants, as above (each cost time in the inner loop as a run-time
    argument, measured with ``benchmarks/diag_lif_kernel_ab.py``): the surrogate ``kind`` (0 reads a
    precomputed derivative ``sg``), whether a gradient of the spikes comes in, alpha = 0, whether gradients
    of the state traces u, v come in (``state``;
    an absent one of the two is then a broadcast row of zeros that a select ignores), and ``params``: None
    when no parameter gradient is needed, else which of (alpha, beta, v_th, bias) and the detached reset.
    The other options are run-time arguments (``opts``: the detached reset without ``params``, dL/da
    needed), each a select between values computed anyway or a store outside the
    recursions, so the inner loop stays branch-free and vectorises while fewer variants compile (the
    layers' usual case, no parameter gradient, is one variant per surrogate, alpha = 0 and state)."""
    key = ("backward", kind, has_gs, alpha_zero, state, params)
    if key in _kernels:
        return _kernels[key]
    any_param = params is not None
    p_alpha, p_beta, p_vth, p_bias, p_detach = params if any_param else (False,) * 5

    @numba.njit(parallel=True, nogil=True, boundscheck=False, cache=True)
    def backward(v_pre, consts, sg, g_s, g_u, g_v, steps_g, u_all, alpha, beta, vth, block, delay, grad_a, acc, opts):
        _key = (kind, has_gs, alpha_zero, state, any_param, p_alpha, p_beta, p_vth, p_bias, p_detach)  # closure
        has_gu, has_gv = opts[1] != 0, opts[2] != 0
        detach = p_detach if any_param else opts[3] != 0
        need_a = opts[4] != 0
        batch, steps, n = v_pre.shape
        blocks = (n + block - 1) // block
        for job in numba.prange(batch * blocks):
            b, lo, hi = _job_span(job, blocks, block, n)
            width = hi - lo
            al = alpha[lo:hi]
            be = beta[lo:hi]
            th = vth[lo:hi]
            c0, c1, c2, one = consts[0], consts[1], consts[2], consts[3]
            zero = one - one
            lp_next = np.zeros(width, dtype=v_pre.dtype)  # lam_p[t+1]
            lu_next = np.zeros(width, dtype=v_pre.dtype)  # lam_u[t+1]
            a_alpha = np.zeros(width, dtype=np.float64)
            a_beta = np.zeros(width, dtype=np.float64)
            a_vth = np.zeros(width, dtype=np.float64)
            a_bias = np.zeros(width, dtype=np.float64)
            # an expanded (broadcast) gradient is read at batch / time index 0 (steps_g holds 0 or 1 per dim;
            # an absent one is a (1, 1, n) row of zeros read with steps 0)
            bs, bu, bv = b * steps_g[0], b * steps_g[2], b * steps_g[4]
            for t in range(steps - 1, -1, -1):
                # 1-D views of this step: with these LLVM vectorises the loop over neurons
                vp = v_pre[b, t, lo:hi]
                sgt = sg[b, t, lo:hi] if kind == 0 else vp
                gst = g_s[bs, t * steps_g[1], lo:hi] if has_gs else vp
                gut = g_u[bu, t * steps_g[3], lo:hi] if state else vp
                gvt = g_v[bv, t * steps_g[5], lo:hi] if state else vp
                vq = v_pre[b, max(t - 1, 0), lo:hi]  # v_pre[t-1] (unused at t = 0)
                uq = u_all[b, max(t - 1, 0), lo:hi] if p_alpha else vp
                write = need_a and t >= delay  # dL/da[t - delay]; the last `delay` inputs reach no step
                out = grad_a[b, t - delay, lo:hi] if write else vp
                for i in range(width):
                    x = vp[i]
                    d = sgt[i] if kind == 0 else surrogate_at(kind, c0, c1, c2, one, x - th[i])
                    keep_d = one if x <= th[i] else zero  # 1 - s[t]
                    xd = x * d
                    keep = keep_d if detach else keep_d - xd
                    lam = gst[i] * d if has_gs else zero
                    if p_vth:
                        a_vth[i] -= lam
                    if state:
                        gv_i = gvt[i]
                        lam_g = lam + keep * gv_i
                        lam = lam_g if has_gv else lam
                    # lam_p[t] = lam[t] + (beta keep[t]) lam_p[t+1]
                    lpn = lp_next[i]
                    lamp = lam + (keep * be[i]) * lpn
                    if p_bias:
                        a_bias[i] += lamp
                    if p_beta and t > 0:
                        vprev = vq[i]
                        a_beta[i] += lamp * (vprev if vprev <= th[i] else zero)  # v[t-1] after reset
                    if p_vth and not p_detach:
                        lam_v = be[i] * lpn
                        if state:
                            lam_vg = lam_v + gvt[i]
                            lam_v = lam_vg if has_gv else lam_v
                        a_vth[i] += lam_v * xd
                    lp_next[i] = lamp
                    lu = lamp
                    if state:
                        lu_g = lamp + gut[i]
                        lu = lu_g if has_gu else lamp
                    if not alpha_zero:
                        lu = lu + lu_next[i] * al[i]
                    if p_alpha and t > 0:
                        a_alpha[i] += lu * uq[i]
                    lu_next[i] = lu
                    if write:
                        out[i] = lu
            if need_a:
                for t in range(max(steps - delay, 0), steps):
                    out = grad_a[b, t, lo:hi]
                    for i in range(width):
                        out[i] = zero
            for i in range(width):
                acc[0, b, lo + i] = a_alpha[i]
                acc[1, b, lo + i] = a_beta[i]
                acc[2, b, lo + i] = a_vth[i]
                acc[3, b, lo + i] = a_bias[i]

    _kernels[key] = backward
    return backward


def _per_neuron(p: torch.Tensor | None, n: int, like: torch.Tensor) -> np.ndarray:
    """A 0-dim or (n,) parameter as a contiguous (n,) array in ``like``'s dtype (zeros for None)."""
    if p is None:
        return np.zeros(n, dtype=like.numpy().dtype)
    return torch.broadcast_to(p.detach().to(like.dtype), (n,)).contiguous().numpy()


def _empty(like: torch.Tensor) -> np.ndarray:
    return np.empty((0, 0, 0), dtype=like.numpy().dtype)


def _set_threads() -> None:
    from snn2hw.hw.compiled import _set_threads as set_threads  # one place that knows numba's pitfalls

    set_threads(_threads())


def lif_forward(a: torch.Tensor, alpha, beta, v_th, bias, alpha_is_zero: bool, keep_u: bool, keep_v: bool,
                delay: int = 0):
    """The forward scan over a contiguous CPU ``a`` (batch, T, n): ``(v_pre, spikes, u_all, v_all)``, the last
    two None unless asked for. Parameters are 0-dim or (n,) tensors in ``a``'s dtype (bias may be None).
    ``delay``: step t reads ``a[t - delay]`` (nothing before), the hop delay without a shifted copy."""
    batch, steps, n = a.shape
    a = a.detach().contiguous()
    # from the buffer pool: fresh pages for these every step cost more than the kernel (see buffer_pool)
    v_pre, spikes, u_all, v_all = (buffer_pool.empty(a.shape, a.dtype) if keep else None
                                   for keep in (True, True, keep_u, keep_v))
    if a.numel():
        _set_threads()
        unit = np.ones(1, dtype=a.numpy().dtype)
        _forward_kernel(bool(alpha_is_zero), bias is not None)(
            a.numpy(), _per_neuron(alpha, n, a), _per_neuron(beta, n, a), _per_neuron(v_th, n, a),
            _per_neuron(bias, n, a), unit, _block(batch, n, _threads()), int(delay), v_pre.numpy(), spikes.numpy(),
            bool(keep_u), u_all.numpy() if keep_u else _empty(a), bool(keep_v), v_all.numpy() if keep_v else _empty(a))
    return v_pre, spikes, u_all, v_all


def surrogate_args(surrogate, v_pre: torch.Tensor, v_th):
    """The kernels' surrogate arguments ``(kind, constants, sg)``: a built-in surrogate's form, or kind 0
    and its derivative at ``v_pre - v_th`` computed now by its own tensor op (``sg``; else None)."""
    dtype = v_pre.numpy().dtype
    form = fused_surrogate(surrogate, dtype)
    if form is not None:
        return form[0], form[1], None
    return 0, np.array([0.0, 0.0, 0.0, 1.0], dtype=dtype), surrogate.derivative_(torch.sub(v_pre, v_th))


def lif_backward(v_pre: torch.Tensor, surrogate, g_s, g_u, g_v, u_all, alpha, beta, v_th, detach_reset: bool,
                 alpha_is_zero: bool, need: tuple[bool, bool, bool, bool, bool], delay: int = 0):
    """The adjoint recursions. The surrogate derivative at ``v_pre - v_th`` is computed inside the kernel
    for the built-in surrogates (``fused_surrogate``; saves a pass over the sequence and its temporary)
    and with the surrogate's own tensor op before it otherwise. Incoming gradients that autograd
    expanded are read in place (``_broadcast_grad``). ``need`` = (a, alpha, beta, v_th, bias). Returns
    ``(grad_a or None, per-neuron float64 sums (4, n): alpha, beta, v_th, bias)``."""
    batch, steps, n = v_pre.shape
    need_a, need_alpha = need[0], need[1]
    acc = torch.zeros(4, batch, n, dtype=torch.float64)
    if not v_pre.numel():
        return (torch.zeros_like(v_pre) if need_a else None), acc.sum(1)
    kind, consts, sg = surrogate_args(surrogate, v_pre, v_th)
    # dL/da may overwrite sg, element by element after reading it (not with a delay: it writes earlier steps)
    grad_a = (sg if sg is not None and delay == 0 else buffer_pool.empty(v_pre.shape, v_pre.dtype)) if need_a else None
    zeros = np.zeros((1, 1, n), dtype=v_pre.numpy().dtype)  # an absent gradient: read with steps 0, ignored
    (gs, *gs_steps), (gu, *gu_steps), (gv, *gv_steps) = (
        _broadcast_grad(g, v_pre) if g is not None else (zeros, 0, 0) for g in (g_s, g_u, g_v))
    _set_threads()
    opts = np.array([g_s is not None, g_u is not None, g_v is not None, detach_reset, need_a], dtype=np.int64)
    params = need[1:] + (detach_reset,) if any(need[1:]) else None
    _backward_kernel(kind, g_s is not None, bool(alpha_is_zero), g_u is not None or g_v is not None,
                     tuple(bool(f) for f in params) if params else None)(
        v_pre.numpy(), consts, sg.numpy() if sg is not None else _empty(v_pre), gs, gu, gv,
        np.array(gs_steps + gu_steps + gv_steps, dtype=np.int64),
        u_all.detach().contiguous().numpy() if need_alpha else _empty(v_pre), _per_neuron(alpha, n, v_pre),
        _per_neuron(beta, n, v_pre), _per_neuron(v_th, n, v_pre), _block(batch, n, _threads()), int(delay),
        grad_a.numpy() if grad_a is not None else _empty(v_pre), acc.numpy(), opts)
    return grad_a, acc.sum(1)
