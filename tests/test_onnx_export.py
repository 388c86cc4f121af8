"""ONNX export: onnxruntime on the exported integer model equals snn2hw's simulator on every spike, u and v
of every population at every step -- for every construct of the golden traces (dense, graded dense,
recurrent, delays, conv, pool, sparse, fan-in/skip, overflow edges) and for the demo network on digits
(random networks: ``test_onnx_random.py``, next to the generators of the Lava differential tests). The
float export equals the PyTorch forward. Every model passes ``onnx.checker`` with full checking
(``make_model`` runs it)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

pytest.importorskip("onnxruntime")

from snn2hw import artefact  # noqa: E402
from snn2hw.backends import sim  # noqa: E402
from snn2hw.compiler import compile_graph  # noqa: E402
from snn2hw.ir import Graph  # noqa: E402
from snn2hw.onnx import OPSET, OnnxExportError, export_float, export_integer, run_sequence, run_steps  # noqa: E402
from snn2hw.onnx.builder import metadata  # noqa: E402

GOLDEN = Path(__file__).parent / "golden"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "graph.npz").is_file())


def assert_equal_runs(graph: Graph, x: dict, got, what: str) -> None:
    names = [p.name for p in graph.populations]
    ref = sim.run(graph, x, record=names, record_state=names)
    for name in names:
        for kind in ("spikes", "u", "v"):
            a = getattr(ref, kind)[name].astype(np.int64)
            b = getattr(got, kind)[name].astype(np.int64)
            assert a.shape == b.shape, f"{what}: {kind} of {name!r}: shape {a.shape} vs {b.shape}"
            if not np.array_equal(a, b):
                s, t, n = (int(i) for i in np.argwhere(a != b)[0])
                pytest.fail(f"{what}: {kind} of {name!r} differ first at sample {s}, step {t}, neuron {n}: "
                            f"sim {a[s, t, n]}, onnxruntime {b[s, t, n]}")


def check_both(graph: Graph, x: dict, what: str) -> None:
    seq = export_integer(graph, record_state=True)
    assert_equal_runs(graph, x, run_sequence(seq, x), f"{what} (sequence)")
    assert_equal_runs(graph, x, run_steps(export_integer(graph, kind="step"), x), f"{what} (step)")


@pytest.mark.parametrize("case", CASES)
def test_golden_constructs_equal_simulator(case):
    d = GOLDEN / case
    g = artefact.load(d / "graph.npz").graph
    x = {i.name: np.load(d / f"input.{i.name}.npy").astype(np.int64) for i in g.inputs}
    check_both(g, x, case)


def test_models_are_integer_only_and_checked(tmp_path):
    g = artefact.load(GOLDEN / "conv" / "graph.npz").graph
    for kind in ("sequence", "step"):
        m = export_integer(g, kind=kind)
        onnx.checker.check_model(m, full_check=True)
        assert m.opset_import[0].version == OPSET
        graphs = [m.graph] + [a.g for n in m.graph.node for a in n.attribute if a.type == onnx.AttributeProto.GRAPH]
        float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16}
        for gr in graphs:
            assert not any(t.data_type in float_types for t in gr.initializer)
            assert not any(n.op_type in ("Conv", "Cast") and any(a.name == "to" and a.i in float_types
                                                                 for a in n.attribute) for n in gr.node)
        assert metadata(m)["snn2hw.arithmetic"] == "loihi2-integer"
        names = [{v.name for v in (*gr.input, *gr.output, *gr.initializer)} | {o for n in gr.node for o in n.output}
                 for gr in graphs]
        assert all(not (names[0] & inner) for inner in names[1:]), "a Scan body name shadows an outer name"


def test_demo_network_equals_simulator():
    from snn2hw.models import digits

    _, _, x_te, _ = digits.load()
    art = compile_graph(digits.build_model(0).to_ir())
    x = x_te[:48].numpy().astype(np.int64)
    g = art.graph
    assert_equal_runs(g, {"in": x}, run_sequence(export_integer(art, record_state=True), x), "demo network")


def test_export_refuses_float_graph():
    from snn2hw.nn.layers import SpikingSequential

    model = SpikingSequential.build([4, 3])
    with pytest.raises(OnnxExportError, match="quantized"):
        export_integer(model.to_ir())


# --- float export ---------------------------------------------------------------------------------------
def _float_model():
    from snn2hw.nn.conv import ConvLIF, Flatten, LeakyReadout, SumPoolLIF
    from snn2hw.nn.layers import LIFDense, RecurrentLIFDense, SpikingSequential

    torch.manual_seed(3)
    conv = ConvLIF((2, 6, 6), 4, 3, padding=1, stride=1, du=0.3, dv=0.05, v_th=0.6, bias=True, weight_gain=3.0)
    pool = SumPoolLIF(conv.out_shape, 2, du=0.5, dv=0.1, v_th=1.5)
    layers = [conv, pool, Flatten(), LIFDense(36, 20, du=0.2, dv=0.1, bias=True, weight_gain=4.0),
              RecurrentLIFDense(20, 12, du=0.25, dv=0.1, weight_gain=4.0, bias=True),
              LeakyReadout(12, 5, du=0.2, dv=0.1)]
    return SpikingSequential(layers).eval()


def test_float_export_equals_pytorch_forward():
    model = _float_model().double()
    x = (torch.rand(5, 15, 72, generator=torch.Generator().manual_seed(0), dtype=torch.float64) < 0.4).double()
    with torch.no_grad():
        outs = model(x, return_all=True)
    m = export_float(model, record_state=True, dtype=np.float64)
    res = run_sequence(m, x.numpy())
    pops = [n for n, _ in __import__("json").loads(metadata(m)["snn2hw.populations"])]
    from snn2hw.nn.conv import Dropout, Flatten

    spiking = [o for layer, o in zip(model.layers[:-1], outs) if not isinstance(layer, (Flatten, Dropout))]
    assert len(pops) == len(spiking) + 1
    for name, want in zip(pops, spiking):
        assert want.sum() > 0, f"{name} silent: the comparison would be weak"
        np.testing.assert_array_equal(res.spikes[name], want.numpy().astype(np.uint8), err_msg=name)
    np.testing.assert_allclose(res.v[pops[-1]], outs[-1].numpy(), rtol=1e-9, atol=1e-9)
    # float32: the same network to float32 tolerance on the read-out
    m32 = export_float(_float_model(), record_state=True)
    with torch.no_grad():
        want32 = _float_model()(x.float())
    got32 = run_sequence(m32, x.numpy().astype(np.float32)).v[pops[-1]]
    assert np.mean(np.abs(got32 - want32.numpy()) <= 1e-4 * (1 + np.abs(want32.numpy()))) > 0.99


# --- CLI ------------------------------------------------------------------------------------------------
def test_cli_export_onnx_writes_checked_models(tmp_path):
    from snn2hw.cli import main
    from snn2hw.models import digits
    from snn2hw.train.checkpoint import save_checkpoint

    model = digits.build_model(0)
    art = compile_graph(model.to_ir())
    artefact.save(art, tmp_path / "d.s2h.npz")
    save_checkpoint(model, tmp_path / "d.ckpt")
    assert main(["export-onnx", str(tmp_path / "d.s2h.npz"), "-o", str(tmp_path / "d.onnx")]) == 0
    seq, step = onnx.load(str(tmp_path / "d.onnx")), onnx.load(str(tmp_path / "d.step.onnx"))
    for m in (seq, step):
        onnx.checker.check_model(m, full_check=True)
    x = (np.random.default_rng(0).random((3, 10, 64)) < 0.3).astype(np.int64)
    want = sim.run(art, x).spikes["lif2"]
    np.testing.assert_array_equal(run_sequence(seq, x).spikes["lif2"], want)
    np.testing.assert_array_equal(run_steps(step, x).spikes["lif2"], want)
    assert main(["export-onnx", "--float", str(tmp_path / "d.ckpt"), "-o", str(tmp_path / "f.onnx"),
                 "--step-output", "none"]) == 0
    assert metadata(onnx.load(str(tmp_path / "f.onnx")))["snn2hw.arithmetic"] == "float32"
    assert not (tmp_path / "f.step.onnx").exists()
    # a checkpoint is not an artefact: one error line, exit 2, nothing written
    assert main(["export-onnx", str(tmp_path / "d.ckpt"), "-o", str(tmp_path / "bad.onnx")]) == 2
    assert not (tmp_path / "bad.onnx").exists()
