"""Compiled CPU kernels for the recurrent CUBA-LIF operator of ``snn2hw.nn.recurrent``.

Forward (``recurrent_forward``): one numba call runs the whole time loop, in parallel over samples
(samples are independent, so no thread waits for another between steps). The recurrent input is
event-driven, as on the chip: ``r[t]`` is the sum of the rows ``V^T[j]`` of the neurons ``j`` that
spiked at ``t - 1``, added in ascending ``j`` starting from zero, in the input's dtype. That order is
the operator's definition (``recurrent.py`` states it and its unrolled reference adds in the same order),
so spikes and states are bit-identical to the reference; a GEMM would add the same terms in the BLAS's
own (blocked, thread-count dependent) order. It also does ``spikes x n`` additions per step instead of
the ``n x n`` multiply-adds of a dense product: at a spike rate of 10 % a tenth of them.

Backward (``recurrent_backward``): the adjoint needs ``lam_a[t+1] V`` at every step, a dense
(batch, n) x (n, n) product (the adjoints are not sparse), which stays a BLAS call (``torch.mm``,
reading V once per step for the whole batch); everything else of a step (surrogate derivative, the
three adjoint recursions and the four parameter-gradient sums) is one compiled call over (batch, n)
per step instead of about ten tensor ops. ``dL/dV`` is one GEMM over all ``T x batch`` rows afterwards.
"""
from __future__ import annotations

import numpy as np
import torch

from snn2hw.nn import buffer_pool
from snn2hw.nn.kernels import (_broadcast_grad, _empty, _per_neuron, _set_threads, available, numba, surrogate_args,
                               usable)

if numba is not None:
    from snn2hw.nn.kernels import surrogate_at

__all__ = ["available", "usable", "recurrent_forward", "recurrent_backward"]

_kernels: dict = {}


def _forward_kernel(alpha_zero: bool, has_bias: bool):
    """The forward scan; the options that shape its inner loop are closure constants (one compiled variant
    each), the others run-time arguments (fewer variants to compile)."""
    key = ("forward", alpha_zero, has_bias)
    if key in _kernels:
        return _kernels[key]

    @numba.njit(parallel=True, nogil=True, boundscheck=False, cache=True)
    def forward(a, wt, alpha, beta, vth, bias, unit, v_pre, spikes, keep_u, u_all, keep_v, v_all):
        _key = (alpha_zero, has_bias)  # only here to put the options into the closure
        batch, steps, n = a.shape
        for b in numba.prange(batch):
            one = unit[0]  # every product and sum stays in the input's dtype
            zero = one - one
            u = np.zeros(n, dtype=a.dtype)
            v = np.zeros(n, dtype=a.dtype)
            r = np.zeros(n, dtype=a.dtype)
            active = np.empty(n, dtype=np.int64)
            n_active = 0
            for t in range(steps):
                # r = sum of V^T[j] over the neurons j that spiked at t-1, in ascending j
                for i in range(n):
                    r[i] = zero
                for k in range(n_active):
                    row = wt[active[k]]
                    for i in range(n):
                        r[i] += row[i]
                at = a[b, t]
                vp = v_pre[b, t]
                sp = spikes[b, t]
                for i in range(n):
                    ai = at[i] + r[i] if t > 0 else at[i]  # a[t] = a_ff[t] + r[t]
                    if alpha_zero:
                        uu = ai
                    else:
                        uu = u[i] * alpha[i] + ai
                    u[i] = uu
                    x = v[i] * beta[i] + uu
                    if has_bias:
                        x = x + bias[i]
                    vp[i] = x
                    sv = one if x > vth[i] else zero
                    sp[i] = sv
                    v[i] = x * (one - sv)
                n_active = 0
                for i in range(n):
                    if sp[i] != zero:
                        active[n_active] = i
                        n_active += 1
                if keep_u:
                    ur = u_all[b, t]
                    for i in range(n):
                        ur[i] = u[i]
                if keep_v:
                    vr = v_all[b, t]
                    for i in range(n):
                        vr[i] = v[i]

    _kernels[key] = forward
    return forward


def _backward_step_kernel(flags: tuple, kind: int):
    """The elementwise part of one reverse-time step (closure constants select the variant, the surrogate
    ``kind`` included: see ``kernels.surrogate_at``)."""
    key = ("backward", kind) + flags
    if key in _kernels:
        return _kernels[key]
    has_gs, detach, alpha_zero = flags

    @numba.njit(nogil=True, boundscheck=False, cache=True)
    def step(t, v_pre, consts, sg, g_s, has_gu, g_u, has_gv, g_v, steps_g, u_all, rec, alpha, beta, vth,
             lp_next, lam_a, acc, need):
        need_alpha, need_beta, need_vth, need_bias = need[0], need[1], need[2], need[3]
        _key = (flags, kind)  # only here to put the options into the closure
        batch, steps, n = v_pre.shape
        c0, c1, c2, one = consts[0], consts[1], consts[2], consts[3]
        zero = one - one
        last = t == steps - 1
        for b in range(batch):
            vp = v_pre[b, t]
            sgt = sg[b, t] if kind == 0 else vp
            vq = v_pre[b, max(t - 1, 0)]  # v_pre[t-1] (unused at t = 0)
            # an expanded (broadcast) gradient is read at batch / time index 0 (steps_g holds 0 or 1 per dim)
            gst = g_s[b * steps_g[0], t * steps_g[1]] if has_gs else vp
            gut = g_u[b * steps_g[2], t * steps_g[3]] if has_gu else vp
            gvt = g_v[b * steps_g[4], t * steps_g[5]] if has_gv else vp
            uq = u_all[b, max(t - 1, 0)] if need_alpha else vp
            la_later = lam_a[b, min(t + 1, steps - 1)]
            rc = rec[b]
            lp = lp_next[b]
            out = lam_a[b, t]
            for i in range(n):
                x = vp[i]
                d = sgt[i] if kind == 0 else surrogate_at(kind, c0, c1, c2, one, x - vth[i])
                keep = one if x <= vth[i] else zero  # 1 - s[t]
                if not detach:
                    keep = keep - x * d
                # lam_s[t] = g_s[t] + (lam_a[t+1] V)  (nothing crosses the hop after the last step)
                ls = gst[i] if has_gs else zero
                if not last:
                    ls = ls + rc[i]
                gsg = d * ls
                lam_v = zero if last else beta[i] * lp[i]  # adjoint of v[t] after reset
                if has_gv:
                    lam_v = lam_v + gvt[i]
                lamp = gsg + keep * lam_v  # adjoint of v_pre[t]
                if need_vth:
                    acc[2, i] -= gsg
                    if not detach:
                        acc[2, i] += lam_v * (x * d)
                if need_bias:
                    acc[3, i] += lamp
                if need_beta and t > 0:
                    vprev = vq[i]
                    acc[1, i] += lamp * (vprev if vprev <= vth[i] else zero)  # v[t-1] after reset
                lp[i] = lamp
                la = lamp
                if has_gu:
                    la = la + gut[i]
                if not alpha_zero and not last:
                    la = la + alpha[i] * la_later[i]
                if need_alpha and t > 0:
                    acc[0, i] += la * uq[i]
                out[i] = la

    _kernels[key] = step
    return step


def recurrent_forward(a_ff: torch.Tensor, weight: torch.Tensor, alpha, beta, v_th, bias, alpha_is_zero: bool,
                      keep_u: bool, keep_v: bool):
    """The forward scan over contiguous CPU ``a_ff`` (batch, T, n) with recurrent ``weight`` V (n, n)
    (dst, src): ``(v_pre, spikes, u_all, v_all)``, the last two None unless asked for."""
    batch, steps, n = a_ff.shape
    a = a_ff.detach().contiguous()
    wt = weight.detach().t().contiguous()  # (src, dst): row j is what a spike of neuron j adds
    v_pre, spikes, u_all, v_all = (buffer_pool.empty(a.shape, a.dtype) if keep else None
                                   for keep in (True, True, keep_u, keep_v))
    if a.numel():
        _set_threads()
        _forward_kernel(bool(alpha_is_zero), bias is not None)(
            a.numpy(), wt.numpy(), _per_neuron(alpha, n, a), _per_neuron(beta, n, a), _per_neuron(v_th, n, a),
            _per_neuron(bias, n, a), np.ones(1, dtype=a.numpy().dtype), v_pre.numpy(), spikes.numpy(),
            bool(keep_u), u_all.numpy() if keep_u else _empty(a), bool(keep_v), v_all.numpy() if keep_v else _empty(a))
    return v_pre, spikes, u_all, v_all


def recurrent_backward(v_pre: torch.Tensor, weight: torch.Tensor, surrogate, g_s, g_u, g_v, u_all, alpha, beta,
                       v_th, detach_reset: bool, alpha_is_zero: bool, need: tuple[bool, bool, bool, bool, bool]):
    """The adjoint recursions: ``(lam_a, per-neuron float64 sums (4, n): alpha, beta, v_th, bias)``.

    ``lam_a`` (batch, T, n) is dL/da_ff; the caller forms dL/dV from it. ``need`` = (alpha, beta, v_th,
    bias, surrogate is FastSigmoid); the last entry is for the Triton kernels: these compute the derivative
    of every built-in surrogate inside the step (``kernels.fused_surrogate``)."""
    batch, steps, n = v_pre.shape
    need_alpha, need_beta, need_vth, need_bias, _ = need
    v_pre = v_pre.detach().contiguous()
    weight = weight.detach().contiguous()
    acc = np.zeros((4, n), dtype=np.float64)
    lam_a = buffer_pool.empty(v_pre.shape, v_pre.dtype)
    if v_pre.numel() == 0:
        return lam_a, torch.from_numpy(acc)
    kind, consts, sg = surrogate_args(surrogate, v_pre, v_th)
    (gs, *gs_steps), (gu, *gu_steps), (gv, *gv_steps) = (_broadcast_grad(g, v_pre) for g in (g_s, g_u, g_v))
    rec = torch.zeros(batch, n, dtype=v_pre.dtype)
    lp_next = np.zeros((batch, n), dtype=v_pre.numpy().dtype)
    step = _backward_step_kernel((g_s is not None, bool(detach_reset), bool(alpha_is_zero)), kind)
    args = (v_pre.numpy(), consts, sg.numpy() if sg is not None else _empty(v_pre), gs, g_u is not None, gu,
            g_v is not None, gv, np.array(gs_steps + gu_steps + gv_steps, dtype=np.int64),
            u_all.detach().contiguous().numpy() if need_alpha else _empty(v_pre), rec.numpy(),
            _per_neuron(alpha, n, v_pre), _per_neuron(beta, n, v_pre), _per_neuron(v_th, n, v_pre), lp_next,
            lam_a.numpy(), acc, np.array([need_alpha, need_beta, need_vth, need_bias]))
    for t in range(steps - 1, -1, -1):
        if t < steps - 1:
            torch.mm(lam_a[:, t + 1], weight, out=rec)  # lam_a[t+1] V: what s[t] fed into a[t+1]
        step(t, *args)
    return lam_a, torch.from_numpy(acc)
