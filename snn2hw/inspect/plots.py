"""PNG plots of a ``Comparison`` (matplotlib, Agg: no display needed).

* ``rasters.png``: one row per population, one column per run, for the sample where the first
  divergence happens: spikes in black; in the non-reference columns, spikes the reference lacks in
  red and spikes it has but the run lacks in blue; a dashed line marks the first divergent step.
* ``divergence.png``: raster mismatch rate per step, one line per (population, run).
* ``ranges.png``: histograms of v (and u) in integer units per population and run, with the 24-bit
  limits and the threshold marked.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from snn2hw.hw import loihi2 as hw


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_plots(cmp, out_dir: str | Path, graph=None) -> list[str]:
    """Write the three PNGs into ``out_dir`` (created); return their paths."""
    from snn2hw.artefact import atomic_write_bytes

    plt = _plt()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, name):
        import io

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        atomic_write_bytes(out / name, lambda f: f.write(buf.getvalue()))
        written.append(str(out / name))

    save(_rasters(plt, cmp), "rasters.png")
    save(_divergence(plt, cmp), "divergence.png")
    save(_ranges(plt, cmp, graph), "ranges.png")
    return written


def _rasters(plt, cmp):
    runs = list(cmp.runs.values())
    fd = cmp.first_divergence()
    sample = fd["sample"] if fd else 0
    pops = cmp.populations
    fig, axes = plt.subplots(len(pops), len(runs), figsize=(3.6 * len(runs), 1.2 + 1.6 * len(pops)), squeeze=False)
    ref = cmp.runs[cmp.reference]
    for i, pop in enumerate(pops):
        r = ref.spikes[pop][sample].astype(bool)  # (steps, n)
        for j, run in enumerate(runs):
            ax = axes[i, j]
            s = run.spikes[pop][sample].astype(bool)
            t, n = np.nonzero(s & r) if run is not ref else np.nonzero(s)
            ax.scatter(t, n, s=4, c="black", marker="|", linewidths=0.8)
            if run is not ref:
                t1, n1 = np.nonzero(s & ~r)
                t2, n2 = np.nonzero(~s & r)
                ax.scatter(t1, n1, s=10, c="red", marker="|", linewidths=1.2, label=f"only {run.name}")
                ax.scatter(t2, n2, s=10, c="tab:blue", marker="|", linewidths=1.2, label=f"only {ref.name}")
                row = next((x for x in cmp.rows if x["population"] == pop and x["run"] == run.name), None)
                if row and row["first_divergence"]:
                    ax.axvline(row["first_divergence"]["step"] - 0.5, color="red", ls="--", lw=0.8)
                if i == 0:
                    ax.legend(loc="upper right", fontsize=6, markerscale=1.5)
            ax.set_xlim(-0.5, s.shape[0] - 0.5)
            ax.set_ylim(-0.5, s.shape[1] - 0.5)
            if i == 0:
                ax.set_title(run.name + (" (reference)" if run is ref else ""), fontsize=9)
            if j == 0:
                ax.set_ylabel(f"{pop}\nneuron", fontsize=8)
            if i == len(pops) - 1:
                ax.set_xlabel("step", fontsize=8)
            ax.tick_params(labelsize=7)
    fig.suptitle(f"spike rasters, sample {sample}" + (f" (first divergence: {fd['population']}, step {fd['step']})" if fd else ""),
                 fontsize=10)
    fig.tight_layout()
    return fig


def _divergence(plt, cmp):
    fig, ax = plt.subplots(figsize=(7, 3.6))
    colors = {p: f"C{i % 10}" for i, p in enumerate(cmp.populations)}
    others = [r for r in cmp.runs if r != cmp.reference]
    styles = {r: ("-", "--", ":", "-.")[i % 4] for i, r in enumerate(others)}
    for r in cmp.rows:
        if r["run"] == cmp.reference:
            continue
        y = 100 * np.asarray(r["mismatch_per_step"])
        line, = ax.plot(np.arange(len(y)), y, marker="." if styles[r["run"]] == "-" else "x", ls=styles[r["run"]],
                        color=colors[r["population"]], lw=1.2, label=f"{r['population']} ({r['run']} vs {cmp.reference})")
        if r["first_divergence"]:
            ax.axvline(r["first_divergence"]["step"], color=line.get_color(), ls=":", lw=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("raster mismatch (% of sample x neuron)")
    ax.set_title("divergence per layer over time (dotted: first divergent step)", fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _ranges(plt, cmp, graph):
    pops = cmp.populations
    fig, axes = plt.subplots(len(pops), 2, figsize=(9, 1.2 + 2.0 * len(pops)), squeeze=False)
    vth = {}
    if graph is not None:
        vth = {p.name: hw.effective_threshold(int(p.neuron.vth)) for p in graph.populations if hasattr(p.neuron, "vth")}
    for i, pop in enumerate(pops):
        for j, var in enumerate(("v", "u")):
            ax = axes[i, j]
            data = [(run.name, getattr(run, var)[pop].ravel()) for run in cmp.runs.values() if pop in getattr(run, var)]
            hi = max([float(np.abs(d).max(initial=1)) for _, d in data] + [1.0])
            bins = np.linspace(-hi, hi, 81)
            for name, d in data:
                ax.hist(d, bins=bins, histtype="step", lw=1.2, label=name, log=True)
            for lim in (-hw.STATE_HALF, hw.STATE_HALF):
                if abs(lim) <= 1.5 * hi:
                    ax.axvline(lim, color="red", lw=0.8)
            if var == "v" and pop in vth and vth[pop] <= 1.5 * hi:
                ax.axvline(vth[pop], color="green", ls="--", lw=0.8, label="threshold")
            ax.set_title(f"{pop}: {var} (integer units; limit +-2**23 = {hw.STATE_HALF})", fontsize=8)
            ax.tick_params(labelsize=7)
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
