"""The compiler package: passes and pass log, resource model, design-rule table, placement, PTQ,
artefact re-validation, content-detected sources and the compile/check CLI."""
import dataclasses
import json
import os
import re

import numpy as np
import pytest
import torch

from snn2hw import artefact, cli, nir_io
from snn2hw.compiler import (LOIHI2, PASSES, CoreLimits, DesignRuleError, PTQConfig, allocate, calibrate, check,
                             compile_graph, format_table, load_config, run_passes)
from snn2hw.compiler.resources import LIMIT_SOURCES, LimitError
from snn2hw.compiler.sources import SourceError, kind_of, load_graph
from snn2hw.ir import LIF, Conv2d, Dense, Graph, GraphError, Input, Population
from snn2hw.nn.layers import SpikingSequential
from snn2hw.quantize import QuantizationError
from snn2hw.train.checkpoint import save_checkpoint


def dense_net(sizes, std=0.3, seed=0, weight=None):
    rng = np.random.default_rng(seed)
    pops, projs = [], []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        pops.append(Population(f"l{i + 1}", b, LIF(0.2, 0.1, 1.0, np.zeros(b))))
        w = np.full((b, a), weight) if weight is not None else rng.normal(0, std, (b, a))
        projs.append(Dense(f"fc{i + 1}", "in" if i == 0 else f"l{i}", f"l{i + 1}", w))
    return Graph((Input("in", sizes[0]),), tuple(pops), tuple(projs), (f"l{len(sizes) - 1}",)).validate()


# --- passes -------------------------------------------------------------------------------------------
def test_passes_run_in_order_are_pure_and_logged(float_graph):
    before = [p.weight.copy() for p in float_graph.projections]
    q = run_passes(float_graph, until="quantize")
    assert q.graph.is_quantized and q.placement is None and [e["pass"] for e in q.log] == list(PASSES[:3])
    assert all(np.array_equal(a, p.weight) for a, p in zip(before, float_graph.projections))  # input untouched
    art = compile_graph(float_graph)
    assert [e["pass"] for e in art.provenance["passes"]] == list(PASSES)
    rec = {r["population"]: r for r in art.provenance["quantization"]}
    assert rec["h"]["projections"]["fc1"]["weight_exp"] == art.graph.projections[0].weight_exp
    assert art.resources["placement"]["cores"][0]["population"] == "h"


def test_limits_are_named_sourced_and_validated():
    assert set(LIMIT_SOURCES) == {f.name for f in dataclasses.fields(CoreLimits)}
    assert LOIHI2.cores_per_chip == 128 and LOIHI2.neurons_per_core == 8192 and LOIHI2.synapses_per_chip == 120_000_000
    for bad in ({"neurons_per_core": 0}, {"neurons_per_core": -5}, {"boards": 1.5}):
        with pytest.raises(LimitError):
            CoreLimits(**bad)
    with pytest.raises(LimitError, match="unknown limit"):
        LOIHI2.replace(cores=3)


# --- allocation ---------------------------------------------------------------------------------------
def test_issue_example_dense_2000_2000_2000_fits_one_chip():
    g = dense_net([2000, 2000, 2000], weight=0.01)  # 8M synapses
    p = allocate(g, LOIHI2)
    assert not p.violations and p.chips == 1
    per = p.per_population()
    assert sum(d["synapses"] for d in per.values()) == 8_000_000
    for c in p.cores:  # every core within every limit
        assert c.neurons <= 8192 and c.memory_bits <= LOIHI2.synaptic_memory_bits_per_core
        assert c.input_axons <= LOIHI2.input_axons_per_core and c.output_routes <= LOIHI2.output_routes_per_core
    # memory bound: 2000 x 2000 x 8 bits per layer over 1 Mbit cores -> at least 31 cores, and no more
    assert per["l1"]["cores"] == per["l2"]["cores"] == 31
    covered = sorted((c.start, c.stop) for c in p.cores if c.population == "l2")
    assert covered[0][0] == 0 and covered[-1][1] == 2000 and all(a[1] == b[0] for a, b in zip(covered, covered[1:]))


def test_multi_chip_placement_and_the_chip_limit():
    g = dense_net([64, 300, 300, 10], std=0.1)
    limits = CoreLimits(neurons_per_core=20, cores_per_chip=16)
    p = allocate(g, limits)
    assert p.chips == 2 and not p.violations
    assert {c.chip for c in p.cores} == {0, 1}
    assert sum(t["inter_chip_routes"] for t in p.traffic.values()) > 0
    rows = allocate(g, limits.replace(chips_per_board=1)).violations
    assert [v.rule for v in rows] == ["chips"] and "2 chips" in rows[0].measured


def test_route_tables_force_a_finer_split_of_the_source():
    g = dense_net([8, 64, 64], std=0.1)
    limits = CoreLimits(neurons_per_core=64, synaptic_memory_bits_per_core=64 * 8 * 8, output_routes_per_core=100)
    p = allocate(g, limits)  # l2 needs 8 cores; 64 l1 neurons x 8 routes would overflow one l1 core
    assert not p.violations
    assert all(c.output_routes <= 100 for c in p.cores) and p.per_population()["l1"]["cores"] > 1


def test_conv_memory_counts_the_shared_kernel_once_per_core():
    w = np.random.default_rng(0).normal(0, 0.3, (4, 2, 3, 3))
    conv = Conv2d("c", "in", "h", w, (2, 8, 8), padding=1)
    g = Graph((Input("in", 128),), (Population("h", 256, LIF(0.2, 0.1, 1.0, np.zeros(256))),), (conv,), ("h",)).validate()
    (core,) = allocate(g).cores
    assert core.memory_bits == 4 * 2 * 3 * 3 * 8 and core.input_axons == 128
    two = allocate(g, CoreLimits(neurons_per_core=128)).cores  # two channels per core
    assert [c.memory_bits for c in two] == [2 * 18 * 8] * 2 and sum(c.synapses for c in two) == core.synapses


# --- design rules -------------------------------------------------------------------------------------
def test_every_violation_in_one_table_including_nan_and_resources():
    g = dense_net([300, 20, 5], std=0.2)
    w = g.projections[0].weight.copy()
    w[3, 4], w[0, 0] = np.nan, np.inf
    pop = dataclasses.replace(g.populations[1], neuron=dataclasses.replace(g.populations[1].neuron, du=1.5))
    g = dataclasses.replace(g, populations=(g.populations[0], pop),
                            projections=(dataclasses.replace(g.projections[0], weight=w),
                                         dataclasses.replace(g.projections[1], delay=99)))
    rows = check(g, CoreLimits(input_axons_per_core=256))
    rules = {(v.rule, v.layer) for v in rows}
    assert {("non-finite weight", "fc1"), ("du", "l2"), ("delay", "fc2"), ("fan-in (input axons)", "l1")} <= rules
    nan = next(v for v in rows if v.rule == "non-finite weight")
    assert "1 NaN" in nan.measured and "1 +inf" in nan.measured and "inf at index [0, 0]" in nan.measured
    table = format_table(rows)
    assert table.splitlines()[0].split() == ["rule", "layer", "measured", "limit", "suggested", "fix"]
    with pytest.raises(DesignRuleError) as exc:
        compile_graph(g, limits=CoreLimits(input_axons_per_core=256))
    assert len(exc.value.violations) == len(rows)


# --- PTQ ----------------------------------------------------------------------------------------------
def test_exponent_search_clips_at_most_the_set_fraction_and_lowers_the_error():
    rng = np.random.default_rng(1)
    w = rng.normal(0, 0.1, (40, 50))
    w[0, 0] = 2.0  # one outlier sets the no-clipping exponent
    g = Graph((Input("in", 50),), (Population("h", 40, LIF(0.2, 0.1, 1.0, np.zeros(40))),),
              (Dense("fc", "in", "h", w),), ("h",)).validate()
    straight = compile_graph(g)
    searched = compile_graph(g, ptq=PTQConfig(clip_fraction=0.001))
    rec = searched.provenance["quantization"][0]["projections"]["fc"]
    assert rec["chosen_by"] == "search" and rec["clipped_fraction"] <= 0.001
    assert searched.graph.projections[0].weight_exp < straight.graph.projections[0].weight_exp

    def rms(art):
        p, scale = art.graph.projections[0], art.provenance["quantization"][0]["scale"]
        deq = p.weight * (64 * 2.0 ** p.weight_exp / scale)
        return float(np.sqrt(np.mean((np.delete(deq.ravel(), 0) - np.delete(w.ravel(), 0)) ** 2)))

    assert rms(searched) < 0.6 * rms(straight)
    none = compile_graph(g, ptq=PTQConfig(clip_fraction=0.0))
    assert none.graph.projections[0].weight_exp == straight.graph.projections[0].weight_exp


def test_calibration_sets_threshold_targets_and_overrides_win(tmp_path, float_graph):
    x = (np.random.default_rng(0).random((16, 30, 6)) < 0.4).astype(np.float64)
    cal = calibrate(float_graph, x)
    assert cal.rates["in"].shape == (6,) and cal.peak_v["h"] > 0
    art = compile_graph(float_graph, ptq=PTQConfig(), calibration_inputs=x)
    recs = {r["population"]: r for r in art.provenance["quantization"]}
    t, peak = recs["h"]["threshold_target"], max(cal.peak_u["h"], cal.peak_v["h"], 1.0)
    assert recs["h"]["threshold_chosen_by"] == "calibration" and t & (t - 1) == 0  # a power of two
    assert t * 64 * peak * PTQConfig().headroom <= 2**23 < 2 * t * 64 * peak * PTQConfig().headroom or t == 2**13
    cfg = tmp_path / "q.json"
    cfg.write_text(json.dumps({"clip_fraction": 0.01, "layers": {"h": {"threshold_target": 512, "num_weight_bits": 6},
                                                                 "fc2": {"weight_exp": 3}}}))
    ptq = load_config(cfg)
    art = compile_graph(float_graph, ptq=ptq, calibration_inputs=x)
    recs = {r["population"]: r for r in art.provenance["quantization"]}
    assert recs["h"]["threshold_target"] == 512 and art.graph.projections[0].num_weight_bits == 6
    assert art.graph.projections[1].weight_exp == 3 and recs["o"]["projections"]["fc2"]["chosen_by"] == "override"
    cfg.write_text(json.dumps({"layers": {"nope": {"weight_exp": 1}}}))
    with pytest.raises(QuantizationError, match="unknown layer 'nope'"):
        compile_graph(float_graph, ptq=load_config(cfg))
    cfg.write_text(json.dumps({"clip": 0.1}))
    with pytest.raises(QuantizationError, match="unknown setting"):
        load_config(cfg)


# --- artefact -----------------------------------------------------------------------------------------
def _rewrite(path, edit):
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays["__meta__"].tobytes())
    edit(meta, arrays)
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(path, **arrays)


def test_load_revalidates_values_and_names_newer_and_corrupt_files(tmp_path, float_graph):
    path = tmp_path / "a.npz"
    artefact.save(compile_graph(float_graph), path)
    _rewrite(path, lambda m, a: a.__setitem__("pop/h/bias_mant", a["pop/h/bias_mant"] * 0 + 50_000))
    with pytest.raises(artefact.ArtefactError, match="outside what Loihi 2 holds.*'h'.*bias_mant"):
        artefact.load(path)
    artefact.save(compile_graph(float_graph), path)
    _rewrite(path, lambda m, a: m["populations"][1].update(du=5000))
    with pytest.raises(artefact.ArtefactError, match="du 5000"):
        artefact.load(path)
    artefact.save(compile_graph(float_graph), path)
    _rewrite(path, lambda m, a: m["projections"][1].update(delay=99))
    with pytest.raises(artefact.ArtefactError, match="delay 99"):
        artefact.load(path)
    artefact.save(compile_graph(float_graph), path)
    _rewrite(path, lambda m, a: m.update(version=7))
    with pytest.raises(artefact.ArtefactError, match="newer snn2hw"):
        artefact.load(path)
    artefact.save(compile_graph(float_graph), path)
    _rewrite(path, lambda m, a: m["populations"][0].update(size="five"))
    with pytest.raises(artefact.ArtefactError, match="corrupt artefact.*five"):
        artefact.load(path)
    artefact.save(compile_graph(float_graph), path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = b"\0" * 64  # damage the compressed stream
    path.write_bytes(bytes(data))
    with pytest.raises(artefact.ArtefactError):
        artefact.load(path)


def test_writes_fsync_file_and_directory(tmp_path, float_graph, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    artefact.save(compile_graph(float_graph), tmp_path / "a.npz")
    assert len(synced) >= 2 and artefact.load(tmp_path / "a.npz").graph.is_quantized


# --- sources and CLI ----------------------------------------------------------------------------------
@pytest.fixture
def files(tmp_path, float_graph):
    torch.manual_seed(0)
    ckpt = tmp_path / "model.nir"  # a checkpoint under a misleading name: detected by content
    save_checkpoint(SpikingSequential.build([6, 5, 3], weight_gain=3.0), ckpt)
    nir_path = tmp_path / "graph.ckpt"
    nir_io.write(float_graph, nir_path)
    config = tmp_path / "train.json"
    config.write_text(json.dumps({"epochs": 3, "model": SpikingSequential.build([6, 5, 3]).config()}))
    return tmp_path, ckpt, nir_path, config


def test_sources_are_recognised_by_content(files):
    d, ckpt, nir_path, config = files
    assert (kind_of(ckpt), kind_of(nir_path), kind_of(config)) == ("checkpoint", "nir", "config")
    g, kind = load_graph(config)
    assert kind == "config" and [p.size for p in g.populations] == [5, 3]
    (d / "junk.bin").write_bytes(b"hello")
    with pytest.raises(SourceError, match="recognised by content"):
        kind_of(d / "junk.bin")
    (d / "bad.json").write_text('{"kind": "Other"}')
    with pytest.raises(SourceError, match="model config"):
        load_graph(d / "bad.json")


def test_cli_compile_checkpoint_and_check(files, capsys):
    d, ckpt, nir_path, config = files
    assert cli.main(["compile", str(ckpt), "-o", str(d / "c.npz"), "--ptq"]) == 0
    art = artefact.load(d / "c.npz")
    assert art.provenance["source_kind"] == "checkpoint" and art.resources["chips"] == 1
    np.save(d / "x.npy", (np.random.default_rng(0).random((8, 20, 6)) < 0.4).astype(np.int64))
    assert cli.main(["compile", str(ckpt), "-o", str(d / "cal.npz"), "--ptq", "--calibrate", str(d / "x.npy")]) == 0
    recs = artefact.load(d / "cal.npz").provenance["quantization"]
    assert all(r["calibration"]["samples"] == 8 and r["threshold_chosen_by"] == "calibration" for r in recs)
    assert cli.main(["check", str(d / "cal.npz")]) == 0  # an artefact: re-validated, then re-placed
    assert cli.main(["check", str(nir_path), "--dt", "1e-3"]) == 0
    assert cli.main(["check", str(config)]) == 0
    assert "passes the design rules" in capsys.readouterr().out
    assert cli.main(["check", str(config), "--limit", "input_axons_per_core=4", "--limit", "neurons_per_core=2"]) == 2
    err = capsys.readouterr().err
    assert "fan-in (input axons)" in err and "lif1" in err and "suggested fix" in err


def test_cli_compiles_a_conv_checkpoint_and_runs_it_on_the_simulator(tmp_path, capsys):
    from snn2hw.backends import sim
    from snn2hw.nn.conv import ConvLIF, Flatten, SumPoolLIF
    from snn2hw.nn.layers import LIFDense

    torch.manual_seed(0)
    m = SpikingSequential([ConvLIF((1, 8, 8), 4, 3, padding=1, weight_gain=3.0), SumPoolLIF((4, 8, 8), 2),
                           Flatten(), LIFDense(64, 10, weight_gain=4.0)])
    save_checkpoint(m, tmp_path / "conv.ckpt")
    assert cli.main(["compile", str(tmp_path / "conv.ckpt"), "-o", str(tmp_path / "conv.npz")]) == 0
    art = artefact.load(tmp_path / "conv.npz")
    per = art.resources["placement"]["per_population"]
    assert set(per) == {"lif1", "lif2", "lif3"} and art.resources["cores"] == 3
    x = (np.random.default_rng(0).random((2, 6, 64)) < 0.5).astype(np.int64)
    direct = sim.run(compile_graph(m.to_ir()), x)  # placement is metadata: same spikes as an in-memory compile
    assert np.array_equal(sim.run(art, x).spikes["lif3"], direct.spikes["lif3"])


def test_cli_compile_prints_the_table_and_writes_nothing(tmp_path, float_graph, capsys):
    nir_io.write(float_graph, tmp_path / "g.nir")
    argv = ["compile", str(tmp_path / "g.nir"), "--dt", "1e-3", "-o", str(tmp_path / "o.npz"),
            "--limit", "input_axons_per_core=4", "--limit", "neurons_per_core=1", "--limit", "cores_per_chip=2",
            "--limit", "chips_per_board=1"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "3 design-rule violation(s)" in err and re.search(r"fan-in \(input axons\)\s+h\s+6\s+4\s", err)
    assert re.search(r"fan-in \(input axons\)\s+o\s+5\s+4\s", err) and re.search(r"chips\s+<network>\s+4 chips", err)
    assert not (tmp_path / "o.npz").exists()


def test_cli_compile_names_a_nan_weight_of_a_nir_file(tmp_path, float_graph, capsys):
    w = float_graph.projections[0].weight.copy()
    w[1, 2] = np.nan
    bad = dataclasses.replace(float_graph, projections=(dataclasses.replace(float_graph.projections[0], weight=w),
                                                        float_graph.projections[1]))
    # The NIR writer refuses a NaN weight (naming it), so the bad file is written from an unchecked graph.
    with pytest.raises(GraphError, match="'fc1': weight holds nan at index \\[1, 2\\]"):
        nir_io.write(bad, tmp_path / "bad.nir")
    import nir as nirlib
    ng = nir_io.to_nir(float_graph)
    ng.nodes["fc1"] = dataclasses.replace(ng.nodes["fc1"], weight=np.where(np.isnan(w), np.nan, ng.nodes["fc1"].weight))
    nirlib.write(tmp_path / "bad.nir", ng)
    assert cli.main(["compile", str(tmp_path / "bad.nir"), "--dt", "1e-3", "-o", str(tmp_path / "o.npz")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") >= 1 and "fc1" in err and "nan" in err.lower()
    assert not (tmp_path / "o.npz").exists()
