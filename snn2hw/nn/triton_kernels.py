"""Triton kernels for the float CUBA-LIF scan on CUDA: the GPU counterpart of ``snn2hw.nn.kernels``.

The tensor loop of ``snn2hw.nn.functional`` launches a few elementwise kernels per step; on a GPU each
launch costs microseconds while the step's work (batch x n elements) takes less. These kernels run the
whole time loop of one (sample, block of neurons) in one program, as the numba CPU kernels do, with the
same arithmetic:

* ``lif_forward`` evaluates the products and sums of ``functional``'s docstring in the same order, each
  rounded once: the kernels are compiled with ``enable_fp_fusion=False`` so that ``x * y + z`` is not
  contracted into a fused multiply-add. Spikes and states are then bit-identical to the tensor loop
  on the same device.
* ``lif_backward`` runs the adjoint recursions of the same docstring in one reverse-time pass (the
  FastSigmoid derivative inside it, any other surrogate as one tensor op before it) and returns the
  per-(sample, neuron) partial sums of the parameter gradients.
* ``recurrent_step_forward`` / ``recurrent_step_backward``: the elementwise part of one step of the
  recurrent operator, next to the per-step (batch, n) x (n, n) product that stays a cuBLAS call.

Used on CUDA tensors when Triton imports (``usable``); ``SNN2HW_NO_TRITON=1`` switches them off. The
tests run them on the CPU through Triton's interpreter (``TRITON_INTERPRET=1``, under which CPU
tensors count as usable too) and, where a GPU exists, on CUDA.
"""
from __future__ import annotations

import os

import torch

try:  # an accelerator, never a requirement
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where Triton is missing
    triton = None

__all__ = ["available", "usable", "lif_forward", "lif_backward", "recurrent_step_forward",
           "recurrent_step_backward"]

_BLOCK = 128


def available() -> bool:
    """Whether the Triton kernels can be used at all (Triton importable and not switched off)."""
    return triton is not None and os.environ.get("SNN2HW_NO_TRITON", "") in ("", "0")


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def usable(*tensors) -> bool:
    """True when every given tensor (None skipped) is a float32/float64 CUDA tensor (or, under Triton's
    interpreter, a CPU tensor) of one dtype and device, and Triton is available."""
    if not available():
        return False
    dtype = device = None
    for t in tensors:
        if t is None:
            continue
        if not (t.device.type == "cuda" or (_interpreted() and t.device.type == "cpu")):
            return False
        if t.dtype not in (torch.float32, torch.float64):
            return False
        if dtype is None:
            dtype, device = t.dtype, t.device
        elif t.dtype != dtype or t.device != device:
            return False
    return True


if triton is not None:
    @triton.jit
    def _lif_forward_kernel(a_ptr, alpha_ptr, beta_ptr, vth_ptr, bias_ptr, vp_ptr, s_ptr, u_ptr, v_ptr, steps, n,
                            ALPHA_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr, KEEP_U: tl.constexpr,
                            KEEP_V: tl.constexpr, BLOCK: tl.constexpr):
        b = tl.program_id(0)
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        m = offs < n
        al = tl.load(alpha_ptr + offs, mask=m, other=0.0)
        be = tl.load(beta_ptr + offs, mask=m, other=0.0)
        th = tl.load(vth_ptr + offs, mask=m, other=0.0)
        bi = tl.load(bias_ptr + offs, mask=m, other=0.0)
        u = tl.zeros([BLOCK], dtype=al.dtype)
        v = tl.zeros([BLOCK], dtype=al.dtype)
        base = b * steps * n
        for t in range(steps):
            idx = base + t * n + offs
            at = tl.load(a_ptr + idx, mask=m, other=0.0)
            if ALPHA_ZERO:
                u = at
            else:
                u = u * al + at
            x = v * be + u
            if HAS_BIAS:
                x = x + bi
            s = (x > th).to(al.dtype)
            tl.store(vp_ptr + idx, x, mask=m)
            tl.store(s_ptr + idx, s, mask=m)
            v = x * (1.0 - s)
            if KEEP_U:
                tl.store(u_ptr + idx, u, mask=m)
            if KEEP_V:
                tl.store(v_ptr + idx, v, mask=m)

    @triton.jit
    def _lif_backward_kernel(vp_ptr, sg_ptr, gs_ptr, gu_ptr, gv_ptr, u_ptr, alpha_ptr, beta_ptr, vth_ptr, scale,
                             ga_ptr, acc_ptr, batch, steps, n,
                             FAST: tl.constexpr, HAS_GS: tl.constexpr, HAS_GU: tl.constexpr, HAS_GV: tl.constexpr,
                             DETACH: tl.constexpr, ALPHA_ZERO: tl.constexpr, NEED_A: tl.constexpr,
                             NEED_ALPHA: tl.constexpr, BLOCK: tl.constexpr):
        b = tl.program_id(0)
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        m = offs < n
        al = tl.load(alpha_ptr + offs, mask=m, other=0.0)
        be = tl.load(beta_ptr + offs, mask=m, other=0.0)
        th = tl.load(vth_ptr + offs, mask=m, other=0.0)
        zero = tl.zeros([BLOCK], dtype=al.dtype)
        lp_next = zero
        lu_next = zero
        a_alpha = zero
        a_beta = zero
        a_vth = zero
        a_bias = zero
        base = b * steps * n
        for k in range(steps):
            t = steps - 1 - k
            idx = base + t * n + offs
            x = tl.load(vp_ptr + idx, mask=m, other=0.0)
            if FAST:  # FastSigmoid.derivative: 1 / (1 + scale |x - v_th|)^2
                q = 1.0 + scale * tl.abs(x - th)
                d = 1.0 / (q * q)
            else:
                d = tl.load(sg_ptr + idx, mask=m, other=0.0)
            keep = (x <= th).to(al.dtype)  # 1 - s[t]
            if not DETACH:
                keep = keep - x * d
            lam = zero
            if HAS_GS:
                lam = tl.load(gs_ptr + idx, mask=m, other=0.0) * d
            a_vth -= lam
            gv = zero
            if HAS_GV:
                gv = tl.load(gv_ptr + idx, mask=m, other=0.0)
                lam = lam + keep * gv
            lamp = lam + (keep * be) * lp_next  # lam_p[t]
            a_bias += lamp
            if t > 0:
                vq = tl.load(vp_ptr + idx - n, mask=m, other=0.0)
                a_beta += lamp * tl.where(vq <= th, vq, 0.0)  # v[t-1] after reset
            if not DETACH:
                a_vth += (be * lp_next + gv) * (x * d)
            lp_next = lamp
            lu = lamp
            if HAS_GU:
                lu = lu + tl.load(gu_ptr + idx, mask=m, other=0.0)
            if not ALPHA_ZERO:
                lu = lu + lu_next * al
            if NEED_ALPHA:
                if t > 0:
                    a_alpha += lu * tl.load(u_ptr + idx - n, mask=m, other=0.0)
            lu_next = lu
            if NEED_A:
                tl.store(ga_ptr + idx, lu, mask=m)
        out = b * n + offs
        stride = batch * n
        tl.store(acc_ptr + out, a_alpha, mask=m)
        tl.store(acc_ptr + stride + out, a_beta, mask=m)
        tl.store(acc_ptr + 2 * stride + out, a_vth, mask=m)
        tl.store(acc_ptr + 3 * stride + out, a_bias, mask=m)

    @triton.jit
    def _recurrent_step_forward_kernel(a_ptr, rec_ptr, alpha_ptr, beta_ptr, vth_ptr, bias_ptr, u_ptr, v_ptr,
                                       vp_ptr, s_ptr, uall_ptr, vall_ptr, t, steps, n,
                                       FIRST: tl.constexpr, ALPHA_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr,
                                       KEEP_U: tl.constexpr, KEEP_V: tl.constexpr, BLOCK: tl.constexpr):
        b = tl.program_id(0)
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        m = offs < n
        idx = (b * steps + t) * n + offs
        st = b * n + offs  # (batch, n) state
        at = tl.load(a_ptr + idx, mask=m, other=0.0)
        if not FIRST:
            at = at + tl.load(rec_ptr + st, mask=m, other=0.0)  # a[t] = a_ff[t] + V s[t-1]
        if ALPHA_ZERO:
            u = at
        else:
            u = tl.load(u_ptr + st, mask=m, other=0.0) * tl.load(alpha_ptr + offs, mask=m, other=0.0) + at
        x = tl.load(v_ptr + st, mask=m, other=0.0) * tl.load(beta_ptr + offs, mask=m, other=0.0) + u
        if HAS_BIAS:
            x = x + tl.load(bias_ptr + offs, mask=m, other=0.0)
        s = (x > tl.load(vth_ptr + offs, mask=m, other=0.0)).to(x.dtype)
        v = x * (1.0 - s)
        tl.store(u_ptr + st, u, mask=m)
        tl.store(v_ptr + st, v, mask=m)
        tl.store(vp_ptr + idx, x, mask=m)
        tl.store(s_ptr + idx, s, mask=m)
        if KEEP_U:
            tl.store(uall_ptr + idx, u, mask=m)
        if KEEP_V:
            tl.store(vall_ptr + idx, v, mask=m)

    @triton.jit
    def _recurrent_step_backward_kernel(vp_ptr, sg_ptr, gs_ptr, gu_ptr, gv_ptr, u_ptr, rec_ptr, alpha_ptr, beta_ptr,
                                        vth_ptr, scale, lp_ptr, la_ptr, acc_ptr, t, batch, steps, n,
                                        FAST: tl.constexpr, HAS_GS: tl.constexpr, HAS_GU: tl.constexpr,
                                        HAS_GV: tl.constexpr, DETACH: tl.constexpr, ALPHA_ZERO: tl.constexpr,
                                        NEED_ALPHA: tl.constexpr, LAST: tl.constexpr, BLOCK: tl.constexpr):
        b = tl.program_id(0)
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        m = offs < n
        idx = (b * steps + t) * n + offs
        st = b * n + offs
        be = tl.load(beta_ptr + offs, mask=m, other=0.0)
        th = tl.load(vth_ptr + offs, mask=m, other=0.0)
        x = tl.load(vp_ptr + idx, mask=m, other=0.0)
        if FAST:
            q = 1.0 + scale * tl.abs(x - th)
            d = 1.0 / (q * q)
        else:
            d = tl.load(sg_ptr + idx, mask=m, other=0.0)
        keep = (x <= th).to(x.dtype)
        if not DETACH:
            keep = keep - x * d
        ls = tl.zeros([BLOCK], dtype=x.dtype)
        if HAS_GS:
            ls = tl.load(gs_ptr + idx, mask=m, other=0.0)
        lam_v = tl.zeros([BLOCK], dtype=x.dtype)
        if not LAST:
            ls = ls + tl.load(rec_ptr + st, mask=m, other=0.0)  # + lam_a[t+1] V
            lam_v = be * tl.load(lp_ptr + st, mask=m, other=0.0)
        gsg = d * ls
        if HAS_GV:
            lam_v = lam_v + tl.load(gv_ptr + idx, mask=m, other=0.0)
        lamp = gsg + keep * lam_v
        a_vth = -gsg
        if not DETACH:
            a_vth += lam_v * (x * d)
        a_beta = tl.zeros([BLOCK], dtype=x.dtype)
        if t > 0:
            vq = tl.load(vp_ptr + idx - n, mask=m, other=0.0)
            a_beta = lamp * tl.where(vq <= th, vq, 0.0)
        la = lamp
        if HAS_GU:
            la = la + tl.load(gu_ptr + idx, mask=m, other=0.0)
        if not ALPHA_ZERO:
            if not LAST:
                la = la + tl.load(alpha_ptr + offs, mask=m, other=0.0) * tl.load(la_ptr + idx + n, mask=m, other=0.0)
        a_alpha = tl.zeros([BLOCK], dtype=x.dtype)
        if NEED_ALPHA:
            if t > 0:
                a_alpha = la * tl.load(u_ptr + idx - n, mask=m, other=0.0)
        tl.store(lp_ptr + st, lamp, mask=m)
        tl.store(la_ptr + idx, la, mask=m)
        # per-(sample, neuron) partial sums, accumulated over steps (each program owns its slots)
        stride = batch * n
        tl.store(acc_ptr + st, tl.load(acc_ptr + st, mask=m, other=0.0) + a_alpha, mask=m)
        tl.store(acc_ptr + stride + st, tl.load(acc_ptr + stride + st, mask=m, other=0.0) + a_beta, mask=m)
        tl.store(acc_ptr + 2 * stride + st, tl.load(acc_ptr + 2 * stride + st, mask=m, other=0.0) + a_vth, mask=m)
        tl.store(acc_ptr + 3 * stride + st, tl.load(acc_ptr + 3 * stride + st, mask=m, other=0.0) + lamp, mask=m)


def _per_neuron(p: torch.Tensor | None, n: int, like: torch.Tensor) -> torch.Tensor:
    if p is None:
        return torch.zeros(n, dtype=like.dtype, device=like.device)
    return torch.broadcast_to(p.detach().to(like.dtype), (n,)).contiguous()


def _grid(batch: int, n: int):
    return (batch, triton.cdiv(n, _BLOCK))


def _opt(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous() if t is not None else like  # a placeholder pointer the kernel never reads


def lif_forward(a: torch.Tensor, alpha, beta, v_th, bias, alpha_is_zero: bool, keep_u: bool, keep_v: bool):
    """As ``snn2hw.nn.kernels.lif_forward``, on the tensors' device."""
    batch, steps, n = a.shape
    a = a.detach().contiguous()
    v_pre, spikes = torch.empty_like(a), torch.empty_like(a)
    u_all = torch.empty_like(a) if keep_u else None
    v_all = torch.empty_like(a) if keep_v else None
    if a.numel():
        _lif_forward_kernel[_grid(batch, n)](
            a, _per_neuron(alpha, n, a), _per_neuron(beta, n, a), _per_neuron(v_th, n, a), _per_neuron(bias, n, a),
            v_pre, spikes, u_all if keep_u else a, v_all if keep_v else a, steps, n,
            ALPHA_ZERO=bool(alpha_is_zero), HAS_BIAS=bias is not None, KEEP_U=bool(keep_u), KEEP_V=bool(keep_v),
            BLOCK=_BLOCK, enable_fp_fusion=False)
    elif keep_u and alpha_is_zero:
        u_all.copy_(a)
    return v_pre, spikes, u_all, v_all


def lif_backward(v_pre: torch.Tensor, surrogate, g_s, g_u, g_v, u_all, alpha, beta, v_th, detach_reset: bool,
                 alpha_is_zero: bool, need: tuple[bool, bool, bool, bool, bool]):
    """As ``snn2hw.nn.kernels.lif_backward``: ``(grad_a or None, per-neuron sums (4, n))`` in v_pre's dtype."""
    from snn2hw.nn.surrogate import FastSigmoid

    batch, steps, n = v_pre.shape
    need_a, need_alpha = need[0], need[1]
    v_pre = v_pre.detach().contiguous()
    fast = type(surrogate) is FastSigmoid
    sg = None if fast else surrogate.derivative_(torch.sub(v_pre, v_th)).contiguous()
    grad_a = torch.empty_like(v_pre) if need_a else None
    acc = torch.zeros(4, batch, n, dtype=v_pre.dtype, device=v_pre.device)
    if v_pre.numel():
        _lif_backward_kernel[_grid(batch, n)](
            v_pre, _opt(sg, v_pre), _opt(g_s, v_pre), _opt(g_u, v_pre), _opt(g_v, v_pre),
            _opt(u_all if need_alpha else None, v_pre), _per_neuron(alpha, n, v_pre), _per_neuron(beta, n, v_pre),
            _per_neuron(v_th, n, v_pre), float(surrogate.scale) if fast else 0.0,
            grad_a if need_a else v_pre, acc, batch, steps, n,
            FAST=fast, HAS_GS=g_s is not None, HAS_GU=g_u is not None, HAS_GV=g_v is not None,
            DETACH=bool(detach_reset), ALPHA_ZERO=bool(alpha_is_zero), NEED_A=bool(need_a),
            NEED_ALPHA=bool(need_alpha), BLOCK=_BLOCK, enable_fp_fusion=False)
    elif need_a:
        grad_a = torch.zeros_like(v_pre)
    return grad_a, acc.sum(1)


def recurrent_step_forward(t: int, a_ff, rec, alpha, beta, v_th, bias, u, v, v_pre, spikes, u_all, v_all,
                           alpha_is_zero: bool):
    """One forward step of the recurrent operator after ``rec = s[t-1] @ V^T``; updates the (batch, n)
    states ``u``, ``v`` and writes step ``t`` of the (batch, T, n) outputs. Per-neuron parameters (n,)."""
    batch, steps, n = a_ff.shape
    _recurrent_step_forward_kernel[_grid(batch, n)](
        a_ff, rec, alpha, beta, v_th, bias if bias is not None else beta, u, v, v_pre, spikes,
        u_all if u_all is not None else v_pre, v_all if v_all is not None else v_pre, t, steps, n,
        FIRST=t == 0, ALPHA_ZERO=bool(alpha_is_zero), HAS_BIAS=bias is not None, KEEP_U=u_all is not None,
        KEEP_V=v_all is not None, BLOCK=_BLOCK, enable_fp_fusion=False)


def recurrent_step_backward(t: int, v_pre, sg, g_s, g_u, g_v, u_all, rec, alpha, beta, v_th, scale: float | None,
                            lam_p, lam_a, acc, detach_reset: bool, alpha_is_zero: bool, need_alpha: bool):
    """One reverse-time step of the recurrent operator after ``rec = lam_a[t+1] @ V``: writes ``lam_a[:, t]``,
    carries ``lam_p`` (batch, n) and adds to ``acc`` (4, batch, n). ``scale`` None: ``sg`` holds the
    surrogate derivative; else the FastSigmoid scale."""
    batch, steps, n = v_pre.shape
    fast = scale is not None
    _recurrent_step_backward_kernel[_grid(batch, n)](
        v_pre, _opt(sg, v_pre), _opt(g_s, v_pre), _opt(g_u, v_pre), _opt(g_v, v_pre), _opt(u_all, v_pre), rec,
        alpha, beta, v_th, float(scale) if fast else 0.0, lam_p, lam_a, acc, t, batch, steps, n,
        FAST=fast, HAS_GS=g_s is not None, HAS_GU=g_u is not None, HAS_GV=g_v is not None,
        DETACH=bool(detach_reset), ALPHA_ZERO=bool(alpha_is_zero), NEED_ALPHA=bool(need_alpha),
        LAST=t == steps - 1, BLOCK=_BLOCK, enable_fp_fusion=False)


def recurrent_forward(a_ff: torch.Tensor, weight: torch.Tensor, alpha, beta, v_th, bias, alpha_is_zero: bool,
                      keep_u: bool, keep_v: bool):
    """As ``snn2hw.nn.recurrent_kernels.recurrent_forward``: per step one ``s[t-1] @ V^T`` product
    (cuBLAS; its summation order, not the CPU kernel's event order) and one fused elementwise launch."""
    batch, steps, n = a_ff.shape
    a = a_ff.detach().contiguous()
    w_t = weight.detach().t()
    v_pre, spikes = torch.empty_like(a), torch.empty_like(a)
    u_all = torch.empty_like(a) if keep_u else None
    v_all = torch.empty_like(a) if keep_v else None
    u = a.new_zeros(batch, n)
    v = a.new_zeros(batch, n)
    rec = a.new_zeros(batch, n)
    params = [_per_neuron(p, n, a) for p in (alpha, beta, v_th)]
    bias = _per_neuron(bias, n, a) if bias is not None else None
    for t in range(steps if n else 0):
        if t > 0:
            torch.mm(spikes[:, t - 1], w_t, out=rec)
        recurrent_step_forward(t, a, rec, *params, bias, u, v, v_pre, spikes, u_all, v_all, alpha_is_zero)
    return v_pre, spikes, u_all, v_all


def recurrent_backward(v_pre: torch.Tensor, weight: torch.Tensor, surrogate, g_s, g_u, g_v, u_all, alpha, beta,
                       v_th, detach_reset: bool, alpha_is_zero: bool, need: tuple[bool, bool, bool, bool, bool]):
    """As ``snn2hw.nn.recurrent_kernels.recurrent_backward`` (sums returned in v_pre's dtype)."""
    need_alpha, fused = need[0], need[4]
    batch, steps, n = v_pre.shape
    v_pre = v_pre.detach().contiguous()
    weight = weight.detach().contiguous()
    sg = None if fused else surrogate.derivative_(torch.sub(v_pre, v_th)).contiguous()
    lam_a = torch.empty_like(v_pre)
    lam_p = v_pre.new_zeros(batch, n)
    rec = v_pre.new_zeros(batch, n)
    acc = v_pre.new_zeros(4, batch, n)
    params = [_per_neuron(p, n, v_pre) for p in (alpha, beta, v_th)]
    g_s, g_u, g_v = (g.contiguous() if g is not None else None for g in (g_s, g_u, g_v))
    u_all = u_all.contiguous() if (need_alpha and u_all is not None) else None
    for t in range(steps - 1 if n else -1, -1, -1):
        if t < steps - 1:
            torch.mm(lam_a[:, t + 1], weight, out=rec)
        recurrent_step_backward(t, v_pre, sg, g_s, g_u, g_v, u_all, rec, *params, surrogate.scale if fused else None,
                                lam_p, lam_a, acc, detach_reset, alpha_is_zero, need_alpha)
    if not n:
        lam_a.zero_()
    return lam_a, acc.sum(1)
