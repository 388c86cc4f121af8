"""The MNIST test set (10,000 28x28 digits, ``../shared/data/mnist-10k/``) as a small image task.

Only the 10,000-image test set of MNIST is available here, so numbers on it are NOT comparable with
full-MNIST papers; they compare methods with each other. Fixed split, in the file's own order:
images 0..6999 train, 7000..7999 validation (for choosing hyper-parameters), 8000..9999 test.

The files are read with plain numpy (IDX format, magic numbers checked, sizes checked against the
header), never unpickled. ``find_data`` looks at an explicit path, ``$SNN2HW_MNIST10K``, then
``../shared/data/mnist-10k`` beside the repository.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

IMAGES = "t10k-images-idx3-ubyte.gz"
LABELS = "t10k-labels-idx1-ubyte.gz"
ENV_VAR = "SNN2HW_MNIST10K"
SPLIT = {"train": (0, 7000), "val": (7000, 8000), "test": (8000, 10000)}
_MAX_BYTES = 16 << 20  # the images decompress to 7.8 MB


class MNISTDataError(ValueError):
    """The MNIST files are missing, truncated or not IDX files of the expected shape."""


def find_data(path: str | os.PathLike | None = None) -> Path:
    """The folder holding both IDX files; ``FileNotFoundError`` names where it looked."""
    if path is not None:
        candidates = [Path(path)]
    elif os.environ.get(ENV_VAR):
        candidates = [Path(os.environ[ENV_VAR])]
    else:
        candidates = [Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "mnist-10k"]
    for c in candidates:
        if (c / IMAGES).is_file() and (c / LABELS).is_file():
            return c
    raise FileNotFoundError(f"MNIST-10k not found (looked in {', '.join(map(str, candidates))} for {IMAGES} "
                            f"and {LABELS}); pass its folder or set ${ENV_VAR}")


def _read_idx(path: Path, magic: int, dims: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read(_MAX_BYTES + 1)
    if len(raw) > _MAX_BYTES:
        raise MNISTDataError(f"{path}: larger than {_MAX_BYTES} bytes decompressed; not the MNIST test set")
    header = 4 + 4 * dims
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        raise MNISTDataError(f"{path}: not an IDX file with magic number {magic}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    if len(raw) - header != int(np.prod(shape)):
        raise MNISTDataError(f"{path}: header says {shape} but holds {len(raw) - header} bytes of data")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def load_arrays(path: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images (10000, 28, 28) uint8, labels (10000,) int64), checked."""
    folder = find_data(path)
    images = _read_idx(folder / IMAGES, 2051, 3)
    labels = _read_idx(folder / LABELS, 2049, 1).astype(np.int64)
    if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28) or labels.max() > 9:
        raise MNISTDataError(f"{folder}: images {images.shape} and labels {labels.shape} do not match MNIST")
    return images, labels


def load(split: str = "train", path: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(intensities (n, 784) float32 in [0, 1], labels (n,) int64) of one split: train, val or test.

    Encode them with ``snn2hw.encode`` (e.g. ``bernoulli_rate`` as HM2-BP does, ``regular_rate`` for
    deterministic trains); images are flattened row-major (reshape to (n, 1, 28, 28) for conv nets)."""
    if split not in SPLIT:
        raise ValueError(f"unknown split {split!r}; use one of {sorted(SPLIT)}")
    images, labels = load_arrays(path)
    lo, hi = SPLIT[split]
    x = torch.from_numpy(images[lo:hi].reshape(hi - lo, -1).astype(np.float32) / 255.0)
    return x, torch.from_numpy(labels[lo:hi].copy())
