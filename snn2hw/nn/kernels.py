"""Compiled CPU kernels for the float CUBA-LIF scan of ``snn2hw.nn.functional`` and its backward pass.

The operators in ``functional`` run their per-step loop as a few tensor ops per step; on a CPU each op
costs microseconds of dispatch, which at (batch 16, n 512) is most of a step's time. These kernels run
the whole time loop of a (sample, block of neurons) job in one numba-compiled call instead, in
parallel over jobs:

* ``lif_forward`` evaluates exactly the products and sums of ``functional``'s docstring, in the same
  order and each rounded once in the input's dtype (numba does not contract ``x * y + z`` into a fused
  multiply-add without ``fastmath``), so its spikes and states are bit-identical to the unrolled
  reference; tests/test_nn_functional.py checks that on random inputs.
* ``lif_backward`` runs the adjoint recursions of the same docstring; the surrogate derivative is
  computed before it with the surrogate's own whole-tensor op, so any registered surrogate works.
  Parameter gradients are accumulated in float64 per (sample, neuron) and summed by the caller.

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

__all__ = ["available", "usable", "triton_for", "lif_forward", "lif_backward"]

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


def _forward_kernel(alpha_zero: bool, has_bias: bool, keep_u: bool, keep_v: bool):
    """The forward scan for one combination of options. The options are closure constants, so each
    variant compiles without branches on them in its inner loop (which then vectorises)."""
    key = ("forward", alpha_zero, has_bias, keep_u, keep_v)
    if key in _kernels:
        return _kernels[key]

    @numba.njit(parallel=True, nogil=True, boundscheck=False, cache=True)
    def forward(a, alpha, beta, vth, bias, unit, block, delay, v_pre, spikes, u_all, v_all):
        _key = (alpha_zero, has_bias, keep_u, keep_v)  # only here to put the options into the closure
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


def _backward_kernel(flags: tuple, fast_sigmoid: bool):
    """The backward recursions for one combination of ``flags`` (closure constants, as above)."""
    key = ("backward", fast_sigmoid) + flags
    if key in _kernels:
        return _kernels[key]
    has_gs, has_gu, has_gv, detach, alpha_zero, need_a, need_alpha, need_beta, need_vth, need_bias = flags
    need_lam_u = need_a or need_alpha

    @numba.njit(parallel=True, nogil=True, boundscheck=False, cache=True)
    def backward(v_pre, sg, g_s, g_u, g_v, u_all, alpha, beta, vth, unit, scale, block, delay, grad_a, acc):
        _key = (flags, fast_sigmoid)  # only here to put the options into the closure
        batch, steps, n = v_pre.shape
        blocks = (n + block - 1) // block
        for job in numba.prange(batch * blocks):
            b, lo, hi = _job_span(job, blocks, block, n)
            width = hi - lo
            al = alpha[lo:hi]
            be = beta[lo:hi]
            th = vth[lo:hi]
            one = unit[0]
            zero = one - one
            lp_next = np.zeros(width, dtype=v_pre.dtype)  # lam_p[t+1]
            lu_next = np.zeros(width, dtype=v_pre.dtype)  # lam_u[t+1]
            a_alpha = np.zeros(width, dtype=np.float64)
            a_beta = np.zeros(width, dtype=np.float64)
            a_vth = np.zeros(width, dtype=np.float64)
            a_bias = np.zeros(width, dtype=np.float64)
            for t in range(steps - 1, -1, -1):
                # 1-D views of this step: with these LLVM vectorises the loop over neurons
                vp = v_pre[b, t, lo:hi]
                sgt = vp if fast_sigmoid else sg[b, t, lo:hi]
                gst = g_s[b, t, lo:hi] if has_gs else sgt
                gut = g_u[b, t, lo:hi] if has_gu else sgt
                gvt = g_v[b, t, lo:hi] if has_gv else sgt
                vq = v_pre[b, max(t - 1, 0), lo:hi]  # v_pre[t-1] (unused at t = 0)
                uq = u_all[b, max(t - 1, 0), lo:hi] if need_alpha else sgt
                write = need_a and t >= delay  # dL/da[t - delay]; the last `delay` inputs reach no step
                out = grad_a[b, t - delay, lo:hi] if write else sgt
                for i in range(width):
                    x = vp[i]
                    if fast_sigmoid:  # FastSigmoid.derivative: 1 / (1 + scale |x - v_th|)^2
                        q = one + scale[0] * abs(x - th[i])
                        d = one / (q * q)
                    else:
                        d = sgt[i]
                    keep = one if x <= th[i] else zero  # 1 - s[t]
                    if not detach:
                        keep = keep - x * d
                    lam = gst[i] * d if has_gs else zero
                    if need_vth:
                        a_vth[i] -= lam
                    if has_gv:
                        lam = lam + keep * gvt[i]
                    # lam_p[t] = lam[t] + (beta keep[t]) lam_p[t+1]
                    lamp = lam + (keep * be[i]) * lp_next[i]
                    if need_bias:
                        a_bias[i] += lamp
                    if need_beta and t > 0:
                        vprev = vq[i]
                        a_beta[i] += lamp * (vprev if vprev <= th[i] else zero)  # v[t-1] after reset
                    if need_vth and not detach:
                        lam_v = be[i] * lp_next[i]
                        if has_gv:
                            lam_v = lam_v + gvt[i]
                        a_vth[i] += lam_v * (x * d)
                    lp_next[i] = lamp
                    if need_lam_u:
                        lu = lamp
                        if has_gu:
                            lu = lu + gut[i]
                        if not alpha_zero:
                            lu = lu + lu_next[i] * al[i]
                        if need_alpha and t > 0:
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
    v_pre = torch.empty_like(a)
    spikes = torch.empty_like(a)
    u_all = torch.empty_like(a) if keep_u else None
    v_all = torch.empty_like(a) if keep_v else None
    if a.numel():
        _set_threads()
        unit = np.ones(1, dtype=a.numpy().dtype)
        _forward_kernel(bool(alpha_is_zero), bias is not None, bool(keep_u), bool(keep_v))(
            a.numpy(), _per_neuron(alpha, n, a), _per_neuron(beta, n, a), _per_neuron(v_th, n, a),
            _per_neuron(bias, n, a), unit, _block(batch, n, _threads()), int(delay), v_pre.numpy(), spikes.numpy(),
            u_all.numpy() if keep_u else _empty(a), v_all.numpy() if keep_v else _empty(a))
    return v_pre, spikes, u_all, v_all


def lif_backward(v_pre: torch.Tensor, surrogate, g_s, g_u, g_v, u_all, alpha, beta, v_th, detach_reset: bool,
                 alpha_is_zero: bool, need: tuple[bool, bool, bool, bool, bool], delay: int = 0):
    """The adjoint recursions. The surrogate derivative at ``v_pre - v_th`` is computed inside the kernel
    for ``FastSigmoid`` (the default surrogate; saves five passes over the sequence) and with the
    surrogate's own tensor op before it otherwise. ``need`` = (a, alpha, beta, v_th, bias). Returns
    ``(grad_a or None, per-neuron float64 sums (4, n): alpha, beta, v_th, bias)``."""
    from snn2hw.nn.surrogate import FastSigmoid

    batch, steps, n = v_pre.shape
    need_a, need_alpha, need_beta, need_vth, need_bias = need

    def arr(t):
        return t.detach().contiguous().numpy() if t is not None else _empty(v_pre)

    acc = torch.zeros(4, batch, n, dtype=torch.float64)
    fused = type(surrogate) is FastSigmoid
    if fused:
        sg = None
        grad_a = torch.empty_like(v_pre) if need_a else None
    else:
        sg = surrogate.derivative_(torch.sub(v_pre, v_th))
        # dL/da overwrites sg, element by element after reading it (not with a delay: it writes earlier steps)
        grad_a = (sg if delay == 0 else torch.empty_like(v_pre)) if need_a else None
    if v_pre.numel():
        _set_threads()
        flags = tuple(bool(f) for f in (g_s is not None, g_u is not None, g_v is not None, detach_reset,
                                        alpha_is_zero, need_a, need_alpha, need_beta, need_vth, need_bias))
        dtype = v_pre.numpy().dtype
        unit = np.ones(1, dtype=dtype)
        scale = np.full(1, surrogate.scale if fused else 0.0, dtype=dtype)
        _backward_kernel(flags, fused)(
            v_pre.numpy(), sg.numpy() if sg is not None else _empty(v_pre), arr(g_s), arr(g_u), arr(g_v),
            arr(u_all) if need_alpha else _empty(v_pre), _per_neuron(alpha, n, v_pre), _per_neuron(beta, n, v_pre),
            _per_neuron(v_th, n, v_pre), unit, scale, _block(batch, n, _threads()), int(delay),
            grad_a.numpy() if grad_a is not None else _empty(v_pre), acc.numpy())
    elif need_a:
        grad_a = torch.zeros_like(v_pre)
    return grad_a, acc.sum(1)
