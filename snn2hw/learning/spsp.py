"""Spike-train level post-synaptic potentials (S-PSPs): the shared machinery of HM2-BP and ST-RSBP.

Neuron. Both rules train snn2hw's CUBA-LIF (``snn2hw.nn.functional``), optionally with a refractory
period of ``t_ref`` steps (the rules' original neuron; Loihi 2 has none, ``t_ref = 0``)::

    u[t] = alpha u[t-1] + a[t]           a[t] = W s_in[t-1] (+ V s[t-1])   (the one-step hop)
    v[t] = beta v[t-1] + u[t] + bias
    v[t] = 0                             while refractory (t_ref steps after a spike)
    s[t] = v[t] > v_th, then v[t] = 0    (u is not reset)

The HM2-BP/ST-RSBP neuron (tau_m, tau_s, T_REF = 2) is this one with ``du = 1/tau_s``,
``dv = 1/tau_m``, ``t_ref = 2`` and its weights divided by tau_s (its ``v += c/tau_s``).

S-PSP. Between two firings a neuron's membrane is a linear function of its input spikes, because
``v`` restarts from 0 at every reset ("cut": the spike step and the refractory steps after it) while
``u`` carries on. The S-PSP ``e_ij`` is the summed contribution of pre-synaptic neuron j's spikes to
post-synaptic neuron i's pre-reset membrane at each of i's spikes, per unit weight::

    e_ij = sum_{f: s_i[t_f] = 1} sum_g s_j[g] K_i(t_f, g)
    K_i(t, g) = sum_{k = max(r + 1, g + 1)}^{t} beta^(t-k) alpha^(k-g-1),    r = i's last cut before t

so ``sum_j w_ij e_ij + (bias part) = sum_f v_i[t_f]`` exactly (the T-PSP). For each post neuron the
kernel ``M_i[g] = sum_f K_i(t_f, g)`` is the reverse-time recursion (the adjoint of the neuron with its
resets held fixed)::

    lam_p[t] = s[t] + (1 - cut[t]) beta lam_p[t+1]      lam_u[t] = lam_p[t] + alpha lam_u[t+1]

and ``M_i[g] = lam_u[g+1, i]``. A layer's S-PSPs are then one batched product over time,
``e = lam_u[:, 1:]^T @ s_in[:, :-1]`` ((B, N_out, T) x (B, T, N_in)), and every quantity the rules need
(weight gradients ``sum_b c_bi e_bij``, errors ``sum_i c_bi w_ij e_bij``) is a GEMM through the layer's own
hop (dense or conv) without ever forming e: ``rule_products`` below. The reverse scan is O(T N) per
sample, negligible next to the products.
"""
from __future__ import annotations


import torch
from torch import nn

from snn2hw.learning import spsp_kernels
from snn2hw.nn.layers import LIFDense
from snn2hw.nn.spike_dense import as_float, spike_linear
from snn2hw.nn.neuron import float_neuron_args

__all__ = [
    "NeuronSpec", "neuron_spec", "lif_sequence", "reset_mask", "spsp_adjoint", "dense_spsp", "evenly_spaced_spikes",
    "layer_current", "spsp_per_pre_spike", "mc_spsp_per_pre_spike",
]


class NeuronSpec:
    """A layer's neuron as the rules see it: per-neuron (or scalar) alpha, beta, v_th, bias and ``t_ref``."""

    def __init__(self, alpha, beta, v_th, bias, t_ref: int):
        self.alpha, self.beta, self.v_th, self.bias, self.t_ref = alpha, beta, v_th, bias, int(t_ref)


def neuron_spec(layer: nn.Module, like: torch.Tensor, t_ref: int = 0) -> NeuronSpec:
    """The float neuron parameters of a dense, recurrent or conv layer, detached."""
    alpha, beta, v_th = (p.detach() for p in float_neuron_args(layer, like))
    bias = layer.neuron_bias() if hasattr(layer, "neuron_bias") else layer.bias
    bias = None if bias is None else bias.detach().to(like.dtype)
    return NeuronSpec(alpha, beta, v_th, bias, t_ref)


def layer_current(layer: nn.Module, s: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """The synaptic input ``W s`` of a layer's feed-forward hop for every step, (B, T, N), without the
    hop delay (dense: ``s @ W^T``; conv and pool: the layer's own convolution). Differentiable in ``s``
    and ``weight``."""
    if isinstance(layer, LIFDense):
        return spike_linear(s, layer.weight if weight is None else weight)
    if hasattr(layer, "_current") and hasattr(layer, "_hop_weight"):
        return layer._current(s, layer._hop_weight() if weight is None else weight)
    raise TypeError(f"{type(layer).__name__} has no feed-forward hop")


def lif_sequence(a_ff: torch.Tensor, spec: NeuronSpec, rec_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Spikes (B, T, N) of the neuron above for input currents ``a_ff`` (already hop-delayed), with an
    optional recurrent projection ``rec_weight`` (N, N, from column to row) and refractory period.
    With ``t_ref = 0`` it evaluates exactly the operations of ``snn2hw.nn.functional`` in the same order,
    so its spikes equal the layers' own forward bit for bit."""
    batch, steps, n = a_ff.shape
    return lif_sequence_chunked(lambda t0, t1: a_ff[:, t0:t1], batch, steps, n, spec, rec_weight, steps,
                                a_ff, a_ff.dtype)


def _delayed(a: torch.Tensor, lag: int) -> torch.Tensor:
    """(B, T, N) currents shifted ``lag`` steps later in time, zeros first (the hop delay)."""
    return torch.nn.functional.pad(a[:, :a.shape[1] - lag], (0, 0, lag, 0)) if lag else a


def lif_sequence_chunked(current, batch: int, steps: int, n: int, spec: NeuronSpec,
                         rec_weight: torch.Tensor | None, chunk: int, like: torch.Tensor,
                         out_dtype: torch.dtype, vsum: torch.Tensor | None = None,
                         counts: torch.Tensor | None = None, out: torch.Tensor | None = None,
                         time_weights: torch.Tensor | None = None,
                         weighted: torch.Tensor | None = None,
                         bias_sum: torch.Tensor | None = None, lag: int = 0) -> torch.Tensor:
    """``lif_sequence`` with the input current made ``chunk`` steps at a time by ``current(t0, t1)`` (hop-delayed,
    (B, t1 - t0, N)), so that no (B, T, N) float tensor exists; spikes are returned in ``out_dtype``
    (``torch.bool`` keeps a layer's trains in one byte per neuron and step). ``vsum`` (B, N), if given,
    receives the sum of the pre-reset membrane at each spike (the T-PSP plus the bias part), ``counts``
    (B, N, float64), if given, the spike counts (a bool train's own ``sum`` converts it to int64 first,
    which costs more than the scan). ``out`` (B, T, N) of ``out_dtype``, if given, receives the spikes.
    ``time_weights`` (T, 1) or (T, N), if given, adds ``sum_t time_weights[t] a[:, t]`` of the currents to
    ``weighted`` (B, N): inside the compiled scan where it can (in float64 there), else per chunk.
    ``bias_sum`` (B, N), if given and the neuron has a bias, receives at each spike the bias part of the
    membrane per unit bias, ``sum_k beta^(t-k)`` over the steps since the last reset: ``sum_t lam_p[t]`` of
    ``spsp_adjoint`` over the real spikes, which the T-PSP less its bias part needs (HM2-BP's self term), so
    the backward needs no reverse scan before its coefficients. ``lag`` 1: ``current(0, steps)`` gives the whole
    window's currents before the hop delay (``dense_current_window``; ``chunk`` must cover the window), which the
    compiled scan reads one step late in place of a shifted copy.

    On the CPU this is the compiled scan of ``spsp_kernels`` (bit-identical to the loop below, recurrent
    input included as long as the BLAS sums a spike vector's terms in order); other devices run the
    per-step tensor loop (the recurrent product is the operator's own ``mm``)."""
    if out is None:
        out = torch.empty(batch, steps, n, dtype=out_dtype, device=like.device)
    compiled = spsp_kernels.usable(like, *(() if rec_weight is None else (rec_weight,)))
    if lag and chunk < steps:
        raise ValueError("lif_sequence_chunked: lag needs the whole window in one chunk")
    if lag and not compiled:  # the tensor loop reads hop-delayed currents
        # ``lag`` bound now: the closure must not see the ``lag = 0`` below (it did, and the tensor loop, the CUDA
        # path, ran whole windows without the hop delay)
        current = lambda t0, t1, undelayed=current, lag=lag: _delayed(undelayed(t0, t1), lag)  # noqa: E731
        lag = 0
    if compiled:
        spikes = out if out_dtype == torch.bool else torch.empty(batch, steps, n, dtype=torch.bool)
        acc = torch.zeros(batch, n, dtype=torch.float64)
        w_acc = torch.zeros(batch, n, dtype=torch.float64) if time_weights is not None else None
        b_acc = torch.zeros(batch, n, dtype=torch.float64) if bias_sum is not None else None
        state: dict = {}
        for t0 in range(0, steps, chunk):
            t1 = min(t0 + chunk, steps)
            a = current(t0, t1).to(like.dtype)
            tw = time_weights[t0:t1] if time_weights is not None else None
            if not spsp_kernels.lif_scan_chunk(a, spec, state, spikes[:, t0:t1], acc, rec_weight, counts, tw,
                                               w_acc, b_acc, lag) and tw is not None:
                weighted += time_weighted(_delayed(a, lag), tw)
        if vsum is not None:
            vsum += acc.to(vsum.dtype)
        if w_acc is not None:
            weighted += w_acc.to(weighted.dtype)
        if b_acc is not None:
            bias_sum += b_acc.to(bias_sum.dtype)
        if spikes is not out:
            out.copy_(spikes)
        return out
    u = like.new_zeros(batch, n)
    v = like.new_zeros(batch, n)
    s = like.new_zeros(batch, n)
    ref = like.new_zeros(batch, n)
    track_bias = bias_sum is not None and spec.bias is not None
    wb = like.new_zeros(batch, n)  # the bias part of v per unit bias (track_bias)
    w_t = None if rec_weight is None else rec_weight.t()
    for t0 in range(0, steps, chunk):
        t1 = min(t0 + chunk, steps)
        a_chunk = current(t0, t1)
        if time_weights is not None:
            weighted += time_weighted(a_chunk, time_weights[t0:t1])
        for t in range(t0, t1):
            a_t = a_chunk[:, t - t0]
            a = a_t if (w_t is None or t == 0) else a_t + s @ w_t
            u = u * spec.alpha + a
            v = v * spec.beta + u
            if spec.bias is not None:
                v = v + spec.bias
            if track_bias:
                wb = wb * spec.beta + 1.0
            if spec.t_ref:
                refractory = ref > 0
                v = v.masked_fill(refractory, 0.0)
                wb = wb.masked_fill(refractory, 0.0)
                ref = (ref - 1).clamp_(min=0)
                s = ((v > spec.v_th) & ~refractory).to(like.dtype)
                ref = torch.where(s > 0, torch.full_like(ref, float(spec.t_ref)), ref)
            else:
                s = (v > spec.v_th).to(like.dtype)
            if vsum is not None:
                vsum += (v * s).to(vsum.dtype)
            if counts is not None:
                counts += s.to(counts.dtype)
            if track_bias:
                bias_sum += (wb * s).to(bias_sum.dtype)
                wb = wb - wb * s
            v = v - v * s
            out[:, t] = s
    return out


def time_weighted(a: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """``sum_t kernel[t] a[:, t]`` (G, N) of currents ``a`` (G, C, N) with a (C, 1) or (C, N) kernel."""
    if kernel.shape[1] == 1:  # one (1, C) x (C, N) product per sample
        return torch.bmm(kernel.t().expand(a.shape[0], 1, -1), a).squeeze(1)
    return (a * kernel).sum(1)


def whole_window(layer: nn.Module, s_in: torch.Tensor, t0: int, t1: int) -> bool:
    """Whether a dense layer's currents of steps [t0, t1) are its whole window over a contiguous input train
    (``dense_current_window`` makes them in one product)."""
    return isinstance(layer, LIFDense) and t0 == 0 and t1 == s_in.shape[1] and s_in.is_contiguous()


def dense_current_window(layer: nn.Module, s_in: torch.Tensor, dtype: torch.dtype,
                         csr_out: list | None = None) -> torch.Tensor:
    """A dense layer's current ``W s_in[t]`` of every step (B, T, N), before the hop delay: one product over all
    (sample, step) rows of the contiguous train (a view of it when it is float), the layers' own product (BPTT's:
    over the spikes where the train is sparse, else the GEMM). ``csr_out``: ``spike_linear``'s. A bool train goes to
    the product as it is (its non-zeros found in the bytes; a float copy only for the GEMM)."""
    batch, steps, n_in = s_in.shape
    src = s_in.reshape(-1, n_in)
    src = src if src.dtype == torch.bool else as_float(src, dtype)
    return spike_linear(src, layer.weight.detach().to(dtype), csr_out=csr_out).view(batch, steps, -1)


def hop_current_chunk(layer: nn.Module, s_in: torch.Tensor, t0: int, t1: int, dtype: torch.dtype) -> torch.Tensor:
    """The hop-delayed feed-forward current of steps [t0, t1): the layer's current of input steps
    [t0 - 1, t1 - 1), zero at step 0."""
    lo = max(t0 - 1, 0)
    if whole_window(layer, s_in, t0, t1):  # one product over all (sample, step) rows, then the hop delay
        return torch.nn.functional.pad(dense_current_window(layer, s_in, dtype)[:, :-1], (0, 0, 1, 0))
    if isinstance(layer, LIFDense):
        # the block's steps of every sample, written after the zero row of step 0
        first = 1 if t0 == 0 else 0
        out = torch.empty(s_in.shape[0], t1 - t0, layer.out_features, dtype=dtype, device=s_in.device)
        out[:, :first] = 0
        out[:, first:] = spike_linear(as_float(s_in[:, lo:t1 - 1], dtype), layer.weight.detach().to(dtype))
        return out
    a = layer_current(layer, as_float(s_in[:, lo:t1 - 1], dtype))
    if t0 == 0:
        a = torch.nn.functional.pad(a, (0, 0, 1, 0))
    return a


def dense_hop_block(weight: torch.Tensor, s_in: torch.Tensor, t0: int, g_w: torch.Tensor | None,
                    g_in: torch.Tensor | None, gw: torch.Tensor | None,
                    events: torch.Tensor | None = None, csr: tuple | None = None) -> torch.Tensor | None:
    """Back through a dense hop ``a[t] = W s_in[t - 1]`` for the block of steps [t0, t0 + C) of the current,
    without autograd. Adds ``sum_{b,k} g_w[b, k, i] s_in[b, t0 + k - 1, j]`` to ``gw`` (N, N_in) and returns the
    error reaching each input at its spikes, ``sum_k s_in[b, t0 + k - 1, j] (g_in[b, k] @ W)_j`` (G, N_in), or
    None without ``g_in``. ``g_w``/``g_in`` (G, C, N) are gradients of the (hop-delayed) current, ``s_in``
    (G, T, N_in) the group's whole stored input trains (bool or float); step 0 has no input. Whole windows
    of a contiguous train make one GEMM over (sample, step) rows of views, shifted by one row: ``g_w``'s
    step-0 rows (which meet the previous sample's last step) are set to 0 for it. GEMMs even for sparse
    trains: for this product, summed over samples into one small matrix, the event-driven
    ``spsp_kernels.scatter_rows`` was no faster at any density measured (0.3-20 %, 784 x 100, one thread).
    Wide layers are another matter (``spiketrain.plan.WEIGHT_EVENT_*``): given ``events`` (1, N_in, N), the
    weight gradient's transpose is added there spike by spike instead of into ``gw``; ``csr``, the non-zeros of
    the group's (sample, step) input rows as the forward product found them (``spike_linear``'s ``csr_out``), spares
    that the dense train is read again to list them (``spsp_kernels.scatter_rows_csr``; the same sums)."""
    f = 1 if t0 == 0 else 0
    t1 = t0 + (g_w if g_w is not None else g_in).shape[1]
    s_prev = s_in[:, t0 + f - 1:t1 - 1]
    dtype = (g_w if g_w is not None else g_in).dtype
    if g_w is not None and events is not None:
        if csr is None or not spsp_kernels.scatter_rows_csr(g_w, csr, s_in.shape[1], t0 + f - 1, s_prev.shape[1],
                                                            events, lag=f):
            spsp_kernels.scatter_rows(g_w, s_prev, events, per_sample=False, lag=f)
    elif g_w is not None:
        n, n_in = g_w.shape[2], s_in.shape[2]
        if f and t1 == s_in.shape[1] and s_in.is_contiguous():
            g_w[:, 0] = 0
            gw.addmm_(g_w.reshape(-1, n)[1:].t(), as_float(s_in.reshape(-1, n_in)[:-1], dtype))
        elif g_w.shape[0] == 1:
            gw.addmm_(g_w[0, f:].t(), as_float(s_prev[0], dtype))
        else:
            gw.addmm_(g_w[:, f:].reshape(-1, n).t(), as_float(s_prev, dtype).reshape(-1, n_in))
    if g_in is None:
        return None
    return (g_in[:, f:] @ weight.detach().to(dtype)).mul_(as_float(s_prev, dtype)).sum(1)


def conv_hop_products(layer: nn.Module, s_prev: torch.Tensor | None, g_w: torch.Tensor | None,
                      g_in: torch.Tensor | None):
    """Back through a conv or pool hop over blocks of (sample, step) rows, without autograd: ``(sum over rows
    of g_w[r, i] da[r, i]/dW, g_in[r, i] da[r, i]/ds[r, j])`` for the layer's current ``a = conv(s, W)``,
    ``s_prev`` (G, C, N_in) the input spikes as float and ``g_w``/``g_in`` (G, C, N) gradients of its current
    (None: not wanted). One ``convolution_backward`` per call, both products at once when ``g_w is g_in``: the
    products of BPTT's backward through the same convolution. ``s_prev`` may be None when only ``g_in`` is
    given (the input error does not read the input)."""
    g = g_w if g_w is not None else g_in
    rows = g.shape[0] * g.shape[1]
    w = layer._hop_weight().detach().to(g.dtype)
    if s_prev is None:
        img = g.new_zeros(()).expand(rows, *layer.in_shape)
    else:
        img = s_prev.reshape(rows, *layer.in_shape)

    def back(grad, mask):
        return torch.ops.aten.convolution_backward(grad.reshape(rows, *layer.out_shape), img, w, None,
                                                   list(layer.stride), list(layer.padding), list(layer.dilation),
                                                   False, [0, 0], layer.groups, mask)

    gw = gs = None
    if g_w is not None and g_w is g_in:
        gs, gw, _ = back(g_w, [True, True, False])
    else:
        if g_w is not None:
            gw = back(g_w, [False, True, False])[1]
        if g_in is not None:
            gs = back(g_in, [True, False, False])[0]
    return gw, (None if gs is None else gs.reshape(*g.shape[:2], layer.in_features))  # not -1: blocks of 0 steps


def reset_mask(spikes: torch.Tensor, t_ref: int = 0) -> torch.Tensor:
    """1 where v restarts from 0 after the step: a spike step and the ``t_ref`` steps after it."""
    cut = spikes.clone()
    for k in range(1, int(t_ref) + 1):
        cut[:, k:] = torch.maximum(cut[:, k:], spikes[:, :-k])
    return cut


def spsp_adjoint(spikes: torch.Tensor, alpha, beta, t_ref: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(lam_u, lam_p), each (B, T, N): ``lam_u[b, t, i]`` is the S-PSP kernel of post neuron i for a current
    entering at step t (``M_i[g] = lam_u[g+1]`` for a pre spike at g); ``lam_p`` the same for a current
    entering v directly (the bias). ``spikes`` are the post-synaptic trains (real or virtual)."""
    batch, steps, n = spikes.shape
    if spsp_kernels.usable(spikes, *(p for p in (alpha, beta) if isinstance(p, torch.Tensor))):
        sums = torch.zeros(2, batch, n, dtype=torch.float64)
        return spsp_kernels.adjoint_scan_chunk(spikes, 0, steps, NeuronSpec(alpha, beta, None, None, t_ref),
                                               spikes.dtype, {}, sums[0], sums[1], want_lam_p=True)
    keep_beta = (1.0 - reset_mask(spikes, t_ref)) * beta
    lam_u = torch.empty_like(spikes)
    lam_p = torch.empty_like(spikes)
    lp = spikes.new_zeros(batch, n)
    lu = spikes.new_zeros(batch, n)
    for t in range(steps - 1, -1, -1):
        lp = spikes[:, t] + keep_beta[:, t] * lp
        lu = lp + alpha * lu
        lam_p[:, t] = lp
        lam_u[:, t] = lu
    return lam_u, lam_p


def dense_spsp(lam_u: torch.Tensor, s_pre: torch.Tensor) -> torch.Tensor:
    """S-PSPs (B, N_post, N_pre) of a one-step-delay dense projection: ``e = lam_u[:, 1:]^T @ s_pre[:, :-1]``."""
    return lam_u[:, 1:].transpose(1, 2) @ s_pre[:, :-1]


def virtual_counts(steps: int, counts: torch.Tensor, t_ref: int = 0) -> torch.Tensor:
    """The spike counts ``evenly_spaced_spikes`` gives for ``counts``: rounded, at most what the refractory
    period allows in ``steps``."""
    return counts.round().clamp(0, steps // (1 + int(t_ref)))


def evenly_spaced_spikes(steps: int, counts: torch.Tensor, t_ref: int = 0,
                         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, T, N) trains with ``counts[b, i]`` evenly spaced spikes, the last at step T-1 (HM2-BP's artificial
    spikes for silent neurons); counts are capped at what the refractory period allows."""
    k = virtual_counts(steps, counts, t_ref).to(torch.long)  # (B, N)
    out = torch.zeros(*counts.shape[:-1], steps, counts.shape[-1], dtype=dtype, device=counts.device)
    b, i = k.nonzero(as_tuple=True)  # the neurons that get spikes, then all their spikes at once
    if b.numel() == 0:
        return out
    kk = k[b, i]
    m = torch.arange(int(kk.max()), device=k.device)
    take = m.unsqueeze(0) < kk.unsqueeze(1)  # (neurons, kmax)
    pos = ((m.unsqueeze(0) + 1) * steps) // kk.unsqueeze(1) - 1  # spike m of a neuron with k spikes
    rows = take.nonzero(as_tuple=True)[0]
    out[b[rows], pos[take], i[rows]] = 1
    return out


# --- the mean S-PSP of random trains (ST-RSBP's fitted d e / d o_post) ----------------------------------
def spsp_per_pre_spike(lam_u: torch.Tensor) -> torch.Tensor:
    """Mean over the pre-spike time g of ``M[g] = lam_u[g+1]``: the S-PSP one pre spike at a uniformly random
    step adds, (B, N)."""
    steps = lam_u.shape[1]
    return lam_u[:, 1:].sum(1) / steps


def random_trains(samples: int, steps: int, count: int, t_ref: int, generator: torch.Generator) -> torch.Tensor:
    """(samples, T) binary trains with exactly ``count`` spikes at uniformly random steps, at least
    ``t_ref + 1`` apart (choose positions among ``T - count t_ref`` slots, then spread them). On the CPU, as
    ``generator`` is, whatever the default device (the fit is host-side: a table of numbers)."""
    slots = steps - count * t_ref
    out = torch.zeros(samples, steps, device="cpu")
    if count <= 0:
        return out
    pos = torch.rand(samples, slots, generator=generator, device="cpu").argsort(dim=1)[:, :count].sort(dim=1).values
    pos = pos + torch.arange(count, device="cpu") * t_ref
    out.scatter_(1, pos, 1.0)
    return out


def mc_spsp_per_pre_spike(alpha: float, beta: float, steps: int, t_ref: int, counts, samples: int = 512,
                          seed: int = 0) -> torch.Tensor:
    """Monte-Carlo mean S-PSP per pre-synaptic spike, ``h(o_post)``, for post trains of each count in ``counts``.

    Pre and post trains are independent with uniformly random spike times; the S-PSP is linear in the
    pre spikes, so the mean S-PSP of a pair is ``o_pre * h(o_post)`` and ST-RSBP's
    ``d e_ij / d o_i = o_j h'(o_i)`` needs only this one-dimensional function."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    counts = [int(c) for c in counts]
    trains = torch.stack([random_trains(samples, steps, c, t_ref, g) for c in counts], dim=2).double()
    lam_u, _ = spsp_adjoint(trains, torch.tensor(alpha, dtype=torch.float64, device="cpu"),
                            torch.tensor(beta, dtype=torch.float64, device="cpu"), t_ref)
    return spsp_per_pre_spike(lam_u).mean(0)


def count_grid(steps: int, t_ref: int, points: int = 41) -> list[int]:
    """Post counts at which the Monte-Carlo table is taken: 0 .. the most the neuron can fire."""
    top = steps // (1 + t_ref)
    return sorted({int(round(top * k / (points - 1))) for k in range(points)})


def fit_polynomial(counts, h, top: int, degree: int = 6) -> list[float]:
    """Least-squares polynomial coefficients (highest power first) of ``h`` in ``x = count / top``."""
    import numpy as np

    x = np.asarray(counts, dtype=np.float64) / max(top, 1)
    return [float(c) for c in np.polyfit(x, np.asarray(h, dtype=np.float64), min(degree, len(x) - 1))]


def polyval_derivative(coeffs, x: torch.Tensor) -> torch.Tensor:
    """d/dx of the polynomial ``coeffs`` (highest power first) at ``x``."""
    deg = len(coeffs) - 1
    out = torch.zeros_like(x)
    for k, c in enumerate(coeffs[:-1]):
        out = out * x + c * (deg - k)
    return out


