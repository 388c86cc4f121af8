"""The recurrent CUBA-LIF operator against its unrolled-autograd reference."""
import pytest
import torch

from snn2hw.nn import functional as F
from snn2hw.nn import recurrent as R

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
BATCH, STEPS, N = 3, 40, 7


def _params(per_neuron, seed=0, dtype=torch.float64, bias=True, mask=None):
    g = torch.Generator().manual_seed(seed)
    shape = (N,) if per_neuron else ()
    return {
        "weight": torch.randn(N, N, generator=g, dtype=dtype) * 0.5,
        "alpha": torch.rand(shape, generator=g, dtype=dtype) * 0.9,
        "beta": torch.rand(shape, generator=g, dtype=dtype) * 0.8 + 0.15,
        "v_th": torch.rand(shape, generator=g, dtype=dtype) * 0.5 + 0.6,
        "bias": torch.randn(shape, generator=g, dtype=dtype) * 0.1 if bias else None,
    }


def _input(seed=1, dtype=torch.float64, steps=STEPS, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(BATCH, steps, N, generator=g, dtype=dtype) * 0.6 + 0.1).to(device)


def _run(fn, a, params, device="cpu", seed=7, **kw):
    a = a.detach().clone().requires_grad_(True)
    leaves = {k: (v.detach().clone().to(device).requires_grad_(True) if isinstance(v, torch.Tensor) else v)
              for k, v in params.items()}
    out = fn(a, leaves["weight"], leaves["alpha"], leaves["beta"], leaves["v_th"], leaves["bias"], **kw)
    outs = out if isinstance(out, tuple) else (out,)
    g = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype).to(o.device)).sum() for o in outs)
    loss.backward()
    grads = {"a": a.grad, **{k: v.grad for k, v in leaves.items() if isinstance(v, torch.Tensor)}}
    return outs, grads


def _close(x, y, what, rtol=1e-6):
    assert x is not None and y is not None, what
    assert x.shape == y.shape, (what, x.shape, y.shape)
    err = (x - y).abs().max() / y.abs().max().clamp_min(1e-12)
    assert err <= rtol, f"{what}: relative error {err.item():.3g}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("detach_reset", [True, False])
@pytest.mark.parametrize("per_neuron", [False, True])
@pytest.mark.parametrize("return_state", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_matches_unrolled_reference(device, detach_reset, per_neuron, return_state, masked):
    p = _params(per_neuron)
    mask = R.block_diagonal_mask(N, 3).double().to(device) if masked else None
    a = _input(device=device)
    kw = dict(detach_reset=detach_reset, return_state=return_state, mask=mask)
    outs, grads = _run(R.recurrent_cuba_lif_sequence, a, p, device, **kw)
    outs_ref, grads_ref = _run(R.recurrent_cuba_lif_reference, a, p, device, **kw)
    for o, r in zip(outs, outs_ref):
        assert torch.equal(o, r)
    spikes = outs[0]
    assert 0.05 < spikes.mean() < 0.8  # the test exercises both spiking and silent neurons
    for k in grads_ref:
        _close(grads[k], grads_ref[k], k)
    if masked:
        assert (grads["weight"][mask.to(torch.bool).logical_not()] == 0).all()


@pytest.mark.parametrize("surrogate", ["arctan", "triangle", "sigmoid"])
def test_other_surrogates_and_alpha_zero_no_bias(surrogate):
    p = _params(True, seed=3, bias=False)
    p["alpha"] = 0.0
    a = _input(seed=4)
    outs, grads = _run(R.recurrent_cuba_lif_sequence, a, p, surrogate=surrogate)
    outs_ref, grads_ref = _run(R.recurrent_cuba_lif_reference, a, p, surrogate=surrogate)
    assert torch.equal(outs[0], outs_ref[0])
    for k in grads_ref:
        _close(grads[k], grads_ref[k], k)


def test_zero_recurrence_is_the_feedforward_operator():
    p = _params(True, seed=5)
    a = _input(seed=6)
    s = R.recurrent_cuba_lif_sequence(a, torch.zeros(N, N, dtype=torch.float64), p["alpha"], p["beta"], p["v_th"], p["bias"])
    ref = F.cuba_lif_sequence(a, p["alpha"], p["beta"], p["v_th"], p["bias"])
    assert torch.equal(s, ref)


def test_recurrent_hop_is_one_step():
    # One neuron driven once at step 0 excites neuron 1 at step 1 through V only.
    a = torch.zeros(1, 4, 2, dtype=torch.float64)
    a[0, 0, 0] = 2.0
    w = torch.tensor([[0.0, 0.0], [3.0, 0.0]], dtype=torch.float64)
    s = R.recurrent_cuba_lif_sequence(a, w, 0.0, 0.0, 1.0)
    assert s[0, :, 0].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert s[0, :, 1].tolist() == [0.0, 1.0, 0.0, 0.0]


def test_float32_and_grad_subsets():
    p = _params(False, seed=8, dtype=torch.float32)
    a = _input(seed=9, dtype=torch.float32)
    w = p["weight"].clone().requires_grad_(True)
    s = R.recurrent_cuba_lif_sequence(a, w, p["alpha"], p["beta"], p["v_th"], p["bias"])
    s.sum().backward()
    assert w.grad is not None and torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0


def test_masks():
    m = R.block_diagonal_mask(6, 2)
    assert m[:3, :3].all() and m[3:, 3:].all() and not m[:3, 3:].any()
    r = R.random_sparse_mask(50, 0.2, seed=1, self_connections=False)
    assert torch.equal(r, R.random_sparse_mask(50, 0.2, seed=1, self_connections=False))
    assert 0.1 < r.mean() < 0.3 and not r.diagonal().any()
    with pytest.raises(ValueError):
        R.recurrent_cuba_lif_sequence(_input(), torch.zeros(3, 3), 0.5, 0.5, 1.0)
