"""The spike-matching scale search of post-training quantization (``PTQConfig(scale_search="spikes")``) and
its use by ``snn2hw train`` (the config's ``deploy`` object)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from snn2hw import cli
from snn2hw.backends import sim
from snn2hw.compiler import PTQConfig, calibrate, compile_graph, load_config
from snn2hw.ir import LIF, Conv2d, Dense, Graph, Input, Population
from snn2hw.quantize import QuantizationError


def _unit_spread_conv_graph(seed=0):
    """1x8x8 -> conv 6c3 whose channels' weights span 60x (what per-unit calibration makes) -> 6x6x6 LIF -> 10.
    The largest channel forces the conv's scale down by a power of two (the fold), which leaves the
    largest weight near half of the mantissa's range."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, 1, 3, 3, generator=g, dtype=torch.float64) * 0.3
    w *= torch.tensor([0.15, 0.4, 1.0, 2.0, 4.0, 9.0], dtype=torch.float64)[:, None, None, None]
    w[5, 0, 1, 1] = 5.2  # sets the fold: 2**k just above the mantissa's limit
    w2 = torch.randn(10, 216, generator=g, dtype=torch.float64) * 0.15
    neuron = LIF(0.25, 0.1, 0.5, np.zeros(216))
    return Graph((Input("in", 64),),
                 (Population("h", 216, neuron), Population("o", 10, LIF(0.25, 0.1, 1.0, np.zeros(10)))),
                 (Conv2d("conv", "in", "h", w.numpy(), (1, 8, 8), (6, 6, 6)),
                  Dense("fc", "h", "o", w2.numpy())), ("o",), 1e-3).validate()


def _inputs(n, seed=1, steps=30):
    return (np.random.default_rng(seed).random((n, steps, 64)) < 0.3).astype(np.int64)


def _count_error(art, graph, x):
    ref = calibrate(graph, x)
    res = sim.run(sim.prepare(art), x, record=[p.name for p in graph.populations], count_events=False)
    return {p.name: float(np.abs(np.asarray(res.spikes[p.name]).sum(1) - ref.counts[p.name]).mean())
            for p in graph.populations}


def test_spike_search_matches_float_spikes_better_than_the_power_of_two_scale():
    graph = _unit_spread_conv_graph()
    x = _inputs(64)
    plain = compile_graph(graph, ptq=PTQConfig(), calibration_inputs=x)
    searched = compile_graph(graph, ptq=PTQConfig(scale_search="spikes"), calibration_inputs=x)
    recs = {r["population"]: r for r in searched.provenance["quantization"]}
    h = recs["h"]
    assert h["threshold_chosen_by"] == "spike search"
    # the plan's own target is a candidate, so the chosen one is at least as good on the calibration inputs
    cands = h["scale_search"]["candidates"]
    assert cands[str(h["scale_search"]["chosen"])] == min(cands.values())
    assert str(h["scale_search"]["default"]) in cands
    # the conv population's threshold is not the folded power of two any more, and its weights use the range
    plain_h = {r["population"]: r for r in plain.provenance["quantization"]}["h"]
    assert plain_h["vth"] & (plain_h["vth"] - 1) == 0 and h["vth"] != plain_h["vth"]
    assert h["projections"]["conv"]["used_range"] > plain_h["projections"]["conv"]["used_range"]
    # measured on held-out inputs: fewer spike-count differences in the conv layer and at the output
    held = _inputs(64, seed=7)
    e_plain, e_search = _count_error(plain, graph, held), _count_error(searched, graph, held)
    assert e_search["h"] < 0.8 * e_plain["h"], (e_search, e_plain)
    assert e_search["o"] <= e_plain["o"], (e_search, e_plain)


def test_spike_search_needs_calibration_and_validates_its_settings(tmp_path):
    graph = _unit_spread_conv_graph()
    with pytest.raises(QuantizationError, match="needs calibration inputs"):
        compile_graph(graph, ptq=PTQConfig(scale_search="spikes"))
    with pytest.raises(QuantizationError, match="scale_search 'fast'"):
        PTQConfig(scale_search="fast")
    with pytest.raises(QuantizationError, match="needs search=True"):
        PTQConfig(search=False, scale_search="spikes")
    with pytest.raises(QuantizationError, match="scale_steps"):
        PTQConfig(scale_steps=0)
    p = tmp_path / "q.json"
    p.write_text(json.dumps({"scale_search": "spikes", "scale_steps": 4, "layers": {"o": {"threshold_target": 512}}}))
    cfg = load_config(p)
    assert cfg.scale_search == "spikes" and cfg.scale_steps == 4
    art = compile_graph(graph, ptq=cfg, calibration_inputs=_inputs(16))
    recs = {r["population"]: r for r in art.provenance["quantization"]}
    assert recs["o"]["threshold_target"] == 512 and recs["o"]["threshold_chosen_by"] == "override"
    assert recs["h"]["threshold_chosen_by"] == "spike search"


def test_train_deploys_with_the_configured_quantizer(tmp_path):
    torch.set_num_threads(1)
    cfg = {"model": {"hidden": [16]}, "data": {"steps": 10}, "trainer": {"batch_size": 128, "lr": 5e-3},
           "deploy": {"scale_search": "spikes", "scale_steps": 1, "calibration_samples": 16}}
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    out = tmp_path / "run"
    assert cli.main(["train", "--task", "digits", "--rule", "bptt", "--config", str(path), "--epochs", "1",
                     "--quiet", "--out", str(out)]) == 0
    r = json.loads((out / "results.json").read_text())
    dq = r["deploy_quantization"]
    assert dq["ptq"]["scale_search"] == "spikes" and dq["calibration_samples"] == 16
    assert set(dq["threshold_targets"]) == {"lif1", "lif2"}
    # the deployed network is the quantizer with the better validation accuracy (ties: the straight one)
    chosen = "ptq" if r["deployed_ptq_val_accuracy"] > r["deployed_straight_val_accuracy"] else "straight"
    assert dq["chosen"] == chosen and r["deployed_test_accuracy"] == r[f"deployed_{chosen}_test_accuracy"]
    path.write_text(json.dumps({**cfg, "deploy": {"scale_serch": "spikes"}}))
    assert cli.main(["train", "--task", "digits", "--config", str(path), "--epochs", "1", "--quiet",
                     "--out", str(out)]) == 2
