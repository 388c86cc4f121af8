"""Where a spike-train rule's training step spends its CPU time, function by function, as *self* time.

``diag_hm2bp_parts.py`` times chosen parts and calls the remainder "rest"; this one wraps the step's functions (the
package ``snn2hw.learning.spiketrain``'s passes, the products, the compiled kernels, the rules' coefficients, and
BPTT's autograd backward and LIF kernels) with a CPU timer (``time.process_time``) that subtracts the time of the
wrapped functions it calls, so every row is a function's own time and the rows add up to the step: the glue of each
pass is its "self" row. Same networks and inputs as ``diag_spiketrain_speed.py`` (batch 16, input density 0.1, one
thread); rules one after the other, step by step, so a load change hits both. CPU ms per step (mean over reps).

    python benchmarks/diag_spiketrain_self_time.py --only 784-100 --T 200 --reps 20
    python benchmarks/diag_spiketrain_self_time.py --only 784-800 --T 200 --reps 10 --rules hm2bp bptt
"""
from __future__ import annotations

from bench_env import set_thread_env  # noqa: E402  (imports no torch)

set_thread_env(["--threads", "1"])

import argparse  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402

from diag_spiketrain_speed import NETWORKS, build  # noqa: E402

_self: dict = defaultdict(float)
_stack: list = []


def _timed(name: str, fn):
    def wrapped(*args, **kwargs):
        start = time.process_time()
        _stack.append(0.0)
        try:
            return fn(*args, **kwargs)
        finally:
            spent = time.process_time() - start
            _self[name] += spent - _stack.pop()
            if _stack:
                _stack[-1] += spent
    return wrapped


def _wrap(obj, attr: str, name: str, static: bool = False) -> None:
    fn = getattr(obj, attr)
    setattr(obj, attr, staticmethod(_timed(name, fn)) if static else _timed(name, fn))


def install() -> None:
    import torch

    from snn2hw.learning import spiketrain, spsp, spsp_kernels
    from snn2hw.learning.hm2bp import HM2BP
    from snn2hw.learning.strsbp import STRSBP
    from snn2hw.nn import functional, kernels, spike_dense

    st = spiketrain
    _wrap(st.rule.SpikeTrainRule, "compute_gradients", "rule: compute_gradients (self)")
    _wrap(st.rule.SpikeTrainRule, "output_error", "rule: output_error")
    _wrap(st.rule, "record_chunked", "forward: record_chunked (self)")
    _wrap(st.record, "lif_sequence_chunked", "forward: lif_sequence_chunked (self)")
    _wrap(st.rule, "neuron_spec", "forward: neuron_spec")
    _wrap(st.chunked, "layer_backward_chunked", "backward: layer_backward_chunked (self)")
    _wrap(st.hop, "hop_backward_chunked", "backward: hop_backward_chunked (self)")
    _wrap(st.chunked, "add_spsp", "backward: add_spsp (S-PSP products)")
    _wrap(st.chunked, "add_coefficient_sum", "backward: add_coefficient_sum")
    _wrap(st.scan, "with_virtual_spikes", "backward: with_virtual_spikes")
    _wrap(HM2BP, "coefficients", "backward: coefficients")
    _wrap(STRSBP, "coefficients", "backward: coefficients")
    _wrap(st.hop, "dense_hop_block", "product: dense_hop_block (weight gradient)")
    _wrap(spsp, "spike_linear", "product: spike_linear (self)")
    _wrap(functional, "spike_linear", "product: spike_linear (self)")
    _wrap(spike_dense, "_row_counts", "product: spike_linear's _row_counts")
    _wrap(spike_dense, "_dense", "product: spike_linear's GEMM (_dense)")
    _wrap(spsp_kernels, "lif_scan_chunk", "kernel: forward LIF scan")
    _wrap(spsp_kernels, "adjoint_scan_chunk", "kernel: reverse S-PSP scan")
    _wrap(kernels, "lif_forward", "kernel: BPTT LIF forward")
    _wrap(kernels, "lif_backward", "kernel: BPTT LIF backward")
    _wrap(torch.autograd, "backward", "bptt: autograd backward (self: its GEMMs and glue)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="+", default=["784-100"], help="networks whose label contains one of these")
    ap.add_argument("--T", type=int, nargs="+", default=[200])
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rules", nargs="+", default=None, help="default: the network's rule and BPTT")
    a = ap.parse_args()
    install()
    for label, task_name, config, rules, fixed in NETWORKS:
        if not any(o in label for o in a.only):
            continue
        rules = a.rules or rules
        for steps in fixed or a.T:
            task, model, x, y, made = build(task_name, config, rules, steps, a.batch)
            rows = {name: defaultdict(float) for name in rules}
            total = dict.fromkeys(rules, 0.0)
            for _ in range(a.reps):
                for name in rules:
                    model.zero_grad(set_to_none=True)
                    _self.clear()
                    start = time.process_time()
                    made[name].compute_gradients(model, x, y, task.loss_fn, {}, 1.0)
                    spent = time.process_time() - start
                    total[name] += spent
                    for part, value in _self.items():
                        rows[name][part] += value
                    rows[name]["(outside every wrapped function)"] += spent - sum(_self.values())
            print(f"\n{label}, T = {steps}, batch {a.batch}, {a.reps} reps, load {os.getloadavg()[0]:.1f}: "
                  "CPU ms per step, self time")
            for name in rules:
                print(f"  {name}: step {1e3 * total[name] / a.reps:.3f}")
                for part, value in sorted(rows[name].items(), key=lambda kv: -kv[1]):
                    print(f"    {1e3 * value / a.reps:8.3f}  {part}")


if __name__ == "__main__":
    main()
