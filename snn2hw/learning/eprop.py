"""e-prop (Bellec et al. 2020) and DECOLLE-style local errors (Kaiser, Mostafa & Neftci 2020).

Both run the network forward in time with eligibility traces (``snn2hw.learning.online``) and multiply
them by a learning signal; neither back-propagates through time nor through layers.

* e-prop (``"eprop"``): ``dW_ij = sum_t L_i[t] e_ij[t]`` with the broadcast learning signal
  ``L_l[t] = B_l^T err[t + d_l]``: ``err = dL/d(output)`` is the error the trainer's loss puts on the
  output sequence (for a cross-entropy on spike counts, softmax(counts) - one-hot at every step; for a
  read-out's membrane, Bellec's ``y - y*`` form), ``B_l`` a fixed random (n_out, n_l) matrix
  (``feedback="random"``) or the product of the weights above (``"symmetric"``), and ``d_l`` the hops
  from layer l to the output (``align_delays``). The output layer uses ``err`` itself. Recurrent weights
  learn through the same traces (the recurrent spikes are the presynaptic train).
* DECOLLE (``"decolle"``): every hidden layer l has a fixed random read-out ``R_l`` (n_out, n_l) and its
  own loss, the trainer's loss applied to ``y_l[t] = R_l s_l[t]``; its learning signal is
  ``R_l^T dL_l/dy_l[t]``, so errors stay inside the layer; the output layer learns from the network's
  loss. The traces carry the state's dependence on W (the presynaptic trace P of DECOLLE), everything
  else is detached every step.

The losses may depend on the whole sequence (spike counts), so a first, gradient-free pass of the same
step loop records what the loss reads (the output, or DECOLLE's read-outs: (batch, T, n_out)) and the
errors are taken from it; a second pass accumulates the updates online. Neither pass keeps hidden
state over time: memory grows with T only by those (batch, T, n_out) sequences.
"""
from __future__ import annotations

import torch

from snn2hw.learning.base import (BatchResult, LearningRule, LearningRuleError, bool_option, float_option, int_option,
                                  register_rule)
from snn2hw.learning.online import accumulate_into_grads, run_online
from snn2hw.learning.stack import (check_float_weights_only, check_forward_kwargs, check_rate_options, check_window,
                                   dense_stack, error_of, hops_to_output, load_matrices, random_matrix, rate_error)

__all__ = ["EProp", "Decolle", "symmetric_feedback"]


def symmetric_feedback(layers: list, index: int) -> torch.Tensor:
    """(n_out, n_index): the weights above layer ``index`` multiplied through, W_L ... W_(index+1)."""
    m = layers[-1].weight.detach()
    for layer in reversed(layers[index + 1:-1]):
        m = m @ layer.weight.detach()
    return m


class _OnlineRule(LearningRule):
    """Shared: fixed random matrices per hidden layer from ``seed``, kept in ``state_dict``."""

    matrices_name = "feedback matrices"

    def __init__(self, seed: int = 0, reset_in_trace: "bool | str" = False, kind: str = "random"):
        self.seed = int_option(self.name, "seed", seed)
        if not (isinstance(reset_in_trace, bool) or reset_in_trace == "output"):
            raise LearningRuleError(f"rule {self.name!r}: reset_in_trace must be true, false or \"output\", "
                                    f"got {reset_in_trace!r}")
        self.reset_in_trace = reset_in_trace
        self.rate_target, self.rate_cost = None, 1.0  # the firing-rate regulariser (e-prop, DECOLLE): off
        self.kind = kind
        self.matrices: list | None = None

    def setup(self, model) -> None:
        layers = dense_stack(model, self.name)
        check_float_weights_only(layers, self.name)
        g = torch.Generator().manual_seed(self.seed)
        like, n_out = layers[-1].weight.detach(), layers[-1].out_features
        self.matrices = [random_matrix(n_out, l.out_features, g, like, self.kind) for l in layers[:-1]] + [None]

    def _rate_signals(self, states, steps: int) -> list:
        """The firing-rate regulariser's per-step learning signal of every spiking layer (``rate_error``; None
        for a read-out, or when ``rate_target`` is None), from the spike counts of the first pass."""
        if self.rate_target is None:
            return [None] * len(states)
        return [None if st.count is None else rate_error(st.count, steps, self.rate_target, self.rate_cost)
                for st in states]

    def _reset_flags(self, layers) -> "bool | list":
        """Per layer: keep the reset in the trace? ``"output"``: the output layer only (its per-synapse trace is
        (batch, n_out, n_in), cheap; the wide hidden layers keep the shared presynaptic trace)."""
        if self.reset_in_trace == "output":
            return [False] * (len(layers) - 1) + [True]
        return bool(self.reset_in_trace)

    def _layers(self, model) -> list:
        layers = dense_stack(model, self.name)
        check_float_weights_only(layers, self.name)
        if self.matrices is None or len(self.matrices) != len(layers):
            self.setup(model)
        dev = layers[0].weight.device
        self.matrices = [None if m is None else m.to(dev) for m in self.matrices]
        return layers

    def state_dict(self) -> dict:
        return {"seed": self.seed, "matrices": [None if m is None else m.clone() for m in (self.matrices or [])]}

    def load_state_dict(self, state: dict) -> None:
        if self.matrices is None:
            raise LearningRuleError(f"rule {self.name!r}: call setup(model) before load_state_dict")
        self.matrices = load_matrices(self.name, self.matrices, state.get("matrices", []), self.matrices_name)
        self.seed = int(state.get("seed", self.seed))

    def describe(self) -> dict:
        return {"name": self.name, "seed": self.seed, "reset_in_trace": self.reset_in_trace}


@register_rule
class EProp(_OnlineRule):
    name = "eprop"

    def __init__(self, feedback: str = "random", seed: int = 0, reset_in_trace: "bool | str" = False,
                 align_delays: bool = True, rate_target: float | None = None, rate_cost: float = 1.0):
        if feedback not in ("random", "symmetric"):
            raise LearningRuleError(f"rule 'eprop': feedback must be 'random' or 'symmetric', got {feedback!r}")
        super().__init__(seed, reset_in_trace)
        self.feedback = feedback
        self.align_delays = bool_option(self.name, "align_delays", align_delays)
        self.rate_target, self.rate_cost = check_rate_options(self.name, rate_target, rate_cost)

    def describe(self) -> dict:
        return {**super().describe(), "feedback": self.feedback, "align_delays": self.align_delays,
                "rate_target": self.rate_target, "rate_cost": self.rate_cost}

    def compute_gradients(self, model, x, y, loss_fn, forward_kwargs, scale=1.0) -> BatchResult:
        collect_all = check_forward_kwargs(self.name, forward_kwargs)
        layers = self._layers(model)
        check_window(self.name, model, x.shape[1], collect_all or self.rate_target is not None)
        last = len(layers) - 1
        first = run_online(layers, x, record=range(len(layers)) if collect_all else [last])
        if collect_all:
            output = [first.records[i] for i in range(len(layers))]
            loss, errs = error_of(output, y, loss_fn, True)
        else:
            output = first.records[last]
            loss, (g,) = error_of([output], y, loss_fn, False)
            errs = [None] * last + [g]
        err, steps = errs[-1], x.shape[1]
        if err is None:
            raise LearningRuleError("rule 'eprop': the loss does not depend on the network's output")
        feedback = [symmetric_feedback(layers, i) if self.feedback == "symmetric" else self.matrices[i]
                    for i in range(last)]
        shifts = [hops_to_output(layers, i) if self.align_delays else 0 for i in range(last)]
        reg = self._rate_signals(first.states, steps)

        def signal(t, _outs):
            sig = []
            for i in range(last):
                tt = t + shifts[i]
                s = err[:, tt] @ feedback[i] if tt < steps else None
                if errs[i] is not None:
                    s = errs[i][:, t] if s is None else s + errs[i][:, t]
                if reg[i] is not None:
                    s = reg[i] if s is None else s + reg[i]
                sig.append(s)
            sig.append(err[:, t] if reg[last] is None else err[:, t] + reg[last])
            return sig

        res = run_online(layers, x, signal, reset_in_trace=self._reset_flags(layers))
        accumulate_into_grads(layers, res.grads, scale)
        return BatchResult(loss, output)


@register_rule
class Decolle(_OnlineRule):
    name = "decolle"
    matrices_name = "read-out matrices"

    def __init__(self, seed: int = 0, reset_in_trace: "bool | str" = False, readout_scale: float = 1.0,
                 rate_target: float | None = None, rate_cost: float = 1.0):
        super().__init__(seed, reset_in_trace)
        # 0 would leave the hidden layers without a signal, NaN/inf make every update NaN
        self.readout_scale = float_option(self.name, "readout_scale", readout_scale)
        if self.readout_scale == 0.0:
            raise LearningRuleError("rule 'decolle': readout_scale must be nonzero (0 silences every hidden layer's "
                                    "learning signal)")
        self.rate_target, self.rate_cost = check_rate_options(self.name, rate_target, rate_cost)

    def setup(self, model) -> None:
        super().setup(model)
        # the read-outs' size sets how hard each local loss saturates (Adam undoes any other scale)
        self.matrices = [None if m is None else m * self.readout_scale for m in self.matrices]

    def describe(self) -> dict:
        return {**super().describe(), "readout_scale": self.readout_scale, "rate_target": self.rate_target,
                "rate_cost": self.rate_cost}

    def compute_gradients(self, model, x, y, loss_fn, forward_kwargs, scale=1.0) -> BatchResult:
        if check_forward_kwargs(self.name, forward_kwargs):
            raise LearningRuleError("rule 'decolle': the return_all forward option (losses on hidden spikes) is "
                                    "not supported; each hidden layer already has its own loss")
        layers = self._layers(model)
        check_window(self.name, model, x.shape[1], True)  # every hidden layer's local loss reads that layer
        last = len(layers) - 1
        record = {i: self.matrices[i] for i in range(last)}
        record[last] = None
        first = run_online(layers, x, record=record)
        out = first.records[last]
        loss, (err,) = error_of([out], y, loss_fn, False)
        local = []
        for i in range(last):  # each hidden layer's own loss on its fixed read-out
            _, (g,) = error_of([first.records[i]], y, loss_fn, False)
            local.append(g)  # (batch, T, n_out): projected per step, so nothing (batch, T, n_l) is kept
        if err is None:
            raise LearningRuleError("rule 'decolle': the loss does not depend on the network's output")

        reg = self._rate_signals(first.states, x.shape[1])

        def signal(t, _outs):
            sig = [None if g is None else g[:, t] @ r for g, r in zip(local, self.matrices)] + [err[:, t]]
            return [s if r is None else (r if s is None else s + r) for s, r in zip(sig, reg)]

        res = run_online(layers, x, signal, reset_in_trace=self._reset_flags(layers))
        accumulate_into_grads(layers, res.grads, scale)
        return BatchResult(loss, out)
