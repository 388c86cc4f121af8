"""Predictive-coding auto-encoder (Huh & Sejnowski 2018's first task, generated here; our recipe).

A recurrent spiking network receives a smooth, ``dims``-dimensional signal ``x(t)`` and must reproduce it
at its read-out, ``o(t) = D s(t) ~ x(t + horizon)``. The read-out sees only the synaptic traces ``s`` of
the ``hidden`` neurons' spikes, so the signal has to pass through a small spiking population: with
``horizon = 0`` this is the auto-encoding ("predictive coding", Boerlin, Machens & Deneve 2013) set-up in
which efficient networks learn to track the signal with few, precisely timed spikes; ``horizon > 0``
asks the network to predict the signal ahead.

Signal (per trial and dimension): Gaussian white noise low-passed twice by exponential filters of time
constant ``tau_x`` steps (a smooth, band-limited random walk), scaled to unit standard deviation over the
trials of the call. Encoding, so that the same trials drive a deployed (Loihi) network unchanged: each
dimension becomes two binary channels, ON for ``x > 0`` and OFF for ``x < 0``, each a deterministic rate
code of ``rate * |x|`` spikes per step (clipped at 1): channel ``c`` spikes at step ``t`` when
``floor(cumsum(r_c)[t])`` grows. Input ``(n, T, 2 dims)`` 0/1; target ``y (n, T, dims)`` float.

Score: the normalised mean squared error ``NMSE = mean((o - y)^2) / mean(y^2)`` over all steps after
``warmup`` (the signal is zero-mean and unit-variance, so predicting zero, or the mean, scores ~1).
``linear_baseline`` fits the best linear read-out of the *input spikes* themselves, filtered by the
same synaptic kernel (no spiking bottleneck): a reference for what the encoding allows.
"""
from __future__ import annotations

import torch

__all__ = ["make", "nmse", "masked_mse", "linear_baseline", "filtered_inputs"]


def make(n: int, seed: int = 0, steps: int = 200, dims: int = 2, tau_x: float = 15.0, rate: float = 0.4,
         horizon: int = 0, warmup: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` trials: input spikes x (n, steps, 2 dims) and target y (n, steps, dims); the first
    ``warmup`` steps of y are NaN (not scored: the network has not yet seen the signal)."""
    if not (n > 0 and steps > warmup + horizon and dims > 0 and tau_x >= 1.0 and 0.0 < rate <= 1.0
            and horizon >= 0 and warmup >= 0):
        raise ValueError(f"bad predictive-coding parameters: n={n}, steps={steps}, dims={dims}, tau_x={tau_x}, "
                         f"rate={rate}, horizon={horizon}, warmup={warmup} (need steps > warmup + horizon, "
                         f"tau_x >= 1, 0 < rate <= 1)")
    g = torch.Generator().manual_seed(seed)
    total = steps + horizon + int(5 * tau_x)  # a burn-in of 5 tau_x lets the filters forget their start
    noise = torch.randn(n, total, dims, generator=g, dtype=torch.float64)
    a = 1.0 - 1.0 / tau_x
    sig = noise
    for _ in range(2):
        out = torch.empty_like(sig)
        acc = torch.zeros(n, dims, dtype=torch.float64)
        for t in range(total):
            acc = a * acc + (1 - a) * sig[:, t]
            out[:, t] = acc
        sig = out
    sig = sig[:, int(5 * tau_x):]
    sig = sig / sig.std()
    signal = sig[:, :steps]
    target = sig[:, horizon:horizon + steps].clone()
    target[:, :warmup] = float("nan")
    r = torch.cat([signal.clamp(min=0), (-signal).clamp(min=0)], dim=2) * rate
    count = torch.floor(torch.cumsum(r.clamp(max=1.0), dim=1) + 1e-9)
    spikes = torch.diff(count, dim=1, prepend=torch.zeros_like(count[:, :1])).clamp(0, 1)
    return spikes.float(), target.float()


def _output(o: torch.Tensor) -> torch.Tensor:
    return o[-1] if isinstance(o, (list, tuple)) else o


def masked_mse(o: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the scored steps (target not NaN): the training loss."""
    o = _output(o)
    mask = ~torch.isnan(y)
    return ((o - torch.nan_to_num(y)) ** 2 * mask).sum() / mask.sum().clamp(min=1)


def nmse(o: torch.Tensor, y: torch.Tensor) -> float:
    """Normalised MSE over the scored steps: MSE / mean(y^2) (1 = predicting zero)."""
    o = _output(o)
    mask = ~torch.isnan(y)
    yy = torch.nan_to_num(y)
    return float(((o - yy) ** 2 * mask).sum() / (yy ** 2 * mask).sum().clamp(min=1e-12))


def filtered_inputs(x: torch.Tensor, tau_s: float) -> torch.Tensor:
    """The input spikes filtered by the synapse's kernel (``s = (1 - 1/tau_s) s + x / tau_s``), plus a
    constant column: the features of ``linear_baseline``."""
    a = 1.0 - 1.0 / tau_s
    out = torch.empty(x.shape, dtype=torch.float64)
    acc = torch.zeros(x.shape[0], x.shape[2], dtype=torch.float64)
    for t in range(x.shape[1]):
        acc = a * acc + x[:, t].double() / tau_s
        out[:, t] = acc
    return torch.cat([out, torch.ones_like(out[..., :1])], dim=2)


def linear_baseline(x_train, y_train, x_test, y_test, tau_s: float = 10.0) -> float:
    """Test NMSE of the least-squares linear read-out of the synaptically filtered input spikes (fit on
    the training trials): the encoding's own reconstruction error, without a spiking population."""
    def rows(x, y):
        f = filtered_inputs(x, tau_s)
        m = ~torch.isnan(y[..., 0])
        return f[m], y[m].double()

    a, b = rows(x_train, y_train)
    w = torch.linalg.lstsq(a, b).solution
    f = filtered_inputs(x_test, tau_s)
    return nmse((f @ w).float(), y_test)
