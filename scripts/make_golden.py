"""Write the simulator's golden traces: one small integer network per construct, run once, saved.

    .venv/bin/python scripts/make_golden.py [--out tests/golden]

Each case gets a folder ``<out>/<case>/`` with ``graph.npz`` (the integer graph as an artefact),
``input.<name>.npy`` per input and ``<population>.{spikes,u,v}.npy`` per population (spikes uint8,
u and v int32; shapes (batch, steps, size)). ``tests/test_golden.py`` reloads the artefacts and checks
that the simulator reproduces every trace exactly: a regression guard for the integer path. Everything
is derived from fixed seeds, so re-running the script rewrites the same numbers. Regenerate only when a
change of the numbers is intended (and say why in the commit).
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np

from snn2hw.artefact import Artefact, save
from snn2hw.backends import sim
from snn2hw.hw import loihi2 as hw
from snn2hw.ir import Graph, Input, LoihiConv2d, LoihiDense, LoihiLIF, Population, sum_pool2d

STEPS, BATCH = 16, 2


def _pop(name, size, du=300, dv=200, vth=60, bias=0, bias_exp=0):
    return Population(name, size, LoihiLIF(du, dv, vth, np.full(size, bias, dtype=np.int64),
                                           np.full(size, bias_exp, dtype=np.int64)))


def _spikes(rng, size, p=0.4):
    return (rng.random((BATCH, STEPS, size)) < p).astype(np.int64)


def cases() -> dict[str, tuple[Graph, dict[str, np.ndarray]]]:
    out = {}
    rng = np.random.default_rng(20261125)
    # dense: two binary layers, mixed weights off the 8-bit grid (Lava truncates), a negative weight_exp
    g = Graph((Input("in", 8),), (_pop("h", 6), _pop("o", 3, vth=30)),
              (LoihiDense("w1", "in", "h", rng.integers(-300, 300, (6, 8)), weight_exp=-1),
               LoihiDense("w2", "h", "o", rng.integers(-256, 256, (3, 6)))), ("o",)).validate()
    out["dense"] = (g, {"in": _spikes(rng, 8)})
    # graded dense: 16-bit payloads, 4 weight bits, a positive exponent
    g = Graph((Input("in", 5, 16),), (_pop("o", 4, du=4095, dv=100, vth=hw.VTH_MAX // 4),),
              (LoihiDense("w", "in", "o", rng.integers(-256, 256, (4, 5)), weight_exp=2, num_weight_bits=4,
                          num_message_bits=16),), ("o",)).validate()
    out["graded_dense"] = (g, {"in": rng.integers(-(2**15), 2**15, (BATCH, STEPS, 5)) * _spikes(rng, 5, 0.7)})
    # recurrent: a population driving itself and a read-out (step-wise schedule), with a bias
    g = Graph((Input("in", 4),), (_pop("r", 6, vth=40, bias=5, bias_exp=2), _pop("o", 2)),
              (LoihiDense("fw", "in", "r", rng.integers(0, 200, (6, 4))),
               LoihiDense("rec", "r", "r", rng.integers(-150, 100, (6, 6))),
               LoihiDense("out", "r", "o", rng.integers(-50, 200, (2, 6)))), ("o",)).validate()
    out["recurrent"] = (g, {"in": _spikes(rng, 4)})
    # delay: DelayDense with delays 0, 3 and 7 into one population
    g = Graph((Input("in", 3),), (_pop("o", 3, vth=10),),
              tuple(LoihiDense(f"d{d}", "in", "o", rng.integers(0, 256, (3, 3)), delay=d) for d in (0, 3, 7)),
              ("o",)).validate()
    out["delay"] = (g, {"in": _spikes(rng, 3, 0.2)})
    # conv: stride, padding, dilation, groups, then a conv after it
    c1 = LoihiConv2d("c1", "in", "a", rng.integers(-80, 81, (4, 1, 3, 2)), (2, 6, 6), None, (1, 2), (1, 0), (2, 1), 2)
    c2 = LoihiConv2d("c2", "a", "b", rng.integers(-120, 121, (2, 4, 2, 2)), c1.out_shape, padding=1)
    g = Graph((Input("in", 72),), (_pop("a", int(np.prod(c1.out_shape)), vth=40), _pop("b", int(np.prod(c2.out_shape)))),
              (c1, c2), ("b",)).validate()
    out["conv"] = (g, {"in": _spikes(rng, 72)})
    # pool: depthwise conv then 2x2 sum pooling
    c = LoihiConv2d("dw", "in", "a", rng.integers(-60, 61, (3, 1, 3, 3)), (3, 6, 6), padding=1, groups=3)
    pool = sum_pool2d("pool", "a", "p", c.out_shape, 2, weight=70)
    g = Graph((Input("in", 108),), (_pop("a", 108, vth=40), _pop("p", 27, vth=90)), (c, pool), ("p",)).validate()
    out["pool"] = (g, {"in": _spikes(rng, 108)})
    # sparse: binary sparse layer and a graded sparse one with an int32-wrapping product sum
    ws = np.where(rng.random((5, 12)) < 0.3, rng.integers(-300, 300, (5, 12)), 0)
    g = Graph((Input("in", 12), Input("g", 3, 24)), (_pop("s", 5, vth=20), _pop("t", 2, du=4095, dv=4095, vth=hw.VTH_MAX)),
              (LoihiDense("sp", "in", "s", ws, weight_exp=1, sparse=True),
               LoihiDense("sg", "g", "t", np.array([[255, 255, 255], [-256, 0, 254]]), weight_exp=7,
                          num_message_bits=24, sparse=True)), ("s", "t")).validate()
    out["sparse"] = (g, {"in": _spikes(rng, 12),
                         "g": np.where(_spikes(rng, 3, 0.5) > 0, rng.choice([2**23 - 1, -(2**23), 12345], (BATCH, STEPS, 3)), 0)})
    # fan-in / skip: an input feeding two layers, three projections summed into one population
    g = Graph((Input("in", 6),), (_pop("h", 5), _pop("o", 4)),
              (LoihiDense("a", "in", "h", rng.integers(-100, 256, (5, 6))),
               LoihiDense("b", "h", "o", rng.integers(-256, 256, (4, 5))),
               LoihiDense("skip", "in", "o", rng.integers(-256, 256, (4, 6)), delay=1),
               LoihiConv2d("cskip", "in", "o", rng.integers(-50, 51, (1, 1, 1, 2)), (1, 2, 3))), ("o",)).validate()
    out["fan_in_skip"] = (g, {"in": _spikes(rng, 6)})
    # overflow edges: u wraps (both bounds), v saturates, int32 wrap of a graded Dense, conv 24-bit wrap
    g = Graph((Input("in", 16, 20),),
              (_pop("uw", 1, du=-1, dv=4095, vth=hw.VTH_MAX), _pop("vs", 1, du=-1, dv=0, vth=hw.VTH_MAX),
               _pop("i32", 1, du=4095, dv=4095, vth=hw.VTH_MAX), _pop("c24", 4, du=4095, dv=4095, vth=hw.VTH_MAX)),
              (LoihiDense("wu", "in", "uw", np.full((1, 16), 2) * (np.arange(16) == 0), num_message_bits=20),
               LoihiDense("wv", "in", "vs", np.full((1, 16), 254) * (np.arange(16) < 2), num_message_bits=20),
               LoihiDense("wi", "in", "i32", np.full((1, 16), 255), weight_exp=7, num_message_bits=20),
               LoihiConv2d("wc", "in", "c24", np.full((1, 1, 3, 3), 255), (1, 4, 4), num_message_bits=20)),
              ("uw", "vs", "i32", "c24")).validate()
    x = np.zeros((BATCH, STEPS, 16), dtype=np.int64)
    x[0, :3] = 2**16
    x[0, 3:6] = -(2**16)
    x[1] = rng.choice([2**19 - 1, -(2**19), 2**18], (STEPS, 16))
    out["overflow_edges"] = (g, {"in": x})
    return out


def write(out_dir: Path) -> dict[str, int]:
    sizes = {}
    for name, (g, x) in cases().items():
        d = out_dir / name
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        save(Artefact(g, provenance={"golden": name}), d / "graph.npz")
        for k, arr in x.items():
            np.save(d / f"input.{k}.npy", arr.astype(np.int32))
        names = [p.name for p in g.populations]
        res = sim.run(g, x, record=names, record_state=names)
        for p in names:
            np.save(d / f"{p}.spikes.npy", res.spikes[p].astype(np.uint8))
            assert np.abs(res.u[p]).max(initial=0) < 2**31 and np.abs(res.v[p]).max(initial=0) < 2**31
            np.save(d / f"{p}.u.npy", res.u[p].astype(np.int32))
            np.save(d / f"{p}.v.npy", res.v[p].astype(np.int32))
        sizes[name] = sum(f.stat().st_size for f in d.iterdir())
    return sizes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "tests" / "golden"))
    args = ap.parse_args()
    sizes = write(Path(args.out))
    for name, n in sizes.items():
        print(f"{name:16s} {n:7d} bytes")
    print(f"{'total':16s} {sum(sizes.values()):7d} bytes")


if __name__ == "__main__":
    main()
