"""Data-parallel training: 2 CPU processes under torchrun against a single process."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from snn2hw.train import distributed as D

TORCHRUN = Path(sys.executable).with_name("torchrun")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_helpers_in_a_world_of_one():
    assert D.world() == (0, 1) and D.is_main_process() and not D.is_distributed()
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    D.all_reduce_gradients([p])  # no-op
    assert p.grad.tolist() == [2.0, 2.0, 2.0]
    assert D.all_gather_objects({"a": 1}) == [{"a": 1}]
    t = torch.ones(2)
    assert D.all_reduce_sum(t) is t and t.tolist() == [1.0, 1.0]


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed next to the interpreter")
def test_two_processes_match_one(tmp_path):
    # 63 samples in global batches of 31: shards of 16/15, and a last batch of one sample, which
    # leaves rank 1 with nothing; float64 so that only summation order separates the runs.
    args = ["--epochs", "2", "--samples", "63", "--batch-size", "31", "--steps", "8", "--hidden", "24"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(TORCHRUN), "--nnodes=1", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", "-m", "snn2hw.train.distributed", "--out", str(tmp_path / "two"), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    D.main(["--out", str(tmp_path / "one"), *args])  # the same run in this process (world of one)

    two = torch.load(tmp_path / "two" / "final.pt", weights_only=True)
    one = torch.load(tmp_path / "one" / "final.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "two" / "rank1.pt", weights_only=True)
    for k in one:
        assert torch.equal(two[k], rank1[k]), f"ranks disagree on {k}"
        assert torch.allclose(two[k], one[k], rtol=0, atol=1e-12), f"{k}: {(two[k] - one[k]).abs().max()}"
    h2 = json.loads((tmp_path / "two" / "history.json").read_text())
    h1 = json.loads((tmp_path / "one" / "history.json").read_text())
    assert h2[-1]["loss"] < h2[0]["loss"]
    assert [r["step"] for r in h2] == [3, 6]  # the global batch count, not per rank
    for r1, r2 in zip(h1, h2):
        assert r2["loss"] == pytest.approx(r1["loss"], rel=1e-12)
        assert r2["accuracy"] == r1["accuracy"]
    # rank 0 alone wrote the checkpoint and the metrics, and the checkpoint resumes (weights only)
    assert (tmp_path / "two" / "ckpt" / "last.pt").is_file() and (tmp_path / "two" / "logs" / "metrics.csv").is_file()
    st = torch.load(tmp_path / "two" / "ckpt" / "last.pt", weights_only=True)["extra"]["training_state"]
    assert st["fingerprint"]["world_size"] == 2 and len(st["rng"]) == 2
