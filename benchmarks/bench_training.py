"""Training-speed benchmark: one Linear(N, N) followed by one LIF layer, forward + backward.

The workload is the Open Neuromorphic library comparison: input spikes (batch 16, T = 500 steps,
N features, not requiring grad), a bias-free Linear(N, N), a plain LIF layer (leak 0.9, threshold 1,
reset to zero), loss = sum of the output spikes, one backward pass to the weight. Every implementation
computes the input GEMM for all steps at once outside its time loop, and gets its input in its
preferred layout (snn2hw: batch-first; snnTorch, Norse, SpikingJelly: time-first).

Implementations:

* ``floor``: only the two matrix products every implementation must do (``x @ W^T`` over all steps,
  and the weight gradient ``g^T x`` from a precomputed output gradient).
* ``snn2hw``: ``snn2hw.nn.functional.cuba_lif_sequence`` with alpha = 0 (u[t] = a[t], so
  v = 0.9 v + a), fast-sigmoid surrogate, detached reset.
* ``snntorch``: ``snntorch.Leaky(beta=0.9, reset_mechanism="zero")``, fast-sigmoid surrogate, stepped
  in a Python loop, spikes stacked.
* ``norse``: ``norse.torch.LIFBoxCell`` (LIF without synaptic current) stepped in a Python loop, spikes
  stacked; dt * tau_mem_inv = 0.1 scales its input by 0.1, so its threshold is 0.1.
* ``spikingjelly``: ``activation_based.neuron.LIFNode(tau=10, decay_input=False, step_mode="m",
  backend="torch", detach_reset=True)``.

Peers that are not installed are skipped and reported as such.

Method. Workers are fresh subprocesses with ``torch.set_num_threads`` (default 2) and the
OpenMP/MKL thread variables set alike:

* time: one process per N builds every implementation and runs one warm-up pass of each, then
  ``--reps`` rounds in which each implementation does one timed forward + backward pass (interleaved,
  so that load from other processes on a shared machine affects all alike); the median is reported,
  and the minimum alongside (``time.perf_counter``; on CUDA with ``torch.cuda.synchronize``).
* peak memory: one process per (implementation, N); after the model and input exist and a 4-step warm-up has initialised lazy state, the
  kernel's peak-RSS counter is reset (``/proc/self/clear_refs``), one full forward + backward runs, and
  the reported figure is ``VmHWM - VmRSS(before)``: the extra resident memory the pass needed beyond
  its inputs and weights. glibc is told to serve every allocation of 1 MiB or more with mmap
  (``MALLOC_MMAP_THRESHOLD_``) so that freed tensors leave RSS at once and the figure tracks live
  tensors, not allocator caching. Where ``clear_refs`` is not writable, ``ru_maxrss`` is used instead.
  On CUDA the figure is ``torch.cuda.max_memory_allocated`` above the allocation before the pass.

On a shared machine set ``OMP_WAIT_POLICY=PASSIVE`` (the workers inherit it; the JSON records it and
the load average): spinning OpenMP workers otherwise starve the thread that issues the many small
per-step ops, which distorts every ratio to the floor.

Usage::

    python benchmarks/bench_training.py [--sizes 512 1024 2048] [--steps 500] [--batch 16]
        [--reps 5] [--threads 2] [--frameworks floor snn2hw snntorch norse spikingjelly]
        [--out benchmarks/results/training.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

FRAMEWORKS = ["floor", "snn2hw", "snntorch", "norse", "spikingjelly"]
PEERS = ["snntorch", "norse", "spikingjelly"]
BETA, V_TH, SURROGATE_SCALE, INPUT_RATE = 0.9, 1.0, 10.0, 0.1
REPO = Path(__file__).resolve().parents[1]


# --- the workloads (run inside a worker process) -------------------------------------------------------
def build(framework: str, n: int, steps: int, batch: int, device):
    """Return ``(run, version)``; ``run()`` does one forward + backward and returns the spike rate."""
    import torch

    g = torch.Generator().manual_seed(0)
    time_first = framework in ("snntorch", "norse", "spikingjelly")
    shape = (steps, batch, n) if time_first else (batch, steps, n)
    x = (torch.rand(shape, generator=g) < INPUT_RATE).float().to(device)
    # Scaled so that a[t] has unit variance: the LIF layer spikes at a moderate rate.
    w = (torch.randn(n, n, generator=g) / (n * INPUT_RATE) ** 0.5).to(device).requires_grad_(True)

    if framework == "floor":
        grad_out = torch.randn(shape, generator=g).to(device)

        def run():
            w.grad = None
            a = x @ w.t()
            a.backward(grad_out)

        return run, torch.__version__

    if framework == "snn2hw":
        import snn2hw
        from snn2hw.nn.functional import cuba_lif_sequence
        from snn2hw.nn.surrogate import FastSigmoid

        surrogate = FastSigmoid(SURROGATE_SCALE)

        def run():
            w.grad = None
            s = cuba_lif_sequence(x @ w.t(), 0.0, BETA, V_TH, None, surrogate, detach_reset=True)
            loss = s.sum()
            loss.backward()
            return loss.item() / s.numel()

        return run, snn2hw.__version__

    if framework == "snntorch":
        import snntorch
        from snntorch import surrogate as snn_surrogate

        lif = snntorch.Leaky(beta=BETA, threshold=V_TH, spike_grad=snn_surrogate.fast_sigmoid(slope=SURROGATE_SCALE),
                             reset_mechanism="zero").to(device)

        def run():
            w.grad = None
            a = x @ w.t()
            mem = lif.init_leaky()
            spikes = []
            for t in range(a.shape[0]):
                spk, mem = lif(a[t], mem)
                spikes.append(spk)
            s = torch.stack(spikes)
            loss = s.sum()
            loss.backward()
            return loss.item() / s.numel()

        return run, snntorch.__version__

    if framework == "norse":
        import norse
        import norse.torch as norse_torch

        params = norse_torch.LIFBoxParameters(tau_mem_inv=torch.tensor(100.0, device=device),
                                              v_th=torch.tensor(0.1 * V_TH, device=device))
        lif = norse_torch.LIFBoxCell(p=params, dt=1e-3).to(device)

        def run():
            w.grad = None
            a = x @ w.t()
            state = None
            spikes = []
            for t in range(a.shape[0]):
                z, state = lif(a[t], state)
                spikes.append(z)
            s = torch.stack(spikes)
            loss = s.sum()
            loss.backward()
            return loss.item() / s.numel()

        return run, getattr(norse, "__version__", "?")

    if framework == "spikingjelly":
        import spikingjelly
        from spikingjelly.activation_based import neuron

        lif = neuron.LIFNode(tau=1.0 / (1.0 - BETA), decay_input=False, v_threshold=V_TH, v_reset=0.0,
                             detach_reset=True, step_mode="m", backend="torch").to(device)

        def run():
            w.grad = None
            lif.reset()
            s = lif(x @ w.t())
            loss = s.sum()
            loss.backward()
            return loss.item() / s.numel()

        return run, getattr(spikingjelly, "__version__", "0.0.0.0.14")

    raise ValueError(f"unknown framework {framework!r}")


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
        run, version = build(args.worker, args.n, args.steps, args.batch, device)
        # Initialise lazy state (thread pools, kernels, imports inside libraries) with a short run.
        small, _ = build(args.worker, args.n, 4, args.batch, device)
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


def time_worker(args) -> dict:
    """Times every requested implementation at one N, interleaving their repetitions so that a
    shared, noisy machine slows them alike."""
    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    runs, out = {}, {}
    for fw in args.worker.split(","):
        try:
            run, version = build(fw, args.n, args.steps, args.batch, device)
            run()  # warm-up
            runs[fw] = run
            out[fw] = {"version": version, "times_ms": []}
        except ImportError as exc:
            out[fw] = {"skipped": f"not installed ({exc})"}
        except Exception as exc:  # noqa: BLE001 - a peer that breaks on this torch version is reported, not fatal
            out[fw] = {"skipped": f"failed: {type(exc).__name__}: {exc}"}
    for _ in range(args.reps):
        for fw, run in runs.items():
            _sync(device)
            t0 = time.perf_counter()
            out[fw]["spike_rate"] = run()
            _sync(device)
            out[fw]["times_ms"].append((time.perf_counter() - t0) * 1e3)
    for fw in runs:
        times = out[fw]["times_ms"]
        out[fw].update(time_ms=statistics.median(times), time_ms_min=min(times))
    return out


# --- the driver ------------------------------------------------------------------------------------------
def run_worker(framework: str, n: int, mode: str, args) -> dict:
    env = dict(os.environ)
    threads = str(args.threads)
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    if mode == "memory":
        env["MALLOC_MMAP_THRESHOLD_"] = str(1 << 20)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", framework, "--n", str(n), "--mode", mode,
           "--steps", str(args.steps), "--batch", str(args.batch), "--reps", str(args.reps),
           "--threads", threads, "--device", args.device]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"skipped": f"timed out after {args.timeout} s"}
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
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
            if "snntorch" in row and row["snntorch"].get("peak_mb") and ours.get("peak_mb") is not None:
                s["peak_memory_vs_snntorch"] = ours["peak_mb"] / row["snntorch"]["peak_mb"]
        summary[str(n)] = s
    return summary


def print_table(results: list[dict], summary: dict, sizes: list[int]) -> None:
    head = f"{'N':>5}  {'implementation':<13} {'time ms':>9} {'(min)':>9} {'peak MB':>9} {'rate':>6} {'x fastest peer':>15} {'x floor':>8}"
    print(head)
    print("-" * len(head))
    for n in sizes:
        s = summary.get(str(n), {})
        floor = next((r for r in results if r["n"] == n and r["framework"] == "floor" and "time_ms" in r), None)
        for r in (r for r in results if r["n"] == n):
            if "time_ms" not in r:
                print(f"{n:>5}  {r['framework']:<13} skipped: {r.get('skipped', '?')}")
                continue
            peer_ratio = r["time_ms"] / s["fastest_peer_ms"] if "fastest_peer_ms" in s else float("nan")
            floor_ratio = r["time_ms"] / floor["time_ms"] if floor else float("nan")
            peak = r.get("peak_mb")
            rate = r.get("spike_rate")
            print(f"{n:>5}  {r['framework']:<13} {r['time_ms']:>9.1f} {r['time_ms_min']:>9.1f} {peak if peak is not None else float('nan'):>9.1f} "
                  f"{rate if rate is not None else float('nan'):>6.3f} {peer_ratio:>15.2f} {floor_ratio:>8.2f}")
        if s:
            extras = ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in s.items())
            print(f"{'':>5}  summary: {extras}")
    print()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--frameworks", nargs="+", default=FRAMEWORKS, choices=FRAMEWORKS)
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per worker process")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "training.json"))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=["time", "memory"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"

    if args.worker:
        print(json.dumps(memory_worker(args) if args.mode == "memory" else time_worker(args)))
        return 0

    import torch

    results, load = [], {}
    for n in args.sizes:
        load_before = os.getloadavg()[0]
        timed = run_worker(",".join(args.frameworks), n, "time", args)
        # Other processes on a shared machine distort timings; the 1-minute load average says how much.
        load[str(n)] = {"before": load_before, "after": os.getloadavg()[0]}
        for fw in args.frameworks:
            r = {"framework": fw, "n": n}
            r.update(timed.get(fw, timed) if "skipped" not in timed else timed)
            if "skipped" not in r and not args.no_memory:
                mem = run_worker(fw, n, "memory", args)
                r.update({k: v for k, v in mem.items() if k in ("peak_mb", "memory_method")})
                if "skipped" in mem:
                    r["memory_skipped"] = mem["skipped"]
            results.append(r)
            status = f"{r['time_ms']:.1f} ms" if "time_ms" in r else r["skipped"]
            print(f"  N={n} {fw}: {status}", file=sys.stderr, flush=True)
    summary = summarise(results, args.sizes)
    print_table(results, summary, args.sizes)
    loads = ", ".join(f"N={n} {v['before']:.1f}->{v['after']:.1f}" for n, v in load.items())
    print(f"1-min load average during timing (cpu count {os.cpu_count()}): {loads}")
    meta = {
        "workload": "Linear(N, N, bias=False) -> LIF, loss = sum(spikes), forward + backward",
        "batch": args.batch, "steps": args.steps, "reps": args.reps, "threads": args.threads,
        "device": args.device, "torch": torch.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "processor": platform.processor(), "statistic": "median",
        "memory_method": "peak RSS delta of one forward+backward in a fresh process (see module docstring)",
        "cpu_count": os.cpu_count(), "load_average_1min": load,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": results, "summary": summary}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
