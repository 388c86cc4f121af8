"""The layer backward over whole windows of float trains and currents (``full_trace``): direct and larger than the
chunked path (``chunked``, ``hop``), kept to cross-check it. Products back through the hop are BPTT's: two GEMMs
for a dense layer, the convolution's autograd for conv and pool layers."""
from __future__ import annotations

import torch
from torch import nn

from snn2hw.learning.spiketrain.sums import accumulate
from snn2hw.learning.spiketrain.trace import BackwardOptions, LayerTrace, PostStats
from snn2hw.learning.spsp import dense_spsp, evenly_spaced_spikes, layer_current, spsp_adjoint, spsp_per_pre_spike
from snn2hw.nn.layers import LIFDense, hop_delay


def layer_backward(tr: LayerTrace, g: torch.Tensor, targets: torch.Tensor | None, need_input: bool,
                   opts: BackwardOptions) -> torch.Tensor | None:
    """Accumulate the layer's gradients from its count error ``g``; return the error of its inputs."""
    layer, spec = tr.layer, tr.spec
    s_post = tr.s_out
    counts = s_post.sum(1)
    silent = (counts == 0) & (g != 0)
    if bool(silent.any()):
        k = targets if targets is not None else torch.full_like(counts, float(opts.hidden_virtual_spikes))
        virtual = evenly_spaced_spikes(s_post.shape[1], torch.where(silent, k, torch.zeros_like(k)), spec.t_ref)
        s_post = s_post + virtual.to(s_post.dtype)
        counts = s_post.sum(1)
    lam_u, lam_p = spsp_adjoint(s_post, spec.alpha, spec.beta, spec.t_ref)
    e_rec = dense_spsp(lam_u, tr.s_out) if tr.rec_weight is not None else None
    tpsp = None
    if opts.needs_tpsp:
        a_total = tr.a_ff if tr.rec_weight is None else tr.a_ff + hop_delay(tr.s_out @ tr.rec_weight.t())
        tpsp = (lam_u * a_total).sum(1)
    stats = PostStats(counts, tr.s_in.sum(1), tr.s_out.sum(1) if tr.rec_weight is not None else None,
                      spsp_per_pre_spike(lam_u), e_rec, tpsp)
    c_w, c_back = opts.coefficients(tr, g, stats)

    weight = layer.weight if isinstance(layer.weight, nn.Parameter) and layer.weight.requires_grad else None
    gw, gs = hop_products(tr, c_w.unsqueeze(1) * lam_u if weight is not None else None,
                          c_back.unsqueeze(1) * lam_u if need_input else None)
    if weight is not None:
        accumulate(weight, gw)
    result = None
    if need_input:
        o_in = tr.s_in.sum(1)
        per_spike = (gs * tr.s_in).sum(1) / o_in.clamp(min=1)
        uniform = gs.sum(1) / gs.shape[1]  # one spike at a uniformly random step
        result = uniform if opts.pre_derivative == "uniform" else torch.where(o_in > 0, per_spike, uniform)
    bias = getattr(layer, "bias", None)
    if isinstance(bias, nn.Parameter) and bias.requires_grad:
        gb = (c_w * lam_p.sum(1)).sum(0)
        accumulate(bias, gb.reshape(bias.numel(), -1).sum(1).reshape(bias.shape))
    if tr.rec_weight is not None and opts.trains_recurrent and layer.rec_weight.requires_grad:
        n = lam_u.shape[2]
        gv = ((c_w.unsqueeze(1) * lam_u)[:, 1:].reshape(-1, n).t() @ tr.s_out[:, :-1].reshape(-1, n))
        gv = gv * layer.rec_weight_scale
        if layer.rec_mask is not None:
            gv = gv * layer.rec_mask
        accumulate(layer.rec_weight, gv)
    return result


def hop_products(tr: LayerTrace, g_w: torch.Tensor | None, g_in: torch.Tensor | None):
    """Back through the hop ``a = delay(current(s_in, W))`` with output gradients ``g_w`` (for W) and
    ``g_in`` (for s_in): ``sum_{b,t} g_w[b,t,i] da[b,t,i]/dW`` and ``sum_i g_in[b,t,i] da[b,t,i]/ds_in[b,g,j]``.
    Dense layers: two GEMMs over (batch x time); conv and pool layers: their convolution's autograd."""
    layer, s_in = tr.layer, tr.s_in
    if isinstance(layer, LIFDense):
        n_in = s_in.shape[2]
        gw = gs = None
        if g_w is not None:
            n = g_w.shape[2]
            gw = g_w[:, 1:].reshape(-1, n).t() @ s_in[:, :-1].reshape(-1, n_in)
        if g_in is not None:
            gs = s_in.new_zeros(s_in.shape)
            gs[:, :-1] = g_in[:, 1:] @ layer.weight.detach()
        return gw, gs
    w_leaf = layer._hop_weight().detach().requires_grad_(g_w is not None)
    x = s_in.detach().requires_grad_(g_in is not None)
    with torch.enable_grad():
        a = hop_delay(layer_current(layer, x, w_leaf))
        gw = torch.autograd.grad(a, w_leaf, g_w, retain_graph=g_in is not None)[0] if g_w is not None else None
        gs = torch.autograd.grad(a, x, g_in)[0] if g_in is not None else None
    return gw, gs
