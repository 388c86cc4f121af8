"""The learning-rule interface: registry, BPTT as the default rule, rule state in resumable checkpoints."""
from __future__ import annotations

import pytest
import torch

from snn2hw.learning import BatchResult, LearningRule, LearningRuleError, available_rules, make_rule, register_rule
from snn2hw.nn.layers import SpikingSequential
from snn2hw.train.trainer import Trainer, TrainerConfig


def _data(n=32, steps=12, n_in=10, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    rates = torch.full((n, n_in), 0.05)
    for c in range(classes):
        rates[y == c, c * 3:(c + 1) * 3] = 0.6
    x = (torch.rand(n, steps, n_in, generator=g) < rates[:, None, :]).float()
    return x, y


def _model(seed=0):
    torch.manual_seed(seed)
    return SpikingSequential.build([10, 16, 3], du=0.3, dv=0.2, v_th=1.0, weight_gain=3.0)


def test_registry_names_and_errors():
    assert "bptt" in available_rules()
    assert make_rule().name == "bptt" and make_rule("BPTT").name == "bptt"
    with pytest.raises(LearningRuleError, match="unknown learning rule 'nope'.*bptt"):
        make_rule("nope")
    with pytest.raises(LearningRuleError, match="bad options"):
        make_rule("bptt", gain=2.0)


def test_bptt_rule_equals_plain_backward():
    x, y = _data()
    cfg = TrainerConfig(epochs=2, batch_size=8, lr=1e-2, progress=False, tensorboard=False)
    a, b = _model(), _model()
    Trainer(a, cfg).fit((x, y))
    # The same run with the loss backpropagated by hand: the rule must not change a single bit.

    @register_rule
    class HandBackward(LearningRule):
        name = "test-hand-backward"

        def compute_gradients(self, model, x, y, loss_fn, forward_kwargs, scale=1.0):
            out = model(x)
            loss = loss_fn(out, y)
            loss.backward()
            return BatchResult(loss.detach(), out)

    Trainer(b, cfg, rule="test-hand-backward").fit((x, y))
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_rule_state_round_trips_through_resume(tmp_path):
    @register_rule
    class Counting(LearningRule):
        """BPTT that also counts batches (state that must survive a resume)."""
        name = "test-counting"

        def __init__(self):
            self.batches = torch.zeros((), dtype=torch.int64)

        def compute_gradients(self, model, x, y, loss_fn, forward_kwargs, scale=1.0):
            self.batches += 1
            return make_rule("bptt").compute_gradients(model, x, y, loss_fn, forward_kwargs, scale)

        def state_dict(self):
            return {"batches": self.batches.clone()}

        def load_state_dict(self, state):
            self.batches = state["batches"].clone()

    x, y = _data()
    cfg = TrainerConfig(epochs=1, batch_size=8, progress=False, tensorboard=False, checkpoint_dir=str(tmp_path),
                        rule="test-counting")
    t = Trainer(_model(), cfg)
    t.fit((x, y))
    assert int(t.rule.batches) == 4
    cfg2 = TrainerConfig(**{**cfg.__dict__, "epochs": 2})
    t2 = Trainer(_model(), cfg2)
    t2.fit((x, y), resume=True)
    assert int(t2.rule.batches) == 8  # 4 restored from the checkpoint + 4 of the second epoch
