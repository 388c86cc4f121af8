"""The reverse S-PSP recursion of the chunked path, block by block, and the virtual spikes it adds: silent neurons
that receive an error are given evenly spaced virtual spikes for their S-PSP kernel."""
from __future__ import annotations

import torch

from snn2hw.learning import spsp_kernels
from snn2hw.learning.spiketrain import plan
from snn2hw.learning.spiketrain.trace import LayerTrace
from snn2hw.learning.spsp import NeuronSpec, evenly_spaced_spikes, reset_mask, spsp_adjoint, virtual_counts


def scan_chunks(post: torch.Tensor, virtual: torch.Tensor | None, spec: NeuronSpec, dtype: torch.dtype,
                sums: torch.Tensor | None, block: int, scale: torch.Tensor | None = None, work: dict | None = None):
    """The reverse-time recursion of ``spsp_adjoint`` over ``block``-step blocks, last block first, for the
    post trains ``post`` (B, T, N) plus ``virtual`` (B, N) evenly spaced virtual spikes (None: none; made on
    the fly by the compiled scan): yields (t0, t1, lam_u[t0:t1]) and adds the per-neuron sums of lam_u
    (steps >= 1) and lam_p over the window to ``sums[0]`` and ``sums[1]`` ((2, B, N), float64; None: not
    wanted, and the compiled scan leaves them out). ``scale``
    (B, N), if given, multiplies the yielded blocks per neuron (``lam_u * scale.unsqueeze(1)``; inside the
    compiled scan, which saves a pass over each block); the sums stay the kernel's. ``work`` (a dict kept by the
    caller for a layer's backward): the compiled scan writes every block into the same buffer
    (``spsp_kernels.adjoint_scan_chunk``), so a yielded block is valid until the next one is asked for."""
    batch, steps, n = post.shape
    block = -(-steps // -(-steps // max(block, 1)))  # equal blocks (no short last one: a GEMM's K)
    if plan.compiled_scan(post, spec, dtype):
        state: dict = {}
        for t1 in range(steps, 0, -block):
            t0 = max(t1 - block, 0)
            lam_u, _ = spsp_kernels.adjoint_scan_chunk(post, t0, t1, spec, dtype, state,
                                                       *((None, None) if sums is None else sums),
                                                       virtual=virtual, scale=scale, work=work)
            yield t0, t1, lam_u
        return
    if virtual is not None:
        post = evenly_spaced_spikes(steps, virtual, spec.t_ref, dtype=torch.bool).logical_or_(post)
    lp = torch.zeros(batch, n, dtype=dtype, device=post.device)
    lu = torch.zeros_like(lp)
    for t1 in range(steps, 0, -block):
        t0 = max(t1 - block, 0)
        lo = max(t0 - spec.t_ref, 0)
        window = post[:, lo:t1].to(dtype)
        keep_beta = (1.0 - reset_mask(window, spec.t_ref)[:, t0 - lo:]) * spec.beta
        sp = window[:, t0 - lo:]
        lam_u = torch.empty_like(sp)
        lam_p = torch.empty_like(sp)
        for t in range(t1 - t0 - 1, -1, -1):
            lp = sp[:, t] + keep_beta[:, t] * lp
            lu = lp + spec.alpha * lu
            lam_p[:, t] = lp
            lam_u[:, t] = lu
        first = 1 if t0 == 0 else 0
        if sums is not None:
            sums[0] += lam_u[:, first:].sum(1).to(sums.dtype)
            sums[1] += lam_p.sum(1).to(sums.dtype)
        yield t0, t1, (lam_u if scale is None else lam_u * scale.unsqueeze(1))


def with_virtual_spikes(tr: LayerTrace, g: torch.Tensor, targets: torch.Tensor | None, hidden_virtual_spikes: int):
    """(virtual spike counts (B, N) or None, post counts (B, N) in g's dtype, mask (B, N) of the neurons given
    virtual spikes or None) of a chunked trace: silent neurons that receive an error get evenly spaced
    virtual spikes (``evenly_spaced_spikes``), ``targets`` of them at the output, ``hidden_virtual_spikes``
    elsewhere; ``scan_chunks`` adds them to the recorded trains."""
    steps = tr.s_out.shape[1]
    counts = tr.counts.to(g.dtype)
    silent = (counts == 0) & (g != 0)
    if not bool(silent.any()):
        return None, counts, None
    k = targets if targets is not None else torch.full_like(counts, float(hidden_virtual_spikes))
    k = virtual_counts(steps, torch.where(silent, k, torch.zeros_like(k)), tr.spec.t_ref)
    counts = counts + k.to(g.dtype)  # silent neurons: their real count is 0
    virtual = (counts > 0).logical_and_(silent)
    return (k, counts, virtual) if bool(virtual.any()) else (None, counts, None)


def virtual_kernel(steps: int, spec: NeuronSpec, hidden_virtual_spikes: int, like: torch.Tensor) -> torch.Tensor:
    """(T, 1), or (T, N) for per-neuron decays: the S-PSP kernel ``lam_u`` of a neuron whose only spikes are
    the ``hidden_virtual_spikes`` virtual ones a silent hidden neuron is given; its T-PSP for currents
    ``a`` is ``sum_t kernel[t] a[t]``."""
    n = max(spec.alpha.numel(), spec.beta.numel())
    k = torch.full((1, n), float(hidden_virtual_spikes), dtype=like.dtype, device=like.device)
    lam_u, _ = spsp_adjoint(evenly_spaced_spikes(steps, k, spec.t_ref, dtype=like.dtype), spec.alpha, spec.beta,
                            spec.t_ref)
    return lam_u[0]
