"""CLI: each command works on files, and bad input gives one clear line and exit status 2."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from snn2hw import artefact, cli, nir_io
from snn2hw.compiler import compile_graph
from snn2hw.nn.layers import SpikingSequential
from snn2hw.train.checkpoint import save_checkpoint


@pytest.fixture
def files(tmp_path, float_graph):
    torch.manual_seed(0)
    ckpt = tmp_path / "m.ckpt"
    save_checkpoint(SpikingSequential.build([6, 5, 3], weight_gain=3.0), ckpt)
    nir_path = tmp_path / "g.nir"
    nir_io.write(float_graph, nir_path)
    art = tmp_path / "a.npz"
    artefact.save(compile_graph(float_graph), art)
    x = tmp_path / "x.npy"
    np.save(x, (np.random.default_rng(0).random((2, 12, 6)) < 0.5).astype(np.int64))
    return tmp_path, ckpt, nir_path, art, x


def run(*argv):
    return cli.main([str(a) for a in argv])


def test_export_compile_run_chain(files, capsys):
    d, ckpt, _, _, x = files
    assert run("export", ckpt, "-o", d / "m.nir", "--dt", "1e-3") == 0
    assert run("compile", d / "m.nir", "-o", d / "m.npz", "--dt", "1e-3") == 0
    assert run("run", d / "m.npz", x, "-o", d / "out.npz", "--record-state", "lif1") == 0
    with np.load(d / "out.npz") as z:
        assert z["spikes/lif2"].shape == (2, 12, 3)
        assert z["u/lif1"].shape == (2, 12, 5)
        np.testing.assert_array_equal(z["counts/lif2"], z["spikes/lif2"].sum(axis=1))
    assert run("info", d / "m.npz") == 0
    assert "neurons" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["export", "{d}/missing.ckpt", "-o", "{d}/o.nir", "--dt", "1e-3"], "no such checkpoint"),
        (["export", "{x}", "-o", "{d}/o.nir", "--dt", "1e-3"], "not an snn2hw checkpoint"),
        (["compile", "{x}", "-o", "{d}/o.npz", "--dt", "1e-3"], "not a NIR file"),
        (["compile", "{ckpt}", "-o", "{d}/o.npz", "--neurons-per-core", "0"], "neurons_per_core must be >= 1"),
        (["compile", "{ckpt}", "-o", "{d}/o.npz", "--neurons-per-core", "-5"], "neurons_per_core must be >= 1"),
        (["compile", "{ckpt}", "-o", "{d}/o.npz", "--limit", "cores=3"], "unknown limit"),
        (["check", "{ckpt}", "--limit", "boards"], "NAME=INTEGER"),
        (["compile", "{d}/nope.nir", "-o", "{d}/o.npz", "--dt", "1e-3"], "no such file"),
        (["run", "{nir}", "{x}", "-o", "{d}/o.npz"], "not an snn2hw artefact"),
        (["run", "{art}", "{d}/none.npy", "-o", "{d}/o.npz"], "no such input file"),
        (["run", "{art}", "{ckpt}", "-o", "{d}/o.npz"], "expected one per input"),
        (["run", "{art}", "{nir}", "-o", "{d}/o.npz"], "not a .npy/.npz"),
        (["compile", "{nir}", "-o", "{d}/o.npz", "--dt", "1e-3", "--weight-bits", "9"], "num_weight_bits 9"),
    ],
)
def test_bad_input_one_line_exit_2(files, capsys, argv, needle):
    d, ckpt, nir_path, art, x = files
    argv = [a.format(d=d, ckpt=ckpt, nir=nir_path, art=art, x=x) for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("snn2hw: error:") and needle in err and "\n" not in err
    assert not (d / "o.npz").exists() and not (d / "o.nir").exists()
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp")]


def test_wrong_input_shape_for_run(files, capsys):
    d, _, _, art, _ = files
    np.save(d / "bad.npy", np.zeros((2, 5, 4)))
    assert run("run", art, d / "bad.npy", "-o", d / "o.npz") == 2
    assert "expected shape" in capsys.readouterr().err


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "snn2hw.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for cmd in ("demo", "export", "compile", "run"):
        assert cmd in out.stdout


def test_compile_reports_an_unmappable_nir_node(tmp_path, capsys):
    import nir

    g = nir.NIRGraph(
        nodes={"input": nir.Input({"input": np.array([2])}), "thr": nir.Threshold(np.array([1.0, -1.0])),
               "output": nir.Output({"output": np.array([2])})},
        edges=[("input", "thr"), ("thr", "output")], type_check=False)
    nir.write(tmp_path / "u.nir", g)
    assert run("compile", tmp_path / "u.nir", "-o", tmp_path / "o.npz", "--dt", "1e-3") == 2
    err = capsys.readouterr().err
    assert "node 'thr': threshold must be positive" in err and not (tmp_path / "o.npz").exists()
