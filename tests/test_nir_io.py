"""NIR export/import on its own."""
import dataclasses

import nir
import numpy as np
import pytest

from snn2hw import nir_io
from snn2hw.backends import sim
from snn2hw.compiler import compile_graph


def test_roundtrip_preserves_the_network(tmp_path, float_graph):
    path = tmp_path / "net.nir"
    nir_io.write(float_graph, path)
    back = nir_io.read(path, dt=float_graph.dt)
    assert [p.name for p in back.populations] == ["h", "o"]
    for a, b in zip(float_graph.populations, back.populations):
        assert np.isclose(a.neuron.du, b.neuron.du) and np.isclose(a.neuron.dv, b.neuron.dv)
        # import normalises thresholds to 1: weights and bias are divided by the threshold
        assert b.neuron.v_th == 1.0
        np.testing.assert_allclose(b.neuron.bias, a.neuron.bias / a.neuron.v_th, rtol=1e-12, atol=1e-15)
    for a, b in zip(float_graph.projections, back.projections):
        v_th = float_graph.population(a.dst).neuron.v_th
        np.testing.assert_allclose(b.weight, a.weight / v_th, rtol=1e-12)
        assert a.delay == b.delay
    # the same integer network either way
    x = (np.random.default_rng(0).random((2, 30, 6)) < 0.5).astype(np.int64)
    r1 = sim.run(compile_graph(float_graph), x, record=["h"])
    r2 = sim.run(compile_graph(back), x, record=["h"])
    for k in r1.spikes:
        np.testing.assert_array_equal(r1.spikes[k], r2.spikes[k])


def test_dt_mismatch_warns(tmp_path, float_graph):
    path = tmp_path / "net.nir"
    nir_io.write(float_graph, path)
    with pytest.warns(UserWarning, match="dt"):
        g = nir_io.read(path, dt=2e-3)
    assert np.isclose(g.populations[0].neuron.du, 2 * float_graph.populations[0].neuron.du)


def test_foreign_conventions_lif_and_affine(tmp_path):
    # snnTorch-style Leaky exported as NIR LIF with r = tau/dt: v' = beta v + x
    dt, tau = 1e-4, 5e-4
    g = nir.NIRGraph(
        nodes={
            "input": nir.Input({"input": np.array([2])}),
            "fc": nir.Affine(weight=np.array([[0.5, 1.0]]), bias=np.array([0.1])),
            "lif": nir.LIF(tau=np.array([tau]), r=np.array([tau / dt]), v_leak=np.zeros(1), v_threshold=np.array([2.0])),
            "output": nir.Output({"output": np.array([1])}),
        },
        edges=[("input", "fc"), ("fc", "lif"), ("lif", "output")],
    )
    ir = nir_io.from_nir(g, dt)
    n = ir.populations[0].neuron
    assert n.du == 1.0 and np.isclose(n.dv, dt / tau) and n.v_th == 1.0
    np.testing.assert_allclose(ir.projections[0].weight, [[0.25, 0.5]])
    np.testing.assert_allclose(n.bias, [0.05])


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda nodes: nodes.update(extra=nir.Threshold(np.array([1.0]))), "unsupported type Threshold"),
        (lambda nodes: setattr(nodes["lif"], "v_reset", np.array([0.5])), "v_reset"),
        (lambda nodes: setattr(nodes["lif"], "tau_mem", np.array([1e-3, 2e-3])), "differs between neurons"),
    ],
)
def test_unsupported_nir_is_rejected(mutate, message):
    nodes = {
        "input": nir.Input({"input": np.array([2])}),
        "fc": nir.Linear(weight=np.ones((2, 2))),
        "lif": nir.CubaLIF(tau_syn=np.full(2, 2e-3), tau_mem=np.full(2, 4e-3), r=np.ones(2), v_leak=np.zeros(2),
                           v_threshold=np.ones(2), w_in=np.ones(2)),
        "output": nir.Output({"output": np.array([2])}),
    }
    mutate(nodes)
    g = nir.NIRGraph(nodes=nodes, edges=[("input", "fc"), ("fc", "lif"), ("lif", "output")], type_check=False)
    with pytest.raises(nir_io.NIRError, match=message):
        nir_io.from_nir(g, 1e-3)


def test_bad_files(tmp_path):
    with pytest.raises(nir_io.NIRError, match="no such file"):
        nir_io.read(tmp_path / "x.nir", dt=1e-3)
    p = tmp_path / "x.nir"
    p.write_text("hello")
    with pytest.raises(nir_io.NIRError, match="not a NIR file"):
        nir_io.read(p, dt=1e-3)
    import h5py
    with h5py.File(tmp_path / "y.nir", "w") as f:
        f["junk"] = 1
    with pytest.raises(nir_io.NIRError, match="corrupt or unsupported"):
        nir_io.read(tmp_path / "y.nir", dt=1e-3)


def test_zero_decay_cannot_be_exported(float_graph):
    pop = float_graph.populations[0]
    g = dataclasses.replace(float_graph, populations=(dataclasses.replace(pop, neuron=dataclasses.replace(pop.neuron, du=0.0)),
                                                      float_graph.populations[1]))
    with pytest.raises(nir_io.NIRError, match="finite time constants"):
        nir_io.to_nir(g)
