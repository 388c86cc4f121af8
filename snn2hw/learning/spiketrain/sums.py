"""Adding a layer's gradients up: the per-sample coefficient sum ``sum_b c[b, i] e[b, i, j]`` of S-PSP matrices, and
the hand-over of a finished gradient to its parameter."""
from __future__ import annotations

import torch

from snn2hw.learning import spsp_kernels

# ``add_coefficient_sum``: S-PSP matrices of at most this many elements are summed by one batched product, larger
# ones sample by sample, by one compiled pass where it equals the loop of ``addcmul_`` bit for bit
# (FUSED_COEFFICIENT_SUM: a switch for an interleaved A/B, ``diag_spiketrain_speed.py --variant
# snn2hw.learning.spiketrain.sums:FUSED_COEFFICIENT_SUM=False``; it changes no result).
COEFFICIENT_SUM_BMM_MAX = 1 << 16
FUSED_COEFFICIENT_SUM = True


def add_coefficient_sum(out: torch.Tensor, c: torch.Tensor, e: torch.Tensor) -> None:
    """``out[i, j] += sum_b c[b, i] e[b, i, j]``: one pass over each sample's e for large ones (a batched product
    would copy e into (i, b, j) order first), one batched product for small ones (a per-sample op costs more
    than its arithmetic there). The per-sample passes are one compiled pass on the CPU where it gives the same
    values (``spsp_kernels.coefficient_sum``; ``FUSED_COEFFICIENT_SUM``)."""
    if e.numel() <= COEFFICIENT_SUM_BMM_MAX:
        out += torch.bmm(c.t().unsqueeze(1), e.transpose(0, 1)).squeeze(1)
        return
    if FUSED_COEFFICIENT_SUM and spsp_kernels.coefficient_sum(out, c, e):
        return
    for b in range(e.shape[0]):
        out.addcmul_(c[b].unsqueeze(1), e[b])


def accumulate(param: torch.Tensor, grad: torch.Tensor) -> None:
    """Add ``grad`` to ``param.grad``; ``grad`` is handed over (every caller's is a fresh tensor it drops), so a
    first gradient is kept as it is rather than copied."""
    grad = grad.to(param.dtype).reshape(param.shape)
    if param.grad is None:
        param.grad = grad
    else:
        param.grad.add_(grad)
