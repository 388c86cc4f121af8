"""NIR import/export (snn2hw.nir) on its own: every primitive, every layer kind, the split of per-neuron
decays, biases into currents, typed errors, and the CLI path checkpoint -> NIR -> artefact -> backends."""
import dataclasses

import nir
import numpy as np
import pytest
import torch

from snn2hw import cli, nir_io
from snn2hw import nir as snir
from snn2hw.backends import sim
from snn2hw.compiler import compile_graph
from snn2hw.ir import Conv2d, Dense
from snn2hw.nn.conv import ConvLIF, Dropout, Flatten, LeakyReadout, SumPoolLIF
from snn2hw.nn.layers import LIFDense, RecurrentLIFDense, SpikingSequential
from snn2hw.train.checkpoint import save_checkpoint


def _conv_net(seed=0):
    torch.manual_seed(seed)
    net = SpikingSequential([
        ConvLIF((1, 8, 8), 4, 3, padding=1, bias=True, weight_gain=3.0), SumPoolLIF((4, 8, 8), 2, v_th=2.0),
        Flatten(), Dropout(0.1), RecurrentLIFDense(64, 10, bias=True, weight_gain=3.0),
        LIFDense(10, 6, du=1.0, dv=0.3, weight_gain=3.0), LeakyReadout(6, 3, v_scale=2.0)])
    return net.eval()


def _spikes(shape, p=0.3, seed=0):
    return (np.random.default_rng(seed).random(shape) < p).astype(np.int64)


def test_roundtrip_is_the_identity(tmp_path, float_graph):
    path = tmp_path / "net.nir"
    nir_io.write(float_graph, path)
    back = nir_io.read(path)  # dt and convention (snn2hw) come from the file's metadata
    assert back.dt == float_graph.dt and back.metadata["nir"]["source_convention"] == "snn2hw"
    for a, b in zip(float_graph.populations, back.populations):
        assert a.name == b.name and a.neuron.v_th == b.neuron.v_th
        np.testing.assert_allclose([b.neuron.du, b.neuron.dv], [a.neuron.du, a.neuron.dv], rtol=1e-12)
        np.testing.assert_allclose(b.neuron.bias, a.neuron.bias, rtol=1e-12, atol=1e-15)
    for a, b in zip(float_graph.projections, back.projections):
        assert a.name == b.name and a.delay == b.delay
        np.testing.assert_array_equal(b.weight, a.weight)
    x = _spikes((2, 30, 6), 0.5)
    r1 = sim.run(compile_graph(float_graph), x, record=["h"])
    r2 = sim.run(compile_graph(back), x, record=["h"])
    for k in r1.spikes:
        np.testing.assert_array_equal(r1.spikes[k], r2.spikes[k])


def test_every_layer_kind_exports_and_comes_back(tmp_path):
    net = _conv_net()
    g = net.to_ir(1e-3)
    path = tmp_path / "conv.nir"
    snir.write(g, path)
    ng = nir.read(path)  # nir's own reader, with type checking
    nir.NIRGraph(nodes=ng.nodes, edges=ng.edges, metadata=ng.metadata, type_check=True)
    kinds = {type(v).__name__ for v in ng.nodes.values()}
    assert {"Conv2d", "SumPool2d", "Flatten", "Linear", "CubaLIF", "LIF", "CubaLI"} <= kinds
    assert ng.nodes["lif1"].v_threshold.shape == (4, 8, 8)
    back = snir.read(path)
    assert [type(p) for p in back.projections] == [type(p) for p in g.projections]
    for a, b in zip(g.projections, back.projections):
        np.testing.assert_array_equal(a.weight, b.weight)
    assert not back.population("lif5").neuron.spiking and back.population("lif5").neuron.v_th == 2.0
    x = _spikes((2, 16, 64))
    r1 = sim.run(compile_graph(g), x, record=["lif1", "lif3"], record_state=["lif5"])
    r2 = sim.run(compile_graph(back), x, record=["lif1", "lif3"], record_state=["lif5"])
    for k in r1.spikes:
        np.testing.assert_array_equal(r1.spikes[k], r2.spikes[k])
    np.testing.assert_array_equal(r1.v["lif5"], r2.v["lif5"])
    # the float model of the file reproduces the training engine's float network, step for step
    model = snir.float_model(path, dtype=torch.float64)
    assert model.timing == "next_step"
    with torch.no_grad():
        mine = model(torch.as_tensor(x, dtype=torch.float64), return_all=True)
        theirs = net.double()(torch.as_tensor(x, dtype=torch.float64), return_all=True)
    pops = [o for o in theirs if o.dim() == 3]
    for name, ref in zip(["lif1", "lif2", "lif3", "lif4", "lif5"], [pops[0], pops[1], pops[4], pops[5], pops[6]]):
        torch.testing.assert_close(mine[name], ref, rtol=1e-9, atol=1e-12)


def test_dt_mismatch_warns(tmp_path, float_graph):
    path = tmp_path / "net.nir"
    nir_io.write(float_graph, path)
    with pytest.warns(UserWarning, match="dt"):
        g = nir_io.read(path, dt=2e-3)
    assert np.isclose(g.populations[0].neuron.du, 2 * float_graph.populations[0].neuron.du)


def _cuba(n, tau_syn=2e-3, tau_mem=4e-3, **kw):
    p = dict(tau_syn=np.full(n, tau_syn), tau_mem=np.full(n, tau_mem), r=np.ones(n), v_leak=np.zeros(n),
             v_threshold=np.ones(n), w_in=np.ones(n))
    p.update(kw)
    return nir.CubaLIF(**p)


def test_every_primitive_imports():
    """Scale, Conv1d, Conv2d, AvgPool2d, SumPool2d, Flatten, Delay, Threshold, I, IF, LI, LIF, CubaLI and a
    nested graph, in one network; it compiles and runs."""
    dt = 1e-3
    sub = nir.NIRGraph(nodes={"in": nir.Input({"input": np.array([6])}), "lif": nir.LIF(
        tau=np.full(6, 5e-3), r=np.full(6, 5.0), v_leak=np.zeros(6), v_threshold=np.ones(6), v_reset=np.zeros(6)),
        "rec": nir.Linear(0.1 * np.ones((6, 6))), "out": nir.Output({"output": np.array([6])})},
        edges=[("in", "lif"), ("lif", "rec"), ("rec", "lif"), ("lif", "out")], type_check=False)
    rng = np.random.default_rng(0)
    nodes = {
        "img": nir.Input({"input": np.array([2, 6, 6])}),
        "c2": nir.Conv2d(None, rng.normal(0, 1, (3, 2, 3, 3)), 1, 1, 1, 1, np.full(3, 0.1)),
        "n1": nir.IF(r=np.ones((3, 6, 6)), v_threshold=np.full((3, 6, 6), 1.5)),
        "avg": nir.AvgPool2d(np.array([2, 2]), np.array([2, 2]), np.array([0, 0])),
        "sum": nir.SumPool2d(np.array([3, 3]), np.array([3, 3]), np.array([0, 0])),
        "th": nir.Threshold(np.full((3, 3, 3), 0.2)),
        "th2": nir.Threshold(np.full((3, 2, 2), 0.5)),
        "flat": nir.Flatten({"input": np.array([3, 3, 3])}, 0, -1),
        "sc": nir.Scale(np.linspace(0.5, 1.5, 27)),
        "fc": nir.Affine(rng.normal(0, 1, (6, 27)), np.full(6, 0.05)),
        "sub": sub,
        "seq": nir.Input({"input": np.array([2, 10])}),
        "c1": nir.Conv1d(None, rng.normal(0, 1, (2, 2, 3)), 1, 1, 1, 1, np.zeros(2)),
        "li": nir.LI(tau=np.full((2, 10), 4e-3), r=np.ones((2, 10)), v_leak=np.zeros((2, 10))),
        "i_fc": nir.Linear(rng.normal(0, 1, (4, 6))),
        "int": nir.I(r=np.ones(4)),
        "cuba_li": nir.CubaLI(tau_syn=np.full(4, 2e-3), tau_mem=np.full(4, 8e-3), r=np.ones(4), v_leak=np.zeros(4),
                              w_in=np.ones(4)),
        "d": nir.Delay(np.full(4, 2 * dt)),
        "fc2": nir.Linear(rng.normal(0, 1, (4, 6))),
        "o1": nir.Output({"output": np.array([4])}), "o2": nir.Output({"output": np.array([2, 10])}),
        "o3": nir.Output({"output": np.array([4])}), "o4": nir.Output({"output": np.array([3, 2, 2])}),
    }
    edges = [("img", "c2"), ("c2", "n1"), ("n1", "avg"), ("avg", "th"), ("th", "flat"), ("flat", "sc"), ("sc", "fc"),
             ("fc", "sub"), ("sub", "i_fc"), ("i_fc", "int"), ("int", "o1"), ("seq", "c1"), ("c1", "li"),
             ("li", "o2"), ("sub", "fc2"), ("fc2", "d"), ("d", "cuba_li"), ("cuba_li", "o3"), ("n1", "sum"),
             ("sum", "th2"), ("th2", "o4")]
    g = snir.from_nir(nir.NIRGraph(nodes=nodes, edges=edges, type_check=False), dt, convention="nir")
    by_name = {p.name: p for p in g.projections}
    assert isinstance(by_name["c2"], Conv2d) and by_name["c2"].in_shape == (2, 6, 6)
    assert isinstance(by_name["avg"], Conv2d) and np.allclose(by_name["avg"].weight, 0.25)
    assert isinstance(by_name["c1"], Conv2d) and by_name["c1"].in_shape == (2, 1, 10)
    assert isinstance(by_name["fc"], Dense) and by_name["fc"].weight.shape == (6, 27)
    assert by_name["fc2"].delay == 2 and by_name["sub.rec"].src == by_name["sub.rec"].dst == "sub.lif"
    # the Conv2d bias into an IF (no current state) is a voltage bias; the Affine bias into a LIF too
    np.testing.assert_allclose(g.population("n1").neuron.bias, 0.1)
    np.testing.assert_allclose(g.population("sub.lif").neuron.bias, 0.05)
    assert set(g.outputs) == {"int", "li", "cuba_li", "th2"}
    assert not g.population("int").neuron.spiking and g.population("int").neuron.dv == 0
    x = {"img": _spikes((2, 12, 72)), "seq": _spikes((2, 12, 20), seed=1)}
    r = sim.run(compile_graph(g), x, record=["sub.lif"])
    assert r.spikes["sub.lif"].sum() > 0


def test_conv1d_and_pools_compute_what_nir_says():
    """Each stateless primitive, fed into a Threshold neuron (v = this step's input), gives the spikes
    of its PyTorch definition."""
    rng = np.random.default_rng(1)
    w = rng.normal(0, 1, (3, 2, 3))
    ng = nir.NIRGraph(nodes={"x": nir.Input({"input": np.array([2, 9])}),
                             "c": nir.Conv1d(None, w, 2, 1, 1, 1, np.zeros(3)),
                             "t": nir.Threshold(np.full((3, 5), 0.3)), "o": nir.Output({"output": np.array([3, 5])})},
                      edges=[("x", "c"), ("c", "t"), ("t", "o")], type_check=False)
    model = snir.float_model(ng, dt=1.0, convention="nir", dtype=torch.float64)
    x = torch.as_tensor(_spikes((2, 5, 18)), dtype=torch.float64)
    ref = torch.nn.functional.conv1d(x.reshape(10, 2, 9), torch.as_tensor(w), stride=2, padding=1).reshape(2, 5, -1) > 0.3
    assert torch.equal(model(x)["t"].bool(), ref)


def test_per_neuron_decays_split_exactly():
    n = 12
    tau = np.where(np.arange(n) % 3 == 0, 2e-3, np.where(np.arange(n) % 3 == 1, 4e-3, 8e-3))
    tau[5] = 4e-3 * (1 + 1e-9)  # differs from 4e-3, quantizes the same: same group
    rng = np.random.default_rng(2)
    ng = nir.NIRGraph(nodes={"x": nir.Input({"input": np.array([5])}), "fc": nir.Linear(rng.normal(0, 1.5, (n, 5))),
                             "lif": nir.LIF(tau=tau, r=tau / 1e-3, v_leak=np.zeros(n), v_threshold=np.ones(n),
                                            v_reset=np.zeros(n)),
                             "rec": nir.Linear(rng.normal(0, 0.5, (n, n))),
                             "fc2": nir.Linear(rng.normal(0, 1.5, (3, n))),
                             "out": _cuba(3), "o": nir.Output({"output": np.array([3])})},
                      edges=[("x", "fc"), ("fc", "lif"), ("lif", "rec"), ("rec", "lif"), ("lif", "fc2"),
                             ("fc2", "out"), ("out", "o")], type_check=False)
    wide = snir.from_nir(ng, 1e-3, convention="nir", split=False)
    g = snir.split_by_decay(wide)
    assert [p.name for p in g.populations] == ["lif[0]", "lif[1]", "lif[2]", "out"]
    assert g.metadata["nir"]["split"]["lif"]["lif[1]"] == [1, 4, 5, 7, 10]
    assert any("split into 3" in s for s in g.metadata["nir"]["notes"])
    x = torch.as_tensor(_spikes((3, 40, 5), 0.4), dtype=torch.float64)
    with torch.no_grad():
        a = snir.FloatNetwork(wide, "next_step", dtype=torch.float64)(x, return_all=True)
        b = snir.FloatNetwork(g, "next_step", dtype=torch.float64)(x, return_all=True)
    merged = snir.merge_split({k: v.numpy() for k, v in b.items()}, g)
    assert a["lif"].sum() > 20
    np.testing.assert_array_equal(merged["lif"], a["lif"].numpy())
    np.testing.assert_array_equal(merged["out"], a["out"].numpy())
    r = sim.run(compile_graph(g), x.numpy().astype(np.int64), record=["lif[0]", "lif[1]", "lif[2]"])
    assert snir.merge_split(r.spikes, g)["lif"].shape == (3, 40, n)


def test_bias_into_a_current_comes_from_an_always_on_population():
    dt, n = 1e-3, 4
    ng = nir.NIRGraph(nodes={"x": nir.Input({"input": np.array([3])}),
                             "fc": nir.Affine(np.zeros((n, 3)), np.array([0.3, 0.5, -0.2, 0.8])),
                             "lif": _cuba(n, r=np.full(n, 4.0), w_in=np.full(n, 2.0)),
                             "o": nir.Output({"output": np.array([n])})},
                      edges=[("x", "fc"), ("fc", "lif"), ("lif", "o")], type_check=False)
    g = snir.from_nir(ng, dt, convention="nir")
    assert g.populations[0].name == snir.ALWAYS_ON
    assert np.allclose(g.population("lif").neuron.bias, 0)
    # float reference: u = (1-du) u + du*w_in*b ; v = (1-dv) v + dv*r*u, spikes where v > 1, from step 0 on
    du, dv, b = 0.5, 0.25, np.array([0.3, 0.5, -0.2, 0.8])
    u = v = np.zeros(n)
    ref = []
    for _ in range(30):
        u = (1 - du) * u + du * 2.0 * b
        v = (1 - dv) * v + dv * 4.0 * u
        s = v > 1
        v = np.where(s, 0, v)
        ref.append(s)
    with torch.no_grad():
        out = snir.float_model(ng, dt, convention="nir", dtype=torch.float64)(torch.zeros(1, 30, 3, dtype=torch.float64))
    np.testing.assert_array_equal(out["lif"][0].numpy().astype(bool), np.array(ref))
    assert np.array(ref).sum() > 5
    r = sim.run(compile_graph(g), np.zeros((1, 31, 3), dtype=np.int64))
    # deployed: the same spike train one step later (the always-on hop), up to quantization (8-bit weights
    # shift the phase of a neuron that sits on its threshold; the rates agree)
    deployed = r.spikes["lif"][0, 1:].astype(bool)
    assert np.abs(deployed.sum(0) - np.array(ref).sum(0)).max() <= 1
    assert (deployed == np.array(ref)).mean() > 0.75


def _graph(**overrides):
    nodes = {"input": nir.Input({"input": np.array([2])}), "fc": nir.Linear(weight=np.ones((2, 2))),
             "lif": _cuba(2), "output": nir.Output({"output": np.array([2])})}
    edges = [("input", "fc"), ("fc", "lif"), ("lif", "output")]
    for k, v in overrides.items():
        if k == "edges":
            edges = v
        elif v is None:
            nodes.pop(k)
        else:
            nodes[k] = v
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)


@pytest.mark.parametrize("graph, message", [
    (_graph(extra=nir.Scale(np.ones(2)), edges=[("input", "fc"), ("fc", "lif"), ("lif", "output"), ("lif", "extra"),
                                                 ("extra", "oops")]), "unknown node"),
    (_graph(lif=_cuba(2, v_reset=np.array([0.5, 0.0]))), "node 'lif': v_reset"),
    (_graph(lif=_cuba(2, v_threshold=np.array([1.0, -1.0]))), "node 'lif': v_threshold must be positive"),
    (_graph(lif=_cuba(2, tau_mem=np.array([1e-3, 2e-4]))), "node 'lif': decay fraction dt/tau"),
    (_graph(lif=_cuba(3)), "node 'lif': tau_syn has 3 values for a population of 2"),
    (_graph(fc=nir.Linear(np.ones((2, 5)))), "node 'fc': weight shape"),
    (_graph(d=nir.Delay(np.array([1.5e-3, 1.5e-3])), edges=[("input", "fc"), ("fc", "d"), ("d", "lif"),
                                                             ("lif", "output")]), "node 'd': delay"),
    (_graph(edges=[("input", "fc"), ("fc", "lif"), ("fc", "output")]), "output 'output': must be fed"),
    (_graph(lif=nir.Conv2d(None, np.ones((1, 1, 1, 1)), 1, 1, 1, 1, np.zeros(1))), "Conv2d needs|input shape"),
])
def test_malformed_or_unsupported_graphs_name_the_node(graph, message):
    with pytest.raises(snir.NIRError, match=message):
        snir.from_nir(graph, 1e-3, convention="nir")


def test_every_problem_is_reported():
    g = _graph(lif=_cuba(2, v_reset=np.array([0.5, 0.0])), lif2=_cuba(2, v_threshold=np.array([0.0, 1.0])),
               edges=[("input", "fc"), ("fc", "lif"), ("fc", "lif2"), ("lif", "output"), ("lif2", "output")])
    with pytest.raises(snir.NIRError) as err:
        snir.from_nir(g, 1e-3, convention="nir")
    assert len(err.value.problems) == 2 and "'lif2'" in str(err.value)


def test_conventions_are_explicit():
    with pytest.raises(snir.NIRError, match="no dt given"):
        snir.from_nir(_graph(), convention="nir")
    with pytest.raises(snir.NIRError, match="unknown convention"):
        snir.from_nir(_graph(), 1e-3, convention="brian")
    with pytest.raises(snir.NIRError, match="subtraction"):
        snir.from_nir(_graph(), convention="sinabs")
    g = snir.from_nir(_graph(), convention="sinabs", approximate=True)  # dt = 1 step, exact decay
    assert g.dt == 1.0 and any("subtract reset approximated" in n for n in g.metadata["nir"]["notes"])
    lif = nir.LIF(tau=np.full(2, 1e-2), r=np.ones(2), v_leak=np.zeros(2), v_threshold=np.ones(2))
    exact = snir.from_nir(_graph(lif=lif), 1e-3, convention=snir.CONVENTIONS["rockpool"])
    euler = snir.from_nir(_graph(lif=lif), 1e-3, convention="nir")
    assert np.isclose(exact.population("lif").neuron.dv, -np.expm1(-0.1))
    assert np.isclose(euler.population("lif").neuron.dv, 0.1)
    # Norse writes tau = dt / tau_inv and lets the input jump the current
    norse = snir.from_nir(_graph(lif=_cuba(2, tau_syn=1e-3 / 200, tau_mem=1e-3 / 100)), convention="norse")
    assert np.isclose(norse.population("lif").neuron.du, 0.2) and np.isclose(norse.population("lif").neuron.dv, 0.1)
    np.testing.assert_allclose(norse.projections[0].weight, 0.1)  # dv * r * w_in, without du


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


def test_mangled_graphs_raise_typed_errors_only():
    rng = np.random.default_rng(3)
    for k in range(40):
        nodes = {"input": nir.Input({"input": np.array([3])}), "fc": nir.Linear(rng.normal(size=(4, 3))),
                 "lif": _cuba(4), "output": nir.Output({"output": np.array([4])})}
        victim = nodes[["fc", "lif"][k % 2]]
        attr = rng.choice([a for a in vars(victim) if a not in ("input_type", "output_type", "metadata")])
        junk = [np.array([]), np.full((2, 2, 2), np.nan), "x", None, np.array([-1.0])]
        setattr(victim, attr, junk[rng.integers(len(junk))])
        try:
            snir.from_nir(nir.NIRGraph(nodes=nodes, edges=[("input", "fc"), ("fc", "lif"), ("lif", "output")],
                                       type_check=False), 1e-3, convention="nir")
        except snir.NIRError:
            pass


def test_zero_decay_cannot_be_exported(float_graph):
    pop = float_graph.populations[0]
    g = dataclasses.replace(float_graph, populations=(dataclasses.replace(pop, neuron=dataclasses.replace(pop.neuron, du=0.0)),
                                                      float_graph.populations[1]))
    with pytest.raises(nir_io.NIRError, match="finite time constants"):
        nir_io.to_nir(g)


@pytest.mark.parametrize("backend", ["sim", pytest.param("lava", marks=pytest.mark.lava)])
def test_cli_conv_checkpoint_to_nir_to_artefact_to_backend(tmp_path, backend):
    if backend == "lava":
        pytest.importorskip("lava")
    net = _conv_net()
    save_checkpoint(net, tmp_path / "c.ckpt")
    x = _spikes((1, 8, 64))
    np.save(tmp_path / "x.npy", x)
    assert cli.main(["export", str(tmp_path / "c.ckpt"), "-o", str(tmp_path / "c.nir"), "--dt", "1e-3"]) == 0
    assert cli.main(["compile", str(tmp_path / "c.nir"), "-o", str(tmp_path / "c.npz")]) == 0
    assert cli.main(["run", str(tmp_path / "c.npz"), str(tmp_path / "x.npy"), "-o", str(tmp_path / "o.npz"),
                     "--backend", backend, "--record", "lif1", "--record", "lif3", "--record-state", "lif5"]) == 0
    direct = sim.run(compile_graph(net.to_ir(1e-3)), x, record=["lif1", "lif3"], record_state=["lif5"])
    with np.load(tmp_path / "o.npz") as z:
        for k in ("lif1", "lif3"):
            np.testing.assert_array_equal(z[f"spikes/{k}"], direct.spikes[k])
        np.testing.assert_array_equal(z["v/lif5"], direct.v["lif5"])
    assert direct.spikes["lif1"].sum() > 0 and direct.spikes["lif3"].sum() > 0


def test_float_model_trains_and_exports_again(tmp_path):
    net = SpikingSequential([LIFDense(6, 8, weight_gain=3.0), LIFDense(8, 3, weight_gain=3.0)])
    snir.write(net.to_ir(1e-3), tmp_path / "a.nir")
    g = snir.read(tmp_path / "a.nir", convention="nir")  # as a producer's file: one step per hop is added
    assert g.metadata["nir"]["added_latency_steps"] == 2
    model = snir.float_model(tmp_path / "a.nir", dtype=torch.float64)
    x = torch.as_tensor(_spikes((4, 20, 6), 0.5), dtype=torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    before = [w.detach().clone() for w in model.weights]
    loss = model(x)["lif2"].mean()
    loss.backward()
    assert all(w.grad is not None and torch.isfinite(w.grad).all() for w in model.weights)
    opt.step()
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, model.weights))
    snir.write(snir.split_by_decay(model.to_graph()), tmp_path / "b.nir")
    again = snir.float_model(tmp_path / "b.nir", dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(again(x)["lif2"], model(x)["lif2"])
    snir.to_nir(model.to_graph())  # the wide graph (per-neuron arrays) exports as it is


def test_cli_names_unknown_convention_and_help_lists_every_preset(tmp_path, float_graph, capsys):
    snir.write(float_graph, tmp_path / "g.nir")
    assert cli.main(["compile", str(tmp_path / "g.nir"), "-o", str(tmp_path / "o.npz"), "--convention", "brian"]) == 2
    assert "unknown convention 'brian'" in capsys.readouterr().err
    helptext = cli.build_parser()._subparsers._group_actions[0].choices["compile"].format_help()
    assert all(name in helptext for name in snir.CONVENTIONS)


def test_imported_chain_becomes_training_layers_for_qat(tmp_path):
    torch.manual_seed(1)
    net = SpikingSequential([ConvLIF((1, 8, 8), 4, 3, padding=1, bias=True, weight_gain=3.0),
                             SumPoolLIF((4, 8, 8), 2, v_th=2.0), LIFDense(64, 10, bias=True, weight_gain=3.0),
                             RecurrentLIFDense(10, 6, weight_gain=3.0), LeakyReadout(6, 3, v_scale=2.0)]).eval()
    snir.write(net.to_ir(1e-3), tmp_path / "n.nir")
    seq = snir.to_sequential(snir.read(tmp_path / "n.nir")).eval()
    x = torch.as_tensor(_spikes((2, 12, 64)), dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(seq(x), net(x))
        seq.set_qat()  # quantization-aware mode: exactly the deployed network
        qat = seq(x)
    r = sim.run(compile_graph(snir.read(tmp_path / "n.nir")), x.numpy().astype(np.int64), record_state=["lif5"])
    scale = seq.layers[-1].quantize()[2].scale
    np.testing.assert_allclose(qat.numpy(), r.v["lif5"] / scale, rtol=1e-6, atol=1e-6)
    with pytest.raises(snir.NIRError, match="not one link of a chain"):
        snir.to_sequential(snir.from_nir(_graph(extra=nir.Linear(np.ones((2, 2))),
                                                edges=[("input", "fc"), ("fc", "lif"), ("input", "extra"),
                                                       ("extra", "lif"), ("lif", "output")]), 1e-3,
                                         convention="nir"))


def test_compile_report_says_how_populations_were_split(tmp_path, capsys):
    n = 6
    tau = np.where(np.arange(n) < 3, 2e-3, 6e-3)
    ng = nir.NIRGraph(nodes={"x": nir.Input({"input": np.array([4])}), "fc": nir.Linear(np.ones((n, 4))),
                             "lif": nir.LIF(tau=tau, r=tau / 1e-3, v_leak=np.zeros(n), v_threshold=np.ones(n),
                                            v_reset=np.zeros(n)),
                             "o": nir.Output({"output": np.array([n])})},
                      edges=[("x", "fc"), ("fc", "lif"), ("lif", "o")])
    nir.write(tmp_path / "p.nir", ng)
    assert cli.main(["compile", str(tmp_path / "p.nir"), "-o", str(tmp_path / "p.npz"), "--convention", "snntorch",
                     "--dt", "1e-3"]) == 0
    assert "note: population 'lif': per-neuron time constants split into 2 populations" in capsys.readouterr().out
    assert cli.main(["info", str(tmp_path / "p.npz")]) == 0
    assert "split into 2" in capsys.readouterr().out


def test_mutated_exports_raise_typed_errors_only():
    """Edges dropped or added, nodes removed, parameters replaced by junk: a NIRError or a graph."""
    import copy
    import random

    base = snir.to_nir(_conv_net().to_ir(1e-3))
    rng = random.Random(0)
    junk = [np.array([]), np.zeros((3, 3)), np.full(5, np.nan), -1, "same", None, np.ones((2, 2, 2, 2)), 0, (0, 0)]
    for _ in range(150):
        g = copy.deepcopy(base)
        nodes, edges = dict(g.nodes), list(g.edges)
        for _ in range(rng.randint(1, 3)):
            op = rng.random()
            if op < 0.25 and edges:
                edges.pop(rng.randrange(len(edges)))
            elif op < 0.45:
                edges.append((rng.choice(list(nodes)), rng.choice(list(nodes))))
            elif op < 0.55:
                nodes.pop(rng.choice(list(nodes)))
            else:
                node = nodes[rng.choice(list(nodes))]
                attrs = [a for a in vars(node) if a != "metadata"]
                if attrs:
                    setattr(node, rng.choice(attrs), junk[rng.randrange(len(junk))])
        try:
            mutated = nir.NIRGraph(nodes=nodes, edges=edges, metadata=g.metadata, type_check=False)
        except Exception:  # nir itself refuses to build it: nothing reaches snn2hw
            continue
        try:
            snir.from_nir(mutated)
        except snir.NIRError:
            pass
