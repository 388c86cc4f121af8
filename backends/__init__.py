"""Backends that run compiled snn2hw graphs (installed as ``snn2hw.backends``).

Every backend exposes ``run(graph, inputs, record=..., record_state=...) -> RunResult`` with the
same meaning, so users and tests can swap them: ``sim`` (snn2hw's bit-accurate simulator) and
``lava`` (Lava processes, ``Loihi2SimCfg(select_tag="fixed_pt")``).
"""
from snn2hw.backends.base import BackendError, RunResult, get_backend

__all__ = ["BackendError", "RunResult", "get_backend"]
