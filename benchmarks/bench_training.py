"""Training-speed benchmark: one Linear(N, N) followed by one LIF layer, forward + backward.

The workload is the Open Neuromorphic library comparison: input spikes (batch 16, T = 500 steps,
N features, not requiring grad), a bias-free Linear(N, N), a plain LIF layer (leak 0.9, threshold 1,
reset to zero), loss = sum of the output spikes, one backward pass to the weight. Every implementation
computes the input GEMM for all steps at once outside its time loop, and gets its input in its
preferred layout (snn2hw: batch-first; snnTorch, Norse, SpikingJelly: time-first).

``--layer recurrent`` adds a recurrent N x N projection with a one-step delay to the LIF layer
(snn2hw: ``recurrent_cuba_lif_sequence``; snnTorch: ``RLeaky(all_to_all=True, linear_features=N)``;
Norse: ``LIFRecurrentCell`` with input weights W and recurrent weights V, fed the input spikes, stepped
over ``unbind``; SpikingJelly: ``LinearRecurrentContainer`` around a single-step ``LIFNode``, its Linear
over [x[t], y[t-1]] holding [W, V], fed the input spikes and stepped over ``unbind`` (its multi-step
mode indexes ``x[t]``). The floor then also holds the 2T per-step (batch, N) x (N, N) products of a
dense recurrent layer: V s[t-1] forward and lam[t+1] V backward, plus the weight gradient of V.
snn2hw's forward is event-driven (spikes x N additions per step), so it can go below this floor.)

``--layer conv`` times a conv network instead (``CONV_NET``: 2x34x34 input, conv 12c5, sum-pool 2,
conv 32c4, sum-pool 2, dense 10, a LIF population after every hop; T = 50 by default) in snn2hw
(``SpikingSequential`` of ``ConvLIF`` / ``SumPoolLIF`` / ``LIFDense``), snnTorch and SpikingJelly, each
applying every conv / pool / linear to all T x batch images in one call; its floor is those linear ops
and their backward without neurons.

``--device cuda`` runs everything on the GPU (snn2hw: its Triton kernels; SpikingJelly chooses its own
CUDA kernel; Norse also under ``torch.compile``), by default at N = 4096, 8192, 16384.

Implementations (each peer as its documentation uses it, in its fastest CPU configuration, and
iterated without quadratic patterns: per-step inputs come from ``unbind``, never ``a[t]`` of a tensor
that requires grad, whose every backward materialises a full-size zero gradient):

* ``floor``: only the matrix products every implementation must do (``x @ W^T`` over all steps and
  the weight gradient ``g^T x`` from a precomputed output gradient; recurrent: see above).
* ``snn2hw``: the library's input product ``snn2hw.nn.functional.spike_linear(x, W)`` (what its
  ``LIFDense`` / ``RecurrentLIFDense`` layers run), then ``snn2hw.nn.functional.cuba_lif_sequence`` with
  alpha = 0 (u[t] = a[t], so v = 0.9 v + a), fast-sigmoid surrogate, detached reset. **snn2hw goes
  below the dense-GEMM floor by doing less work**: the input x is spikes (rate 0.1), and ``spike_linear``
  computes ``x @ W^T`` and the weight gradient over x's nonzeros only (event-driven numba kernels; a
  dense input above the measured density threshold takes the GEMM instead). The table prints the
  nonzeros it works on next to the GEMM's batch x T x N input terms; the floor and the peers multiply
  every term, each peer as its documentation uses it (``nn.Linear``, i.e. ``x @ W^T``). Its kernels take their (batch, T, N) outputs
  from ``snn2hw.nn.buffer_pool`` (by default, as in any user's loop), so after the warm-up pass a timed
  pass touches no fresh pages for them; the floor and the peers allocate as torch does.
* ``snntorch``: ``snntorch.Leaky(beta=0.9, reset_mechanism="zero")``, fast-sigmoid surrogate, stepped
  over ``a.unbind(0)``, spikes stacked (snnTorch has no multi-step layer; this is its tutorials' loop).
* ``norse``: ``norse.torch.LIFBoxCell`` (LIF without synaptic current) stepped over ``a.unbind(0)``;
  dt * tau_mem_inv = 0.1 scales its input by 0.1, so its threshold is 0.1. Norse's multi-step
  modules index ``input[ts]`` in their loop (quadratic backward), so the cell loop is its best use.
* ``norse-compile``: the same with the cell wrapped in ``torch.compile`` (Norse's documented speed-up).
* ``spikingjelly``: ``activation_based.neuron.LIFNode(tau=10, decay_input=False, step_mode="m",
  detach_reset=True)`` (multi-step; version 2.x chooses its own kernel and has no ``backend`` option,
  older versions get ``backend="torch"``, ``cupy`` being CUDA-only). SpikingJelly 2.x
  needs Python >= 3.11: it runs in the interpreter given by ``--peer-python`` (default
  ``.venv-peers/bin/python`` when it exists), see ``docs/training.md``.

Method. Every worker is a fresh subprocess whose thread and wait-policy environment is set before
torch is imported (``OMP_NUM_THREADS``/``MKL_NUM_THREADS``/``OPENBLAS_NUM_THREADS``/
``NUMBA_NUM_THREADS`` = ``--threads``, ``OMP_WAIT_POLICY=PASSIVE``, ``KMP_BLOCKTIME=0``):

* time: per N, one worker process per interpreter builds its implementations and runs a warm-up pass
  of each; then the driver asks for ``--reps`` rounds in which every implementation does one timed
  forward + backward pass, one after the other (interleaved across processes: a worker waits blocked
  on its pipe while another runs), so load from other processes on a shared machine affects all alike.
  Reported: the median, the spread (min, max) and the ratio of medians to the floor and to the
  fastest peer.
* peak memory: one process per (implementation, N); after the model and input exist and a 4-step
  warm-up has initialised lazy state, the kernel's peak-RSS counter is reset (``/proc/self/clear_refs``),
  one full forward + backward runs, and the figure is ``VmHWM - VmRSS(before)``. glibc serves every
  allocation of 1 MiB or more with mmap (``MALLOC_MMAP_THRESHOLD_``) so freed tensors leave RSS at once.

The JSON records, per N, the 1-min load average before and after and the CPU time that *other*
processes took while that N was timed (``bench_env.OtherLoadWithDescendants``: /proc/stat busy time
less this process and all its worker processes, the peers' interpreter included; the load average
counts the benchmark's own threads, so it cannot tell), plus versions (per implementation), Python,
CPU model and thread settings. A row timed while other processes used more than
``bench_env.OTHER_LOAD_LIMIT`` (10 %) of the CPUs is marked ``*`` ("under load") in the table and
``under_load: true`` in the JSON, as in ``bench_sim.py``.

``--warmup-steps K`` makes each worker's untimed warm-up pass K steps long instead of T (numba, torch
and the peers compile and initialise on types and per-step shapes, not on T): at N >= 2048 of the
recurrent layer a full pass takes tens of seconds per implementation, and this saves one per
implementation. The first timed pass may then pay first-touch page faults; the median of 3 absorbs it.

``--peer-reps K`` caps the peers' timed passes at K (each at the full T, interleaved with the others in
the first K rounds) while the floor and snn2hw do every round: for the recurrent layer at N = 4096 a
peer's pass takes a minute or more on 2 cores. The table's ``reps`` column and each JSON result's
``reps`` give the number of timed passes behind each median.

Usage::

    python benchmarks/bench_training.py [--sizes 256 512 1024 2048 4096] [--steps 500] [--batch 16]
        [--reps 7] [--reps-large 3] [--peer-reps K] [--threads 2] [--warmup-steps K] [--layer dense|recurrent|conv] [--device cpu|cuda]
        [--frameworks floor snn2hw snntorch norse norse-compile spikingjelly]
        [--peer-python .venv-peers/bin/python] [--out benchmarks/results/training.json]
"""
from __future__ import annotations

import os
import sys


from bench_env import (OTHER_LOAD_LIMIT, OtherLoadWithDescendants, cpu_model, set_thread_env,  # noqa: E402
                       thread_env, under_load)  # (imports no torch)

# Before anything imports torch: OpenMP reads these once, at start-up.
set_thread_env(sys.argv)

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

FRAMEWORKS = ["floor", "snn2hw", "snntorch", "norse", "norse-compile", "spikingjelly"]
PEERS = ["snntorch", "norse", "norse-compile", "spikingjelly"]
RECURRENT_FRAMEWORKS = ["floor", "snn2hw", "snntorch", "norse", "spikingjelly"]
CONV_FRAMEWORKS = ["floor", "snn2hw", "snntorch", "spikingjelly"]
# The conv network (--layer conv): 2x34x34 input (N-MNIST-sized), conv 12c5 -> sum-pool 2 -> conv 32c4 ->
# sum-pool 2 -> dense 10, a LIF population after every hop (snn2hw's SumPoolLIF is a pool hop into LIF
# neurons, so the peers get the same). (in_shape, out_channels or None for a pool, kernel).
CONV_NET = [((2, 34, 34), 12, 5), ((12, 30, 30), None, 2), ((12, 15, 15), 32, 4), ((32, 12, 12), None, 2)]
CONV_OUT = 10
BETA, V_TH, SURROGATE_SCALE, INPUT_RATE = 0.9, 1.0, 10.0, 0.1
REPO = Path(__file__).resolve().parents[1]
DEFAULT_PEER_PYTHON = REPO / ".venv-peers" / "bin" / "python"


# --- the workloads (run inside a worker process) -------------------------------------------------------
def _backward_rate(s) -> float:
    """Loss = sum of the output spikes: backward, and return the spike rate."""
    loss = s.sum()
    loss.backward()
    return loss.item() / s.numel()


def build(framework: str, n: int, steps: int, batch: int, device, layer: str = "dense"):
    """Return ``(run, version)``; ``run()`` does one forward + backward and returns the spike rate."""
    import torch

    if layer == "conv":
        return build_conv(framework, steps, batch, device)

    g = torch.Generator().manual_seed(0)
    time_first = framework not in ("floor", "snn2hw")
    shape = (steps, batch, n) if time_first else (batch, steps, n)
    x = (torch.rand(shape, generator=g) < INPUT_RATE).float().to(device)
    # Scaled so that a[t] has unit variance: the LIF layer spikes at a moderate rate.
    w = (torch.randn(n, n, generator=g) / (n * INPUT_RATE) ** 0.5).to(device).requires_grad_(True)
    recurrent = layer == "recurrent"
    # recurrent weights small enough that the layer keeps a moderate rate
    v_rec = (torch.randn(n, n, generator=g) * 0.3 / (n * INPUT_RATE) ** 0.5).to(device).requires_grad_(True)

    if framework == "floor":
        grad_out = torch.randn(shape, generator=g).to(device)
        s_prev = (torch.rand(steps, batch, n, generator=g) < INPUT_RATE).float().to(device)
        lam = torch.randn(steps, batch, n, generator=g).to(device)

        def run():
            w.grad = None
            a = x @ w.t()
            a.backward(grad_out)
            if recurrent:  # 2T per-step products and V's weight gradient, with no autograd
                with torch.no_grad():
                    vt = v_rec.t()
                    for s_t, l_t in zip(s_prev.unbind(0), lam.unbind(0)):
                        s_t @ vt
                        l_t @ v_rec
                    lam.reshape(-1, n).t() @ s_prev.reshape(-1, n)

        return run, torch.__version__

    if framework == "snn2hw":
        import snn2hw
        from snn2hw.nn.functional import cuba_lif_sequence, spike_linear
        from snn2hw.nn.recurrent import recurrent_cuba_lif_sequence
        from snn2hw.nn.surrogate import FastSigmoid

        surrogate = FastSigmoid(SURROGATE_SCALE)

        def run():
            w.grad = v_rec.grad = None
            a = spike_linear(x, w)  # the library's input product: over x's nonzeros (see the module docstring)
            if recurrent:
                s = recurrent_cuba_lif_sequence(a, v_rec, 0.0, BETA, V_TH, None, surrogate=surrogate)
            else:
                s = cuba_lif_sequence(a, 0.0, BETA, V_TH, None, surrogate, detach_reset=True)
            return _backward_rate(s)

        # the work its input product does: x's nonzeros, against the GEMM's batch x T x N terms
        run.work = {"input_nonzeros": int(torch.count_nonzero(x)), "input_terms": x.numel()}
        return run, snn2hw.__version__

    if framework == "snntorch":
        import snntorch
        from snntorch import surrogate as snn_surrogate

        spike_grad = snn_surrogate.fast_sigmoid(slope=SURROGATE_SCALE)
        if recurrent:
            lif = snntorch.RLeaky(beta=BETA, threshold=V_TH, spike_grad=spike_grad, reset_mechanism="zero",
                                  all_to_all=True, linear_features=n).to(device)
            with torch.no_grad():
                lif.recurrent.weight.copy_(v_rec)
                lif.recurrent.bias.zero_()
        else:
            lif = snntorch.Leaky(beta=BETA, threshold=V_TH, spike_grad=spike_grad, reset_mechanism="zero").to(device)

        def run():
            w.grad = None
            lif.zero_grad(set_to_none=True)
            a = x @ w.t()
            if recurrent:
                spk, mem = lif.init_rleaky()
            else:
                mem = lif.init_leaky()
            spikes = []
            for a_t in a.unbind(0):
                if recurrent:
                    spk, mem = lif(a_t, spk, mem)
                else:
                    spk, mem = lif(a_t, mem)
                spikes.append(spk)
            s = torch.stack(spikes)
            return _backward_rate(s)

        return run, snntorch.__version__

    if framework in ("norse", "norse-compile"):
        import norse
        import norse.torch as norse_torch

        if recurrent:
            # Norse's recurrent LIF cell applies its input and recurrent weights inside the step (its
            # documented use), so it gets the input spikes; tau_syn_inv * dt = 1 lets its synaptic current
            # decay fully each step (no synaptic memory, as the other implementations).
            params = norse_torch.LIFParameters(tau_syn_inv=torch.tensor(1000.0, device=device),
                                               tau_mem_inv=torch.tensor(100.0, device=device),
                                               v_th=torch.tensor(0.1 * V_TH, device=device))
            # Norse stores given weights as they are: Parameters, so that they are trained (get gradients)
            cell = norse_torch.LIFRecurrentCell(n, n, p=params, dt=1e-3, autapses=True,
                                                input_weights=torch.nn.Parameter(w.detach().clone()),
                                                recurrent_weights=torch.nn.Parameter(v_rec.detach().clone())).to(device)
        else:
            # LIF without synaptic current; dt * tau_mem_inv = 0.1 scales its input by 0.1, hence v_th 0.1
            params = norse_torch.LIFBoxParameters(tau_mem_inv=torch.tensor(100.0, device=device),
                                                  v_th=torch.tensor(0.1 * V_TH, device=device))
            cell = norse_torch.LIFBoxCell(p=params, dt=1e-3).to(device)
        step = torch.compile(cell) if framework == "norse-compile" else cell

        def run():
            w.grad = None
            cell.zero_grad(set_to_none=True)
            state = None
            spikes = []
            for in_t in (x if recurrent else x @ w.t()).unbind(0):
                z, state = step(in_t, state)
                spikes.append(z)
            s = torch.stack(spikes)
            return _backward_rate(s)

        return run, getattr(norse, "__version__", "?")

    if framework == "spikingjelly" and recurrent:
        import importlib.metadata

        from spikingjelly.activation_based import layer as sj_layer
        from spikingjelly.activation_based import neuron

        # SpikingJelly's recurrent layer is LinearRecurrentContainer: one Linear over [x[t], y[t-1]] per step.
        # Given the input spikes and weight [W, V] it is this workload. Its multi-step mode indexes x[t] in
        # its loop, so it runs single-step over x.unbind(0) (the loop of its own docstring, minus indexing).
        lif = neuron.LIFNode(tau=1.0 / (1.0 - BETA), decay_input=False, v_threshold=V_TH, v_reset=0.0,
                             detach_reset=True, step_mode="s")
        rnn = sj_layer.LinearRecurrentContainer(lif, in_features=n, out_features=n, bias=False, step_mode="s").to(device)
        with torch.no_grad():
            rnn.rc.weight.copy_(torch.cat([w, v_rec], dim=1))

        def run():
            rnn.zero_grad(set_to_none=True)
            rnn.reset()
            lif.reset()
            s = torch.stack([rnn(x_t) for x_t in x.unbind(0)])
            return _backward_rate(s)

        return run, importlib.metadata.version("spikingjelly")

    if framework == "spikingjelly":
        import importlib.metadata

        import inspect

        from spikingjelly.activation_based import neuron

        options = {}
        if "backend" in inspect.signature(neuron.LIFNode.__init__).parameters:
            # 0.0.0.0.x: "torch" on CPU ("cupy" exists only on CUDA); 2.x picks its kernel itself
            options["backend"] = "cupy" if device.type == "cuda" else "torch"
        lif = neuron.LIFNode(tau=1.0 / (1.0 - BETA), decay_input=False, v_threshold=V_TH, v_reset=0.0,
                             detach_reset=True, step_mode="m", **options).to(device)

        def run():
            w.grad = None
            lif.reset()
            s = lif(x @ w.t())
            return _backward_rate(s)

        return run, importlib.metadata.version("spikingjelly")

    raise ValueError(f"unknown framework {framework!r}")


def build_conv(framework: str, steps: int, batch: int, device):
    """The conv network of ``CONV_NET`` in one implementation; ``run()`` as in ``build``.

    Every implementation applies each conv / pool / linear to all T x batch images in one call (the
    peers' best: SpikingJelly's multi-step layers do this, snnTorch's tutorials call the conv per step
    inside the loop, which is slower) and runs its neuron over the whole sequence (snnTorch: ``Leaky``
    stepped over ``unbind``; SpikingJelly: multi-step ``LIFNode``). Sum pooling is ``avg_pool2d`` with
    ``divisor_override=1``, which is what snn2hw's ``SumPoolLIF`` computes.
    """
    import torch
    import torch.nn.functional as tf

    g = torch.Generator().manual_seed(0)
    c0, h0, w0 = CONV_NET[0][0]
    time_first = framework not in ("floor", "snn2hw")
    shape = (steps, batch, c0, h0, w0) if time_first else (batch, steps, c0 * h0 * w0)
    x = (torch.rand(shape, generator=g) < INPUT_RATE).float().to(device)
    weights = []
    for (c, _, _), out_ch, k in CONV_NET:
        if out_ch is not None:  # scaled so that the input current has about unit variance at rate 0.1
            weights.append(torch.randn(out_ch, c, k, k, generator=g) / (c * k * k * INPUT_RATE) ** 0.5)
    last_c, last_h, last_w = CONV_NET[-1][0]
    flat = last_c * (last_h // CONV_NET[-1][2]) * (last_w // CONV_NET[-1][2])
    weights.append(torch.randn(CONV_OUT, flat, generator=g) / (flat * INPUT_RATE) ** 0.5)
    weights = [wt.to(device).requires_grad_(True) for wt in weights]

    def hops(a_img, neuron):
        """Apply the network to images (T*batch or batch*T first); ``neuron(a, stage)`` maps currents to spikes."""
        wi, stage = 0, 0
        for (_, out_ch, k) in CONV_NET:
            if out_ch is None:
                a_img = tf.avg_pool2d(a_img, k, divisor_override=1)
            else:
                a_img = tf.conv2d(a_img, weights[wi])
                wi += 1
            a_img = neuron(a_img, stage)
            stage += 1
        return neuron(a_img.flatten(1) @ weights[-1].t(), stage)

    def zero_grads():
        for wt in weights:
            wt.grad = None

    if framework == "floor":
        # only the linear ops every implementation must do (convs, pools, the dense product, and their backward)
        def run():
            zero_grads()
            out = hops(x.reshape(batch * steps, c0, h0, w0), lambda a, stage: a)
            out.backward(torch.ones_like(out))

        return run, torch.__version__

    if framework == "snn2hw":
        import snn2hw
        from snn2hw.nn.conv import ConvLIF, SumPoolLIF
        from snn2hw.nn.layers import LIFDense, SpikingSequential

        kw = dict(du=1.0, dv=1.0 - BETA, v_th=V_TH, surrogate_scale=SURROGATE_SCALE)
        layers = []
        for in_shape, out_ch, k in CONV_NET:
            layers.append(SumPoolLIF(in_shape, k, **kw) if out_ch is None else ConvLIF(in_shape, out_ch, k, **kw))
        layers.append(LIFDense(flat, CONV_OUT, **kw))
        net = SpikingSequential(layers).to(device)
        with torch.no_grad():
            for layer, wt in zip([l for l in layers if isinstance(l.weight, torch.nn.Parameter)], weights):
                layer.weight.copy_(wt)

        def run():
            net.zero_grad(set_to_none=True)
            s = net(x)
            return _backward_rate(s)

        return run, snn2hw.__version__

    if framework == "snntorch":
        import snntorch
        from snntorch import surrogate as snn_surrogate

        spike_grad = snn_surrogate.fast_sigmoid(slope=SURROGATE_SCALE)
        lifs = [snntorch.Leaky(beta=BETA, threshold=V_TH, spike_grad=spike_grad, reset_mechanism="zero").to(device)
                for _ in range(len(CONV_NET) + 1)]

        def neuron(a, stage):
            a = a.reshape(steps, batch, *a.shape[1:])
            mem = lifs[stage].init_leaky()
            out = []
            for a_t in a.unbind(0):
                spk, mem = lifs[stage](a_t, mem)
                out.append(spk)
            return torch.stack(out).flatten(0, 1)

        def run():
            zero_grads()
            s = hops(x.flatten(0, 1), neuron)
            return _backward_rate(s)

        return run, snntorch.__version__

    if framework == "spikingjelly":
        import importlib.metadata

        from spikingjelly.activation_based import functional as sj_functional
        from spikingjelly.activation_based import neuron as sj_neuron

        lifs = [sj_neuron.LIFNode(tau=1.0 / (1.0 - BETA), decay_input=False, v_threshold=V_TH, v_reset=0.0,
                                  detach_reset=True, step_mode="m").to(device) for _ in range(len(CONV_NET) + 1)]

        def neuron(a, stage):  # multi-step LIFNode over [T, batch, ...]
            return lifs[stage](a.reshape(steps, batch, *a.shape[1:])).flatten(0, 1)

        def run():
            zero_grads()
            for lif in lifs:
                sj_functional.reset_net(lif)
            s = hops(x.flatten(0, 1), neuron)
            return _backward_rate(s)

        return run, importlib.metadata.version("spikingjelly")

    raise ValueError(f"{framework!r} has no conv implementation here (choose from {CONV_FRAMEWORKS})")


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def memory_worker(args) -> dict:
    import gc

    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    try:
        run, version = build(args.worker, args.n, args.steps, args.batch, device, args.layer)
        # Initialise lazy state (thread pools, kernels, imports inside libraries) with a short run.
        small, _ = build(args.worker, args.n, 4, args.batch, device, args.layer)
        small()
        del small
    except ImportError as exc:
        return {"skipped": f"not installed ({exc})"}
    _sync(device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        rate = run()
        _sync(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        return {"peak_mb": peak / 2**20, "memory_method": "cuda max_memory_allocated delta", "spike_rate": rate,
                "version": version}
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        method = "VmHWM - VmRSS after clear_refs"
    except OSError:
        method = "ru_maxrss - VmRSS (peak counter could not be reset)"
    base_kib = _status_kib("VmRSS")
    rate = run()
    peak_kib = _status_kib("VmHWM") if method.startswith("VmHWM") else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_mb": max(0, peak_kib - base_kib) / 1024, "memory_method": method, "spike_rate": rate,
            "version": version}


def serve_worker(args) -> int:
    """Build the requested implementations, warm each up, then time one pass per request line.

    Protocol (one JSON object per line on stdout): first ``{"ready": {fw: info}}``; then for every
    framework name read from stdin, ``{"fw": name, "ms": time, "rate": spike rate}``; ``quit`` ends.
    The worker blocks on stdin between requests, so it uses no CPU while another implementation runs.
    """
    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    runs, info = {}, {}
    warmup_steps = args.steps if args.warmup_steps is None else min(args.steps, args.warmup_steps)
    for fw in args.worker.split(","):
        try:
            if warmup_steps < args.steps:  # a shorter sequence warms up as well (see --warmup-steps)
                build(fw, args.n, warmup_steps, args.batch, device, args.layer)[0]()
                run, version = build(fw, args.n, args.steps, args.batch, device, args.layer)
            else:
                run, version = build(fw, args.n, args.steps, args.batch, device, args.layer)
                run()  # warm-up (and compilation for the compiled variants)
            runs[fw] = run
            info[fw] = {"version": version, "torch": torch.__version__, "python": platform.python_version(),
                        **getattr(run, "work", {})}
        except ImportError as exc:
            info[fw] = {"skipped": f"not installed ({exc})"}
        except Exception as exc:  # noqa: BLE001 - a peer that breaks on this torch version is reported, not fatal
            info[fw] = {"skipped": f"failed: {type(exc).__name__}: {exc}"}
    print(json.dumps({"ready": info}), flush=True)
    for line in sys.stdin:
        fw = line.strip()
        if fw == "quit" or not fw:
            break
        _sync(device)
        t0 = time.perf_counter()
        rate = runs[fw]()
        _sync(device)
        print(json.dumps({"fw": fw, "ms": (time.perf_counter() - t0) * 1e3, "rate": rate}), flush=True)
    return 0


# --- the driver ------------------------------------------------------------------------------------------
def _worker_cmd(python: str, frameworks: str, n: int, mode: str, args) -> list[str]:
    return [python, str(Path(__file__).resolve()), "--worker", frameworks, "--n", str(n), "--mode", mode,
            "--steps", str(args.steps), "--batch", str(args.batch), "--threads", str(args.threads),
            "--device", args.device, "--layer", args.layer] + (
        ["--warmup-steps", str(args.warmup_steps)] if args.warmup_steps is not None else [])


def _worker_env(mode: str, args) -> dict:
    env = dict(os.environ)
    env.update(thread_env(str(args.threads)))
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    if mode == "memory":
        env["MALLOC_MMAP_THRESHOLD_"] = str(1 << 20)
    return env


def interpreter_for(fw: str, args) -> str:
    return args.peer_python if (fw in args.peer_frameworks and args.peer_python) else sys.executable


def _read_json_line(proc) -> dict | None:
    while True:
        line = proc.stdout.readline()
        if not line:
            return None
        if line.startswith("{"):
            return json.loads(line)


def time_interleaved(frameworks: list[str], n: int, args) -> dict:
    """Timed passes of every implementation at one N, interleaved across worker processes."""
    groups: dict[str, list[str]] = {}
    for fw in frameworks:
        groups.setdefault(interpreter_for(fw, args), []).append(fw)
    procs, out = {}, {}
    try:
        for python, fws in groups.items():
            proc = subprocess.Popen(_worker_cmd(python, ",".join(fws), n, "serve", args), stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                    env=_worker_env("serve", args))
            ready = _read_json_line(proc)
            if ready is None:
                for fw in fws:
                    out[fw] = {"skipped": f"worker {python} failed to start (exit {proc.wait()})"}
                continue
            for fw, info in ready["ready"].items():
                out[fw] = dict(info)
                if "skipped" not in info:
                    out[fw]["times_ms"] = []
                    procs[fw] = proc
        order = [fw for fw in frameworks if fw in procs]
        reps = args.reps if n < 2048 else min(args.reps, args.reps_large)
        wanted = {fw: reps_for(fw, reps, args) for fw in order}
        for rep in range(reps):
            # rotate the order each round, so no implementation always runs right after the same one;
            # an implementation with fewer repetitions (--peer-reps) takes part in the first rounds only
            rotated = order[rep % len(order):] + order[:rep % len(order)] if order else []
            for fw in [fw for fw in rotated if len(out[fw]["times_ms"]) < wanted[fw]]:
                proc = procs[fw]
                proc.stdin.write(fw + "\n")
                proc.stdin.flush()
                reply = _read_json_line(proc)
                if reply is None:
                    out[fw] = {"skipped": "worker died during timing"}
                    order.remove(fw)
                    break
                out[fw]["times_ms"].append(reply["ms"])
                out[fw]["spike_rate"] = reply["rate"]
    finally:
        for proc in {id(p): p for p in procs.values()}.values():
            try:
                proc.stdin.write("quit\n")
                proc.stdin.flush()
            except OSError:
                pass
            proc.wait(timeout=60)
    for fw, r in out.items():
        times = r.get("times_ms")
        if times:
            r.update(time_ms=statistics.median(times), time_ms_min=min(times), time_ms_max=max(times),
                     reps=len(times))
    return out


def reps_for(fw: str, reps: int, args) -> int:
    """Timed passes of ``fw`` at an N whose round count is ``reps``: ``--peer-reps`` caps the peers' (a
    recurrent pass at N = 4096 takes a minute or more per peer); the floor and snn2hw keep every round."""
    if fw in PEERS and args.peer_reps is not None:
        return max(1, min(reps, args.peer_reps))
    return reps


def memory_run(fw: str, n: int, args) -> dict:
    cmd = _worker_cmd(interpreter_for(fw, args), fw, n, "memory", args)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_worker_env("memory", args),
                              timeout=args.timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"skipped": f"timed out after {args.timeout} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"skipped": f"failed (exit {proc.returncode}): {' | '.join(tail)}"}
    return json.loads(lines[-1])


def summarise(results: list[dict], sizes: list[int]) -> dict:
    summary = {}
    for n in sizes:
        row = {r["framework"]: r for r in results if r["n"] == n and "time_ms" in r}
        s = {}
        peers = {k: v for k, v in row.items() if k in PEERS}
        if peers:
            fastest = min(peers, key=lambda k: peers[k]["time_ms"])
            s["fastest_peer"] = fastest
            s["fastest_peer_ms"] = peers[fastest]["time_ms"]
        if "snn2hw" in row:
            ours = row["snn2hw"]
            if peers:
                s["speedup_vs_fastest_peer"] = peers[fastest]["time_ms"] / ours["time_ms"]
            if "floor" in row:
                s["time_vs_floor"] = ours["time_ms"] / row["floor"]["time_ms"]
        summary[str(n)] = s
    return summary


def print_table(results: list[dict], summary: dict, sizes: list[int], load: dict, cpus: int) -> None:
    head = (f"{'N':>5}  {'implementation':<14} {'median ms':>10} {'min..max ms':>17} {'reps':>4} {'peak MB':>8} "
            f"{'rate':>6} {'x floor':>8} {'fastest peer / this':>20}")
    print(head)
    print("-" * len(head))
    for n in sizes:
        s = summary.get(str(n), {})
        mark = " *" if load[str(n)]["under_load"] else ""
        floor = next((r for r in results if r["n"] == n and r["framework"] == "floor" and "time_ms" in r), None)
        for r in (r for r in results if r["n"] == n):
            if "time_ms" not in r:
                print(f"{n:>5}  {r['framework']:<14} skipped: {r.get('skipped', '?')}")
                continue
            speedup = s["fastest_peer_ms"] / r["time_ms"] if "fastest_peer_ms" in s else float("nan")
            floor_ratio = r["time_ms"] / floor["time_ms"] if floor else float("nan")
            peak = r.get("peak_mb")
            rate = r.get("spike_rate")
            spread = f"{r['time_ms_min']:.1f}..{r['time_ms_max']:.1f}"
            print(f"{n:>5}  {r['framework']:<14} {r['time_ms']:>10.1f} {spread:>17} {r.get('reps', 0):>4} "
                  f"{peak if peak is not None else float('nan'):>8.1f} "
                  f"{rate if rate is not None else float('nan'):>6.3f} {floor_ratio:>8.2f} {speedup:>20.2f}{mark}")
        ours = next((r for r in results if r["n"] == n and r["framework"] == "snn2hw" and "input_nonzeros" in r), None)
        if ours:
            print(f"{'':>5}  snn2hw's input product works on {ours['input_nonzeros']:,} nonzeros of "
                  f"{ours['input_terms']:,} input terms (density {ours['input_nonzeros'] / ours['input_terms']:.3f}); "
                  "the floor and the peers multiply all of them")
        if s:
            extras = ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in s.items())
            print(f"{'':>5}  summary: {extras}")
    print(f"* = under load: other processes used more than {OTHER_LOAD_LIMIT:.0%} of the {cpus} CPUs while this N "
          "was timed (/proc/stat less this benchmark and its workers)")
    print()


def _cpus(v) -> str:
    return "?" if v is None else f"{v:.2f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=None,
                   help="N (default 256..4096 on CPU, 4096 8192 16384 on CUDA; ignored for --layer conv)")
    p.add_argument("--steps", type=int, default=None, help="T (default 500; 50 for --layer conv)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--reps-large", type=int, default=3,
                   help="repetitions at N >= 2048 (a pass there takes seconds; keeps the run to minutes)")
    p.add_argument("--peer-reps", type=int, default=None,
                   help="at most this many timed passes per peer (snnTorch, Norse, SpikingJelly) at every N of the "
                        "run; the floor and snn2hw do all of them. For the recurrent layer at N = 4096, where a "
                        "peer's pass takes a minute or more: the table's reps column and the JSON say how many ran")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup-steps", type=int, default=None,
                   help="steps of each worker's untimed warm-up pass (default: the full T). Every compiled "
                        "part used here specialises on types or per-step shapes, not on T, so a short warm-up "
                        "compiles and initialises the same; at large N it saves one long pass per implementation")
    p.add_argument("--layer", choices=["dense", "recurrent", "conv"], default="dense")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--frameworks", nargs="+", default=None, choices=FRAMEWORKS)
    p.add_argument("--peer-python", default=str(DEFAULT_PEER_PYTHON) if DEFAULT_PEER_PYTHON.exists() else None,
                   help="interpreter for --peer-frameworks (SpikingJelly 2.x needs Python >= 3.11)")
    p.add_argument("--peer-frameworks", nargs="+", default=["spikingjelly"])
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per memory worker process")
    p.add_argument("--out", default=None, help="default benchmarks/results/training[_recurrent].json")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=["serve", "memory"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.steps is None:
        args.steps = 50 if args.layer == "conv" else 500
    if args.layer == "conv":
        args.sizes = [0]  # one network; the table's N column says "conv"
    elif args.sizes is None:
        args.sizes = [4096, 8192, 16384] if args.device.startswith("cuda") else [256, 512, 1024, 2048, 4096]

    if args.worker:
        if args.mode == "serve":
            return serve_worker(args)
        print(json.dumps(memory_worker(args)))
        return 0

    import torch

    frameworks = args.frameworks or {"dense": FRAMEWORKS, "recurrent": RECURRENT_FRAMEWORKS,
                                      "conv": CONV_FRAMEWORKS}[args.layer]
    out = Path(args.out or REPO / "benchmarks" / "results" /
               {"dense": "training.json", "recurrent": "training_recurrent.json",
                "conv": "training_conv.json"}[args.layer])
    cpus = os.cpu_count() or 1
    results, load = [], {}
    started = time.perf_counter()
    for n in args.sizes:
        load_before = os.getloadavg()[0]
        other = OtherLoadWithDescendants()
        timed = time_interleaved(frameworks, n, args)
        o = other.result()
        load_after = os.getloadavg()[0]
        # Other processes on a shared machine distort timings. The load average counts this benchmark's own
        # threads and workers; what marks a row is the CPU time that *other* processes took meanwhile.
        load[str(n)] = {"before": load_before, "after": load_after, "other_cpus": o["other_cpus"],
                        "own_cpus": o["own_cpus"], "timing_seconds": o["seconds"],
                        "under_load": under_load(o, load_before)}
        for fw in frameworks:
            r = {"framework": fw, "n": n, "under_load": load[str(n)]["under_load"]}
            r.update(timed.get(fw, {"skipped": "not run"}))
            if "skipped" not in r and not args.no_memory:
                mem = memory_run(fw, n, args)
                r.update({k: v for k, v in mem.items() if k in ("peak_mb", "memory_method")})
                if "skipped" in mem:
                    r["memory_skipped"] = mem["skipped"]
            results.append(r)
            status = f"{r['time_ms']:.1f} ms" if "time_ms" in r else r["skipped"]
            print(f"  N={n} {fw}: {status}", file=sys.stderr, flush=True)
        # written after every N, so an interrupted run keeps the sizes it finished
        _write(out, args, argv, load, results, summarise(results, [m for m in args.sizes if str(m) in load]), cpus)
    summary = summarise(results, args.sizes)
    print_table(results, summary, args.sizes, load, cpus)
    loads = ", ".join(f"N={n} {v['before']:.1f}->{v['after']:.1f}" for n, v in load.items())
    print(f"1-min load average during timing (cpu count {cpus}; counts this benchmark too): {loads}")
    others = ", ".join(f"N={n} {_cpus(v['other_cpus'])}" for n, v in load.items())
    print(f"other processes' CPU use during timing, in CPUs: {others}")
    print(f"total run time {time.perf_counter() - started:.0f} s")
    _write(out, args, argv, load, results, summary, cpus)
    print(f"wrote {out}")
    return 0


def _workload(layer: str) -> str:
    if layer == "conv":
        parts = [f"{'sumpool' if c is None else f'conv{c}c'}{k}" for _, c, k in CONV_NET]
        return (f"{CONV_NET[0][0]} input -> " + " -> ".join(parts) + f" -> dense {CONV_OUT}, LIF after every hop, "
                "loss = sum(output spikes), forward + backward")
    return ("Linear(N, N, bias=False) -> LIF" + (" with recurrent N x N" if layer == "recurrent" else "")
            + ", loss = sum(spikes), forward + backward")


def _write(out: Path, args, argv, load: dict, results: list, summary: dict, cpus: int) -> None:
    import torch

    meta = {
        "workload": _workload(args.layer),
        "layer": args.layer, "batch": args.batch, "steps": args.steps, "reps": args.reps,
        "reps_at_n_2048_and_above": min(args.reps, args.reps_large),
        "peer_reps": args.peer_reps, "reps_note": "each result's `reps` is the number of timed passes it had",
        "threads": args.threads, "device": args.device, "torch": torch.__version__,
        "python": platform.python_version(), "peer_python": args.peer_python,
        "peer_frameworks": args.peer_frameworks, "machine": platform.machine(), "cpu_model": cpu_model(),
        "platform": platform.platform(), "statistic": "median of interleaved repetitions (min, max kept)",
        "memory_method": "peak RSS delta of one forward+backward in a fresh process (see module docstring)",
        "cpu_count": cpus, "load_average_1min": load, "thread_env": thread_env(str(args.threads)),
        "under_load_rule": f"other processes' CPU time above {OTHER_LOAD_LIMIT:.0%} of the CPUs while an N was timed "
                           "(/proc/stat busy time less this process and its worker processes, the peers' "
                           "interpreter included); load_average_1min[N] holds other_cpus and the load average",
        "warmup_steps": args.warmup_steps if args.warmup_steps is not None else args.steps,
        "command": " ".join(["benchmarks/bench_training.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"meta": meta, "results": results, "summary": summary}, indent=2) + "\n")
    tmp.replace(out)


if __name__ == "__main__":
    sys.exit(main())
