"""Fast, exact-gradient sequence operators for the float CUBA-LIF neuron.

The float neuron is the continuous relaxation of the integer one in ``snn2hw.hw.loihi2`` (see
``snn2hw.ir``). Given the synaptic input ``a[t]`` of every step (the caller applies the hop delay)::

    u[t] = alpha * u[t-1] + a[t]                 alpha = 1 - du
    v[t] = beta * v[t-1] + u[t] + bias           beta  = 1 - dv
    s[t] = v[t] > v_th                           strict, as the hardware compares
    v[t] = v[t] * (1 - s[t])                     reset only v; u keeps its value
    u[-1] = v[-1] = 0

``cuba_lif_sequence`` runs this over a whole (batch, T, n) sequence as one autograd node. Its forward
is a plain time loop of a few in-place elementwise ops without an autograd graph; it evaluates the
products and sums in exactly the order above, each rounded once, so its spikes and states are
bit-identical to an unrolled PyTorch loop (``cuba_lif_reference``). It keeps only the pre-reset membrane
``v_pre[t]`` for the backward pass (plus ``u`` when alpha is trained).

The backward pass is written by hand. With ``x[t] = v_pre[t] - v_th``, ``sg[t]`` the surrogate
derivative at ``x[t]``, ``g_s``, ``g_u``, ``g_v`` the incoming gradients of spikes and (optional)
state traces, and ``lam_*`` the adjoints (total derivatives of the loss)::

    keep[t]   = d v[t] / d v_pre[t] = (1 - s[t])                    detach_reset=True
                                    = (1 - s[t]) - v_pre[t] sg[t]    detach_reset=False
    lam_p[t]  = g_s[t] sg[t] + keep[t] (g_v[t] + beta lam_p[t+1])    adjoint of v_pre[t]
    lam_u[t]  = lam_p[t] + g_u[t] + alpha lam_u[t+1]                 adjoint of u[t] = dL/da[t]

Everything that does not depend on the adjoints (the surrogate, keep, ``g_s sg``) is computed with
whole-tensor ops over a block of steps, so the sequential part is one fused multiply-add per step for
``lam_p`` (and one more for ``lam_u`` when alpha is not zero). Blocks are processed in reverse time
order, which bounds the temporaries to one block. Parameter gradients are reductions over batch and
time::

    dL/dbias  = sum lam_p[t]                 dL/dbeta  = sum lam_p[t] v[t-1]   (v after reset)
    dL/dalpha = sum lam_u[t] u[t-1]          dL/dv_th = -sum sg[t] (g_s[t] - [not detached] v_pre[t] lam_v[t])
    with lam_v[t] = g_v[t] + beta lam_p[t+1], the adjoint of v[t] after reset.

``leaky_readout_sequence`` is the same neuron without threshold and reset (a leaky integrator read-out,
returns v), with its own two-recursion backward.

The operators follow the input's device and dtype. Each runs its loop in a compiled kernel where one
applies (``_compiled``): numba on CPU (``snn2hw.nn.kernels``), Triton on CUDA
(``snn2hw.nn.triton_kernels``), with the same arithmetic; otherwise in the tensor loop below.
"""
from __future__ import annotations

import torch

from snn2hw.nn import kernels
from snn2hw.nn.spike_dense import density_limit, spike_linear
from snn2hw.nn.surrogate import Surrogate, get_surrogate

__all__ = [
    "cuba_lif_reference",
    "cuba_lif_sequence",
    "leaky_readout_reference",
    "leaky_readout_sequence",
    # the input product of a spiking layer (defined, with its compiled kernels, in snn2hw.nn.spike_dense)
    "density_limit",
    "spike_linear",
]

Param = float | torch.Tensor

# The backward pass works on blocks of steps of at most this many elements. It equals PyTorch's
# parallelisation grain (at::internal::GRAIN_SIZE), so each block op runs on the calling thread:
# hundreds of small OpenMP parallel regions gain little on an idle machine but cost up to a scheduler
# time slice each when other processes compete for the cores (measured on 2 shared cores, N = 2048:
# a median backward 15x longer with 4x larger blocks). Blocks this small also stay in cache between
# the block ops and the per-step recursion over the same block.
_BLOCK_ELEMENTS = 1 << 15


# --- argument handling ---------------------------------------------------------------------------------
def _check_input(a: torch.Tensor) -> None:
    if not isinstance(a, torch.Tensor) or a.dim() != 3:
        raise ValueError(f"expected input currents of shape (batch, T, n), got {getattr(a, 'shape', type(a))}")
    if not a.is_floating_point():
        raise TypeError(f"input currents must be floating point, got {a.dtype}")


def _as_param(p: Param | None, name: str, n: int, like: torch.Tensor) -> torch.Tensor | None:
    """A neuron parameter as a 0-dim (per-layer) or (n,) (per-neuron) tensor in ``like``'s dtype/device.

    The conversion is differentiable, so gradients reach the caller's tensor in its own shape/dtype.
    """
    if p is None:
        return None
    if not isinstance(p, torch.Tensor):
        return torch.tensor(float(p), dtype=like.dtype, device=like.device)
    if p.numel() == 1:
        p = p.reshape(())
    elif p.numel() == n:
        p = p.reshape(n)
    else:
        raise ValueError(f"{name} must be a scalar or have {n} elements (one per neuron), got shape {tuple(p.shape)}")
    return p.to(dtype=like.dtype, device=like.device)


def _is_constant_zero(p: Param | None) -> bool:
    """True when ``p`` is a constant zero that the forward may skip without changing any value.

    Only Python numbers and CPU tensors are inspected: reading a CUDA tensor would synchronise.
    """
    if p is None:
        return True
    if isinstance(p, torch.Tensor):
        return (not p.requires_grad) and p.device.type == "cpu" and p.numel() > 0 and not bool(p.any())
    return float(p) == 0.0


def _reduce_to(per_neuron: torch.Tensor, scalar: bool) -> torch.Tensor:
    """Gradient of a parameter from its per-neuron gradient: summed for a per-layer scalar."""
    return per_neuron.sum() if scalar else per_neuron


def _compiled(*tensors):
    """The compiled-kernel module for these tensors (numba on CPU, Triton on CUDA), or None."""
    return kernels if kernels.usable(*tensors) else kernels.triton_for(*tensors)


def _block_steps(batch: int, n: int, steps: int) -> int:
    return max(1, min(steps, _BLOCK_ELEMENTS // max(1, batch * n)))


# --- the spiking CUBA-LIF sequence ---------------------------------------------------------------------
def _current_step_(u_prev: torch.Tensor, a_t: torch.Tensor, alpha: torch.Tensor, u_t: torch.Tensor) -> torch.Tensor:
    """u[t] = alpha u[t-1] + a[t], written into ``u_t`` (each op rounded once, like the reference)."""
    torch.mul(u_prev, alpha, out=u_t)
    return u_t.add_(a_t)


def _voltage_step_(v_prev, u_t, beta, bias, v_th, vp_t, s_t, v_t) -> torch.Tensor:
    """One voltage update in place; shared by the feed-forward and recurrent operators.

    v_pre[t] = (beta v[t-1] + u[t]) + bias into ``vp_t``; s[t] = v_pre > v_th into ``s_t``;
    v[t] = v_pre - v_pre * s into ``v_t`` (exactly v_pre or 0, because s is exactly 0 or 1).
    """
    torch.mul(v_prev, beta, out=vp_t)
    vp_t.add_(u_t)
    if bias is not None:
        vp_t.add_(bias)
    torch.gt(vp_t, v_th, out=s_t)
    return torch.addcmul(vp_t, vp_t, s_t, value=-1.0, out=v_t)


class _CubaLIFSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, alpha, beta, v_th, bias, surrogate, detach_reset, return_state, alpha_is_zero, delay):
        batch, steps, n = a.shape
        need_alpha_grad = ctx.needs_input_grad[1]
        keep_u = return_state or need_alpha_grad
        ctx.surrogate = surrogate
        ctx.detach_reset = detach_reset
        ctx.alpha_is_zero = alpha_is_zero
        ctx.bias_is_scalar = bias is not None and bias.dim() == 0
        ctx.delay = delay
        ctx.set_materialize_grads(False)
        backend = _compiled(a, alpha, beta, v_th, bias)
        if delay:  # only the numba kernels take a delay; cuba_lif_sequence shifted the input for the others
            assert backend is kernels
        if backend is not None:
            # the whole loop in one compiled call (same arithmetic, same order: bit-identical)
            v_pre, spikes, u_all, v_all = backend.lif_forward(a, alpha, beta, v_th, bias, alpha_is_zero, keep_u,
                                                              return_state, **({"delay": delay} if delay else {}))
            ctx.save_for_backward(v_pre, u_all if need_alpha_grad else None, alpha, beta, v_th)
            return (spikes, u_all, v_all) if return_state else spikes
        v_pre = a.new_empty(batch, steps, n)
        spikes = a.new_empty(batch, steps, n)
        u_all = a.new_empty(batch, steps, n) if keep_u else None
        v_all = a.new_empty(batch, steps, n) if return_state else None
        # Per-step views are made once (unbind) rather than by indexing inside the loop.
        a_steps, vp_steps, s_steps = a.unbind(1), v_pre.unbind(1), spikes.unbind(1)
        u_steps = u_all.unbind(1) if (u_all is not None and not alpha_is_zero) else None
        v_steps = v_all.unbind(1) if v_all is not None else None
        u_state = a.new_empty(batch, n)
        v_state = a.new_empty(batch, n)
        u_prev = a.new_zeros(batch, n)
        v_prev = a.new_zeros(batch, n)
        for t in range(steps):
            # u[t] = alpha u[t-1] + a[t]; with alpha = 0 that is a[t] itself.
            if alpha_is_zero:
                u_t = a_steps[t]
            else:
                u_t = _current_step_(u_prev, a_steps[t], alpha, u_steps[t] if u_steps is not None else u_state)
                u_prev = u_t
            v_prev = _voltage_step_(v_prev, u_t, beta, bias, v_th, vp_steps[t], s_steps[t],
                                    v_steps[t] if v_steps is not None else v_state)
        if alpha_is_zero and u_all is not None:
            u_all.copy_(a)
        ctx.save_for_backward(v_pre, u_all if need_alpha_grad else None, alpha, beta, v_th)
        if return_state:
            return spikes, u_all, v_all
        return spikes

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_s, g_u=None, g_v=None):
        if g_s is None and g_u is None and g_v is None:
            return (None,) * 10
        v_pre, u_all, alpha, beta, v_th = ctx.saved_tensors
        need_a, need_alpha, need_beta, need_vth, need_bias = ctx.needs_input_grad[:5]
        surrogate: Surrogate = ctx.surrogate
        detach_reset = ctx.detach_reset
        batch, steps, n = v_pre.shape
        need_lam_u = need_a or need_alpha
        backend = _compiled(v_pre, g_s, g_u, g_v)
        if backend is not None:
            # one compiled pass over time (the surrogate derivative inside it, or one tensor op before it)
            grad_a, sums = backend.lif_backward(v_pre, surrogate, g_s, g_u, g_v, u_all, alpha, beta, v_th, detach_reset,
                                                ctx.alpha_is_zero, (need_a, need_alpha, need_beta, need_vth, need_bias),
                                                **({"delay": ctx.delay} if ctx.delay else {}))
            sums = sums.to(v_pre.dtype)
            return (
                grad_a,
                _reduce_to(sums[0], alpha.dim() == 0) if need_alpha else None,
                _reduce_to(sums[1], beta.dim() == 0) if need_beta else None,
                _reduce_to(sums[2], v_th.dim() == 0) if need_vth else None,
                _reduce_to(sums[3], ctx.bias_is_scalar) if need_bias else None,
                None, None, None, None, None,
            )

        grad_a = v_pre.new_empty(batch, steps, n) if need_a else None
        acc_alpha = v_pre.new_zeros(n) if need_alpha else None
        acc_beta = v_pre.new_zeros(n) if need_beta else None
        acc_vth = v_pre.new_zeros(n) if need_vth else None
        acc_bias = v_pre.new_zeros(n) if need_bias else None
        lam_p_next = v_pre.new_zeros(batch, n)  # lam_p[t1], carried from the later block
        lam_u_next = v_pre.new_zeros(batch, n) if (need_lam_u and not ctx.alpha_is_zero) else None

        block = _block_steps(batch, n, steps)
        # Block temporaries are allocated once and reused (the first block in time may be shorter).
        sg_buf = v_pre.new_empty(batch, block, n)
        keep_buf = v_pre.new_empty(batch, block, n)
        lam_buf = v_pre.new_empty(batch, block, n) if grad_a is None else None
        for t1 in range(steps, 0, -block):
            t0 = max(0, t1 - block)
            length = t1 - t0
            vp = v_pre[:, t0:t1]
            lam = grad_a[:, t0:t1] if grad_a is not None else lam_buf[:, :length]

            sg = surrogate.derivative_(torch.sub(vp, v_th, out=sg_buf[:, :length]))
            if g_s is not None:
                torch.mul(g_s[:, t0:t1], sg, out=lam)
                if need_vth:
                    acc_vth.sub_(lam.sum((0, 1)))
            else:
                lam.zero_()
            keep = torch.le(vp, v_th, out=keep_buf[:, :length])
            if not detach_reset:
                vp_sg = vp * sg
                keep.sub_(vp_sg)
            if g_v is not None:
                lam.addcmul_(keep, g_v[:, t0:t1])
            keep.mul_(beta)

            # lam_p[t] = lam[t] + beta keep[t] lam_p[t+1], in place over the block.
            later = lam_p_next
            lam_steps, keep_steps = lam.unbind(1), keep.unbind(1)
            for i in range(length - 1, -1, -1):
                cur = lam_steps[i]
                torch.addcmul(cur, keep_steps[i], later, out=cur)
                later = cur

            if need_bias:
                acc_bias.add_(lam.sum((0, 1)))
            if need_beta:
                # v[t-1] after reset, for the steps of this block that have a predecessor.
                first = 1 if t0 == 0 else 0
                if length > first:
                    v_prev = v_pre[:, t0 + first - 1 : t1 - 1]
                    v_prev = v_prev * torch.le(v_prev, v_th)
                    acc_beta.add_((lam[:, first:] * v_prev).sum((0, 1)))
            if need_vth and not detach_reset:
                # lam_v[t] = g_v[t] + beta lam_p[t+1]; the reset's dependence on v_th adds lam_v v_pre sg.
                lam_v = torch.cat([lam[:, 1:], lam_p_next.unsqueeze(1)], dim=1).mul_(beta)
                if g_v is not None:
                    lam_v.add_(g_v[:, t0:t1])
                acc_vth.add_((lam_v * vp_sg).sum((0, 1)))
            lam_p_next.copy_(lam[:, 0])

            if need_lam_u:
                if g_u is not None:
                    lam.add_(g_u[:, t0:t1])
                if not ctx.alpha_is_zero:
                    later = lam_u_next
                    lam_steps = lam.unbind(1)
                    for i in range(length - 1, -1, -1):
                        cur = lam_steps[i]
                        torch.addcmul(cur, later, alpha, out=cur)
                        later = cur
                    lam_u_next.copy_(lam[:, 0])
                if need_alpha:
                    first = 1 if t0 == 0 else 0
                    if length > first:
                        u_prev = u_all[:, t0 + first - 1 : t1 - 1]
                        acc_alpha.add_((lam[:, first:] * u_prev).sum((0, 1)))

        if ctx.delay and grad_a is not None:  # step t read a[t - delay] (only if the gradients came on another
            d = ctx.delay                      # device or dtype than the forward's compiled kernel)
            grad_a = torch.cat([grad_a[:, d:], grad_a.new_zeros(batch, min(d, steps), n)], dim=1)
        return (
            grad_a,
            _reduce_to(acc_alpha, alpha.dim() == 0) if need_alpha else None,
            _reduce_to(acc_beta, beta.dim() == 0) if need_beta else None,
            _reduce_to(acc_vth, v_th.dim() == 0) if need_vth else None,
            _reduce_to(acc_bias, ctx.bias_is_scalar) if need_bias else None,
            None,
            None,
            None,
            None,
            None,
        )


def cuba_lif_sequence(
    a: torch.Tensor,
    alpha: Param,
    beta: Param,
    v_th: Param,
    bias: Param | None = None,
    surrogate: str | Surrogate = "fast_sigmoid",
    detach_reset: bool = True,
    return_state: bool = False,
    delay: int = 0,
):
    """Spikes of a CUBA-LIF population driven by input currents ``a`` of shape (batch, T, n).

    ``alpha`` (= 1 - du), ``beta`` (= 1 - dv), ``v_th`` and ``bias`` are Python numbers, 0-dim/1-element
    tensors (one value for the layer) or n-element tensors (one per neuron); tensors that require grad
    receive gradients in their own shape. ``bias=None`` means no bias. ``surrogate`` is a
    ``Surrogate`` or a registry name (``snn2hw.nn.surrogate``). ``detach_reset=True`` treats the reset
    as a constant in the backward pass (the usual choice); False also differentiates through it.

    Returns spikes (batch, T, n), exactly 0 or 1 in a's dtype; with ``return_state=True`` returns
    ``(spikes, u, v)``, the traces of u and of v after reset, all differentiable.

    ``delay`` (steps, >= 0): the neurons see ``a[t - delay]`` at step t (zero before), the hardware's hop
    delay. The same as passing ``a`` shifted, but the compiled CPU kernel reads the shifted steps in
    place, which saves a full copy of ``a`` forward and of its gradient backward.
    """
    _check_input(a)
    if int(delay) != delay or delay < 0:
        raise ValueError(f"delay must be a non-negative integer number of steps, got {delay!r}")
    delay = int(delay)
    n = a.shape[2]
    surrogate = get_surrogate(surrogate)
    alpha_is_zero = _is_constant_zero(alpha)
    skip_bias = bias is None or _is_constant_zero(bias)
    alpha_t = _as_param(alpha, "alpha", n, a)
    beta_t = _as_param(beta, "beta", n, a)
    vth_t = _as_param(v_th, "v_th", n, a)
    bias_t = None if skip_bias else _as_param(bias, "bias", n, a)
    if delay and not kernels.usable(a, alpha_t, beta_t, vth_t, bias_t):
        a, delay = torch.nn.functional.pad(a, (0, 0, delay, 0))[:, : a.shape[1]], 0  # shifted copy
    return _CubaLIFSequence.apply(
        a, alpha_t, beta_t, vth_t, bias_t, surrogate, bool(detach_reset), bool(return_state), alpha_is_zero, delay
    )


# --- the non-spiking leaky read-out --------------------------------------------------------------------
class _LeakyReadoutSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, alpha, beta, bias, return_u, alpha_is_zero):
        batch, steps, n = a.shape
        need_alpha_grad = ctx.needs_input_grad[1]
        keep_u = return_u or need_alpha_grad
        v_all = a.new_empty(batch, steps, n)
        u_all = a.new_empty(batch, steps, n) if keep_u else None
        u_state = None if (alpha_is_zero or keep_u) else a.new_zeros(batch, n)
        u_prev = a.new_zeros(batch, n)
        v_prev = a.new_zeros(batch, n)
        for t in range(steps):
            a_t = a[:, t]
            if alpha_is_zero:
                u_t = a_t
                if u_all is not None:
                    u_all[:, t] = a_t
            else:
                u_t = u_all[:, t] if u_all is not None else u_state
                torch.mul(u_prev, alpha, out=u_t)
                u_t.add_(a_t)
                u_prev = u_t
            v_t = v_all[:, t]
            torch.mul(v_prev, beta, out=v_t)
            v_t.add_(u_t)
            if bias is not None:
                v_t.add_(bias)
            v_prev = v_t
        ctx.alpha_is_zero = alpha_is_zero
        ctx.bias_is_scalar = bias is not None and bias.dim() == 0
        ctx.set_materialize_grads(False)
        need_v = ctx.needs_input_grad[2]
        ctx.save_for_backward(v_all if need_v else None, u_all if need_alpha_grad else None, alpha, beta)
        if return_u:
            return v_all, u_all
        return v_all

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_v, g_u=None):
        if g_v is None and g_u is None:
            return (None,) * 6
        v_all, u_all, alpha, beta = ctx.saved_tensors
        need_a, need_alpha, need_beta, need_bias = ctx.needs_input_grad[:4]
        ref = g_v if g_v is not None else g_u
        batch, steps, n = ref.shape
        # lam_v[t] = g_v[t] + beta lam_v[t+1]
        lam = g_v.clone(memory_format=torch.contiguous_format) if g_v is not None else ref.new_zeros(batch, steps, n)
        for i in range(steps - 2, -1, -1):
            cur = lam[:, i]
            torch.addcmul(cur, lam[:, i + 1], beta, out=cur)
        grad_bias = _reduce_to(lam.sum((0, 1)), ctx.bias_is_scalar) if need_bias else None
        grad_beta = None
        if need_beta:
            grad_beta = _reduce_to((lam[:, 1:] * v_all[:, :-1]).sum((0, 1)), beta.dim() == 0)
        grad_a = grad_alpha = None
        if need_a or need_alpha:
            # lam_u[t] = lam_v[t] + g_u[t] + alpha lam_u[t+1], in place over lam_v.
            if g_u is not None:
                lam.add_(g_u)
            if not ctx.alpha_is_zero:
                for i in range(steps - 2, -1, -1):
                    cur = lam[:, i]
                    torch.addcmul(cur, lam[:, i + 1], alpha, out=cur)
            if need_alpha:
                grad_alpha = _reduce_to((lam[:, 1:] * u_all[:, :-1]).sum((0, 1)), alpha.dim() == 0)
            grad_a = lam if need_a else None
        return grad_a, grad_alpha, grad_beta, grad_bias, None, None


def leaky_readout_sequence(
    a: torch.Tensor,
    alpha: Param,
    beta: Param,
    bias: Param | None = None,
    return_u: bool = False,
):
    """Membrane potential v (batch, T, n) of non-spiking CUBA neurons (no threshold, no reset).

    Same dynamics and parameter conventions as ``cuba_lif_sequence``. With ``return_u=True`` returns
    ``(v, u)``.
    """
    _check_input(a)
    n = a.shape[2]
    alpha_is_zero = _is_constant_zero(alpha)
    skip_bias = bias is None or _is_constant_zero(bias)
    return _LeakyReadoutSequence.apply(
        a,
        _as_param(alpha, "alpha", n, a),
        _as_param(beta, "beta", n, a),
        None if skip_bias else _as_param(bias, "bias", n, a),
        bool(return_u),
        alpha_is_zero,
    )


# --- unrolled autograd references (tests only) ---------------------------------------------------------
def cuba_lif_reference(
    a: torch.Tensor,
    alpha: Param,
    beta: Param,
    v_th: Param,
    bias: Param | None = None,
    surrogate: str | Surrogate = "fast_sigmoid",
    detach_reset: bool = True,
    return_state: bool = False,
):
    """``cuba_lif_sequence`` as a plain unrolled PyTorch loop; slow, for testing only."""
    _check_input(a)
    batch, steps, n = a.shape
    surrogate = get_surrogate(surrogate)
    alpha, beta, v_th = (_as_param(p, name, n, a) for p, name in ((alpha, "alpha"), (beta, "beta"), (v_th, "v_th")))
    bias = _as_param(bias, "bias", n, a)
    u = a.new_zeros(batch, n)
    v = a.new_zeros(batch, n)
    spikes, us, vs = [], [], []
    for t in range(steps):
        u = alpha * u + a[:, t]
        v = beta * v + u
        if bias is not None:
            v = v + bias
        s = surrogate(v - v_th)
        v = v * (1.0 - (s.detach() if detach_reset else s))
        spikes.append(s)
        us.append(u)
        vs.append(v)
    out = _stack_steps(spikes, a)
    if return_state:
        return out, _stack_steps(us, a), _stack_steps(vs, a)
    return out


def leaky_readout_reference(a: torch.Tensor, alpha: Param, beta: Param, bias: Param | None = None,
                            return_u: bool = False):
    """``leaky_readout_sequence`` as a plain unrolled PyTorch loop; slow, for testing only."""
    _check_input(a)
    batch, steps, n = a.shape
    alpha, beta = _as_param(alpha, "alpha", n, a), _as_param(beta, "beta", n, a)
    bias = _as_param(bias, "bias", n, a)
    u = a.new_zeros(batch, n)
    v = a.new_zeros(batch, n)
    us, vs = [], []
    for t in range(steps):
        u = alpha * u + a[:, t]
        v = beta * v + u
        if bias is not None:
            v = v + bias
        us.append(u)
        vs.append(v)
    v_out = _stack_steps(vs, a)
    return (v_out, _stack_steps(us, a)) if return_u else v_out


def _stack_steps(per_step: list, a: torch.Tensor) -> torch.Tensor:
    return torch.stack(per_step, 1) if per_step else a.new_zeros(a.shape[0], 0, a.shape[2])

