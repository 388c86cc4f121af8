"""Back-propagation through time with surrogate spike derivatives (the layers' own autograd operators)."""
from __future__ import annotations

from snn2hw.learning.base import BatchResult, LearningRule, register_rule
from snn2hw.learning.stack import check_window


@register_rule
class BPTT(LearningRule):
    """Forward the whole sequence, then ``loss.backward()``.

    The surrogate derivative, reset detaching and every other choice of the backward pass belong to the
    layers (``snn2hw.nn``); this rule adds nothing to them, so it is exactly what the trainer did before
    rules became pluggable.
    """

    name = "bptt"

    def compute_gradients(self, model, x, y, loss_fn, forward_kwargs, scale=1.0) -> BatchResult:
        check_window(self.name, model, x.shape[1], bool(forward_kwargs.get("return_all", False)))
        out = model(x, **forward_kwargs)
        loss = loss_fn(out, y)
        (loss * scale if scale != 1.0 else loss).backward()
        return BatchResult(loss.detach(), out)
