"""The CPU buffer pool of the LIF kernels: a buffer is handed out again only when nothing can reach it."""
import pytest
import torch

from snn2hw.nn import buffer_pool, kernels
from snn2hw.nn import functional as F
from snn2hw.nn.recurrent import recurrent_cuba_lif_sequence

needs_numba = pytest.mark.skipif(not kernels.available(), reason="numba not installed (compiled kernels unavailable)")


@pytest.fixture
def small_pool(monkeypatch):
    """Pool every float tensor (the threshold is 4 MiB otherwise), starting from an empty pool."""
    monkeypatch.setattr(buffer_pool, "MIN_BYTES", 1)
    monkeypatch.delenv("SNN2HW_BUFFER_POOL_MB", raising=False)
    buffer_pool.clear()
    yield
    buffer_pool.clear()


def test_a_buffer_is_reused_only_after_every_view_is_gone(small_pool):
    t = buffer_pool.empty((3, 5, 7), torch.float32)
    ptr = t.data_ptr()
    view = t[1:, 2]
    del t
    other = buffer_pool.empty((3, 5, 7), torch.float32)
    assert other.data_ptr() != ptr  # the view still holds the first buffer
    assert buffer_pool.pooled_bytes() == (2 * 3 * 5 * 7 * 4, 0)
    del view
    again = buffer_pool.empty((5, 21), torch.float32)  # same size, any shape
    assert again.data_ptr() == ptr and again.shape == (5, 21) and again.is_contiguous()
    assert buffer_pool.empty((3, 5, 7), torch.float64).data_ptr() not in (ptr, other.data_ptr())  # dtype differs
    assert buffer_pool.empty((4,), torch.int64).dtype == torch.int64  # not pooled, still served


def test_a_miss_releases_free_buffers_and_the_limit_falls_back(small_pool, monkeypatch):
    monkeypatch.setenv("SNN2HW_BUFFER_POOL_MB", str(1000 * 4 / 2**20))  # room for 1000 float32
    a = buffer_pool.empty((600,), torch.float32)
    b = buffer_pool.empty((600,), torch.float32)  # does not fit beside a busy buffer: plain torch.empty
    assert buffer_pool.pooled_bytes() == (2400, 0)
    del a
    c = buffer_pool.empty((700,), torch.float32)  # a miss: releases the free 600
    assert buffer_pool.pooled_bytes() == (2800, 0)
    e = buffer_pool.empty((50,), torch.float32)
    del e
    assert buffer_pool.pooled_bytes() == (2800, 200)
    f = buffer_pool.empty((51,), torch.float32)  # another miss: the free 50 goes
    assert buffer_pool.pooled_bytes() == (2800 + 204, 0) and f.numel() == 51
    monkeypatch.setenv("SNN2HW_BUFFER_POOL_MB", "0")  # off
    d = buffer_pool.empty((10,), torch.float32)
    assert buffer_pool.pooled_bytes() == (3004, 0) and b.numel() == 600 and d.numel() == 10 and c.numel() == 700
    monkeypatch.setenv("SNN2HW_BUFFER_POOL_MB", "lots")
    with pytest.raises(ValueError, match="SNN2HW_BUFFER_POOL_MB"):
        buffer_pool.empty((10,), torch.float32)


def _run(op, a, retain):
    """Spikes of two calls on the same shapes, the first call's spikes kept, and gradients of two backwards."""
    s1 = op(a * 1.5)
    kept = s1.clone()
    s2 = op(a * 2.0)  # same shapes: may take pooled buffers, never s1's
    assert torch.equal(s1, kept)
    loss = (s1 * torch.linspace(0.5, 1.5, s1.shape[-1])).sum() + s2.sum()
    loss.backward(retain_graph=retain)
    grads = [a.grad.clone()]
    if retain:  # the saved membranes must be intact for a second backward
        a.grad = None
        loss.backward()
        grads.append(a.grad.clone())
    a.grad = None
    return [s1, s2], grads


@needs_numba
@pytest.mark.parametrize("layer", ["dense", "recurrent"])
def test_lif_operators_with_the_pool_equal_them_without(small_pool, monkeypatch, layer):
    g = torch.Generator().manual_seed(0)
    batch, steps, n = 3, 41, 37
    a = (torch.randn(batch, steps, n, generator=g) * 0.8 + 0.3).requires_grad_(True)
    v = (torch.randn(n, n, generator=g) * 0.2).requires_grad_(True)
    if layer == "dense":
        def op(x):
            return F.cuba_lif_sequence(x, 0.3, 0.9, 1.0, None, "fast_sigmoid", delay=1)
    else:
        def op(x):
            return recurrent_cuba_lif_sequence(x, v, 0.3, 0.9, 1.0)
    pooled = [_run(op, a, retain) for retain in (False, True)]
    assert buffer_pool.pooled_bytes()[1] > 0  # the pool was used
    monkeypatch.setenv("SNN2HW_BUFFER_POOL_MB", "0")
    plain = [_run(op, a, retain) for retain in (False, True)]
    for (s_p, g_p), (s_q, g_q) in zip(pooled, plain):
        assert all(torch.equal(x, y) for x, y in zip(s_p, s_q))
        assert all(torch.equal(x, y) for x, y in zip(g_p, g_q))
    assert torch.equal(pooled[1][1][0], pooled[1][1][1])  # retain_graph: both backwards equal
