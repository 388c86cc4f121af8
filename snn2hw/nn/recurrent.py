"""Recurrent CUBA-LIF: a population that also receives its own spikes of the previous step.

The neuron is ``snn2hw.nn.functional``'s float CUBA-LIF; the only change is the input current, which
adds a recurrent projection ``V`` (shape (n, n), ``V[i, j]`` is the weight from neuron j to neuron i,
the IR's (dst, src) layout) with the hardware's one-step hop delay::

    a[t] = a_ff[t] + V s[t-1]                    s[-1] = 0
    u[t] = alpha * u[t-1] + a[t]
    v[t] = beta * v[t-1] + u[t] + bias
    s[t] = v[t] > v_th ;  v[t] = 0 where s[t]

On Loihi 2 this is a Dense projection from the population to itself: a Dense sends the previous
step's accumulation, which is exactly ``V s[t-1]``. Its float value is defined as the chip forms it,
event by event: ``(V s[t-1])_i`` is the sum of ``V[i, j]`` over the neurons ``j`` that spiked at
``t - 1``, added in ascending ``j`` starting from zero, each addition rounded once in the input's dtype.
The compiled CPU kernel (``snn2hw.nn.recurrent_kernels``) and the unrolled reference both add in that
order, so their spikes and states are bit-identical; the tensor path (CUDA, or CPU without numba)
uses one GEMM per step, whose summation order is the BLAS's, and agrees to float rounding. ``V`` may be restricted to a fixed 0/1 ``mask``
(block-diagonal, sparse...); the operator then uses ``V * mask`` and ``V`` receives masked gradients.

``recurrent_cuba_lif_sequence`` runs the whole sequence as one autograd node. On CPU the forward is one
compiled, event-driven call and the backward one compiled call per step next to a (batch, n) x (n, n)
product (``recurrent_kernels``); elsewhere the forward is a time loop without an autograd graph (one
(batch, n) x (n, n) product and a few in-place elementwise ops per step). It keeps the pre-reset membrane ``v_pre`` (and
``u`` when alpha is trained). The backward pass is written by hand; with ``sg[t]`` the surrogate
derivative at ``v_pre[t] - v_th``, ``keep[t] = dv[t]/dv_pre[t]`` (``1 - s[t]``, minus ``v_pre[t] sg[t]``
when the reset is not detached) and ``g_s``, ``g_u``, ``g_v`` the incoming gradients::

    lam_s[t] = g_s[t] + V^T lam_a[t+1]                               adjoint of s[t] (recurrent term)
    lam_v[t] = g_v[t] + beta lam_p[t+1]                              adjoint of v[t] after reset
    lam_p[t] = sg[t] lam_s[t] + keep[t] lam_v[t]                     adjoint of v_pre[t]
    lam_a[t] = lam_p[t] + g_u[t] + alpha lam_a[t+1]                  = dL/da[t] = dL/da_ff[t]

    dL/dV     = (sum_t lam_a[t] s[t-1]^T) [* mask]     dL/dbias = sum lam_p
    dL/dbeta  = sum lam_p[t] v[t-1]                    dL/dalpha = sum lam_a[t] u[t-1]
    dL/dv_th  = -sum sg[t] lam_s[t] + [reset not detached] sum sg[t] v_pre[t] lam_v[t]

The terms that do not depend on the adjoints (``sg``, ``keep``, ``g_s sg``) are whole-tensor ops before
the loop; the reverse-time loop does one (batch, n) x (n, n) product and a few fused elementwise ops per
step; the parameter gradients are reductions (and one matrix product for ``V``) after it.
Everything follows the input's device and dtype.
"""
from __future__ import annotations

from typing import Union

import torch

from snn2hw.nn.functional import (Param, _as_param, _check_input, _current_step_, _is_constant_zero, _reduce_to,
                                  _voltage_step_)


def _compiled(*tensors):
    """The compiled kernels for these tensors: numba on CPU (event-driven forward), Triton on CUDA, or None."""
    return recurrent_kernels if recurrent_kernels.usable(*tensors) else triton_for(*tensors)

from snn2hw.nn import recurrent_kernels
from snn2hw.nn.kernels import triton_for
from snn2hw.nn.surrogate import FastSigmoid, Surrogate, get_surrogate

__all__ = [
    "recurrent_cuba_lif_sequence",
    "recurrent_cuba_lif_reference",
    "block_diagonal_mask",
    "random_sparse_mask",
]


class _RecurrentCubaLIF(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a_ff, weight, alpha, beta, v_th, bias, surrogate, detach_reset, return_state, alpha_is_zero,
                feedback=None):
        batch, steps, n = a_ff.shape
        # the matrix that carries the error back through the recurrent hop: V itself (BPTT), or a fixed
        # feedback matrix (feedback alignment through time); V's own gradient does not use it
        back = weight if feedback is None else feedback
        need_alpha_grad = ctx.needs_input_grad[2]
        keep_u = return_state or need_alpha_grad
        ctx.surrogate = surrogate
        ctx.detach_reset = detach_reset
        ctx.alpha_is_zero = alpha_is_zero
        ctx.bias_is_scalar = bias is not None and bias.dim() == 0
        ctx.set_materialize_grads(False)
        backend = _compiled(a_ff, weight, alpha, beta, v_th, bias)
        if backend is not None:
            # CPU: the whole loop in one compiled call, event-driven (bit-identical to the reference);
            # CUDA: one product and one fused elementwise launch per step
            v_pre, spikes, u_all, v_all = backend.recurrent_forward(a_ff, weight, alpha, beta, v_th, bias,
                                                                    alpha_is_zero, keep_u, return_state)
            ctx.save_for_backward(v_pre, u_all if need_alpha_grad else None, back, alpha, beta, v_th)
            return (spikes, u_all, v_all) if return_state else spikes
        w_t = weight.t()  # (src, dst): the recurrent input is s[t-1] @ w_t
        v_pre = a_ff.new_empty(batch, steps, n)
        spikes = a_ff.new_empty(batch, steps, n)
        u_all = a_ff.new_empty(batch, steps, n) if keep_u else None
        v_all = a_ff.new_empty(batch, steps, n) if return_state else None
        a_steps, vp_steps, s_steps = a_ff.unbind(1), v_pre.unbind(1), spikes.unbind(1)
        u_steps = u_all.unbind(1) if u_all is not None else None
        v_steps = v_all.unbind(1) if v_all is not None else None
        a_t = a_ff.new_empty(batch, n)
        rec = a_ff.new_empty(batch, n)
        u_state = a_ff.new_empty(batch, n)
        v_state = a_ff.new_empty(batch, n)
        u_prev = a_ff.new_zeros(batch, n)
        v_prev = a_ff.new_zeros(batch, n)
        for t in range(steps):
            # a[t] = a_ff[t] + s[t-1] @ V^T (as the reference: the product first, then the sum)
            if t == 0:
                a_t.copy_(a_steps[0])
            else:
                torch.mm(s_steps[t - 1], w_t, out=rec)
                torch.add(a_steps[t], rec, out=a_t)
            u_t = u_steps[t] if u_steps is not None else u_state
            if alpha_is_zero:
                u_t.copy_(a_t)
            else:
                _current_step_(u_prev, a_t, alpha, u_t)
            u_prev = u_t
            v_prev = _voltage_step_(v_prev, u_t, beta, bias, v_th, vp_steps[t], s_steps[t],
                                    v_steps[t] if v_steps is not None else v_state)
        ctx.save_for_backward(v_pre, u_all if need_alpha_grad else None, back, alpha, beta, v_th)
        if return_state:
            return spikes, u_all, v_all
        return spikes

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_s, g_u=None, g_v=None):
        if g_s is None and g_u is None and g_v is None:
            return (None,) * 11
        v_pre, u_all, weight, alpha, beta, v_th = ctx.saved_tensors
        need_a, need_w, need_alpha, need_beta, need_vth, need_bias = ctx.needs_input_grad[:6]
        surrogate: Surrogate = ctx.surrogate
        batch, steps, n = v_pre.shape
        backend = _compiled(v_pre, weight, g_s, g_u, g_v)
        if backend is not None:
            fused = type(surrogate) is FastSigmoid  # its derivative is computed inside the kernel
            lam_a, sums = backend.recurrent_backward(v_pre, weight, surrogate, g_s, g_u, g_v, u_all, alpha, beta, v_th,
                                                     ctx.detach_reset, ctx.alpha_is_zero,
                                                     (need_alpha, need_beta, need_vth, need_bias, fused))
            sums = sums.to(v_pre.dtype)
            grad_w = None
            if need_w:  # one GEMM over all (batch, step) rows
                s_prev = (v_pre[:, :-1] > v_th).to(v_pre.dtype).reshape(-1, n)
                grad_w = lam_a[:, 1:].reshape(-1, n).t() @ s_prev
            return (lam_a if need_a else None, grad_w,
                    _reduce_to(sums[0], alpha.dim() == 0) if need_alpha else None,
                    _reduce_to(sums[1], beta.dim() == 0) if need_beta else None,
                    _reduce_to(sums[2], v_th.dim() == 0) if need_vth else None,
                    _reduce_to(sums[3], ctx.bias_is_scalar) if need_bias else None,
                    None, None, None, None, None)

        # Whole-sequence terms that do not depend on the adjoints.
        sg = surrogate.derivative_(v_pre - v_th)  # (batch, T, n)
        keep = (v_pre <= v_th).to(v_pre.dtype)
        if not ctx.detach_reset:
            vp_sg = v_pre * sg
            keep.sub_(vp_sg)
        # gsg[t] = sg[t] lam_s[t]: starts as sg g_s, the recurrent part is added in the loop.
        gsg = g_s * sg if g_s is not None else torch.zeros_like(v_pre)
        lam_p = torch.empty_like(v_pre)
        lam_a = torch.empty_like(v_pre)
        lam_v = torch.empty_like(v_pre) if (need_vth and not ctx.detach_reset) else None

        lam_p_next = v_pre.new_zeros(batch, n)
        lam_a_next = v_pre.new_zeros(batch, n)
        lv = v_pre.new_empty(batch, n)
        rec = v_pre.new_empty(batch, n)
        gsg_s, keep_s, sg_s = gsg.unbind(1), keep.unbind(1), sg.unbind(1)
        lp_s, la_s = lam_p.unbind(1), lam_a.unbind(1)
        gu_s = g_u.unbind(1) if g_u is not None else None
        gv_s = g_v.unbind(1) if g_v is not None else None
        lv_s = lam_v.unbind(1) if lam_v is not None else None
        for t in range(steps - 1, -1, -1):
            # lam_v[t] = g_v[t] + beta lam_p[t+1]
            lv_t = lv_s[t] if lv_s is not None else lv
            torch.mul(lam_p_next, beta, out=lv_t)
            if gv_s is not None:
                lv_t.add_(gv_s[t])
            # sg[t] lam_s[t] = sg[t] g_s[t] + sg[t] (lam_a[t+1] @ V)
            if t < steps - 1:
                torch.mm(lam_a_next, weight, out=rec)
                gsg_s[t].addcmul_(sg_s[t], rec)
            lp_t = lp_s[t]
            torch.addcmul(gsg_s[t], keep_s[t], lv_t, out=lp_t)
            # lam_a[t] = lam_p[t] + g_u[t] + alpha lam_a[t+1]
            la_t = la_s[t]
            if ctx.alpha_is_zero:
                la_t.copy_(lp_t)
            else:
                torch.addcmul(lp_t, lam_a_next, alpha, out=la_t)
            if gu_s is not None:
                la_t.add_(gu_s[t])
            lam_p_next, lam_a_next = lp_t, la_t

        grad_w = grad_alpha = grad_beta = grad_vth = grad_bias = None
        if need_w:
            s_prev = (v_pre[:, :-1] > v_th).to(v_pre.dtype).reshape(-1, n)
            grad_w = lam_a[:, 1:].reshape(-1, n).t() @ s_prev
        if need_alpha:
            acc = (lam_a[:, 1:] * u_all[:, :-1]).sum((0, 1))
            grad_alpha = _reduce_to(acc, alpha.dim() == 0)
        if need_beta:
            v_prev = v_pre[:, :-1] * (v_pre[:, :-1] <= v_th)
            grad_beta = _reduce_to((lam_p[:, 1:] * v_prev).sum((0, 1)), beta.dim() == 0)
        if need_vth:
            acc = -gsg.sum((0, 1))
            if not ctx.detach_reset:
                acc = acc + (lam_v * vp_sg).sum((0, 1))
            grad_vth = _reduce_to(acc, v_th.dim() == 0)
        if need_bias:
            grad_bias = _reduce_to(lam_p.sum((0, 1)), ctx.bias_is_scalar)
        return (lam_a if need_a else None, grad_w, grad_alpha, grad_beta, grad_vth, grad_bias,
                None, None, None, None, None)


def _weight(weight: torch.Tensor, mask: torch.Tensor | None, n: int, like: torch.Tensor) -> torch.Tensor:
    if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != (n, n):
        raise ValueError(f"recurrent weight must have shape ({n}, {n}), got {tuple(getattr(weight, 'shape', ()))}")
    w = weight.to(dtype=like.dtype, device=like.device)
    if mask is not None:
        if tuple(mask.shape) != (n, n):
            raise ValueError(f"recurrent mask must have shape ({n}, {n}), got {tuple(mask.shape)}")
        w = w * mask.to(dtype=like.dtype, device=like.device)  # autograd masks V's gradient
    return w


def recurrent_cuba_lif_sequence(
    a_ff: torch.Tensor,
    weight: torch.Tensor,
    alpha: Param,
    beta: Param,
    v_th: Param,
    bias: Param | None = None,
    mask: torch.Tensor | None = None,
    surrogate: Union[str, Surrogate] = "fast_sigmoid",
    detach_reset: bool = True,
    return_state: bool = False,
    feedback: torch.Tensor | None = None,
):
    """Spikes of a recurrent CUBA-LIF population, input currents ``a_ff`` (batch, T, n) from the
    feed-forward path (already hop-delayed by the caller) and recurrent weights ``weight`` (n, n),
    ``weight[i, j]`` from neuron j to neuron i, applied with a one-step delay.

    ``mask`` (n, n), 0/1, restricts the recurrent connections (``weight * mask`` is used; ``weight``
    gets masked gradients). ``feedback`` (n, n), fixed: the backward pass carries the error back
    through the recurrent hop with ``feedback`` (masked like ``weight``) in place of ``weight``,
    ``lam_s[t] = g_s[t] + feedback^T lam_a[t+1]`` (feedback alignment through time); the gradients of
    ``weight`` and of the neuron parameters keep their form. The other arguments and the return value
    are those of ``snn2hw.nn.functional.cuba_lif_sequence``.
    """
    _check_input(a_ff)
    n = a_ff.shape[2]
    surrogate = get_surrogate(surrogate)
    alpha_is_zero = _is_constant_zero(alpha)
    skip_bias = bias is None or _is_constant_zero(bias)
    return _RecurrentCubaLIF.apply(
        a_ff, _weight(weight, mask, n, a_ff), _as_param(alpha, "alpha", n, a_ff), _as_param(beta, "beta", n, a_ff),
        _as_param(v_th, "v_th", n, a_ff), None if skip_bias else _as_param(bias, "bias", n, a_ff),
        surrogate, bool(detach_reset), bool(return_state), alpha_is_zero,
        None if feedback is None else _weight(feedback.detach(), mask, n, a_ff),
    )


def recurrent_cuba_lif_reference(
    a_ff: torch.Tensor,
    weight: torch.Tensor,
    alpha: Param,
    beta: Param,
    v_th: Param,
    bias: Param | None = None,
    mask: torch.Tensor | None = None,
    surrogate: Union[str, Surrogate] = "fast_sigmoid",
    detach_reset: bool = True,
    return_state: bool = False,
):
    """``recurrent_cuba_lif_sequence`` as a plain unrolled PyTorch loop; slow, for testing only."""
    _check_input(a_ff)
    batch, steps, n = a_ff.shape
    surrogate = get_surrogate(surrogate)
    w = _weight(weight, mask, n, a_ff)
    alpha, beta, v_th = (_as_param(p, k, n, a_ff) for p, k in ((alpha, "alpha"), (beta, "beta"), (v_th, "v_th")))
    bias = _as_param(bias, "bias", n, a_ff)
    w_t = w.t()  # row j: what a spike of neuron j adds
    u = a_ff.new_zeros(batch, n)
    v = a_ff.new_zeros(batch, n)
    s = a_ff.new_zeros(batch, n)
    spikes, us, vs = [], [], []
    for t in range(steps):
        if t == 0:
            a = a_ff[:, 0]
        else:
            # V s[t-1], added in ascending source order (the operator's definition; s is exactly 0 or 1,
            # so an absent spike adds an exact zero)
            r = a_ff.new_zeros(batch, n)
            for j in range(n):
                r = r + s[:, j : j + 1] * w_t[j]
            a = a_ff[:, t] + r
        u = alpha * u + a
        v = beta * v + u
        if bias is not None:
            v = v + bias
        s = surrogate(v - v_th)
        v = v * (1.0 - (s.detach() if detach_reset else s))
        spikes.append(s)
        us.append(u)
        vs.append(v)
    stack = (lambda xs: torch.stack(xs, 1)) if steps else (lambda xs: a_ff.new_zeros(batch, 0, n))
    if return_state:
        return stack(spikes), stack(us), stack(vs)
    return stack(spikes)


# --- connectivity masks ---------------------------------------------------------------------------------
def block_diagonal_mask(n: int, blocks: int) -> torch.Tensor:
    """(n, n) 0/1 mask connecting neurons only within ``blocks`` contiguous groups of (nearly) equal size."""
    if not 1 <= blocks <= max(n, 1):
        raise ValueError(f"blocks must lie in [1, {n}], got {blocks}")
    group = torch.arange(n) * blocks // max(n, 1)
    return (group[:, None] == group[None, :]).to(torch.float32)


def random_sparse_mask(n: int, density: float, seed: int = 0, self_connections: bool = True) -> torch.Tensor:
    """(n, n) 0/1 mask keeping each connection with probability ``density`` (a fixed seed: reproducible)."""
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must lie in [0, 1], got {density}")
    g = torch.Generator().manual_seed(seed)
    m = (torch.rand(n, n, generator=g) < density).to(torch.float32)
    if not self_connections:
        m.fill_diagonal_(0.0)
    return m
