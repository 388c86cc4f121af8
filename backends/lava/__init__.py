"""Lava backend (``snn2hw.backends.lava``): lower integer graphs to Lava processes and run them.

``run`` has the simulator's signature and returns the same ``RunResult``; ``lower`` gives the
connected Lava processes (``LavaNetwork``) for use in your own Lava program. lava-nc 0.10.0 needs
Python 3.10; without it, importing this package works and calls raise ``LavaUnavailableError``.
"""
from snn2hw.backends.lava.lower import (
    LavaNetwork,
    LavaUnavailableError,
    LoweringError,
    check_lowerable,
    lower,
)
from snn2hw.backends.lava.runner import BATCH_MODES, LavaRunError, run
from snn2hw.backends.lava.stream import StreamPlan, StreamPlanError, stream_plan

__all__ = [
    "BATCH_MODES",
    "LavaNetwork",
    "LavaRunError",
    "LavaUnavailableError",
    "LoweringError",
    "StreamPlan",
    "StreamPlanError",
    "check_lowerable",
    "lower",
    "run",
    "stream_plan",
]
