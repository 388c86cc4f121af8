"""The simulator sharded over 2 gloo processes under torchrun equals one process, bit for bit."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from snn2hw.backends import sim
from snn2hw.backends.sim.distributed import run_distributed, shard_bounds
from snn2hw.hw import loihi2 as hw
from snn2hw.ir import Graph, Input, LoihiConv2d, LoihiDense, LoihiLIF, Population

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def small_graph() -> Graph:
    """A conv layer, a dense layer and a recurrent projection (a cycle: the network kernel)."""
    rng = np.random.default_rng(0)
    lif = lambda n, vth: LoihiLIF(410, 410, vth, np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64))  # noqa: E731
    conv = LoihiConv2d("conv", "in", "c", rng.integers(-60, 120, (4, 1, 3, 3)) // 2 * 2, (1, 8, 8), padding=(1, 1))
    fc = LoihiDense("fc", "c", "out", rng.integers(-80, 120, (6, 256)) // 2 * 2)
    return Graph((Input("in", 64),), (Population("c", 256, lif(256, 300)), Population("out", 6, lif(6, 400))),
                 (conv, fc), ("out",)).validate()


def inputs(batch=5, steps=12):
    return (np.random.default_rng(1).random((batch, steps, 64)) < 0.3).astype(np.int64)


SCRIPT = """
import sys, numpy as np
sys.path.insert(0, {tests!r})
from test_sim_distributed import small_graph, inputs
from snn2hw.backends.sim.distributed import run_distributed
from snn2hw.train.distributed import world, is_main_process, teardown
r = run_distributed(small_graph(), inputs(), record=["c"], record_state=["out"])
n_ranks, main_rank = world()[1], is_main_process()
teardown()  # as `snn2hw run --distributed` does: exiting with gloo's threads alive can abort
if main_rank:
    np.savez({out!r}, world=n_ranks, **{{"s_" + k: v for k, v in r.spikes.items()}},
             **{{"u_" + k: v for k, v in r.u.items()}}, **{{"v_" + k: v for k, v in r.v.items()}},
             events=np.array([[c[k] for k in sorted(c)] for _, c in sorted(r.events.items())]))
"""


def test_shards_cover_the_batch_in_order():
    for batch in (0, 1, 5, 64):
        bounds = [shard_bounds(batch, r, 3) for r in range(3)]
        assert bounds[0][0] == 0 and bounds[-1][1] == batch
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    # a world of one is the plain simulator
    g, x = small_graph(), inputs(2, 6)
    assert np.array_equal(run_distributed(g, x).spikes["out"], sim.run(g, x).spikes["out"])


def test_two_gloo_processes_equal_one(tmp_path):
    out = tmp_path / "two.npz"
    script = tmp_path / "shard.py"
    script.write_text(SCRIPT.format(tests=str(REPO / "tests"), out=str(out)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    # torchrun as a module of this interpreter (a venv's torchrun script may name another interpreter)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", str(script)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    two = np.load(out)
    assert int(two["world"]) == 2
    one = sim.run(small_graph(), inputs(), record=["c"], record_state=["out"])
    assert one.spikes["out"].any() and one.spikes["c"].any()
    for k in one.spikes:
        assert np.array_equal(two["s_" + k], one.spikes[k]), k
    assert np.array_equal(two["u_out"], one.u["out"]) and np.array_equal(two["v_out"], one.v["out"])
    assert np.array_equal(two["events"], np.array([[c[k] for k in sorted(c)] for _, c in sorted(one.events.items())]))


def test_cli_run_distributed_flag_in_a_world_of_one(tmp_path):
    from snn2hw import cli
    from snn2hw.artefact import Artefact, save

    save(Artefact(small_graph()), tmp_path / "net.s2h.npz")
    np.save(tmp_path / "x.npy", inputs(3, 8))
    outs = []
    for extra in ([], ["--distributed"]):
        out = tmp_path / f"out{len(extra)}.npz"
        assert cli.main(["run", str(tmp_path / "net.s2h.npz"), str(tmp_path / "x.npy"), "-o", str(out), *extra]) == 0
        outs.append(np.load(out))
    assert np.array_equal(outs[0]["spikes/out"], outs[1]["spikes/out"])
