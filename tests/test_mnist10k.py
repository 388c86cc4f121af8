"""The MNIST-10k loader: fixed split, checked IDX parsing (skips without ../shared)."""
from __future__ import annotations

import gzip

import pytest

from snn2hw.models import mnist10k


def test_split_and_values():
    try:
        x_tr, y_tr = mnist10k.load("train")
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    x_va, _ = mnist10k.load("val")
    x_te, y_te = mnist10k.load("test")
    assert x_tr.shape == (7000, 784) and x_va.shape == (1000, 784) and x_te.shape == (2000, 784)
    assert 0.0 <= float(x_tr.min()) and float(x_tr.max()) == 1.0
    assert set(y_te.unique().tolist()) == set(range(10))


def test_rejects_bad_files(tmp_path):
    with gzip.open(tmp_path / mnist10k.IMAGES, "wb") as f:
        f.write((2051).to_bytes(4, "big") + (10).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"\0" * 5)
    with gzip.open(tmp_path / mnist10k.LABELS, "wb") as f:
        f.write((2049).to_bytes(4, "big") + (10).to_bytes(4, "big") + bytes(10))
    with pytest.raises(mnist10k.MNISTDataError, match="header says"):
        mnist10k.load_arrays(tmp_path)
    with gzip.open(tmp_path / mnist10k.IMAGES, "wb") as f:
        f.write(b"\0\0\0\1" + bytes(20))
    with pytest.raises(mnist10k.MNISTDataError, match="magic"):
        mnist10k.load_arrays(tmp_path)
    with pytest.raises(ValueError, match="unknown split"):
        mnist10k.load("everything", path=tmp_path)
    with pytest.raises(FileNotFoundError):
        mnist10k.find_data(tmp_path / "missing")


def test_accuracy_benchmark_mnist_configs_build():
    """Every config of the accuracy benchmark's 3-epoch MNIST-10k stages exists, parses, builds its network
    (784-[R]100-10 or 784-800-10) and gives its rule valid options, so a stage cannot fail on a config after hours of runs."""
    import importlib.util
    import sys
    from pathlib import Path

    from snn2hw.learning import make_rule
    from snn2hw.learning.experiment import read_config
    from snn2hw.models.tasks import build_model, default_rule_options, get_task

    bench = Path(__file__).resolve().parent.parent / "benchmarks"
    sys.path.insert(0, str(bench))
    try:
        spec = importlib.util.spec_from_file_location("bench_spiketrain_accuracy", bench / "bench_spiketrain_accuracy.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(bench))
    runs = [(rule, config) for _, rule, config, _ in mod.TUNE_MNIST_E3]
    runs += [(rule, config) for _, _, config, rule, _, _ in mod.FINAL_MNIST_E3]
    assert {r for r, _ in runs} == {"bptt", "hm2bp", "strsbp"}
    task = get_task("mnist10k")
    for rule, config in runs:
        cfg = read_config(bench / "configs" / config)
        model = build_model(task, cfg["model"], 0)
        sizes = [p.shape for n, p in model.named_parameters() if n.endswith("weight")]
        hidden = sizes[0][0]
        assert hidden in (100, 800) and sizes[0] == (hidden, 784) and sizes[-1] == (10, hidden), (config, sizes)
        assert any(s == (100, 100) for s in sizes) == ("rec100" in config), config
        make_rule(rule, **{**default_rule_options(rule, cfg["data"]["steps"]), **cfg.get("rule_options", {})})
