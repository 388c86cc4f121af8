"""Training: the general ``Trainer`` (resumable, data-parallel), losses, checkpoints and the compact
``train_classifier``.

Names are imported lazily (PEP 562) so that ``python -m snn2hw.train.distributed`` (the torchrun
example) does not find its own module already imported by this package, and so that importing one
submodule does not pull in the others.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "Trainer": "trainer", "TrainerConfig": "trainer", "Callback": "trainer", "final_output": "trainer",
    "predict_counts": "trainer",
    "spike_counts": "losses", "spike_count_mse": "losses", "count_cross_entropy": "losses",
    "membrane_cross_entropy": "losses", "van_rossum_distance": "losses", "exponential_filter": "losses",
    "rate_penalty": "losses", "count_l2_penalty": "losses",
    "save_checkpoint": "checkpoint", "load_checkpoint": "checkpoint", "read_checkpoint": "checkpoint",
    "save_training_checkpoint": "checkpoint", "read_training_checkpoint": "checkpoint",
    "CheckpointError": "checkpoint",
    "TrainConfig": "classifier", "train_classifier": "classifier", "accuracy": "classifier",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
