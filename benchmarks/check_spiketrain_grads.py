"""Bit-for-bit check of a change to the spike-train rules: save every gradient of HM2-BP and ST-RSBP training steps
before the change, compare after it.

Two training steps (the second sees accumulated gradients and cached kernels) on 784-100-10 (both rules), 784-800-10
(HM2-BP), 784-R100-10 (ST-RSBP), the digits conv/pool CNN (both) and Braille 24-R128-27 (ST-RSBP), short windows,
random input spikes; rule options plain, ``loss="task"`` with ``count_bounds`` and ``rate_penalty`` (ST-RSBP also
``windows=2``), and ``full_trace``; module settings of the package ``snn2hw.learning.spiketrain``: the defaults, small
blocks (``CHUNK_BYTES``), every product event-driven, every saving switched off. Gradients and losses are compared
as integer bits. One thread (a multi-threaded GEMM may sum in another order). Run it once with numba and once with
``SNN2HW_NO_NUMBA=1`` (the tensor loops, the GPU's path), each against its own file::

    python benchmarks/check_spiketrain_grads.py save out/grads_numba.pt          # before the change
    python benchmarks/check_spiketrain_grads.py compare out/grads_numba.pt       # after it: exit 1 if any differ
    SNN2HW_NO_NUMBA=1 python benchmarks/check_spiketrain_grads.py save out/grads_loops.pt

A setting names a module attribute; it is set on whichever module of the package defines it, so the check runs on
both sides of a change that moves one.
"""
from __future__ import annotations

import sys

import torch

from _spiketrain_bench import CONFIGS

NETS = [  # label, task, config, rules, T, batch
    ("784-100-10", "mnist10k", "mnist10k_mlp100.json", ["hm2bp", "strsbp"], 40, 6),
    ("784-800-10", "mnist10k", "mnist10k_mlp800.json", ["hm2bp"], 30, 4),
    ("784-R100-10", "mnist10k", "mnist10k_rec100.json", ["strsbp"], 40, 6),
    ("digits-cnn", "digits", "digits_cnn.json", ["hm2bp", "strsbp"], 24, 4),
    ("24-R128-27", "braille", "braille_rec128.json", ["strsbp"], 60, 6),
]
SETTINGS = {
    "default": {},
    "blocks": {"CHUNK_BYTES": 3000},
    "events": {"EVENT_DENSITY": 1.0, "WEIGHT_EVENT_BUDGET": 1e9, "WEIGHT_EVENT_MIN_WIDTH": 1},
    "no-savings": {"COEFFICIENT_SUM_BMM_MAX": 0, "FUSED_COEFFICIENT_SUM": False, "REUSE_INPUT_CSR": False,
                   "SKIP_UNREAD_SUMS": False},
    "per-sample-sums": {"COEFFICIENT_SUM_BMM_MAX": 0},
}
OPTIONS = {"plain": {}, "task-bounds-rate": {"loss": "task", "count_bounds": True, "rate_penalty": 0.5,
                                             "rate_target": 0.02}, "full_trace": None}


def _set(attrs: dict) -> list:
    """Set each attribute on the package's module that defines it; the old values, to restore."""
    old = []
    modules = [m for name, m in sorted(sys.modules.items()) if name.startswith("snn2hw.learning.spiketrain") and m]
    for name, value in attrs.items():
        owners = [m for m in modules if name in vars(m) and not isinstance(vars(m)[name], type(sys))]
        if not owners:
            raise SystemExit(f"no module of snn2hw.learning.spiketrain defines {name}")
        for m in owners:
            old.append((m, name, getattr(m, name)))
            setattr(m, name, value)
    return old


def gradients() -> dict:
    from snn2hw.learning import make_rule
    from snn2hw.learning.experiment import read_config
    from snn2hw.models.tasks import build_model, default_rule_options, get_task

    torch.set_num_threads(1)
    out = {}
    for label, task_name, config, rules, steps, batch in NETS:
        task, cfg = get_task(task_name), read_config(CONFIGS / config)
        for rule_name in rules:
            for opt_name, opts in OPTIONS.items():
                for set_name, attrs in SETTINGS.items():
                    if opts is None and set_name != "default":
                        continue
                    model = build_model(task, cfg.get("model"), 0, cfg.get("data"))
                    g = torch.Generator().manual_seed(0)
                    x = (torch.rand(batch, steps, task.input_size(cfg.get("data")), generator=g) < 0.15).float()
                    y = torch.randint(0, task.classes, (batch,), generator=g)
                    extra = dict(opts or {})
                    if rule_name == "strsbp" and opt_name == "task-bounds-rate":
                        extra["windows"] = 2
                    rule = make_rule(rule_name, **{**default_rule_options(rule_name, steps),
                                                   **(cfg.get("rule_options") or {}), **extra})
                    rule.full_trace = opts is None
                    rule.setup(model)
                    old = _set(attrs)
                    try:
                        for _ in range(2):
                            result = rule.compute_gradients(model, x, y, task.loss_fn, {}, 1.0)
                    finally:
                        for m, name, value in reversed(old):
                            setattr(m, name, value)
                    key = f"{label}/{rule_name}/{opt_name}/{set_name}"
                    out[f"{key}/loss"] = result.loss.detach().clone()
                    out.update({f"{key}/{n}": p.grad.detach().clone() for n, p in model.named_parameters()
                                if p.grad is not None})
    return out


def _bits(t: torch.Tensor) -> torch.Tensor:
    t = t.contiguous()
    return t.view(torch.int64 if t.element_size() == 8 else torch.int32)


def main(argv: list) -> int:
    if len(argv) != 2 or argv[0] not in ("save", "compare"):
        raise SystemExit("usage: python benchmarks/check_spiketrain_grads.py save|compare FILE")
    got = gradients()
    import snn2hw.learning.spiketrain as package  # which checkout ran (PYTHONPATH can put another one first)

    print(f"snn2hw.learning.spiketrain from {package.__file__}")
    if argv[0] == "save":
        torch.save(got, argv[1])
        print(f"{len(got)} tensors saved to {argv[1]}")
        return 0
    want = torch.load(argv[1])
    missing = sorted(set(want) ^ set(got))
    bad = [k for k in sorted(set(want) & set(got))
           if want[k].shape != got[k].shape or not torch.equal(_bits(want[k]), _bits(got[k]))]
    print(f"{len(want)} tensors, {len(bad)} differ, {len(missing)} only on one side")
    for k in missing + bad:
        print("DIFF", k)
    return 1 if bad or missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
