"""Checkpoints: a model's config (plain JSON-able dict) and its tensors, loaded without unpickling code.

Files are written atomically and read with ``torch.load(..., weights_only=True)``, so a checkpoint
from someone else cannot execute anything.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch

from snn2hw.artefact import atomic_write_bytes

CHECKPOINT_FORMAT = "snn2hw-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, not a checkpoint, or of an unsupported version."""


def save_checkpoint(model: torch.nn.Module, path: str | os.PathLike, extra: dict | None = None) -> None:
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": model.config(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": extra or {},
    }
    atomic_write_bytes(path, lambda f: torch.save(payload, f))


def read_checkpoint(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not an snn2hw checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an snn2hw checkpoint (missing format tag)")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {payload.get('version')} is not supported")
    return payload


def load_checkpoint(path: str | os.PathLike) -> torch.nn.Module:
    """Rebuild the model a checkpoint describes and load its weights."""
    from snn2hw.nn.layers import SpikingSequential

    payload = read_checkpoint(path)
    config = payload["config"]
    builders = {"SpikingSequential": SpikingSequential.from_config}
    kind = config.get("kind") if isinstance(config, dict) else None
    if kind not in builders:
        raise CheckpointError(f"{path}: unknown model kind {kind!r}")
    try:
        model = builders[kind](config)
        model.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: checkpoint does not match its model config ({str(exc).splitlines()[0][:200]})") from None
    return model
