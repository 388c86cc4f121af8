"""Reading a ``.nir`` file safely: sizes declared by its datasets are checked against the file before
libhdf5 allocates them, and every failure is one ``NIRError`` naming the file."""
from __future__ import annotations

import os
from pathlib import Path

import h5py
import nir
import numpy as np

from snn2hw.nir.errors import NIRError

MAX_NIR_BYTES = 1 << 32  # datasets a NIR file may declare in total (4 GiB): larger is refused before reading


def _vlen_lengths(obj: h5py.Dataset, raw) -> list[int]:
    """Byte lengths declared by the variable-length elements of a contiguous dataset, read from the file's
    own bytes (``raw``, the file opened for binary reading): each element is a (uint32 length, heap address,
    uint32 index) descriptor, and HDF5 allocates ``length`` before it finds that the heap object is not there."""
    offset = obj.id.get_offset()
    if offset is None:  # chunked (or not yet written): no raw descriptors to inspect here
        return []
    step = 4 + obj.file.id.get_create_plist().get_sizes()[0] + 4
    n = int(np.prod(obj.shape, dtype=np.int64))
    raw.seek(offset)
    block = raw.read(n * step)
    if len(block) < n * step:
        raise NIRError(f"dataset {obj.name!r} lies past the end of the file")
    tid = obj.id.get_type()
    unit = 1 if tid.get_class() == h5py.h5t.STRING else max(int(tid.get_super().get_size()), 1)
    return [int.from_bytes(block[k * step:k * step + 4], "little") * unit for k in range(n)]


def _check_dataset_sizes(path: Path) -> None:
    """Refuse files whose datasets declare more than ``MAX_NIR_BYTES``, or a variable-length element longer
    than the file: HDF5 can declare a huge dataset in a tiny file (unwritten chunks), and a corrupt
    variable-length descriptor makes libhdf5 allocate its declared length, both before any error."""
    total = 0
    size = path.stat().st_size
    problems: list[str] = []

    def visit(_name, obj):
        nonlocal total
        if not isinstance(obj, h5py.Dataset):
            return
        total += int(np.prod(obj.shape, dtype=np.float64)) * max(int(obj.dtype.itemsize), 1)
        tid = obj.id.get_type()
        if tid.get_class() == h5py.h5t.VLEN or (tid.get_class() == h5py.h5t.STRING and tid.is_variable_str()):
            for length in _vlen_lengths(obj, raw):
                total += length
                if length > size:
                    problems.append(f"dataset {obj.name!r} declares a {length}-byte element in a {size}-byte file")
                    return

    try:
        with open(path, "rb") as raw, h5py.File(path, "r") as f:
            f.visititems(visit)
    except NIRError as exc:
        raise NIRError(f"{path}: corrupt NIR file ({exc})") from None
    except Exception as exc:  # h5py raises OSError, KeyError, RuntimeError... on corrupt files
        raise NIRError(f"{path}: corrupt NIR file ({type(exc).__name__}: {str(exc)[:200]})") from None
    if problems:
        raise NIRError(f"{path}: corrupt NIR file ({problems[0]})")
    if total > MAX_NIR_BYTES:
        raise NIRError(f"{path}: datasets declare {total} bytes, more than the {MAX_NIR_BYTES} snn2hw reads")


def read_nir_graph(path: str | os.PathLike) -> nir.NIRGraph:
    """The NIR graph in a ``.nir`` file (typed errors for a missing, non-HDF5 or corrupt file)."""
    path = Path(path)
    if not path.is_file():
        raise NIRError(f"{path}: no such file")
    if not h5py.is_hdf5(path):
        raise NIRError(f"{path}: not a NIR file (not HDF5)")
    _check_dataset_sizes(path)
    try:
        ng = nir.read(path)
    except Exception as exc:  # nir raises many kinds on malformed files; report them as one type
        raise NIRError(f"{path}: corrupt or unsupported NIR file ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(ng, nir.NIRGraph):
        raise NIRError(f"{path}: holds a single {type(ng).__name__} node, not a graph")
    return ng
