"""One Lava process that records spikes and u/v of many populations and can zero state between samples.

Lava's own probes cost one OS process each (a ``sink.RingBuffer`` per spike train, a ``Monitor`` per
Var, and every Lava process is an OS process that joins a barrier in each phase of each step). On a
small machine that dominates the run time of small networks, so the runner uses this single process
instead. It does exactly what those probes do:

- spikes arrive on an ``InPort`` per population (connected to the LIF's ``s_out``) in the spiking phase
  of step ``t`` and are stored at row ``t - 1`` (``sink.RingBuffer`` semantics);
- u and v are read through ``RefPort``s in the post-management phase of step ``t``, i.e. after the LIF
  has updated them in step ``t`` (``Monitor`` semantics);
- optionally, at every step ``t`` with ``t % window == 0``, it writes zeros into the referenced state
  Vars (LIF u and v, Dense/DelayDense ``a_buff``), after reading them. A ``RefPort.write`` is only a
  message: the target applies it when it next services its VarPorts, on another thread, so the
  harness reads each written Var back and checks the zeros. The read-back comes through the same
  FIFO channel after the write, so when it returns the write has been applied, and the runtime only
  starts the next step once this process has finished its post-management phase.

The ProcessModel needs one ``LavaPyType`` class attribute per port/Var name, and the names depend on
the network, so ``model_for`` builds a subclass per harness instance; the runner hands it to
``Loihi2SimCfg(exception_proc_model_map=...)``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyRefPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import InPort, RefPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.process.variable import Var
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol


class Harness(AbstractProcess):
    """Records ``spike_sizes`` spike trains and the Vars behind ``ref_shapes`` for ``num_steps`` steps.

    ``recorded``: indices into ``ref_shapes`` whose values are stored every step (Var ``rec_{k}``).
    ``zeroed``: indices whose Vars are set to zero at every step ``t`` with ``t % window == 0``
    (``window`` 0: never) and ``t < num_steps``.
    """

    def __init__(
        self,
        *,
        num_steps: int,
        spike_sizes: Sequence[int],
        ref_shapes: Sequence[tuple[int, ...]],
        recorded: Sequence[int] = (),
        zeroed: Sequence[int] = (),
        window: int = 0,
    ) -> None:
        super().__init__(
            num_steps=int(num_steps),
            n_spikes=len(spike_sizes),
            ref_shapes=[tuple(int(d) for d in s) for s in ref_shapes],
            recorded=[int(k) for k in recorded],
            zeroed=[int(k) for k in zeroed],
            window=int(window),
        )
        for i, n in enumerate(spike_sizes):
            setattr(self, f"spk_in_{i}", InPort(shape=(int(n),)))
            setattr(self, f"spk_{i}", Var(shape=(int(num_steps), int(n)), init=0))
        for k, shape in enumerate(ref_shapes):
            setattr(self, f"ref_{k}", RefPort(shape=tuple(shape)))
        for k in recorded:
            setattr(self, f"rec_{k}", Var(shape=(int(num_steps),) + tuple(ref_shapes[k]), init=0))

    def spike_port(self, i: int):
        return getattr(self, f"spk_in_{i}")

    def ref_port(self, k: int):
        return getattr(self, f"ref_{k}")


@implements(proc=Harness, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyHarnessModel(PyLoihiProcessModel):
    """Behaviour of the harness; ``model_for`` adds the per-instance port and Var types."""

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self._n_spikes = proc_params["n_spikes"]
        self._shapes = proc_params["ref_shapes"]
        self._recorded = proc_params["recorded"]
        self._zeroed = proc_params["zeroed"]
        self._window = proc_params["window"]
        self._last = proc_params["num_steps"]

    def _reset_now(self) -> bool:
        return bool(self._window) and self.time_step % self._window == 0 and self.time_step < self._last

    def run_spk(self) -> None:
        row = self.time_step - 1
        for i in range(self._n_spikes):
            getattr(self, f"spk_{i}")[row] = getattr(self, f"spk_in_{i}").recv()

    def post_guard(self) -> bool:
        return bool(self._recorded) or self._reset_now()

    def run_post_mgmt(self) -> None:
        row = self.time_step - 1
        for k in self._recorded:
            getattr(self, f"rec_{k}")[row] = getattr(self, f"ref_{k}").read()
        if self._reset_now():
            for k in self._zeroed:
                getattr(self, f"ref_{k}").write(np.zeros(self._shapes[k], dtype=np.int32))
            for k in self._zeroed:
                # Synchronise with the target (see the module docstring) and prove the reset.
                if np.any(getattr(self, f"ref_{k}").read() != 0):
                    raise RuntimeError(f"harness: state Var behind ref_{k} was not zeroed at step {self.time_step}")


def model_for(harness: Harness) -> type:
    """A ProcessModel class with the LavaPyTypes for exactly this harness's ports and Vars."""
    attrs: dict[str, object] = {}
    for i in range(harness.proc_params["n_spikes"]):
        # Spikes come from the LIF's s_out, an int32 channel.
        attrs[f"spk_in_{i}"] = LavaPyType(PyInPort.VEC_DENSE, np.int32)
        attrs[f"spk_{i}"] = LavaPyType(np.ndarray, np.int32)
    for k in range(len(harness.proc_params["ref_shapes"])):
        # u, v and a_buff are int32 Vars in Lava's fixed-point models.
        attrs[f"ref_{k}"] = LavaPyType(PyRefPort.VEC_DENSE, np.int32)
    for k in harness.proc_params["recorded"]:
        attrs[f"rec_{k}"] = LavaPyType(np.ndarray, np.int32)
    return type("PyHarnessModelInstance", (PyHarnessModel,), attrs)
