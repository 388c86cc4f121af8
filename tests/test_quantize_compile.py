"""Quantization, design rules, allocation and the artefact file."""
import dataclasses

import numpy as np
import pytest
import torch

from snn2hw import artefact
from snn2hw.compiler import CoreLimits, DesignRuleError, compile_graph, design_rule_violations
from snn2hw.hw import loihi2 as hw
from snn2hw.ir import LoihiLIF
from snn2hw.quantize import (QuantizationError, decay_u_int, decay_v_int, dequantize_weights,
                             quantize_graph, quantize_weights, weight_exponent)


def test_decay_mapping_edges():
    assert decay_u_int(0.0) == -1 and decay_u_int(1.0) == 4095 and decay_u_int(0.25) == 1023
    assert decay_v_int(0.0) == 0 and decay_v_int(1.0) == 4095 and decay_v_int(0.1) == 410


def test_quantized_weights_are_on_lavas_grid_and_close(float_graph):
    q, report = quantize_graph(float_graph)
    for p in q.projections:
        w = torch.as_tensor(p.weight)
        # Lava's own clip/truncate must not change them
        assert torch.equal(hw.prepare_weights(w, hw.SignMode(p.sign_mode), p.num_weight_bits), w)
        assert w.abs().max() >= 128  # the exponent search uses the mantissa's top bit
    for r in report:
        assert r.vth == 1024
        assert all(err <= 2 / 254 for err in r.max_weight_error.values())


def test_dequantized_dynamics_scale():
    w = torch.tensor([[0.5, -0.25, 0.01]])
    e = weight_exponent(0.5, 64.0 * 1024, hw.SignMode.MIXED, 8, (-8, 7))
    assert e == 2  # 0.5 * 1024 = 512 units -> 128 << 2
    q = quantize_weights(w, scale=64.0 * 1024, weight_exp=e, sign_mode=hw.SignMode.MIXED, num_weight_bits=8)
    assert q.tolist() == [[128.0, -64.0, 2.0]]
    assert torch.allclose(dequantize_weights(q, 64.0 * 1024, e), w, atol=4 / 1024)


def test_bias_is_quantized_with_exponent(float_graph):
    big = dataclasses.replace(float_graph.populations[0],
                              neuron=dataclasses.replace(float_graph.populations[0].neuron, bias=np.full(5, 3.0)))
    g = dataclasses.replace(float_graph, populations=(big, float_graph.populations[1]))
    q, _ = quantize_graph(g)
    n = q.populations[0].neuron
    eff = hw.effective_bias(torch.as_tensor(n.bias_mant), torch.as_tensor(n.bias_exp))
    assert np.all(np.abs(n.bias_mant) <= 4095)
    assert abs(int(eff[0]) - 3.0 * 64 * 1024) <= 2 ** int(n.bias_exp[0])


def test_nonpositive_threshold_rejected(float_graph):
    pop = float_graph.populations[0]
    bad = dataclasses.replace(pop, neuron=dataclasses.replace(pop.neuron, v_th=0.0))
    with pytest.raises(QuantizationError, match="threshold"):
        quantize_graph(dataclasses.replace(float_graph, populations=(bad, float_graph.populations[1])))


def test_design_rules_report_every_violation(float_graph):
    q, _ = quantize_graph(float_graph)
    bad_pop = dataclasses.replace(q.populations[0], neuron=LoihiLIF(-2, 5000, 2**17, np.full(5, 5000), np.zeros(5, int)))
    bad_proj = dataclasses.replace(q.projections[1], delay=64, weight_exp=9)
    g = dataclasses.replace(q, populations=(bad_pop, q.populations[1]), projections=(q.projections[0], bad_proj))
    v = design_rule_violations(g)
    text = "\n".join(v)
    for needle in ("du -2", "dv 5000", "vth 131072", "bias_mant", "delay 64", "weight_exp 9"):
        assert needle in text
    with pytest.raises(DesignRuleError) as exc:
        compile_graph(g)
    assert len(exc.value.violations) == 6


def test_allocation_counts_cores(float_graph):
    art = compile_graph(float_graph, limits=CoreLimits(neurons_per_core=2))
    assert art.resources["cores"] == 3 + 2  # 5 neurons -> 3 cores, 3 neurons -> 2 cores
    with pytest.raises(DesignRuleError, match="chips"):
        compile_graph(float_graph, limits=CoreLimits(neurons_per_core=1, cores_per_chip=4, chips_per_board=1))
    two_chips = compile_graph(float_graph, limits=CoreLimits(neurons_per_core=1, cores_per_chip=4))
    assert two_chips.resources["chips"] == 2


def test_artefact_roundtrip(tmp_path, float_graph):
    art = compile_graph(float_graph, provenance={"source": "test"})
    path = tmp_path / "net.npz"
    artefact.save(art, path)
    back = artefact.load(path)
    assert back.resources == art.resources and back.provenance["source"] == "test"
    for a, b in zip(art.graph.projections, back.graph.projections):
        assert np.array_equal(a.weight, b.weight) and a.weight_exp == b.weight_exp and a.delay == b.delay
    assert [p.neuron.vth for p in back.graph.populations] == [p.neuron.vth for p in art.graph.populations]


def test_artefact_errors(tmp_path, float_graph):
    with pytest.raises(artefact.ArtefactError, match="no such"):
        artefact.load(tmp_path / "missing.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(artefact.ArtefactError, match="not an snn2hw artefact"):
        artefact.load(junk)
    other = tmp_path / "other.npz"
    np.savez(other, x=np.arange(3))
    with pytest.raises(artefact.ArtefactError, match="no header"):
        artefact.load(other)
    # a future version is refused
    art = compile_graph(float_graph)
    path = tmp_path / "v.npz"
    artefact.save(art, path)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    import json
    meta = json.loads(arrays["__meta__"].tobytes())
    meta["version"] = 99
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(path, **arrays)
    with pytest.raises(artefact.ArtefactError, match="version 99"):
        artefact.load(path)


def test_failed_save_leaves_nothing(tmp_path, float_graph, monkeypatch):
    path = tmp_path / "net.npz"

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError):
        artefact.save(compile_graph(float_graph), path)
    assert list(tmp_path.iterdir()) == []
