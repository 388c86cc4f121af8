"""Producer conventions: how a NIR file's continuous-time parameters become per-step arithmetic.

NIR states neurons as ODEs in seconds and stores no ``dt``; each producer discretises them its own way
and writes its parameters accordingly. A ``Convention`` names every choice the file cannot state, so
that the importer reproduces what the producer simulated. docs/nir.md gives the evidence (the
producers' own export code) for each preset.

Per-step decay fractions (``du`` of the current, ``dv`` of the voltage) from a time constant ``tau``:

- ``decay="euler"`` (forward Euler): ``dv = dt / tau``
- ``decay="exact"`` (exponential, zero-order hold): ``dv = 1 - exp(-dt / tau)``

``tau_unit`` says what the file's tau is: ``"seconds"`` (NIR's definition) or ``"dt*seconds"`` (Norse
1.1.0 writes ``tau = dt / tau_inv``, i.e. dt times the time constant, so ``tau_seconds = tau / dt``).

``current_input`` says how an input spike reaches a CubaLIF/CubaLI current: ``"euler"`` adds
``du * w_in * x`` (NIR's ODE, forward Euler; snnTorch writes ``w_in = tau_syn / dt`` so this is ``x``),
``"jump"`` adds ``w_in * x`` (Norse: the current jumps by the input, then decays).

``threshold`` is the spike comparison (``">"``: v > v_th, Loihi's; ``">="``: v >= v_th), ``reset``
what a spike does to v (``"zero"``: Loihi's, or ``"subtract"`` v_th, which NIR cannot state and Loihi
cannot do), ``timing`` when a feed-forward edge delivers (``"same_step"``: producers that run a layer
stack within one step; ``"next_step"``: Loihi and snn2hw, one step per hop). Every producer delivers
nothing over a recurrent edge at the first step (zero initial state).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from snn2hw.nir.errors import NIRError

DT_METADATA_KEY = "snn2hw_dt"


@dataclass(frozen=True)
class Convention:
    name: str
    dt: float | None  # the step the producer's exporter assumes (None: must be given)
    decay: str = "euler"  # "euler" | "exact"
    tau_unit: str = "seconds"  # "seconds" | "dt*seconds"
    current_input: str = "euler"  # "euler" | "jump"
    threshold: str = ">"  # ">" | ">="
    reset: str = "zero"  # "zero" | "subtract"
    timing: str = "same_step"  # "same_step" | "next_step"
    evidence: str = ""

    def decay_fraction(self, tau: np.ndarray, dt: float) -> np.ndarray:
        """Per-step decay fraction of time constants ``tau`` (as written in the file)."""
        tau = np.asarray(tau, dtype=np.float64)
        if self.tau_unit == "dt*seconds":
            tau = tau / dt
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.decay == "exact":
                return -np.expm1(-dt / tau)
            return dt / tau

    def with_overrides(self, **kw) -> "Convention":
        kw = {k: v for k, v in kw.items() if v is not None}
        return replace(self, **kw) if kw else self


CONVENTIONS: dict[str, Convention] = {c.name: c for c in (
    Convention("nir", None, evidence="NIR's ODEs, forward Euler, one step per layer within a time step"),
    Convention("snn2hw", None, timing="next_step",
               evidence="files written by snn2hw (metadata snn2hw_dt): Loihi timing, one step per hop"),
    Convention("snntorch", 1e-4,
               evidence="snntorch/export_nir.py (1.0.0): dt = 1e-4, tau = dt/(1-beta), r = tau/dt, "
                        "w_in = tau_syn/dt, v_reset = 0 whatever reset_mechanism was"),
    Convention("norse", 1e-3, tau_unit="dt*seconds", current_input="jump",
               evidence="norse/torch/utils/export_nir.py (1.1.0): tau = dt / tau_inv, r = 1, w_in = 1; "
                        "functional/lif.py: i += x, v += dt/tau_mem (v_leak - v + i), i -= dt/tau_syn i"),
    Convention("sinabs", 1.0, decay="exact", threshold=">=", reset="subtract",
               evidence="sinabs/nir.py (2.0.3): tau in steps, r = 1; layers/lif.py: alpha = exp(-1/tau), "
                        "norm_input=True; activation: v >= threshold, MembraneSubtract by default"),
    Convention("spikingjelly", 1.0, threshold=">=",
               evidence="spikingjelly LIFNode: v += (x - (v - v_reset)) / tau (decay_input), tau in steps, "
                        "heaviside(v - v_th) is v >= v_th, hard reset to 0 by default"),
    Convention("rockpool", 1e-3, decay="exact",
               evidence="rockpool LIFTorch: exact exponential decay exp(-dt/tau), dt = 1e-3 by default"),
    Convention("spyx", 1.0,
               evidence="spyx: time constants in steps (dt = 1), forward Euler, heaviside v > v_th"),
)}


def get_convention(name: str | Convention | None, metadata: dict | None = None) -> Convention:
    """The preset ``name``; None auto-detects (``snn2hw`` when snn2hw wrote the file, else ``nir``)."""
    if isinstance(name, Convention):
        return name
    if name is None:
        return CONVENTIONS["snn2hw" if DT_METADATA_KEY in (metadata or {}) else "nir"]
    if name not in CONVENTIONS:
        raise NIRError(f"unknown convention {name!r}; choose one of {', '.join(CONVENTIONS)}")
    return CONVENTIONS[name]


def resolve_dt(conv: Convention, dt: float | None, metadata: dict | None, source: str) -> float:
    """The step to read with: given > written by snn2hw > the producer's default."""
    recorded = (metadata or {}).get(DT_METADATA_KEY)
    if dt is None:
        dt = recorded if recorded is not None else conv.dt
    if dt is None:
        raise NIRError(f"{source}: no dt given and none recorded in the file; pass dt (--dt) or a --convention "
                       "whose producer fixes it")
    if isinstance(dt, bool) or not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
        raise NIRError(f"{source}: dt must be a positive number, got {dt!r}")
    return float(dt)
