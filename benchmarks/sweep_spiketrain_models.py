"""Random and unusual networks, configs and workloads through HM2-BP, ST-RSBP and BPTT: what an outside user can
express (``SpikingSequential`` configs with conv strides/padding/dilation/groups, pools with their own stride and
padding, several hidden and recurrent layers, biases, per-layer neurons, dropout, T from 1, batches of 1, every
rule option) on tiny inputs, each case checked for

* ``run``: it runs, or refuses with a typed error (``LearningRuleError``/``ValueError`` raised by snn2hw itself,
  never a raw IndexError, shape error or NaN);
* ``finite``: every gradient is finite;
* ``fallback``: the numba kernels (CPU) and the tensor loops (CUDA, no numba; forced by ``SNN2HW_NO_NUMBA=1``) give
  the same gradients to float tolerance;
* ``full``: the chunked spike-train path equals the full-window float path (``full_trace``);
* ``dense``: a network with conv/pool layers equals the same network with every conv/pool hop as a dense matrix
  (the kernel's gradient by the chain rule), as ``test_conv_pool_stack_equals_equivalent_dense_stack``;
* ``deploy``: a short ``Trainer.fit`` (calibration included), then export, quantize, compile and simulate, the
  CLI's path (every ``--deploy-every``-th case).

    nice -n 10 .venv/bin/python benchmarks/sweep_spiketrain_models.py --cases 200 --seed 0

prints one line per failing (case, rule, check) with the case's config, and a summary.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import random
import sys
import traceback

import torch

from snn2hw.learning import LearningRuleError, make_rule
from snn2hw.learning import spiketrain
from snn2hw.nn.conv import ConvLIF, Dropout, Flatten, SumPoolLIF
from snn2hw.nn.layers import LIFDense, RecurrentLIFDense, SpikingSequential
from snn2hw.train.losses import count_cross_entropy

RULES = ("hm2bp", "strsbp", "bptt")


def loss_fn(out, y):
    return count_cross_entropy(out[-1] if isinstance(out, (list, tuple)) else out, y, scale=0.3)


def random_neuron(r: random.Random) -> dict:
    du = r.choice([0.05, 0.2, 0.3, 0.5, 1.0, r.uniform(0.01, 1.0)])
    dv = r.choice([0.0, 0.1, 0.2, 0.5, 1.0, r.uniform(0.0, 1.0)])
    out = {"du": du, "dv": dv, "v_th": r.choice([0.3, 1.0, 1.0, 2.5]), "bias": r.random() < 0.4}
    if r.random() < 0.04:  # BPTT trains them; the spike-train rules refuse
        out[r.choice(["train_decays", "train_threshold"])] = True
    return out


def random_case(r: random.Random) -> dict:
    """A model config (layers), input shape, workload and rule options."""
    c, h, w = r.choice([1, 2, 3]), r.randint(3, 9), r.randint(3, 9)
    layers: list = []
    shape = (c, h, w)
    for _ in range(r.choice([0, 0, 1, 2, 3])):
        if r.random() < 0.6:
            k = r.choice([1, 2, 3, 4, (r.randint(1, 3), r.randint(1, 3))])
            groups = r.choice([g for g in (1, 2, 3) if shape[0] % g == 0])
            out_ch = groups * r.randint(1, 2)
            cfg = {"layer": "ConvLIF", "in_shape": list(shape), "out_channels": out_ch, "kernel_size": k,
                   "stride": r.choice([1, 1, 2, (1, 2)]), "padding": r.choice([0, 0, 1, 2]),
                   "dilation": r.choice([1, 1, 2]), "groups": groups, "weight_gain": r.uniform(1.0, 4.0),
                   **random_neuron(r)}
        else:
            k = r.choice([1, 2, 3])
            cfg = {"layer": "SumPoolLIF", "in_shape": list(shape), "kernel_size": k,
                   "stride": r.choice([None, None, 1, 2]), "padding": r.choice([0, 0, k // 2]), **random_neuron(r)}
            cfg["v_th"] = r.choice([0.5, 1.0, 2.0])
        try:
            layer = SpikingSequential.from_config({"layers": [cfg]}).layers[0]
        except ValueError:  # geometry out of range: the sweep records the refusal elsewhere
            layers.append(cfg)
            return {"layers": layers, "bad_geometry": True}
        layers.append(cfg)
        shape = tuple(layer.out_shape)
        if r.random() < 0.15:
            layers.append({"layer": "Dropout", "p": 0.2})
    n = shape[0] * shape[1] * shape[2]
    if layers:
        layers.append({"layer": "Flatten"})
    for _ in range(r.choice([0, 1, 1, 2, 3])):
        width = r.choice([1, 2, 5, 12])
        cfg = {"in_features": n, "out_features": width, "weight_gain": r.uniform(1.0, 4.0), **random_neuron(r)}
        if r.random() < 0.35:
            cfg.update(layer="RecurrentLIFDense", rec_gain=r.uniform(0.1, 1.0),
                       rec_weight_scale=r.choice([1.0, 0.05]), rec_mask=r.random() < 0.2)
        layers.append(cfg)
        n = width
    classes = r.choice([2, 3, 4])
    out = {"in_features": n, "out_features": classes, "weight_gain": r.uniform(1.0, 4.0), **random_neuron(r)}
    if r.random() < 0.15:
        out.update(layer="RecurrentLIFDense", rec_gain=0.5)
    layers.append(out)
    steps = r.choice([1, 2, 3, 5, 12, 30, 30, 90])
    opts = {"loss": r.choice(["mse", "mse", "task"]), "count_bounds": r.random() < 0.3,
            "t_ref": r.choice([0, 0, 1, 2]), "hidden_virtual_spikes": r.choice([0, 1, 1, 3]),
            "low_memory": r.random() < 0.2, "chunk": r.choice([1, 3, 7, 32]),
            "margin": r.choice([0, 0, 1]), "target_true": r.choice([1, max(1, steps // 3)]),
            "target_false": r.choice([0, 1])}
    if r.random() < 0.3:
        opts.update(rate_penalty=r.choice([0.1, 1.0]), rate_target=r.choice([0.0, 0.1]))
    strsbp = {}
    if r.random() < 0.4:
        strsbp["windows"] = r.choice([2, 3])
        if r.random() < 0.5:
            strsbp["window_shifts"] = 2
    return {"layers": layers, "in_features": c * h * w,
            "steps": steps, "batch": r.choice([1, 1, 2, 5]), "density": r.choice([0.05, 0.3, 0.7]),
            "dtype": r.choice(["float64", "float64", "float32"]), "chunk_bytes": r.choice([0, 300, 4 << 20]),
            "classes": classes, "opts": opts, "strsbp": strsbp, "seed": r.randint(0, 10**6)}


@contextlib.contextmanager
def no_numba():
    old = os.environ.get("SNN2HW_NO_NUMBA")
    os.environ["SNN2HW_NO_NUMBA"] = "1"
    try:
        yield
    finally:
        if old is None:
            del os.environ["SNN2HW_NO_NUMBA"]
        else:
            os.environ["SNN2HW_NO_NUMBA"] = old


def build(case: dict) -> SpikingSequential:
    torch.manual_seed(case["seed"])
    net = SpikingSequential.from_config({"layers": case["layers"]}).to(getattr(torch, case["dtype"]))
    with torch.no_grad():
        for layer in net.layers:
            if getattr(layer, "bias", None) is not None and isinstance(layer.bias, torch.nn.Parameter):
                layer.bias.uniform_(-0.05, 0.1)
    return net


def data(case: dict):
    g = torch.Generator().manual_seed(case["seed"])
    dtype = getattr(torch, case["dtype"])
    x = (torch.rand(case["batch"], case["steps"], case["in_features"], generator=g) < case["density"]).to(dtype)
    y = torch.randint(0, case["classes"], (case["batch"],), generator=g)
    return x, y


def rule_options(case: dict, rule: str) -> dict:
    if rule == "bptt":
        return {}
    return {**case["opts"], **(case["strsbp"] if rule == "strsbp" else {})}


def gradients(case: dict, rule: str, net=None, full=False, train=False):
    """(output spikes, [(name, grad)]) of one compute_gradients on the case's batch."""
    net = build(case) if net is None else net
    net.train(train)
    x, y = data(case)
    r = make_rule(rule, **rule_options(case, rule))
    r.setup(net)
    if full:
        r.full_trace = True
    torch.manual_seed(1)  # dropout masks
    res = r.compute_gradients(net, x, y, loss_fn, {})
    out = res.output.detach().double()
    return out, [(n, p.grad.detach().double().clone()) for n, p in net.named_parameters() if p.grad is not None]


def close(a, b, case) -> str | None:
    (oa, ga), (ob, gb) = a, b
    if not torch.equal(oa, ob):
        return "outputs differ"
    if [n for n, _ in ga] != [n for n, _ in gb]:
        return f"different parameters got gradients: {[n for n, _ in ga]} vs {[n for n, _ in gb]}"
    rtol, atol = (1e-8, 1e-10) if case["dtype"] == "float64" else (2e-4, 2e-5)
    for (n, x), (_, y) in zip(ga, gb):
        scale = max(float(x.abs().max()), float(y.abs().max()), 1e-30)
        if not torch.allclose(x, y, rtol=rtol, atol=atol * max(1.0, scale)):
            return f"{n}: max diff {float((x - y).abs().max()):.3g} (max |g| {scale:.3g})"
    return None


def as_dense_net(net: SpikingSequential):
    """The net with conv/pool hops as dense matrices: (dense net, [(conv layer, kernel leaf, matrix)])."""
    layers, kernels = [], []
    for layer in net.layers:
        if isinstance(layer, (ConvLIF, SumPoolLIF)):
            dense, kernel, matrix = layer.dense_equivalent()
            layers.append(dense)
            kernels.append((layer, kernel, matrix, dense))
        elif isinstance(layer, (Flatten, Dropout)):
            continue
        else:
            layers.append(copy.deepcopy(layer))
    return SpikingSequential(layers), kernels


def dense_check(case: dict, rule: str) -> str | None:
    net = build(case)
    if any(isinstance(layer, Dropout) for layer in net.layers):
        net.eval()
    ref, kernels = as_dense_net(net)
    a = gradients(case, rule, net)
    b = gradients(case, rule, ref)
    if not torch.equal(a[0], b[0]):
        return "outputs differ (a spike flipped by rounding?)"
    rtol, atol = (1e-7, 1e-10) if case["dtype"] == "float64" else (1e-3, 1e-5)
    for layer, kernel, matrix, dense in kernels:
        if isinstance(layer, ConvLIF):
            if dense.weight.grad is None:
                if layer.weight.grad is not None and float(layer.weight.grad.abs().max()) > 0:
                    return "conv kernel has a gradient, its dense twin none"
                continue
            (expected,) = torch.autograd.grad(matrix, kernel, dense.weight.grad)
            got = layer.weight.grad if layer.weight.grad is not None else torch.zeros_like(expected)
            scale = max(float(expected.abs().max()), 1e-30)
            if not torch.allclose(got, expected, rtol=rtol, atol=atol * max(1.0, scale)):
                return f"conv kernel grad: max diff {float((got - expected).abs().max()):.3g} (max {scale:.3g})"
        if layer.bias is not None and dense.bias.grad is not None:
            per_channel = dense.bias.grad.reshape(layer.bias.numel(), -1).sum(1)
            got = layer.bias.grad.reshape(-1)
            scale = max(float(per_channel.abs().max()), 1e-30)
            if not torch.allclose(got, per_channel, rtol=rtol, atol=atol * max(1.0, scale)):
                return f"conv bias grad: max diff {float((got - per_channel).abs().max()):.3g}"
    top = [p for p in net.layers if isinstance(p, LIFDense)]
    if top:
        g1, g2 = top[-1].weight.grad, ref.layers[-1].weight.grad
        if (g1 is None) != (g2 is None) or (g1 is not None and not torch.allclose(g1, g2, rtol=rtol, atol=atol)):
            return "output layer weight grad differs"
    return None


def deploy_check(case: dict, rule: str) -> None:
    from snn2hw.learning.experiment import deployed_accuracy
    from snn2hw.train.trainer import Trainer, TrainerConfig

    net = build(case).float()
    fc = dict(case, dtype="float32", batch=max(case["batch"], 3) + 2)
    x, y = data(fc)
    cfg = TrainerConfig(epochs=1, batch_size=case["batch"] + 1, lr=1e-3, progress=False, rule=rule,
                        rule_options=rule_options(case, rule), tensorboard=False, save_best=None)
    Trainer(net, cfg, loss_fn=loss_fn).fit((x, y), (x, y))
    for p in net.parameters():
        if not bool(torch.isfinite(p).all()):
            raise AssertionError("non-finite parameter after fit")
    acc = deployed_accuracy(net.cpu(), x, y)
    assert 0.0 <= acc <= 1.0


def deploy_refused(case: dict, rule: str) -> str | None:
    """``deploy_check``; a ``QuantizationError`` or ``DesignRuleError`` (the compiler's typed refusals of a network the
    hardware cannot hold, e.g. conv weights too large for Lava's Conv at the trained threshold, or a weight exponent
    out of range) counts as a clear refusal."""
    from snn2hw.compiler.rules import DesignRuleError
    from snn2hw.quantize import QuantizationError

    try:
        deploy_check(case, rule)
    except (QuantizationError, DesignRuleError) as exc:
        print(f"    [case {case.get('index')}] deploy refused ({rule}): {str(exc)[:160]}", flush=True)
    return None


def typed(exc: BaseException) -> bool:
    """A refusal a user can act on: the project's own typed error, raised by snn2hw code."""
    if isinstance(exc, LearningRuleError):
        return True
    tb = traceback.extract_tb(exc.__traceback__)
    return isinstance(exc, ValueError) and bool(tb) and "snn2hw" in tb[-1].filename and "torch" not in tb[-1].filename


def run_case(case: dict, rules, deploy: bool, log, checked: dict) -> dict:
    counts = {"ok": 0, "refused": 0, "fail": 0}
    spiketrain.plan.CHUNK_BYTES = case.get("chunk_bytes", 4 << 20)
    if case.get("bad_geometry"):
        try:
            SpikingSequential.from_config({"layers": case["layers"]})
            log("FAIL build: bad geometry accepted", case)
            counts["fail"] += 1
        except Exception as exc:  # noqa: BLE001
            if typed(exc):
                counts["refused"] += 1
            else:
                counts["fail"] += 1
                log(f"FAIL build: untyped {type(exc).__name__}: {exc}", case)
        return counts
    for rule in rules:
        try:
            base = gradients(case, rule)
        except Exception as exc:  # noqa: BLE001
            if typed(exc):
                counts["refused"] += 1
                log(f"refused {rule}: {type(exc).__name__}: {exc}", None)
            else:
                counts["fail"] += 1
                log(f"FAIL {rule} run: {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-3)}", case)
            continue
        checks = []
        bad = [n for n, g in base[1] if not bool(torch.isfinite(g).all())]
        checks.append(("finite", f"non-finite gradient of {bad}" if bad else None))

        def guarded(name, fn):
            try:
                checks.append((name, fn()))
            except Exception as exc:  # noqa: BLE001
                checks.append((name, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-3)}"))

        def fallback():
            with no_numba():
                return close(base, gradients(case, rule), case)
        guarded("fallback", fallback)
        if rule != "bptt":
            guarded("full", lambda: close(base, gradients(case, rule, full=True), case))
        if any(l.get("layer") in ("ConvLIF", "SumPoolLIF") for l in case["layers"]):
            guarded("dense", lambda: dense_check(case, rule))
        if deploy:
            guarded("deploy", lambda: deploy_refused(case, rule))
        failed = [(n, m) for n, m in checks if m]
        for n, m in checks:
            checked[n] = checked.get(n, 0) + (m is None)
        for n, m in failed:
            log(f"FAIL {rule} {n}: {m}", case)
        counts["fail" if failed else "ok"] += 1
    return counts


def sweep_parser(description: str, rules: tuple) -> argparse.ArgumentParser:
    """The options every sweep takes: how many cases, the seed, which rules, how often to fit and deploy."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--cases", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rules", default=",".join(rules))
    ap.add_argument("--deploy-every", type=int, default=10)
    ap.add_argument("--only", type=int, default=None, help="run case number ONLY alone")
    return ap


def main(argv=None) -> int:
    args = sweep_parser(__doc__.split("\n")[0], RULES).parse_args(argv)
    torch.set_num_threads(1)
    r = random.Random(args.seed)
    total = {"ok": 0, "refused": 0, "fail": 0}
    refusals: dict = {}
    checked: dict = {}  # check -> (case, rule) pairs that passed it

    def log(msg, case):
        if case is None:
            key = msg.split(":", 1)[1][:90]
            refusals[key] = refusals.get(key, 0) + 1
            return
        print(f"[case {i}] {msg}\n    {json.dumps(case)}", flush=True)

    for i in range(args.cases):
        case = random_case(r)
        case["index"] = i
        if args.only is not None and i != args.only:
            continue
        counts = run_case(case, args.rules.split(","), args.deploy_every > 0 and i % args.deploy_every == 0, log,
                          checked)
        total = {k: total[k] + counts[k] for k in total}
    print("refusals:", json.dumps(refusals, indent=1))
    print("checks passed (case x rule):", checked)
    print("summary (case x rule):", total)
    return 1 if total["fail"] else 0


if __name__ == "__main__":
    sys.exit(main())
