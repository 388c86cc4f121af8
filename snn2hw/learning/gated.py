"""Huh & Sejnowski's exact gradient of the gated-synapse QIF network (``snn2hw.nn.gated.GatedQIF``).

``make_rule("gated", mode="discrete" | "adjoint", checkpoints=16)``: every ``GatedQIF`` in the model is
switched to that mode for training, then the batch's loss is back-propagated. The model is smooth, so
both modes give the exact gradient of the discretised network (no surrogate); "adjoint" keeps state
memory independent of the sequence length (see ``snn2hw.nn.gated``).
"""
from __future__ import annotations

from snn2hw.learning.base import BatchResult, LearningRule, LearningRuleError, int_option, register_rule
from snn2hw.nn.gated import MODES, GatedQIF


@register_rule
class GatedSynapseGradient(LearningRule):
    name = "gated"

    def __init__(self, mode: str = "discrete", checkpoints: int = 16):
        if mode not in MODES:
            raise LearningRuleError(f"rule 'gated': mode must be one of {MODES}, got {mode!r}")
        self.mode, self.checkpoints = mode, int_option(self.name, "checkpoints", checkpoints, 1)

    def _layers(self, model) -> list[GatedQIF]:
        layers = [m for m in model.modules() if isinstance(m, GatedQIF)]
        if not layers:
            raise LearningRuleError(f"rule 'gated' trains networks of GatedQIF layers (snn2hw.nn.gated); "
                                    f"{type(model).__name__} has none")
        return layers

    def setup(self, model) -> None:
        for layer in self._layers(model):
            layer.mode, layer.checkpoints = self.mode, self.checkpoints

    def compute_gradients(self, model, x, y, loss_fn, forward_kwargs, scale=1.0) -> BatchResult:
        self.setup(model)
        out = model(x, **forward_kwargs)
        loss = loss_fn(out, y)
        (loss * scale if scale != 1.0 else loss).backward()
        return BatchResult(loss.detach(), out)

    def describe(self) -> dict:
        return {"name": self.name, "mode": self.mode, "checkpoints": self.checkpoints}
