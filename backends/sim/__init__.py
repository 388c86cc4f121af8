"""snn2hw's bit-accurate simulator backend (``snn2hw.backends.sim``)."""
from snn2hw.backends.sim.simulator import ArithmeticLimitError, run

__all__ = ["ArithmeticLimitError", "run"]
