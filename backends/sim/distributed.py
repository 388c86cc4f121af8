"""The simulator on a batch sharded across processes (``torch.distributed``; gloo on CPU).

Samples are independent in the simulator, so a large test set splits into contiguous shards, one per
rank (rank r takes samples ``[B r / W, B (r + 1) / W)``); every rank simulates its shard with
``snn2hw.backends.sim.run`` and the shards are gathered back in sample order. The result is identical,
bit for bit, to one process running the whole batch: the same arithmetic on the same samples, and
limit-event counts are integer sums.

Launch under ``torchrun`` (one node or several)::

    torchrun --nproc_per_node=2 -m snn2hw.cli run model.s2h.npz x.npy -o out.npz --distributed

Every rank gets the whole ``RunResult``; the CLI lets rank 0 alone write the file. Outside a process
group (``WORLD_SIZE`` unset or 1) ``run_distributed`` is ``run``.
"""
from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np
import torch
import torch.distributed as dist

from snn2hw.artefact import Artefact
from snn2hw.backends.base import RunResult, check_inputs
from snn2hw.backends.sim.simulator import ArithmeticLimitError, EVENT_KINDS, run
from snn2hw.ir import Graph
from snn2hw.train import distributed as D

__all__ = ["run_distributed", "shard_bounds"]


def shard_bounds(batch: int, rank: int, world: int) -> tuple[int, int]:
    """Samples ``[lo, hi)`` of ``rank``'s shard: contiguous, sizes differ by at most one."""
    return batch * rank // world, batch * (rank + 1) // world


def _gather_batch(local: np.ndarray, batch: int, world: int) -> np.ndarray:
    """Concatenate every rank's (shard, ...) array in rank order (shards padded to one size for gloo)."""
    widest = -(-batch // world)
    pad = np.zeros((widest, *local.shape[1:]), dtype=local.dtype)
    pad[: local.shape[0]] = local
    t = torch.from_numpy(pad)
    parts = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(parts, t)
    out = [parts[r][: hi - lo].numpy() for r, (lo, hi) in enumerate(shard_bounds(batch, r, world) for r in range(world))]
    return np.concatenate(out, axis=0)


def run_distributed(
    graph: Graph | Artefact,
    inputs: Mapping[str, np.ndarray] | np.ndarray,
    record: Iterable[str] = (),
    record_state: Iterable[str] = (),
    *,
    strict: bool = False,
    count_events: bool = True,
) -> RunResult:
    """``snn2hw.backends.sim.run`` with the batch sharded over the ranks of the process group.

    Joins the group that torchrun describes if none exists yet (gloo on CPU). Every rank must call it
    with the same graph and inputs. In strict mode the first limit event, in sample order over all
    shards, is raised on every rank (no rank is left waiting in a collective).
    """
    if isinstance(graph, Artefact):
        graph = graph.graph
    D.setup(backend="gloo")
    rank, world = D.world()
    if world == 1:
        return run(graph, inputs, record, record_state, strict=strict, count_events=count_events)
    x = check_inputs(graph, inputs)
    batch = next(iter(x.values())).shape[0]
    lo, hi = shard_bounds(batch, rank, world)
    error = None
    try:
        local = run(graph, {k: v[lo:hi] for k, v in x.items()}, record, record_state, strict=strict,
                    count_events=count_events)
    except ArithmeticLimitError as exc:
        error, local = f"{exc} (sample numbered within the shard of rank {rank}: samples {lo}..{hi - 1})", None
    errors = D.all_gather_objects(error)  # every rank learns of any rank's error before the next collective
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        raise ArithmeticLimitError(first)

    spikes = {k: _gather_batch(v, batch, world) for k, v in sorted(local.spikes.items())}
    u = {k: _gather_batch(v, batch, world) for k, v in sorted(local.u.items())}
    v = {k: _gather_batch(a, batch, world) for k, a in sorted(local.v.items())}
    events = {}
    if local.events:
        names = sorted(local.events)
        counts = torch.tensor([[local.events[n][k] for k in EVENT_KINDS] for n in names], dtype=torch.int64)
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
        events = {n: dict(zip(EVENT_KINDS, (int(c) for c in row))) for n, row in zip(names, counts.tolist())}
    return RunResult(spikes=spikes, u=u, v=v, events=events, backend="sim")
