"""The recurrent CUBA-LIF operator against its unrolled-autograd reference."""
import pytest
import torch

from snn2hw.nn import functional as F
from snn2hw.nn import recurrent as R
from snn2hw.nn import recurrent_kernels as RK

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
    # Spikes must be identical. The compiled CPU kernel adds the recurrent input in the operator's defined
    # order, as the reference does, so its states are too; the tensor path (CUDA) sums with a GEMM.
    assert torch.equal(outs[0], outs_ref[0])
    for o, r in zip(outs[1:], outs_ref[1:]):
        if device == "cpu" and RK.available():
            assert torch.equal(o, r)
        else:
            _close(o, r, "state", rtol=1e-12)
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


needs_numba = pytest.mark.skipif(not RK.available(), reason="numba not installed (compiled kernels unavailable)")


def _wide(dtype, seed=11, batch=3, steps=40, n=70):
    # n = 70: not a multiple of the vector width; enough recurrent drive that most steps have events
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, steps, n, generator=g, dtype=dtype) * 0.7 + 0.15
    p = {"weight": torch.randn(n, n, generator=g, dtype=dtype) * 0.25,
         "alpha": torch.rand(n, generator=g, dtype=dtype) * 0.9,
         "beta": torch.rand(n, generator=g, dtype=dtype) * 0.8 + 0.15,
         "v_th": torch.tensor(0.9, dtype=dtype), "bias": torch.randn(n, generator=g, dtype=dtype) * 0.1}
    return a, p


@needs_numba
def test_kernel_float32_bit_identical_to_reference_gradients_match_tensor_path(monkeypatch):
    a, p = _wide(torch.float32)
    outs, grads = _run(R.recurrent_cuba_lif_sequence, a, p, return_state=True)
    outs_ref, grads_ref = _run(R.recurrent_cuba_lif_reference, a, p, return_state=True)
    for o, r in zip(outs, outs_ref):
        assert torch.equal(o, r)
    assert 0.05 < outs[0].mean() < 0.6
    for k in grads_ref:
        _close(grads[k], grads_ref[k], k, rtol=2e-4)
    # the tensor path (what CUDA runs): the same operator to float rounding
    monkeypatch.setenv("SNN2HW_NO_NUMBA", "1")
    a64, p64 = _wide(torch.float64)
    outs_t, grads_t = _run(R.recurrent_cuba_lif_sequence, a64, p64, return_state=True)
    monkeypatch.delenv("SNN2HW_NO_NUMBA")
    outs_k, grads_k = _run(R.recurrent_cuba_lif_sequence, a64, p64, return_state=True)
    assert torch.equal(outs_t[0], outs_k[0])
    for o, r in zip(outs_t[1:], outs_k[1:]):
        _close(o, r, "state", rtol=1e-12)
    for k in grads_k:
        _close(grads_t[k], grads_k[k], k, rtol=1e-10)


@needs_numba
def test_kernel_sample_results_do_not_depend_on_the_batch():
    # event-driven sums in a fixed order: a sample alone gives the same bits as inside a batch
    a, p = _wide(torch.float32, seed=12, batch=5, steps=30)
    args = (p["weight"], p["alpha"], p["beta"], p["v_th"], p["bias"])
    whole = R.recurrent_cuba_lif_sequence(a, *args, return_state=True)
    alone = R.recurrent_cuba_lif_sequence(a[3:4].contiguous(), *args, return_state=True)
    for w, o in zip(whole, alone):
        assert torch.equal(w[3:4], o)


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


# --- the layer: IR, config/checkpoint, QAT bit-exact with the simulator -----------------------------------
def _rec_model(seed=0, masked=False, bias=True):
    from snn2hw.nn.layers import LIFDense, RecurrentLIFDense, SpikingSequential

    torch.manual_seed(seed)
    mask = R.random_sparse_mask(20, 0.5, seed=seed) if masked else None
    m = SpikingSequential([
        RecurrentLIFDense(12, 20, du=0.3, dv=0.15, v_th=1.0, weight_gain=4.0, rec_gain=2.0, bias=bias, rec_mask=mask,
                          rec_weight_scale=0.5 if masked else 1.0),
        LIFDense(20, 7, du=0.3, dv=0.15, v_th=1.0, weight_gain=4.0, bias=bias),
    ])
    if bias:
        for layer in m.layers:
            torch.nn.init.uniform_(layer.bias, -0.05, 0.1)
    return m


def _spikes_in(seed, batch=5, steps=40):
    return (torch.rand(batch, steps, 12, generator=torch.Generator().manual_seed(seed)) < 0.3).float()


def test_layer_ir_has_a_self_projection_and_float_forward_uses_it():
    import numpy as np

    m = _rec_model(masked=True)
    g = m.to_ir()
    assert [p.name for p in g.projections] == ["fc1", "rec1", "fc2"]
    rec = g.projections[1]
    assert rec.src == rec.dst == "lif1" and g.feedforward_order() is None
    layer = m.layers[0]
    np.testing.assert_array_equal(rec.weight, (0.5 * layer.rec_weight * layer.rec_mask).detach().double().numpy())
    x = _spikes_in(1)
    out = m(x)
    with torch.no_grad():
        layer.rec_weight.zero_()
    assert not torch.equal(m(x), out)  # the recurrent path matters


@pytest.mark.parametrize("masked", [False, True])
def test_qat_equals_simulator_spikes_and_state(masked):
    import numpy as np

    from snn2hw.backends import sim
    from snn2hw.compiler import compile_graph
    from snn2hw.quantize import QuantConfig

    m = _rec_model(masked=masked).set_qat(QuantConfig())
    for layer in m.layers:
        layer.record_int_state = True
    x = _spikes_in(2)
    outs = m(x, return_all=True)
    res = sim.run(compile_graph(m.to_ir()), x.numpy().astype(np.int64), record=["lif1"], record_state=["lif1", "lif2"])
    for i, layer in enumerate(m.layers, start=1):
        np.testing.assert_array_equal(outs[i - 1].detach().numpy().astype(np.uint8), res.spikes[f"lif{i}"])
        u, v = layer.last_int_state
        np.testing.assert_array_equal(u.numpy(), res.u[f"lif{i}"])
        np.testing.assert_array_equal(v.numpy(), res.v[f"lif{i}"])
        assert res.spikes[f"lif{i}"].sum() > 20


def test_qat_gradients_and_training_keep_equality():
    import numpy as np

    from snn2hw.backends import sim
    from snn2hw.compiler import compile_graph
    from snn2hw.quantize import QuantConfig

    m = _rec_model(1, masked=True).set_qat(QuantConfig())
    x, y = _spikes_in(3, batch=8, steps=30), torch.arange(8) % 7
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(m(x).sum(dim=1) * 0.5, y)
        opt.zero_grad()
        loss.backward()
        for name, p in m.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        opt.step()
    layer = m.layers[0]
    assert (layer.rec_weight.grad[layer.rec_mask == 0] == 0).all()
    out = m(x).detach().numpy().astype(np.uint8)
    np.testing.assert_array_equal(out, sim.run(compile_graph(m.to_ir()), x.numpy().astype(np.int64)).spikes["lif2"])


def test_config_and_checkpoint_round_trip(tmp_path):
    from snn2hw.nn.layers import RecurrentLIFDense, SpikingSequential
    from snn2hw.train.checkpoint import load_checkpoint, save_checkpoint

    m = _rec_model(masked=True)
    cfg = m.config()
    assert cfg["layers"][0]["layer"] == "RecurrentLIFDense" and "layer" not in cfg["layers"][1]
    save_checkpoint(m, tmp_path / "m.pt")
    m2 = load_checkpoint(tmp_path / "m.pt")
    assert isinstance(m2.layers[0], RecurrentLIFDense)
    assert torch.equal(m2.layers[0].rec_mask, m.layers[0].rec_mask)
    x = _spikes_in(4)
    assert torch.equal(m2(x), m(x))
    m3 = SpikingSequential.from_config(_rec_model(masked=False).config())
    assert m3.layers[0].rec_mask is None
    with pytest.raises(ValueError, match="unknown layer kind"):
        SpikingSequential.from_config({"layers": [{"layer": "Nope"}]})
