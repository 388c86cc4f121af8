"""Compiled artefacts on disk: one ``.npz`` file holding an integer graph, a format version and provenance.

The file is a plain numpy archive read with ``allow_pickle=False``: a JSON header (``__meta__``) names
every node and parameter, arrays are stored under keys the header points to. Nothing in it is ever
executed or unpickled, so artefacts from others are safe to open. Writes are atomic and durable (the
file and its directory are fsync'ed before and after the rename).

``load`` trusts nothing: besides the structure it re-checks every value against the design rules
(``snn2hw.compiler.rules``, ``normal_form=False``), so a hand-edited artefact with, say, a 14-bit
bias mantissa, a ``du`` of 5000 or a delay of 99 is refused with the rule it breaks instead of running
silently on the simulator. Values Lava gives a defined meaning (dense weights beyond the sign mode's
range, which Lava clips; convolution weights off the grid) load, as the simulator reproduces them.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from snn2hw.ir import Graph, GraphError, Input, LoihiConv2d, LoihiDense, LoihiLIF, Population

FORMAT = "snn2hw-artefact"
FORMAT_VERSION = 1
# Projection kinds in the header: "dense" (all version-1 files), "sparse" (a LoihiDense with sparse=True,
# weight stored dense) and "conv2d" (LoihiConv2d; geometry in the header). Adding kinds keeps version 1:
# every older file still loads, and an older reader names the kind it does not know.
PROJECTION_KINDS = ("dense", "sparse", "conv2d")


MAX_ARTEFACT_BYTES = 1 << 33  # uncompressed archive members read in total (8 GiB)


class ArtefactError(ValueError):
    """An artefact file is missing, not an artefact, of an unsupported version, or corrupt."""


@dataclass(frozen=True)
class Artefact:
    """A compiled network: the integer graph plus what the compiler found out about it."""

    graph: Graph
    resources: dict = field(default_factory=dict)  # neurons, synapses, cores, ...
    provenance: dict = field(default_factory=dict)  # source file, snn2hw version, quantizer report


def atomic_write_path(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp_path)`` for a temporary file next to ``path``, then rename it into place, so
    readers never see a half-written file and a failure leaves nothing behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_path(path.parent, directory=True)


def _fsync_path(path: str | os.PathLike, directory: bool = False) -> None:
    """Flush a file's (or a directory's entries') data to disk; directories that cannot be opened for
    syncing (some platforms) are skipped."""
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:
        if directory:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, write) -> None:
    """Like ``atomic_write_path`` for writers that take a binary file object."""

    def _write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            write(f)

    atomic_write_path(path, _write)


def save(artefact: Artefact, path: str | os.PathLike) -> None:
    g = artefact.graph
    if not g.is_quantized:
        raise ArtefactError("only quantized (integer) graphs can be saved as artefacts")
    arrays: dict[str, np.ndarray] = {}
    pops = []
    for p in g.populations:
        n = p.neuron
        arrays[f"pop/{p.name}/bias_mant"] = _narrow(n.bias_mant)
        arrays[f"pop/{p.name}/bias_exp"] = _narrow(n.bias_exp)
        pops.append({"name": p.name, "size": p.size, "du": int(n.du), "dv": int(n.dv), "vth": int(n.vth)})
    projs = []
    for p in g.projections:
        arrays[f"proj/{p.name}/weight"] = _narrow(p.weight)
        d = {
            "name": p.name, "src": p.src, "dst": p.dst, "kind": "dense",
            "weight_exp": int(p.weight_exp), "num_weight_bits": int(p.num_weight_bits),
            "sign_mode": int(p.sign_mode), "num_message_bits": int(p.num_message_bits),
            "delay": int(p.delay),
        }
        if isinstance(p, LoihiConv2d):
            d.update(kind="conv2d", in_shape=list(p.in_shape), out_shape=list(p.out_shape), stride=list(p.stride),
                     padding=list(p.padding), dilation=list(p.dilation), groups=int(p.groups))
        elif p.sparse:
            d["kind"] = "sparse"
        projs.append(d)
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "dt": g.dt,
        "inputs": [{"name": i.name, "size": i.size, "num_message_bits": i.num_message_bits} for i in g.inputs],
        "populations": pops,
        "projections": projs,
        "outputs": list(g.outputs),
        "metadata": g.metadata,
        "resources": artefact.resources,
        "provenance": artefact.provenance,
    }
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    atomic_write_bytes(path, lambda f: np.savez(f, **arrays))


def _narrow(a) -> np.ndarray:
    """Integers stored as int16 when they fit (every legal weight and bias does), else int64: a quarter
    of the bytes, and uncompressed (``np.savez``) writing is then I/O-bound rather than zlib-bound.
    ``load`` widens everything back to int64."""
    a = np.asarray(a)
    if a.size == 0 or (a.min() >= np.iinfo(np.int16).min and a.max() <= np.iinfo(np.int16).max):
        return a.astype(np.int16)
    return a.astype(np.int64)


def load(path: str | os.PathLike) -> Artefact:
    path = Path(path)
    if not path.is_file():
        raise ArtefactError(f"{path}: no such artefact file")
    try:
        with zipfile.ZipFile(path) as zf:  # refuse archives that would decompress to more than we read
            declared = sum(i.file_size for i in zf.infolist())
        if declared > MAX_ARTEFACT_BYTES:
            raise ArtefactError(f"{path}: archive declares {declared} bytes, more than the {MAX_ARTEFACT_BYTES} snn2hw reads")
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        arrays = {k: (v if k == "__meta__" or v.dtype == np.int64 or v.dtype.kind not in "iu" else v.astype(np.int64))
                  for k, v in arrays.items()}
    except ArtefactError:
        raise
    except Exception as exc:  # BadZipFile, zlib.error, ValueError, OSError, EOFError... from a corrupt file
        raise ArtefactError(f"{path}: not an snn2hw artefact or corrupt (unreadable archive: "
                            f"{type(exc).__name__}: {str(exc)[:200]})") from None
    if "__meta__" not in arrays:
        raise ArtefactError(f"{path}: not an snn2hw artefact (no header)")
    try:
        meta = json.loads(arrays["__meta__"].tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ArtefactError(f"{path}: corrupt artefact header ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ArtefactError(f"{path}: not an snn2hw artefact (format {meta.get('format') if isinstance(meta, dict) else None!r})")
    version = meta.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise ArtefactError(f"{path}: artefact format version {version} was written by a newer snn2hw; this snn2hw "
                            f"reads version {FORMAT_VERSION} (upgrade snn2hw)")
    if version != FORMAT_VERSION:
        raise ArtefactError(
            f"{path}: artefact format version {version!r} is not supported (this snn2hw reads {FORMAT_VERSION})"
        )
    for key, arr in arrays.items():
        if key != "__meta__" and arr.dtype.kind not in "iub":
            raise ArtefactError(f"{path}: corrupt artefact (array {key!r} has dtype {arr.dtype}, expected integers)")
    try:
        inputs = tuple(Input(d["name"], int(d["size"]), int(d["num_message_bits"])) for d in meta["inputs"])
        pops = tuple(
            Population(
                d["name"], int(d["size"]),
                LoihiLIF(int(d["du"]), int(d["dv"]), int(d["vth"]),
                         arrays[f"pop/{d['name']}/bias_mant"], arrays[f"pop/{d['name']}/bias_exp"]),
            )
            for d in meta["populations"]
        )
        projs = []
        for d in meta["projections"]:
            if d["kind"] not in PROJECTION_KINDS:
                raise ArtefactError(f"{path}: projection {d['name']!r} has unsupported kind {d['kind']!r}")
            weight = arrays[f"proj/{d['name']}/weight"]
            if d["kind"] == "conv2d":
                projs.append(
                    LoihiConv2d(d["name"], d["src"], d["dst"], weight, tuple(d["in_shape"]), tuple(d["out_shape"]),
                                tuple(d["stride"]), tuple(d["padding"]), tuple(d["dilation"]), int(d["groups"]),
                                int(d["weight_exp"]), int(d["num_weight_bits"]), int(d["sign_mode"]),
                                int(d["num_message_bits"]), int(d["delay"]))
                )
                continue
            projs.append(
                LoihiDense(d["name"], d["src"], d["dst"], weight,
                           int(d["weight_exp"]), int(d["num_weight_bits"]), int(d["sign_mode"]),
                           int(d["num_message_bits"]), int(d["delay"]), d["kind"] == "sparse")
            )
        graph = Graph(inputs, pops, tuple(projs), tuple(meta["outputs"]), float(meta["dt"]), meta.get("metadata", {}))
        graph.validate()
    except (KeyError, TypeError) as exc:
        raise ArtefactError(f"{path}: corrupt artefact (malformed field: missing or mistyped {exc})") from None
    except ArtefactError:
        raise
    except GraphError as exc:
        raise ArtefactError(f"{path}: corrupt artefact ({exc})") from None
    except (ValueError, AttributeError, IndexError, OverflowError) as exc:  # e.g. int("x"), a header of the wrong shape
        raise ArtefactError(f"{path}: corrupt artefact (malformed field: {type(exc).__name__}: {str(exc)[:200]})") from None
    for key in ("resources", "provenance", "metadata"):
        if not isinstance(meta.get(key, {}), dict):
            raise ArtefactError(f"{path}: corrupt artefact header ({key!r} is a {type(meta[key]).__name__}, not an object)")
    problems = _value_problems(graph)
    if problems:
        raise ArtefactError(f"{path}: artefact breaks {len(problems)} design rule(s), values outside what Loihi 2 holds "
                            f"(edited by hand?): " + "; ".join(problems[:6])
                            + (f"; and {len(problems) - 6} more" if len(problems) > 6 else ""))
    return Artefact(graph, meta.get("resources", {}), meta.get("provenance", {}))


def _value_problems(graph: Graph) -> list[str]:
    """Array types and shapes, then every design rule: an artefact is untrusted input to the backends."""
    problems = []
    for p in graph.populations:
        for what, arr in (("bias_mant", p.neuron.bias_mant), ("bias_exp", p.neuron.bias_exp)):
            arr = np.asarray(arr)
            if arr.dtype.kind not in "iu" or arr.shape != (p.size,):
                problems.append(f"population {p.name!r}: {what} must be {p.size} integers, got {arr.dtype} {arr.shape}")
    for p in graph.projections:
        if np.asarray(p.weight).dtype.kind not in "iu":
            problems.append(f"projection {p.name!r}: weights must be integers, got {np.asarray(p.weight).dtype}")
    if problems:
        return problems
    from snn2hw.compiler.rules import design_rule_violations  # lazy: the compiler imports this module

    # normal_form=False: values Lava gives a defined meaning (dense weights beyond the sign mode's range,
    # off-grid conv weights) load, as the simulator reproduces them (tests/golden relies on it)
    return [str(v) for v in design_rule_violations(graph, normal_form=False)]
