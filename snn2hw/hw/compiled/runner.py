"""``network_scan``: a lowered graph (``NetworkSpec``) run over a batch, in slices whose input stages' messages
stay in the L3 cache."""
from __future__ import annotations

import numpy as np
import torch

from snn2hw.hw.compiled import runtime
from snn2hw.hw.compiled.input_stages import _input_messages
from snn2hw.hw.compiled.network_kernel import _network_kernel
from snn2hw.hw.compiled.plan import NetworkSpec

# Bytes of the inputs' messages per slice of the batch in network_scan: a quarter of this machine's L3.
# (Measured under load at batch 256 on the pooling, conv and 100-200-10 networks: 4 MiB slices took
# 0.99x / 0.98x / 0.96x the CPU time of one whole-batch buffer, 1 MiB slices 1.13x / 1.09x / 1.06x: the
# per-slice calls cost more than the cache saved there; the slices bound the buffer's memory.)
_PRE_SLICE_BYTES = 8 << 20



def network_scan(spec: NetworkSpec, x_in: torch.Tensor | np.ndarray, steps: int, keep_state: bool = False,
                 count_events: bool = False):
    """Run a whole graph (cycles allowed) step by step in one compiled call, samples in parallel.

    ``x_in`` (batch, steps, inputs) holds the input payloads (int64, or bool where all are binary). Each
    step forms every population's input from the sources' spikes (or payloads) of earlier steps with an
    exact integer ``W @ s`` over the non-zero sources only (the weight rows of the sources that fired,
    or their conv segments), then the compiled ``conv_output`` (convolutions), ``synaptic_output`` and
    ``add_messages`` in projection order, and updates every neuron with the compiled ``lif_step``. The
    projections of binary inputs are formed into messages for all steps before the scan. Graded dense
    projections with a delay (whose int32 products wrap one by one in Lava) are not supported here: the
    caller runs those graphs on its general path.

    Returns ``(spikes (batch, steps, N) bool, u_rec, v_rec or None, counts (batch, P, 4))`` where
    ``counts[..., :3]`` are ``loihi2.LIMIT_EVENTS`` (when ``count_events``) and ``counts[..., 3]`` the
    spikes.
    """
    if isinstance(x_in, torch.Tensor):
        runtime._check_cpu(x_in)
        x_in = x_in.numpy()
    x = np.ascontiguousarray(x_in if x_in.dtype in (np.bool_, np.int64) else x_in.astype(np.int64))
    batch = x.shape[0]
    n_pop = int(spec.pop_off[-1])
    spk = np.empty((batch, steps, n_pop), dtype=np.bool_)
    if keep_state:
        u_rec = np.empty((batch, steps, n_pop), dtype=np.int64)
        v_rec = np.empty((batch, steps, n_pop), dtype=np.int64)
    else:
        u_rec = v_rec = np.empty((0, 0, 0), dtype=np.int64)
    counts = np.zeros((batch, len(spec.pop_off) - 1, 4), dtype=np.int64)
    widest = max(1, int(np.max(np.diff(spec.pop_off))) if len(spec.pop_off) > 1 else 1)
    threads = runtime._threads()
    # The inputs' messages are formed and scanned a slice of samples at a time (at batch 256 all of them
    # at once take 26-52 MB on the benchmark's conv and pooling networks): the buffer stays in the L3
    # cache and its memory bounded. A single sample is one slice.
    per_sample = steps * int(spec.pre_off[-1]) * spec.message_dtype.itemsize
    chunk = batch
    if batch > threads and per_sample:
        chunk = max(threads, _PRE_SLICE_BYTES // per_sample // threads * threads)
    chunk = max(1, min(chunk, batch))
    acc_buf = np.empty((chunk, widest), dtype=spec.acc_dtype)
    pre = np.empty((chunk, steps, int(spec.pre_off[-1])), dtype=spec.message_dtype)
    parallel = threads > 1 and batch > 1  # one sample runs on one thread: no synchronisation per step
    if spec.ready.any() or parallel:
        runtime._set_threads(threads)
    kernel = _network_kernel(bool(count_events), parallel)
    for lo in range(0, batch, chunk):
        hi = min(lo + chunk, batch)
        if spec.ready.any():
            _input_messages(spec, x[lo:hi], pre[:hi - lo], threads)
        kernel(x[lo:hi], spec.pop_off, spec.du, spec.dv, spec.vth_eff, spec.bias_eff, spec.src_kind, spec.src_off,
               spec.src_n, spec.dst_pop, spec.w_off, spec.weights, spec.w_shift, spec.row_ptr, spec.row_idx,
               spec.is_sparse, spec.seg_len, spec.perm_off, spec.weight_exp, spec.graded, spec.delayed, spec.conv,
               spec.plain,
               spec.lags, spec.ready, spec.pre_off, pre[:hi - lo], acc_buf[:hi - lo], spk[lo:hi],
               u_rec[lo:hi] if keep_state else u_rec, v_rec[lo:hi] if keep_state else v_rec, counts[lo:hi],
               bool(keep_state))
    return (torch.from_numpy(spk), torch.from_numpy(u_rec) if keep_state else None,
            torch.from_numpy(v_rec) if keep_state else None, torch.from_numpy(counts))
