"""NIR import, pass 3: a NIR neuron node in snn2hw's per-step terms (decay fractions, input scale, bias,
threshold) under a producer's ``Convention``; the table of the mapping is in ``snn2hw.nir.read``."""
from __future__ import annotations

from dataclasses import dataclass

import nir
import numpy as np

from snn2hw.nir.conventions import Convention
from snn2hw.nir.errors import NIRError

NEURONS = (nir.CubaLIF, nir.CubaLI, nir.LIF, nir.LI, nir.IF, nir.I, nir.Threshold)


@dataclass
class NeuronParams:
    """One NIR neuron node in snn2hw's per-step terms (arrays over the flat population)."""

    kind: str
    shape: tuple
    du: np.ndarray
    dv: np.ndarray
    c: np.ndarray  # input scale
    bias: np.ndarray  # voltage bias per step
    v_th: np.ndarray
    spiking: bool

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


def neuron_parameters(node, name: str, shape: tuple, conv: Convention, dt: float) -> NeuronParams:
    n = int(np.prod(shape))
    problems = []

    def arr(attr, default=None):
        v = getattr(node, attr, default)
        if v is None:
            v = default
        a = np.asarray(v, dtype=np.float64).ravel()
        if a.size == 1:
            return np.full(n, a[0])
        if a.size != n:
            problems.append(f"node {name!r}: {attr} has {a.size} values for a population of {n} {shape}")
            return np.full(n, np.nan)
        return a

    kind = type(node).__name__
    ones, zeros = np.ones(n), np.zeros(n)
    if isinstance(node, (nir.CubaLIF, nir.CubaLI)):
        du, dv = conv.decay_fraction(arr("tau_syn"), dt), conv.decay_fraction(arr("tau_mem"), dt)
        c = dv * arr("r") * arr("w_in", 1.0) * (du if conv.current_input == "euler" else 1.0)
        bias = dv * arr("v_leak", 0.0)
    elif isinstance(node, (nir.LIF, nir.LI)):
        du, dv = ones, conv.decay_fraction(arr("tau"), dt)
        c, bias = dv * arr("r"), dv * arr("v_leak", 0.0)
    elif isinstance(node, (nir.IF, nir.I)):
        du, dv, c, bias = ones, zeros, arr("r"), zeros
    else:  # Threshold: spikes where this step's input exceeds the threshold
        du, dv, c, bias = ones, ones, ones, zeros
    spiking = not isinstance(node, (nir.CubaLI, nir.LI, nir.I))
    if spiking:
        th_name = "threshold" if isinstance(node, nir.Threshold) else "v_threshold"
        v_th = arr(th_name)
        if not problems and not (np.all(np.isfinite(v_th)) and np.all(v_th > 0)):
            problems.append(f"node {name!r}: {th_name} must be positive and finite (Loihi 2 fires above a positive "
                            f"threshold; min {np.nanmin(v_th):.4g})")
        if getattr(node, "v_reset", None) is not None and not problems and np.any(arr("v_reset") != 0):
            problems.append(f"node {name!r}: v_reset != 0 is not supported (Loihi 2 resets v to 0)")
    else:
        v_th = ones
    if not problems:
        for what, x in (("dt/tau_syn (du)", du), ("dt/tau (dv)", dv)):
            if not np.all(np.isfinite(x)) or np.any(x < 0) or np.any(x > 1):
                bad = x[~(np.isfinite(x) & (x >= 0) & (x <= 1))]
                problems.append(f"node {name!r}: decay fraction {what} = {bad[0]:.4g} outside [0, 1] at dt = {dt} "
                                f"(convention {conv.name!r}: is dt right?)")
        for what, x in (("input scale (r, w_in)", c), ("v_leak", bias)):
            if not np.all(np.isfinite(x)):
                problems.append(f"node {name!r}: {what} is not finite")
    if problems:
        raise NIRError(problems)
    # r = tau/dt written by snnTorch and snn2hw: dv * r is 1 up to rounding; keep it exactly 1
    c = np.where(np.abs(c - 1.0) <= 1e-12, 1.0, c)
    return NeuronParams(kind, tuple(shape), du, dv, c, bias, v_th, spiking)
