"""The interface between the ``Trainer`` and a learning rule, and the registry of rules by name."""
from __future__ import annotations

import importlib
import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import nn

__all__ = ["BatchResult", "LearningRule", "LearningRuleError", "register_rule", "make_rule", "available_rules",
           "int_option", "bool_option", "float_option"]


class LearningRuleError(ValueError):
    """A rule was asked for by an unknown name, given unknown options, or used on a model it cannot train."""


# Option checks: rule options arrive from JSON config files too, where "false" (a string) or 1.5 (for a seed) must be
# refused by name, not turned into True or 1 by bool() / int().

def int_option(rule: str, name: str, value, minimum: int | None = None) -> int:
    """``value`` as an int; a ``LearningRuleError`` naming the option unless it is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise LearningRuleError(f"rule {rule!r}: {name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise LearningRuleError(f"rule {rule!r}: {name} must be >= {minimum}, got {value!r}")
    return int(value)


def bool_option(rule: str, name: str, value) -> bool:
    """``value`` if it is true or false; a ``LearningRuleError`` naming the option otherwise."""
    if not isinstance(value, bool):
        raise LearningRuleError(f"rule {rule!r}: {name} must be true or false, got {value!r}")
    return value


def float_option(rule: str, name: str, value, minimum: float | None = None, maximum: float | None = None,
                 above: bool = False) -> float:
    """``value`` as a finite float in [minimum, maximum] (``above``: strictly greater than ``minimum``); a
    ``LearningRuleError`` naming the option and its range otherwise (NaN and infinities included)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
    if ok and minimum is not None:
        ok = float(value) > minimum if above else float(value) >= minimum
    if ok and maximum is not None:
        ok = float(value) <= maximum
    if not ok:
        lo = "" if minimum is None else (f" > {minimum}" if above else f" >= {minimum}")
        hi = "" if maximum is None else f" <= {maximum}"
        rng = f"{lo}{',' if lo and hi else ''}{hi}"
        raise LearningRuleError(f"rule {rule!r}: {name} must be a finite number{rng}, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class BatchResult:
    """What a rule hands back for one batch.

    ``loss``: the batch's mean loss, a detached scalar tensor (what the trainer logs). ``output``: the model's
    output for the batch (what ``predict_fn`` turns into class predictions for the accuracy columns).
    """

    loss: torch.Tensor
    output: Any


class LearningRule:
    """One way of computing a batch's gradients.

    Subclasses set ``name`` and implement ``compute_gradients``. The trainer calls, in order:

    * ``setup(model)`` once before the first batch of a ``fit`` (after the model is on its device): build
      whatever the rule keeps besides the model (feedback matrices, fitted tables, per-layer read-outs).
    * ``compute_gradients(model, x, y, loss_fn, forward_kwargs, scale)`` per batch, with gradients zeroed:
      accumulate into ``p.grad`` for the trainable parameters ``scale`` times the gradient (the rule's
      update direction) of the batch's mean loss. ``scale`` is this rank's share of the global batch under
      data parallelism (1.0 otherwise), so that summed gradients are the global batch's. The trainer then
      all-reduces, clips and steps its optimizer, so every rule works with every optimizer and schedule.
    * ``state_dict()`` / ``load_state_dict(state)`` for exact resume: tensors and plain containers only
      (checkpoints load with ``torch.load(weights_only=True)``). Stateless rules keep the defaults.
    """

    name: ClassVar[str] = ""

    def setup(self, model: nn.Module) -> None:
        """Prepare for training ``model`` (default: nothing)."""

    def compute_gradients(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                          loss_fn: Callable[[Any, torch.Tensor], torch.Tensor], forward_kwargs: dict,
                          scale: float = 1.0) -> BatchResult:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise LearningRuleError(f"rule {self.name!r} keeps no state but the checkpoint holds {sorted(state)}")

    def describe(self) -> dict:
        """The rule's name and options, as stored with checkpoints and results."""
        return {"name": self.name}


# name -> module that defines (and registers) the rule; imported on first use.
_BUILTIN: dict[str, str] = {
    "bptt": "snn2hw.learning.bptt",
    "gated": "snn2hw.learning.gated",
    "spike-time": "snn2hw.learning.spike_time",
    "fa": "snn2hw.learning.feedback",
    "dfa": "snn2hw.learning.feedback",
    "eprop": "snn2hw.learning.eprop",
    "decolle": "snn2hw.learning.eprop",
    "superspike": "snn2hw.learning.superspike",
    "hm2bp": "snn2hw.learning.hm2bp",
    "strsbp": "snn2hw.learning.strsbp",
}
_REGISTRY: dict[str, type[LearningRule]] = {}


def register_rule(cls: type[LearningRule]) -> type[LearningRule]:
    """Class decorator: make ``cls`` available to ``make_rule(cls.name)`` (and ``snn2hw train --rule``)."""
    if not cls.name:
        raise LearningRuleError(f"{cls.__qualname__} has no name")
    _REGISTRY[cls.name] = cls
    return cls


def available_rules() -> list[str]:
    return sorted(set(_BUILTIN) | set(_REGISTRY))


def make_rule(rule: "str | LearningRule | None" = None, **options) -> LearningRule:
    """A rule by name with its options (``make_rule("bptt")``), or ``rule`` itself if it already is one."""
    if rule is None:
        rule = "bptt"
    if isinstance(rule, LearningRule):
        if options:
            raise LearningRuleError(f"options {sorted(options)} given with an already built rule {rule.name!r}")
        return rule
    name = str(rule).lower()
    if name not in _REGISTRY and name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])
    if name not in _REGISTRY:
        raise LearningRuleError(f"unknown learning rule {rule!r}; available: {', '.join(available_rules())}")
    cls = _REGISTRY[name]
    try:
        return cls(**options)
    except TypeError as exc:
        raise LearningRuleError(f"rule {name!r}: bad options {sorted(options)} ({exc})") from None
