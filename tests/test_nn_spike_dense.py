"""The event-driven spike-input product (``snn2hw.nn.functional.spike_linear``) against ``x @ W^T``."""
import numpy as np
import pytest
import torch

from snn2hw.nn import functional as F
from snn2hw.nn import kernels, spike_dense
from snn2hw.nn.layers import LIFDense, RecurrentLIFDense

needs_numba = pytest.mark.skipif(not kernels.available(), reason="numba not installed (compiled kernels unavailable)")


def _took_event_path(y: torch.Tensor) -> bool:
    """Whether the autograd graph of y (at most a reshape above it) holds the event-driven node."""
    fn, seen = y.grad_fn, 0
    while fn is not None and seen < 3:
        if "SpikeLinear" in type(fn).__name__:
            return True
        fn = fn.next_functions[0][0] if fn.next_functions else None
        seen += 1
    return False


def _sparse(shape, density, dtype, generator, binary=False):
    mask = torch.rand(shape, generator=generator) < density
    values = torch.ones(shape, dtype=dtype) if binary else torch.randn(shape, generator=generator, dtype=dtype)
    return values * mask


def _check(x, w, mode, dtype, x_grad):
    g = torch.Generator().manual_seed(1)
    xa = x.clone().requires_grad_(x_grad)
    xb = x.clone().requires_grad_(x_grad)
    wa = w.clone().requires_grad_(True)
    wb = w.clone().requires_grad_(True)
    ya = F.spike_linear(xa, wa, mode=mode)
    yb = xb @ wb.t()
    grad = torch.randn(yb.shape, generator=g, dtype=dtype)
    ya.backward(grad)
    yb.backward(grad)
    rtol = 2e-5 if dtype == torch.float32 else 1e-12
    for a, b in ((ya, yb), (wa.grad, wb.grad)) + (((xa.grad, xb.grad),) if x_grad else ()):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert (a.detach() - b.detach()).abs().max() <= rtol * b.detach().abs().max().clamp_min(1.0)
    if not x_grad:
        assert xa.grad is None
    return ya


@needs_numba
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("lead,k,m,density", [
    ((3, 41), 70, 9, 0.1),      # narrow output: 8-column blocks, m not a multiple of them
    ((2, 5, 7), 300, 130, 0.2),  # three leading dimensions; m not a multiple of the 64/32-column blocks
    ((40,), 1100, 70, 0.05),     # k above one input chunk (1024 float32 / 1024 float64): chunked tiles
    ((16, 30), 64, 128, 0.02),  # many rows without any nonzero
])
@pytest.mark.parametrize("x_grad", [False, True])
def test_event_path_equals_dense_product_and_its_gradients(dtype, lead, k, m, density, x_grad):
    g = torch.Generator().manual_seed(0)
    x = _sparse((*lead, k), density, dtype, g)
    w = torch.randn(m, k, generator=g, dtype=dtype)
    y = _check(x, w, "sparse", dtype, x_grad)
    assert _took_event_path(y)


@needs_numba
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_auto_switches_to_the_dense_gemm_above_the_measured_density(dtype):
    g = torch.Generator().manual_seed(0)
    rows, k, m = 200, 256, 256
    limit = spike_dense.density_limit(k, m)
    w = torch.randn(m, k, generator=g, dtype=dtype)
    at = int(limit * rows * k)  # exactly at the limit: event-driven; one nonzero more: dense
    for nonzeros, event in ((at, True), (at + 1, False), (rows * k, False)):
        x = torch.zeros(rows * k, dtype=dtype)
        x[torch.randperm(rows * k, generator=g)[:nonzeros]] = 1.0
        x = x.reshape(rows, k)
        y = _check(x, w, "auto", dtype, x_grad=False)
        assert _took_event_path(y) is event, (nonzeros, limit)
    # a dense Gaussian input is recognised from a row sample and goes straight to the GEMM
    y = _check(torch.randn(rows, k, generator=g, dtype=dtype), w, "auto", dtype, x_grad=True)
    assert not _took_event_path(y)
    # forced dense
    assert not _took_event_path(_check(_sparse((rows, k), 0.05, dtype, g), w, "dense", dtype, x_grad=False))


def test_density_limit_is_tabulated_by_layer_size():
    limits = [spike_dense.density_limit(n, n) for n in (16, 128, 256, 1024, 4096)]
    assert all(0 < a <= b < 1 for a, b in zip(limits, limits[1:]))
    assert spike_dense.density_limit(4096, 10) == spike_dense.density_limit(10, 10)


def test_without_numba_or_off_cpu_types_it_is_the_dense_product(monkeypatch):
    g = torch.Generator().manual_seed(0)
    x = _sparse((20, 33), 0.1, torch.float32, g, binary=True)
    w = torch.randn(12, 33, generator=g, requires_grad=True)
    monkeypatch.setenv("SNN2HW_NO_NUMBA", "1")
    y = F.spike_linear(x, w, mode="sparse")
    assert not _took_event_path(y) and torch.equal(y, x @ w.t())
    monkeypatch.delenv("SNN2HW_NO_NUMBA")
    xb, wb = x.to(torch.bfloat16), w.detach().to(torch.bfloat16)
    assert torch.equal(F.spike_linear(xb, wb, mode="sparse"), xb @ wb.t())


def test_bad_arguments_raise_clear_errors():
    w = torch.zeros(4, 5)
    with pytest.raises(ValueError, match="spike_linear"):
        F.spike_linear(torch.zeros(3, 6), w)
    with pytest.raises(ValueError, match="mode"):
        F.spike_linear(torch.zeros(3, 5), w, mode="csr")


@needs_numba
@pytest.mark.parametrize("layer_cls", [LIFDense, RecurrentLIFDense])
def test_layers_use_the_event_path_and_match_the_dense_product(monkeypatch, layer_cls):
    torch.manual_seed(0)
    layer = layer_cls(48, 40, weight_gain=3.0).double()
    x = (torch.rand(4, 25, 48) < 0.05).double()
    calls = []
    original = spike_dense._SpikeLinear.apply
    monkeypatch.setattr(spike_dense._SpikeLinear, "apply", lambda *a: calls.append(1) or original(*a))
    out_event = layer(x)
    out_event.sum().backward()
    grad_event = layer.weight.grad.clone()
    assert calls, "the layer did not take the event-driven product"
    layer.weight.grad = None
    monkeypatch.setattr(F, "spike_linear", lambda x, w, mode="auto": x @ w.t())
    out_dense = layer(x)
    out_dense.sum().backward()
    assert 0 < float(out_dense.detach().mean()) < 1
    assert torch.equal(out_event, out_dense)  # float64 rounding differences never flip a spike here
    assert torch.allclose(grad_event, layer.weight.grad, rtol=1e-10, atol=1e-12)


@needs_numba
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_spike_inputs_skip_the_values_with_bit_identical_sums(dtype):
    """A 0/1 input keeps no values and multiplies nothing; its sums are bit for bit those of the kernels
    that read values (1 * w is w exactly), forward and weight gradient, across input chunks and row blocks,
    and the weight gradient's sums run in ascending row order, as a plain loop adds them."""
    import numpy as np

    g = torch.Generator().manual_seed(0)
    rows, k, m = spike_dense._ROW_BLOCK + 37, 1100, 70  # two row blocks, two input chunks, a partial column block
    x2 = _sparse((rows, k), 0.1, dtype, g, binary=True)
    x2[5] = 0.0  # a row without nonzeros
    x2[:, 3] = 0.0  # a column without nonzeros
    w = torch.randn(m, k, generator=g, dtype=dtype).numpy()
    grad = torch.randn(rows, m, generator=g, dtype=dtype).numpy()
    cb, kc = spike_dense._tile(k, m, x2.element_size())
    chunk_ptr, idx, val = spike_dense._csr(x2, 1.0, kc)
    assert val.size == 0 and idx.dtype == np.uint16 and kc < k
    packed = np.empty((-(-m // cb), k, cb), dtype=w.dtype)
    spike_dense._pack_transposed(w, cb, packed)
    results = []
    for values in (val, np.ones(idx.size, dtype=w.dtype)):
        out, grad_w = np.empty((rows, m), dtype=w.dtype), np.empty((m, k), dtype=w.dtype)
        spike_dense._product_kernels(cb)[0](chunk_ptr, idx, values, packed, kc, 2, out)
        spike_dense._weight_grad((chunk_ptr, idx, values), grad, (cb, kc), grad_w)
        results.append((out, grad_w))
    (out_b, gw_b), (out_v, gw_v) = results
    assert np.array_equal(out_b, out_v) and np.array_equal(gw_b, gw_v)
    x = x2.numpy()
    expect_gw = np.zeros((m, k), dtype=w.dtype)
    for r in range(rows):  # ascending r, one rounding per addition
        nz = np.flatnonzero(x[r])
        expect_gw[:, nz] += grad[r][:, None]
    assert np.array_equal(gw_b, expect_gw)
    assert np.allclose(out_b, x @ w.T, rtol=1e-5, atol=1e-4)


@needs_numba
def test_packed_weights_are_reused_in_a_scope_and_never_stale(monkeypatch):
    """Inside ``reuse_packed_weights`` a weight's W^T is packed once for calls with the same unchanged weight;
    an in-place update, another weight or a fresh copy gets its own packing, and results are bit for bit those
    of calls without the scope."""
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(70, 300, generator=gen)
    xs = [_sparse((40, 300), 0.05, torch.float32, gen, binary=True) for _ in range(3)]
    packs = []
    real = spike_dense._pack_transposed
    monkeypatch.setattr(spike_dense, "_pack_transposed", lambda *a: (packs.append(1), real(*a))[1])
    plain = [F.spike_linear(x, w, mode="sparse") for x in xs]
    assert len(packs) == 3
    packs.clear()
    with spike_dense.reuse_packed_weights():
        scoped = [F.spike_linear(x, w.detach(), mode="sparse") for x in xs]
        assert len(packs) == 1
        w.mul_(0.5)  # in place: the version counter changes, so the old packing must not be used
        halved = F.spike_linear(xs[0], w, mode="sparse")
        assert len(packs) == 2
        F.spike_linear(xs[0], w.clone(), mode="sparse")  # another tensor with equal values: packed again
        assert len(packs) == 3
    assert all(torch.equal(a, b) for a, b in zip(plain, scoped))
    assert torch.equal(halved, F.spike_linear(xs[0], w, mode="sparse"))
    assert not spike_dense._PACK_SCOPES


@needs_numba
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bool_train_equals_its_float_copy_bit_for_bit(dtype):
    """A bool spike train (the spike-train rules keep theirs as bytes) gives the product of its 0/1 float copy bit for
    bit, on the event-driven path (its non-zeros found in the bytes), the dense one and the automatic choice, and
    the same CSR for ``csr_out``."""
    g = torch.Generator().manual_seed(3)
    s = torch.rand(5, 40, 300, generator=g) < 0.06
    w = torch.randn(70, 300, generator=g, dtype=dtype)
    for mode in ("sparse", "dense", "auto"):
        found = ([], [])
        outs = [spike_dense.spike_linear(x, w, mode=mode, csr_out=f) for x, f in ((s, found[0]), (s.to(dtype), found[1]))]
        assert outs[0].dtype == dtype and outs[0].shape == (5, 40, 70)
        assert torch.equal(outs[0], outs[1]) and bool(outs[0].abs().sum() > 0), mode
        assert len(found[0]) == len(found[1]) == (mode != "dense")
        for a, b in zip(found[0][0][:2] if found[0] else (), found[1][0][:2] if found[1] else ()):
            assert np.array_equal(a, b)
