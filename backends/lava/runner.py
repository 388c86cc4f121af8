"""Run a quantized graph on Lava's bit-accurate CPU models: ``snn2hw.backends.lava.run``.

Same signature and meaning as ``snn2hw.backends.sim.run``; the result must equal the simulator's bit
for bit (the differential tests check this). ``Loihi2SimCfg(select_tag="fixed_pt")`` selects
``PyLifModelBitAcc``/``PyLifResetModelBitAcc``, ``PyDenseModelBitAcc``/``PyDelayDenseModelBitAcc`` and
the fixed-point RingBuffer.

Step mapping (checked by the tests): simulator step t (0-based) is Lava time step t + 1; the source
sends input row t at Lava step t + 1, and the harness stores what it sees at Lava step t + 1 in row t.

A batch runs as ONE Lava run (start-up costs about a second): the samples are laid end to end in the
source buffers, one window each, and the state is made fresh between windows in one of two exact ways
(see ``batch_mode``). The result for sample i equals a fresh run of sample i alone.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Iterable, Literal, Mapping

import numpy as np

from snn2hw.artefact import Artefact
from snn2hw.backends.base import BackendError, RunResult, check_inputs, resolve_records
from snn2hw.backends.lava.lower import LoweringError, check_lowerable, lower, require_lava, subgraph
from snn2hw.backends.lava.stream import StreamPlan, StreamPlanError, stream_plan
from snn2hw.ir import Graph

BatchMode = Literal["auto", "lif_reset", "state_reset", "separate"]
BATCH_MODES = ("auto", "lif_reset", "state_reset", "separate")
# "auto" streams with LIFReset only while its silent gap is at most this many steps per sample: the
# state writes of "state_reset" cost about 2-3 steps' worth per sample (measured on 2 cores, docs/lava.md).
AUTO_MAX_GAP = 4


class LavaRunError(BackendError):
    """Lava failed while compiling or running the lowered network (the cause is chained)."""


_MODELS_BY_PROCESS: dict[type, list] = {}


@contextmanager
def _remembered_model_search():
    """While our run compiles, Lava's ProcessModel search answers once per Process class.

    Lava's compiler finds the models of each process by executing every module file of the process's
    package directory again, for every process of every run: about 30 ms of CPU per process on this
    machine, 1.2 of the 2.7 CPU-s that the main process spends on a 40-process run. The answer depends
    only on the Process class (``type(proc) is model.implements_process``), so it is kept per class for
    the life of the Python process. The patch is in place only during our own runs."""
    from lava.magma.compiler.compiler_graphs import ProcGroupDiGraphs

    search = ProcGroupDiGraphs.__dict__["_find_proc_models"]

    def find(proc):
        cls = type(proc)
        if cls not in _MODELS_BY_PROCESS:
            _MODELS_BY_PROCESS[cls] = search.__func__(proc)
        return list(_MODELS_BY_PROCESS[cls])

    ProcGroupDiGraphs._find_proc_models = staticmethod(find)
    try:
        yield
    finally:
        ProcGroupDiGraphs._find_proc_models = search


def run(
    graph: Graph | Artefact,
    inputs: Mapping[str, np.ndarray] | np.ndarray,
    record: Iterable[str] = (),
    record_state: Iterable[str] = (),
    *,
    batch_mode: BatchMode = "auto",
) -> RunResult:
    """Run an integer graph with Lava on a batch of inputs shaped (batch, steps, size).

    Returns a ``RunResult`` like the simulator's (``backend="lava"``, no ``events``).

    ``batch_mode`` chooses how samples of a batch are kept apart in the single Lava run:

    - ``"lif_reset"``: populations become ``LIFReset`` processes with staggered reset offsets and each
      window gets a silent gap (``stream.stream_plan``); needs an acyclic graph with zero biases.
      Nothing but Lava's own processes touches the state, as a chip would run it.
    - ``"state_reset"``: after each window the harness process writes zeros into every LIF's u and v
      and every Dense's ``a_buff`` through RefPorts (no gap; any graph).
    - ``"separate"``: one Lava run per sample (start-up cost per sample; for cross-checking).
    - ``"auto"`` (default): ``lif_reset`` when its preconditions hold and its gap is at most
      ``AUTO_MAX_GAP`` steps, else ``state_reset``.
    """
    if isinstance(graph, Artefact):
        graph = graph.graph
    if batch_mode not in BATCH_MODES:
        raise BackendError(f"unknown batch_mode {batch_mode!r}; choose one of {', '.join(BATCH_MODES)}")
    if not graph.is_quantized:
        raise LoweringError("the Lava backend runs quantized graphs; quantize/compile the network first")
    x = check_inputs(graph, inputs)
    spike_names, state_names = resolve_records(graph, record, record_state)
    check_lowerable(graph)
    require_lava()
    batch, steps = next(iter(x.values())).shape[:2]
    sizes = {p.name: p.size for p in graph.populations}

    if batch == 0 or steps == 0:
        return _empty(spike_names, state_names, sizes, batch, steps)

    # Only what the recorded populations depend on is built: fewer OS processes, same numbers.
    g = subgraph(graph, [*spike_names, *[n for n in state_names if n not in spike_names]])
    x = {k: v for k, v in x.items() if any(i.name == k for i in g.inputs)}

    if batch_mode == "separate" and batch > 1:
        parts = [
            _run_windows(g, {k: v[i : i + 1] for k, v in x.items()}, spike_names, state_names, sizes, steps, 1, None)
            for i in range(batch)
        ]
        return RunResult(
            spikes={k: np.concatenate([p.spikes[k] for p in parts]) for k in spike_names},
            u={k: np.concatenate([p.u[k] for p in parts]) for k in state_names},
            v={k: np.concatenate([p.v[k] for p in parts]) for k in state_names},
            backend="lava",
        )

    plan: StreamPlan | None = None  # None with batch > 1: state writes between windows
    if batch > 1 and batch_mode in ("auto", "lif_reset"):
        try:
            plan = stream_plan(g, steps)
        except StreamPlanError:
            if batch_mode == "lif_reset":
                raise
        if batch_mode == "auto" and plan is not None and plan.gap > AUTO_MAX_GAP:
            plan = None  # a long gap (deep or delayed graphs) costs more than the state writes
    return _run_windows(g, x, spike_names, state_names, sizes, steps, batch, plan)


def _empty(spike_names, state_names, sizes, batch, steps) -> RunResult:
    return RunResult(
        spikes={k: np.zeros((batch, steps, sizes[k]), dtype=np.uint8) for k in spike_names},
        u={k: np.zeros((batch, steps, sizes[k]), dtype=np.int64) for k in state_names},
        v={k: np.zeros((batch, steps, sizes[k]), dtype=np.int64) for k in state_names},
        backend="lava",
    )


def _run_windows(
    g: Graph,
    x: dict[str, np.ndarray],
    spike_names: list[str],
    state_names: list[str],
    sizes: dict[str, int],
    steps: int,
    batch: int,
    plan: StreamPlan | None,
) -> RunResult:
    """One Lava run of ``batch`` windows. ``plan``: LIFReset streaming; None with batch > 1: state writes."""
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg

    from snn2hw.backends.lava.harness import Harness, model_for

    window = plan.window if plan is not None else steps
    total = batch * window
    data = {}
    for name, arr in x.items():
        col = np.zeros((total, arr.shape[2]), dtype=np.int64)
        for i in range(batch):
            col[i * window : i * window + steps] = arr[i]
        data[name] = col
    net = lower(g, data, reset=plan.reset() if plan is not None else None)

    # RefPorts of the harness: u and v of populations to record, plus (state_reset) every state Var.
    ref_targets: list = []
    ref_index: dict[tuple[str, str], int] = {}

    def ref(owner: str, var) -> int:
        key = (owner, var.name)
        if key not in ref_index:
            ref_index[key] = len(ref_targets)
            ref_targets.append(var)
        return ref_index[key]

    recorded = {name: (ref(name, net.populations[name].u), ref(name, net.populations[name].v)) for name in state_names}
    zeroed: list[int] = []
    state_reset = plan is None and batch > 1
    if state_reset:
        for name, lif in net.populations.items():
            zeroed += [ref(name, lif.u), ref(name, lif.v)]
        for name, dense in net.projections.items():
            # Dense/DelayDense/Sparse buffer their output in a_buff, Conv in a_buf (shaped (Wo, Ho, Co))
            zeroed.append(ref(name, dense.a_buff if hasattr(dense, "a_buff") else dense.a_buf))

    harness = Harness(
        num_steps=total,
        spike_sizes=[sizes[n] for n in spike_names],
        ref_shapes=[tuple(v.shape) for v in ref_targets],
        recorded=sorted({k for pair in recorded.values() for k in pair}),
        zeroed=zeroed,
        window=window if state_reset else 0,
    )
    for i, name in enumerate(spike_names):
        net.populations[name].s_out.connect(harness.spike_port(i))
    for k, var in enumerate(ref_targets):
        harness.ref_port(k).connect_var(var)

    run_cfg = Loihi2SimCfg(select_tag="fixed_pt", exception_proc_model_map={Harness: model_for(harness)})
    try:
        try:
            with warnings.catch_warnings():
                # Lava's model discovery re-executes every module next to harness.py under a bare
                # name; modules with dataclasses fail that way and Lava warns about each. Harmless:
                # the harness's model is given explicitly.
                warnings.filterwarnings("ignore", message="Cannot import module", category=UserWarning)
                with _remembered_model_search():
                    harness.run(condition=RunSteps(num_steps=total), run_cfg=run_cfg)
            spikes_raw = [getattr(harness, f"spk_{i}").get() for i in range(len(spike_names))]
            state_raw = {name: (getattr(harness, f"rec_{ku}").get(), getattr(harness, f"rec_{kv}").get())
                         for name, (ku, kv) in recorded.items()}
        finally:
            harness.stop()
    except BackendError:
        raise
    except Exception as exc:  # Lava raises bare exceptions from its compiler and runtime
        raise LavaRunError(f"Lava failed to run the lowered network: {type(exc).__name__}: {exc}") from exc

    def windows(raw: np.ndarray, dtype) -> np.ndarray:
        arr = np.asarray(raw).reshape(batch, window, -1)[:, :steps]
        return np.rint(arr).astype(dtype)

    return RunResult(
        spikes={name: windows(spikes_raw[i], np.uint8) for i, name in enumerate(spike_names)},
        u={name: windows(state_raw[name][0], np.int64) for name in state_names},
        v={name: windows(state_raw[name][1], np.int64) for name in state_names},
        backend="lava",
    )
