"""Feedback alignment ("fa") and direct feedback alignment ("dfa") for BPTT-trained dense layers.

Both keep surrogate-gradient BPTT *inside* every layer (through its own time steps, its reset and, for a
``RecurrentLIFDense``, its recurrent weights) and change only how the error crosses from one layer to
the one below:

* FA (Lillicrap et al. 2016): where BPTT sends ``dL/ds_in[t] = W^T dL/da[t+1]`` down a Dense hop, FA
  sends ``B^T dL/da[t+1]`` with a fixed random ``B`` of W's shape. With ``B = W`` it is BPTT exactly.
  A recurrent hop ``V`` is also a weight transport: by default (``recurrent_feedback="exact"``) the error
  goes back through time with ``V^T`` (FA between layers, BPTT within a layer); with
  ``recurrent_feedback="random"`` it goes back with a fixed random ``B_V`` of V's shape (FA through time,
  no weight is transported anywhere), ``B_V`` uniform with the standard deviation V has at setup.
* DFA (Nokland 2016): every hidden layer ``l`` receives the network's output error directly,
  ``dL/ds_l[t] = B_l^T e[t + d_l]``, with ``e = dL/d(output)`` (the error the loss puts on the output
  sequence), ``B_l`` fixed random (n_out, n_l), and ``d_l`` the number of one-step hops from layer ``l``
  to the output (``align_delays``; an output at step t cannot depend on layer ``l`` after ``t - d_l``).
  Layers are cut from each other (each one's input is detached), so no error passes between them.

The matrices come from the rule's ``seed`` and live in ``state_dict`` for exact resume.
"""
from __future__ import annotations

import math

import torch

from snn2hw.learning.base import BatchResult, LearningRule, LearningRuleError, bool_option, int_option, register_rule
from snn2hw.learning.stack import (check_forward_kwargs, check_rate_options, check_window, dense_stack, error_of,
                                   hops_to_output, layer_forward, load_matrices, random_matrix, rate_error)
from snn2hw.nn.conv import LeakyReadout
from snn2hw.nn.layers import RecurrentLIFDense

__all__ = ["FeedbackAlignment", "DirectFeedbackAlignment", "feedback_projection"]


class _FeedbackProjection(torch.autograd.Function):
    """``s_in @ W^T`` whose input gradient is ``g @ B`` (B fixed) instead of ``g @ W``; W's gradient is exact."""

    @staticmethod
    def forward(ctx, s_in, weight, feedback):
        ctx.save_for_backward(s_in, feedback)
        return s_in @ weight.t()

    @staticmethod
    def backward(ctx, g):
        s_in, feedback = ctx.saved_tensors
        grad_in = g @ feedback if ctx.needs_input_grad[0] else None
        grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w = g.reshape(-1, g.shape[-1]).t() @ s_in.reshape(-1, s_in.shape[-1])
        return grad_in, grad_w, None


def feedback_projection(feedback: torch.Tensor):
    """A ``project(s_in, weight)`` for ``layer_forward`` whose backward uses ``feedback`` instead of ``weight``."""
    return lambda s_in, weight: _FeedbackProjection.apply(s_in, weight, feedback)


class _SeededFeedback(LearningRule):
    """Shared by FA and DFA: fixed matrices built in ``setup`` from ``seed``, kept in ``state_dict``."""

    def __init__(self, seed: int = 0):
        self.seed = int_option(self.name, "seed", seed)
        self.feedback: list[torch.Tensor | None] | None = None

    def _shapes(self, layers) -> list[tuple[int, int] | None]:
        raise NotImplementedError

    def setup(self, model) -> None:
        layers = dense_stack(model, self.name, allow_dropout=True)
        g = torch.Generator().manual_seed(self.seed)
        like = layers[0].weight.detach()
        self.feedback = [None if s is None else random_matrix(*s, g, like) for s in self._shapes(layers)]

    def _ready(self, model, layers) -> None:
        if self.feedback is None or len(self.feedback) != len(layers):
            self.setup(model)
        dev = layers[0].weight.device
        self.feedback = [None if b is None else b.to(dev) for b in self.feedback]

    def state_dict(self) -> dict:
        return {"seed": self.seed, "feedback": [None if b is None else b.clone() for b in (self.feedback or [])]}

    def load_state_dict(self, state: dict) -> None:
        if self.feedback is None:
            raise LearningRuleError(f"rule {self.name!r}: call setup(model) before load_state_dict")
        self.feedback = load_matrices(self.name, self.feedback, state.get("feedback", []), "feedback matrices")
        self.seed = int(state.get("seed", self.seed))

    def describe(self) -> dict:
        return {"name": self.name, "seed": self.seed}


@register_rule
class FeedbackAlignment(_SeededFeedback):
    """BPTT through each layer's time steps; a fixed random B instead of W^T between layers."""

    name = "fa"
    RECURRENT_FEEDBACK = ("exact", "random")

    def __init__(self, seed: int = 0, recurrent_feedback: str = "exact"):
        super().__init__(seed)
        if recurrent_feedback not in self.RECURRENT_FEEDBACK:
            raise LearningRuleError(f"rule 'fa': recurrent_feedback must be one of {self.RECURRENT_FEEDBACK}, "
                                    f"got {recurrent_feedback!r}")
        self.recurrent_feedback = recurrent_feedback
        self.rec_feedback: list[torch.Tensor | None] | None = None

    def _shapes(self, layers):
        # The first layer sends no error further down, so it needs no matrix.
        return [None] + [tuple(layer.weight.shape) for layer in layers[1:]]

    def setup(self, model) -> None:
        super().setup(model)
        layers = dense_stack(model, self.name, allow_dropout=True)
        # drawn after the between-layer matrices, from its own stream, so that those stay as they were
        g = torch.Generator().manual_seed(self.seed + 1)
        self.rec_feedback = [None] * len(layers)
        if self.recurrent_feedback == "random":
            for k, layer in enumerate(layers):
                if isinstance(layer, RecurrentLIFDense):
                    v = layer.effective_rec_weight().detach()
                    b = random_matrix(*v.shape, g, v)  # std 1/sqrt(n)
                    std = float(v.std())
                    self.rec_feedback[k] = b * (std * math.sqrt(v.shape[0])) if std > 0 else b

    def _ready(self, model, layers) -> None:
        super()._ready(model, layers)
        if self.rec_feedback is None or len(self.rec_feedback) != len(layers):
            self.setup(model)
        dev = layers[0].weight.device
        self.rec_feedback = [None if b is None else b.to(dev) for b in self.rec_feedback]

    def state_dict(self) -> dict:
        return {**super().state_dict(), "recurrent_feedback": self.recurrent_feedback,
                "rec_feedback": [None if b is None else b.clone() for b in (self.rec_feedback or [])]}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if state.get("recurrent_feedback", "exact") != self.recurrent_feedback:
            raise LearningRuleError(f"rule 'fa': the checkpoint was trained with recurrent_feedback="
                                    f"{state.get('recurrent_feedback', 'exact')!r}, this rule has "
                                    f"{self.recurrent_feedback!r}")
        if "rec_feedback" in state:
            self.rec_feedback = load_matrices(self.name, self.rec_feedback, state["rec_feedback"],
                                              "recurrent feedback matrices")

    def describe(self) -> dict:
        return {**super().describe(), "recurrent_feedback": self.recurrent_feedback}

    def compute_gradients(self, model, x, y, loss_fn, forward_kwargs, scale=1.0) -> BatchResult:
        collect_all = check_forward_kwargs(self.name, forward_kwargs)
        layers = dense_stack(model, self.name, allow_dropout=True)
        check_window(self.name, model, x.shape[1], collect_all)
        if any(layer.qat is not None for layer in layers):
            raise LearningRuleError("rule 'fa' trains float layers; fine-tune quantization-aware with rule 'bptt'")
        self._ready(model, layers)
        outs, h, k = [], x, 0
        for module in model.layers:
            if module in layers:
                b = self.feedback[k]
                h = layer_forward(module, h, None if b is None else feedback_projection(b), self.rec_feedback[k])
                k += 1
            else:
                h = module(h)
            outs.append(h)
        loss = loss_fn(outs if collect_all else outs[-1], y)
        (loss * scale if scale != 1.0 else loss).backward()
        return BatchResult(loss.detach(), outs if collect_all else outs[-1])


@register_rule
class DirectFeedbackAlignment(_SeededFeedback):
    """The output error sent to every hidden layer through its own fixed random matrix."""

    name = "dfa"

    def __init__(self, seed: int = 0, align_delays: bool = True, rate_target: float | None = None,
                 rate_cost: float = 1.0):
        super().__init__(seed)
        self.align_delays = bool_option(self.name, "align_delays", align_delays)
        self.rate_target, self.rate_cost = check_rate_options(self.name, rate_target, rate_cost)

    def _shapes(self, layers):
        n_out = layers[-1].out_features
        return [(n_out, layer.out_features) for layer in layers[:-1]] + [None]

    def describe(self) -> dict:
        return {**super().describe(), "align_delays": self.align_delays, "rate_target": self.rate_target,
                "rate_cost": self.rate_cost}

    def compute_gradients(self, model, x, y, loss_fn, forward_kwargs, scale=1.0) -> BatchResult:
        collect_all = check_forward_kwargs(self.name, forward_kwargs)
        layers = dense_stack(model, self.name, allow_dropout=True)
        check_window(self.name, model, x.shape[1], collect_all or self.rate_target is not None)
        self._ready(model, layers)
        outs, h = [], x
        for module in model.layers:
            h = module(h.detach())  # each layer learns from its own error only
            outs.append(h)
        loss, direct = error_of(outs, y, loss_fn, collect_all)
        err = direct[-1]
        pos = [i for i, m in enumerate(model.layers) if m in layers]
        tensors, grads = [], []
        for k, i in enumerate(pos):
            g = direct[i]
            if k < len(pos) - 1 and err is not None:
                # an output at step t sees layer k's spikes of step t - shift at the latest; none at all when the
                # window is shorter than the shift (the layer then gets no error from the output)
                shift = min(hops_to_output(layers, k), err.shape[1]) if self.align_delays else 0
                e = err[:, shift:] if shift else err
                proj = e @ self.feedback[k]
                if shift:
                    proj = torch.nn.functional.pad(proj, (0, 0, 0, shift))
                g = proj if g is None else g + proj
            if self.rate_target is not None and not isinstance(layers[k], LeakyReadout):
                o = outs[i].detach()
                r = rate_error(o.sum(1), o.shape[1], self.rate_target, self.rate_cost).unsqueeze(1).expand_as(o)
                g = r if g is None else g + r
            if g is not None:
                tensors.append(outs[i])
                grads.append(g * scale if scale != 1.0 else g)
        if tensors:
            torch.autograd.backward(tensors, grads)
        return BatchResult(loss, outs if collect_all else outs[-1])
