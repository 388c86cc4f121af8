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
    # torch.save writes a zip archive; anything else would reach torch's legacy pickle reader, whose
    # failures on arbitrary bytes are not typed (KeyError, IndexError, ...). Check the container first.
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, RuntimeError, NotImplementedError) as exc:
        raise CheckpointError(f"{path}: not an snn2hw checkpoint (not a zip archive as torch.save writes: {exc})") from None
    except Exception as exc:  # zlib.error and others from a corrupt member
        raise CheckpointError(f"{path}: not an snn2hw checkpoint (corrupt archive: {type(exc).__name__}: {exc})") from None
    if bad is not None:
        raise CheckpointError(f"{path}: corrupt checkpoint (member {bad!r} fails its CRC check)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds on malformed archives; never retry without weights_only
        first = str(exc).splitlines()[0] if str(exc) else ""
        first = first.split(". ")[0][:160]
        raise CheckpointError(f"{path}: not an snn2hw checkpoint ({type(exc).__name__}: {first})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an snn2hw checkpoint (missing format tag)")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {payload.get('version')} is not supported")
    return payload


def load_checkpoint(path: str | os.PathLike) -> torch.nn.Module:
    """Rebuild the model a checkpoint describes and load its weights."""
    from snn2hw.nn.gated import GatedQIF
    from snn2hw.nn.layers import SpikingSequential

    payload = read_checkpoint(path)
    config = payload["config"]
    builders = {"SpikingSequential": SpikingSequential.from_config, "GatedQIF": GatedQIF.from_config}
    kind = config.get("kind") if isinstance(config, dict) else None
    if kind not in builders:
        raise CheckpointError(f"{path}: unknown model kind {kind!r}")
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: checkpoint has no state_dict of tensors")
    try:
        # build on the meta device first: a config asking for huge layers costs nothing there, and its
        # shapes must match the tensors the file actually holds before anything is allocated
        try:
            with torch.device("meta"):
                skeleton = builders[kind](config)
        except (RuntimeError, NotImplementedError):
            skeleton = None  # a layer that reads tensor values while it is built cannot be built on meta
        found = {k: tuple(v.shape) for k, v in state.items()}
        if skeleton is not None:
            expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
            if expected != found:
                diff = sorted(set(expected.items()) ^ set(found.items()))[:3]
                raise CheckpointError(f"{path}: checkpoint does not match its model config (tensor names/shapes differ: {diff})")
        else:
            _check_config_sizes(path, config, sum(int(v.numel()) for v in state.values()))
        model = builders[kind](config)
        model.load_state_dict(state)
    except CheckpointError:
        raise
    except (KeyError, TypeError, RuntimeError, ValueError, AttributeError, OverflowError, ZeroDivisionError,
            IndexError, NotImplementedError) as exc:
        raise CheckpointError(f"{path}: checkpoint does not match its model config ({type(exc).__name__}: "
                              f"{(str(exc).splitlines() or [''])[0][:200]})") from None
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{path}: tensor {name!r} holds NaN or infinite values")
    return model


MAX_CONFIG_INT = 1 << 26


def _check_config_sizes(path, config, stored: int) -> None:
    """Without a meta build, refuse configs whose integers could ask for far more memory than the file
    holds tensors for (a size beyond both 2**26 and the stored element count)."""
    def walk(obj):
        if isinstance(obj, dict):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v)
        elif isinstance(obj, int) and not isinstance(obj, bool) and abs(obj) > max(MAX_CONFIG_INT, stored):
            raise CheckpointError(f"{path}: model config asks for a size of {obj}, far beyond the {stored} "
                                  f"stored parameters")

    walk(config)


# --- training-state checkpoints (resumable runs) ---------------------------------------------------------
TRAINING_STATE_KEY = "training_state"


def save_training_checkpoint(model: torch.nn.Module, path: str | os.PathLike, training_state: dict) -> None:
    """A checkpoint that can resume a run: the model as ``save_checkpoint`` writes it, plus
    ``training_state`` (optimizer, scheduler, RNG states, epoch, position...) under ``extra``.

    ``training_state`` must hold only tensors and plain containers of numbers/strings/None, because it
    is read back with ``weights_only=True``; CUDA tensors are moved to the CPU here. A model without a
    ``config()`` is stored with ``config=None``: such a checkpoint resumes training but
    ``load_checkpoint`` cannot rebuild the model from it.
    """
    config = model.config() if callable(getattr(model, "config", None)) else None
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": config,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": {TRAINING_STATE_KEY: _to_cpu(training_state)},
    }
    atomic_write_bytes(path, lambda f: torch.save(payload, f))


def read_training_checkpoint(path: str | os.PathLike) -> tuple[dict, dict]:
    """(model state_dict, training_state) of a checkpoint written by ``save_training_checkpoint``."""
    payload = read_checkpoint(path)
    extra = payload.get("extra")
    state = extra.get(TRAINING_STATE_KEY) if isinstance(extra, dict) else None
    if not isinstance(state, dict) or not isinstance(payload.get("state_dict"), dict):
        raise CheckpointError(f"{path}: checkpoint holds no training state (written by save_checkpoint?)")
    return payload["state_dict"], state


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj
