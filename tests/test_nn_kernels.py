"""The compiled LIF training kernels against the tensor loop, and the exact float32 conv of the simulator."""
import numpy as np
import pytest
import torch

from snn2hw.hw import loihi2 as hw
from snn2hw.nn import functional as F
from snn2hw.nn import kernels

needs_numba = pytest.mark.skipif(not kernels.available(), reason="numba not installed (compiled kernels unavailable)")


def _grads(monkeypatch, numba_on: bool, dtype, **kw):
    if numba_on:
        monkeypatch.delenv("SNN2HW_NO_NUMBA", raising=False)
    else:
        monkeypatch.setenv("SNN2HW_NO_NUMBA", "1")
    g = torch.Generator().manual_seed(0)
    batch, steps, n = 3, 57, 70  # 70: blocks of neurons are not a multiple of the vector width
    a = (torch.randn(batch, steps, n, generator=g, dtype=dtype) * 0.8 + 0.2).requires_grad_(True)
    params = {
        "alpha": (torch.rand(n, generator=g, dtype=dtype) * 0.9).requires_grad_(True),
        "beta": (torch.rand(n, generator=g, dtype=dtype) * 0.8 + 0.15).requires_grad_(True),
        "v_th": torch.tensor(0.9, dtype=dtype).requires_grad_(True),
        "bias": (torch.randn(n, generator=g, dtype=dtype) * 0.1).requires_grad_(True),
    }
    outs = F.cuba_lif_sequence(a, *params.values(), return_state=True, **kw)
    w = [torch.randn(o.shape, generator=g, dtype=dtype) for o in outs]
    sum((o * wi).sum() for o, wi in zip(outs, w)).backward()
    return outs, {"a": a.grad, **{k: v.grad for k, v in params.items()}}


@needs_numba
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("detach_reset,surrogate", [(True, "arctan"), (False, "arctan"), (False, "fast_sigmoid")])
def test_kernel_forward_bit_identical_and_gradients_equal_tensor_loop(monkeypatch, dtype, detach_reset, surrogate):
    # fast_sigmoid: its derivative is computed inside the kernel; other surrogates by their tensor op
    assert kernels.usable(torch.zeros(1, dtype=dtype))
    fast_out, fast = _grads(monkeypatch, True, dtype, detach_reset=detach_reset, surrogate=surrogate)
    ref_out, ref = _grads(monkeypatch, False, dtype, detach_reset=detach_reset, surrogate=surrogate)
    assert 0 < float(fast_out[0].detach().mean()) < 1
    for x, y in zip(fast_out, ref_out):
        assert torch.equal(x, y)
    rtol = 1e-4 if dtype == torch.float32 else 1e-10
    for k in ref:
        scale = ref[k].abs().max().clamp_min(1e-12)
        assert ((fast[k] - ref[k]).abs().max() / scale) <= rtol, k


@needs_numba
def test_kernel_handles_alpha_zero_no_bias_and_broadcast_gradients(monkeypatch):
    # s.sum() gives an expanded (stride-0) gradient; alpha = 0 and bias = None take the kernels' shortcuts
    a = torch.randn(2, 30, 65, dtype=torch.float64) * 1.2
    res = []
    for on in (True, False):
        monkeypatch.setenv("SNN2HW_NO_NUMBA", "0" if on else "1")
        x = a.clone().requires_grad_(True)
        beta = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
        s = F.cuba_lif_sequence(x, 0.0, beta, 1.0, None)
        s.sum().backward()
        res.append((s, x.grad, beta.grad))
    assert torch.equal(res[0][0], res[1][0])
    assert torch.allclose(res[0][1], res[1][1], rtol=1e-12, atol=0)
    assert torch.allclose(res[0][2], res[1][2], rtol=1e-10, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_tensors_use_the_tensor_loop_and_agree_with_cpu():
    a = torch.randn(2, 20, 33, dtype=torch.float64)
    assert not kernels.usable(a.cuda())
    cpu = F.cuba_lif_sequence(a, 0.3, 0.8, 0.7, 0.05)
    gpu = F.cuba_lif_sequence(a.cuda(), 0.3, 0.8, 0.7, 0.05).cpu()
    assert torch.equal(cpu, gpu)


def test_without_numba_the_operator_falls_back(monkeypatch):
    monkeypatch.setenv("SNN2HW_NO_NUMBA", "1")
    assert not kernels.available() and not kernels.usable(torch.zeros(1))
    a = torch.randn(2, 10, 5)
    assert torch.equal(F.cuba_lif_sequence(a, 0.2, 0.9, 0.5), F.cuba_lif_reference(a, 0.2, 0.9, 0.5))


# --- exact float32 convolution ---------------------------------------------------------------------------
def _conv_int64(s, w, stride, padding, groups):
    """Reference correlation in int64 (the im2col path, forced by an enormous max_input bound)."""
    out = hw.conv_accumulate(s, w, stride, padding, (1, 1), groups, max_input=2**52)
    assert out.dtype == torch.int64
    return out


@pytest.mark.parametrize("groups", [1, 4])
def test_float32_conv_is_exact_up_to_its_bound(groups):
    rng = np.random.default_rng(0)
    c, o, k = 8, 8, 3
    fan = (c // groups) * k * k
    # odd weights, one output channel's |w| summing to exactly 2**24 - 1 - 1: every output is an
    # integer near 2**24 that float32 holds only when every product and partial sum was exact
    w = rng.integers(1, 2**16, size=(o, c // groups, k, k)) | 1
    w = w * rng.choice([-1, 1], size=w.shape)
    w[0] = np.abs(w[0])
    w[0, 0, 0, 0] += (2**24 - 2) - int(np.abs(w[0]).sum())
    assert int(np.abs(w).reshape(o, -1).sum(1).max()) < 2**24 and fan == w[0].size
    w = torch.as_tensor(w, dtype=torch.int64)
    s = torch.as_tensor(rng.random((5, c, 9, 9)) < 0.6)
    s[:, :, 3:6, 3:6] = True  # one full window: output channel 0 hits its bound there
    fast = hw.conv_accumulate(s, w, (1, 1), (1, 1), (1, 1), groups, max_input=1)
    assert fast.dtype == torch.float32
    ref = _conv_int64(s, w, (1, 1), (1, 1), groups)
    assert int(ref.abs().max()) == 2**24 - 2
    assert torch.equal(fast.to(torch.int64), ref)
    assert torch.equal(hw.conv_accumulate_exact(s, w, (2, 2), (1, 1), (1, 1), groups, 1),
                       _conv_int64(s, w, (2, 2), (1, 1), groups))


def test_conv_beyond_the_float32_bound_uses_float64():
    w = torch.full((2, 1, 3, 3), 2**22, dtype=torch.int64)  # 9 * 2**22 > 2**24
    s = torch.ones(1, 1, 5, 5, dtype=torch.bool)
    out = hw.conv_accumulate(s, w, (1, 1), (0, 0), (1, 1), 1, 1)
    assert out.dtype == torch.float64
    assert torch.equal(out.to(torch.int64), _conv_int64(s, w, (1, 1), (0, 0), 1))


@pytest.mark.parametrize("kernel,stride,padding", [((2, 2), (2, 2), (0, 0)), ((3, 3), (2, 2), (1, 1)), ((3, 2), (1, 2), (1, 0))])
def test_sum_pooling_window_sums_equal_the_integer_conv(kernel, stride, padding):
    from snn2hw.ir import sum_pool2d

    p = sum_pool2d("pool", "a", "b", (3, 11, 10), kernel, stride, padding, weight=7)
    w = torch.as_tensor(np.asarray(p.weight, dtype=np.int64))
    w[1] *= -3  # per-channel values may differ
    s = torch.as_tensor(np.random.default_rng(2).integers(0, 5, (4, 3, 11, 10)))
    fast = hw.conv_accumulate(s, w, stride, padding, (1, 1), 3, max_input=4)
    assert fast.dtype == torch.float32
    assert torch.equal(fast.to(torch.int64), _conv_int64(s, w, stride, padding, 3))
    w[2, 0, 0, 0] += 1  # no longer one value per channel: the general conv, still exact
    assert torch.equal(hw.conv_accumulate_exact(s, w, stride, padding, (1, 1), 3, 4), _conv_int64(s, w, stride, padding, 3))


@needs_numba
@pytest.mark.parametrize("surrogate", ["fast_sigmoid", "arctan"])
def test_delay_in_the_kernel_equals_a_shifted_input(monkeypatch, surrogate):
    # the layers' hop delay is read in place by the kernel; it must equal the shifted copy exactly
    from snn2hw.nn.layers import hop_delay

    g = torch.Generator().manual_seed(3)
    a = torch.randn(3, 33, 70, generator=g) * 0.9 + 0.2
    beta = (torch.rand(70, generator=g) * 0.8 + 0.15)
    w = [torch.randn(3, 33, 70, generator=g) for _ in range(3)]
    res = []
    for delay in (2, 0):
        x = a.clone().requires_grad_(True)
        b = beta.clone().requires_grad_(True)
        inp = x if delay else hop_delay(x, 2)
        outs = F.cuba_lif_sequence(inp, 0.3, b, 0.9, 0.05, surrogate, return_state=True, delay=delay)
        sum((o * wi).sum() for o, wi in zip(outs, w)).backward()
        res.append((outs, x.grad, b.grad))
    for o, r in zip(res[0][0], res[1][0]):
        assert torch.equal(o, r)
    assert torch.equal(res[0][1][:, -2:], torch.zeros(3, 2, 70))
    assert torch.allclose(res[0][1], res[1][1], rtol=1e-5, atol=1e-6)
    assert torch.allclose(res[0][2], res[1][2], rtol=1e-4)
    with pytest.raises(ValueError, match="delay"):
        F.cuba_lif_sequence(a, 0.3, beta, 0.9, delay=-1)


# --- the surrogate derivative inside the backward kernels, and expanded gradients ---------------------------
from snn2hw.nn import surrogate as S  # noqa: E402

_BUILT_IN = [S.FastSigmoid, S.Sigmoid, S.Arctan, S.Triangle, S.Exponential, S.Gaussian, S.Boxcar]
_WITH_EXP = (S.Sigmoid, S.Exponential, S.Gaussian)  # numba's exp and torch's may differ in the last bit


def _outside_kernels(cls):
    """The same surrogate as a subclass: not an exact built-in type, so the kernels fall back to its tensor op."""
    return type("Custom" + cls.__name__, (cls,), {})(scale=cls().scale * 1.3)


@needs_numba
@pytest.mark.parametrize("cls", _BUILT_IN, ids=lambda c: c.name)
def test_builtin_surrogates_in_the_kernel_equal_their_tensor_op(monkeypatch, cls):
    # fused (derivative inside the kernel) against the fallback (derivative by the surrogate's own tensor op
    # before the same kernel): the kernel repeats the tensor ops in order, so equal to the bit without exp
    fallback = _outside_kernels(cls)
    fused = cls(scale=fallback.scale)
    assert kernels.fused_surrogate(fused, np.float64) is not None
    assert kernels.fused_surrogate(fallback, np.float64) is None
    monkeypatch.delenv("SNN2HW_NO_NUMBA", raising=False)
    g = torch.Generator().manual_seed(5)
    a = torch.randn(2, 23, 70, generator=g, dtype=torch.float64) * 0.8 + 0.3
    beta = torch.rand(70, generator=g, dtype=torch.float64) * 0.8 + 0.15
    w = torch.randn(2, 23, 70, generator=g, dtype=torch.float64)
    res = []
    # every parameter's gradient, alpha != 0, no detach, a loss on the spikes: the options (so the compiled
    # kernels) of test_nn_functional's gradient cases, which check the same kernels against unrolled autograd
    for sur in (fused, fallback):
        x, b = a.clone().requires_grad_(True), beta.clone().requires_grad_(True)
        al, th, bi = (torch.tensor(c, dtype=torch.float64, requires_grad=True) for c in (0.4, 0.9, 0.05))
        s = F.cuba_lif_sequence(x, al, b, th, bi, sur, detach_reset=False)
        (s * w).sum().backward()
        res.append((s, [x.grad, al.grad, b.grad, th.grad, bi.grad]))
    assert torch.equal(res[0][0], res[1][0]) and 0 < float(res[0][0].detach().mean()) < 1
    assert float(res[0][1][0].abs().max()) > 0
    for gf, gr in zip(res[0][1], res[1][1]):
        if cls in _WITH_EXP:
            assert torch.allclose(gf, gr, rtol=1e-12, atol=1e-300)
        else:
            assert torch.equal(gf, gr)


@needs_numba
@pytest.mark.parametrize("cls", [S.Triangle, S.Gaussian], ids=lambda c: c.name)
def test_recurrent_kernel_fuses_builtin_surrogates_and_falls_back_for_others(cls):
    from snn2hw.nn import recurrent as R

    fallback = _outside_kernels(cls)
    g = torch.Generator().manual_seed(2)
    a = torch.randn(2, 25, 9, generator=g, dtype=torch.float64) * 0.7 + 0.2
    v = torch.randn(9, 9, generator=g, dtype=torch.float64) * 0.4
    res = []
    for sur in (cls(scale=fallback.scale), fallback):
        x, vv = a.clone().requires_grad_(True), v.clone().requires_grad_(True)
        s = R.recurrent_cuba_lif_sequence(x, vv, 0.3, 0.85, 0.8, None, surrogate=sur)
        s.sum(1).pow(2).sum().backward()  # an expanded-over-time gradient into the kernel
        res.append((s, x.grad, vv.grad))
    assert torch.equal(res[0][0], res[1][0])
    for gf, gr in zip(res[0][1:], res[1][1:]):
        assert torch.allclose(gf, gr, rtol=1e-12, atol=1e-300)


@needs_numba
def test_expanded_gradients_are_read_in_place_and_equal_copied_ones(monkeypatch):
    # a loss on sums over time or batch gives stride-0 gradients; the kernel reads them without copying
    monkeypatch.delenv("SNN2HW_NO_NUMBA", raising=False)
    g = torch.Generator().manual_seed(4)
    a = torch.randn(3, 31, 66, generator=g) * 0.9 + 0.2
    w_t = torch.randn(3, 1, 66, generator=g)  # one weight per (sample, neuron): expanded over time
    w_b = torch.randn(1, 31, 66, generator=g)  # one per (step, neuron): expanded over the batch
    res = []
    for copy in (False, True):
        x = a.clone().requires_grad_(True)
        beta = torch.tensor(0.85, requires_grad=True)
        s, u, v = F.cuba_lif_sequence(x, 0.4, beta, 0.8, 0.02, return_state=True, delay=1)
        if copy:  # the same gradients, materialised
            s, u, v = (o * torch.ones_like(o) for o in (s, u, v))
        loss = (s.sum(1, keepdim=True) * w_t).sum() + (u.sum(0, keepdim=True) * w_b).sum() + v.sum()
        loss.backward()
        res.append((x.grad, beta.grad))
    assert float(res[0][0].abs().max()) > 0
    assert torch.equal(res[0][0], res[1][0]) and torch.equal(res[0][1], res[1][1])
