"""Deploying a trained ``GatedQIF`` network: the closest network of snn2hw's Loihi-2 CUBA-LIF layers.

Loihi 2 runs snn2hw networks as Lava's fixed-point CUBA-LIF (``snn2hw.hw.loihi2``): a linear, decaying
current ``u``, a linear, decaying voltage ``v``, a threshold and a reset. A QIF phase neuron needs
``v**2`` (or ``cos theta``) every step and the gated synapse sends a *graded* message for every step
the phase spends in the active zone. Neither is expressible with that neuron; a chip could only run
them as a custom micro-coded neuron with graded spikes, which neither Lava's fixed-point processes
nor snn2hw's simulator implement. The mapping here keeps what can be kept:

* synapse: ``tau_s ds/dt = -s + dG/dt`` becomes the LIF current ``u`` with ``du = 1/tau_s``; a spike
  (a completed crossing) adds ``1/tau_s`` to ``s``, so the recurrent weights become ``g W / tau_s``.
  Input pulses enter ``I`` unfiltered in the QIF model but through ``u`` (a low-pass with DC gain
  ``tau_s``) here, so ``U`` becomes ``g U / tau_s``: the same current once a pulse has lasted a few
  ``tau_s``, and the same charge. Partial crossings (graded output without a spike) are lost.
* neuron: the QIF's rate ``sqrt(I)/(pi tau_v)`` for ``I > 0`` (none for ``I <= 0``) is matched by a
  LIF (``v_th = 1``) with leak ``dv`` and input gain ``g`` fitted by least squares on
  ``0 < I <= i_max``, and a bias ``g I0 + dv`` that puts the LIF's rheobase where the QIF's is (I = 0).
  What is lost: the QIF's slow passage near rheobase (a "ghost" of the saddle-node that the QIF
  network can use as memory), and its bistability below rheobase.
* read-out: ``o = D s + b`` becomes a non-spiking ``LeakyReadout`` with ``du = 1/tau_s``, ``dv = 1``
  (v = u + bias), weights ``D / tau_s`` and bias ``b``.
* timing: every hop on the chip adds one step of delay (two steps from input to read-out).

The result is an ordinary ``SpikingSequential`` (``RecurrentLIFDense`` + ``LeakyReadout``): it exports,
quantizes, compiles and runs on the simulator like any other snn2hw network, and can be fine-tuned with
BPTT. ``benchmarks/bench_gated.py`` measures what the mapping costs on delayed-memory XOR.
"""
from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["lif_rate", "qif_rate", "fit_lif_rate", "to_lif_network", "deployed_readout", "refit_readout"]


def qif_rate(current: np.ndarray, tau_v: float) -> np.ndarray:
    """Spikes per step of a QIF neuron (``tau_v dv/dt = v**2 + I``) under constant current I."""
    return np.sqrt(np.clip(current, 0.0, None)) / (math.pi * tau_v)


def lif_rate(drive: np.ndarray, dv: float, v_th: float = 1.0) -> np.ndarray:
    """Spikes per step of snn2hw's discrete LIF (reset to 0, strict ``v > v_th``) under constant drive
    ``c`` per step: ``v_n = c (1 - (1 - dv)**n) / dv`` first exceeds ``v_th`` after n steps."""
    drive = np.asarray(drive, dtype=np.float64)
    out = np.zeros_like(drive)
    ok = drive * (1.0 if dv == 0 else 1.0) > v_th * dv + 1e-12
    if dv == 0:
        n = np.floor(v_th / drive[ok]) + 1
    else:
        ratio = 1.0 - v_th * dv / drive[ok]
        n = np.floor(np.log(ratio) / np.log(1.0 - dv)) + 1
    out[ok] = 1.0 / np.maximum(n, 1.0)
    return out


def fit_lif_rate(tau_v: float, i_max: float = 1.0, points: int = 200) -> tuple[float, float, float]:
    """(dv, gain, rms error in spikes/step) of the LIF whose rate ``lif_rate(gain I + dv, dv)`` best
    matches ``qif_rate(I, tau_v)`` on ``0 < I <= i_max`` (grid search; both are 0 for I <= 0)."""
    current = np.linspace(i_max / points, i_max, points)
    target = qif_rate(current, tau_v)
    best = (math.inf, 0.0, 0.0)
    for dv in np.linspace(0.0, 0.5, 51):
        for gain in np.geomspace(1e-3, 10.0, 121):
            err = float(np.sqrt(np.mean((lif_rate(gain * current + dv, dv) - target) ** 2)))
            if err < best[0]:
                best = (err, float(dv), float(gain))
    return best[1], best[2], best[0]


def to_lif_network(layer, lif_dv: float | None = None, lif_gain: float | None = None, i_max: float = 1.0):
    """A ``SpikingSequential`` of ``RecurrentLIFDense`` (hidden) + ``LeakyReadout`` approximating ``layer``
    (a trained ``GatedQIF``). ``lif_dv``/``lif_gain`` override the fitted LIF leak and input gain;
    ``i_max`` is the current range of the rate fit."""
    from snn2hw.nn.conv import LeakyReadout
    from snn2hw.nn.layers import RecurrentLIFDense, SpikingSequential

    if lif_dv is None or lif_gain is None:
        dv, gain, _ = fit_lif_rate(layer.tau_v, i_max)
        lif_dv = dv if lif_dv is None else lif_dv
        lif_gain = gain if lif_gain is None else lif_gain
    du = 1.0 / layer.tau_s
    hidden = RecurrentLIFDense(layer.in_features, layer.hidden, du=du, dv=float(lif_dv), v_th=1.0, bias=True)
    out_scale = float(layer.weight_out.detach().abs().sum(dim=1).max()) / layer.tau_s + float(
        layer.bias_out.detach().abs().max())
    readout = LeakyReadout(layer.hidden, layer.out_features, du=du, dv=1.0, v_scale=max(out_scale, 1e-3), bias=True)
    with torch.no_grad():
        hidden.weight.copy_(lif_gain * layer.weight_in.detach() / layer.tau_s)
        hidden.rec_weight.copy_(lif_gain * layer.weight_rec.detach() / layer.tau_s)
        hidden.bias.copy_(lif_gain * layer.bias_in.detach() + lif_dv)
        readout.weight.copy_(layer.weight_out.detach() / layer.tau_s)
        readout.bias.copy_(layer.bias_out.detach())
    return SpikingSequential([hidden, readout]).to(layer.weight_in.device)


def deployed_readout(network, x: np.ndarray | torch.Tensor, dt: float = 1e-3) -> np.ndarray:
    """Compile ``network`` (a ``SpikingSequential`` ending in a ``LeakyReadout``) and run it on the
    bit-accurate simulator: the read-out's v in float units, (batch, T, out)."""
    from snn2hw.backends import get_backend
    from snn2hw.compiler import compile_graph

    art = compile_graph(network.to_ir(dt))
    out = art.graph.outputs[0]
    scale = next(q["scale"] for q in art.provenance["quantization"] if q["population"] == out)
    x = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x).astype(np.int64)
    res = get_backend("sim")(art, x, record_state=[out])
    return res.v[out].astype(np.float64) / scale


def refit_readout(network, x: torch.Tensor, y: torch.Tensor, on: str = "float") -> "torch.nn.Module":
    """A copy of ``network`` (``to_lif_network``'s ``SpikingSequential``) whose ``LeakyReadout`` weights and bias
    are the least-squares fit of the targets ``y`` (n, T, out) on the LIF network's own hidden spikes for
    inputs ``x``, filtered by the read-out's kernel; steps where ``y`` is 0 (delayed XOR) or NaN are not
    scored. Closed form, no gradient: it keeps the mapped hidden network and re-learns only the linear
    read-out the mapping gets wrong (the hidden LIF spikes are not the QIF's).

    ``on="float"``: the hidden spikes of the float network; ``on="sim"``: those of the compiled network on
    the bit-accurate simulator, i.e. exactly the spikes the deployed read-out receives (the hidden layers'
    fixed-point weights change some spikes, and a read-out fitted to the float spikes does not transfer)."""
    if on not in ("float", "sim"):
        raise ValueError(f"refit_readout: on must be 'float' or 'sim', got {on!r}")
    import copy

    from snn2hw.nn.conv import LeakyReadout
    from snn2hw.nn.layers import SpikingSequential

    net = copy.deepcopy(network).cpu().eval()
    hidden_layers, old = net.layers[:-1], net.layers[-1]
    n_hidden = old.in_features
    probe = LeakyReadout(n_hidden, n_hidden, du=float(old.du), dv=float(old.dv), bias=False)
    with torch.no_grad():
        probe.weight.copy_(torch.eye(n_hidden))
        h = _sim_hidden_spikes(net, x) if on == "sim" else x.float()
        for layer in (hidden_layers if on == "float" else []):
            h = layer(h)
        feats = probe(h).double()  # (n, T, hidden): each hidden neuron's filtered spikes, as the read-out sees them
    y = y if y.dim() == 3 else y[..., None]
    mask = torch.isfinite(y).all(-1) & (y != 0).any(-1)
    a = torch.cat([feats[mask], torch.ones(int(mask.sum()), 1, dtype=torch.float64)], dim=1)
    sol = torch.linalg.lstsq(a, y[mask].double()).solution  # (hidden + 1, out)
    weight, bias = sol[:-1].t().float(), sol[-1].float()
    scale = float(weight.abs().sum(dim=1).max()) + float(bias.abs().max())
    new = LeakyReadout(n_hidden, old.out_features, du=float(old.du), dv=float(old.dv), v_scale=max(scale, 1e-3), bias=True)
    with torch.no_grad():
        new.weight.copy_(weight)
        new.bias.copy_(bias)
    return SpikingSequential([*hidden_layers, new])


def _sim_hidden_spikes(network, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Spikes (n, T, hidden) of the population that feeds ``network``'s read-out, on the simulator."""
    from snn2hw.backends import get_backend
    from snn2hw.compiler import compile_graph

    art = compile_graph(network.to_ir())
    out = art.graph.outputs[0]
    feeding = [p.src for p in art.graph.projections if p.dst == out and p.src != out]
    if len(feeding) != 1:
        raise ValueError(f"refit_readout(on='sim'): the read-out {out!r} must be fed by one population, got {feeding}")
    run = get_backend("sim")
    parts = [run(art, np.asarray(x[lo:lo + batch].cpu()).astype(np.int64), record=feeding, count_events=False).spikes[feeding[0]]
             for lo in range(0, len(x), batch)]
    return torch.from_numpy(np.concatenate(parts)).float()
