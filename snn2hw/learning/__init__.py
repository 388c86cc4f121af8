"""Learning rules: how one batch's parameter gradients are computed.

The ``Trainer`` owns everything around a batch (data order, optimizer, schedule, checkpoints, ranks);
a ``LearningRule`` only fills ``.grad`` of the model's trainable parameters for one batch and returns the
batch's loss and output. Surrogate-gradient BPTT (``"bptt"``) is the default; the other rules of the
seeds (HM2-BP, ST-RSBP, the gated synapse of Huh & Sejnowski, SuperSpike, feedback alignment, local
errors, e-prop, spike-time gradients) plug in the same way, so whatever a rule trains exports,
quantizes and deploys like any other snn2hw network.

``make_rule("bptt")`` builds a rule by name (``available_rules()`` lists the names); rules are
imported only when asked for, so importing this package costs nothing.
"""
from __future__ import annotations

from snn2hw.learning.base import (BatchResult, LearningRule, LearningRuleError, available_rules, make_rule,
                                  register_rule)

__all__ = ["BatchResult", "LearningRule", "LearningRuleError", "available_rules", "make_rule", "register_rule"]
