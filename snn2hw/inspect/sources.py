"""Open any file snn2hw reads -- checkpoint, NIR file, compiled artefact -- by its content, not its name.

``open_source(path, dt)`` returns a ``Source``: the kind, the float graph where the file has one
(checkpoint, NIR) and the artefact where it is one. Everything goes through the project's own loaders
(``torch.load(weights_only=True)``, h5py, ``np.load(allow_pickle=False)``), so untrusted files stay data.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from snn2hw.compiler.sources import SourceError, kind_of
from snn2hw.ir import Graph

KINDS = ("checkpoint", "nir", "artefact")


@dataclass(frozen=True)
class Source:
    path: str
    kind: str  # one of KINDS
    graph: Graph | None = None  # float graph (checkpoint, NIR) or the artefact's integer graph
    artefact: object | None = None  # snn2hw.artefact.Artefact for kind "artefact"
    model: object | None = None  # the rebuilt torch model for kind "checkpoint"
    checkpoint_extra: dict | None = None


def sniff(path: str | os.PathLike) -> str:
    """The kind of file at ``path`` (checkpoint, nir or artefact), recognised by content as the compiler does."""
    kind = kind_of(path)
    if kind not in KINDS:
        raise SourceError(f"{path}: a JSON {kind} holds no trained network; give a checkpoint, NIR file or artefact")
    return kind


def open_source(path: str | os.PathLike, dt: float | None = None) -> Source:
    """Load ``path`` as whatever it is. ``dt`` (seconds per step) reads a NIR file's time constants (None:
    the dt snn2hw recorded in it, else the NIR reader's default); for checkpoints it defaults to 1e-3."""
    kind = sniff(path)
    if kind == "artefact":
        from snn2hw import artefact

        art = artefact.load(path)
        return Source(str(path), kind, art.graph, artefact=art)
    if kind == "nir":
        from snn2hw import nir_io

        # dt None: the reader uses the dt snn2hw recorded in the file, else its convention's default
        return Source(str(path), kind, nir_io.read(path, dt=dt))
    from snn2hw.train.checkpoint import load_checkpoint, read_checkpoint

    model = load_checkpoint(path)
    extra = read_checkpoint(path).get("extra") or {}
    try:
        graph = model.to_ir(dt if dt is not None else 1e-3)
    except (ValueError, TypeError, IndexError, OverflowError, ZeroDivisionError) as exc:
        raise SourceError(f"{path}: the checkpoint's model has no valid IR graph ({type(exc).__name__}: {exc})") from None
    return Source(str(path), kind, graph, model=model, checkpoint_extra=extra if isinstance(extra, dict) else {})
