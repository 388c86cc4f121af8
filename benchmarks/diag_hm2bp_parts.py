"""Where an HM2-BP training step's CPU time goes on the MLPs, part by part, interleaved with BPTT's step.

Builds a network of ``bench_spiketrain_speed.py`` (batch 16, random input spikes of density 0.1, one thread),
warms both rules up, then times ``--reps`` training steps of HM2-BP and of BPTT one after the other. Inside
each step a CPU timer (``time.process_time``) wraps the functions the step's time is spent in (exclusive
times: a wrapped function's time excludes the wrapped functions it calls), so the parts add up to the step:

* HM2-BP: the input products (``spike_linear`` forward; the first layer's weight gradient, as GEMM in
  ``dense_hop_block`` or event-driven ``scatter_rows``), the output layer's S-PSP batched products
  (``chunked.add_spsp``), the forward LIF scans, the reverse S-PSP scans, the coefficients, and "rest" (tensor glue,
  allocations, Python);
* BPTT: ``spike_linear``'s forward (CSR and product) and backward, the LIF forward and backward kernels, and
  "rest" (autograd, loss, optimizer-free glue).

Two derived rows per rule: "= products + compiled kernels" (the products and the compiled LIF / S-PSP kernels of
the step; no change to the glue can remove them) and "= glue (step less those)". The column "x BPTT step" is each
median over BPTT's step median: on the first derived row of the rule, the ratio it would have with no glue at all,
the floor of this design for the step as it is. (BPTT's glue holds its autograd GEMMs where a layer's product is the
GEMM: ``spike_linear``'s dense path is torch's own ``mm``, not timed as a part.) ST-RSBP's networks run too (its
coefficients, linear solve included, are the part "coefficients"):

    python benchmarks/diag_hm2bp_parts.py --only 784-R100 24-R128 --T 200 800 --reps 7

CPU ms per sample, median over the repetitions of each part. The timers themselves cost about a microsecond
per call (a few dozen calls per step). One row per (network, T, rule, part).

    python benchmarks/diag_hm2bp_parts.py --only 784-100 784-800 --T 200 800 --reps 7

``--base-kernels DIR`` adds the rule "hm2bp (base kernels)": HM2-BP with the compiled scans of another checkout's
``snn2hw/learning/spsp_kernels.py`` swapped in for its steps (as in ``diag_spiketrain_speed.py``), interleaved, so a
change to one scan shows in its own part (e.g. "forward LIF scan") rather than only in the noisier step:

    git archive HEAD~1 | tar -x -C /tmp/base
    NUMBA_CACHE_DIR=$(mktemp -d) python benchmarks/diag_hm2bp_parts.py --only 784-800 --T 200 800 --base-kernels /tmp/base

Writes ``benchmarks/results/hm2bp_parts.json``.
"""
from __future__ import annotations

import os

from bench_env import OtherLoad, set_thread_env, under_load, write_results  # noqa: E402  (imports no torch)

set_thread_env(["--threads", "1"])

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402

from _spiketrain_bench import ROOT  # noqa: E402
from diag_spiketrain_speed import NETWORKS, base_scans, build, with_scans  # noqa: E402

_acc: dict = defaultdict(float)
# parts that are products or compiled kernels (by name prefix), summed per step into _NO_GLUE; the step less them is
# _GLUE. Their medians over BPTT's step median ("x BPTT step"): the ratio the rule would have with no glue at all.
_WORK_PARTS = ("products:", "output S-PSP bmm", "forward LIF scan", "reverse S-PSP scan", "LIF forward kernel",
               "LIF backward kernel")
_NO_GLUE = "= products + compiled kernels"
_GLUE = "= glue (step less those)"
_stack: list = []


def _timed(name: str, fn):
    """``fn`` with its exclusive CPU time added to ``_acc[name]``."""
    def wrapper(*args, **kwargs):
        _stack.append(0.0)
        c0 = time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            spent = time.process_time() - c0
            inner = _stack.pop()
            _acc[name] += spent - inner
            if _stack:
                _stack[-1] += spent
    wrapper.__wrapped__ = fn
    return wrapper


def _patch(obj, attr: str, name: str, static: bool = False) -> None:
    fn = getattr(obj, attr)
    setattr(obj, attr, staticmethod(_timed(name, fn)) if static else _timed(name, fn))


def install_timers() -> None:
    from snn2hw.learning import spiketrain, spsp, spsp_kernels
    from snn2hw.learning.hm2bp import HM2BP
    from snn2hw.learning.strsbp import STRSBP
    from snn2hw.nn import functional, spike_dense

    # HM2-BP (and BPTT's) input products
    _patch(spsp, "spike_linear", "products: spike_linear (fwd)")
    _patch(functional, "spike_linear", "products: spike_linear (fwd)")
    _patch(spike_dense._SpikeLinear, "backward", "products: spike_linear backward", static=True)
    # inside spike_linear's forward: packing W^T in column blocks, once per call (the rules' chunked forward makes
    # one call per group of samples, BPTT one per layer)
    _patch(spike_dense, "_pack_transposed", "products: W^T packing in spike_linear")
    _patch(spiketrain.hop, "dense_hop_block", "products: weight gradient (dense_hop_block)")
    _patch(spsp_kernels, "scatter_rows", "products: event-driven scatter_rows")
    _patch(spiketrain.chunked, "add_spsp", "output S-PSP bmm (add_spsp)")
    # HM2-BP's own work
    _patch(spsp_kernels, "lif_scan_chunk", "forward LIF scan")
    _patch(spsp_kernels, "adjoint_scan_chunk", "reverse S-PSP scan")
    _patch(HM2BP, "coefficients", "coefficients")
    _patch(STRSBP, "coefficients", "coefficients")
    _patch(spsp, "as_float", "bool-to-float copies (as_float)")
    for module in (spiketrain.rule, spiketrain.chunked, spiketrain.hop):
        _patch(module, "as_float", "bool-to-float copies (as_float)")
    _patch(spiketrain.rule, "neuron_spec", "neuron specs")
    _patch(spiketrain.scan, "with_virtual_spikes", "virtual-spike counts")
    _patch(spiketrain.SpikeTrainRule, "output_error", "output error")
    _patch(spiketrain.plan, "event_driven_weights", "density checks")
    _patch(spiketrain.plan, "event_driven", "density checks")
    # BPTT's LIF kernels
    _patch(functional._CubaLIFSequence, "forward", "LIF forward kernel", static=True)
    _patch(functional._CubaLIFSequence, "backward", "LIF backward kernel", static=True)


def measure(label, task_name, config, rules, steps, reps, batch, base=None):
    task, model, x, y, made = build(task_name, config, rules, steps, batch)
    run = {name: (lambda r=made[name]: r.compute_gradients(model, x, y, task.loss_fn, {}, 1.0)) for name in rules}
    if base is not None:  # the first rule with the other checkout's scans, right before the rule itself
        run = {f"{rules[0]} (base kernels)": with_scans(base, run[rules[0]]), **run}
        next(iter(run.values()))()  # warm-up
    rules = list(run)
    parts = {name: defaultdict(list) for name in rules}
    load_at_start, other = os.getloadavg()[0], OtherLoad()
    for _ in range(reps):
        for name in rules:
            model.zero_grad(set_to_none=True)
            _acc.clear()
            c0 = time.process_time()
            run[name]()
            total = time.process_time() - c0
            for part, spent in _acc.items():
                parts[name][part].append(1e3 * spent / batch)
            parts[name]["rest"].append(1e3 * (total - sum(_acc.values())) / batch)
            parts[name]["step"].append(1e3 * total / batch)
            # what no glue could remove: the products and the compiled LIF / S-PSP kernels (the rest is tensor glue,
            # allocations, Python; BPTT's glue also holds its autograd GEMMs where a layer's product is the GEMM)
            work = sum(spent for part, spent in _acc.items() if part.startswith(_WORK_PARTS))
            parts[name][_NO_GLUE].append(1e3 * work / batch)
            parts[name][_GLUE].append(1e3 * (total - work) / batch)
    o = other.result()
    rows = []
    baseline_step = statistics.median(parts[rules[-1]]["step"])
    for name in rules:
        for part, values in sorted(parts[name].items(), key=lambda kv: (kv[0] == "step", kv[0])):
            values = values + [0.0] * (reps - len(values))
            rows.append({"network": label, "T": steps, "rule": name, "part": part,
                         "cpu_ms_per_sample_median": statistics.median(values), "cpu_ms_per_sample_min": min(values),
                         "x_baseline_step": statistics.median(values) / baseline_step,
                         "other_cpus": o["other_cpus"], "loadavg": os.getloadavg()[0],
                         "under_load": under_load(o, load_at_start)})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, nargs="+", default=[200, 800])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--only", nargs="+", default=["784-100", "784-800"])
    ap.add_argument("--base-kernels", default=None, help="another checkout's root: also HM2-BP with its scans")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "hm2bp_parts.json"))
    a = ap.parse_args(argv)
    install_timers()
    base = base_scans(a.base_kernels) if a.base_kernels else None
    load_before = os.getloadavg()[0]
    rows = []
    lines = ["| network | T | rule | part | CPU ms/sample median | min | x BPTT step (medians) | "
             "load avg / other CPUs |",
             "|" + "---|" * 8]
    for label, task, config, rules, _ in NETWORKS:
        if not any(o in label for o in a.only) or rules[0] not in ("hm2bp", "strsbp"):
            continue
        for steps in a.T:
            for r in measure(label, task, config, rules, steps, a.reps, a.batch, base):
                rows.append(r)
                mark = " (loaded)" if r["under_load"] else ""
                lines.append(f"| {label} | {steps} | {r['rule']} | {r['part']} | {r['cpu_ms_per_sample_median']:.3f} | "
                             f"{r['cpu_ms_per_sample_min']:.3f} | {r['x_baseline_step']:.2f} | "
                             f"{r['loadavg']:.1f} / {r['other_cpus'] or 0:.2f}"
                             f"{mark} |")
                print(lines[-1], flush=True)
    write_results(a.out, "benchmarks/diag_hm2bp_parts.py", argv, {"benchmark": "hm2bp_parts", "batch": a.batch,
                                                                   "base_kernels": a.base_kernels},
                  rows, load_before)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
