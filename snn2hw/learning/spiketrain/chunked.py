"""The layer backward of the chunked path for dense and recurrent layers: one reverse scan per group of samples
makes the group's S-PSP matrices block by block, and every gradient and the input error follow from them
elementwise. Layers that need no S-PSP matrix go to ``hop.hop_backward_chunked``."""
from __future__ import annotations

import torch
from torch import nn

from snn2hw.learning import spsp_kernels
from snn2hw.learning.spiketrain import hop, plan, scan
from snn2hw.learning.spiketrain.sums import accumulate, add_coefficient_sum
from snn2hw.learning.spiketrain.trace import BackwardOptions, LayerTrace, PostStats, layer_counts_in, take_rows
from snn2hw.learning.spsp import as_float
from snn2hw.nn.layers import LIFDense


def layer_backward_chunked(tr: LayerTrace, g: torch.Tensor, targets: torch.Tensor | None, need_input: bool,
                           opts: BackwardOptions) -> torch.Tensor | None:
    """``whole.layer_backward`` for a layer whose trace holds bool spikes and no currents (conv and pool layers:
    ``hop.hop_backward_chunked``). Dense and recurrent layers: one reverse pass over time per group of samples.

    Every coefficient of the rules is per sample, so a group of G samples makes its S-PSP matrices
    ``e`` (G, N, N_in) (and ``e_rec`` (G, N, N)) block by block during the reverse scan, one batched
    product ``lam_u^T @ s_in`` per block (``add_spsp``), then its coefficients from its reductions; the
    weight gradient ``sum_b c_w[b, i] e[b, i, j]`` and the input error ``sum_i c_back[b, i] w_ij e[b, i, j]``
    are then elementwise (G N N_in, no factor T). Against a weight-gradient GEMM and an input-error GEMM
    per block (and a second scan to have the coefficients first) this is one scan and one GEMM of the
    same size as BPTT's weight gradient. Memory: ``e`` of a group is kept near ``CHUNK_BYTES`` (at least
    one sample) and the float blocks near ``CHUNK_BYTES`` (``plan.block``), whatever T.

    The T-PSP (HM2-BP's self term) is the membrane summed at the spikes, recorded by the forward
    (``vsum``), less the bias part; neurons given virtual spikes (silent ones; their membrane was never
    reset there) take the forward's ``tpsp_virtual`` in hidden feed-forward layers, else their current is
    re-made, for those columns alone.

    A feed-forward layer that hands no error down (the first) and whose coefficients are known before the
    scan needs no ``e``: ``hop.hop_backward_chunked`` then makes its weight gradient as one GEMM over (sample,
    step) rows (``coefficients_first``)."""
    if not isinstance(tr.layer, LIFDense) or coefficients_first(tr, g, targets, need_input, opts.needs_tpsp):
        return hop.hop_backward_chunked(tr, g, targets, need_input, opts)
    layer, spec, dtype = tr.layer, tr.spec, g.dtype
    batch, steps, n = tr.s_out.shape
    n_in = tr.s_in.shape[2]
    counts_rec = tr.counts.to(dtype)
    post = tr.s_out  # plus virtual spikes, made by the reverse scan
    virtual_k, counts, virtual = scan.with_virtual_spikes(tr, g, targets, opts.hidden_virtual_spikes)
    virtual_cols = None if virtual is None else virtual.any(0).nonzero().squeeze(1)
    rec = tr.rec_weight
    w = layer.weight.detach()
    counts_in = layer_counts_in(tr, opts.chunk).to(dtype)
    weight = layer.weight if layer.weight.requires_grad else None
    bias = getattr(layer, "bias", None)
    bias = bias if isinstance(bias, nn.Parameter) and bias.requires_grad else None
    train_rec = rec is not None and opts.trains_recurrent and layer.rec_weight.requires_grad
    gw = torch.zeros_like(w) if weight is not None else None
    gb = torch.zeros(n, dtype=dtype, device=g.device) if bias is not None else None
    gv = torch.zeros(n, n, dtype=dtype, device=g.device) if train_rec else None
    result = torch.empty(batch, n_in, dtype=dtype, device=g.device) if need_input else None
    want_e = weight is not None or need_input
    want_tpsp_v = opts.needs_tpsp and virtual_cols is not None and virtual_cols.numel() > 0
    recorded_v = want_tpsp_v and targets is None and tr.tpsp_virtual is not None  # by the forward
    remake_v = want_tpsp_v and not recorded_v and not want_e  # currents remade for the columns
    w_v = w[virtual_cols] if remake_v else None
    rec_v = rec[virtual_cols] if remake_v and rec is not None else None
    sparse_in = want_e and plan.event_driven(tr.s_in, g, counts_in.sum() if tr.s_in.dtype == torch.bool else None)
    sparse_rec = rec is not None and plan.event_driven(tr.s_out, g, counts_rec.sum())
    compiled = plan.compiled_scan(post, spec, dtype)
    # float temporaries per step: lam_u, and the trains the products read as float (bool trains are converted)
    width = n + n_in * (want_e and tr.s_in.dtype != dtype) + n * (rec is not None)
    group, block = plan.group_and_block(batch, n, n_in * want_e + n * (rec is not None), width, compiled,
                                       opts.chunk)
    work: dict = {}  # the reverse scan's block buffers, reused by every group (``scan.scan_chunks``)
    for b0 in range(0, batch, group):
        b1 = min(b0 + group, batch)
        rows = slice(b0, b1)
        sums = torch.zeros(2, b1 - b0, n, dtype=torch.float64, device=g.device)  # lam_u (steps >= 1), lam_p
        e = e_rec = None  # (G, N, N_in) and (G, N, N), made by the first block
        # T-PSP of neurons given virtual spikes: from e when it is made (sum_j w_ij e_ij), else re-made
        tpsp_v = g.new_zeros(b1 - b0, virtual_cols.numel()) if remake_v else None
        for t0, t1, lam_u in scan.scan_chunks(post[rows], take_rows(virtual_k, rows), spec, dtype, sums, block,
                                               work=work):
            f = 1 if t0 == 0 else 0  # the kernel at step t pairs with the pre spikes of step t - 1
            lam = lam_u[:, f:]
            s_prev = tr.s_in[rows, t0 + f - 1:t1 - 1]
            r_prev = tr.s_out[rows, t0 + f - 1:t1 - 1] if rec is not None else None
            if want_e:
                e = add_spsp(e, lam, s_prev, sparse_in)
            if rec is not None:
                e_rec = add_spsp(e_rec, lam, r_prev, sparse_rec)
            if tpsp_v is not None:
                a = as_float(s_prev, dtype) @ w_v.t()
                if rec is not None:
                    a = a + as_float(r_prev, dtype) @ rec_v.t()
                tpsp_v += (lam[:, :, virtual_cols] * a).sum(1)
        if want_tpsp_v and want_e and not recorded_v:  # every neuron, then the columns: cheaper than a gather
            tpsp_v = (e * w).sum(2)[:, virtual_cols]
            if rec is not None:
                tpsp_v += (e_rec * rec).sum(2)[:, virtual_cols]
        lam_u_sum, lam_p_sum = sums[0].to(dtype), sums[1].to(dtype)
        tpsp = None
        if opts.needs_tpsp:
            tpsp = tr.vsum[rows].to(dtype, copy=True)
            if spec.bias is not None:
                tpsp = tpsp - spec.bias * lam_p_sum
            if recorded_v:
                tpsp = torch.where(virtual[rows], tr.tpsp_virtual[rows].to(dtype), tpsp)
            elif want_tpsp_v:
                tpsp[:, virtual_cols] = tpsp_v
        stats = PostStats(counts[rows], counts_in[rows], counts_rec[rows] if rec is not None else None,
                          lam_u_sum / steps, e_rec, tpsp)
        c_w, c_back = opts.coefficients(tr, g[rows], stats)
        if gw is not None:
            add_coefficient_sum(gw, c_w, e)
        if gv is not None:
            add_coefficient_sum(gv, c_w, e_rec)
        if gb is not None:
            gb += (c_w * lam_p_sum).sum(0)
        if need_input:  # dE/do_j = sum_i c_back[b, i] w_ij e_bij / o_j; a silent input: one spike at a random step
            total = (c_back * lam_u_sum) @ w
            if opts.pre_derivative == "uniform":  # every input as a silent one
                result[rows] = total / steps
            else:
                per_spike = torch.bmm(c_back.unsqueeze(1), e.mul_(w)).squeeze(1)
                o_in = counts_in[rows]
                result[rows] = torch.where(o_in > 0, per_spike / o_in.clamp(min=1), total / steps)
    if gw is not None:
        accumulate(weight, gw)
    if gb is not None:
        accumulate(bias, gb)
    if gv is not None:
        gv = gv * layer.rec_weight_scale
        accumulate(layer.rec_weight, gv * layer.rec_mask if layer.rec_mask is not None else gv)
    return result


def coefficients_first(tr: LayerTrace, g: torch.Tensor, targets: torch.Tensor | None, need_input: bool,
                       needs_tpsp: bool) -> bool:
    """Whether a dense layer's coefficients can come before its products and nothing else needs its S-PSP
    matrix ``e``: feed-forward (no recurrent S-PSPs), no input error to hand down (``e`` makes it with
    one product, where the products of ``hop_backward_chunked`` take a second GEMM) and, for rules with a
    T-PSP (``needs_tpsp``), no neuron given virtual spikes whose T-PSP the forward did not record (the output's)."""
    if tr.rec_weight is not None or need_input or not isinstance(tr.layer, LIFDense):
        return False
    if not needs_tpsp or (targets is None and tr.tpsp_virtual is not None):
        return True
    return not bool(((tr.counts == 0) & (g != 0)).any())


def add_spsp(e: torch.Tensor | None, lam: torch.Tensor, s_pre: torch.Tensor, sparse: bool) -> torch.Tensor:
    """``e[b] + lam[b]^T @ s_pre[b]`` (e None: zeros): S-PSPs (G, N, M) of one block, ``lam`` (G, C, N) the
    kernel at the steps after the pre-synaptic ones ``s_pre`` (G, C, M, bool or float), added in place.
    Sparse trains: event-driven into ``e``'s transpose, a contiguous (G, M, N), so that each pre-synaptic
    spike adds to one contiguous row; else one batched GEMM per block, K = C steps, over views of the
    stored trains (a float input is not copied)."""
    if sparse:
        if e is None:
            e = lam.new_zeros(lam.shape[0], s_pre.shape[2], lam.shape[2]).transpose(1, 2)
        spsp_kernels.scatter_rows(lam, s_pre, e.transpose(1, 2), per_sample=True)
        return e
    if e is None:  # the first block writes e (no zero fill)
        return torch.bmm(lam.transpose(1, 2), as_float(s_pre, lam.dtype))
    return e.baddbmm_(lam.transpose(1, 2), as_float(s_pre, lam.dtype))
