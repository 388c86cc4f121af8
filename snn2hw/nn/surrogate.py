"""Surrogate derivatives for the spike nonlinearity.

The forward pass of every spiking neuron in snn2hw is the exact Heaviside step ``s = x > 0`` with
``x = v - v_th`` (strict, as the hardware compares). Its derivative is zero almost everywhere, so
training replaces ``dH/dx`` by a smooth "surrogate" (Neftci, Mostafa & Zenke 2019). A surrogate here is
a small immutable object with one parameter, ``scale``: the steepness, in units of 1/(membrane unit).
The width of the pseudo-derivative is about ``1/scale``; a larger scale is a sharper, more local
gradient.

All surrogates except ``fast_sigmoid`` are unit-area densities (the derivative of a smooth step that
goes from 0 to 1), so ``scale`` changes only their width. ``fast_sigmoid`` keeps SuperSpike's form
(peak 1, area 2/scale) because that is the form the literature's hyper-parameters refer to.

==================  =========================================  ==========  =============
name (aliases)      derivative at x                            peak        default scale
==================  =========================================  ==========  =============
fast_sigmoid        1 / (scale |x| + 1)^2                      1           10
 (superspike)
sigmoid             scale * sig(scale x) * (1 - sig(scale x))  scale / 4   5
arctan (atan)       (scale/2) / (1 + (pi/2 * scale * x)^2)     scale / 2   2
triangle            scale * max(0, 1 - scale |x|)              scale       1
 (piecewise_linear)
exponential         (scale/2) * exp(-scale |x|)                scale / 2   2
gaussian            scale/sqrt(2 pi) * exp(-(scale x)^2 / 2)   0.40 scale  2
boxcar              scale/2  where |x| < 1/scale, else 0       scale / 2   1
 (straight_through)
==================  =========================================  ==========  =============

Each surrogate offers ``derivative(x)`` (a new tensor), ``derivative_(x)`` (overwrites ``x``; the fast
CUBA-LIF backward uses it to avoid a temporary), and ``__call__(x)``, the Heaviside step with this
surrogate as its gradient under autograd (used by unrolled reference models and by simple layers).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

__all__ = [
    "Arctan",
    "Boxcar",
    "Exponential",
    "FastSigmoid",
    "Gaussian",
    "Sigmoid",
    "Surrogate",
    "Triangle",
    "available_surrogates",
    "get_surrogate",
    "heaviside",
    "register_surrogate",
]


@dataclass(frozen=True)
class Surrogate:
    """Base class: Heaviside forward, ``derivative(x)`` backward. Subclasses define ``derivative_``."""

    scale: float = 1.0
    name: ClassVar[str] = "surrogate"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"{type(self).__name__}: scale must be a positive finite number, got {self.scale!r}")

    def derivative_(self, x: torch.Tensor) -> torch.Tensor:
        """Overwrite ``x`` (which must not be needed elsewhere) by the surrogate derivative at ``x``."""
        raise NotImplementedError

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return self.derivative_(x.clone())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Heaviside step ``(x > 0)`` in x's dtype, with this surrogate as its derivative."""
        return _SurrogateSpike.apply(x, self)

    def config(self) -> dict:
        """What ``get_surrogate(**config)`` needs to rebuild this surrogate."""
        return {"name": self.name, "scale": float(self.scale)}


@dataclass(frozen=True)
class FastSigmoid(Surrogate):
    """SuperSpike (Zenke & Ganguli 2018): ``1 / (scale |x| + 1)^2``; peak 1, not unit area."""

    scale: float = 10.0
    name: ClassVar[str] = "fast_sigmoid"

    def derivative_(self, x: torch.Tensor) -> torch.Tensor:
        return x.abs_().mul_(self.scale).add_(1.0).pow_(-2)


@dataclass(frozen=True)
class Sigmoid(Surrogate):
    """Derivative of the logistic ``sig(scale x)``: ``scale * sig * (1 - sig)``."""

    scale: float = 5.0
    name: ClassVar[str] = "sigmoid"

    def derivative_(self, x: torch.Tensor) -> torch.Tensor:
        # sig * (1 - sig) = sig(z) * sig(-z); written with |z| so that exp never overflows:
        # e^-|z| / (1 + e^-|z|)^2.
        e = x.mul_(self.scale).abs_().neg_().exp_()
        return e.div_(e.add(1.0).square_()).mul_(self.scale)


@dataclass(frozen=True)
class Arctan(Surrogate):
    """Derivative of ``1/2 + arctan(pi/2 * scale * x) / pi``: ``(scale/2) / (1 + (pi/2 scale x)^2)``."""

    scale: float = 2.0
    name: ClassVar[str] = "arctan"

    def derivative_(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul_(0.5 * math.pi * self.scale).square_().add_(1.0).reciprocal_().mul_(0.5 * self.scale)


@dataclass(frozen=True)
class Triangle(Surrogate):
    """Piecewise linear: ``scale * max(0, 1 - scale |x|)``; support ``|x| < 1/scale``."""

    scale: float = 1.0
    name: ClassVar[str] = "triangle"

    def derivative_(self, x: torch.Tensor) -> torch.Tensor:
        return x.abs_().mul_(-self.scale).add_(1.0).clamp_(min=0.0).mul_(self.scale)


@dataclass(frozen=True)
class Exponential(Surrogate):
    """Laplace density: ``(scale/2) * exp(-scale |x|)``."""

    scale: float = 2.0
    name: ClassVar[str] = "exponential"

    def derivative_(self, x: torch.Tensor) -> torch.Tensor:
        return x.abs_().mul_(-self.scale).exp_().mul_(0.5 * self.scale)


@dataclass(frozen=True)
class Gaussian(Surrogate):
    """Normal density with standard deviation ``1/scale``."""

    scale: float = 2.0
    name: ClassVar[str] = "gaussian"

    def derivative_(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul_(self.scale).square_().mul_(-0.5).exp_().mul_(self.scale / math.sqrt(2.0 * math.pi))


@dataclass(frozen=True)
class Boxcar(Surrogate):
    """Straight-through in a window: ``scale/2`` where ``|x| < 1/scale``, else 0 (unit area)."""

    scale: float = 1.0
    name: ClassVar[str] = "boxcar"

    def derivative_(self, x: torch.Tensor) -> torch.Tensor:
        inside = x.abs() < 1.0 / self.scale
        return x.copy_(inside).mul_(0.5 * self.scale)


class _SurrogateSpike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, surrogate: Surrogate) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (x,) = ctx.saved_tensors
        return grad_out * ctx.surrogate.derivative(x), None


def heaviside(x: torch.Tensor, surrogate: Surrogate) -> torch.Tensor:
    """``(x > 0)`` as x's dtype, differentiable through ``surrogate``."""
    return _SurrogateSpike.apply(x, surrogate)


# --- registry ------------------------------------------------------------------------------------------
_REGISTRY: dict[str, Callable[..., Surrogate]] = {}


def register_surrogate(name: str, factory: Callable[..., Surrogate], *aliases: str) -> None:
    """Make ``get_surrogate(name, scale=...)`` build ``factory(scale=...)``. Names are case-insensitive."""
    for key in (name, *aliases):
        _REGISTRY[key.lower()] = factory


for _cls, _aliases in (
    (FastSigmoid, ("superspike",)),
    (Sigmoid, ()),
    (Arctan, ("atan",)),
    (Triangle, ("piecewise_linear",)),
    (Exponential, ()),
    (Gaussian, ()),
    (Boxcar, ("straight_through",)),
):
    register_surrogate(_cls.name, _cls, *_aliases)


def available_surrogates() -> list[str]:
    return sorted(_REGISTRY)


def get_surrogate(name: str | Surrogate, scale: float | None = None) -> Surrogate:
    """A surrogate by registry name (``"fast_sigmoid"``, ``"arctan"``...); ``scale=None`` keeps its default.

    A ``Surrogate`` instance is returned unchanged (or with ``scale`` replaced when one is given), so
    layers can take either a name or an object.
    """
    if isinstance(name, Surrogate):
        return name if scale is None else type(name)(scale=float(scale))
    try:
        factory = _REGISTRY[name.lower()]
    except KeyError:
        raise ValueError(f"unknown surrogate {name!r}; known: {', '.join(available_surrogates())}") from None
    return factory() if scale is None else factory(scale=float(scale))
