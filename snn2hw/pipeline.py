"""The whole path on real data: train -> checkpoint -> NIR -> import -> quantize/compile -> run on the
simulator and on Lava, with one table of accuracy, agreement, resources and per-stage wall time."""
from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np

from snn2hw import artefact as artefact_io
from snn2hw import nir_io
from snn2hw.artefact import atomic_write_bytes
from snn2hw.backends import get_backend
from snn2hw.compiler import compile_graph
from snn2hw.train.checkpoint import load_checkpoint, save_checkpoint
from snn2hw.train.classifier import accuracy, train_classifier

DEMO_DT = 1e-3


def lava_available() -> bool:
    try:
        import lava.magma  # noqa: F401
    except Exception:
        return False
    return True


def spike_agreement(a: np.ndarray, b: np.ndarray) -> dict:
    """Agreement of two (batch, steps, n) spike arrays: per entry and per whole sample."""
    same_sample = np.all(a == b, axis=(1, 2))
    return {
        "entries_equal_pct": 100.0 * float(np.mean(a == b)),
        "samples_identical": int(same_sample.sum()),
        "samples": int(len(same_sample)),
        "spikes_a": int(a.sum()),
        "spikes_b": int(b.sum()),
    }


def run_demo(out_dir: str | Path = "out/demo", epochs: int = 40, use_lava: bool = True, seed: int = 0,
             progress: bool = True, log: Callable[[str], None] = print) -> dict:
    from snn2hw.models import digits

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}

    @contextmanager
    def stage(name: str):
        log(f"[{name}] ...")
        t0 = time.perf_counter()
        yield
        times[name] = time.perf_counter() - t0
        log(f"[{name}] {times[name]:.2f} s")

    with stage("data"):
        x_tr, y_tr, x_te, y_te = digits.load()
    with stage("train"):
        model = digits.build_model(seed)
        cfg = digits.train_config(epochs=epochs, seed=seed)
        cfg.progress = progress
        train_classifier(model, x_tr, y_tr, cfg)
        float_acc = accuracy(model, x_te, y_te)
        ckpt = out / "digits.ckpt"
        save_checkpoint(model, ckpt, extra={"task": "sklearn-digits", "steps": digits.STEPS})
    with stage("export"):
        nir_path = out / "digits.nir"
        nir_io.write(load_checkpoint(ckpt).to_ir(DEMO_DT), nir_path)
    with stage("import"):
        graph = nir_io.read(nir_path, dt=DEMO_DT)
    with stage("compile"):
        art = compile_graph(graph, provenance={"source": str(nir_path)})
        art_path = out / "digits.s2h.npz"
        artefact_io.save(art, art_path)
        art = artefact_io.load(art_path)
    x_np, y_np = x_te.numpy().astype(np.int64), y_te.numpy()
    out_pop = art.graph.outputs[0]
    with stage("sim"):
        sim_res = get_backend("sim")(art, x_np)
    sim_spikes = sim_res.spikes[out_pop]
    sim_acc = float(np.mean(sim_spikes.sum(axis=1).argmax(axis=1) == y_np))
    row = {
        "task": "sklearn digits, 1437 train / 360 test, 64-128-10 CUBA-LIF, "
                f"{digits.STEPS} steps",
        "float_accuracy": float_acc,
        "sim_accuracy": sim_acc,
        "float_to_deployed_drop_pp": 100.0 * (float_acc - sim_acc),
        "sim_events": sim_res.events,
        "resources": {k: art.resources[k] for k in ("inputs", "neurons", "synapses", "cores")},
        "lava": None,
        "lava_not_run": None if use_lava else "--no-lava",
    }
    if use_lava and not lava_available():
        row["lava_not_run"] = "lava-nc does not import in this environment (it needs Python 3.10; see README)"
    if use_lava and lava_available():
        with stage("lava"):
            lava_res = get_backend("lava")(art, x_np)
        lava_spikes = lava_res.spikes[out_pop]
        row["lava"] = {
            "accuracy": float(np.mean(lava_spikes.sum(axis=1).argmax(axis=1) == y_np)),
            "agreement_vs_sim": spike_agreement(sim_spikes, lava_spikes),
        }
    row["wall_time_s"] = times
    row["files"] = {"checkpoint": str(ckpt), "nir": str(nir_path), "artefact": str(art_path)}
    atomic_write_bytes(out / "summary.json", lambda f: f.write(json.dumps(row, indent=2).encode()))
    log(format_table(row))
    return row


def format_table(row: dict) -> str:
    lines = [f"snn2hw demo: {row['task']}", ""]
    add = lambda k, v: lines.append(f"  {k:<38} {v}")  # noqa: E731
    add("float accuracy (PyTorch)", f"{100 * row['float_accuracy']:.2f} %")
    add("deployed accuracy, bit-accurate sim", f"{100 * row['sim_accuracy']:.2f} %")
    add("float -> deployed drop", f"{row['float_to_deployed_drop_pp']:+.2f} pp")
    if row["lava"]:
        ag = row["lava"]["agreement_vs_sim"]
        add("deployed accuracy, Lava fixed_pt", f"{100 * row['lava']['accuracy']:.2f} %")
        add("output spikes equal, sim vs Lava", f"{ag['entries_equal_pct']:.2f} % of (sample, step, neuron)")
        add("samples with identical spike trains", f"{ag['samples_identical']} / {ag['samples']}")
    else:
        add("Lava", f"not run ({row.get('lava_not_run') or 'lava-nc does not import'})")
    r = row["resources"]
    add("resources", f"{r['neurons']} neurons, {r['synapses']} synapses, {r['cores']} cores, {r['inputs']} inputs")
    ev = {k: sum(c.values()) for k, c in row["sim_events"].items()}
    add("overflow/saturation events (sim)", ", ".join(f"{k}: {v}" for k, v in ev.items()) or "none")
    if any(ev.values()):
        lines.append("    (v_saturation: a membrane potential clipped at the 24-bit limit, as Loihi and Lava both do, so "
                     "sim and Lava still agree;\n     it changes behaviour only when it hits a neuron that would "
                     "otherwise spike; snn2hw compare shows where. See docs/user-guide.md.)")
    add("wall time per stage", ", ".join(f"{k} {v:.1f}s" for k, v in row["wall_time_s"].items()))
    return "\n".join(lines)
