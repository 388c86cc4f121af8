"""What the compiler and ``snn2hw check`` read, recognised by content (not by file name):

- a NIR file (HDF5 signature ``\\x89HDF\\r\\n\\x1a\\n``) -> ``nir_io.read(path, dt, convention)``;
- an snn2hw checkpoint (a zip written by ``torch.save``) -> the trained model's ``to_ir(dt)``;
- a compiled artefact (a zip holding ``__meta__.npy``) -> its integer graph (re-validated on load);
- a JSON model config (``{"kind": "SpikingSequential", "layers": [...]}``, what a checkpoint stores)
  or a training config holding one under ``"model"`` -> the untrained model's ``to_ir(dt)`` (random
  weights: enough for the design and resource rules, so nobody trains a network that cannot be placed).

Nothing is unpickled or executed: checkpoints load with ``weights_only=True``, artefacts with
``allow_pickle=False``.
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

from snn2hw.ir import Graph

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZIP_SIGNATURE = b"PK\x03\x04"
DEFAULT_DT = 1e-3
MAX_CONFIG_BYTES = 16 << 20


class SourceError(ValueError):
    """A file given to compile/check is missing or is none of the kinds the compiler reads."""


def kind_of(path: str | os.PathLike) -> str:
    """'nir', 'checkpoint', 'artefact' or 'config', from the file's content."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(HDF5_SIGNATURE):
        return "nir"
    if head.startswith(ZIP_SIGNATURE):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise SourceError(f"{path}: a damaged zip file, neither a checkpoint nor an artefact ({exc})") from None
        if "__meta__.npy" in names:
            return "artefact"
        return "checkpoint"
    if head.lstrip()[:1] == b"{":
        return "config"
    if head[:1] == b"\x08" and path.suffix.lower() == ".onnx":  # protobuf field 1 (ir_version) of an ONNX model
        raise SourceError(f"{path}: an ONNX model; the compiler reads spiking networks, so convert it first: "
                          f"snn2hw convert {path} --calibration X.npy -o MODEL.ckpt (see docs/onnx.md)")
    raise SourceError(f"{path}: not a NIR file, an snn2hw checkpoint, an artefact or a JSON model/training config "
                      f"(recognised by content)")


def load_graph(path: str | os.PathLike, dt: float | None = None, convention: str | None = None,
               approximate: bool = False) -> tuple[Graph, str]:
    """(graph, kind) for any file ``kind_of`` recognises. For NIR files, ``dt`` (seconds per step),
    ``convention`` (the producer's preset) and ``approximate`` go to ``snn2hw.nir.read`` (which takes dt from
    the file's metadata or the convention when not given, see docs/nir.md); models default to 1 ms."""
    from snn2hw import artefact, nir_io

    kind = kind_of(path)
    if dt is not None and not (dt > 0 and dt < float("inf")):
        raise SourceError(f"--dt must be a positive number of seconds, got {dt}")
    if kind == "nir":
        return nir_io.read(path, dt=dt, convention=convention, approximate=approximate), kind
    if kind == "artefact":
        return artefact.load(path).graph, kind
    if kind == "checkpoint":
        from snn2hw.train.checkpoint import load_checkpoint

        return load_checkpoint(path).to_ir(dt or DEFAULT_DT), kind
    return _config_graph(Path(path), dt or DEFAULT_DT), kind


def _config_graph(path: Path, dt: float) -> Graph:
    from snn2hw.nn.layers import SpikingSequential

    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise SourceError(f"{path}: config larger than {MAX_CONFIG_BYTES} bytes")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise SourceError(f"{path}: not valid JSON ({exc})") from None
    model = data.get("model", data) if isinstance(data, dict) else None
    if not isinstance(model, dict) or model.get("kind") != "SpikingSequential" or not isinstance(model.get("layers"), list):
        raise SourceError(f"{path}: a model config is {{\"kind\": \"SpikingSequential\", \"layers\": [...]}} "
                          f"(a training config holds one under \"model\")")
    try:
        return SpikingSequential.from_config(model).to_ir(dt)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise SourceError(f"{path}: cannot build the model ({type(exc).__name__}: {str(exc)[:200]})") from None
