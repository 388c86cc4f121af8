"""snn2hw.inspect: compare finds the first divergent step of a bad quantization; report's counts are the
counts; info reads every kind of file; the CLI wraps them (--json, --plots, exit codes)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from snn2hw import artefact, cli
from snn2hw.backends import sim
from snn2hw.compiler import compile_graph
from snn2hw.inspect import build_report, compare, open_source
from snn2hw.inspect.float_ref import run_float
from snn2hw.inspect.metrics import EnergyModel, activity, layer_structure
from snn2hw.ir import LoihiDense
from snn2hw.nn.conv import ConvLIF, Flatten, LeakyReadout
from snn2hw.nn.layers import LIFDense, SpikingSequential
from snn2hw.quantize import QuantConfig
from snn2hw.train.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    d = tmp_path_factory.mktemp("inspect")
    torch.manual_seed(1)
    model = SpikingSequential.build([12, 16, 4], weight_gain=4.0)
    save_checkpoint(model, d / "m.ckpt")
    graph = model.to_ir(1e-3)
    good = compile_graph(graph)
    artefact.save(good, d / "good.npz")
    x = (np.random.default_rng(0).random((6, 20, 12)) < 0.4).astype(np.int64)
    np.save(d / "x.npy", x)
    return d, model, graph, good, x


def _spy_first_divergence(a: np.ndarray, b: np.ndarray):
    steps = np.flatnonzero((a != b).any(axis=(0, 2)))
    return int(steps[0]) if steps.size else None


def test_float_reference_is_the_trained_network(net):
    _, model, graph, _, x = net
    with torch.no_grad():
        outs = model(torch.as_tensor(x, dtype=torch.float32), return_all=True)
    fr = run_float(graph, {"in": x})
    for i, o in enumerate(outs, 1):
        np.testing.assert_array_equal(fr.spikes[f"lif{i}"], o.numpy().astype(np.uint8))


def test_float_reference_conv_and_readout():
    torch.manual_seed(0)
    model = SpikingSequential([ConvLIF((1, 6, 6), 2, 3, padding=1, weight_gain=3.0), Flatten(),
                               LeakyReadout(72, 3)])
    x = (np.random.default_rng(1).random((3, 10, 36)) < 0.5).astype(np.int64)
    with torch.no_grad():
        outs = model(torch.as_tensor(x, dtype=torch.float32), return_all=True)
    fr = run_float(model.to_ir(1e-3), {"in": x})
    np.testing.assert_array_equal(fr.spikes["lif1"], outs[0].numpy().astype(np.uint8))
    np.testing.assert_allclose(fr.v["lif2"], outs[2].numpy(), rtol=1e-4, atol=1e-4)


def test_bad_quantization_found_at_its_first_divergent_step(net):
    """A deliberately bad quantization of the first layer (weights 8x too small: weight_exp - 3) is
    reported in that layer, at the first step where the float and integer rasters differ, and nowhere
    earlier; the good compile agrees with the float network much better."""
    _, _, graph, good, x = net
    p = good.graph.projections[0]
    bad_proj = LoihiDense(p.name, p.src, p.dst, p.weight, p.weight_exp - 3, p.num_weight_bits, p.sign_mode,
                          p.num_message_bits, p.delay, p.sparse)
    bad_graph = type(good.graph)(good.graph.inputs, good.graph.populations, (bad_proj, *good.graph.projections[1:]),
                                 good.graph.outputs, good.graph.dt)
    bad = artefact.Artefact(bad_graph, good.resources, good.provenance)

    c_bad = compare(bad, x, float_graph=graph, backends=("sim",))
    fd = c_bad.first_divergence("sim")
    assert fd is not None and fd["population"] == "lif1"
    # the independent check: run both paths directly
    fr = run_float(graph, {"in": x})
    sr = sim.run(bad, x, record=["lif1", "lif2"])
    t1 = _spy_first_divergence(fr.spikes["lif1"], sr.spikes["lif1"])
    t2 = _spy_first_divergence(fr.spikes["lif2"], sr.spikes["lif2"])
    assert fd["step"] == t1 and (t2 is None or t2 >= t1)
    assert fr.spikes["lif1"][fd["sample"], fd["step"], fd["neuron"]] != sr.spikes["lif1"][fd["sample"], fd["step"], fd["neuron"]]
    assert fd["ref_spike"] == 1 and fd["spike"] == 0  # weights too small: the integer neuron misses a spike
    row_bad = next(r for r in c_bad.rows if r["population"] == "lif1")
    assert row_bad["u_err_lsb_max_to_divergence"] > 0  # u is already off before the spikes part

    c_good = compare(good, x, float_graph=graph, backends=("sim",))
    row_good = next(r for r in c_good.rows if r["population"] == "lif1")
    assert row_good["mismatch_rate"] < row_bad["mismatch_rate"] / 4
    fd_good = c_good.first_divergence("sim")
    assert fd_good is None or fd_good["step"] > fd["step"]
    # good quantization: u within weight rounding before spikes differ; the bad one is far off already
    assert row_good["u_err_lsb_max_to_divergence"] < row_bad["u_err_lsb_max_to_divergence"] / 4


def test_compare_reports_backend_events_and_ranges(net):
    _, _, graph, good, x = net
    c = compare(good, x, float_graph=graph, backends=("sim",))
    d = c.to_dict()
    json.dumps(d)  # JSON-able
    assert {r["population"] for r in d["layers"]} == {"lif1", "lif2"}
    for r in d["layers"]:
        assert 0 <= r["v_range_used"] <= 1 and r["limit_events"] >= 0
        assert len(r["mismatch_per_step"]) == x.shape[1]
    assert "lif1" in c.format_table()


def test_report_counts_synaptic_operations(net):
    _, _, _, good, x = net
    rep = build_report(good, x)
    r = sim.run(good, x, record=["lif1", "lif2"])
    w1, w2 = (np.asarray(p.weight) != 0 for p in good.graph.projections)
    expected = (x.sum(axis=(0, 1)) @ w1.sum(axis=0) + r.spikes["lif1"].sum(axis=(0, 1)) @ w2.sum(axis=0)) / len(x)
    a = rep["activity"]
    assert a["synaptic_operations_per_sample"] == pytest.approx(expected)
    assert a["effective_macs_per_sample"] == 0
    total = r.spikes["lif1"].size + r.spikes["lif2"].size
    nz = np.count_nonzero(r.spikes["lif1"]) + np.count_nonzero(r.spikes["lif2"])
    assert a["activation_sparsity"] == pytest.approx(1 - nz / total)
    em = EnergyModel()
    e = a["synaptic_operations_per_sample"] * em.synop_pj + 20 * 20 * em.neuron_update_pj + a["spikes_per_sample"] * em.spike_pj
    assert a["energy_proxy"]["energy_per_sample_uJ"] == pytest.approx(e * 1e-6)
    assert a["energy_proxy"]["is_proxy"] is True
    rows = {row["population"]: row for row in rep["layers"]}
    assert rows["lif1"]["synapses_in"] == int(w1.sum()) and rows["lif1"]["fan_in_max"] == int(w1.sum(axis=1).max())
    assert rows["lif1"]["fan_out_max"] == int(w2.sum(axis=0).max())
    assert rows["lif1"]["scale"] == pytest.approx(good.provenance["quantization"][0]["scale"])


def test_conv_fan_in_and_fan_out_match_the_dense_equivalent():
    torch.manual_seed(0)
    model = SpikingSequential([ConvLIF((2, 5, 6), 3, 3, stride=2, padding=1, weight_gain=2.0)])
    art = compile_graph(model.to_ir(1e-3))
    rows = layer_structure(art.graph)
    conv = art.graph.projections[0]
    # dense equivalent: push every unit input through the convolution
    eye = torch.eye(60, dtype=torch.float64).reshape(60, 2, 5, 6)
    dense = torch.nn.functional.conv2d(eye, torch.as_tensor(np.asarray(conv.weight) != 0, dtype=torch.float64),
                                       stride=2, padding=1).reshape(60, -1).T  # (dst, src)
    assert rows[0]["synapses_in"] == int(dense.sum())
    assert rows[0]["fan_in_max"] == int(dense.sum(dim=1).max())
    from snn2hw.inspect.metrics import projection_counts

    fi, fo = projection_counts(conv)
    np.testing.assert_array_equal(fi, dense.sum(dim=1).numpy())
    np.testing.assert_array_equal(fo, dense.sum(dim=0).numpy())


def test_info_on_every_kind(net, tmp_path):
    d, model, graph, _, _ = net
    from snn2hw import nir_io

    nir_io.write(graph, tmp_path / "g.nir")
    kinds = {open_source(p).kind for p in (d / "m.ckpt", tmp_path / "g.nir", d / "good.npz")}
    assert kinds == {"checkpoint", "nir", "artefact"}


def run_cli(*argv):
    return cli.main([str(a) for a in argv])


def test_cli_compare_json_plots_and_exit_codes(net, tmp_path, capsys):
    d, *_ = net
    bad = tmp_path / "bad.npz"
    assert run_cli("export", d / "m.ckpt", "-o", tmp_path / "m.nir", "--dt", "1e-3") == 0
    assert run_cli("compile", tmp_path / "m.nir", "-o", bad, "--dt", "1e-3", "--weight-bits", "2") == 0
    capsys.readouterr()
    rc = run_cli("compare", bad, d / "x.npy", "--float", d / "m.ckpt", "--backends", "sim", "--json",
                 "--plots", tmp_path / "plots", "--fail-on-divergence")
    out = json.loads(capsys.readouterr().out)
    assert rc == cli.EXIT_DIVERGENCE
    assert out["first_divergence"]["sim"]["population"] == "lif1"
    for png in out["plots"]:
        assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert run_cli("compare", d / "good.npz", d / "x.npy", "--backends", "sim") == 0  # sim alone: nothing to diverge from
    capsys.readouterr()
    assert run_cli("report", d / "good.npz", d / "x.npy", "--json") == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["activity"]["synaptic_operations_per_sample"] > 0
    assert run_cli("info", d / "m.ckpt", "--json") == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "checkpoint"


def test_cli_json_wraps_plain_output_and_errors(net, tmp_path, capsys):
    d, *_ = net
    assert run_cli("export", d / "m.ckpt", "-o", tmp_path / "o.nir", "--dt", "1e-3", "--json") == 0
    assert json.loads(capsys.readouterr().out)["wrote"].endswith("o.nir")
    assert run_cli("info", tmp_path / "missing.npz", "--json") == 2
    cap = capsys.readouterr()
    assert json.loads(cap.out)["exit_status"] == 2 and cap.err.startswith("snn2hw: error:")


@pytest.mark.parametrize("argv", [
    ["export", "{ckpt}", "-o", "{d}/o.nir", "--dt", "0"],
    ["export", "{ckpt}", "-o", "{d}/o.nir", "--dt", "-1e-3"],
    ["export", "{ckpt}", "-o", "{d}/o.nir", "--dt", "nan"],
])
def test_bad_options_exit_2_and_write_nothing(net, tmp_path, capsys, argv):
    d, _, graph, _, _ = net
    from snn2hw import nir_io

    nir_io.write(graph, tmp_path / "g.nir")
    argv = [a.format(d=tmp_path, nir=tmp_path / "g.nir", ckpt=d / "m.ckpt") for a in argv]
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert not (tmp_path / "o.npz").exists() and not (tmp_path / "o.nir").exists()


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    import snn2hw

    assert capsys.readouterr().out.strip() == f"snn2hw {snn2hw.__version__}"


def test_run_on_a_readout_network_reports_v_not_zero_spikes(tmp_path, capsys):
    torch.manual_seed(0)
    model = SpikingSequential([LIFDense(6, 8, weight_gain=3.0), LeakyReadout(8, 3)])
    art = compile_graph(model.to_ir(1e-3))
    artefact.save(art, tmp_path / "r.npz")
    np.save(tmp_path / "x.npy", (np.random.default_rng(0).random((2, 10, 6)) < 0.5).astype(np.int64))
    assert run_cli("run", tmp_path / "r.npz", tmp_path / "x.npy", "-o", tmp_path / "o.npz") == 0
    out = capsys.readouterr().out
    assert "non-spiking read-out" in out and "0 spikes" not in out
    with np.load(tmp_path / "o.npz") as z:
        assert z["v/lif2"].shape == (2, 10, 3)


def test_ci_switch_turns_missing_lava_into_a_failure(tmp_path):
    """With SNN2HW_REQUIRE_LAVA=1 a Lava that does not import stops the run; without it, Lava tests skip."""
    fake = tmp_path / "fake"
    (fake / "lava").mkdir(parents=True)
    (fake / "lava" / "__init__.py").write_text("raise ModuleNotFoundError('lava is missing on purpose', name='lava')\n")
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "conftest.py").write_text((Path(__file__).parent / "conftest.py").read_text())
    (suite / "test_l.py").write_text("import pytest\n\n@pytest.mark.lava\ndef test_l():\n    pytest.importorskip('lava')\n")
    (suite / "pytest.ini").write_text("[pytest]\nmarkers =\n    lava: lava\n")
    env = {**os.environ, "PYTHONPATH": str(fake)}
    env.pop("SNN2HW_REQUIRE_LAVA", None)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(suite)]
    relaxed = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=suite)
    assert relaxed.returncode == 0 and "1 skipped" in relaxed.stdout
    strict = subprocess.run(cmd, env={**env, "SNN2HW_REQUIRE_LAVA": "1"}, capture_output=True, text=True, cwd=suite)
    assert strict.returncode != 0
    assert "SNN2HW_REQUIRE_LAVA=1 but Lava does not import" in strict.stdout + strict.stderr
    # a Lava that is installed but broken (ImportError from inside it) fails as well
    (fake / "lava" / "__init__.py").write_text("raise ImportError('lava is broken on purpose')\n")
    broken = subprocess.run(cmd, env={**env, "SNN2HW_REQUIRE_LAVA": "1"}, capture_output=True, text=True, cwd=suite)
    assert broken.returncode != 0


def test_required_lava_skip_becomes_failure(tmp_path):
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "conftest.py").write_text((Path(__file__).parent / "conftest.py").read_text())
    (suite / "test_l.py").write_text("import pytest\n\n@pytest.mark.lava\ndef test_l():\n    pytest.skip('no chip')\n")
    (suite / "pytest.ini").write_text("[pytest]\nmarkers =\n    lava: lava\n")
    env = {**os.environ, "SNN2HW_REQUIRE_LAVA": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(suite)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=suite)
    if "Lava does not import" in r.stdout + r.stderr:
        pytest.skip("Lava is not installed here; the import check is covered by the test above")
    assert r.returncode != 0 and "1 failed" in r.stdout


@pytest.mark.lava
def test_compare_sim_equals_lava(net):
    pytest.importorskip("lava")
    _, _, graph, good, x = net
    c = compare(good, x[:2], float_graph=graph, backends=("sim", "lava"))
    assert c.backend_agreement()["identical"]


def test_demo_table_says_why_lava_did_not_run():
    from snn2hw.pipeline import format_table

    row = {"task": "t", "float_accuracy": 0.9, "sim_accuracy": 0.9, "float_to_deployed_drop_pp": 0.0, "lava": None,
           "lava_not_run": "--no-lava", "resources": {"neurons": 1, "synapses": 1, "cores": 1, "inputs": 1},
           "sim_events": {"lif1": {"v_saturation": 3}}, "wall_time_s": {"sim": 1.0}}
    text = format_table(row)
    assert "not run (--no-lava)" in text and "Python 3.10" not in text
    assert "v_saturation" in text and "compare" in text  # the saturation count comes with what it means
