"""The fast CUBA-LIF sequence operators against unrolled-autograd references, and the surrogates."""
import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from snn2hw.nn import functional as F
from snn2hw.nn import surrogate as S

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
BATCH, STEPS, N = 3, 40, 6


def make_params(per_neuron: bool, dtype=torch.float64, seed: int = 0, bias: bool = True):
    g = torch.Generator().manual_seed(seed)
    shape = (N,) if per_neuron else ()
    p = {
        "alpha": torch.rand(shape, generator=g, dtype=dtype) * 0.9,
        "beta": torch.rand(shape, generator=g, dtype=dtype) * 0.8 + 0.15,
        "v_th": torch.rand(shape, generator=g, dtype=dtype) * 0.5 + 0.6,
        "bias": torch.randn(shape, generator=g, dtype=dtype) * 0.1 if bias else None,
    }
    return p


def make_input(dtype=torch.float64, seed: int = 1, steps: int = STEPS, batch: int = BATCH, n: int = N, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, steps, n, generator=g, dtype=dtype) * 0.6 + 0.1).to(device)


def run_with_grads(fn, a, params, cotangent_seed=7, **kwargs):
    """Outputs and the gradients of a random linear functional of all outputs."""
    a = a.detach().clone().requires_grad_(True)
    leaves = {k: (v.detach().clone().requires_grad_(True) if isinstance(v, torch.Tensor) else v) for k, v in params.items()}
    out = fn(a, leaves["alpha"], leaves["beta"], leaves["v_th"], leaves["bias"], **kwargs)
    outs = out if isinstance(out, tuple) else (out,)
    g = torch.Generator().manual_seed(cotangent_seed)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype).to(o.device)).sum() for o in outs)
    loss.backward()
    grads = {"a": a.grad}
    grads.update({k: v.grad for k, v in leaves.items() if isinstance(v, torch.Tensor)})
    return outs, grads


def assert_close_rel(x, y, rtol=1e-6, what=""):
    assert x is not None and y is not None, what
    assert x.shape == y.shape, (what, x.shape, y.shape)
    scale = y.abs().max().clamp_min(1e-12)
    err = (x - y).abs().max() / scale
    assert err <= rtol, f"{what}: relative error {err.item():.3g}"


# --- forward ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("per_neuron", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_forward_is_bit_identical_to_reference(device, dtype, per_neuron, bias):
    a = make_input(dtype, device=device) * 2.0
    p = {k: (v.to(device, dtype) if v is not None else None) for k, v in make_params(per_neuron, dtype, bias=bias).items()}
    fast = F.cuba_lif_sequence(a, p["alpha"], p["beta"], p["v_th"], p["bias"], return_state=True)
    ref = F.cuba_lif_reference(a, p["alpha"], p["beta"], p["v_th"], p["bias"], return_state=True)
    for x, y, name in zip(fast, ref, ("spikes", "u", "v")):
        assert x.dtype == dtype and x.device == a.device
        assert torch.equal(x, y), name
    spikes = fast[0]
    assert 0.02 < spikes.mean().item() < 0.6  # the test exercises spiking and resets
    assert torch.equal(spikes, F.cuba_lif_sequence(a, p["alpha"], p["beta"], p["v_th"], p["bias"]))


def test_spikes_are_exactly_zero_or_one():
    a = make_input(torch.float32, steps=60) * 3.0
    s = F.cuba_lif_sequence(a, 0.7, 0.9, 0.5, 0.05)
    assert set(s.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(s, (s > 0.5).to(s.dtype))


def test_threshold_is_strict_and_reset_keeps_u():
    # Constant input 0.5, no leak of u: u = 0.5, 1.0, ...; v (beta = 0) equals u each step.
    a = torch.full((1, 4, 1), 0.5)
    s, u, v = F.cuba_lif_sequence(a, 1.0, 0.0, 1.0, None, return_state=True)
    assert s.flatten().tolist() == [0.0, 0.0, 1.0, 1.0]  # v == 1.0 at t = 1 does not spike
    assert u.flatten().tolist() == [0.5, 1.0, 1.5, 2.0]
    assert v.flatten().tolist() == [0.5, 1.0, 0.0, 0.0]


def test_python_numbers_and_tensors_give_identical_results():
    a = make_input(torch.float32)
    x = F.cuba_lif_sequence(a, 0.3, 0.8, 0.7, 0.02)
    y = F.cuba_lif_sequence(a, torch.tensor([0.3]), torch.tensor(0.8), torch.full((N,), 0.7), torch.full((N,), 0.02))
    assert torch.equal(x, y)


def test_constant_zero_alpha_and_bias_shortcuts_match_reference():
    a = make_input(torch.float32) * 2
    ref = F.cuba_lif_reference(a, torch.tensor(0.0), 0.85, 0.8, torch.zeros(N), return_state=True)
    for alpha, bias in [(0.0, None), (torch.zeros(()), torch.zeros(N)), (0, 0.0)]:
        fast = F.cuba_lif_sequence(a, alpha, 0.85, 0.8, bias, return_state=True)
        for x, y in zip(fast, ref):
            assert torch.equal(x, y)


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 3),
    steps=st.integers(0, 25),
    n=st.integers(1, 5),
    alpha=st.floats(0.0, 1.0),
    beta=st.floats(0.0, 1.0),
    v_th=st.floats(0.0, 2.0),
    gain=st.floats(0.1, 4.0),
    seed=st.integers(0, 2**16),
)
def test_forward_property_matches_reference(batch, steps, n, alpha, beta, v_th, gain, seed):
    a = make_input(torch.float32, seed=seed, steps=steps, batch=batch, n=n) * gain
    fast = F.cuba_lif_sequence(a, alpha, beta, v_th, 0.01, return_state=True)
    ref = F.cuba_lif_reference(a, alpha, beta, v_th, 0.01, return_state=True)
    for x, y in zip(fast, ref):
        assert x.shape == (batch, steps, n)
        assert torch.equal(x, y)


# --- gradients -------------------------------------------------------------------------------------------
GRAD_CASES = list(
    itertools.product(
        [True, False],  # detach_reset
        [False, True],  # per_neuron
        ["fast_sigmoid", "arctan", "triangle", "sigmoid", "gaussian", "boxcar", "exponential"],
    )
)


@pytest.mark.parametrize("detach_reset,per_neuron,surrogate", GRAD_CASES)
def test_gradients_match_unrolled_autograd(detach_reset, per_neuron, surrogate):
    a = make_input() * 1.5
    p = make_params(per_neuron)
    sur = S.get_surrogate(surrogate, scale=3.0)
    kw = {"surrogate": sur, "detach_reset": detach_reset}
    fast_out, fast = run_with_grads(F.cuba_lif_sequence, a, p, **kw)
    ref_out, ref = run_with_grads(F.cuba_lif_reference, a, p, **kw)
    assert torch.equal(fast_out[0], ref_out[0])
    for k in ref:
        assert_close_rel(fast[k], ref[k], what=k)
        assert fast[k].shape == ref[k].shape


@pytest.mark.parametrize("detach_reset", [True, False])
@pytest.mark.parametrize("per_neuron", [False, True])
def test_gradients_through_state_traces(detach_reset, per_neuron):
    a = make_input() * 1.5
    p = make_params(per_neuron, seed=3)
    kw = {"surrogate": "fast_sigmoid", "detach_reset": detach_reset, "return_state": True}
    _, fast = run_with_grads(F.cuba_lif_sequence, a, p, **kw)
    _, ref = run_with_grads(F.cuba_lif_reference, a, p, **kw)
    for k in ref:
        assert_close_rel(fast[k], ref[k], what=k)


def test_gradients_when_only_some_outputs_are_used():
    a = make_input() * 1.5
    p = make_params(True, seed=4)
    for pick in (1, 2):  # only u, only v
        grads = []
        for fn in (F.cuba_lif_sequence, F.cuba_lif_reference):
            x = a.clone().requires_grad_(True)
            leaves = {k: v.clone().requires_grad_(True) for k, v in p.items()}
            out = fn(x, *leaves.values(), return_state=True)
            out[pick].square().sum().backward()
            grads.append([x.grad] + [leaves[k].grad for k in ("alpha", "beta", "v_th", "bias")])
        for g_fast, g_ref in zip(*grads):
            if g_ref is None:
                assert g_fast is None or not g_fast.any()
            else:
                assert_close_rel(g_fast, g_ref)


@pytest.mark.parametrize("needs", [("a",), ("alpha",), ("beta", "v_th"), ("bias",), ("alpha", "bias")])
def test_gradients_for_subsets_of_inputs(needs):
    a = make_input() * 1.5
    p = make_params(True, seed=5)
    results = []
    for fn in (F.cuba_lif_sequence, F.cuba_lif_reference):
        x = a.clone().requires_grad_("a" in needs)
        leaves = {k: v.clone().requires_grad_(k in needs) for k, v in p.items()}
        out = fn(x, *leaves.values(), surrogate="arctan")
        (out * torch.linspace(-1, 1, N, dtype=out.dtype)).sum().backward()
        results.append({"a": x.grad, **{k: v.grad for k, v in leaves.items()}})
    for k in ("a", "alpha", "beta", "v_th", "bias"):
        if k in needs:
            assert_close_rel(results[0][k], results[1][k], what=k)
        else:
            assert results[0][k] is None


@pytest.mark.parametrize("detach_reset", [True, False])
def test_gradients_across_backward_blocks(monkeypatch, detach_reset):
    """Blocks of 3 steps (the first one ragged) give the same gradients as one block."""
    a = make_input(steps=23) * 1.5
    p = make_params(True, seed=6)
    kw = {"surrogate": "triangle", "detach_reset": detach_reset, "return_state": True}
    _, one_block = run_with_grads(F.cuba_lif_sequence, a, p, **kw)
    monkeypatch.setattr(F, "_BLOCK_ELEMENTS", 3 * BATCH * N)
    _, blocks = run_with_grads(F.cuba_lif_sequence, a, p, **kw)
    _, ref = run_with_grads(F.cuba_lif_reference, a, p, **kw)
    for k in ref:
        assert_close_rel(blocks[k], one_block[k], rtol=1e-12, what=k)
        assert_close_rel(blocks[k], ref[k], what=k)


def test_parameter_gradients_follow_parameter_dtype_and_shape():
    a = make_input(torch.float32).requires_grad_(True)
    beta = torch.tensor([0.9], dtype=torch.float64, requires_grad=True)
    v_th = torch.full((1, N), 0.8, dtype=torch.float64, requires_grad=True)
    F.cuba_lif_sequence(a, 0.2, beta, v_th, None).sum().backward()
    assert beta.grad.dtype == torch.float64 and beta.grad.shape == (1,)
    assert v_th.grad.shape == (1, N)
    assert a.grad.dtype == torch.float32


def test_trace_gradcheck_with_detached_reset():
    """With the reset detached, u and v traces are smooth in a and the parameters between spike flips,
    so their hand-written gradient is the exact derivative."""
    a = make_input(steps=12, n=3).requires_grad_(True)
    alpha = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)
    beta = torch.full((3,), 0.8, dtype=torch.float64, requires_grad=True)
    bias = torch.full((3,), 0.05, dtype=torch.float64, requires_grad=True)

    def traces(a, alpha, beta, bias):
        _, u, v = F.cuba_lif_sequence(a, alpha, beta, 0.9, bias, detach_reset=True, return_state=True)
        return u, v

    assert F.cuba_lif_sequence(a, alpha, beta, 0.9, bias).sum() > 0  # resets do happen
    assert torch.autograd.gradcheck(traces, (a, alpha, beta, bias), eps=1e-7, atol=1e-6)


# --- the leaky read-out --------------------------------------------------------------------------------
@pytest.mark.parametrize("per_neuron", [False, True])
def test_readout_forward_exact_and_gradients(per_neuron):
    a = make_input()
    p = make_params(per_neuron, seed=8)
    for dtype in (torch.float32, torch.float64):
        x = a.to(dtype)
        q = {k: v.to(dtype) for k, v in p.items()}
        fast = F.leaky_readout_sequence(x, q["alpha"], q["beta"], q["bias"], return_u=True)
        ref = F.leaky_readout_reference(x, q["alpha"], q["beta"], q["bias"], return_u=True)
        assert torch.equal(fast[0], ref[0]) and torch.equal(fast[1], ref[1])

    def grads(fn):
        x = a.clone().requires_grad_(True)
        leaves = {k: p[k].clone().requires_grad_(True) for k in ("alpha", "beta", "bias")}
        v, u = fn(x, leaves["alpha"], leaves["beta"], leaves["bias"], return_u=True)
        g = torch.Generator().manual_seed(2)
        ((v * torch.randn(v.shape, generator=g, dtype=v.dtype)).sum() + u.square().sum()).backward()
        return {"a": x.grad, **{k: t.grad for k, t in leaves.items()}}

    fast, ref = grads(F.leaky_readout_sequence), grads(F.leaky_readout_reference)
    for k in ref:
        assert_close_rel(fast[k], ref[k], what=k)


def test_readout_gradcheck():
    a = make_input(steps=10, n=3).requires_grad_(True)
    alpha = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    beta = torch.tensor([0.9, 0.7, 0.3], dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(F.leaky_readout_sequence, (a, alpha, beta, bias))
    assert torch.autograd.gradcheck(lambda a, b: F.leaky_readout_sequence(a, 0.0, b), (a, beta))


# --- argument checks -------------------------------------------------------------------------------------
def test_rejects_bad_shapes():
    a = make_input(torch.float32)
    with pytest.raises(ValueError):
        F.cuba_lif_sequence(a[0], 0.5, 0.5, 1.0)
    with pytest.raises(ValueError):
        F.cuba_lif_sequence(a, torch.ones(N + 1), 0.5, 1.0)
    with pytest.raises(TypeError):
        F.cuba_lif_sequence(a.to(torch.int64), 0.5, 0.5, 1.0)


# --- surrogates ------------------------------------------------------------------------------------------
CLOSED_FORMS = {
    "fast_sigmoid": lambda x, k: 1.0 / (k * x.abs() + 1.0) ** 2,
    "sigmoid": lambda x, k: k * torch.sigmoid(k * x) * (1 - torch.sigmoid(k * x)),
    "arctan": lambda x, k: (k / 2) / (1 + (math.pi / 2 * k * x) ** 2),
    "triangle": lambda x, k: k * torch.clamp(1 - k * x.abs(), min=0),
    "exponential": lambda x, k: k / 2 * torch.exp(-k * x.abs()),
    "gaussian": lambda x, k: k / math.sqrt(2 * math.pi) * torch.exp(-0.5 * (k * x) ** 2),
    "boxcar": lambda x, k: (x.abs() < 1 / k).to(x.dtype) * k / 2,
}


@pytest.mark.parametrize("name", sorted(CLOSED_FORMS))
def test_surrogate_derivatives(name):
    x = torch.linspace(-3, 3, 6001, dtype=torch.float64)
    for k in (0.5, 2.0, 7.0):
        sur = S.get_surrogate(name, scale=k)
        d = sur.derivative(x)
        torch.testing.assert_close(d, CLOSED_FORMS[name](x, k), rtol=1e-12, atol=1e-12)
        assert torch.equal(sur.derivative_(x.clone()), d)
        assert (d >= 0).all()
        if name != "fast_sigmoid":  # unit-area densities (integrated where they are not negligible)
            wide = torch.linspace(-60 / k, 60 / k, 400001, dtype=torch.float64)
            area = torch.trapezoid(sur.derivative(wide), wide).item()
            tail = 2 / (math.pi * math.pi / 2 * 60) if name == "arctan" else 0.0  # arctan's heavy tails
            assert abs(area + tail - 1.0) < 2e-3, (name, k, area)
    # The sigmoid form does not overflow far from threshold.
    assert torch.isfinite(S.get_surrogate("sigmoid", 50.0).derivative(torch.tensor([-1e4, 1e4]))).all()


def test_surrogate_spike_function_and_registry():
    x = torch.tensor([-1.0, 0.0, 1e-9, 2.0], dtype=torch.float64, requires_grad=True)
    sur = S.get_surrogate("superspike", scale=4.0)
    assert isinstance(sur, S.FastSigmoid) and sur.scale == 4.0
    s = sur(x)
    assert s.tolist() == [0.0, 0.0, 1.0, 1.0]  # strict at 0
    s.sum().backward()
    torch.testing.assert_close(x.grad, sur.derivative(x.detach()))
    assert S.get_surrogate("ATAN") == S.Arctan()  # default scale, case-insensitive
    assert S.get_surrogate(sur) is sur and S.get_surrogate(sur, 2.0).scale == 2.0
    assert S.get_surrogate(**sur.config()) == sur
    assert {"fast_sigmoid", "sigmoid", "arctan", "triangle", "exponential", "gaussian", "boxcar",
            "straight_through", "piecewise_linear"} <= set(S.available_surrogates())
    with pytest.raises(ValueError):
        S.get_surrogate("nope")
    with pytest.raises(ValueError):
        S.Triangle(scale=0.0)
