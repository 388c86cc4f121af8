"""The layer backward of the chunked path by the hop's own products: conv and pool layers (the convolution's weight
and input gradients per block of (sample, step) images) and dense feed-forward layers whose coefficients come first
(the weight gradient as one GEMM, or spike by spike, over (sample, step) rows; no S-PSP matrix)."""
from __future__ import annotations

import torch
from torch import nn

from snn2hw.learning import spsp_kernels
from snn2hw.learning.spiketrain import plan, scan
from snn2hw.learning.spiketrain.sums import accumulate
from snn2hw.learning.spiketrain.trace import BackwardOptions, LayerTrace, PostStats, layer_counts_in, take_rows
from snn2hw.learning.spsp import as_float, conv_hop_products, dense_hop_block, hop_current_chunk
from snn2hw.nn.layers import LIFDense

# A reverse scan whose sums of lam_u and lam_p nothing reads (a weight gradient alone, no bias) leaves them out.
# Module-level so that a benchmark can switch it off for an interleaved A/B (``diag_spiketrain_speed.py
# --variant``); it changes no result.
SKIP_UNREAD_SUMS = True


def hop_backward_chunked(tr: LayerTrace, g: torch.Tensor, targets: torch.Tensor | None, need_input: bool,
                         opts: BackwardOptions) -> torch.Tensor | None:
    """``whole.layer_backward`` for a conv or pool layer whose trace holds bool spikes and no currents, and for a
    dense feed-forward layer whose coefficients need no S-PSP matrix (``chunked.coefficients_first``).

    A conv synapse's S-PSP is the dense one, ``e_ij = sum_t lam_u_i[t] s_j[t-1]``, and the weight is shared
    over positions, so the rules' weight gradient ``sum_{b,i,j sharing w} c_w[b,i] e_bij`` is the
    convolution's weight gradient for the output gradient ``c_w lam_u`` against the input spikes over
    (sample, step) rows, and the input error ``sum_i c_back[b,i] w_ij e_bij / o_j`` is
    ``sum_t s_j[t-1] convT(c_back lam_u[t])_j / o_j``: the products of BPTT's backward through the same
    convolution (``spsp.conv_hop_products``), made per block of steps from the reverse scan, so only the
    bool trains span the window. The coefficients come first (a layer's ``e`` is never formed): from the
    counts, and for HM2-BP from the T-PSP, which is the forward's membrane sums, less their bias part (the
    forward's ``bias_sum``, ``sum_t lam_p[t]``), and for neurons given virtual spikes the forward's
    ``tpsp_virtual`` (``sum_t lam_u[t] a[t]``). When a coefficient needs a reduction of the kernel the
    forward did not record (virtual spikes at the output, which the forward cannot know, and then their
    currents are remade) a first scan gives it. Float temporaries
    stay near ``CHUNK_BYTES`` whatever T (groups of whole windows while one fits, else one sample in
    blocks of steps).

    A dense layer's products are the same with the dense hop (``spsp.dense_hop_block``): the weight
    gradient is one GEMM ``(c_w lam_u)^T @ s_in`` over the (sample, step) rows of a group, BPTT's own
    weight-gradient product, where forming ``e`` would add passes over G N N_in elements."""
    layer, spec, dtype = tr.layer, tr.spec, g.dtype
    batch, steps, n = tr.s_out.shape
    n_in = tr.s_in.shape[2]
    dense = isinstance(layer, LIFDense)
    post = tr.s_out  # plus virtual spikes, made by the reverse scan
    virtual_k, counts, virtual = scan.with_virtual_spikes(tr, g, targets, opts.hidden_virtual_spikes)
    counts_in = layer_counts_in(tr, opts.chunk).to(dtype) if need_input or opts.needs_counts_in else None
    weight = layer.weight if isinstance(layer.weight, nn.Parameter) and layer.weight.requires_grad else None
    bias = getattr(layer, "bias", None)
    bias = bias if isinstance(bias, nn.Parameter) and bias.requires_grad else None
    if weight is None and bias is None and not need_input:  # e.g. a first pool layer without a bias
        return None
    tpsp_v = opts.needs_tpsp and virtual is not None
    remake_v = tpsp_v and (targets is not None or tr.tpsp_virtual is None)  # currents remade in a first scan
    # a first scan for what the coefficients need before the products: the remade virtual T-PSP, and the T-PSP's
    # bias part where the forward did not record it (``LayerTrace.bias_sum``)
    bias_part = opts.needs_tpsp and spec.bias is not None
    first_scan = remake_v or (bias_part and tr.bias_sum is None)
    compiled = plan.compiled_scan(post, spec, dtype)
    # float temporaries per step: lam_u and the two output gradients; the input as float and its error
    width = 3 * n + 2 * n_in
    if dense:  # lam_u scaled in place; the input as float when it is a bool train
        width = n + n_in * (tr.s_in.dtype != dtype) + need_input * (2 * n + n_in)
    if compiled:
        group, block = plan.window_groups(batch, steps, width, opts.chunk)
    else:
        group, block = batch, plan.block(batch, width, opts.chunk)
    # a dense layer's weight gradient alone reads only c_w lam_u: the scan writes it so
    scaled = dense and weight is not None and not need_input
    events = None  # (1, N_in, N): the dense weight gradient's transpose when it is event-driven
    if scaled and plan.event_driven_weights(tr.s_in, n, dtype):
        events = torch.zeros(1, n_in, n, dtype=dtype)  # the weight gradient's transpose, spike by spike
    # the weight gradient of the products (GEMMs, convolutions); none when it is made spike by spike
    gw = torch.zeros_like(weight, dtype=dtype) if weight is not None and events is None else None
    gb = torch.zeros(n, dtype=dtype, device=g.device) if bias is not None else None
    result = torch.empty(batch, n_in, dtype=dtype, device=g.device) if need_input else None
    work: dict = {}  # the reverse scan's block buffers, reused by every group and scan (``scan.scan_chunks``)
    for b0 in range(0, batch, group):
        rows = slice(b0, min(b0 + group, batch))
        sums = torch.zeros(2, rows.stop - b0, n, dtype=torch.float64, device=g.device)  # lam_u (t >= 1), lam_p
        random_spike = None  # a conv or pool layer is feed-forward: only recurrent synapses use it
        tpsp = tr.vsum[rows].to(dtype, copy=True) if opts.needs_tpsp else None
        if first_scan:
            remade = g.new_zeros(rows.stop - b0, n) if remake_v else None
            for t0, t1, lam_u in scan.scan_chunks(post[rows], take_rows(virtual_k, rows), spec, dtype, sums,
                                                   block, work=work):
                if remade is not None:
                    remade += (lam_u * hop_current_chunk(layer, tr.s_in[rows], t0, t1, dtype)).sum(1)
            random_spike = sums[0].to(dtype) / steps
            if bias_part and tr.bias_sum is None:
                tpsp -= spec.bias * sums[1].to(dtype)
            sums.zero_()
        if bias_part and tr.bias_sum is not None:
            tpsp -= spec.bias * tr.bias_sum[rows].to(dtype)
        if tpsp_v:
            made = remade if remake_v else tr.tpsp_virtual[rows].to(dtype)
            tpsp = torch.where(virtual[rows], made, tpsp)
        stats = PostStats(counts[rows], None if counts_in is None else counts_in[rows], None, random_spike, None,
                          tpsp)
        c_w, c_back = opts.coefficients(tr, g[rows], stats)
        per_spike = g.new_zeros(rows.stop - b0, n_in) if need_input else None
        # a dense layer's weight gradient alone reads only c_w lam_u: the scan writes it so
        # the sums of lam_u and lam_p are read only by a bias's gradient and the input error
        wanted = sums if gb is not None or need_input or not SKIP_UNREAD_SUMS else None
        for t0, t1, lam_u in scan.scan_chunks(post[rows], take_rows(virtual_k, rows), spec, dtype, wanted, block,
                                               c_w if scaled else None, work):
            if weight is None and not need_input:  # a bias alone (a pool's, a frozen weight's): the sums suffice
                continue
            if dense:
                g_in = lam_u * c_back.unsqueeze(1) if need_input else None
                g_w = None
                if weight is not None:
                    g_w = lam_u if scaled else g_in if c_back is c_w else lam_u.mul_(c_w.unsqueeze(1))
                csr = None  # the forward product's non-zeros of this group's input rows, if it kept them
                if events is not None and tr.in_csr is not None and tr.in_csr.get(b0, (0,))[0] == rows.stop - b0:
                    csr = tr.in_csr[b0][1]
                part_in = dense_hop_block(layer.weight, tr.s_in[rows], t0, g_w, g_in, gw, events, csr)
                if part_in is not None:
                    per_spike += part_in
                continue
            f = 1 if t0 == 0 else 0  # the kernel at step t pairs with the input spikes of step t - 1
            lam = lam_u[:, f:]
            s_prev = as_float(tr.s_in[rows, t0 + f - 1:t1 - 1], dtype)
            g_w = lam * c_w.unsqueeze(1) if gw is not None else None
            g_in = None
            if need_input:
                g_in = g_w if c_back is c_w and g_w is not None else lam * c_back.unsqueeze(1)
            part_w, part_in = conv_hop_products(layer, s_prev, g_w, g_in)
            if part_w is not None:
                gw += part_w
            if part_in is not None:  # the error reaching each input at its spikes
                per_spike += part_in.mul_(s_prev).sum(1)
        if gb is not None:
            gb += (c_w * sums[1].to(dtype)).sum(0)
        if need_input:  # a silent input: the error of one spike at a uniformly random step
            lam_u_sum = sums[0].to(dtype)
            if dense:
                total = (c_back * lam_u_sum) @ layer.weight.detach().to(dtype)
            else:
                total = conv_hop_products(layer, None, None, (c_back * lam_u_sum).unsqueeze(1))[1].squeeze(1)
            o_in = counts_in[rows]
            result[rows] = (total / steps if opts.pre_derivative == "uniform" else
                            torch.where(o_in > 0, per_spike / o_in.clamp(min=1), total / steps))
    if weight is not None:  # events: sums from +0.0, so never -0.0, and its transpose is 0 + it bit for bit
        accumulate(weight, gw if events is None else spsp_kernels.transposed(events[0]))
    if gb is not None:
        accumulate(bias, gb.reshape(bias.numel(), -1).sum(1))
    return result
