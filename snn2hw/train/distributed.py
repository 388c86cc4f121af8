"""Data-parallel training across processes with ``torch.distributed`` (launched by ``torchrun``).

How it fits together: ``setup()`` joins the process group that ``torchrun`` describes in the
environment (gloo on CPU, NCCL on CUDA; a plain ``python`` run is a world of one and initialises
nothing), and ``Trainer`` notices the group: every rank draws the same shuffled order, takes its
share of each global batch (``idx[rank::world_size]``, as ``DistributedSampler`` would), and the
gradients are summed across ranks before each optimizer step. Only rank 0 writes checkpoints, logs
and the progress bar.

Why not ``DistributedDataParallel``: the trainer scales each rank's loss by its share of the global
batch and sums gradients, so the update equals a single process's on the whole global batch even when
the last batch does not split evenly (DDP averages per-rank means, which weights a short shard too
much) and even when a rank's shard is empty; it works for any module without wrapping it (state_dict
keys stay the same); and one coalesced all-reduce per step is cheap for the small networks that fit
neuromorphic chips.

Example (2 CPU processes)::

    torchrun --standalone --nproc_per_node=2 -m snn2hw.train.distributed --out run/ --epochs 3
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

__all__ = [
    "setup",
    "teardown",
    "world",
    "is_distributed",
    "is_main_process",
    "barrier",
    "all_reduce_sum",
    "broadcast_module",
    "all_reduce_gradients",
    "all_gather_objects",
    "run_example",
    "main",
]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world() -> tuple[int, int]:
    """(rank, world_size); (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    return world()[0] == 0


def setup(backend: str | None = None, timeout_s: float = 300.0) -> torch.device:
    """Join the process group described by torchrun's environment and return this rank's device.

    ``backend=None`` picks NCCL when CUDA is available, else gloo. Each rank uses GPU ``LOCAL_RANK``.
    Without torchrun's variables (``WORLD_SIZE`` unset or 1) nothing is initialised and the device is
    ``cuda`` if available, else ``cpu``. Calling it twice is harmless.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and backend != "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        backend = backend or ("nccl" if use_cuda else "gloo")
        kwargs = {"backend": backend, "timeout": datetime.timedelta(seconds=timeout_s)}
        if backend == "nccl":
            kwargs["device_id"] = device  # binds the communicator to this rank's GPU up front
        dist.init_process_group(**kwargs)
    return device


def teardown() -> None:
    """Leave the process group (if any); safe to call when none was set up."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks in place (a no-op in a world of one); returns ``t``."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank, so all start from the same weights."""
    if not is_distributed():
        return
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=src)


def all_reduce_gradients(params: list[torch.nn.Parameter]) -> None:
    """Sum the gradients of ``params`` over ranks in one coalesced all-reduce.

    A parameter without a gradient on some rank (e.g. that rank's shard was empty) counts as zero
    there; a parameter without a gradient on every rank keeps ``grad = None``, so optimizers skip it
    as they would in a single process. The loss scaling that makes the sum a global-batch mean is
    the trainer's job.
    """
    if not is_distributed() or not params:
        return
    ref = params[0]
    flat = []
    for p in params:
        flat.append((p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(ref.dtype))
    flags = torch.tensor([float(p.grad is not None) for p in params], dtype=ref.dtype, device=ref.device)
    buf = torch.cat([*flat, flags])
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    present = buf[buf.numel() - len(params):].tolist()  # one device->host copy, not one per parameter
    offset = 0
    for i, p in enumerate(params):
        n = p.numel()
        if present[i] > 0:
            g = buf[offset : offset + n].view_as(p).to(p.dtype)
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)
        offset += n


def all_gather_objects(obj) -> list:
    """Every rank's ``obj`` (a list indexed by rank); ``[obj]`` in a world of one.

    Used for per-rank RNG states; the objects travel between this job's own processes only."""
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


# --- a runnable example (used by the tests) ---------------------------------------------------------
def run_example(out_dir: str | os.PathLike, epochs: int = 2, samples: int = 192, batch_size: int = 32,
                steps: int = 8, hidden: int = 32, seed: int = 0, dtype: str = "float64",
                progress: bool = False) -> dict:
    """Train a small CUBA-LIF classifier on scikit-learn's digits, data-parallel when run under torchrun.

    Works the same in a plain process (world of one), which is how the test builds its reference.
    Rank 0 writes ``final.pt`` (the model's state_dict), ``history.json`` and the trainer's
    checkpoints/metrics under ``out_dir``; returns the history.
    """
    from snn2hw.models import digits
    from snn2hw.nn.layers import SpikingSequential
    from snn2hw.train.trainer import Trainer, TrainerConfig

    device = setup()
    try:
        x, y, _, _ = digits.load(steps=steps)
        x, y = x[:samples], y[:samples]
        torch.manual_seed(seed)
        model = SpikingSequential.build([64, hidden, 10], du=0.25, dv=0.1, weight_gain=3.0)
        model = model.to(dtype=getattr(torch, dtype))
        out_dir = Path(out_dir)
        cfg = TrainerConfig(epochs=epochs, batch_size=batch_size, lr=5e-3, seed=seed, optimizer="adam",
                            scheduler="cosine", checkpoint_dir=str(out_dir / "ckpt"), log_dir=str(out_dir / "logs"),
                            progress=progress, device=str(device))
        trainer = Trainer(model, cfg, loss_fn=lambda out, yb: _example_loss(out, yb))
        history = trainer.fit((x.to(model.layers[0].weight.dtype), y))
        if is_main_process():
            torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out_dir / "final.pt")
            (out_dir / "history.json").write_text(json.dumps(history))
        # Rank-local copies let a test check that every rank ended with the same weights.
        rank, world_size = world()
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out_dir / f"rank{rank}.pt")
        barrier()
        return {"history": history, "world_size": world_size}
    finally:
        teardown()


def _example_loss(out: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    from snn2hw.train.losses import count_cross_entropy

    return count_cross_entropy(out, yb, scale=0.5)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="data-parallel training example (run under torchrun)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--samples", type=int, default=192)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    ap.add_argument("--progress", action="store_true")
    a = ap.parse_args(argv)
    result = run_example(a.out, epochs=a.epochs, samples=a.samples, batch_size=a.batch_size, steps=a.steps,
                         hidden=a.hidden, seed=a.seed, dtype=a.dtype, progress=a.progress)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result["history"][-1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
