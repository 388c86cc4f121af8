"""snn2hw's bit-accurate simulator backend (``snn2hw.backends.sim``)."""
from snn2hw.backends.sim.simulator import ArithmeticLimitError, Prepared, prepare, run

__all__ = ["ArithmeticLimitError", "Prepared", "prepare", "run"]
