"""Lower a quantized snn2hw graph to real Lava processes (``lava.proc.lif``, ``lava.proc.dense``).

The result is a plain ``LavaNetwork`` of connected Lava processes that a user can wire into their own
Lava program; ``snn2hw.backends.lava.run`` builds one and runs it. Each IR node maps to exactly one
Lava process, with the integer parameters passed through unchanged, so the numbers that Lava's
bit-accurate models compute are the numbers ``snn2hw.hw.loihi2`` defines:

==========================  ==================================================================
IR                          Lava
==========================  ==================================================================
``Input``                   ``lava.proc.io.source.RingBuffer`` (only when data is given)
``Population(LoihiLIF)``    ``lava.proc.lif.process.LIF`` (``LIFReset`` when a reset is given)
``LoihiDense`` (delay 0)    ``lava.proc.dense.process.Dense``
``LoihiDense`` (delay > 0)  ``lava.proc.dense.process.DelayDense`` with one delay for all synapses
``LoihiDense`` (sparse)     ``lava.proc.sparse.process.Sparse`` (scipy csr weights; delay 0 only)
``LoihiConv2d``             ``lava.proc.conv.process.Conv`` (sum pooling included; delay 0 only)
==========================  ==================================================================

Convolution layout: snn2hw images are (C, H, W) and a population's flat index is their C-order index;
Lava's Conv takes (X, Y, C) = (W, H, C) images and weights (out, kx, ky, in/groups), and computes a
true convolution. So the kernel is flipped and transposed (``lava_conv_weight``), stride, padding and
dilation are given as (w, h), and the flat spike port is reshaped to (C, H, W) and transposed to
(W, H, C) on the way in (``port.reshape(...).transpose((2, 1, 0))``, Lava virtual ports), and the
output transposed back and flattened on the way out. The populations stay flat LIFs.

Lava is imported lazily so that ``snn2hw.backends.lava`` can be imported (and report a clear error)
where lava-nc is missing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

from snn2hw.artefact import Artefact
from snn2hw.backends.base import BackendError
from snn2hw.hw import loihi2 as hw
from snn2hw.ir import Graph, Input, LoihiConv2d, LoihiDense, LoihiLIF


class LavaUnavailableError(BackendError):
    """lava-nc is not installed (it needs Python 3.10: ``pip install 'snn2hw[lava]'``)."""


class LoweringError(BackendError):
    """The graph cannot be expressed with Lava's processes (names the node and the limit)."""


def require_lava() -> None:
    import multiprocessing

    # Lava's message infrastructure calls multiprocessing.set_start_method('fork') unconditionally at
    # import time, which raises "context has already been set" if anything in this process already
    # used multiprocessing (tqdm's lock does, during training). 'fork' is the default on Linux, so
    # during Lava's import, setting the method that is already in force is made a no-op.
    current = multiprocessing.get_start_method(allow_none=True)
    if current not in (None, "fork"):
        raise LavaUnavailableError(f"Lava needs the 'fork' multiprocessing start method, this process uses {current!r}")
    original = multiprocessing.set_start_method

    def tolerant(method, force=False):
        if not force and multiprocessing.get_start_method(allow_none=True) == method:
            return
        original(method, force=force)

    multiprocessing.set_start_method = tolerant
    try:
        import lava.proc.lif.process  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise LavaUnavailableError(
            f"the Lava backend needs lava-nc 0.10.0 (Python 3.10 only): {exc}"
        ) from None
    finally:
        multiprocessing.set_start_method = original


@dataclass
class LavaNetwork:
    """Lava processes of one snn2hw graph, already connected to each other.

    ``populations`` and ``projections`` map the IR names to ``LIF``/``LIFReset`` and
    ``Dense``/``DelayDense`` processes. ``sources`` holds a ``RingBuffer`` per input when ``lower`` got
    input data; otherwise connect your own spike sources with ``connect_input``. ``input_ports`` lists,
    per input, the ``s_in`` ports of the projections it feeds.
    """

    graph: Graph
    populations: dict[str, Any]
    projections: dict[str, Any]
    sources: dict[str, Any] = field(default_factory=dict)
    input_ports: dict[str, list] = field(default_factory=dict)

    def connect_input(self, name: str, out_port) -> None:
        """Connect a Lava ``OutPort`` (shape ``(size,)``) as the spike source of input ``name``."""
        if name not in self.input_ports:
            raise LoweringError(f"{name!r} is not an input of this network")
        for port in self.input_ports[name]:
            connect_spikes(out_port, port)

    @property
    def processes(self) -> list:
        return [*self.sources.values(), *self.populations.values(), *self.projections.values()]

    def stop(self) -> None:
        """Stop the runtime the processes run in (a no-op if it never started)."""
        for proc in self.processes:
            runtime = getattr(proc, "runtime", None)
            if runtime is not None:
                proc.stop()
                return


def connect_spikes(out_port, in_port) -> None:
    """Connect a flat spike ``OutPort`` (C*H*W,) to a synapse's ``s_in``; a Conv's (W, H, C) port gets
    the flat (C, H, W) C-order image reshaped and transposed into Lava's layout."""
    if len(in_port.shape) == 3:
        out_port.reshape(tuple(reversed(in_port.shape))).transpose((2, 1, 0)).connect(in_port)
    else:
        out_port.connect(in_port)


def connect_activations(proj_proc, in_port) -> None:
    """Connect a synapse's ``a_out`` to a flat LIF ``a_in``; a Conv's (Wo, Ho, Co) output is transposed to
    (Co, Ho, Wo) and flattened, giving snn2hw's C-order index."""
    out = proj_proc.a_out
    if len(out.shape) == 3:
        out.transpose((2, 1, 0)).reshape((in_port.shape[0],)).connect(in_port)
    else:
        out.connect(in_port)


def lava_conv_weight(weight: np.ndarray) -> np.ndarray:
    """PyTorch cross-correlation kernel (O, C/g, kh, kw) -> Lava Conv kernel (O, kx, ky, C/g).

    Lava's ``conv_scipy`` runs ``scipy.signal.convolve2d`` (a true convolution, the kernel flipped in both
    spatial axes) over (X, Y) = (W, H) images, so the kernel is flipped and its axes reordered.
    """
    return np.ascontiguousarray(np.asarray(weight)[:, :, ::-1, ::-1].transpose(0, 3, 2, 1))


# --- validation ---------------------------------------------------------------------------------------
def _check_range(what: str, values, lo: int, hi: int) -> None:
    arr = np.asarray(values)
    if arr.size == 0:
        return
    if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
        raise LoweringError(f"{what} must be integers")
    if arr.min() < lo or arr.max() > hi:
        raise LoweringError(f"{what} must lie in [{lo}, {hi}], got [{arr.min()}, {arr.max()}]")


def check_lowerable(graph: Graph) -> None:
    """Raise ``LoweringError`` unless every parameter fits what Lava's processes (and Loihi 2) take.

    The limits are snn2hw.hw.loihi2's. Out-of-range values are rejected rather than passed on because
    Lava would silently store them in narrower numpy types (int16 bias, int32 weights) and then differ
    from the simulator; delays above 63 do not exist on Loihi 2.
    """
    if not graph.is_quantized:
        raise LoweringError("the Lava backend runs quantized graphs; quantize/compile the network first")
    graph.validate()
    for inp in graph.inputs:
        _check_range(f"input {inp.name!r}: num_message_bits", inp.num_message_bits, 0, hw.MESSAGE_BITS_MAX)
    for pop in graph.populations:
        n: LoihiLIF = pop.neuron
        where = f"population {pop.name!r}"
        _check_range(f"{where}: du", n.du, hw.DU_MIN, hw.DU_MAX)
        _check_range(f"{where}: dv", n.dv, hw.DV_MIN, hw.DV_MAX)
        _check_range(f"{where}: vth", n.vth, hw.VTH_MIN, hw.VTH_MAX)
        _check_range(f"{where}: bias_mant", n.bias_mant, hw.BIAS_MANT_MIN, hw.BIAS_MANT_MAX)
        _check_range(f"{where}: bias_exp", n.bias_exp, hw.BIAS_EXP_MIN, hw.BIAS_EXP_MAX)
        if np.shape(n.bias_exp) != (pop.size,):
            raise LoweringError(f"{where}: bias_exp shape {np.shape(n.bias_exp)} != ({pop.size},)")
    for p in graph.projections:
        where = f"projection {p.name!r}"
        if p.delay > hw.MAX_DELAY:
            raise LoweringError(
                f"{where}: delay {p.delay} exceeds Loihi 2's maximum synaptic delay of {hw.MAX_DELAY} steps"
            )
        # Lava stores weights in int32 and clips/truncates them itself; beyond int32 numpy would wrap.
        _check_range(f"{where}: weights", p.weight, -(2**31), 2**31 - 1)
        _check_range(f"{where}: weight_exp", p.weight_exp, hw.WEIGHT_EXP_MIN, hw.WEIGHT_EXP_MAX)
        _check_range(f"{where}: num_weight_bits", p.num_weight_bits, 1, hw.WEIGHT_BITS_MAX)
        _check_range(f"{where}: sign_mode", p.sign_mode, int(min(hw.SignMode)), int(max(hw.SignMode)))
        _check_range(f"{where}: num_message_bits", p.num_message_bits, 0, hw.MESSAGE_BITS_MAX)
        if isinstance(p, LoihiConv2d):
            _check_conv(graph, p, where)
        elif p.sparse and p.delay:
            raise LoweringError(f"{where}: sparse projection with delay {p.delay}: lowered to Lava's Sparse, which has "
                                f"no delay (DelaySparse is not used by snn2hw)")


def _check_conv(graph: Graph, p: LoihiConv2d, where: str) -> None:
    """What Lava's Conv cannot run as snn2hw defines it (its ignoring of weight_exp/num_weight_bits is part
    of that definition, so those pass; the design rules reject them for hardware)."""
    if p.delay:
        raise LoweringError(f"{where}: conv with delay {p.delay}: Lava's Conv has no synaptic delay")
    for what, values in {"kernel_size": p.kernel_size, "stride": p.stride, "padding": p.padding,
                         "dilation": p.dilation, "groups": (p.groups,)}.items():
        if max(values) > 127:
            raise LoweringError(f"{where}: {what} {values} exceeds 127 (Lava's Conv stores it as int8)")
    w = np.asarray(p.weight, dtype=np.int64)
    max_input = 1
    if p.num_message_bits > 0:
        src = graph.node(p.src)
        bits = src.num_message_bits if isinstance(src, Input) and src.num_message_bits > 0 else p.num_message_bits
        max_input = 1 << max(bits - 1, 0)
    bound = int(np.abs(w).reshape(w.shape[0], -1).sum(axis=1).max(initial=0)) * max_input if w.size else 0
    if bound >= hw.CONV_ACC_LIMIT:
        raise LoweringError(
            f"{where}: worst-case conv accumulation {bound} reaches 2**31; Lava casts the float64 sum to int32, "
            f"which is platform-dependent outside int32"
        )


# --- lowering -----------------------------------------------------------------------------------------
def _lif(pop, reset: tuple[int, int] | None):
    from lava.proc.lif.process import LIF, LIFReset

    n: LoihiLIF = pop.neuron
    # Python ints: Lava keeps du/dv/vth as plain ints (LavaPyType(int, ...)), so du = -1 reaches the
    # model as -1 (decay factor 4096, i.e. no decay) instead of being cast to an unsigned type.
    kwargs = dict(
        shape=(pop.size,),
        du=int(n.du),
        dv=int(n.dv),
        vth=int(n.vth),
        bias_mant=np.asarray(n.bias_mant, dtype=np.int64).copy(),
        bias_exp=np.asarray(n.bias_exp, dtype=np.int64).copy(),
        name=pop.name,
    )
    if reset is None:
        return LIF(**kwargs)
    interval, offset = reset
    return LIFReset(reset_interval=int(interval), reset_offset=int(offset) % int(interval), **kwargs)


def _dense(proj: LoihiDense):
    from lava.proc.dense.process import DelayDense, Dense
    from lava.utils.weightutils import SignMode

    weights = np.asarray(proj.weight, dtype=np.int64).copy()
    kwargs = dict(
        weights=weights,
        weight_exp=int(proj.weight_exp),
        num_weight_bits=int(proj.num_weight_bits),
        # An enum member, never the int: Dense does ``sign_mode or determine_sign_mode(weights)``, so an
        # int 0 (NULL) would silently be replaced by the mode Lava guesses from the weights.
        sign_mode=SignMode(int(proj.sign_mode)),
        num_message_bits=int(proj.num_message_bits),
        name=proj.name,
    )
    if proj.delay == 0:
        return Dense(**kwargs)
    delays = np.full(weights.shape, int(proj.delay), dtype=int)
    return DelayDense(delays=delays, max_delay=int(proj.delay), **kwargs)


def _conv(proj: LoihiConv2d):
    from lava.proc.conv.process import Conv

    c, h, w = proj.in_shape
    return Conv(
        weight=lava_conv_weight(np.asarray(proj.weight, dtype=np.int64)).astype(np.int32),
        weight_exp=0,  # ignored by Lava's models anyway
        input_shape=(w, h, c),
        padding=tuple(reversed(proj.padding)),
        stride=tuple(reversed(proj.stride)),
        dilation=tuple(reversed(proj.dilation)),
        groups=int(proj.groups),
        num_weight_bits=int(proj.num_weight_bits),
        num_message_bits=int(proj.num_message_bits),
        name=proj.name,
    )


def _sparse(proj: LoihiDense):
    from lava.proc.sparse.process import Sparse
    from lava.utils.weightutils import SignMode
    from scipy.sparse import csr_matrix

    return Sparse(
        weights=csr_matrix(np.asarray(proj.weight, dtype=np.int64).astype(np.int32)),
        weight_exp=int(proj.weight_exp),
        num_weight_bits=int(proj.num_weight_bits),
        sign_mode=SignMode(int(proj.sign_mode)),  # enum member: see _dense
        num_message_bits=int(proj.num_message_bits),
        name=proj.name,
    )


def _projection(proj):
    if isinstance(proj, LoihiConv2d):
        return _conv(proj)
    if proj.sparse:
        return _sparse(proj)
    return _dense(proj)


def _source_data(graph: Graph, name: str, data) -> np.ndarray:
    node = graph.node(name)
    assert isinstance(node, Input)
    arr = np.asarray(data)
    if arr.ndim != 2 or arr.shape[1] != node.size or arr.shape[0] == 0:
        raise LoweringError(f"input {name!r}: expected data shaped (steps >= 1, {node.size}), got {arr.shape}")
    if arr.min() < -(2**31) or arr.max() >= 2**31:
        raise LoweringError(f"input {name!r}: values must fit int32")
    # RingBuffer holds (size, time) and sends column (time_step - 1) % length at each step.
    return np.ascontiguousarray(arr.T.astype(np.int32))


def lower(
    graph: Graph | Artefact,
    inputs: Mapping[str, np.ndarray] | None = None,
    *,
    reset: Mapping[str, tuple[int, int]] | None = None,
) -> LavaNetwork:
    """Build and connect the Lava processes of a quantized graph.

    ``inputs``: optional ``{input name: int array (steps, size)}`` (one sample, snn2hw's time-major
    layout); each becomes a ``RingBuffer`` source that sends row ``t`` at Lava time step ``t + 1``
    (and repeats cyclically after ``steps``). Without data, connect sources with
    ``LavaNetwork.connect_input``.

    ``reset``: optional ``{population: (interval, offset)}``; those populations become ``LIFReset``
    processes whose u and v are zeroed at every time step with ``time_step % interval == offset``,
    before that step's input is integrated (see ``stream_plan`` for safe values).
    """
    require_lava()
    if isinstance(graph, Artefact):
        graph = graph.graph
    check_lowerable(graph)
    reset = dict(reset or {})
    unknown = set(reset) - {p.name for p in graph.populations}
    if unknown:
        raise LoweringError(f"reset given for unknown populations {sorted(unknown)}")
    for name, (interval, offset) in reset.items():
        if int(interval) < 1 or int(offset) < 0:
            raise LoweringError(f"population {name!r}: reset interval must be >= 1 and offset >= 0")

    pops = {p.name: _lif(p, reset.get(p.name)) for p in graph.populations}
    projs = {p.name: _projection(p) for p in graph.projections}
    input_names = {i.name for i in graph.inputs}
    input_ports: dict[str, list] = {i.name: [] for i in graph.inputs}
    for p in graph.projections:
        dense = projs[p.name]
        # Several projections into one population all connect to its a_in: Lava's InPort adds their
        # int32 messages, which is snn2hw.hw.loihi2.sum_activations.
        connect_activations(dense, pops[p.dst].a_in)
        if p.src in input_names:
            input_ports[p.src].append(dense.s_in)
        else:
            connect_spikes(pops[p.src].s_out, dense.s_in)

    net = LavaNetwork(graph, pops, projs, {}, input_ports)
    if inputs is not None:
        from lava.proc.io.source import RingBuffer

        unknown = set(inputs) - input_names
        if unknown:
            raise LoweringError(f"data given for unknown inputs {sorted(unknown)}")
        for name, data in inputs.items():
            if not input_ports[name]:
                continue  # an input that feeds nothing needs no process
            src = RingBuffer(data=_source_data(graph, name, data))
            net.sources[name] = src
            net.connect_input(name, src.s_out)
    return net


def subgraph(graph: Graph, keep: Iterable[str]) -> Graph:
    """The part of ``graph`` that can influence the populations in ``keep`` (their ancestors).

    Used by the runner so that Lava only builds (and starts OS processes for) what the recorded
    results depend on; the rest cannot change them.
    """
    needed: set[str] = set()
    todo = list(keep)
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        todo.extend(p.src for p in graph.incoming(name))
    keep = list(keep)
    return Graph(
        tuple(i for i in graph.inputs if i.name in needed),
        tuple(p for p in graph.populations if p.name in needed),
        tuple(p for p in graph.projections if p.dst in needed),
        tuple(keep),
        graph.dt,
        graph.metadata,
    )
