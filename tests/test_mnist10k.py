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
